"""Explanation maps scored against known lesions: pointing game, pixel AUROC, baselines.

``score_maps`` measures maps (``explain``) against lesion masks (``synthetic_fundus`` >= 1.1.0
stores one per photo): the pointing game (Zhang et al. 2016, ECCV, "Top-down Neural Attention by
Excitation Backprop": a hit when the map's maximum lies within ``tolerance`` pixels of a lesion;
15 px at 224 px there) and the AUROC of the map's fundus pixels against the mask, next to a
random map and a centre-prior map as baselines. ``explanations_report`` runs a model's maps over
a split and scores them (``eyegazer evaluate --explain``).

Only the fundus is scored (pixels whose brightest channel exceeds ``fundus.DEFAULT_THRESHOLD``),
in the model input's frame (see ``explain``).

Example:

```python
import numpy as np
from eyegazer_keras.evaluation import explain_scores

images = np.zeros((1, 32, 32, 3), np.float32)
images[:, 4:28, 4:28] = 150.0  # the fundus
mask = np.zeros((1, 32, 32), bool)
mask[:, 6:10, 20:24] = True  # one lesion
scores = explain_scores.score_maps({"oracle": mask.astype(np.float32)}, mask, images)
assert scores["maps"]["oracle"]["pointing_game"] == 1.0
```
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from eyegazer_keras import fundus
from eyegazer_keras.evaluation import explain

BASELINES = ("random", "centre_prior")
# Zhang et al. 2016 use 15 px on ~224 px inputs; the same fraction of the side.
POINTING_TOLERANCE_FRACTION = 15.0 / 224.0
# Centre prior: an isotropic Gaussian at the centre, sigma a quarter of the side.
CENTRE_PRIOR_SIGMA_FRACTION = 0.25

__all__ = [
    "BASELINES",
    "baseline_map",
    "explanations_report",
    "pixel_auroc",
    "pointing_game_hit",
    "score_maps",
]


def baseline_map(kind: str, size: int, seed: int = 0) -> np.ndarray:
    """A baseline map ``float32 [size, size]``: ``"random"`` (uniform noise) or ``"centre_prior"``.

    Args:
        kind: str. one of ``BASELINES``.
        size: int. side in pixels.
        seed: int. seed of the random map. Defaults to 0.

    Returns:
        float32 ``[size, size]``: uniform noise in [0, 1), or a Gaussian at the centre with sigma
        a quarter of the side (peak 1).

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


# --------------------------------------------------------------------------- score_maps


def _checked_inputs(maps, masks, images) -> tuple[dict, np.ndarray, np.ndarray]:
    """``(maps {name: [N, S, S]}, masks [N, S, S], images [N, S, S, 3])`` of matching shapes."""
    masks = np.asarray(masks)
    if masks.ndim == 4:
        masks = masks[..., 0]
    images = np.asarray(images)
    if images.shape[:3] != masks.shape:
        raise ValueError(f"images {images.shape} and masks {masks.shape} do not match.")
    all_maps = {k: np.asarray(v) for k, v in maps.items()}
    for name, arr in all_maps.items():
        if arr.shape != masks.shape:
            raise ValueError(f"maps[{name!r}] has shape {arr.shape}; masks are {masks.shape}.")
    return all_maps, masks, images


def _per_photo_scores(all_maps, masks, images, radii, seed) -> tuple[dict, dict, int]:
    """Pointing-game hits at each radius and pixel AUROCs, per method and baseline.

    Returns ``(hits {name: {radius: [bool]}}, aucs {name: [float]}, photos skipped)``; a photo
    without a lesion pixel inside the fundus is skipped.
    """
    size = masks.shape[-1]
    rng = np.random.default_rng(seed)
    centre = baseline_map("centre_prior", size)
    names = (*all_maps, *BASELINES)
    hits = {k: {t: [] for t in radii} for k in names}
    aucs = {k: [] for k in names}
    skipped = 0
    for i in range(masks.shape[0]):
        inside = images[i].max(axis=-1) > fundus.DEFAULT_THRESHOLD
        mask = (masks[i] > 0) & inside
        if not mask.any():
            skipped += 1
            continue
        per = {k: v[i] for k, v in all_maps.items()}
        per["random"] = rng.random((size, size))
        per["centre_prior"] = centre
        for name, saliency in per.items():
            for t in radii:
                hits[name][t].append(pointing_game_hit(saliency, mask, t, inside))
            auc = pixel_auroc(saliency, mask, inside)
            if auc is not None:
                aucs[name].append(auc)
    return hits, aucs, skipped


def _mean_or_none(values) -> float | None:
    return float(np.mean(values)) if values else None


def _baseline_ratios(summary: dict, methods) -> tuple[str | None, dict]:
    """The baseline with the highest hit rate, and each method's hit rate over it."""
    base = [b for b in BASELINES if summary[b]["pointing_game"] is not None]
    best = max(base, key=lambda b: summary[b]["pointing_game"]) if base else None
    best_pg = summary[best]["pointing_game"] if best else None
    ratio = {}
    for name in methods:
        pg = summary[name]["pointing_game"]
        ratio[name] = pg / best_pg if pg is not None and best_pg else None
    return best, ratio


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
    all_maps, masks, images = _checked_inputs(maps, masks, images)
    n, size = masks.shape[0], masks.shape[-1]
    tol = int(round(POINTING_TOLERANCE_FRACTION * size)) if tolerance is None else int(tolerance)
    radii = [*sorted({t for t in (0, tol // 2) if t < tol}), tol]
    hits, aucs, skipped = _per_photo_scores(all_maps, masks, images, radii, seed)
    summary = {
        name: {
            "pointing_game": _mean_or_none(hits[name][tol]),
            "pixel_auroc": _mean_or_none(aucs[name]),
            "n": len(hits[name][tol]),
            "pointing_game_at_tolerance": {str(t): _mean_or_none(v) for t, v in hits[name].items()},
        }
        for name in hits
    }
    best, ratio = _baseline_ratios(summary, all_maps)
    return {
        "n_scored": n - skipped,
        "n_skipped_no_lesion": skipped,
        "size": int(size),
        "tolerance_px": tol,
        "maps": summary,
        "best_baseline": best,
        "pointing_game_ratio": ratio,
    }


# --------------------------------------------------------------------------- split report


def _masked_batches(ds: tf.data.Dataset, image_size: int, min_grade: int, batch_size: int):
    if "lesion_mask" not in ds.element_spec:
        raise ValueError(
            "this dataset has no lesion_mask feature: explanation maps can only be scored on "
            "synthetic_fundus >= 1.1.0 (run `eyegazer prepare synthetic_fundus` again)."
        )

    def prepare(ex):
        image = fundus.to_model_input(ex["image"], image_size)
        mask = tf.image.resize(
            tf.cast(ex["lesion_mask"], tf.float32), [image_size, image_size], method="area"
        )
        return image, mask[..., 0] > 0, ex["label"]

    ds = ds.filter(lambda ex: ex["label"] >= min_grade)
    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(
        batch_size
    )


def _split_maps(model, batches, methods, max_examples) -> tuple[np.ndarray, ...] | None:
    """``(images uint8, masks, grades, {method: maps})`` of the batches, or None when empty."""
    fns = {m: explain.map_function(model, m) for m in methods}
    images, masks, grades, maps = [], [], [], {m: [] for m in methods}
    for x, mask, label in batches:
        images.append(x.numpy().astype(np.uint8))
        masks.append(mask.numpy())
        grades.append(label.numpy())
        for m, fn in fns.items():
            maps[m].append(fn(x).numpy())
        if max_examples and sum(len(g) for g in grades) >= max_examples:
            break
    if not images:
        return None
    images, masks, grades = (np.concatenate(a) for a in (images, masks, grades))
    return images, masks, grades, {m: np.concatenate(v) for m, v in maps.items()}


def _report_notes(model: keras.Model, image_size: int) -> dict:
    """The ``grid``, ``frame`` and ``limits`` texts of an explanations report."""
    grid = None
    cells = explain.patch_grid(model)
    if cells is not None:
        grid = f"{cells}x{cells} patches (patch {image_size // cells} at {image_size} px)"
    return {
        "grid": grid,
        "frame": (
            "model input: the fundus crop padded to a centred square, resized to "
            f"{image_size} px; masks resized the same way (any lesion coverage = lesion)"
        ),
        "limits": (
            "ViT maps are resized from the patch grid, so a hit needs the lesion to fall in or "
            "near the top patch; synthetic lesions only; maps show output sensitivity, not a "
            "lesion segmentation, and are not validated clinically."
        ),
    }


def _one_per_grade(images, masks, grades, maps) -> dict:
    """The first photo of each grade present (with its mask and maps), for figures."""
    first = {int(g): i for i, g in reversed(list(enumerate(grades)))}
    pick = [first[g] for g in sorted(first)]
    return {
        "images": images[pick],
        "grades": grades[pick],
        "masks": masks[pick],
        "maps": {m: v[pick] for m, v in maps.items()},
    }


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
        methods = explain.VIT_METHODS if explain.is_vit(model) else explain.CNN_METHODS
    batches = _masked_batches(ds, image_size, min_grade, batch_size)
    collected = _split_maps(model, batches, methods, max_examples)
    if collected is None:
        raise ValueError(f"split {split!r} has no photo of grade >= {min_grade} to score.")
    images, masks, grades, maps = collected
    report = score_maps(maps, masks, images, seed=seed)
    report.update(split=split, min_grade=int(min_grade), methods=list(methods))
    report.update(_report_notes(model, image_size))
    return report, _one_per_grade(images, masks, grades, maps)
