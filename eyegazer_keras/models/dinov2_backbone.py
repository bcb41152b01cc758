"""Where a DINOv2 comes from: keras-hub presets, Hugging Face checkpoints, resized to patch-14 sizes.

`is_dinov2` tells whether a ``backbone=`` value names a DINOv2: a keras-hub DINOv2 preset
(``dinov2_small``, ``dinov2_base``, ``dinov2_large``, ``dinov2_giant`` and their
``dinov2_with_registers_*`` forms; a Kaggle download), an ``hf://`` id whose ``config.json`` says
``model_type`` ``dinov2`` / ``dinov2_with_registers`` (e.g. ``hf://facebook/dinov2-small``), a
local Hugging Face ``Dinov2Model`` directory (``config.json`` + ``model.safetensors``, what
``benchmarks/offline_dinov2.py`` writes), or a local ``DINOV2Backbone.save_to_preset`` directory.

`load_dinov2` builds a `keras_hub.models.DINOV2Backbone` at the requested input size: the
image side must be a multiple of the patch size (14: 224, 448, 518, ...). keras-hub keeps the
pretrained position table (``position_embeddings``, e.g. 37x37 for 518 px) and the table the
model uses (``interpolated_position_embeddings``, e.g. 16x16 at 224 px). By default that table is
resized as Hugging Face transformers does (torch's bicubic, re-implemented in numpy:
`dinov2_position.TorchBicubicDINOV2Backbone`), so a DINOv2 matches transformers at every size.

Changed numerics: DINOv2 backbones built before this (the keras-hub class itself) resized with
TF's bicubic, 0.006 off on the table and 0.05 on the last hidden state of a 224-px ViT-S/14
(1.8e-5 now; identical at the table's own size, 518 px; the antialiased resize of
``dinov2_with_registers`` moves by < 1e-5 only). A ``.keras`` file of such a model still
holds the keras-hub class and keeps its numerics; a model rebuilt from a ``backbone=`` source (a
run folder's ``config.json`` + ``adapter.npz``, a resumed run) gets the torch table unless
``position_interpolation="keras_hub"`` is passed (in a run's config:
``backbone_config={"position_interpolation": "keras_hub"}``, read by
`vit_backbone.load_backbone`).

The normalisation is the source's own (keras-hub image converter or HF
``preprocessor_config.json``), else ImageNet mean/std, DINOv2's.

Both position tables stay frozen, also with ``lora_rank=0`` (full fine-tuning): keras-hub
saves a trained table only approximately (interpolated back to the pretrained grid), so a trained
one would not survive a ``.keras`` round trip.

Prefix tokens (`num_prefix_tokens`): the class token plus any register tokens; ``"gap"`` pooling
averages the patch tokens after them.

Example:

```python
import json, os, tempfile
import keras_hub
from eyegazer_keras.models import dinov2_backbone

tiny = keras_hub.models.DINOV2Backbone(
    patch_size=14, num_layers=1, hidden_dim=24, num_heads=2, intermediate_dim=48,
    image_shape=(28, 28, 3), position_embedding_shape=(28, 28, 3),
)
folder = os.path.join(tempfile.mkdtemp(), "tiny-dinov2")
tiny.save_to_preset(folder)
assert dinov2_backbone.is_dinov2(folder)
backbone, source, norm = dinov2_backbone.load_dinov2(folder, image_size=42, dtype=None)
print(backbone.image_shape, source["architecture"])  # (42, 42, 3) dinov2
```
"""

from __future__ import annotations

import logging
import os

import keras
import keras_hub

from eyegazer_keras.models.dinov2_position import TorchBicubicDINOV2Backbone

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGENET_NORMALIZATION",
    "forward_with_attentions",
    "is_dinov2",
    "is_dinov2_backbone",
    "load_dinov2",
    "num_prefix_tokens",
    "resize_dinov2",
]

# DINOv2 was trained on ImageNet-normalised pixels (HF's BitImageProcessor for facebook/dinov2-*).
IMAGENET_NORMALIZATION = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
HF_MODEL_TYPES = ("dinov2", "dinov2_with_registers")


def _preset_names() -> set:
    return set(keras_hub.models.DINOV2Backbone.presets)


def _read_config(preset: str) -> dict | None:
    """The preset's ``config.json`` (a download for ``hf://`` and preset names), or None."""
    from keras_hub.src.utils import preset_utils

    try:
        return preset_utils.load_json(preset, preset_utils.CONFIG_FILE)
    except (OSError, ValueError, FileNotFoundError):
        return None


def _config_is_dinov2(config: dict | None) -> bool:
    if not config:
        return False
    if "registered_name" in config:
        return config["registered_name"].endswith("DINOV2Backbone")
    return config.get("model_type") in HF_MODEL_TYPES


def is_dinov2(backbone) -> bool:
    """True when `backbone` names a DINOv2 source (see the module docstring).

    Args:
        backbone: str, PathLike or None. A ``backbone=`` value of the classifier.

    Returns:
        bool. False for None, ``"config"``, ViT presets and directories that are not DINOv2.
        An ``hf://`` id is decided by its ``config.json`` (fetched by ``huggingface_hub``,
        which honours ``HF_HUB_OFFLINE``); a name containing ``dinov2`` counts when it cannot
        be fetched, so that the loader then reports the real error.
    """
    if backbone is None or backbone == "config":
        return False
    if isinstance(backbone, os.PathLike):
        backbone = os.fspath(backbone)
    if not isinstance(backbone, str):
        return False
    if backbone in _preset_names():
        return True
    if os.path.isdir(backbone):
        if not os.path.isfile(os.path.join(backbone, "config.json")):
            return False
        return _config_is_dinov2(_read_config(os.path.abspath(backbone)))
    if backbone.startswith("hf://"):
        config = _read_config(backbone)
        return _config_is_dinov2(config) if config else "dinov2" in backbone.lower()
    return False


def _checked_size(image_size: int, patch_size: int) -> int:
    image_size = int(image_size)
    if image_size <= 0 or image_size % patch_size:
        low = max(patch_size, image_size - image_size % patch_size)
        raise ValueError(
            f"image_size={image_size} is not a multiple of the DINOv2 patch size {patch_size}: "
            f"use e.g. {low} or {low + patch_size} (224 = 16x14, 518 = 37x14)."
        )
    return image_size


def load_dinov2(
    backbone, image_size: int, dtype, position_interpolation: str = "torch_bicubic"
) -> tuple:
    """Loads a DINOv2 backbone at `image_size` pixels.

    Args:
        backbone: str or PathLike. A keras-hub DINOv2 preset name or directory, an ``hf://`` id
            or a local HF Dinov2 checkpoint directory.
        image_size: int. Input side in pixels, a multiple of the patch size (14).
        dtype: dtype, `keras.DTypePolicy` or None. The backbone's policy.
        position_interpolation: ``"torch_bicubic"`` (transformers' table) or ``"keras_hub"``
            (TF bicubic, the numerics of DINOv2 runs made before; see the module docstring).

    Returns:
        ``(TorchBicubicDINOV2Backbone, source, normalization)``: the backbone (a
        `keras_hub.models.DINOV2Backbone`) with
        ``image_shape == (image_size, image_size, 3)``; ``source`` a JSON-able description
        (``{"type": "keras_preset" | "hf_checkpoint", "preset": str, "architecture": "dinov2"}``);
        ``normalization`` ``{"scale", "offset"}`` on 0..255 pixels the source ships, else
        ImageNet mean/std (``{"mean", "std"}`` on 0..1 pixels).

    Raises:
        ValueError: `image_size` is not a multiple of the patch size, or `backbone` is not a
            DINOv2 source.
        OSError: a preset or ``hf://`` id cannot be fetched.
    """
    if isinstance(backbone, os.PathLike):
        backbone = os.fspath(backbone)
    if os.path.isdir(backbone):
        backbone = os.path.abspath(backbone)
    from keras_hub.src.utils import preset_utils

    try:
        config = preset_utils.load_json(backbone, preset_utils.CONFIG_FILE)
    except (OSError, ValueError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise OSError(f"{backbone}: cannot read its config.json ({reason}).") from err
    if not _config_is_dinov2(config):
        raise ValueError(
            f"{backbone}: config.json describes "
            f"{config.get('model_type') or config.get('registered_name') or 'an unknown model'}, "
            "not a DINOv2. Pass a keras-hub DINOv2 preset or a Hugging Face Dinov2 checkpoint."
        )
    kind = "keras_preset" if "registered_name" in config else "hf_checkpoint"
    patch = int(config.get("patch_size") or config.get("config", {}).get("patch_size") or 14)
    image_size = _checked_size(image_size, patch)
    kwargs = {"image_shape": (image_size, image_size, 3)}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = keras_hub.models.DINOV2Backbone.from_preset(backbone, **kwargs)
    model = _rebuild(model, model.image_shape, position_interpolation)
    logger.info(
        "DINOv2 %s at %d px (position table %s, %s)",
        backbone,
        image_size,
        model.position_embedding_shape,
        position_interpolation,
    )
    source = {"type": kind, "preset": backbone, "architecture": "dinov2"}
    return model, source, _normalization(backbone, kind)


def _normalization(preset: str, kind: str) -> dict:
    """The source's own pixel normalisation, else ImageNet mean/std."""
    from eyegazer_keras.models import vit_backbone  # vit_backbone dispatches to this module

    own = vit_backbone.preset_normalization(
        preset, kind, keras_hub.layers.DINOV2ImageConverter, IMAGENET_NORMALIZATION
    )
    return own if own is not None else dict(IMAGENET_NORMALIZATION)


def resize_dinov2(backbone, image_size: int, position_interpolation: str | None = None):
    """Rebuilds a DINOv2 for `image_size` pixels from its pretrained position table.

    Args:
        backbone: `keras_hub.models.DINOV2Backbone`.
        image_size: int. New input side in pixels; a multiple of the patch size.
        position_interpolation: None (keep the backbone's: ``"keras_hub"`` for the keras-hub
            class itself), ``"torch_bicubic"`` or ``"keras_hub"``.

    Returns:
        `backbone` itself when neither the size nor the interpolation changes, else a new
        backbone with the same weights whose ``interpolated_position_embeddings`` is resized from
        ``position_embeddings`` (`dinov2_position`).

    Raises:
        ValueError: `image_size` is not a multiple of the patch size, or an unknown
            `position_interpolation`.
    """
    image_size = _checked_size(image_size, backbone.patch_size)
    current = getattr(backbone, "position_interpolation", "keras_hub")
    position_interpolation = position_interpolation or current
    if (
        tuple(backbone.image_shape[:2]) == (image_size, image_size)
        and position_interpolation == current
    ):
        return backbone
    return _rebuild(
        backbone, (image_size, image_size, backbone.image_shape[2]), position_interpolation
    )


def _rebuild(backbone, image_shape, position_interpolation: str):
    """A `TorchBicubicDINOV2Backbone` at `image_shape` with `backbone`'s weights, tables frozen.

    The used position table is resized from the pretrained one (not copied), so it is the
    table `position_interpolation` gives; the other weights are copied.
    """
    config = backbone.get_config()
    config.pop("registered_name", None)
    config["image_shape"] = tuple(image_shape)
    config["position_interpolation"] = position_interpolation
    # keras-hub prefixes its sub-layers with a name given at construction; variable paths (and
    # so adapter files) include them: keep the source's naming.
    unprefixed = backbone.embeddings.name == "embeddings"
    if unprefixed:
        config["name"] = None
    new = TorchBicubicDINOV2Backbone.from_config(config)
    if unprefixed:
        new.name = backbone.name
    used = new.embeddings.interpolated_position_embeddings
    for old_var, new_var in zip(backbone.weights, new.weights, strict=True):
        if new_var is not used and tuple(old_var.shape) == tuple(new_var.shape):
            new_var.assign(old_var.value)
    embeddings = new.embeddings
    used.assign(
        embeddings._interpolate_position_embeddings(
            embeddings.position_embeddings,
            patch_size=embeddings.patch_size,
            source_shape=embeddings.position_embedding_shape,
            target_shape=embeddings.image_shape,
            antialias=embeddings.antialias_in_interpolation,
        )
    )
    _freeze_position_table(new)
    return new


def _freeze_position_table(backbone) -> None:
    """Keeps the interpolated position table out of training, also in full fine-tuning.

    keras-hub saves a DINOv2 by interpolating the table it uses back to the pretrained grid
    (and only when the signed sum of the change exceeds epsilon), and rebuilds the used table
    from that on load: a trained table does not survive a ``.keras`` round trip exactly.
    """
    backbone.embeddings.interpolated_position_embeddings.trainable = False


def num_prefix_tokens(backbone) -> int:
    """Leading non-patch tokens of a keras-hub ViT or DINOv2 output.

    Args:
        backbone: `keras_hub.models.ViTBackbone` or `keras_hub.models.DINOV2Backbone`.

    Returns:
        int. DINOv2: 1 (class token) + its register tokens; ViT: 1 with a class token, else 0.
    """
    if isinstance(backbone, keras_hub.models.DINOV2Backbone):
        return 1 + int(backbone.num_register_tokens)
    return 1 if getattr(backbone, "use_class_token", True) else 0


def is_dinov2_backbone(layer) -> bool:
    """True for a `keras_hub.models.DINOV2Backbone` instance."""
    return isinstance(layer, keras.Model) and isinstance(layer, keras_hub.models.DINOV2Backbone)


def forward_with_attentions(backbone, pixels):
    """The DINOv2 forward pass block by block, keeping every attention matrix (inference mode).

    Same layers and weights as ``backbone({"images": pixels})``; what explanation maps
    (`explain.attention_rollout`, `explain.gradient_rollout`) read.

    Args:
        backbone: `keras_hub.models.DINOV2Backbone`.
        pixels: float tensor ``[B, S, S, 3]``, already normalised (the backbone's input).

    Returns:
        ``(tokens, attentions)``: ``[B, T, hidden]`` after the final layer norm (as the backbone
        returns it) and a list of ``[B, heads, T, T]`` attention probabilities, one per block;
        ``T = num_prefix_tokens + (S / patch)**2``.
    """
    x = backbone.embeddings(keras.ops.cast(pixels, backbone.compute_dtype), training=False)
    attentions = []
    for block in backbone.encoder.layers:
        h = block.norm1(x)
        out, scores = block.attention.attention(
            h, h, h, return_attention_scores=True, training=False
        )
        attentions.append(scores)
        x = x + block.layer_scale1(out)
        x = x + block.layer_scale2(block.mlp(block.norm2(x)))
    return backbone.layernorm(x), attentions
