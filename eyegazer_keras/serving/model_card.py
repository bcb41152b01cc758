"""The model card of an export: `MODEL_CARD.md` + `model_card.json` next to `saved_model.pb`.

After Mitchell et al., "Model Cards for Model Reporting" (FAT* 2019): data and split, training
configuration, validation metrics, the exact preprocessing, intended use, limitations, serving
signatures and versions, with the not-a-medical-device notice on top. Parts the caller does not
give are written as "not recorded", never left out.

`export.export_saved_model` calls `write_model_card` with its metadata; `training_run_card`
builds the content for an `eyegazer train` run (`runs.export_run`).

Example:

```python
from eyegazer_keras.serving import model_card

meta = {
    "task": "grade", "class_names": ["no_dr", "mild", "moderate", "severe", "proliferative"],
    "preprocessing": "decode -> crop -> resize", "source_size": 64, "image_size": 32,
    "use_ben_graham": False, "cutoffs": None, "signatures": {}, "versions": {},
    "exported_at": "2026-01-01T00:00:00+00:00",
}
card = model_card.write_model_card(".", meta, {"data": "synthetic_fundus/tiny"})
print(card["training"])  # not recorded
```
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from eyegazer_keras import NOT_A_MEDICAL_DEVICE, files

__all__ = [
    "MODEL_CARD_JSON",
    "MODEL_CARD_MD",
    "RUN_CARD_METRICS",
    "training_run_card",
    "write_model_card",
]

MODEL_CARD_MD = "MODEL_CARD.md"
MODEL_CARD_JSON = "model_card.json"
NOT_RECORDED = "not recorded"

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
_TITLES = {
    "data": "Data and split",
    "training": "Training configuration",
    "validation_metrics": "Validation metrics",
    "preprocessing": "Preprocessing",
    "intended_use": "Intended use",
    "limits": "Limitations",
    "signatures": "Serving signatures",
    "precision": "Compute precision",
    "versions": "Versions",
}
_HEADER_KEYS = {"model_name", "task", "class_names", "exported_at", "not_a_medical_device"}


def write_model_card(output_dir: str | os.PathLike, meta: Mapping, card: Mapping | None) -> dict:
    """Writes `MODEL_CARD.md` and `model_card.json` into `output_dir`.

    Args:
        output_dir: str or path. The SavedModel directory (it must exist).
        meta: dict. The SavedModel metadata (`export.export_saved_model`): `task`,
            `class_names`, `preprocessing`, `source_size`, `image_size`, `use_ben_graham`,
            `cutoffs`, `signatures`, `versions`, `exported_at` (+ `preprocessing_spec`,
            `quality_gate`, `precision` when present).
        card: dict or None. Content: any of `model_name` (or `model`), `data`, `training` (or
            `training_config`), `validation_metrics`, `preprocessing` (a note; the exact
            pipeline comes from `meta`), `intended_use`, `limits`, plus free keys (kept at
            the end). Missing parts are written as "not recorded".

    Returns:
        The model card as a dict (what `model_card.json` holds).

    Raises:
        KeyError: `meta` lacks one of the keys above.
        OSError: `output_dir` cannot be written.
    """
    full = _card_content(meta, card)
    output_dir = os.fspath(output_dir)
    with open(os.path.join(output_dir, MODEL_CARD_MD), "w", encoding="utf-8") as f:
        f.write("\n".join(_card_markdown(full)))
    with open(os.path.join(output_dir, MODEL_CARD_JSON), "w", encoding="utf-8") as f:
        json.dump(full, f, indent=2)
        f.write("\n")
    return full


def _card_content(meta: Mapping, card: Mapping | None) -> dict:
    """The card's sections, in order: given content, the metadata's facts, defaults."""
    card = dict(card or {})
    # Accepted aliases: "model" for "model_name", "training_config" for "training".
    model_name, model_alias = card.pop("model_name", None), card.pop("model", None)
    training, training_alias = card.pop("training", None), card.pop("training_config", None)
    preprocessing_note = card.pop("preprocessing", None)
    full = {
        "model_name": model_name or model_alias or f"eyegazer-keras {meta['task']} model",
        "task": meta["task"],
        "class_names": meta["class_names"],
        "data": card.pop("data", NOT_RECORDED),
        "training": training or training_alias or NOT_RECORDED,
        "validation_metrics": card.pop("validation_metrics", None) or NOT_RECORDED,
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
        "precision": meta.get("precision", NOT_RECORDED),
        "versions": meta["versions"],
        "exported_at": meta["exported_at"],
    }
    full.update(card)  # free keys (e.g. "authors", "license") keep their place at the end
    return files.json_safe(full)


def _card_markdown(full: Mapping) -> list[str]:
    """`MODEL_CARD.md` lines: title, notice, header facts, then one section per key."""
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
    for key, value in full.items():
        if key in _HEADER_KEYS:
            continue
        lines += [f"## {_TITLES.get(key, key.replace('_', ' ').capitalize())}", ""]
        lines += _md_value(value) + [""]
    return lines


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


# --------------------------------------------------------------------------------------------
# The model card of a training run (`runs.export_run`).
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
    "model_selection",  # the validation split also chose the epoch (optimistic figures)
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
        run_data: dict. The run's `dataset.json` (`runs.RunData.to_dict()`): `dataset`,
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
