"""Hugging Face ViT checkpoints: loading them into keras-hub, and naming them.

keras-hub 0.32 converts HF ViT checkpoints (`keras_hub.src.utils.transformers.convert_vit`) from
``hf://org/name`` or a local directory (``config.json`` + ``model.safetensors``), with two gaps
handled here:

* a ``ViTModel`` checkpoint (the in21k backbones, e.g. ``google/vit-large-patch16-224-in21k``)
  stores its keys without the ``vit.`` prefix that the converter asks for (keras-hub #3007):
  `load_hf_vitmodel` retries each key without it;
* the converter drops ``layer_norm_eps`` (HF default 1e-12, keras-hub 1e-6): the caller passes
  it (`hf_backbone_kwargs`).

`HF_ORIGINS` maps each keras-hub ViT preset to the HF checkpoint keras-hub converted it from
(``tools/checkpoint_conversion/convert_vit_checkpoints.py`` in keras-hub): the ``*_imagenet``
presets are ImageNet-1k fine-tuned, the ``*_imagenet21k`` ones the in21k backbones; the
DINOv2 presets come from ``facebook/dinov2-*`` (their keras-hub descriptions).

`describe_base` and `classifier_head` read what PEFT adapters need of a base (kind, input
size, classifier) from ViT and DINOv2 checkpoints (``model_type`` in `HF_MODEL_TYPES`); the
DINOv2 weights themselves load through `dinov2_backbone`.
"""

from __future__ import annotations

import os
import re

__all__ = [
    "HF_MODEL_TYPES",
    "HF_ORIGINS",
    "classifier_head",
    "describe_base",
    "hf_backbone_kwargs",
    "hf_origin",
    "load_hf_vitmodel",
    "normalise_source",
    "read_json",
    "resolve_file",
]

HF_SCHEME = "hf://"

# keras-hub ViT preset -> the HF checkpoint it was converted from (keras-hub's conversion script).
HF_ORIGINS = {
    "vit_base_patch16_224_imagenet": "google/vit-base-patch16-224",
    "vit_base_patch16_384_imagenet": "google/vit-base-patch16-384",
    "vit_base_patch32_384_imagenet": "google/vit-base-patch32-384",
    "vit_large_patch16_224_imagenet": "google/vit-large-patch16-224",
    "vit_large_patch16_384_imagenet": "google/vit-large-patch16-384",
    "vit_large_patch32_384_imagenet": "google/vit-large-patch32-384",
    "vit_base_patch16_224_imagenet21k": "google/vit-base-patch16-224-in21k",
    "vit_base_patch32_224_imagenet21k": "google/vit-base-patch32-224-in21k",
    "vit_large_patch16_224_imagenet21k": "google/vit-large-patch16-224-in21k",
    "vit_large_patch32_224_imagenet21k": "google/vit-large-patch32-224-in21k",
    "vit_huge_patch14_224_imagenet21k": "google/vit-huge-patch14-224-in21k",
    **{
        f"dinov2_{registers}{size}": f"facebook/dinov2-{registers.replace('_', '-')}{size}"
        for registers in ("", "with_registers_")
        for size in ("small", "base", "large", "giant")
    },
}
_KAGGLE = re.compile(r"^kaggle://keras/(?:vit|dinov2)/keras/([a-z0-9_]+)(?:/\d+)?$")
# HF ``model_type`` -> the backbone family (keras-hub class) a PEFT adapter on it maps onto.
HF_MODEL_TYPES = {"vit": "vit", "dinov2": "dinov2", "dinov2_with_registers": "dinov2"}


def hf_origin(preset: str) -> str | None:
    """The HF checkpoint id a keras-hub ViT or DINOv2 preset was converted from, or None.

    Args:
        preset: str. A preset name (``"vit_large_patch16_224_imagenet21k"``, ``"dinov2_small"``)
            or its Kaggle handle (``"kaggle://keras/vit/keras/vit_large_patch16_224_imagenet21k/3"``).
    """
    match = _KAGGLE.match(preset)
    return HF_ORIGINS.get(match.group(1) if match else preset)


def resolve_file(source: str, filename: str) -> str:
    """Local path of `filename` in a local directory or an ``hf://org/name`` repository.

    ``hf://`` goes through ``huggingface_hub.hf_hub_download``, which honours ``HF_HOME``,
    ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` (with ``HF_HUB_OFFLINE=1`` only the local cache is
    read).

    Args:
        source: str. A directory or ``hf://org/name``.
        filename: str. File inside it, e.g. ``"adapter_config.json"``.

    Returns:
        str. A readable local file path.

    Raises:
        FileNotFoundError: the file is not there (or not in the cache when offline).
    """
    if source.startswith(HF_SCHEME):
        import huggingface_hub
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        repo = source[len(HF_SCHEME) :]
        try:
            return huggingface_hub.hf_hub_download(repo_id=repo, filename=filename)
        except (EntryNotFoundError, LocalEntryNotFoundError) as err:
            offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
            hint = " (HF_HUB_OFFLINE is set: only the local cache is read)" if offline else ""
            raise FileNotFoundError(f"{source}: no {filename}{hint}: {err}") from None
    path = os.path.join(source, filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{source}: no {filename}")
    return path


def read_json(source: str, filename: str) -> dict:
    """`resolve_file` + ``json.load``."""
    import json

    with open(resolve_file(source, filename)) as f:
        return json.load(f)


def hf_backbone_kwargs(config: dict) -> dict:
    """``ViTBackbone.from_preset`` kwargs that keras-hub's converter leaves out of an HF config."""
    return {"layer_norm_epsilon": config.get("layer_norm_eps", 1e-12)}


def load_hf_vitmodel(preset, config, kwargs):
    """Loads an HF `ViTModel` checkpoint, whose keys lack the `vit.` prefix (keras-hub #3007).

    Same keras-hub converter, with a weight loader that also tries the key without `vit.`.

    Args:
        preset: str. ``hf://org/name`` or a local HF checkpoint directory.
        config: dict. Its ``config.json``.
        kwargs: dict. Extra ``ViTBackbone.from_preset`` kwargs (``dtype``, ``layer_norm_epsilon``).

    Returns:
        A `keras_hub.models.ViTBackbone` holding the checkpoint's weights.
    """
    import keras_hub
    from keras_hub.src.utils.transformers import convert_vit
    from keras_hub.src.utils.transformers.safetensor_utils import SafetensorLoader

    class _Loader(SafetensorLoader):
        def get_tensor(self, hf_weight_key):
            try:
                return super().get_tensor(hf_weight_key)
            except Exception:
                if not hf_weight_key.startswith("vit."):
                    raise
                self.prefix = None
                return super().get_tensor(hf_weight_key[len("vit.") :])

    vit = keras_hub.models.ViTBackbone.from_preset(preset, load_weights=False, **kwargs)
    with _Loader(preset) as loader:
        convert_vit.convert_weights(vit, loader, config)
    return vit


def normalise_source(source) -> str:
    """A ViT source as stored in a run: local paths made absolute, ids and names as given.

    Args:
        source: str or PathLike. ``hf://org/name``, a keras-hub preset name, or a local
            preset / HF checkpoint directory.

    Returns:
        str. The absolute path of an existing local directory, else `source` unchanged.
    """
    source = os.fspath(source)
    if source.startswith(HF_SCHEME) or not os.path.exists(source):
        return source  # hf:// id or a keras-hub preset name
    return os.path.abspath(os.path.expanduser(source))


def describe_base(base: str) -> dict:
    """What a ViT or DINOv2 base is, read from its config files (no weights loaded).

    Args:
        base: str. A `normalise_source` result: keras-hub preset name or directory, local HF
            checkpoint directory or ``hf://org/name``.

    Returns:
        dict: ``kind`` (``"keras_preset"`` or ``"hf_checkpoint"``), ``family`` (``"vit"`` or
        ``"dinov2"``), ``model_type`` (HF's: ``"vit"``, ``"dinov2"``,
        ``"dinov2_with_registers"``), ``image_size`` (px: a ViT's ``image_size``; a DINOv2's
        ``crop_size`` from its ``preprocessor_config.json``, what its processor feeds, else its
        position grid's ``image_size``) and ``preprocessor`` (the HF
        ``preprocessor_config.json`` or None); HF checkpoints also ``architecture`` (e.g.
        ``"ViTForImageClassification"``), ``num_labels`` (or None) and ``grid_size`` (the
        side the position table was trained for, px).

    Raises:
        ValueError: an HF ``config.json`` that is neither a ViT nor a DINOv2.
        FileNotFoundError: a config file is missing.
    """
    hf_like = base.startswith(HF_SCHEME) or os.path.isdir(base)
    config = read_json(base, "config.json") if hf_like else None
    if config is None or "registered_name" in config:  # keras-hub preset (name or dir)
        backbone_config = (config or {}).get("config") or _keras_preset_config(base)
        size = int(backbone_config["image_shape"][0])
        dinov2 = "num_register_tokens" in backbone_config
        model_type = "dinov2" if dinov2 else "vit"
        if dinov2 and backbone_config.get("num_register_tokens"):
            model_type = "dinov2_with_registers"
        return {
            "kind": "keras_preset",
            "family": HF_MODEL_TYPES[model_type],
            "model_type": model_type,
            "image_size": size,
            "preprocessor": None,
        }
    model_type = config.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise ValueError(
            f"{base}: config.json describes {model_type!r}, not a ViT or DINOv2 "
            f"(model_type {', '.join(HF_MODEL_TYPES)})"
        )
    try:
        preprocessor = read_json(base, "preprocessor_config.json")
    except FileNotFoundError:
        preprocessor = None
    grid = int(config.get("image_size", 224))
    size = grid
    crop = (preprocessor or {}).get("crop_size") or {}
    if HF_MODEL_TYPES[model_type] == "dinov2" and crop.get("height"):
        size = int(crop["height"])
    default = {"vit": "ViTModel", "dinov2": "Dinov2Model"}[HF_MODEL_TYPES[model_type]]
    return {
        "kind": "hf_checkpoint",
        "family": HF_MODEL_TYPES[model_type],
        "model_type": model_type,
        "image_size": size,
        "grid_size": grid,
        "architecture": (config.get("architectures") or [default])[0],
        "num_labels": len(config["id2label"]) if config.get("id2label") else None,
        "preprocessor": preprocessor,
    }


def _keras_preset_config(base):
    from keras_hub.src.utils import preset_utils

    return preset_utils.load_json(base, preset_utils.CONFIG_FILE)["config"]


def classifier_head(base: str, info: dict) -> dict | None:
    """The classifier of an HF ``*ForImageClassification`` checkpoint, or None for other bases.

    Args:
        base: str. The checkpoint (directory or ``hf://org/name``).
        info: dict. `describe_base(base)`.

    Returns:
        ``{"weight": float32 (num_labels, features), "bias": float32 (num_labels,)}`` from its
        ``model.safetensors`` (features: hidden for a ViT, 2 * hidden for a DINOv2, whose head
        reads the class token and the patch mean), or None when the base has no classifier.

    Raises:
        FileNotFoundError: the checkpoint has no ``model.safetensors``.
    """
    if not str(info.get("architecture", "")).endswith("ForImageClassification"):
        return None
    from safetensors import safe_open

    with safe_open(resolve_file(base, "model.safetensors"), framework="np") as f:
        return {k: f.get_tensor(f"classifier.{k}").astype("float32") for k in ("weight", "bias")}
