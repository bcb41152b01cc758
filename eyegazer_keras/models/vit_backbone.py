"""Where the ViT comes from: keras-hub presets, Hugging Face checkpoints or a config, resized.

`load_backbone` returns a `keras_hub.models.ViTBackbone` from a keras-hub preset (name or local
``save_to_preset`` directory), an ``hf://org/name`` id or local Hugging Face ViT checkpoint
(keras-hub's converter, `hf_vit` filling its gaps), or a random ViT from
``ViTBackbone`` kwargs; with it, the pixel normalisation the source ships (the preset's image
converter or HF's ``preprocessor_config.json``). `resize_backbone` adapts it to another input
size by bicubic interpolation of the position embeddings, as HF's ``interpolate_pos_encoding``.

Example:

```python
from eyegazer_keras.models import vit_backbone

config = dict(patch_size=4, num_layers=2, num_heads=2, hidden_dim=48, mlp_dim=96)
vit, source, norm = vit_backbone.load_backbone(None, config, image_size=16, dtype=None)
bigger = vit_backbone.resize_backbone(vit, 32)  # 4x4 -> 8x8 patches
print(source["type"], bigger.image_shape)  # config (32, 32, 3)
```
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import keras
import keras_hub
import numpy as np

from eyegazer_keras.models.vit_layers import as_float_list

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_NORMALIZATION", "load_backbone", "resize_backbone", "resolve_normalization"]

# HF ViT and the keras-hub ViT presets both map 0..255 to -1..1 (mean = std = 0.5).
DEFAULT_NORMALIZATION = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


def load_backbone(backbone, backbone_config, image_size: int, dtype) -> tuple:
    """Loads (or builds) the ViT backbone named by `backbone`.

    Args:
        backbone: str, PathLike or None. A keras-hub preset name or directory, ``hf://org/name``
            or a local HF ViT checkpoint directory; None or ``"config"`` builds a random ViT
            from `backbone_config`. A DINOv2 source (`dinov2_backbone.is_dinov2`) returns a
            `keras_hub.models.DINOV2Backbone` at `image_size` (`dinov2_backbone.load_dinov2`).
        backbone_config: dict or None. ``ViTBackbone`` kwargs for a random ViT
            (``image_shape`` is set to `image_size`). For a DINOv2 source only its
            ``position_interpolation`` is read (``"torch_bicubic"`` by default, as transformers;
            ``"keras_hub"`` for the TF-bicubic table of DINOv2 runs made before it existed).
        image_size: int. Input side in pixels (used for a random ViT; presets keep theirs).
        dtype: dtype, `keras.DTypePolicy` or None. The backbone's policy.

    Returns:
        ``(ViTBackbone, source, normalization)``: ``source`` a JSON-able description
        (``{"type": "config" | "keras_preset" | "hf_checkpoint", ...}``), ``normalization``
        ``{"scale", "offset"}`` shipped with the source, or None.

    Raises:
        ValueError: a random ViT without `backbone_config`, a directory without
            ``config.json``, or a ``config.json`` that is not a ViT.
        TypeError: `backbone` is not a str, path or None.
    """
    if backbone is None or backbone == "config":
        return _config_backbone(backbone_config, image_size, dtype)
    if isinstance(backbone, os.PathLike):
        backbone = os.fspath(backbone)
    if not isinstance(backbone, str):
        raise TypeError(
            f"backbone={backbone!r}: pass a preset name, a preset/HF directory, an hf:// id, "
            "or 'config' with backbone_config."
        )
    from eyegazer_keras.models import dinov2_backbone

    if dinov2_backbone.is_dinov2(backbone):
        interpolation = (backbone_config or {}).get("position_interpolation", "torch_bicubic")
        return dinov2_backbone.load_dinov2(backbone, image_size, dtype, interpolation)
    if os.path.isdir(backbone):
        backbone = os.path.abspath(backbone)
        if not os.path.isfile(os.path.join(backbone, "config.json")):
            raise ValueError(
                f"{backbone}: no config.json. Pass a directory written by "
                "ViTBackbone.save_to_preset or a Hugging Face ViT checkpoint directory."
            )
    from eyegazer_keras.models import hf_vit  # HF checkpoint conversion (keras-hub only)

    kind, config = _preset_kind(backbone)
    kwargs = {} if dtype is None else {"dtype": dtype}
    if kind == "hf_checkpoint":
        kwargs.update(hf_vit.hf_backbone_kwargs(config))
    if kind == "hf_checkpoint" and (config.get("architectures") or [""])[0] == "ViTModel":
        vit = hf_vit.load_hf_vitmodel(backbone, config, kwargs)
    else:
        vit = keras_hub.models.ViTBackbone.from_preset(backbone, **kwargs)
    source = {"type": kind, "preset": backbone}
    return vit, source, preset_normalization(backbone, kind)


def _config_backbone(backbone_config, image_size, dtype):
    """A random `ViTBackbone` from its kwargs, at `image_size`."""
    if not backbone_config:
        raise ValueError(
            "backbone=None (a random ViT) needs backbone_config={'patch_size':..., 'num_layers':..., "
            "'num_heads':..., 'hidden_dim':..., 'mlp_dim':...}."
        )
    config = dict(backbone_config)
    shape = tuple(config.get("image_shape") or (image_size, image_size, 3))
    if shape[:2] != (image_size, image_size):
        logger.info("backbone_config image_shape %s replaced by image_size %d", shape, image_size)
    config["image_shape"] = (image_size, image_size, shape[2])
    if dtype is not None:
        config["dtype"] = dtype
    vit = keras_hub.models.ViTBackbone(**config)
    source = {"type": "config", "config": _jsonable(config)}
    return vit, source, None


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


def preset_normalization(preset, kind, converter_class=None, defaults=None):
    """Scale/offset on 0..255 pixels that a preset itself ships, or None.

    Args:
        preset: str. A keras-hub preset (name or directory) or a Hugging Face checkpoint dir.
        kind: str. ``"keras_preset"`` (its image converter config) or ``"hf_checkpoint"`` (its
            ``preprocessor_config.json``).
        converter_class: the keras-hub image converter class of a keras preset. Defaults to
            None (`keras_hub.layers.ViTImageConverter`; DINOv2 passes its own).
        defaults: dict ``{"mean", "std"}`` for keys an HF config leaves out. Defaults to None
            (`DEFAULT_NORMALIZATION`).

    Returns:
        ``{"scale", "offset"}`` (floats or per-channel lists), or None when the preset has none.
    """
    from keras_hub.src.utils import preset_utils

    defaults = defaults or DEFAULT_NORMALIZATION
    if kind == "keras_preset":
        if not preset_utils.check_file_exists(preset, preset_utils.IMAGE_CONVERTER_CONFIG_FILE):
            return None
        converter = (converter_class or keras_hub.layers.ViTImageConverter).from_preset(preset)
        if converter is None or converter.scale is None:
            return None
        return {"scale": converter.scale, "offset": converter.offset or 0.0}
    if not preset_utils.check_file_exists(preset, "preprocessor_config.json"):
        return None
    hf = preset_utils.load_json(preset, "preprocessor_config.json")
    rescale = hf.get("rescale_factor", 1 / 255) if hf.get("do_rescale", True) else 1.0
    if not hf.get("do_normalize", True):
        return {"scale": rescale, "offset": 0.0}
    mean = np.asarray(hf.get("image_mean", defaults["mean"]), "float64")
    std = np.asarray(hf.get("image_std", defaults["std"]), "float64")
    return {"scale": (rescale / std).tolist(), "offset": (-mean / std).tolist()}


def resolve_normalization(normalization, source_norm) -> tuple:
    """``(scale, offset)`` of `vit_layers.PixelNormalization` on 0..255 pixels.

    Args:
        normalization: dict or None. ``{"scale", "offset"}`` (on 0..255 pixels) or
            ``{"mean", "std"}`` (on 0..1 pixels), as `build_vit_classifier` takes it.
        source_norm: dict or None. What the backbone source ships (`load_backbone`).

    Returns:
        ``(scale, offset)``: floats or lists of 3 floats; mean = std = 0.5 when neither
        is given.

    Raises:
        ValueError: `normalization` has neither form.
    """
    norm = normalization or source_norm or DEFAULT_NORMALIZATION
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
    return as_float_list(scale), as_float_list(offset)


def resize_backbone(vit, image_size: int):
    """Rebuilds `vit` for `image_size` pixels, interpolating the position embeddings.

    Args:
        vit: `keras_hub.models.ViTBackbone` (or a `DINOV2Backbone`, handed to
            `dinov2_backbone.resize_dinov2`).
        image_size: int. New input side in pixels; a multiple of the patch size.

    Returns:
        `vit` itself when the size is unchanged, else a new `ViTBackbone` with the same
        weights and bicubically resized position embeddings.

    Raises:
        ValueError: `image_size` is not a multiple of the patch size.
    """
    from eyegazer_keras.models import dinov2_backbone

    if dinov2_backbone.is_dinov2_backbone(vit):
        return dinov2_backbone.resize_dinov2(vit, image_size)
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
