"""The files around a PEFT adapter and an eyegazer run: what `peft` reads and writes besides weights.

* out of a run (`export_peft`): `read_run` (``config.json`` + adapter arrays),
  `adapter_config` (PEFT's ``adapter_config.json``), `run_preprocessing` and `readme` (how to
  load the adapter and what input it was trained on);
* into a run (`import_peft`): `import_record` (``peft_import.json``), `hf_preprocessing`
  (what an HF-trained adapter saw) and `run_data` (the run's ``dataset.json``).

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
    "adapter_config",
    "hf_preprocessing",
    "import_record",
    "read_run",
    "readme",
    "run_data",
    "run_preprocessing",
]

_ADAPTER_FILES = ("adapter.npz", os.path.join("checkpoints", "best_adapter.npz"))


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


def adapter_config(base: str, rank: int, alpha: float, targets: list) -> dict[str, Any]:
    """PEFT 0.21's ``adapter_config.json`` for a LoRA on a ``ViTForImageClassification``.

    Args:
        base: str. ``base_model_name_or_path`` (an HF id or directory).
        rank: int. ``r``.
        alpha: float. ``lora_alpha`` (written as an int when whole).
        targets: list of str. ``target_modules`` (``q_proj``, ``v_proj``, ...).

    Returns:
        The JSON dict (``modules_to_save=["classifier"]``, ``bias="none"``, no DoRA/rsLoRA).
    """
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
        "auto_mapping": {
            "base_model_class": "ViTForImageClassification",
            "parent_library": "transformers.models.vit.modeling_vit",
        },
    }


def hf_preprocessing(base_info: dict, image_size: int) -> dict:
    """The preprocessing an HF-trained adapter saw (``ViTImageProcessor`` defaults if unknown).

    Args:
        base_info: dict. What `peft` read of the base; its ``preprocessor`` entry is the
            base's ``preprocessor_config.json`` (or None).
        image_size: int. The model input side in pixels.

    Returns:
        dict with ``crop`` ("none"), ``resize`` ([h, w] px), ``resample``, ``rescale_factor``,
        ``image_mean``, ``image_std`` and ``source``.
    """
    p = base_info.get("preprocessor") or {}
    size = p.get("size") or {}
    return {
        "crop": "none",
        "resize": [int(size.get("height", image_size)), int(size.get("width", image_size))],
        "resample": {2: "bilinear", 3: "bicubic"}.get(p.get("resample", 2), "bilinear"),
        "rescale_factor": p.get("rescale_factor", 1 / 255),
        "image_mean": p.get("image_mean", [0.5, 0.5, 0.5]),
        "image_std": p.get("image_std", [0.5, 0.5, 0.5]),
        "source": "preprocessor_config.json" if p else "ViTImageProcessor defaults",
    }


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
        dict: base, adapter, naming, rank, alpha, targets, head origin, the adapter's config and
        the preprocessing it was trained with (`hf_preprocessing`).
    """
    return {
        "base": base,
        "base_kind": base_info["kind"],
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


def run_preprocessing(import_record: str, config: dict) -> dict:
    """What a run's model was trained on: an imported adapter's HF pipeline, else fundus.

    Args:
        import_record: str. The run's ``peft_import.json`` path (absent for trained runs).
        config: dict. The run's ``config.json``.

    Returns:
        The import record's ``trained_preprocessing``, or ``{"crop": "fundus",
        "description": ...}`` for a run trained here.
    """
    if os.path.exists(import_record):
        with open(import_record) as f:
            return json.load(f)["trained_preprocessing"]
    return {
        "crop": "fundus",
        "description": (
            "eyegazer_keras.fundus.preprocess_fundus (crop the black border, pad to square, "
            f"resize; dataset {config.get('dataset')}/{config.get('dataset_config')}) then "
            f"resize to {config.get('image_size')} px; 0..255 mapped to -1..1 (mean = std = 0.5)"
        ),
    }


def readme(record: dict) -> str:
    """The exported adapter's ``README.md``: model-card header, how to load it, its input.

    Args:
        record: dict. The export record (`peft.export_peft`): ``num_labels``, ``rank``,
            ``lora_alpha``, ``target_modules``, ``base_model_name_or_path``, ``image_size``,
            ``trained_preprocessing``.

    Returns:
        str. Markdown with a Hugging Face front matter (``library_name: peft``).
    """
    labels = record["num_labels"]
    classes = "no_dr, dr" if labels == 2 else "grades 0-4"
    pre = record["trained_preprocessing"]
    how = (
        "this project's fundus crop: " + pre.get("description", "")
        if pre.get("crop") == "fundus"
        else f"ViTImageProcessor (plain resize to {pre.get('resize')}, mean "
        f"{pre.get('image_mean')}, std {pre.get('image_std')})"
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
from transformers import ViTForImageClassification
from peft import PeftModel

base = ViTForImageClassification.from_pretrained("{record["base_model_name_or_path"]}", num_labels={labels})
model = PeftModel.from_pretrained(base, "path/to/this/folder").eval()
```

Trained on input preprocessed with {how}. Feed it the same, at {record["image_size"]} px.
"""
