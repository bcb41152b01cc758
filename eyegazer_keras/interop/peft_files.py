"""The files around a PEFT adapter and an eyegazer run: what `peft` reads and writes besides weights.

* out of a run (`export_peft`): `read_run` (``config.json`` + adapter arrays),
  `adapter_config` (PEFT's ``adapter_config.json``), `run_preprocessing` and `readme` (how to
  load the adapter and what input it was trained on);
* into a run (`import_peft`): `import_record` (``peft_import.json``), `hf_preprocessing`
  (what an HF-trained adapter saw; `describe_preprocessing` says it in words) and `run_data`
  (the run's ``dataset.json``).

`HF_CLASSES` names the HF classifier class (and its module) of each base ``model_type``.

Every function returns plain dicts/strings; `eyegazer_keras.interop.peft` writes them.

Example:

```python
from eyegazer_keras.interop import peft_files

config = peft_files.adapter_config("google/vit-base-patch16-224", 8, 8.0, ["q_proj", "v_proj"])
print(config["r"], config["lora_alpha"], config["modules_to_save"])  # 8 8 ['classifier']
```
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

__all__ = [
    "HF_CLASSES",
    "adapter_config",
    "describe_preprocessing",
    "hf_preprocessing",
    "import_record",
    "read_run",
    "readme",
    "run_data",
    "run_preprocessing",
]

_ADAPTER_FILES = ("adapter.npz", os.path.join("checkpoints", "best_adapter.npz"))
# HF model_type -> (the classifier class a PEFT adapter is loaded onto, its module).
HF_CLASSES = {
    "vit": ("ViTForImageClassification", "transformers.models.vit.modeling_vit"),
    "dinov2": ("Dinov2ForImageClassification", "transformers.models.dinov2.modeling_dinov2"),
    "dinov2_with_registers": (
        "Dinov2WithRegistersForImageClassification",
        "transformers.models.dinov2_with_registers.modeling_dinov2_with_registers",
    ),
}
# The processors' defaults when a base ships no preprocessor_config.json.
_VIT_PROCESSOR = {"size": {"height": None, "width": None}, "resample": 2, "image_mean": [0.5] * 3}
_DINOV2_PROCESSOR = {  # BitImageProcessor as facebook/dinov2-* ship it
    "size": {"shortest_edge": 256},
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "resample": 3,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}


def read_run(workdir: str) -> tuple[dict, dict, dict]:
    """Reads a run's ``config.json`` and adapter without building the model.

    Args:
        workdir: str. An absolute `eyegazer train` (or `import-peft`) run folder.

    Returns:
        ``(config, arrays, metadata)``: the config dict, ``{variable path: array}`` of
        ``adapter.npz`` (else ``checkpoints/best_adapter.npz``), and the adapter's
        ``__metadata__`` (`vit_lora.read_adapter_metadata`; ``{}`` if absent).

    Raises:
        FileNotFoundError: no ``config.json`` or no adapter file.
    """
    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path} not found: is {workdir} an eyegazer run folder?")
    with open(config_path) as f:
        config = json.load(f)
    for name in _ADAPTER_FILES:
        path = os.path.join(workdir, name)
        if os.path.exists(path):
            break
    else:
        raise FileNotFoundError(f"{workdir}: no adapter.npz or checkpoints/best_adapter.npz")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if k != "__metadata__"}
        metadata = json.loads(str(data["__metadata__"])) if "__metadata__" in data.files else {}
    return config, arrays, metadata


def adapter_config(
    base: str, rank: int, alpha: float, targets: list, model_type: str = "vit"
) -> dict[str, Any]:
    """PEFT 0.21's ``adapter_config.json`` for a LoRA on an HF image classifier.

    Args:
        base: str. ``base_model_name_or_path`` (an HF id or directory).
        rank: int. ``r``.
        alpha: float. ``lora_alpha`` (written as an int when whole).
        targets: list of str. ``target_modules`` (``q_proj``, ``v_proj``, ...).
        model_type: str. The base's HF ``model_type`` (a key of `HF_CLASSES`): names the
            classifier class in ``auto_mapping``. Defaults to ``"vit"``.

    Returns:
        The JSON dict (``modules_to_save=["classifier"]``, ``bias="none"``, no DoRA/rsLoRA).
    """
    base_class, library = HF_CLASSES[model_type]
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base,
        "revision": None,
        "inference_mode": True,
        "r": rank,
        "lora_alpha": alpha if alpha != int(alpha) else int(alpha),
        "lora_dropout": 0.0,
        "target_modules": targets,
        "modules_to_save": ["classifier"],
        "bias": "none",
        "use_dora": False,
        "use_rslora": False,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "auto_mapping": {"base_model_class": base_class, "parent_library": library},
    }


def hf_preprocessing(base_info: dict, image_size: int) -> dict:
    """The preprocessing an HF-trained adapter saw (the processor's defaults if unknown).

    Args:
        base_info: dict. What `peft` read of the base (`hf_vit.describe_base`); its
            ``preprocessor`` entry is the base's ``preprocessor_config.json`` (or None), its
            ``family`` ``"vit"`` (``ViTImageProcessor``) or ``"dinov2"`` (``BitImageProcessor``).
        image_size: int. The model input side in pixels.

    Returns:
        dict with ``crop`` ("none": no fundus crop), ``resize`` ([h, w] px, or None when the
        processor resizes the shortest edge), ``resize_shortest_edge`` (px or None),
        ``center_crop`` ([h, w] px or None), ``resample``, ``rescale_factor``, ``image_mean``,
        ``image_std`` and ``source``.
    """
    shipped = base_info.get("preprocessor") or {}
    dinov2 = base_info.get("family") == "dinov2"
    p = shipped or (_DINOV2_PROCESSOR if dinov2 else _VIT_PROCESSOR)
    size = p.get("size") or {}
    shortest = size.get("shortest_edge")
    crop = p.get("crop_size") or {}
    center_crop = None
    if p.get("do_center_crop", dinov2) and crop.get("height"):
        center_crop = [int(crop["height"]), int(crop.get("width", crop["height"]))]
    resize = None
    if shortest is None:
        resize = [int(size.get("height") or image_size), int(size.get("width") or image_size)]
    default_std = [0.5] * 3 if not dinov2 else _DINOV2_PROCESSOR["image_std"]
    default = "BitImageProcessor defaults" if dinov2 else "ViTImageProcessor defaults"
    return {
        "crop": "none",
        "resize": resize,
        "resize_shortest_edge": None if shortest is None else int(shortest),
        "center_crop": center_crop,
        "resample": {2: "bilinear", 3: "bicubic"}.get(p.get("resample", 2), "bilinear"),
        "rescale_factor": p.get("rescale_factor", 1 / 255),
        "image_mean": p.get("image_mean", [0.5, 0.5, 0.5]),
        "image_std": p.get("image_std", default_std),
        "source": "preprocessor_config.json" if shipped else default,
    }


def describe_preprocessing(pre: dict) -> str:
    """`hf_preprocessing`'s dict in words, e.g. ``"resize to [224, 224] (no fundus crop), mean
    [0.5, 0.5, 0.5], std [0.5, 0.5, 0.5]"``."""
    if pre.get("resize_shortest_edge"):
        how = f"resize the shortest edge to {pre['resize_shortest_edge']}"
    else:
        how = f"resize to {pre.get('resize')}"
    if pre.get("center_crop"):
        how += f", center crop {pre['center_crop']}"
    return f"{how} (no fundus crop), mean {pre.get('image_mean')}, std {pre.get('image_std')}"


def import_record(
    adapter, base: str, base_info: dict, num_labels: int, image_size: int, crop: str
) -> dict:
    """``peft_import.json``: what `import_peft` read, onto which base, and for which input.

    Args:
        adapter: `peft.PeftAdapter`. The adapter as read.
        base: str. The base it was put on (`hf_vit.normalise_source`).
        base_info: dict. `hf_vit.describe_base(base)`.
        num_labels: int. Classes of the imported head (2 or 5).
        image_size: int. The model input side in pixels.
        crop: str. The preprocessing the run's export applies (``"none"`` or ``"fundus"``).

    Returns:
        dict: base (kind, family, HF model type, position-grid size), adapter, naming, rank,
        alpha, targets, head origin, the adapter's config and the preprocessing it was trained
        with (`hf_preprocessing`).
    """
    return {
        "base": base,
        "base_kind": base_info["kind"],
        "base_family": base_info.get("family", "vit"),
        "base_model_type": base_info.get("model_type", "vit"),
        "base_grid_size": base_info.get("grid_size"),
        "image_size": image_size,
        "adapter": adapter.source,
        "naming": adapter.naming,
        "rank": adapter.rank,
        "lora_alpha": adapter.alpha,
        "targets": list(adapter.targets),
        "num_labels": num_labels,
        "head_from": "adapter" if adapter.head is not None else "base",
        "adapter_config": adapter.config,
        "adapter_base_model_name_or_path": adapter.config.get("base_model_name_or_path"),
        "trained_preprocessing": hf_preprocessing(base_info, image_size),
        "export_crop": crop,
    }


def run_data(config, crop: str) -> dict:
    """The run's ``dataset.json`` (`runs.RunData`): what `eyegazer export` serves with.

    The preprocessing spec is the adapter's (`crop="none"`: ViTImageProcessor's plain resize)
    or, on request, this project's fundus crop; the model normalises inside. The training set
    of an imported adapter is unknown: no split sizes, and no majority class (metrics then take
    the majority baseline from the evaluated split and say so).

    Args:
        config: `configs.TrainConfig` of the imported run.
        crop: str. ``"none"`` or ``"fundus"``.

    Returns:
        dict with the `runs.RunData` fields.
    """
    from eyegazer_keras import GRADE_NAMES, fundus
    from eyegazer_keras.data import datasets as data
    from eyegazer_keras.evaluation import metrics

    spec = fundus.PreprocessingSpec(stored_size=config.image_size, crop=crop)
    binary = config.task == "binary"
    return {
        "dataset": config.dataset,
        "builder_config": config.dataset_config,
        "version": "unknown (imported PEFT adapter)",
        "splits": {},
        "data_dir": os.path.abspath(data.default_data_dir(config.data_dir)),
        "task": "binary" if binary else "grade",
        "class_names": list(metrics.BINARY_NAMES if binary else GRADE_NAMES),
        "majority_class": None,
        "preprocessing": spec.to_dict(),
    }


def run_preprocessing(import_record: str, config: dict, normalization: dict | None = None) -> dict:
    """What a run's model was trained on: an imported adapter's HF pipeline, else fundus.

    Args:
        import_record: str. The run's ``peft_import.json`` path (absent for trained runs).
        config: dict. The run's ``config.json``.
        normalization: dict or None. The model's ``{"scale", "offset"}`` on 0..255 pixels (its
            adapter metadata); None: mean = std = 0.5. Defaults to None.

    Returns:
        The import record's ``trained_preprocessing``, or ``{"crop": "fundus",
        "description": ...}`` for a run trained here.
    """
    if os.path.exists(import_record):
        with open(import_record) as f:
            return json.load(f)["trained_preprocessing"]
    norm = "0..255 mapped to -1..1 (mean = std = 0.5)"
    if normalization and normalization.get("scale") is not None:
        std = 1.0 / (255.0 * np.asarray(normalization["scale"], "float64"))
        mean = -np.asarray(normalization.get("offset", 0.0), "float64") * std
        if not (np.allclose(mean, 0.5) and np.allclose(std, 0.5)):
            norm = f"0..1 pixels normalised with mean {np.round(mean, 4).tolist()}, std "
            norm += f"{np.round(std, 4).tolist()}"
    return {
        "crop": "fundus",
        "description": (
            "eyegazer_keras.fundus.preprocess_fundus (crop the black border, pad to square, "
            f"resize; dataset {config.get('dataset')}/{config.get('dataset_config')}) then "
            f"resize to {config.get('image_size')} px; {norm}"
        ),
    }


def readme(record: dict) -> str:
    """The exported adapter's ``README.md``: model-card header, how to load it, its input.

    Args:
        record: dict. The export record (`peft.export_peft`): ``num_labels``, ``rank``,
            ``lora_alpha``, ``target_modules``, ``base_model_name_or_path``,
            ``base_model_class`` (default ``ViTForImageClassification``), ``image_size``,
            ``trained_preprocessing``.

    Returns:
        str. Markdown with a Hugging Face front matter (``library_name: peft``).
    """
    labels = record["num_labels"]
    classes = "no_dr, dr" if labels == 2 else "grades 0-4"
    pre = record["trained_preprocessing"]
    base_class = record.get("base_model_class", HF_CLASSES["vit"][0])
    processor = "ViTImageProcessor" if base_class.startswith("ViT") else "BitImageProcessor"
    how = (
        "this project's fundus crop: " + pre.get("description", "")
        if pre.get("crop") == "fundus"
        else f"{processor} ({describe_preprocessing(pre)})"
    )
    return f"""---
library_name: peft
base_model: {record["base_model_name_or_path"]}
---
# LoRA adapter exported by `eyegazer export-peft`

Research software, NOT a medical device. Classes: {classes} ({labels} labels).
LoRA r={record["rank"]}, alpha={record["lora_alpha"]} on {record["target_modules"]}, head saved
as `modules_to_save=["classifier"]`.

```python
from transformers import {base_class}
from peft import PeftModel

base = {base_class}.from_pretrained("{record["base_model_name_or_path"]}", num_labels={labels})
model = PeftModel.from_pretrained(base, "path/to/this/folder").eval()
```

Trained on input preprocessed with {how}. Feed it the same, at {record["image_size"]} px.
"""
