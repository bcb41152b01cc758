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

from eyegazer_keras.models import fast_layers as fast_layers_lib

logger = logging.getLogger(__name__)

__all__ = [
    "ADAPTER_FORMAT",
    "PixelNormalization",
    "ViTPooling",
    "adapter_size_report",
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
# HF ViT and the keras-hub ViT presets both map 0..255 to -1..1 (mean = std = 0.5).
_DEFAULT_NORMALIZATION = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="eyegazer")
class PixelNormalization(keras.layers.Layer):
    """Maps 0..255 pixels to the backbone's input range: ``x * scale + offset``.

    Args:
        scale: float or sequence of 3 floats (per RGB channel). Multiplies the pixel values.
        offset: float or sequence of 3 floats (per RGB channel). Added after scaling.
            Defaults to 0.
        **kwargs: passed to `keras.layers.Layer`.
    """

    def __init__(self, scale, offset=0.0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.scale = _as_float_list(scale)
        self.offset = _as_float_list(offset)

    def call(self, inputs):
        x = keras.ops.cast(inputs, self.compute_dtype)
        scale = keras.ops.convert_to_tensor(self.scale, dtype=self.compute_dtype)
        offset = keras.ops.convert_to_tensor(self.offset, dtype=self.compute_dtype)
        return x * scale + offset

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"scale": self.scale, "offset": self.offset})
        return config


@keras.saving.register_keras_serializable(package="eyegazer")
class ViTPooling(keras.layers.Layer):
    """Turns ViT token sequences ``[batch, tokens, hidden]`` into ``[batch, hidden]``.

    Args:
        mode: str. ``"token"`` takes the class token (position 0); ``"gap"`` averages the patch
            tokens, leaving out the ``num_prefix_tokens`` leading ones (as timm's ``avg`` pool).
        num_prefix_tokens: int. Leading non-patch tokens (1 with a class token, else 0).
            Defaults to 1.
        **kwargs: passed to `keras.layers.Layer`.
    """

    def __init__(self, mode="token", num_prefix_tokens=1, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("token", "gap"):
            raise ValueError(f"pooling={mode!r} is not supported: use 'token' or 'gap'.")
        if mode == "token" and num_prefix_tokens < 1:
            raise ValueError(
                "pooling='token' needs a class token; this backbone has use_class_token=False: "
                "use pooling='gap'."
            )
        self.mode = mode
        self.num_prefix_tokens = int(num_prefix_tokens)

    def call(self, inputs):
        if self.mode == "token":
            return inputs[:, 0, :]
        return keras.ops.mean(inputs[:, self.num_prefix_tokens :, :], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode, "num_prefix_tokens": self.num_prefix_tokens})
        return config


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
        backbone: str or None. Where the ViT comes from: a keras-hub preset name (e.g.
            ``"vit_base_patch16_224_imagenet21k"``, needs network), a local preset directory
            (``ViTBackbone.save_to_preset``), an ``"hf://org/name"`` id or a local Hugging Face
            ViT checkpoint directory (``config.json`` + ``model.safetensors``, converted by
            keras-hub), or ``"config"``/None for a randomly initialised ViT from
            ``backbone_config``.
        num_classes: int. 2 (binary: no DR / DR) or 5 (grades 0-4).
        image_size: int. Side of the square input images. When it differs from the
            backbone's ``image_shape``, the position embeddings are resized (bicubic, as HF's
            ``interpolate_pos_encoding``); it must be a multiple of the patch size.
        pooling: str. ``"token"`` (class token) or ``"gap"`` (mean of patch tokens).
            Defaults to ``"token"``.
        lora_rank: int. LoRA rank; 0 means full fine-tuning. Defaults to 8.
        lora_alpha: float or None. LoRA alpha (the update is scaled by alpha/rank). Defaults to
            None (= ``lora_rank``).
        lora_layout: str. ``"peft"``: rank-r ``A``/``B`` on the flattened projection, as PEFT
            (`fast_layers.RankRLoRAEinsumDense`); ``"keras"``: Keras core's
            ``EinsumDense.enable_lora`` (``A`` per head, ~heads x the parameters). Dense
            layers are the same either way. Defaults to ``"peft"``.
        lora_targets: sequence of str. Names of the Dense/EinsumDense layers that get LoRA.
            Defaults to ``("query", "value")``.
        head_dropout: float. Dropout before the head. Defaults to 0.
        backbone_config: dict or None. ``ViTBackbone`` kwargs for ``backbone="config"``
            (``patch_size``, ``num_layers``, ``num_heads``, ``hidden_dim``, ``mlp_dim``, ...;
            ``image_shape`` defaults to ``(image_size, image_size, 3)``). Defaults to None.
        normalization: dict or None. ``{"scale": ..., "offset": ...}`` (``x*scale+offset`` on
            0..255 pixels) or ``{"mean": ..., "std": ...}`` (on 0..1 pixels). None takes the
            preset's image converter (keras preset) or ``preprocessor_config.json`` (HF), else
            mean = std = 0.5. Defaults to None.
        dtype: dtype or `keras.DTypePolicy` for the backbone (e.g. ``"mixed_bfloat16"``). The
            normalisation and the head stay float32. Defaults to None (global policy).
        fast_layers: bool. Compute LoRA as ``x @ W + s * (x @ A) @ B`` instead of Keras's
            ``x @ (W + s * A @ B)``, and the MLP's exact GELU in float32 under mixed precision
            (`fast_layers.use_fast_layers`). Same math, same variables; faster training. The
            ``"peft"`` layout's layer is always factored. Defaults to True.

    Returns:
        A functional `keras.Model` (not compiled) with ``build_info(model)`` metadata attached.
    """
    if num_classes not in (2, 5):
        raise ValueError(f"num_classes={num_classes}: use 2 (binary) or 5 (grades 0-4).")
    if lora_rank < 0:
        raise ValueError(f"lora_rank={lora_rank} must be >= 0 (0 = full fine-tuning).")
    if lora_layout not in LORA_LAYOUTS:
        raise ValueError(f"lora_layout={lora_layout!r}: use one of {LORA_LAYOUTS}.")
    image_size = int(image_size)
    lora_targets = tuple(lora_targets)
    if lora_rank > 0 and lora_alpha is None:
        lora_alpha = float(lora_rank)

    vit, source, source_norm = _load_backbone(backbone, backbone_config, image_size, dtype)
    vit = _resize_backbone(vit, image_size)
    vit.name = "backbone"  # stable layer name (variable paths do not include it)
    scale, offset = _resolve_normalization(normalization, source_norm)

    inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="images")
    x = PixelNormalization(scale, offset, name="normalization")(inputs)
    x = vit(x)
    x = ViTPooling(
        pooling,
        num_prefix_tokens=1 if vit.use_class_token else 0,
        dtype=vit.dtype_policy,
        name="pooling",
    )(x)
    if head_dropout:
        x = keras.layers.Dropout(head_dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="predictions"
    )(x)
    model = keras.Model(inputs, outputs, name="vit_lora_classifier")

    if lora_rank > 0:
        _enable_lora(vit, lora_rank, lora_alpha, lora_targets, lora_layout)
    if fast_layers:
        fast_layers_lib.use_fast_layers(vit)

    info = {
        "backbone": source,
        "num_classes": num_classes,
        "image_size": image_size,
        "pooling": pooling,
        "lora_rank": lora_rank,
        "lora_alpha": lora_alpha if lora_rank > 0 else None,
        "lora_targets": list(lora_targets) if lora_rank > 0 else [],
        "lora_layout": lora_layout if lora_rank > 0 else None,
        "bias": "none",
        "head_dropout": head_dropout,
        "normalization": {"scale": scale, "offset": offset},
    }
    setattr(model, _INFO_ATTR, json.dumps(info))
    logger.info("ViT classifier from %s: %s", source, format_trainable_parameters(model))
    return model


def build_info(model: keras.Model) -> dict:
    """Returns the build arguments recorded by `build_vit_classifier` (empty dict if none).

    Args:
        model: keras.Model. A model from `build_vit_classifier`.
    """
    raw = getattr(model, _INFO_ATTR, None)
    return json.loads(raw) if raw else {}


def _load_backbone(backbone, backbone_config, image_size, dtype):
    """Returns (ViTBackbone, JSON-able source description, normalisation from the source)."""
    if backbone is None or backbone == "config":
        if not backbone_config:
            raise ValueError(
                "backbone='config' needs backbone_config={'patch_size':..., 'num_layers':..., "
                "'num_heads':..., 'hidden_dim':..., 'mlp_dim':...}."
            )
        config = dict(backbone_config)
        shape = tuple(config.get("image_shape") or (image_size, image_size, 3))
        if shape[:2] != (image_size, image_size):
            logger.info(
                "backbone_config image_shape %s replaced by image_size %d", shape, image_size
            )
        config["image_shape"] = (image_size, image_size, shape[2])
        if dtype is not None:
            config["dtype"] = dtype
        vit = keras_hub.models.ViTBackbone(**config)
        source = {"type": "config", "config": _jsonable(config)}
        return vit, source, None

    if isinstance(backbone, os.PathLike):
        backbone = os.fspath(backbone)
    if not isinstance(backbone, str):
        raise TypeError(
            f"backbone={backbone!r}: pass a preset name, a preset/HF directory, an hf:// id, "
            "or 'config' with backbone_config."
        )
    if os.path.isdir(backbone):
        backbone = os.path.abspath(backbone)
        if not os.path.isfile(os.path.join(backbone, "config.json")):
            raise ValueError(
                f"{backbone}: no config.json. Pass a directory written by "
                "ViTBackbone.save_to_preset or a Hugging Face ViT checkpoint directory."
            )
    from eyegazer_keras.interop import hf_vit  # HF checkpoints live in interop (keras-hub only)

    kind, config = _preset_kind(backbone)
    kwargs = {} if dtype is None else {"dtype": dtype}
    if kind == "hf_checkpoint":
        kwargs.update(hf_vit.hf_backbone_kwargs(config))
    if kind == "hf_checkpoint" and (config.get("architectures") or [""])[0] == "ViTModel":
        vit = hf_vit.load_hf_vitmodel(backbone, config, kwargs)
    else:
        vit = keras_hub.models.ViTBackbone.from_preset(backbone, **kwargs)
    source = {"type": kind, "preset": backbone}
    return vit, source, _preset_normalization(backbone, kind)


def _preset_kind(preset):
    from keras_hub.src.utils import preset_utils

    config = preset_utils.load_json(preset, preset_utils.CONFIG_FILE)
    if "registered_name" in config:
        return "keras_preset", config
    if config.get("model_type") == "vit":
        return "hf_checkpoint", config
    raise ValueError(
        f"{preset}: config.json describes {config.get('model_type') or 'an unknown model'}, "
        "not a ViT. Pass a keras-hub ViT preset or a Hugging Face ViT checkpoint."
    )


def _preset_normalization(preset, kind):
    """Scale/offset that the preset itself ships, or None."""
    from keras_hub.src.utils import preset_utils

    if kind == "keras_preset":
        if not preset_utils.check_file_exists(preset, preset_utils.IMAGE_CONVERTER_CONFIG_FILE):
            return None
        converter = keras_hub.layers.ViTImageConverter.from_preset(preset)
        if converter is None or converter.scale is None:
            return None
        return {"scale": converter.scale, "offset": converter.offset or 0.0}
    if not preset_utils.check_file_exists(preset, "preprocessor_config.json"):
        return None
    hf = preset_utils.load_json(preset, "preprocessor_config.json")
    rescale = hf.get("rescale_factor", 1 / 255) if hf.get("do_rescale", True) else 1.0
    if not hf.get("do_normalize", True):
        return {"scale": rescale, "offset": 0.0}
    mean = np.asarray(hf.get("image_mean", _DEFAULT_NORMALIZATION["mean"]), "float64")
    std = np.asarray(hf.get("image_std", _DEFAULT_NORMALIZATION["std"]), "float64")
    return {"scale": (rescale / std).tolist(), "offset": (-mean / std).tolist()}


def _resolve_normalization(normalization, source_norm):
    norm = normalization or source_norm or _DEFAULT_NORMALIZATION
    if "scale" in norm:
        scale, offset = norm["scale"], norm.get("offset", 0.0)
    elif "mean" in norm and "std" in norm:
        mean = np.asarray(norm["mean"], "float64")
        std = np.asarray(norm["std"], "float64")
        scale, offset = (1.0 / (255.0 * std)).tolist(), (-mean / std).tolist()
    else:
        raise ValueError(
            f"normalization={normalization!r}: give {{'scale': s, 'offset': o}} (x*s+o on "
            "0..255 pixels) or {'mean': [..3], 'std': [..3]} (on 0..1 pixels)."
        )
    return _as_float_list(scale), _as_float_list(offset)


def _resize_backbone(vit, image_size):
    """Rebuilds `vit` for `image_size` pixels, interpolating the position embeddings."""
    old_h, old_w = vit.image_shape[0], vit.image_shape[1]
    if (old_h, old_w) == (image_size, image_size):
        return vit
    ph, pw = vit.patch_size
    if image_size % ph or image_size % pw:
        raise ValueError(
            f"image_size={image_size} is not a multiple of the patch size {vit.patch_size}: "
            f"use e.g. {image_size - image_size % ph} or {image_size + ph - image_size % ph}."
        )
    config = vit.get_config()
    config["image_shape"] = (image_size, image_size, vit.image_shape[2])
    new = keras_hub.models.ViTBackbone.from_config(config)
    old_grid, new_grid = (old_h // ph, old_w // pw), (image_size // ph, image_size // pw)
    logger.info("interpolating ViT position embeddings %s -> %s (bicubic)", old_grid, new_grid)
    prefix = 1 if vit.use_class_token else 0
    for old_var, new_var in zip(vit.weights, new.weights, strict=True):
        value = keras.ops.convert_to_numpy(old_var.value)
        if tuple(old_var.shape) != tuple(new_var.shape):
            if not old_var.path.endswith("position_embedding/embeddings"):
                raise ValueError(f"cannot resize {old_var.path}: {old_var.shape}->{new_var.shape}")
            grid = value[prefix:].reshape(old_grid + (value.shape[-1],))
            grid = keras.ops.image.resize(
                grid, new_grid, interpolation="bicubic", data_format="channels_last"
            )
            grid = keras.ops.convert_to_numpy(grid).reshape(-1, value.shape[-1])
            value = np.concatenate([value[:prefix], grid], axis=0)
        new_var.assign(value)
    return new


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


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------
def _as_float_list(value):
    array = np.asarray(value, dtype="float64")
    return float(array) if array.ndim == 0 else [float(v) for v in array.ravel()]


def _jsonable(value):
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
