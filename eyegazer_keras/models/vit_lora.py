"""keras-hub ViT backbone + LoRA + classification head for DR grading.

The model takes ``float32 [batch, S, S, 3]`` RGB pixels in 0..255 and returns softmax
probabilities ``[batch, num_classes]`` (always float32, also under mixed precision). The pixel
normalisation lives inside the model (layer ``"normalization"``); the head is one Dense layer
named ``"predictions"``.

LoRA uses the Keras core layer API (``EinsumDense.enable_lora(rank, lora_alpha=...)``) on the
layers named in ``lora_targets`` (default: the attention ``query`` and ``value`` projections).
Decisions, so that training, saving and reloading agree:

* Everything in the backbone is frozen except the LoRA ``A``/``B`` matrices. That includes the
  q/v **biases** (PEFT's default ``bias="none"``); keras-hub's ``Backbone.enable_lora`` leaves them
  trainable but does not save them, so a reloaded adapter would differ from the trained model.
* The head (``predictions``) is trainable. Layer norms are frozen (PEFT default).
* ``lora_rank == 0`` means full fine-tuning: every variable is trainable.
* ``lora_layout="peft"`` (default) gives the attention ``EinsumDense`` kernel
  ``(hidden, heads, head_dim)`` a true rank-r LoRA, ``A: (hidden, rank)`` and
  ``B: (rank, heads, head_dim)`` (`fast_layers.RankRLoRAEinsumDense`): PEFT's ``hidden*rank +
  rank*hidden`` parameters per target (ViT-B/16, rank 8, q+v: 294,912). ``"keras"`` keeps Keras
  core's ``EinsumDense.enable_lora``: ``A: (hidden, heads, rank)``, ``B: (rank, head_dim)``,
  ``hidden*heads*rank + rank*head_dim`` parameters and an update of rank up to ``heads*rank``
  (1,781,760 for the same model). ``count_parameters`` reports what is really trained.
* ``model.save(".keras")`` and ``model.save_weights`` store the LoRA update *merged* into the
  kernels (Keras core behaviour). ``load_weights`` into a LoRA model then sets A and B to zero,
  so outputs match but LoRA gets zero gradients afterwards: resume training from
  `save_adapter`/`load_adapter` or ``tf.train.Checkpoint(model=..., optimizer=...)``, which keep
  A/B as they are.

Example:

```python
import numpy as np
from eyegazer_keras.models.vit_lora import build_vit_classifier

model = build_vit_classifier(
    "config",
    backbone_config=dict(patch_size=7, num_layers=2, num_heads=2, hidden_dim=48, mlp_dim=96),
    num_classes=5,
    image_size=28,
)
probs = model(np.zeros((1, 28, 28, 3), "float32"))  # [1, 5]
```
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import keras_hub
import numpy as np

from eyegazer_keras.models import dinov2_backbone, vit_backbone
from eyegazer_keras.models import fast_layers as fast_layers_lib
from eyegazer_keras.models.vit_layers import PixelNormalization, ViTPooling

logger = logging.getLogger(__name__)

__all__ = [
    "ADAPTER_FORMAT",
    "adapter_size_report",
    "build_from_config",
    "build_info",
    "build_vit_classifier",
    "count_parameters",
    "format_trainable_parameters",
    "load_adapter",
    "lora_parameter_count",
    "read_adapter_metadata",
    "save_adapter",
]

ADAPTER_FORMAT = "eyegazer-vit-lora-adapter/1"
_METADATA_KEY = "__metadata__"
_INFO_ATTR = "_eyegazer_build_info"
LORA_LAYOUTS = ("peft", "keras")


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------
def build_vit_classifier(
    backbone,
    *,
    num_classes: int,
    image_size: int,
    pooling: str = "token",
    lora_rank: int = 8,
    lora_alpha: float | None = None,
    lora_targets: Sequence[str] = ("query", "value"),
    lora_layout: str = "peft",
    head_dropout: float = 0.0,
    backbone_config: Mapping[str, Any] | None = None,
    normalization: Mapping[str, Any] | None = None,
    dtype=None,
    fast_layers: bool = True,
) -> keras.Model:
    """Builds the ViT(+LoRA) DR classifier in the current distribution-strategy scope.

    Args:
        backbone: str or None. A keras-hub preset name (needs network) or directory, an
            ``"hf://org/name"`` id or local HF ViT checkpoint, or ``"config"``/None for a
            random ViT from ``backbone_config`` (`vit_backbone.load_backbone`).
        num_classes: int. 2 (binary: no DR / DR) or 5 (grades 0-4).
        image_size: int. Input side in pixels, a multiple of the patch size; position
            embeddings are resized bicubically when it differs from the backbone's.
        pooling: str. ``"token"`` (class token) or ``"gap"`` (mean of patch tokens).
        lora_rank: int. LoRA rank; 0 means full fine-tuning. Defaults to 8.
        lora_alpha: float or None. Scale alpha/rank of the update. Defaults to ``lora_rank``.
        lora_targets: sequence of str. Dense/EinsumDense layer names that get LoRA.
        lora_layout: str. ``"peft"`` (rank-r, as PEFT) or ``"keras"`` (Keras core's per-head
            ``A``); see the module docstring. Defaults to ``"peft"``.
        head_dropout: float. Dropout before the head. Defaults to 0.
        backbone_config: dict or None. ``ViTBackbone`` kwargs for ``backbone="config"``.
        normalization: dict or None. ``{"scale", "offset"}`` on 0..255 or ``{"mean", "std"}``
            on 0..1 pixels. Defaults to the source's own, else mean = std = 0.5.
        dtype: dtype or `keras.DTypePolicy` of the backbone (e.g. ``"mixed_bfloat16"``); the
            normalisation and head stay float32. Defaults to None (global policy).
        fast_layers: bool. Factored LoRA ``x @ W + s * (x @ A) @ B`` and a float32 exact GELU
            (`fast_layers.use_fast_layers`): same math and variables, faster. Defaults to True.

    Returns:
        A functional `keras.Model` (not compiled), ``float32 [B, S, S, 3]`` 0..255 in, float32
        softmax ``[B, num_classes]`` out, with ``build_info(model)`` metadata attached.

    Raises:
        ValueError: a wrong class count, rank, layout, pooling, image size or LoRA target.
    """
    lora_alpha = _checked_alpha(num_classes, lora_rank, lora_alpha, lora_layout)
    image_size, lora_targets = int(image_size), tuple(lora_targets)
    vit, source, norm = vit_backbone.load_backbone(backbone, backbone_config, image_size, dtype)
    vit = vit_backbone.resize_backbone(vit, image_size)
    vit.name = "backbone"  # stable layer name (variable paths do not include it)
    scale, offset = vit_backbone.resolve_normalization(normalization, norm)
    model = _classifier(vit, num_classes, image_size, pooling, head_dropout, (scale, offset))
    if lora_rank > 0:
        _enable_lora(vit, lora_rank, lora_alpha, lora_targets, lora_layout)
    if fast_layers:
        fast_layers_lib.use_fast_layers(vit)
    lora = {"rank": lora_rank, "alpha": lora_alpha, "targets": lora_targets, "layout": lora_layout}
    info = _build_info(source, num_classes, image_size, pooling, lora, head_dropout, scale, offset)
    setattr(model, _INFO_ATTR, json.dumps(info))
    logger.info("ViT classifier from %s: %s", source, format_trainable_parameters(model))
    return model


def build_from_config(config, backbone=None, dtype=None) -> keras.Model:
    """`build_vit_classifier` with the model fields of a `configs.TrainConfig`.

    Args:
        config: `configs.TrainConfig` (or any object with its model fields): `num_classes`,
            `image_size`, `pooling`, `lora_rank`, `lora_alpha`, `lora_targets`,
            `lora_layout`, `head_dropout`, `backbone`, `backbone_config`.
        backbone: str or None. Overrides `config.backbone`. Defaults to None.
        dtype: dtype or `keras.DTypePolicy` of the backbone. Defaults to None.

    Returns:
        The model, as `build_vit_classifier` returns it.

    Raises:
        ValueError: as `build_vit_classifier`; OSError when a preset cannot be fetched.
    """
    return build_vit_classifier(
        config.backbone if backbone is None else backbone,
        num_classes=config.num_classes,
        image_size=config.image_size,
        pooling=config.pooling,
        lora_rank=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_targets=tuple(config.lora_targets),
        lora_layout=config.lora_layout,
        head_dropout=config.head_dropout,
        backbone_config=dict(config.backbone_config) if config.backbone_config else None,
        dtype=dtype,
    )


def _checked_alpha(num_classes: int, lora_rank: int, lora_alpha, lora_layout: str):
    """Refuses a wrong class count, rank or layout; returns alpha (default: the rank)."""
    if num_classes not in (2, 5):
        raise ValueError(f"num_classes={num_classes}: use 2 (binary) or 5 (grades 0-4).")
    if lora_rank < 0:
        raise ValueError(f"lora_rank={lora_rank} must be >= 0 (0 = full fine-tuning).")
    if lora_layout not in LORA_LAYOUTS:
        raise ValueError(f"lora_layout={lora_layout!r}: use one of {LORA_LAYOUTS}.")
    return float(lora_rank) if lora_rank > 0 and lora_alpha is None else lora_alpha


def _classifier(vit, num_classes, image_size, pooling, head_dropout, scale_offset) -> keras.Model:
    """images -> normalization -> backbone -> pooling -> (dropout) -> predictions (float32)."""
    inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="images")
    x = PixelNormalization(*scale_offset, name="normalization")(inputs)
    x = vit({"images": x} if dinov2_backbone.is_dinov2_backbone(vit) else x)
    x = ViTPooling(
        pooling,
        num_prefix_tokens=dinov2_backbone.num_prefix_tokens(vit),
        dtype=vit.dtype_policy,
        name="pooling",
    )(x)
    if head_dropout:
        x = keras.layers.Dropout(head_dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="predictions"
    )(x)
    return keras.Model(inputs, outputs, name="vit_lora_classifier")


def _build_info(source, num_classes, image_size, pooling, lora, head_dropout, scale, offset):
    """The JSON-able build arguments `build_info` returns (and adapters record)."""
    on = lora["rank"] > 0
    return {
        "backbone": source,
        "num_classes": num_classes,
        "image_size": image_size,
        "pooling": pooling,
        "lora_rank": lora["rank"],
        "lora_alpha": lora["alpha"] if on else None,
        "lora_targets": list(lora["targets"]) if on else [],
        "lora_layout": lora["layout"] if on else None,
        "bias": "none",
        "head_dropout": head_dropout,
        "normalization": {"scale": scale, "offset": offset},
    }


def build_info(model: keras.Model) -> dict:
    """Returns the build arguments recorded by `build_vit_classifier` (empty dict if none).

    Args:
        model: keras.Model. A model from `build_vit_classifier`.
    """
    raw = getattr(model, _INFO_ATTR, None)
    return json.loads(raw) if raw else {}


def _enable_lora(vit, rank, alpha, targets, layout="peft"):
    layers = [
        layer
        for layer in vit._flatten_layers(include_self=False)
        if layer.name in targets and hasattr(layer, "enable_lora")
    ]
    found = {layer.name for layer in layers}
    if missing := sorted(set(targets) - found):
        names = sorted(
            {la.name for la in vit._flatten_layers(include_self=False) if hasattr(la, "kernel")}
        )
        raise ValueError(f"lora_targets {missing} match no Dense/EinsumDense layer; have {names}.")
    # Freeze every backbone variable (kernels, q/v biases, norms, embeddings) ...
    for variable in vit.weights:
        variable.trainable = False
    # ... then add the LoRA matrices, which are created trainable.
    for layer in layers:
        if layout == "peft" and type(layer) is keras.layers.EinsumDense:
            layer.__class__ = fast_layers_lib.RankRLoRAEinsumDense
            try:
                layer.enable_lora(rank, lora_alpha=alpha)
            except ValueError:
                layer.__class__ = keras.layers.EinsumDense
                raise
        else:
            layer.enable_lora(rank, lora_alpha=alpha)


# --------------------------------------------------------------------------------------------
# Parameter counts
# --------------------------------------------------------------------------------------------
def count_parameters(model: keras.Model) -> dict:
    """Counts trainable and total parameters like PEFT's ``print_trainable_parameters``.

    Args:
        model: keras.Model. Any built model.

    Returns:
        ``{"trainable": int, "total": int, "percent": float}``.
    """
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    total = sum(int(np.prod(v.shape)) for v in model.weights)
    return {
        "trainable": trainable,
        "total": total,
        "percent": 100.0 * trainable / total if total else 0.0,
    }


def format_trainable_parameters(model: keras.Model) -> str:
    """Formats `count_parameters` exactly as PEFT prints it.

    Args:
        model: keras.Model. Any built model.

    Returns:
        ``"trainable params: 1,234 || all params: 5,678 || trainable%: 21.7330"``.
    """
    c = count_parameters(model)
    return (
        f"trainable params: {c['trainable']:,d} || all params: {c['total']:,d} "
        f"|| trainable%: {c['percent']:.4f}"
    )


def lora_parameter_count(
    *, num_layers: int, hidden_dim: int, num_heads: int, rank: int, num_targets: int = 2
) -> dict:
    """LoRA parameters on attention projections: Keras layout vs PEFT layout.

    Args:
        num_layers: int. Transformer blocks.
        hidden_dim: int. Hidden size.
        num_heads: int. Attention heads.
        rank: int. LoRA rank.
        num_targets: int. LoRA'd projections per block (query+value = 2). Defaults to 2.

    Returns:
        ``{"keras": int, "peft": int}``: Keras ``EinsumDense`` LoRA (``A: (h, heads, r)``,
        ``B: (r, h/heads)``) and PEFT ``Linear`` LoRA (``A: (h, r)``, ``B: (r, h)``).
    """
    keras_n = hidden_dim * num_heads * rank + rank * (hidden_dim // num_heads)
    peft_n = hidden_dim * rank + rank * hidden_dim
    return {
        "keras": num_layers * num_targets * keras_n,
        "peft": num_layers * num_targets * peft_n,
    }


# --------------------------------------------------------------------------------------------
# Adapter file
# --------------------------------------------------------------------------------------------
def save_adapter(model: keras.Model, path) -> int:
    """Saves only the trainable variables (LoRA A/B, head, ...) to one ``.npz`` file.

    Keys are the variables' ``variable.path``; ``__metadata__`` holds a JSON string with the
    build arguments (`build_info`), the format tag and a fingerprint of the frozen weights.

    Args:
        model: keras.Model. A model from `build_vit_classifier`.
        path: str or PathLike. Output file (written as given, no suffix added).

    Returns:
        int. The file size in bytes.
    """
    path = os.fspath(path)
    arrays = {}
    for variable in model.trainable_weights:
        if variable.path in arrays or variable.path == _METADATA_KEY:
            raise ValueError(f"two trainable variables share the path {variable.path!r}.")
        arrays[variable.path] = keras.ops.convert_to_numpy(variable.value)
    metadata = {
        "format": ADAPTER_FORMAT,
        "build": build_info(model),
        "base_fingerprint": _base_fingerprint(model),
        "keras_version": keras.__version__,
        "keras_hub_version": keras_hub.__version__,
    }
    arrays[_METADATA_KEY] = np.array(json.dumps(metadata))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    size = os.path.getsize(path)
    logger.info("saved adapter %s (%d variables, %d bytes)", path, len(arrays) - 1, size)
    return size


def read_adapter_metadata(path) -> dict:
    """Returns the metadata dict stored in an adapter file.

    Args:
        path: str or PathLike. An adapter written by `save_adapter`.
    """
    with np.load(os.fspath(path), allow_pickle=False) as data:
        if _METADATA_KEY not in data.files:
            raise ValueError(f"{path}: no {_METADATA_KEY} entry; not written by save_adapter.")
        return json.loads(str(data[_METADATA_KEY]))


def load_adapter(model: keras.Model, path, *, check_base: bool = True) -> dict:
    """Loads an adapter from `save_adapter` into a freshly built model, by variable path.

    Args:
        model: keras.Model. Built by `build_vit_classifier` with the same backbone source and
            arguments as the model that was saved.
        path: str or PathLike. The adapter file.
        check_base: bool. Refuse an adapter whose frozen-weight fingerprint differs from this
            model's (the adapter only makes sense on the base it was trained on). Defaults to
            True.

    Returns:
        dict. The adapter's metadata.
    """
    path = os.fspath(path)
    metadata = read_adapter_metadata(path)
    saved_build = metadata.get("build", {})
    if metadata.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{path}: format {metadata.get('format')!r}, expected {ADAPTER_FORMAT}.")
    here = build_info(model)
    if saved_build.get("lora_rank") and "lora_layout" not in saved_build:
        saved_build = dict(saved_build, lora_layout="keras")  # before lora_layout existed
    for key in ("lora_rank", "lora_alpha", "lora_layout", "num_classes"):
        if here and key in saved_build and saved_build[key] != here.get(key):
            raise ValueError(
                f"{path}: adapter has {key}={saved_build[key]!r} but the model has "
                f"{key}={here.get(key)!r}: rebuild the model with {key}={saved_build[key]!r}."
            )
    variables = {v.path: v for v in model.trainable_weights}
    with np.load(path, allow_pickle=False) as data:
        keys = [k for k in data.files if k != _METADATA_KEY]
        missing = sorted(set(variables) - set(keys))
        extra = sorted(set(keys) - set(variables))
        if missing or extra:
            raise ValueError(
                f"{path}: adapter keys do not match the model's trainable variables "
                f"(missing from file: {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
                f"not in model: {extra[:5]}{' ...' if len(extra) > 5 else ''}). Rebuild the "
                f"model with the adapter's build arguments: {saved_build}."
            )
        values = {}
        for key in keys:
            value = data[key]
            if tuple(value.shape) != tuple(variables[key].shape):
                raise ValueError(
                    f"{path}: {key!r} has shape {value.shape} in the file but "
                    f"{tuple(variables[key].shape)} in the model: rebuild the model with the "
                    f"adapter's build arguments: {saved_build}."
                )
            values[key] = value
    if check_base and metadata.get("base_fingerprint") != _base_fingerprint(model):
        raise ValueError(
            f"{path}: the frozen backbone weights differ from those the adapter was trained on "
            f"(source {saved_build.get('backbone')}). Build the model from the same backbone "
            "source, or pass check_base=False."
        )
    for key, value in values.items():
        variables[key].assign(value)
    logger.info("loaded adapter %s (%d variables)", path, len(values))
    return metadata


def adapter_size_report(model: keras.Model, adapter_path) -> dict:
    """Compares the adapter file size with the size of all model weights.

    Args:
        model: keras.Model. The model the adapter belongs to.
        adapter_path: str or PathLike. File written by `save_adapter`.

    Returns:
        ``{"adapter_bytes": int, "full_model_bytes": int, "ratio": float}``; full size is the
        in-memory size of every weight (frozen + trainable).
    """
    adapter_bytes = os.path.getsize(os.fspath(adapter_path))
    full = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.weights)
    return {
        "adapter_bytes": adapter_bytes,
        "full_model_bytes": full,
        "ratio": adapter_bytes / full if full else float("nan"),
    }


def _base_fingerprint(model):
    """sha256 over the frozen variables (path, shape, bytes)."""
    digest = hashlib.sha256()
    for variable in sorted(model.non_trainable_weights, key=lambda v: v.path):
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(variable.value))
        digest.update(f"{variable.path}:{value.shape}:{value.dtype}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()
