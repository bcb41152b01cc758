"""Building the DR classifier (`FundusImageClassifier`) from a backbone source, and its adapters.

`build_vit_classifier` loads a keras-hub ViT (preset, Hugging Face checkpoint or a config),
resizes it to the input size and wraps it in a `FundusImageClassifier`: ``float32 [batch, S, S,
3]`` RGB pixels in 0..255 in, softmax probabilities ``[batch, num_classes]`` out (float32, also
under mixed precision), the pixel normalisation inside (layer ``"normalization"``), one Dense
head ``"predictions"``.

LoRA uses the Keras core layer API (``enable_lora(rank, lora_alpha=...)``) on the layers named
in ``lora_targets`` (default: the attention ``query`` and ``value`` projections); its settings
are fields of the task's config. Decisions, so that training, saving and reloading agree:

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
* ``model.save("m.keras")`` / ``keras.models.load_model`` and ``save_weights``/``load_weights``
  keep ``A``/``B`` unmerged (`fast_layers`): the reloaded model has the same trainable
  variables and trains on. The small adapter file (`save_adapter`/`load_adapter`) holds only
  the trainable variables and checks the frozen base it belongs to.

Example:

```python
import numpy as np
from eyegazer_keras.models.vit_lora import build_vit_classifier

model = build_vit_classifier(
    None,
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

from eyegazer_keras import fundus
from eyegazer_keras.models import vit_backbone
from eyegazer_keras.models.fundus_image_classifier import FundusImageClassifier
from eyegazer_keras.models.fundus_image_classifier_preprocessor import (
    FundusImageClassifierPreprocessor,
)
from eyegazer_keras.models.fundus_image_converter import FundusImageConverter

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
    "merge_lora",
    "read_adapter_metadata",
    "save_adapter",
]

ADAPTER_FORMAT = "eyegazer-vit-lora-adapter/1"
_METADATA_KEY = "__metadata__"


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
    spec: fundus.PreprocessingSpec | None = None,
) -> FundusImageClassifier:
    """Builds the ViT(+LoRA) DR classifier in the current distribution-strategy scope.

    Args:
        backbone: str or None. A keras-hub preset name (needs network) or directory, an
            ``"hf://org/name"`` id or local HF ViT checkpoint, or ``"config"``/None for a
            random ViT from ``backbone_config`` (`vit_backbone.load_backbone`).
        num_classes: int. 2 (binary: no DR / DR) or 5 (grades 0-4).
        image_size: int. Input side in pixels, a multiple of the patch size; position
            embeddings are resized bicubically when it differs from the backbone's.
        pooling: str. ``"token"`` (class token), ``"gap"`` (mean of patch tokens) or
            ``"token_gap"`` (both concatenated, as HF ``Dinov2ForImageClassification``).
        lora_rank: int. LoRA rank; 0 means full fine-tuning. Defaults to 8.
        lora_alpha: float or None. Scale alpha/rank of the update. Defaults to ``lora_rank``.
        lora_targets: sequence of str. Dense/EinsumDense layer names that get LoRA.
        lora_layout: str. ``"peft"`` (rank-r, as PEFT) or ``"keras"`` (Keras core's per-head
            ``A``); see the module docstring. Defaults to ``"peft"``.
        head_dropout: float. Dropout before the head. Defaults to 0.
        backbone_config: dict or None. ``ViTBackbone`` kwargs for ``backbone=None`` (a
            randomly initialised ViT).
        normalization: dict or None. ``{"scale", "offset"}`` on 0..255 or ``{"mean", "std"}``
            on 0..1 pixels. Defaults to the source's own, else mean = std = 0.5.
        dtype: dtype or `keras.DTypePolicy` of the backbone (e.g. ``"mixed_bfloat16"``); the
            normalisation and head stay float32. Defaults to None (global policy).
        fast_layers: bool. Factored LoRA ``x @ W + s * (x @ A) @ B`` and a float32 exact GELU
            (`fast_layers.use_fast_layers`): same math and variables, faster. Defaults to True.
        spec: `fundus.PreprocessingSpec` or None. The run's preprocessing, carried by the
            task's image converter. Defaults to None (the converter only resizes).

    Returns:
        A `FundusImageClassifier` (not compiled for training: keras-hub's default compile),
        ``float32 [B, S, S, 3]`` 0..255 in, float32 softmax ``[B, num_classes]`` out.

    Raises:
        ValueError: a wrong class count, rank, layout, pooling, image size or LoRA target.
    """
    image_size, lora_targets = int(image_size), tuple(lora_targets)
    vit, source, norm = vit_backbone.load_backbone(backbone, backbone_config, image_size, dtype)
    vit = vit_backbone.resize_backbone(vit, image_size)
    vit.name = "backbone"  # stable layer name (variable paths do not include it)
    scale, offset = vit_backbone.resolve_normalization(normalization, norm)
    converter = FundusImageConverter(image_size, spec=spec)
    model = FundusImageClassifier(
        vit,
        num_classes,
        preprocessor=FundusImageClassifierPreprocessor(converter),
        pooling=pooling,
        head_dropout=head_dropout,
        normalization={"scale": scale, "offset": offset},
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        lora_targets=lora_targets,
        lora_layout=lora_layout,
        fast_layers=fast_layers,
        backbone_source=source,
        # The model's name scopes TensorFlow's op names, and grappler orders gradient sums by
        # them: the name the builder always gave keeps trained weights bit-identical (measured:
        # another name moves the gradients by ~1e-7).
        name="vit_lora_classifier",
    )
    logger.info("ViT classifier from %s: %s", source, format_trainable_parameters(model))
    return model


def build_from_config(config, backbone=None, dtype=None, spec=None) -> FundusImageClassifier:
    """`build_vit_classifier` with the model fields of a `configs.TrainConfig`.

    Args:
        config: `configs.TrainConfig` (or any object with its model fields): `num_classes`,
            `image_size`, `pooling`, `lora_rank`, `lora_alpha`, `lora_targets`,
            `lora_layout`, `head_dropout`, `backbone`, `backbone_config`.
        backbone: str or None. Overrides `config.backbone`. Defaults to None.
        dtype: dtype or `keras.DTypePolicy` of the backbone. Defaults to None.
        spec: `fundus.PreprocessingSpec` or None. The run's preprocessing (its `RunData`).
            Defaults to None.

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
        spec=spec,
    )


def build_info(model: keras.Model) -> dict:
    """Returns the build arguments of a `FundusImageClassifier` (empty dict for other models).

    Args:
        model: keras.Model. A model from `build_vit_classifier` (or loaded from a file).
    """
    return model.build_info() if isinstance(model, FundusImageClassifier) else {}


def merge_lora(model: keras.Model, plain: keras.Model) -> keras.Model:
    """Copies `model`'s weights into `plain`, the LoRA update merged into the kernels.

    ``.keras`` and weight files keep ``A``/``B`` apart; this is the explicit merge, e.g. for a
    LoRA-free serving copy (one matmul per projection).

    Args:
        model: keras.Model. A LoRA model from `build_vit_classifier`.
        plain: keras.Model. The same architecture built with ``lora_rank=0``.

    Returns:
        `plain`, holding ``W + alpha / rank * A @ B`` in every LoRA'd kernel and `model`'s other
        weights: same outputs as `model`.

    Raises:
        ValueError: the two models' weights (LoRA aside) differ in paths or shapes.
    """
    merged = {
        layer._kernel.path: layer.kernel
        for layer in model._flatten_layers()
        if getattr(layer, "lora_enabled", False)
    }
    source = {v.path: merged.get(v.path, v) for v in model.weights if "lora_kernel" not in v.path}
    target = {v.path: v for v in plain.weights}
    if sorted(source) != sorted(target):
        extra = sorted(set(source) ^ set(target))[:5]
        raise ValueError(f"merge_lora: the models differ beyond LoRA (weights {extra}).")
    for path, variable in target.items():
        value = keras.ops.convert_to_numpy(source[path])
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(f"merge_lora: {path} is {value.shape} vs {tuple(variable.shape)}.")
        variable.assign(value.astype(variable.dtype))
    return plain


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
