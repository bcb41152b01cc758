"""The fundus quality gate: gradable / ungradable with a reason (see `assess_quality`)."""

from __future__ import annotations

import tensorflow as tf

from eyegazer_keras.fundus.crop import (
    DEFAULT_MIN_FRACTION,
    DEFAULT_THRESHOLD,
    _crop_geometry,
    _crop_with_circle,
    _fundus_mask,
    gaussian_blur,
    pad_to_square,
    resize_uint8,
)

# Smallest side (pixels) of a photo that is graded. Below 32 px the disc spans fewer than ~30
# pixels: no DR lesion (microaneurysms and dot haemorrhages are ~1/100 of the field) covers
# even one pixel, and the crop fit and the blur measure have too few pixels to be trusted.
MIN_IMAGE_SIZE = 32

# ---- Quality gate thresholds (see `assess_quality`) -----------------------------------------
# too_dark: the 99th percentile of the brightest channel over the frame is below this (a lens
# cap or a failed flash: every pixel near black) ...
DARK_PEAK = 40
# ... or the mean luma (Rec. 601, 0..255) inside the disc is below this.
DARK_MEAN_LUMA = 25.0
# no_fundus: the fitted disc, lit pixels only, covers less than this fraction of the frame.
MIN_FUNDUS_FRACTION = 0.05
# overexposed: more than this fraction of the disc has luma >= SATURATED_LUMA, or the whole
# disc is washed out (mean luma above MAX_MEAN_LUMA; a well-exposed fundus is ~60-170).
SATURATED_LUMA = 235
MAX_SATURATED_FRACTION = 0.25
MAX_MEAN_LUMA = 200.0
# too_blurry: contrast-normalised high-pass energy inside the disc below this (see
# `quality_measures`). Measured: synthetic photos >= 0.046, skimage's retina 0.037; the retina
# blurred with sigma = 0.7 % of the disc diameter 0.011 (kept), 1.1 % 0.006 (refused).
MIN_SHARPNESS = 0.008
# Side of the disc image the gate measures on (resolution independent measures).
QUALITY_SIZE = 256

REASONS = ("too_small", "too_dark", "no_fundus", "overexposed", "too_blurry")


def _luma(image: tf.Tensor) -> tf.Tensor:
    x = tf.cast(image, tf.float32)
    return 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]


def quality_measures(image: tf.Tensor, threshold: int = DEFAULT_THRESHOLD) -> dict:
    """The measurements behind `assess_quality`, as float32 scalars.

    * `peak`: 99th percentile of the brightest channel over the frame (0..255);
    * `fundus_fraction`: lit pixels inside the fitted disc (or the fallback box), over the frame;
    * `mean_luma`: mean Rec. 601 luma inside 90 % of the disc (0..255);
    * `saturated_fraction`: fraction of that area with luma >= `SATURATED_LUMA`;
    * `sharpness`: std of `luma - GaussianBlur(luma, 2 px)` inside 85 % of the disc, over
      `mean_luma`, with the disc resized to `QUALITY_SIZE` px (so it does not depend on the
      photo's resolution; vessels and lesion edges are what make it high).

    Args:
        image: `uint8 [H, W, 3]` with `min(H, W) >= 1`.
        threshold: int. Fundus threshold. Defaults to 12.

    Returns:
        Dict of float32 scalars: `peak`, `fundus_fraction`, `mean_luma`, `saturated_fraction`,
        `sharpness`.
    """
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    stride = tf.maximum(1, (tf.maximum(height, width) + 511) // 512)
    small = image[::stride, ::stride]
    brightest = tf.reshape(tf.cast(tf.reduce_max(small, axis=-1), tf.int32), [-1])
    hist = tf.math.bincount(brightest, minlength=256, maxlength=256, dtype=tf.float32)
    cum = tf.cumsum(hist) / tf.maximum(tf.reduce_sum(hist), 1.0)
    peak = tf.cast(tf.argmax(tf.cast(cum >= 0.99, tf.int32)), tf.float32)

    circle, fallback = _crop_geometry(small, threshold, DEFAULT_MIN_FRACTION)
    lit_small = _fundus_mask(small, threshold)
    sh = tf.shape(small)
    yy = tf.range(sh[0], dtype=tf.float32)[:, tf.newaxis] + 0.5 - circle[0]
    xx = tf.range(sh[1], dtype=tf.float32)[tf.newaxis, :] + 0.5 - circle[1]
    in_circle = tf.logical_or(circle[3] <= 0, yy**2 + xx**2 <= (circle[2] * 1.02 + 1.0) ** 2)
    fundus_fraction = tf.reduce_mean(tf.cast(tf.logical_and(lit_small, in_circle), tf.float32))
    disc = pad_to_square(_crop_with_circle(small, circle, fallback))
    disc = resize_uint8(disc, QUALITY_SIZE)
    lit = tf.cast(_fundus_mask(disc, threshold), tf.float32)
    luma = _luma(disc)
    r = tf.range(QUALITY_SIZE, dtype=tf.float32) + 0.5 - QUALITY_SIZE / 2.0
    dist = tf.sqrt(r[:, tf.newaxis] ** 2 + r[tf.newaxis, :] ** 2) / (QUALITY_SIZE / 2.0)
    inner = tf.cast(dist <= 0.9, tf.float32) * lit
    n_inner = tf.maximum(tf.reduce_sum(inner), 1.0)
    mean_luma = tf.reduce_sum(luma * inner) / n_inner
    saturated = tf.reduce_sum(tf.cast(luma >= SATURATED_LUMA, tf.float32) * inner) / n_inner
    core = tf.cast(dist <= 0.85, tf.float32) * lit
    n_core = tf.maximum(tf.reduce_sum(core), 1.0)
    high = luma - gaussian_blur(luma[..., tf.newaxis], 2.0)[..., 0]
    mean_high = tf.reduce_sum(high * core) / n_core
    std_high = tf.sqrt(tf.reduce_sum(tf.square(high - mean_high) * core) / n_core)
    sharpness = std_high / tf.maximum(mean_luma, 1.0)
    return {
        "peak": peak,
        "fundus_fraction": fundus_fraction,
        "mean_luma": mean_luma,
        "saturated_fraction": saturated,
        "sharpness": sharpness,
    }


def assess_quality(image: tf.Tensor, threshold: int = DEFAULT_THRESHOLD) -> dict:
    """The fundus quality gate: is this photo gradable, and if not, why.

    Screening programmes call a photo *ungradable* when the retina cannot be assessed and
    recall the patient for a new photo. The gate follows EyeQ's three levels (H. Fu et al.,
    "Evaluation of Retinal Image Quality Assessment Networks in Different Color-spaces",
    MICCAI 2019: Good / Usable / Reject): Good and Usable photos are gradable; only
    Reject-level faults (the optic disc, macula and vessels cannot be seen because of darkness,
    over-exposure, blur, or no retina at all) are refused. Thresholds are deliberately loose:
    zero rejections on every synthetic_fundus photo and on `skimage.data.retina()`.

    Reasons, checked in this order (the first that applies is reported):

    * `too_small`: `min(H, W) < MIN_IMAGE_SIZE` (32 px);
    * `too_dark`: `peak < DARK_PEAK` (40: nothing lit, a lens cap or failed flash) or mean disc
      luma `< DARK_MEAN_LUMA` (25);
    * `no_fundus`: lit disc area `< MIN_FUNDUS_FRACTION` (5 %) of the frame;
    * `overexposed`: more than `MAX_SATURATED_FRACTION` (25 %) of the disc at luma >= 235, or
      a mean disc luma above `MAX_MEAN_LUMA` (200: washed out by flare or haze);
    * `too_blurry`: `sharpness < MIN_SHARPNESS` (see `quality_measures`).

    Args:
        image: `uint8 [H, W, 3]`, decoded and upright (`decode_image`).
        threshold: int. Fundus threshold. Defaults to 12.

    Returns:
        Dict: `gradable` (bool scalar), `ungradable_reason` (string scalar, `""` when gradable)
        and the float32 measures of `quality_measures` (zeros for `too_small`).
    """
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    small = tf.minimum(shape[0], shape[1]) < MIN_IMAGE_SIZE
    names = ("peak", "fundus_fraction", "mean_luma", "saturated_fraction", "sharpness")

    def measure():
        m = quality_measures(image, threshold)
        return [m[n] for n in names]

    values = tf.cond(small, lambda: [tf.constant(0.0)] * len(names), measure)
    m = dict(zip(names, values, strict=True))
    checks = [
        (small, "too_small"),
        (
            tf.logical_or(m["peak"] < DARK_PEAK, m["mean_luma"] < DARK_MEAN_LUMA),
            "too_dark",
        ),
        (m["fundus_fraction"] < MIN_FUNDUS_FRACTION, "no_fundus"),
        (
            tf.logical_or(
                m["saturated_fraction"] > MAX_SATURATED_FRACTION, m["mean_luma"] > MAX_MEAN_LUMA
            ),
            "overexposed",
        ),
        (m["sharpness"] < MIN_SHARPNESS, "too_blurry"),
    ]
    reason = tf.constant("")
    for failed, name in reversed(checks):
        reason = tf.where(failed, tf.constant(name), reason)
    return {"gradable": tf.equal(reason, ""), "ungradable_reason": reason, **m}
