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
stored side) and ``fundus.resize_for_model`` (resized to ``S``). To go back to the photo, scale
by ``side / S`` (``side = max(crop height, crop width)``), subtract the padding
``((side - h) // 2, (side - w) // 2)`` and add the crop box's ``(top, left)``. ViT maps are
computed on the patch grid (``S / patch`` cells a side: 8 x 8 for the demo's patch 8 at 64 px)
and resized bilinearly to ``S``; they cannot be sharper than one patch.

Every map is zero outside the fundus (pixels whose brightest channel is at most
``fundus.DEFAULT_THRESHOLD``) and scaled to ``[0, 1]`` per image; a map with no contrast (a
blank photo) is all zeros. These maps show where the model's output is sensitive; they are not a
lesion segmentation and have not been validated clinically.

``score_maps`` measures maps against lesion masks (``synthetic_fundus`` >= 1.1.0 stores one per
photo): the pointing game (Zhang et al. 2016, ECCV, "Top-down Neural Attention by Excitation
Backprop": a hit when the map's maximum lies within ``tolerance`` pixels of a lesion; 15 px at
224 px there) and the AUROC of the map's fundus pixels against the mask, next to a random map
and a centre-prior map as baselines.

Example:

```python
import numpy as np
from eyegazer_keras import explain
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
from collections.abc import Mapping

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from eyegazer_keras import fundus

logger = logging.getLogger(__name__)

VIT_METHODS = ("attention_rollout", "gradient_rollout")
CNN_METHODS = ("grad_cam",)
METHODS = VIT_METHODS + CNN_METHODS
BASELINES = ("random", "centre_prior")
# Zhang et al. 2016 use 15 px on ~224 px inputs; the same fraction of the side.
POINTING_TOLERANCE_FRACTION = 15.0 / 224.0
# Centre prior: an isotropic Gaussian at the centre, sigma a quarter of the side.
CENTRE_PRIOR_SIGMA_FRACTION = 0.25

__all__ = [
    "BASELINES",
    "METHODS",
    "attention_rollout",
    "baseline_map",
    "default_method",
    "supported_method",
    "explain",
    "explanations_report",
    "write_overlays",
    "grad_cam",
    "gradient_rollout",
    "is_vit",
    "map_function",
    "overlay",
    "pixel_auroc",
    "pointing_game_hit",
    "score_maps",
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


def _vit_forward(model: keras.Model, images: tf.Tensor):
    """The classifier's forward pass, block by block, keeping every attention matrix.

    Same layers and weights as ``model(images)`` (inference mode). Returns ``(logits, tokens,
    attentions)``: float32 ``[B, k]`` pre-softmax head outputs, the number of prefix tokens and a
    list of ``[B, heads, T, T]`` attention probabilities, one per block.
    """
    backbone, embedding, encoder = _vit_parts(model)
    x = model.get_layer("normalization")(images)
    x = embedding(tf.cast(x, backbone.compute_dtype))
    attentions = []
    for block in encoder.encoder_layers:
        h = block.layer_norm_1(x)
        out, scores = block.mha(h, h, return_attention_scores=True, training=False)
        attentions.append(scores)
        x = x + out
        x = x + block.mlp(block.layer_norm_2(x))
    x = encoder.layer_norm(x)
    pooled = model.get_layer("pooling")(x)
    head = model.get_layer("predictions")
    logits = tf.matmul(tf.cast(pooled, tf.float32), head.kernel) + head.bias
    prefix = 1 if embedding.use_class_token else 0
    return logits, prefix, attentions


def _pooled_rows(matrix: tf.Tensor, prefix: int, pooling: str) -> tf.Tensor:
    """The relevance of each patch for the pooled output: ``[B, num_patches]``."""
    if pooling == "token":
        return matrix[:, 0, prefix:]
    return tf.reduce_mean(matrix[:, prefix:, prefix:], axis=1)


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
    pooling: the mean of the patch rows). Class-agnostic.

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


# --------------------------------------------------------------------------- scoring


def baseline_map(kind: str, size: int, seed: int = 0) -> np.ndarray:
    """A baseline map ``float32 [size, size]``: ``"random"`` (uniform noise) or ``"centre_prior"``.

    Raises:
        ValueError: unknown kind.
    """
    if kind == "random":
        return np.random.default_rng(seed).random((size, size), dtype=np.float32)
    if kind == "centre_prior":
        r = np.arange(size, dtype=np.float32) - (size - 1) / 2
        sigma = CENTRE_PRIOR_SIGMA_FRACTION * size
        return np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2)).astype(np.float32)
    raise ValueError(f"baseline {kind!r} is not one of {', '.join(BASELINES)}.")


def _check_pair(saliency, mask) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(saliency, dtype=np.float64)
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if s.ndim != 2 or s.shape != m.shape:
        raise ValueError(
            f"map has shape {s.shape} and mask {m.shape}; pass [H, W] arrays in the same frame."
        )
    if not np.isfinite(s).all():
        raise ValueError("map has non-finite values; recompute it.")
    return s, m > 0


def pointing_game_hit(saliency, mask, tolerance: int = 0, inside=None) -> bool:
    """True when the map's maximum lies within ``tolerance`` pixels of a lesion pixel.

    Args:
        saliency: float ``[H, W]`` map.
        mask: ``[H, W]`` (or ``[H, W, 1]``) lesion mask; > 0 is lesion.
        tolerance: int. radius in pixels around the maximum (Zhang et al. 2016: 15 px at 224).
            Defaults to 0.
        inside: bool ``[H, W]`` or None. where the maximum is searched (the fundus). Defaults
            to everywhere.

    Returns:
        bool. Ties: the first maximum in row-major order.

    Raises:
        ValueError: shapes differ or the map is not finite.
    """
    s, m = _check_pair(saliency, mask)
    if inside is not None:
        s = np.where(np.asarray(inside, bool), s, -np.inf)
    y, x = np.unravel_index(int(np.argmax(s)), s.shape)
    yy, xx = np.ogrid[: s.shape[0], : s.shape[1]]
    near = (yy - y) ** 2 + (xx - x) ** 2 <= tolerance**2
    return bool((m & near).any())


def pixel_auroc(saliency, mask, inside=None) -> float | None:
    """AUROC of the map's pixel values against the lesion mask (lesion = positive).

    Args:
        saliency: float ``[H, W]`` map.
        mask: ``[H, W]`` lesion mask; > 0 is lesion.
        inside: bool ``[H, W]`` or None. pixels scored (the fundus). Defaults to every pixel.

    Returns:
        The AUROC (``sklearn.metrics.roc_auc_score``), or None when the scored pixels are all
        lesion or all background.

    Raises:
        ValueError: shapes differ or the map is not finite.
    """
    s, m = _check_pair(saliency, mask)
    keep = np.ones_like(m) if inside is None else np.asarray(inside, bool)
    y, score = m[keep], s[keep]
    if y.all() or not y.any():
        return None
    return float(roc_auc_score(y, score))


def score_maps(
    maps: Mapping[str, np.ndarray],
    masks: np.ndarray,
    images: np.ndarray,
    tolerance: int | None = None,
    seed: int = 0,
) -> dict:
    """Pointing game and pixel AUROC of explanation maps, with random and centre-prior baselines.

    Only the fundus is scored (pixels whose brightest channel exceeds
    ``fundus.DEFAULT_THRESHOLD``); photos without a lesion pixel are skipped and counted.

    Args:
        maps: dict of method name to float ``[N, S, S]`` maps.
        masks: ``[N, S, S]`` or ``[N, S, S, 1]`` lesion masks (> 0 is lesion), same frame.
        images: ``[N, S, S, 3]`` model input (finds the fundus).
        tolerance: int or None. pointing-game radius in pixels. Defaults to
            ``round(15 / 224 * S)`` (4 px at 64 px), Zhang et al.'s tolerance scaled.
        seed: int. seed of the random baseline. Defaults to 0.

    Returns:
        Dict with ``n_scored``, ``n_skipped_no_lesion``, ``tolerance_px``, ``size`` and
        ``maps``: for each method and each baseline, ``pointing_game`` (hit rate),
        ``pixel_auroc`` (mean over photos), ``n`` and ``pointing_game_at_tolerance`` (hit rates
        at 0 px, half the tolerance and the tolerance, keyed by the radius); plus ``best_baseline`` and
        ``pointing_game_ratio`` (each method's hit rate / the best baseline's).

    Raises:
        ValueError: shapes that do not match.
    """
    masks = np.asarray(masks)
    if masks.ndim == 4:
        masks = masks[..., 0]
    images = np.asarray(images)
    n, size = masks.shape[0], masks.shape[-1]
    if images.shape[:3] != masks.shape:
        raise ValueError(f"images {images.shape} and masks {masks.shape} do not match.")
    tol = int(round(POINTING_TOLERANCE_FRACTION * size)) if tolerance is None else int(tolerance)
    all_maps = {k: np.asarray(v) for k, v in maps.items()}
    for name, arr in all_maps.items():
        if arr.shape != masks.shape:
            raise ValueError(f"maps[{name!r}] has shape {arr.shape}; masks are {masks.shape}.")
    rng = np.random.default_rng(seed)
    centre = baseline_map("centre_prior", size)
    hits = {k: [] for k in (*all_maps, *BASELINES)}
    aucs = {k: [] for k in hits}
    stricter = sorted({t for t in (0, tol // 2) if t < tol})
    strict_hits = {k: {t: [] for t in stricter} for k in hits}
    skipped = 0
    for i in range(n):
        inside = images[i].max(axis=-1) > fundus.DEFAULT_THRESHOLD
        mask = (masks[i] > 0) & inside
        if not mask.any():
            skipped += 1
            continue
        per = {k: v[i] for k, v in all_maps.items()}
        per["random"] = rng.random((size, size))
        per["centre_prior"] = centre
        for name, saliency in per.items():
            hits[name].append(pointing_game_hit(saliency, mask, tol, inside))
            for t in stricter:
                strict_hits[name][t].append(pointing_game_hit(saliency, mask, t, inside))
            auc = pixel_auroc(saliency, mask, inside)
            if auc is not None:
                aucs[name].append(auc)
    summary = {
        name: {
            "pointing_game": float(np.mean(hits[name])) if hits[name] else None,
            "pixel_auroc": float(np.mean(aucs[name])) if aucs[name] else None,
            "n": len(hits[name]),
            "pointing_game_at_tolerance": {
                str(t): float(np.mean(v)) if v else None
                for t, v in {**strict_hits[name], tol: hits[name]}.items()
            },
        }
        for name in hits
    }
    base = [b for b in BASELINES if summary[b]["pointing_game"] is not None]
    best = max(base, key=lambda b: summary[b]["pointing_game"]) if base else None
    ratio = {}
    for name in all_maps:
        pg = summary[name]["pointing_game"]
        best_pg = summary[best]["pointing_game"] if best else None
        ratio[name] = pg / best_pg if pg is not None and best_pg else None
    return {
        "n_scored": n - skipped,
        "n_skipped_no_lesion": skipped,
        "size": int(size),
        "tolerance_px": tol,
        "maps": summary,
        "best_baseline": best,
        "pointing_game_ratio": ratio,
    }


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


# --------------------------------------------------------------------------- split report


def _masked_batches(ds: tf.data.Dataset, image_size: int, min_grade: int, batch_size: int):
    if "lesion_mask" not in ds.element_spec:
        raise ValueError(
            "this dataset has no lesion_mask feature: explanation maps can only be scored on "
            "synthetic_fundus >= 1.1.0 (run `eyegazer prepare synthetic_fundus` again)."
        )

    def prepare(ex):
        image = fundus.resize_for_model(ex["image"], image_size)
        mask = tf.image.resize(
            tf.cast(ex["lesion_mask"], tf.float32), [image_size, image_size], method="area"
        )
        return image, mask[..., 0] > 0, ex["label"]

    ds = ds.filter(lambda ex: ex["label"] >= min_grade)
    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(
        batch_size
    )


def explanations_report(
    model: keras.Model,
    ds: tf.data.Dataset,
    image_size: int,
    *,
    split: str = "validation",
    methods=None,
    min_grade: int = 2,
    batch_size: int = 32,
    max_examples: int | None = None,
    seed: int = 0,
) -> tuple[dict, dict]:
    """Scores a model's explanation maps against a split's lesion masks.

    Args:
        model: keras.Model. ViT classifier or CNN taking ``float32 [B, S, S, 3]`` 0..255.
        ds: ``tf.data.Dataset`` of dicts with ``image`` (stored uint8), ``lesion_mask``
            (stored uint8 fraction) and ``label`` (``data.load_split`` of synthetic_fundus).
        image_size: int. model input side S; masks are resized to it (a pixel is lesion when
            any part of it is).
        split: str. recorded in the result. Defaults to "validation".
        methods: sequence of method names or None. Defaults to both ViT methods for a ViT,
            ``("grad_cam",)`` otherwise.
        min_grade: int. only photos of this grade or higher are scored. Defaults to 2.
        batch_size: int. Defaults to 32.
        max_examples: int or None. stop after this many scored photos. Defaults to all.
        seed: int. random-baseline seed. Defaults to 0.

    Returns:
        ``(report, examples)``: the ``score_maps`` dict plus ``split``, ``min_grade``,
        ``methods``, ``grid`` (patch grid of a ViT), ``frame`` and ``limits`` text; and
        ``examples``, one photo per grade present (``images`` uint8 [n, S, S, 3], ``grades``,
        ``maps`` per method) for figures.

    Raises:
        ValueError: the dataset has no lesion masks, or no photo of grade >= ``min_grade``.
    """
    if methods is None:
        methods = VIT_METHODS if is_vit(model) else CNN_METHODS
    fns = {m: map_function(model, m) for m in methods}
    images, masks, grades, maps = [], [], [], {m: [] for m in methods}
    for x, mask, label in _masked_batches(ds, image_size, min_grade, batch_size):
        images.append(x.numpy().astype(np.uint8))
        masks.append(mask.numpy())
        grades.append(label.numpy())
        for m, fn in fns.items():
            maps[m].append(fn(x).numpy())
        if max_examples and sum(len(g) for g in grades) >= max_examples:
            break
    if not images:
        raise ValueError(f"split {split!r} has no photo of grade >= {min_grade} to score.")
    images, masks, grades = (np.concatenate(a) for a in (images, masks, grades))
    maps = {m: np.concatenate(v) for m, v in maps.items()}
    report = score_maps(maps, masks, images, seed=seed)
    grid = None
    if is_vit(model):
        _, embedding, _ = _vit_parts(model)
        cells = int(round(math.sqrt(int(embedding.num_patches))))
        grid = f"{cells}x{cells} patches (patch {image_size // cells} at {image_size} px)"
    report.update(
        split=split,
        min_grade=int(min_grade),
        methods=list(methods),
        grid=grid,
        frame=(
            "model input: the fundus crop padded to a centred square, resized to "
            f"{image_size} px; masks resized the same way (any lesion coverage = lesion)"
        ),
        limits=(
            "ViT maps are resized from the patch grid, so a hit needs the lesion to fall in or "
            "near the top patch; synthetic lesions only; maps show output sensitivity, not a "
            "lesion segmentation, and are not validated clinically."
        ),
    )
    first = {int(g): i for i, g in reversed(list(enumerate(grades)))}
    pick = [first[g] for g in sorted(first)]
    examples = {
        "images": images[pick],
        "grades": grades[pick],
        "masks": masks[pick],
        "maps": {m: v[pick] for m, v in maps.items()},
    }
    return report, examples


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
