"""SavedModel export: raw JPEG/PNG bytes in, grades and the quality gate out.

keras-hub exports carry no preprocessor, so a plain `model.export()` would make every server
re-implement the fundus crop and resize. `export_saved_model` instead writes a SavedModel whose
endpoints (`eyegazer_keras.serving.signatures`: names, outputs per task, their graphs) run the run's
`fundus.PreprocessingSpec` in the graph, as pure TF ops:

* `serving_default`: `image_bytes` (`tf.string [batch]`) -> decode, gate, preprocess -> model
  -> named outputs (`signatures.OUTPUTS`) with `gradable` and `ungradable_reason`;
* `serving_images`: `images` (`uint8 [batch, H, W, 3]`) -> the same outputs;
* `metadata`: no input -> `metadata_json` (`tf.string` scalar): task, class names, the
  preprocessing spec, the gate's thresholds, cut-offs, config, versions, the compute
  `precision` (`eyegazer_keras.serving.precision`) and the not-a-medical-device notice;
* `serving_explain` (when `explain_method` is given): `image_bytes` -> the same outputs plus
  `explanation` (`float32 [B, S, S]` in [0, 1], see `eyegazer_keras.evaluation.explain`), computed on
  the model without TTA.

With `calibration` (a run's `calibrate.fit_calibration` result) the probabilities are
temperature-scaled inside the graph and the metadata carries `calibrated`, `temperature` and
the `operating_threshold`; for the grade task its `grade_cutoffs` (QWK-tuned cut-offs on the
calibrated expected grade) become the metadata's `cutoffs` and the `predicted_grade` output
(`predicted_class` stays the argmax); with `tta` ("flip", "flip4") the outputs are the mean over flipped
views (`models.wrappers.serving_model`).

The same JSON is written to `assets.extra/eyegazer_metadata.json` (readable without
TensorFlow; TF Serving ignores `assets.extra`), and a model card (`eyegazer_keras.serving.model_card`:
`MODEL_CARD.md` + `model_card.json`) is written next to `saved_model.pb`.

The outputs per task are listed in `signatures.OUTPUTS` (and in `docs/serving.md`). Garbage
bytes make the endpoints raise `tf.errors.InvalidArgumentError`.

Example:

```python
import keras
from eyegazer_keras import fundus
from eyegazer_keras.serving import export

inputs = keras.Input((32, 32, 3))
x = keras.layers.Rescaling(1 / 255.0)(inputs)
x = keras.layers.GlobalAveragePooling2D()(x)
model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(x))
spec = fundus.PreprocessingSpec(stored_size=64)
path = export.export_saved_model(model, "eyegazer_export", task="grade",
                                 image_size=32, preprocessing=spec)
```
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import logging
import os
import platform
from collections.abc import Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

import eyegazer_keras
from eyegazer_keras import NOT_A_MEDICAL_DEVICE, files, fundus
from eyegazer_keras.evaluation import metrics
from eyegazer_keras.serving import precision as precision_lib
from eyegazer_keras.serving import signatures
from eyegazer_keras.serving.model_card import write_model_card

logger = logging.getLogger(__name__)

__all__ = ["METADATA_FILENAME", "METADATA_FORMAT_VERSION", "export_saved_model", "resolve_spec"]

METADATA_FILENAME = "eyegazer_metadata.json"
METADATA_FORMAT_VERSION = 1


def export_saved_model(
    model,
    output_dir: str | os.PathLike,
    *,
    task: str,
    image_size: int,
    preprocessing: fundus.PreprocessingSpec | Mapping | None = None,
    source_size: int | None = None,
    use_ben_graham: bool | None = None,
    class_names: Sequence[str] | None = None,
    cutoffs: Sequence[float] | None = None,
    metadata: Mapping | None = None,
    model_card: Mapping | None = None,
    calibration: Mapping | None = None,
    tta: str = "none",
    explain_method: str | None = None,
    precision: str = "float32",
) -> str:
    """Writes a servable SavedModel (bytes + tensor endpoints, metadata) and its model card.

    Args:
        model: a built Keras model on `float32 [B, image_size, image_size, 3]` 0..255 pixels
            (`fundus.to_model_input`; normalisation inside unless the spec has mean/std),
            returning softmax `[B, 5]` (grade), softmax `[B, 2]` (binary) or `[B, 1]` floats.
        output_dir: str or path. Created if missing; files in it are overwritten.
        task: str. `"grade"`, `"binary"` or `"regression"` (`signatures.TASKS`).
        image_size: int. Model input side in pixels.
        preprocessing: `fundus.PreprocessingSpec` (or its `to_dict()`): what the run's dataset
            stored (size, Ben Graham, crop, normalisation), run in the graph. Defaults to
            None: built from `source_size` and `use_ben_graham`.
        source_size: int. Stored side in pixels; only without `preprocessing`.
        use_ben_graham: bool. Ben Graham stored; only without `preprocessing`. Defaults to False.
        class_names: sequence of str. Defaults to `GRADE_NAMES`; `("no_dr", "dr")` for binary.
        cutoffs: 4 increasing floats: regression (`regression.DEFAULT_CUTOFFS`) or grade (on
            the expected grade; defaults to the calibration's `grade_cutoffs`, else rounding).
        metadata: dict. Extra JSON fields of the metadata, e.g. `{"config": {...}}`.
        model_card: dict. Content for `model_card.write_model_card` (model name, data,
            training, validation metrics, ...). Defaults to None ("not recorded" parts).
        calibration: dict or None. `calibrate.fit_calibration` output (`temperature`,
            `threshold`, ...), applied in the graph and recorded; classifiers only.
        tta: str. In-graph test-time augmentation (`models.wrappers.TTA_MODES`); "none".
        explain_method: str or None. Adds `serving_explain` with this `eyegazer_keras.evaluation.explain`
            method (e.g. "grad_cam"). Defaults to None.
        precision: str. The backbone's compute precision in the export (`precision.PRECISIONS`):
            "float32", "bfloat16" (its matmuls in bf16; outputs float32) or "auto" (bfloat16
            on a CPU with bf16 units, `precision.resolve`). Recorded as the metadata's
            `precision`. Defaults to "float32".

    Returns:
        The SavedModel directory as a string.

    Raises:
        ValueError: an unknown task, a model output that does not fit it, wrong class names
            or cut-offs, a reserved metadata key, a missing/contradicting spec, an unknown
            precision, or "bfloat16" for a model without a keras-hub backbone.
    """
    spec = resolve_spec(preprocessing, source_size, use_ben_graham)
    if task == "grade" and cutoffs is None and calibration is not None:
        cutoffs = calibration.get("grade_cutoffs")
    served = signatures.ServedTask.create(task, image_size, spec, class_names, cutoffs)
    served.check_model(model)
    compute = precision_lib.resolve(precision)
    meta = _build_metadata(served, metadata)
    meta["precision"] = precision_lib.describe(precision, compute)
    in_precision = (
        precision_lib.bfloat16_backbone(model)
        if compute == "bfloat16"
        else contextlib.nullcontext(model)
    )
    explain_maps = _explain_maps(meta, model, served, explain_method)
    if explain_maps is not None and compute != "float32":
        # Explanation maps stay float32 (their ViT walk adds layer outputs itself): traced
        # here, before the backbone's matmuls switch to bf16.
        size = served.image_size
        explain_maps = tf.function(explain_maps).get_concrete_function(
            tf.TensorSpec([None, size, size, 3], tf.float32)
        )
        meta["explanation"]["precision"] = "float32"
    with in_precision:  # the endpoints are traced (in bf16) inside; the model is restored after
        serving = _serving_model(meta, model, served, calibration, tta)
        meta_json = json.dumps(files.json_safe(meta), indent=2, sort_keys=True)
        endpoints = signatures.serving_endpoints(serving, served, meta_json, explain_maps)
        output_dir = _write_archive(model, endpoints, output_dir, meta_json)
    write_model_card(output_dir, meta, model_card)
    logger.info("Exported %s SavedModel to %s", task, output_dir)
    return output_dir


def resolve_spec(
    preprocessing: fundus.PreprocessingSpec | Mapping | None,
    source_size: int | None = None,
    use_ben_graham: bool | None = None,
) -> fundus.PreprocessingSpec:
    """The export's `PreprocessingSpec`: `preprocessing`, or one built from the old arguments.

    Args:
        preprocessing: a spec, its `to_dict()`, or None.
        source_size: int or None. Stored size, when no spec is given.
        use_ben_graham: bool or None. Ben Graham, when no spec is given.

    Returns:
        A `fundus.PreprocessingSpec`.

    Raises:
        ValueError: when neither a spec nor `source_size` is given, or when both are given
            and disagree.
    """
    if preprocessing is None:
        if source_size is None:
            raise ValueError(
                "pass preprocessing=fundus.PreprocessingSpec(stored_size=...) (what the run "
                "stored), or source_size."
            )
        return fundus.PreprocessingSpec(int(source_size), bool(use_ben_graham))
    spec = (
        preprocessing
        if isinstance(preprocessing, fundus.PreprocessingSpec)
        else fundus.PreprocessingSpec.from_dict(preprocessing)
    )
    if source_size is not None and int(source_size) != spec.stored_size:
        raise ValueError(f"source_size={source_size} contradicts {spec}.")
    if use_ben_graham is not None and bool(use_ben_graham) != spec.ben_graham:
        raise ValueError(f"use_ben_graham={use_ben_graham} contradicts {spec}.")
    return spec


# --------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    def dist(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "eyegazer_keras": eyegazer_keras.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras_hub": dist("keras-hub"),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _gate_metadata() -> dict:
    return {
        "function": "fundus.assess_quality",
        "reasons": list(fundus.REASONS),
        "min_image_size": fundus.MIN_IMAGE_SIZE,
        "dark_peak": fundus.DARK_PEAK,
        "dark_mean_luma": fundus.DARK_MEAN_LUMA,
        "min_fundus_fraction": fundus.MIN_FUNDUS_FRACTION,
        "saturated_luma": fundus.SATURATED_LUMA,
        "max_saturated_fraction": fundus.MAX_SATURATED_FRACTION,
        "max_mean_luma": fundus.MAX_MEAN_LUMA,
        "min_sharpness": fundus.MIN_SHARPNESS,
        "max_sharpness": fundus.MAX_SHARPNESS,
        "min_detail_ratio": fundus.MIN_DETAIL_RATIO,
        "min_illumination_cv": fundus.MIN_ILLUMINATION_CV,
        "quality_score": "fundus.quality_score: logistic score fitted to EyeQ labels on real "
        "EyePACS photos (eyegazer_keras/fundus/quality_model.py)",
        "quality_threshold": fundus.QUALITY_THRESHOLD,
        "score_min_size": fundus.SCORE_MIN_SIZE,
        "anchor": "EyeQ (Fu et al., MICCAI 2019): Good/Usable gradable, Reject ungradable",
    }


def _build_metadata(served: signatures.ServedTask, extra: Mapping | None) -> dict:
    spec = served.preprocessing
    meta = {
        "format_version": METADATA_FORMAT_VERSION,
        "task": served.task,
        "class_names": list(served.class_names),
        "image_size": served.image_size,
        "source_size": spec.stored_size,
        "use_ben_graham": spec.ben_graham,
        "preprocessing_spec": spec.to_dict(),
        "quality_gate": _gate_metadata(),
        "cutoffs": served.cutoffs,
        "referable_min_grade": metrics.REFERABLE_MIN_GRADE,
        "preprocessing": spec.describe(served.image_size),
        "signatures": served.signature_table(),
        "versions": _versions(),
        "exported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "not_a_medical_device": NOT_A_MEDICAL_DEVICE,
    }
    for key, value in (extra or {}).items():
        if key in meta:
            raise ValueError(
                f"metadata key {key!r} is set by export_saved_model itself; pass it as a "
                f"keyword argument instead or rename it (reserved: {sorted(meta)})."
            )
        meta[key] = value
    return files.json_safe(meta)


def _serving_model(meta, model, served, calibration, tta):
    """The model to serve (temperature, TTA wrapped in); records both in the metadata."""
    from eyegazer_keras.models import wrappers

    if calibration is not None and served.task == "regression":
        raise ValueError("calibration applies to classifiers, not task='regression'.")
    temperature = float(calibration["temperature"]) if calibration is not None else None
    serving = wrappers.serving_model(model, temperature, tta)
    meta["calibrated"] = calibration is not None
    meta["temperature"] = temperature
    meta["tta"] = {"mode": tta, "views": len(wrappers.tta_views(tf.zeros([1, 1, 1, 3]), tta))}
    meta["operating_threshold"] = None
    if calibration is not None:
        meta["operating_threshold"] = {
            "output": calibration.get("threshold_output"),
            "threshold": float(calibration["threshold"]),
            "target_sensitivity": calibration.get("target_sensitivity"),
            "chosen_on": calibration.get("method"),
            "report_half": (calibration.get("report_half") or {}).get("operating_point"),
        }
        if served.task == "grade":
            meta["grade_decision"] = {
                "output": "predicted_grade",
                "cutoffs": served.cutoffs,
                "chosen_on": calibration.get("grade_cutoffs_method"),
                "report_half": (calibration.get("report_half") or {}).get("grade_decision"),
            }
        # The decision threshold under the output's own name.
        key = "referable_threshold" if served.task == "grade" else "dr_threshold"
        meta[key] = float(calibration["threshold"])
    return serving


def _explain_maps(meta, model, served, explain_method):
    """`maps(x)` of `explain_method` on the base model (no TTA), or None; adds its metadata."""
    if not explain_method:
        return None
    from eyegazer_keras.evaluation import explain

    size = served.image_size
    meta["signatures"][signatures.EXPLAIN_SIGNATURE] = {
        "inputs": {signatures.BYTES_INPUT: "string [B]"},
        "outputs": {
            **signatures.OUTPUTS[served.task],
            signatures.EXPLANATION_OUTPUT: (
                "float32",
                f"[B, {size}, {size}]",
                f"{explain_method} map in [0, 1], frame of the cropped photo padded to a "
                f"square and resized to {size} px; not a lesion segmentation",
            ),
        },
    }
    meta["explanation"] = {"method": explain_method, "tta": "none (maps of the base model)"}
    return explain.map_function(model, explain_method)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def _write_archive(model, endpoints: dict, output_dir, meta_json: str) -> str:
    """Writes the SavedModel with `endpoints` and `assets.extra/eyegazer_metadata.json`."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, (fn, signature) in endpoints.items():
        archive.add_endpoint(name, fn, input_signature=signature)
    output_dir = os.fspath(output_dir)
    archive.write_out(output_dir, verbose=False)
    extra_dir = os.path.join(output_dir, "assets.extra")
    os.makedirs(extra_dir, exist_ok=True)
    with open(os.path.join(extra_dir, METADATA_FILENAME), "w", encoding="utf-8") as f:
        f.write(meta_json + "\n")
    return output_dir
