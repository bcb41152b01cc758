"""SavedModel export: raw JPEG/PNG bytes in, grades and the quality gate out.

keras-hub exports carry no preprocessor, so a plain `model.export()` would make every server
re-implement the fundus crop and resize. `export_saved_model` instead writes a SavedModel whose
endpoints run the run's `fundus.PreprocessingSpec` in the graph, as pure TF ops (TF Serving, which
has no Python, runs the same steps):

* `serving_default`: `image_bytes` (`tf.string [batch]`, JPEG or PNG of any size)
  -> `fundus.decode_image` (EXIF orientation applied) -> `fundus.assess_quality` (the gate)
  -> `fundus.photo_to_model_input` -> model -> named outputs, with `gradable` and
  `ungradable_reason` per image;
* `serving_images`: `images` (`uint8 [batch, H, W, 3]`, already decoded and upright)
  -> gate -> `fundus.photo_to_model_input` -> model -> same outputs;
* `metadata`: no input -> `metadata_json` (`tf.string` scalar): task, class names, the
  preprocessing spec, the gate's thresholds, cut-offs, config, versions and the
  not-a-medical-device notice;
* `serving_explain` (when `explain_method` is given): `image_bytes` as `serving_default` ->
  the same outputs plus `explanation` (`float32 [B, S, S]` in [0, 1], S = the model input side,
  in the frame of the cropped photo padded to a square and resized to S; see
  `eyegazer_keras.explain`), computed on the model without TTA.

With `calibration` (a run's `calibrate.fit_calibration` result) the probabilities are
temperature-scaled inside the graph and the metadata carries `calibrated`, `temperature` and
the `operating_threshold`; with `tta` ("flip", "flip4") the outputs are the mean over flipped
views (`models.wrappers.serving_model`).

An ungradable photo gets no grade: its float outputs are NaN, its class ids -1, its
`class_name` `"ungradable"` (and `referable` false for regression); `gradable` is false and
`ungradable_reason` says why (`fundus.REASONS`).

The same JSON is written to `assets.extra/eyegazer_metadata.json` (readable without
TensorFlow; TF Serving ignores `assets.extra`), and a model card (`MODEL_CARD.md` +
`model_card.json`) is written next to `saved_model.pb`.

The outputs per task are listed in `OUTPUTS` (and in `docs/serving.md`). Garbage bytes make the
endpoints raise `tf.errors.InvalidArgumentError`.

Example:

```python
import keras
from eyegazer_keras import export, fundus

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
from eyegazer_keras import GRADE_NAMES, NOT_A_MEDICAL_DEVICE, fundus, metrics, regression

logger = logging.getLogger(__name__)

TASKS = ("grade", "binary", "regression")
BYTES_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "serving_images"
METADATA_SIGNATURE = "metadata"
EXPLAIN_SIGNATURE = "serving_explain"
EXPLANATION_OUTPUT = "explanation"
BYTES_INPUT = "image_bytes"
IMAGES_INPUT = "images"
METADATA_OUTPUT = "metadata_json"
METADATA_FILENAME = "eyegazer_metadata.json"
MODEL_CARD_MD = "MODEL_CARD.md"
MODEL_CARD_JSON = "model_card.json"
METADATA_FORMAT_VERSION = 1

# Outputs of `serving_default` and `serving_images`, per task: name -> (dtype, shape, meaning).
OUTPUTS: dict[str, dict[str, tuple[str, str, str]]] = {
    "grade": {
        "probabilities": ("float32", "[B, 5]", "softmax over grades 0..4"),
        "predicted_class": ("int64", "[B]", "argmax grade 0..4"),
        "class_name": ("string", "[B]", "name of predicted_class"),
        "expected_grade": ("float32", "[B]", "sum_k p_k * k"),
        "referable_probability": ("float32", "[B]", "p_2 + p_3 + p_4 (grade >= 2)"),
    },
    "binary": {
        "probabilities": ("float32", "[B, 2]", "softmax over (no_dr, dr)"),
        "predicted_class": ("int64", "[B]", "argmax 0 = no_dr, 1 = dr"),
        "class_name": ("string", "[B]", "name of predicted_class"),
        "dr_probability": ("float32", "[B]", "p_1"),
    },
    "regression": {
        "grade": ("float32", "[B]", "continuous grade from the model"),
        "predicted_grade": ("int64", "[B]", "grade 0..4 from the baked-in cut-offs"),
        "class_name": ("string", "[B]", "name of predicted_grade"),
        "referable": ("bool", "[B]", "predicted_grade >= 2 (false when ungradable)"),
    },
}
# Outputs of the quality gate, added to every task's outputs (`fundus.assess_quality`).
GATE_OUTPUTS: dict[str, tuple[str, str, str]] = {
    "gradable": ("bool", "[B]", "the photo passed the quality gate"),
    "ungradable_reason": ("string", "[B]", '"" or one of fundus.REASONS'),
}
for _task_outputs in OUTPUTS.values():
    _task_outputs.update(GATE_OUTPUTS)
UNGRADABLE_CLASS_NAME = "ungradable"

_NUM_OUTPUTS = {"grade": len(GRADE_NAMES), "binary": len(metrics.BINARY_NAMES), "regression": 1}

_DEFAULT_INTENDED_USE = (
    "Research and teaching: reproducing diabetic-retinopathy grading experiments on fundus "
    "photographs. Not for clinical use."
)
_DEFAULT_LIMITS = (
    "Trained and validated on one public dataset (or synthetic images); performance on other "
    "cameras, populations, image qualities and disease mixes is unknown. Labels contain "
    "grader disagreement and known duplicates with conflicting grades. Probabilities are not "
    "calibrated for any clinical threshold."
)


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


def _check_model_output(model, task: str, image_size: int) -> None:
    """Runs the model once on a black batch so a wrong head fails here, not in a server."""
    out = model(tf.zeros([1, image_size, image_size, 3], tf.float32), training=False)
    shape = tuple(out.shape)
    want = _NUM_OUTPUTS[task]
    if len(shape) != 2 or shape[1] != want:
        raise ValueError(
            f"task={task!r} needs a model output of shape [batch, {want}], but the model returns "
            f"{list(shape)}. Pass the task the model was trained for (grade: 5-way softmax, "
            "binary: 2-way softmax, regression: one float)."
        )


def _outputs_fn(task: str, class_names: Sequence[str], cutoffs: Sequence[float] | None):
    """Returns `fn(model_output) -> dict` building the named outputs of `OUTPUTS[task]`."""
    names = tf.constant(list(class_names), tf.string)

    if task == "regression":
        cut = tf.constant(cutoffs, tf.float32)

        def regression(out):
            grade = tf.reshape(tf.cast(out, tf.float32), [-1])
            # np.digitize(grade, cutoffs), as `regression.apply_cutoffs`.
            predicted = tf.reduce_sum(
                tf.cast(grade[:, tf.newaxis] >= cut[tf.newaxis, :], tf.int64), axis=1
            )
            return {
                "grade": grade,
                "predicted_grade": predicted,
                "class_name": tf.gather(names, predicted),
                "referable": predicted >= metrics.REFERABLE_MIN_GRADE,
            }

        return regression

    def classification(out):
        probs = tf.cast(out, tf.float32)
        predicted = tf.argmax(probs, axis=-1, output_type=tf.int64)
        result = {
            "probabilities": probs,
            "predicted_class": predicted,
            "class_name": tf.gather(names, predicted),
        }
        if task == "grade":
            grades = tf.range(len(class_names), dtype=tf.float32)
            result["expected_grade"] = tf.reduce_sum(probs * grades, axis=-1)
            result["referable_probability"] = tf.reduce_sum(
                probs[:, metrics.REFERABLE_MIN_GRADE :], axis=-1
            )
        else:
            result["dr_probability"] = probs[:, 1]
        return result

    return classification


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
        "anchor": "EyeQ (Fu et al., MICCAI 2019): Good/Usable gradable, Reject ungradable",
    }


def _build_metadata(
    *,
    task: str,
    class_names: Sequence[str],
    image_size: int,
    spec: fundus.PreprocessingSpec,
    cutoffs: Sequence[float] | None,
    extra: Mapping | None,
) -> dict:
    meta = {
        "format_version": METADATA_FORMAT_VERSION,
        "task": task,
        "class_names": list(class_names),
        "image_size": int(image_size),
        "source_size": spec.stored_size,
        "use_ben_graham": spec.ben_graham,
        "preprocessing_spec": spec.to_dict(),
        "quality_gate": _gate_metadata(),
        "cutoffs": list(cutoffs) if cutoffs is not None else None,
        "referable_min_grade": metrics.REFERABLE_MIN_GRADE,
        "preprocessing": spec.describe(image_size),
        "signatures": {
            BYTES_SIGNATURE: {"inputs": {BYTES_INPUT: "string [B]"}, "outputs": OUTPUTS[task]},
            IMAGES_SIGNATURE: {
                "inputs": {IMAGES_INPUT: "uint8 [B, H, W, 3]"},
                "outputs": OUTPUTS[task],
            },
            METADATA_SIGNATURE: {"inputs": {}, "outputs": {METADATA_OUTPUT: "string []"}},
        },
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
    return metrics.json_safe(meta)


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


def _mask_ungradable(result: dict, gradable: tf.Tensor) -> dict:
    """No grade for an ungradable photo: floats NaN, ids -1, names "ungradable", bools false."""
    out = {}
    for name, value in result.items():
        keep = tf.reshape(gradable, [-1] + [1] * (len(value.shape) - 1))
        if value.dtype == tf.string:
            fill = tf.constant(UNGRADABLE_CLASS_NAME)
        elif value.dtype.is_floating:
            fill = tf.constant(float("nan"), value.dtype)
        elif value.dtype == tf.bool:
            fill = tf.constant(False)
        else:
            fill = tf.constant(-1, value.dtype)
        out[name] = tf.where(keep, value, fill)
    return out


def serving_endpoints(
    model,
    *,
    task: str,
    image_size: int,
    spec: fundus.PreprocessingSpec,
    class_names: Sequence[str],
    cutoffs: Sequence[float] | None,
    meta_json: str,
    explain_maps=None,
) -> dict:
    """The SavedModel's endpoints: `{name: (fn, input_signature)}`.

    Every photo endpoint shares `photo_inputs` (gate + spec) and `predict` (model -> named
    outputs + gate outputs); a new endpoint (an explanation map, test-time augmentation)
    is one more entry built from the same two pieces.

    Args:
        model: the model to serve (see `export_saved_model`; calibration and TTA wrapped in).
        task: str. One of `TASKS`.
        image_size: int. Model input side.
        spec: `fundus.PreprocessingSpec`.
        class_names: sequence of str.
        cutoffs: regression cut-offs or None.
        meta_json: str. The metadata JSON served by `metadata`.
        explain_maps: callable or None. `maps(x) -> float32 [B, S, S]` on model inputs; adds
            `serving_explain`. Defaults to None.

    Returns:
        Dict of endpoint name -> `(callable, list of tf.TensorSpec)`.
    """
    outputs = _outputs_fn(task, class_names, cutoffs)
    model_input = tf.TensorSpec([image_size, image_size, 3], tf.float32)

    def photo_inputs(images, decode: bool):
        """Per photo: (model input, gradable, reason), via `tf.map_fn`."""

        def one(item):
            image = fundus.decode_image(item) if decode else item
            quality = fundus.assess_quality(image)
            x = fundus.photo_to_model_input(image, image_size, spec)
            return x, quality["gradable"], quality["ungradable_reason"]

        return tf.map_fn(
            one,
            images,
            fn_output_signature=(
                model_input,
                tf.TensorSpec([], tf.bool),
                tf.TensorSpec([], tf.string),
            ),
        )

    def predict(x, gradable, reason):
        result = _mask_ungradable(outputs(model(x, training=False)), gradable)
        return {**result, "gradable": gradable, "ungradable_reason": reason}

    def serve_bytes(image_bytes):
        return predict(*photo_inputs(image_bytes, decode=True))

    def serve_images(images):
        return predict(*photo_inputs(images, decode=False))

    def serve_metadata():
        return {METADATA_OUTPUT: tf.constant(meta_json)}

    bytes_input = [tf.TensorSpec([None], tf.string, name=BYTES_INPUT)]
    endpoints = {
        BYTES_SIGNATURE: (serve_bytes, bytes_input),
        IMAGES_SIGNATURE: (
            serve_images,
            [tf.TensorSpec([None, None, None, 3], tf.uint8, name=IMAGES_INPUT)],
        ),
        METADATA_SIGNATURE: (serve_metadata, []),
    }
    if explain_maps is not None:

        def serve_explain(image_bytes):
            x, gradable, reason = photo_inputs(image_bytes, decode=True)
            return {**predict(x, gradable, reason), EXPLANATION_OUTPUT: explain_maps(x)}

        endpoints[EXPLAIN_SIGNATURE] = (serve_explain, bytes_input)
    return endpoints


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
) -> str:
    """Writes a servable SavedModel (bytes + tensor endpoints, metadata) and its model card.

    Args:
        model: a built Keras model taking `float32 [B, image_size, image_size, 3]` as
            `fundus.to_model_input` gives it (0..255, normalisation inside, unless the spec
            has mean/std). grade: softmax `[B, 5]`; binary: softmax `[B, 2]`; regression:
            `[B, 1]` float grade.
        output_dir: str or path. Directory for `saved_model.pb` and the model card; created if
            missing, files in it are overwritten.
        task: str. `"grade"`, `"binary"` or `"regression"`.
        image_size: int. Model input side in pixels.
        preprocessing: `fundus.PreprocessingSpec` (or its `to_dict()`): what the run's
            dataset stored (size, Ben Graham, crop, normalisation). Serving runs it in the
            graph. Defaults to None: built from `source_size` and `use_ben_graham`.
        source_size: int. Side the dataset builder stored; only without `preprocessing`.
        use_ben_graham: bool. Whether the dataset applied Ben Graham; only without
            `preprocessing`. Defaults to False.
        class_names: sequence of str. Names per class id. Defaults to `GRADE_NAMES` for grade and
            regression, `("no_dr", "dr")` for binary.
        cutoffs: 4 increasing floats turning a regression output into grades 0..4
            (`regression.apply_cutoffs`). Regression only. Defaults to `(0.5, 1.5, 2.5, 3.5)`.
        metadata: dict. Extra JSON-serialisable fields stored in the SavedModel metadata, e.g.
            `{"config": {...}, "run": "workdir/name"}`. Defaults to None.
        model_card: dict. Model card content: any of `model_name` (or `model`), `data`,
            `training` (or `training_config`), `validation_metrics`, `preprocessing` (a note;
            the exact pipeline is always filled in), `intended_use`, `limits`, plus free keys.
            Missing parts get explicit "not recorded" text. Defaults to None.
        calibration: dict or None. `calibrate.fit_calibration` output (`temperature`,
            `threshold`, ...): applied inside the export and recorded in the metadata.
            Classifiers only. Defaults to None (uncalibrated).
        tta: str. test-time augmentation inside the graph, one of
            `models.wrappers.TTA_MODES`. Defaults to "none".
        explain_method: str or None. adds the `serving_explain` signature with this
            `eyegazer_keras.explain` method (e.g. "gradient_rollout", "grad_cam"). Defaults to
            None (no explain signature).

    Returns:
        The SavedModel directory as a string.

    Raises:
        ValueError: for an unknown task, a model whose output does not fit the task, wrong
            class names or cut-offs, a reserved metadata key, or a missing/contradicting
            preprocessing spec.
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not one of {TASKS}.")
    if class_names is None:
        class_names = metrics.BINARY_NAMES if task == "binary" else GRADE_NAMES
    class_names = tuple(str(n) for n in class_names)
    expected = len(metrics.BINARY_NAMES) if task == "binary" else len(GRADE_NAMES)
    if len(class_names) != expected:
        raise ValueError(f"task={task!r} needs {expected} class_names, got {list(class_names)}.")
    if task == "regression":
        cutoffs = regression.DEFAULT_CUTOFFS if cutoffs is None else cutoffs
        regression.apply_cutoffs([0.0], cutoffs)  # raises a ValueError naming the fix when invalid
        cutoffs = [float(c) for c in cutoffs]
    elif cutoffs is not None:
        raise ValueError(f"cutoffs only apply to task='regression', not task={task!r}.")
    spec = resolve_spec(preprocessing, source_size, use_ben_graham)
    image_size = int(image_size)
    _check_model_output(model, task, image_size)

    meta = _build_metadata(
        task=task,
        class_names=class_names,
        image_size=image_size,
        spec=spec,
        cutoffs=cutoffs,
        extra=metadata,
    )
    served = _serving_extras(meta, model, task, image_size, calibration, tta, explain_method)
    meta_json = json.dumps(meta, indent=2, sort_keys=True)
    explain_maps = None
    if explain_method:
        from eyegazer_keras import explain

        explain_maps = explain.map_function(model, explain_method)
    endpoints = serving_endpoints(
        served,
        task=task,
        image_size=image_size,
        spec=spec,
        class_names=class_names,
        cutoffs=cutoffs,
        meta_json=meta_json,
        explain_maps=explain_maps,
    )
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
    write_model_card(output_dir, meta, model_card)
    logger.info("Exported %s SavedModel to %s", task, output_dir)
    return output_dir


def _serving_extras(meta, model, task, image_size, calibration, tta, explain_method):
    """Calibration, TTA and explain entries of the metadata; returns the model to serve."""
    from eyegazer_keras.models import wrappers

    if calibration is not None and task == "regression":
        raise ValueError("calibration applies to classifiers, not task='regression'.")
    temperature = float(calibration["temperature"]) if calibration is not None else None
    served = wrappers.serving_model(model, temperature, tta)
    meta["calibrated"] = calibration is not None
    meta["temperature"] = temperature
    meta["tta"] = {"mode": tta, "views": len(wrappers.tta_views(tf.zeros([1, 1, 1, 3]), tta))}
    meta["operating_threshold"] = (
        None
        if calibration is None
        else {
            "output": calibration.get("threshold_output"),
            "threshold": float(calibration["threshold"]),
            "target_sensitivity": calibration.get("target_sensitivity"),
            "chosen_on": calibration.get("method"),
            "report_half": (calibration.get("report_half") or {}).get("operating_point"),
        }
    )
    if calibration is not None:  # the decision threshold under the output's own name
        key = "referable_threshold" if task == "grade" else "dr_threshold"
        meta[key] = float(calibration["threshold"])
    if explain_method:
        meta["signatures"][EXPLAIN_SIGNATURE] = {
            "inputs": {BYTES_INPUT: "string [B]"},
            "outputs": {
                **OUTPUTS[task],
                EXPLANATION_OUTPUT: (
                    "float32",
                    f"[B, {image_size}, {image_size}]",
                    f"{explain_method} map in [0, 1], frame of the cropped photo padded to a "
                    f"square and resized to {image_size} px; not a lesion segmentation",
                ),
            },
        }
        meta["explanation"] = {"method": explain_method, "tta": "none (maps of the base model)"}
    return served


def _md_value(value, indent: int = 0) -> list[str]:
    pad = "  " * indent
    if isinstance(value, Mapping):
        lines = []
        for k, v in value.items():
            if isinstance(v, Mapping | list) and v:
                lines.append(f"{pad}- **{k}**:")
                lines.extend(_md_value(v, indent + 1))
            else:
                lines.append(f"{pad}- **{k}**: {_md_scalar(v)}")
        return lines
    if isinstance(value, list):
        if all(not isinstance(v, Mapping | list) for v in value):
            return [f"{pad}- {_md_scalar(v)}" for v in value]
        return [f"{pad}```json", *json.dumps(value, indent=2).splitlines(), f"{pad}```"]
    return [f"{pad}{_md_scalar(value)}"]


def _md_scalar(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "n/a"
    return str(value)


def write_model_card(output_dir: str | os.PathLike, meta: Mapping, card: Mapping | None) -> dict:
    """Writes `MODEL_CARD.md` and `model_card.json` into `output_dir`.

    Args:
        output_dir: str or path. The SavedModel directory.
        meta: dict. The SavedModel metadata (see `export_saved_model`).
        card: dict or None. Model card content (see `export_saved_model`). Missing parts are
            written as "not recorded".

    Returns:
        The model card as a dict (what `model_card.json` holds).
    """
    card = dict(card or {})
    not_recorded = "not recorded"
    # Accepted aliases: "model" for "model_name", "training_config" for "training".
    model_name, model_alias = card.pop("model_name", None), card.pop("model", None)
    training, training_alias = card.pop("training", None), card.pop("training_config", None)
    preprocessing_note = card.pop("preprocessing", None)
    full = {
        "model_name": model_name or model_alias or f"eyegazer-keras {meta['task']} model",
        "task": meta["task"],
        "class_names": meta["class_names"],
        "data": card.pop("data", not_recorded),
        "training": training or training_alias or not_recorded,
        "validation_metrics": card.pop("validation_metrics", None) or not_recorded,
        "preprocessing": {
            **({"description": preprocessing_note} if preprocessing_note else {}),
            "pipeline": meta["preprocessing"],
            "source_size": meta["source_size"],
            "image_size": meta["image_size"],
            "use_ben_graham": meta["use_ben_graham"],
            "spec": meta.get("preprocessing_spec"),
            "quality_gate": meta.get("quality_gate"),
            "cutoffs": meta["cutoffs"],
        },
        "intended_use": card.pop("intended_use", _DEFAULT_INTENDED_USE),
        "limits": card.pop("limits", _DEFAULT_LIMITS),
        "not_a_medical_device": NOT_A_MEDICAL_DEVICE,
        "signatures": {
            name: {"inputs": sig["inputs"], "outputs": sorted(sig["outputs"])}
            for name, sig in meta["signatures"].items()
        },
        "versions": meta["versions"],
        "exported_at": meta["exported_at"],
    }
    full.update(card)  # free keys (e.g. "authors", "license") keep their place at the end
    full = metrics.json_safe(full)

    titles = {
        "data": "Data and split",
        "training": "Training configuration",
        "validation_metrics": "Validation metrics",
        "preprocessing": "Preprocessing",
        "intended_use": "Intended use",
        "limits": "Limitations",
        "signatures": "Serving signatures",
        "versions": "Versions",
    }
    lines = [
        f"# {full['model_name']}",
        "",
        f"> **Not a medical device.** {NOT_A_MEDICAL_DEVICE}",
        "",
        f"- **task**: {full['task']}",
        f"- **classes**: {', '.join(full['class_names'])}",
        f"- **exported**: {full['exported_at']}",
        "",
    ]
    skip = {"model_name", "task", "class_names", "exported_at", "not_a_medical_device"}
    for key, value in full.items():
        if key in skip:
            continue
        lines += [f"## {titles.get(key, key.replace('_', ' ').capitalize())}", ""]
        lines += _md_value(value) + [""]
    output_dir = os.fspath(output_dir)
    with open(os.path.join(output_dir, MODEL_CARD_MD), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    with open(os.path.join(output_dir, MODEL_CARD_JSON), "w", encoding="utf-8") as f:
        json.dump(full, f, indent=2)
        f.write("\n")
    return full


# --------------------------------------------------------------------------------------------
# The model card of a training run (`train.export_run`). Kept apart from the SavedModel code.
# --------------------------------------------------------------------------------------------
RUN_CARD_METRICS = (
    "accuracy",
    "majority_baseline",
    "qwk",
    "auroc",
    "sensitivity",
    "specificity",
    "referable",
    "n",
)


def training_run_card(
    *,
    model_name: str,
    run_data: Mapping,
    training_config: Mapping,
    validation_metrics: Mapping,
) -> dict:
    """Model-card content (`model_card=` of `export_saved_model`) for an `eyegazer train` run.

    Args:
        model_name: str. Title, e.g. "keras-hub ViT + LoRA (rank 8) grade classifier".
        run_data: dict. The run's `dataset.json` (`train.RunData.to_dict()`): `dataset`,
            `builder_config`, `version`, `splits`, `preprocessing`
            (`fundus.PreprocessingSpec.to_dict()`).
        training_config: dict. The run's `config.json`.
        validation_metrics: dict. The run's `metrics_validation.json` (`RUN_CARD_METRICS` kept).

    Returns:
        A dict with `model_name`, `data`, `training`, `validation_metrics`, `preprocessing`.
    """
    pre = run_data.get("preprocessing", {})
    source, size = pre.get("stored_size"), training_config.get("image_size")
    return {
        "model_name": model_name,
        "data": {
            "dataset": run_data.get("dataset"),
            "config": run_data.get("builder_config"),
            "version": run_data.get("version"),
            "splits": run_data.get("splits"),
            "trained_on": "train",
            "validated_on": "validation",
        },
        "training": dict(training_config),
        "validation_metrics": {
            k: validation_metrics[k] for k in RUN_CARD_METRICS if k in validation_metrics
        },
        "preprocessing": (
            f"decode JPEG/PNG -> crop black border, pad to square, resize to {source}px"
            f"{' + Ben Graham' if pre.get('ben_graham') else ''} "
            f"(eyegazer_keras.fundus.preprocess_fundus) -> resize to {size}px; "
            "normalisation inside the model"
        ),
    }
