"""Explanation maps for the grade models, and their scores against known lesions.

Three maps, each a ``float32 [B, S, S]`` array in ``[0, 1]``:

* ``attention_rollout`` (ViT): Abnar & Zuidema 2020, "Quantifying Attention Flow in
  Transformers" (ACL): per block, the head-averaged attention plus the identity (the residual),
  rows renormalised, multiplied through the blocks; the map is the pooled tokens' row.
* ``gradient_rollout`` (ViT, class-specific): Chefer, Gur & Wolf 2021, "Generic
  Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers"
  (ICCV), the self-attention rule ``R <- R + mean_h((dy/dA * A)^+) R`` with ``y`` the logit
  of the explained class (the predicted one by default).
* ``grad_cam`` (CNN, e.g. an AutoKeras export): Selvaraju et al. 2017 (ICCV) on the last
  ``Conv2D``: channel weights are the spatially averaged gradients of the output, the map is
  ``relu(sum_c w_c A_c)``.

**Frame.** A map's pixel ``(y, x)`` is the model input's pixel ``(y, x)``: the photo after
``fundus.preprocess_fundus`` (crop box of the fundus, padded to a centred square, resized to the
stored side) and ``fundus.to_model_input`` (resized to ``S``). To go back to the photo, scale
by ``side / S`` (``side = max(crop height, crop width)``), subtract the padding
``((side - h) // 2, (side - w) // 2)`` and add the crop box's ``(top, left)``. ViT maps are
computed on the patch grid (``S / patch`` cells a side: 8 x 8 for the demo's patch 8 at 64 px)
and resized bilinearly to ``S``; they cannot be sharper than one patch.

Every map is zero outside the fundus (pixels whose brightest channel is at most
``fundus.DEFAULT_THRESHOLD``) and scaled to ``[0, 1]`` per image; a map with no contrast (a
blank photo) is all zeros. These maps show where the model's output is sensitive; they are not a
lesion segmentation and have not been validated clinically.

``explain_scores`` scores maps against lesion masks (pointing game, pixel AUROC, baselines).

Example:

```python
import numpy as np
from eyegazer_keras.evaluation import explain
from eyegazer_keras.models.vit_lora import build_vit_classifier

model = build_vit_classifier(
    "config", num_classes=5, image_size=32, lora_rank=0,
    backbone_config=dict(patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64),
)
images = np.full((1, 32, 32, 3), 120.0, "float32")
maps = explain.explain(model, images, method="gradient_rollout")  # [1, 32, 32] in [0, 1]
```
"""

from __future__ import annotations

import logging
import math

import keras
import numpy as np
import tensorflow as tf

from eyegazer_keras import fundus
from eyegazer_keras.models import dinov2_backbone

logger = logging.getLogger(__name__)

VIT_METHODS = ("attention_rollout", "gradient_rollout")
CNN_METHODS = ("grad_cam",)
METHODS = VIT_METHODS + CNN_METHODS

__all__ = [
    "CNN_METHODS",
    "METHODS",
    "VIT_METHODS",
    "attention_rollout",
    "default_method",
    "explain",
    "grad_cam",
    "gradient_rollout",
    "is_vit",
    "map_function",
    "overlay",
    "patch_grid",
    "supported_method",
    "write_overlays",
]


# --------------------------------------------------------------------------- ViT forward pass


def is_vit(model: keras.Model) -> bool:
    """True for a `vit_lora.build_vit_classifier` model (layers ``backbone``, ``pooling``)."""
    names = {layer.name for layer in model.layers}
    return {"normalization", "backbone", "pooling", "predictions"} <= names


def default_method(model: keras.Model) -> str:
    """``"gradient_rollout"`` for a ViT classifier, ``"grad_cam"`` for anything else."""
    return "gradient_rollout" if is_vit(model) else "grad_cam"


def supported_method(model: keras.Model) -> str | None:
    """``default_method(model)`` when it can explain this model, else None.

    ViT classifiers and CNNs with a top-level ``Conv2D`` (AutoKeras ``vanilla`` blocks) can be
    explained; CNNs whose convolutions sit inside a nested application model (AutoKeras
    ``resnet``/``xception``/``efficient`` blocks) cannot, yet.
    """
    if is_vit(model):
        return "gradient_rollout"
    if any(isinstance(layer, keras.layers.Conv2D) for layer in model.layers):
        return "grad_cam"
    return None


def _vit_parts(model: keras.Model):
    backbone = model.get_layer("backbone")
    if dinov2_backbone.is_dinov2_backbone(backbone):
        return backbone, None, None
    embedding = encoder = None
    for layer in backbone.layers:
        kind = type(layer).__name__
        if kind == "ViTPatchingAndEmbedding":
            embedding = layer
        elif kind == "ViTEncoder":
            encoder = layer
    if embedding is None or encoder is None:
        raise ValueError(
            f"{model.name}: backbone has no ViTPatchingAndEmbedding/ViTEncoder layers; "
            "explain ViT classifiers from vit_lora.build_vit_classifier."
        )
    return backbone, embedding, encoder


def patch_grid(model: keras.Model) -> int | None:
    """Patches per side of a ViT classifier's grid (8 for patch 8 at 64 px); None for a CNN.

    Args:
        model: keras.Model. any model.

    Returns:
        int, or None when ``model`` is not a `vit_lora.build_vit_classifier` model.
    """
    if not is_vit(model):
        return None
    backbone, embedding, _ = _vit_parts(model)
    if embedding is None:  # DINOv2
        return int(backbone.image_shape[0]) // int(backbone.patch_size)
    return int(round(math.sqrt(int(embedding.num_patches))))


def _vit_forward(model: keras.Model, images: tf.Tensor):
    """The classifier's forward pass, block by block, keeping every attention matrix.

    Same layers and weights as ``model(images)`` (inference mode). Returns ``(logits, tokens,
    attentions)``: float32 ``[B, k]`` pre-softmax head outputs, the number of prefix tokens and a
    list of ``[B, heads, T, T]`` attention probabilities, one per block.
    """
    backbone, embedding, encoder = _vit_parts(model)
    x = model.get_layer("normalization")(images)
    if embedding is None:  # DINOv2: class token, registers, layer scale
        x, attentions = dinov2_backbone.forward_with_attentions(backbone, x)
        prefix = dinov2_backbone.num_prefix_tokens(backbone)
    else:
        x = embedding(tf.cast(x, backbone.compute_dtype))
        attentions = []
        for block in encoder.encoder_layers:
            h = block.layer_norm_1(x)
            out, scores = block.mha(h, h, return_attention_scores=True, training=False)
            attentions.append(scores)
            x = x + out
            x = x + block.mlp(block.layer_norm_2(x))
        x = encoder.layer_norm(x)
        prefix = 1 if embedding.use_class_token else 0
    pooled = model.get_layer("pooling")(x)
    head = model.get_layer("predictions")
    logits = tf.matmul(tf.cast(pooled, tf.float32), head.kernel) + head.bias
    return logits, prefix, attentions


def _pooled_rows(matrix: tf.Tensor, prefix: int, pooling: str) -> tf.Tensor:
    """The relevance of each patch for the pooled output: ``[B, num_patches]``."""
    if pooling == "token":
        return matrix[:, 0, prefix:]
    mean = tf.reduce_mean(matrix[:, prefix:, prefix:], axis=1)
    if pooling == "token_gap":  # the head reads both halves: their average
        return 0.5 * (matrix[:, 0, prefix:] + mean)
    return mean


def _grid_to_image(grid: tf.Tensor, images: tf.Tensor) -> tf.Tensor:
    """``[B, n]`` patch relevances -> ``[B, S, S]`` map (bilinear), masked, scaled to [0, 1]."""
    side = int(round(math.sqrt(int(grid.shape[-1]))))
    size = int(images.shape[1])
    cells = tf.reshape(tf.cast(grid, tf.float32), [-1, side, side, 1])
    return _finish(tf.image.resize(cells, [size, size], method="bilinear")[..., 0], images)


def _finish(maps: tf.Tensor, images: tf.Tensor) -> tf.Tensor:
    """Zero outside the fundus, per-image min-max to [0, 1]; no contrast -> all zeros."""
    inside = tf.reduce_max(images, axis=-1) > float(fundus.DEFAULT_THRESHOLD)
    maps = tf.where(inside, tf.nn.relu(maps), tf.zeros_like(maps))
    big = tf.fill(tf.shape(maps), np.float32(np.inf))
    lo = tf.reduce_min(tf.where(inside, maps, big), axis=[1, 2], keepdims=True)
    lo = tf.where(tf.math.is_finite(lo), lo, tf.zeros_like(lo))
    hi = tf.reduce_max(maps, axis=[1, 2], keepdims=True)
    span = hi - lo
    scaled = tf.where(inside, (maps - lo) / tf.maximum(span, 1e-12), tf.zeros_like(maps))
    flat = span <= 1e-6 * tf.maximum(tf.abs(hi), 1e-12)
    return tf.where(flat, tf.zeros_like(scaled), scaled)


def attention_rollout(model: keras.Model, images) -> tf.Tensor:
    """Attention rollout (Abnar & Zuidema 2020) of a ViT classifier.

    ``A_l = 0.5 * mean_heads(attention_l) + 0.5 * I`` (rows renormalised); ``R = A_L ... A_1``;
    the map is the pooled tokens' row of ``R`` over the patches (class token: row 0; mean
    pooling: the mean of the patch rows; ``token_gap``: the average of the two). Class-agnostic.

    Args:
        model: keras.Model. A `vit_lora.build_vit_classifier` model.
        images: float32 ``[B, S, S, 3]`` model input (0..255).

    Returns:
        float32 ``[B, S, S]`` in [0, 1], in the model input's frame (see the module docstring).

    Raises:
        ValueError: the model is not a ViT classifier.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    _, prefix, attentions = _vit_forward(model, images)
    tokens = int(attentions[0].shape[-1])
    eye = tf.eye(tokens, dtype=tf.float32)
    rollout = None
    for scores in attentions:
        a = 0.5 * tf.reduce_mean(tf.cast(scores, tf.float32), axis=1) + 0.5 * eye
        a = a / tf.reduce_sum(a, axis=-1, keepdims=True)
        rollout = a if rollout is None else tf.matmul(a, rollout)
    pooling = model.get_layer("pooling").mode
    return _grid_to_image(_pooled_rows(rollout, prefix, pooling), images)


def _class_index(logits: tf.Tensor, class_index) -> tf.Tensor:
    if class_index is None:
        return tf.argmax(logits, axis=-1, output_type=tf.int32)
    k = int(logits.shape[-1])
    index = tf.broadcast_to(tf.cast(class_index, tf.int32), tf.shape(logits)[:1])
    tf.debugging.assert_less(index, k, message=f"class_index must be < {k}")
    return index


def gradient_rollout(model: keras.Model, images, class_index=None) -> tf.Tensor:
    """Gradient-weighted relevance of a ViT classifier (Chefer et al. 2021, ICCV).

    Starting from ``R = I``, each block adds ``mean_heads((dy/dA * A)^+) @ R``, where ``A`` is the
    block's attention and ``y`` the explained class's logit; the map is the pooled tokens' row of
    ``R - I`` over the patches.

    Args:
        model: keras.Model. A `vit_lora.build_vit_classifier` model.
        images: float32 ``[B, S, S, 3]`` model input (0..255).
        class_index: int, int ``[B]`` tensor or None. the class explained. Defaults to None:
            each image's predicted class.

    Returns:
        float32 ``[B, S, S]`` in [0, 1], in the model input's frame.

    Raises:
        ValueError: the model is not a ViT classifier.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    with tf.GradientTape() as tape:
        logits, prefix, attentions = _vit_forward(model, images)
        target = _class_index(logits, class_index)
        y = tf.reduce_sum(tf.gather(logits, target, axis=1, batch_dims=1))
    grads = tape.gradient(y, attentions)
    tokens = int(attentions[0].shape[-1])
    relevance = tf.eye(tokens, batch_shape=tf.shape(images)[:1], dtype=tf.float32)
    for scores, grad in zip(attentions, grads, strict=True):
        cam = tf.reduce_mean(
            tf.nn.relu(tf.cast(grad, tf.float32) * tf.cast(scores, tf.float32)), axis=1
        )
        relevance = relevance + tf.matmul(cam, relevance)
    relevance = relevance - tf.eye(tokens, dtype=tf.float32)
    pooling = model.get_layer("pooling").mode
    return _grid_to_image(_pooled_rows(relevance, prefix, pooling), images)


# --------------------------------------------------------------------------- CNN


def _last_conv(model: keras.Model) -> keras.layers.Layer:
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    if not convs:
        raise ValueError(
            f"{model.name} has no Conv2D layer at its top level; Grad-CAM needs a CNN "
            "(e.g. an AutoKeras vanilla/resnet export). ViTs: use gradient_rollout."
        )
    return convs[-1]


def _grad_cam_probe(model: keras.Model, layer_name: str | None = None) -> keras.Model:
    conv = model.get_layer(layer_name) if layer_name else _last_conv(model)
    return keras.Model(model.inputs, [conv.output, model.outputs[0]])


def grad_cam(
    model: keras.Model,
    images,
    class_index=None,
    layer_name: str | None = None,
    probe: keras.Model | None = None,
):
    """Grad-CAM (Selvaraju et al. 2017) on a CNN's last ``Conv2D``.

    The explained output is the class's logit (softmax heads: ``log p``; a regression head with one
    output: the predicted grade itself, so the map shows what raises the grade).

    Args:
        model: keras.Model. A functional CNN (e.g. `regressor.float_input_model` of an AutoKeras
            search) with its convolutions at the top level.
        images: float32 ``[B, S, S, 3]`` model input (0..255).
        class_index: int or None. class explained for classifiers. Defaults to the predicted one.
        layer_name: str or None. the convolution to use. Defaults to the last ``Conv2D``.
        probe: keras.Model or None. a prebuilt ``(conv output, model output)`` model (as
            ``map_function`` makes for graphs). Defaults to None (built here).

    Returns:
        float32 ``[B, S, S]`` in [0, 1], in the model input's frame.

    Raises:
        ValueError: no ``Conv2D`` layer at the model's top level.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    probe = probe or _grad_cam_probe(model, layer_name)
    with tf.GradientTape() as tape:
        features, output = probe(images, training=False)
        output = tf.cast(output, tf.float32)
        if output.shape[-1] == 1:
            y = tf.reduce_sum(output)
        else:
            scores = tf.math.log(tf.maximum(output, 1e-12))
            y = tf.reduce_sum(tf.gather(scores, _class_index(scores, class_index), batch_dims=1))
    grads = tf.cast(tape.gradient(y, features), tf.float32)
    weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * tf.cast(features, tf.float32), axis=-1))
    size = int(images.shape[1])
    cam = tf.image.resize(cam[..., None], [size, size], method="bilinear")[..., 0]
    return _finish(cam, images)


_METHODS = {
    "attention_rollout": attention_rollout,
    "gradient_rollout": gradient_rollout,
    "grad_cam": grad_cam,
}


def map_function(model: keras.Model, method: str | None = None):
    """A function ``images float32 [B, S, S, 3] -> maps float32 [B, S, S]`` for graphs.

    Everything that builds Keras objects happens here, once, so the returned function can be
    traced inside a ``tf.function`` (e.g. the SavedModel's ``serving_explain`` signature).

    Raises:
        ValueError: unknown method, or a method that does not fit the model.
    """
    method = method or default_method(model)
    if method not in _METHODS:
        raise ValueError(f"method={method!r} is not one of {', '.join(METHODS)}.")
    if method in VIT_METHODS:
        if not is_vit(model):
            raise ValueError(f"{method} explains ViT classifiers; use grad_cam for this model.")
        return lambda images: _METHODS[method](model, images)
    probe = _grad_cam_probe(model)
    return lambda images: grad_cam(model, images, probe=probe)


def explain(model: keras.Model, images, method: str | None = None) -> np.ndarray:
    """Explanation maps of a batch, by method name.

    Args:
        model: keras.Model. A ViT classifier or a CNN.
        images: float32 ``[B, S, S, 3]`` (or ``[S, S, 3]``) model input, 0..255.
        method: str or None. one of ``METHODS``. Defaults to ``default_method(model)``.

    Returns:
        float32 numpy ``[B, S, S]`` (``[S, S]`` for one image) in [0, 1], model input frame.

    Raises:
        ValueError: unknown method, or a method that does not fit the model.
    """
    fn = map_function(model, method)
    x = np.asarray(images, dtype=np.float32)
    single = x.ndim == 3
    maps = fn(tf.constant(x[None] if single else x)).numpy()
    return maps[0] if single else maps


# --------------------------------------------------------------------------- overlays


def overlay(image, saliency, alpha: float = 0.45) -> np.ndarray:
    """Blends a map over an image as a heat colour map (matplotlib ``inferno``).

    Args:
        image: uint8 ``[H, W, 3]``, the photo in the map's frame.
        saliency: float ``[h, w]`` in [0, 1]; resized to ``[H, W]`` when it differs.
        alpha: float. weight of the heat map where the map is 1 (scaled by the map). Defaults
            to 0.45.

    Returns:
        uint8 ``[H, W, 3]``.
    """
    from matplotlib import colormaps

    img = np.asarray(image, dtype=np.float32)
    s = np.asarray(saliency, dtype=np.float32)
    if s.shape != img.shape[:2]:
        s = tf.image.resize(s[..., None], img.shape[:2], method="bilinear").numpy()[..., 0]
    s = np.clip(s, 0.0, 1.0)
    heat = colormaps["inferno"](s)[..., :3] * 255.0
    weight = alpha * s[..., None]
    return np.clip((1 - weight) * img + weight * heat, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- predict --explain


def write_overlays(exported, items, out_dir, signature: str = "serving_explain") -> list[str]:
    """Runs an export's ``serving_explain`` signature and writes one overlay PNG per photo.

    The PNG shows the map over the photo in the map's frame: the fundus crop padded to a square
    and resized to the model input side (``fundus.preprocess_fundus`` without Ben Graham).

    Args:
        exported: a `predict.ExportedModel` (``loaded`` SavedModel and ``metadata`` dict).
        items: sequence of ``(name, image_bytes)``; ``name`` gives the PNG its stem.
        out_dir: str or PathLike. folder for the PNGs (created; nothing is written elsewhere).
        signature: str. Defaults to ``"serving_explain"``.

    Returns:
        The PNG paths, in order (``<stem>_explain.png``; ``_2``, ``_3`` ... on name clashes).

    Raises:
        ValueError: the export has no explain signature (exports before this version).
        tf.errors.InvalidArgumentError: undecodable bytes.
    """
    import os

    from PIL import Image

    if signature not in exported.loaded.signatures:
        raise ValueError(
            f"{exported.path} has no {signature} signature; re-export the run with "
            "`eyegazer export --workdir W --output DIR` to add it."
        )
    size = int(exported.metadata["image_size"])
    os.makedirs(out_dir, exist_ok=True)
    fn = exported.loaded.signatures[signature]
    written, used = [], set()
    for name, blob in items:
        out = fn(image_bytes=tf.constant([blob]))
        saliency = out["explanation"].numpy()[0]
        photo = fundus.preprocess_fundus(fundus.decode_image(tf.constant(blob)), size).numpy()
        stem = os.path.splitext(os.path.basename(str(name)))[0] or "stdin"
        candidate, k = f"{stem}_explain.png", 1
        while candidate in used:
            k += 1
            candidate = f"{stem}_explain_{k}.png"
        used.add(candidate)
        path = os.path.join(out_dir, candidate)
        big = np.kron(overlay(photo, saliency), np.ones((4, 4, 1), np.uint8))  # 4x: visible
        Image.fromarray(big).save(path)
        written.append(path)
    return written
