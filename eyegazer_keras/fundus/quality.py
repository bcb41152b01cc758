"""The fundus quality gate: gradable / ungradable with a reason and a score (see `assess_quality`)."""

from __future__ import annotations

import tensorflow as tf

from eyegazer_keras.fundus import quality_model
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

# ---- Hard limits (see `assess_quality`); the fitted score (`quality_model`) comes after ----
# too_dark: the 99th percentile of the brightest channel over the frame is below this (a lens
# cap or a failed flash: every pixel near black) ...
DARK_PEAK = 40
# ... or the mean luma (Rec. 601, 0..255) inside the disc is below this.
DARK_MEAN_LUMA = 25.0
# no_fundus: the fitted disc, lit pixels only, covers less than this fraction of the frame ...
MIN_FUNDUS_FRACTION = 0.05
# ... or its texture is pixel noise, not anatomy: `green_detail_4 / green_detail_1` below
# this. Flat colour plus Gaussian noise gives 1.14-1.37 (its energy sits at the finest scales,
# whatever the photo's size); vessels make the ratio grow with scale: measured on real
# EyePACS photos >= 1.91 (raw, 197) and >= 1.51 (enhanced, 1,225); synthetic >= 1.53.
MIN_DETAIL_RATIO = 1.43
# ... or it is flat at the scale of anatomy: `illumination_cv` below this. The optic disc, the
# macula and the camera's vignetting always vary a fundus's brightness: real EyePACS photos
# >= 0.164 (raw) and >= 0.188 (enhanced); flat colour plus noise ~0.01.
MIN_ILLUMINATION_CV = 0.025
# ... or its fine detail is stronger than any retina's: `sharpness` above this (stripes, text,
# screens, heavy noise). Real EyePACS photos <= 0.072 (raw) and <= 0.218 (enhanced, whose
# publisher sharpened them), synthetic <= 0.104.
MAX_SHARPNESS = 0.4
# Standardised log measures are clipped to +-this before the fitted score: a photo far
# outside the photos it was fitted on moves the score no more than one at the edge.
SCORE_CLIP = 5.0
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
# poor_quality: `quality_score` below this operating threshold (fitted with the score; see
# `eyegazer_keras.fundus.quality_model` for the data, the command and the cross-validation).
QUALITY_THRESHOLD = quality_model.THRESHOLD
# ... applied to photos whose shorter side is at least this (pixels). The score was fitted on
# 256-px and ~1,000-px photos; on thumbnails below 128 px (which no camera writes; the tests'
# tiny photos are such) it is reported but does not refuse: the hard limits alone judge them.
SCORE_MIN_SIZE = 128

REASONS = (
    "too_small",
    "too_dark",
    "no_fundus",
    "overexposed",
    "too_blurry",
    "unmeasurable",
    "poor_quality",
)

# The measures of `quality_measures`, in a fixed order (the SavedModel outputs none of them
# but `quality_score`; the benchmark and the build report read them by these names).
MEASURES = (
    "peak",
    "fundus_fraction",
    "radius_fraction",
    "mean_luma",
    "saturated_fraction",
    "sharpness",
    "green_contrast",
    "green_detail_1",
    "green_detail_2",
    "green_detail_4",
    "vessel_contrast",
    "illumination_cv",
    "dark_fraction",
    "rim_over_centre",
    "blue_over_red",
    "green_over_red",
    "colour_saturation",
)


def _luma(image: tf.Tensor) -> tf.Tensor:
    x = tf.cast(image, tf.float32)
    return 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]


def _masked_mean_std(x: tf.Tensor, mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Mean and std of `x` over `mask` (float 0/1); NaN when the mask is empty (fail closed)."""
    n = tf.reduce_sum(mask)
    mean = tf.reduce_sum(x * mask) / n
    std = tf.sqrt(tf.reduce_sum(tf.square(x - mean) * mask) / n)
    return mean, std


def _high_pass(channel: tf.Tensor, sigma: float) -> tf.Tensor:
    return channel - gaussian_blur(channel[..., tf.newaxis], sigma)[..., 0]


def _frame_measures(image: tf.Tensor, threshold: int):
    """`peak`, `fundus_fraction`, `radius_fraction` and the disc at `QUALITY_SIZE` px."""
    shape = tf.shape(image)
    stride = tf.maximum(1, (tf.maximum(shape[0], shape[1]) + 511) // 512)
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
    # Disc diameter over the frame's short side: ~1 for a disc that fills the frame's height,
    # > 1 for a disc cut at top and bottom; 1 when no circle was found (a borderless photo).
    short = tf.cast(tf.minimum(sh[0], sh[1]), tf.float32)
    radius_fraction = tf.where(circle[3] > 0, 2.0 * circle[2] / short, 1.0)
    disc = resize_uint8(pad_to_square(_crop_with_circle(small, circle, fallback)), QUALITY_SIZE)
    return peak, fundus_fraction, radius_fraction, disc


def quality_measures(image: tf.Tensor, threshold: int = DEFAULT_THRESHOLD) -> dict:
    """The measurements behind `assess_quality`, as float32 scalars (names in `MEASURES`).

    Measured on the fitted disc resized to `QUALITY_SIZE` (256) px, so they do not depend on
    the photo's resolution. "Core" is the lit part of the disc within 85 % of its radius;
    high-pass measures use only core pixels whose blur window lies wholly on lit pixels, so the
    disc's rim and the black padding never count as detail.

    * `peak`: 99th percentile of the brightest channel over the frame (0..255);
    * `fundus_fraction`: lit pixels inside the fitted disc (or the fallback box), over the frame;
    * `radius_fraction`: disc diameter over the frame's short side (1 when no disc is fitted);
    * `mean_luma`: mean Rec. 601 luma inside 90 % of the disc (0..255);
    * `saturated_fraction`: fraction of that area with luma >= `SATURATED_LUMA`;
    * `sharpness`: std of `luma - GaussianBlur(luma, 2 px)` in the core, over `mean_luma`;
    * `green_contrast`: std over mean of the green channel in the core (vessels and lesions
      are seen in green; haze flattens it);
    * `green_detail_1|2|4`: std of `green - GaussianBlur(green, s px)` over mean green, s = 1,
      2, 4 (fine detail, small and large vessels);
    * `vessel_contrast`: mean of `max(GaussianBlur(green, 4 px) - green, 0)` over mean green
      (dark thin structures: vessels, haemorrhages);
    * `illumination_cv`: std over mean of the luma at the scale of anatomy (averaged over 4x4
      px blocks, then `GaussianBlur(4 blocks)`: 16 px) on the blocks inside the core (uneven
      illumination, shadows, crescents);
    * `dark_fraction`: share of those blocks whose blurred luma is below half its mean;
    * `rim_over_centre`: mean luma at 70-90 % of the radius over mean luma within 50 %
      (haze and flare rings);
    * `blue_over_red`, `green_over_red`: mean channel ratios in the core (colour cast: a
      blue-grey haze raises both);
    * `colour_saturation`: mean HSV saturation in the core.

    A measure that cannot be computed (an empty core) is NaN; `assess_quality` then refuses
    the photo as `unmeasurable`.

    Args:
        image: `uint8 [H, W, 3]` with `min(H, W) >= 1`.
        threshold: int. Fundus threshold. Defaults to 12.

    Returns:
        Dict of float32 scalars, keys `MEASURES`.
    """
    image = tf.convert_to_tensor(image)
    peak, fundus_fraction, radius_fraction, disc = _frame_measures(image, threshold)
    lit = tf.cast(_fundus_mask(disc, threshold), tf.float32)
    x = tf.cast(disc, tf.float32)
    red, green, blue = x[..., 0], x[..., 1], x[..., 2]
    luma = _luma(disc)
    r = tf.range(QUALITY_SIZE, dtype=tf.float32) + 0.5 - QUALITY_SIZE / 2.0
    dist = tf.sqrt(r[:, tf.newaxis] ** 2 + r[tf.newaxis, :] ** 2) / (QUALITY_SIZE / 2.0)

    def within(low, high):
        return tf.cast(tf.logical_and(dist > low, dist <= high), tf.float32) * lit

    inner, core, centre, ring = within(-1, 0.9), within(-1, 0.85), within(-1, 0.5), within(0.7, 0.9)
    # One blur call per scale, channels stacked: [luma, green] at 2 px, [green, lit] at 4 px.
    blur2 = gaussian_blur(tf.stack([luma, green], axis=-1), 2.0)
    blur4 = gaussian_blur(tf.stack([green, lit], axis=-1), 4.0)
    # Core pixels at least ~3 sigma (sigma = 4 px) from any unlit pixel.
    solid = core * tf.cast(blur4[..., 1] > 0.999, tf.float32)

    mean_luma, _ = _masked_mean_std(luma, inner)
    saturated, _ = _masked_mean_std(tf.cast(luma >= SATURATED_LUMA, tf.float32), inner)
    mean_green, std_green = _masked_mean_std(green, core)
    mean_red, _ = _masked_mean_std(red, core)
    mean_blue, _ = _masked_mean_std(blue, core)
    mean_green = tf.maximum(mean_green, 1.0)

    def detail(high, scale):
        return _masked_mean_std(high, solid)[1] / scale

    green_high_4 = green - blur4[..., 0]
    vessels, _ = _masked_mean_std(tf.nn.relu(-green_high_4), solid)
    # Illumination at the scale of anatomy: luma averaged over 4x4 blocks (64 px), blurred
    # with sigma 4 blocks (16 px of the 256-px disc), on the blocks wholly inside the core.
    pooled = tf.nn.avg_pool2d(tf.stack([luma * core, core], -1)[tf.newaxis], 4, 4, "VALID")[0]
    block_core = tf.cast(pooled[..., 1] > 0.999, tf.float32)
    low = gaussian_blur(pooled[..., :1], 4.0)[..., 0]
    mean_low, std_low = _masked_mean_std(low, block_core)
    dark, _ = _masked_mean_std(tf.cast(low < 0.5 * mean_low, tf.float32), block_core)
    centre_luma, _ = _masked_mean_std(luma, centre)
    ring_luma, _ = _masked_mean_std(luma, ring)
    brightest, darkest = tf.reduce_max(x, axis=-1), tf.reduce_min(x, axis=-1)
    colour_saturation, _ = _masked_mean_std(
        (brightest - darkest) / tf.maximum(brightest, 1.0), core
    )
    measures = {
        "peak": peak,
        "fundus_fraction": fundus_fraction,
        "radius_fraction": radius_fraction,
        "mean_luma": mean_luma,
        "saturated_fraction": saturated,
        "sharpness": detail(luma - blur2[..., 0], tf.maximum(mean_luma, 1.0)),
        "green_contrast": std_green / mean_green,
        "green_detail_1": detail(_high_pass(green, 1.0), mean_green),
        "green_detail_2": detail(green - blur2[..., 1], mean_green),
        "green_detail_4": detail(green_high_4, mean_green),
        "vessel_contrast": vessels / mean_green,
        "illumination_cv": std_low / tf.maximum(mean_low, 1.0),
        "dark_fraction": dark,
        "rim_over_centre": ring_luma / tf.maximum(centre_luma, 1.0),
        "blue_over_red": mean_blue / tf.maximum(mean_red, 1.0),
        "green_over_red": mean_green / tf.maximum(mean_red, 1.0),
        "colour_saturation": colour_saturation,
    }
    return {name: measures[name] for name in MEASURES}


def quality_score(measures: dict) -> tf.Tensor:
    """The fitted quality score in [0, 1] (1 = good) from `quality_measures`' output.

    A logistic model (`quality_model.COEFFICIENTS`) on the standardised logarithms of the
    measures, fitted to EyeQ's human labels (Fu et al., MICCAI 2019) on real EyePACS photos:
    `score = 1 - sigmoid(b + sum_i w_i z_i)` with `z_i = (log(|m_i| + 1e-3) - mu_i) / sigma_i`
    clipped to +-`SCORE_CLIP`. It ranks photos
    from "Reject" (low) to "Good" (high); it is not a calibrated probability. NaN measures
    give NaN.

    Args:
        measures: dict of float32 scalars (or `[B]` tensors) keyed by `MEASURES`.

    Returns:
        float32 tensor of the measures' shape, in [0, 1].
    """
    logit = tf.constant(quality_model.INTERCEPT, tf.float32)
    for name, (mu, sigma, weight) in quality_model.COEFFICIENTS.items():
        z = (tf.math.log(tf.abs(tf.cast(measures[name], tf.float32)) + 1e-3) - mu) / sigma
        z = tf.clip_by_value(z, -SCORE_CLIP, SCORE_CLIP)
        logit = logit + weight * z
    return 1.0 - tf.sigmoid(logit)


def assess_quality(image: tf.Tensor, threshold: int = DEFAULT_THRESHOLD) -> dict:
    """The fundus quality gate: is this photo gradable, how good is it, and if not, why.

    Screening programmes call a photo *ungradable* when the retina cannot be assessed and
    recall the patient for a new photo; the share graded is the programme's *imageability*.
    The gate follows EyeQ's three levels (H. Fu et al., "Evaluation of Retinal Image Quality
    Assessment Networks in Different Color-spaces", MICCAI 2019: Good / Usable / Reject):
    Good and Usable photos are gradable; Reject photos (the retina cannot be assessed) are
    refused. Hard limits catch what needs no model; then a logistic score fitted to EyeQ's
    human labels on real EyePACS photos (`quality_score`, `quality_model`) refuses the hazy,
    dim, unevenly lit and blurred photos that graders reject. The gate fails closed: a measure
    that cannot be computed refuses the photo.

    Reasons, checked in this order (the first that applies is reported):

    * `too_small`: `min(H, W) < MIN_IMAGE_SIZE` (32 px);
    * `too_dark`: `peak < DARK_PEAK` (40: nothing lit, a lens cap or failed flash) or mean disc
      luma `< DARK_MEAN_LUMA` (25);
    * `no_fundus`: lit disc area `< MIN_FUNDUS_FRACTION` (5 %) of the frame, or a texture
      that is pixel noise, not anatomy (`green_detail_4 < MIN_DETAIL_RATIO * green_detail_1`),
      a disc flat at the scale of anatomy (`illumination_cv < MIN_ILLUMINATION_CV`), or
      finer detail than any retina has (`sharpness > MAX_SHARPNESS`: stripes, text, noise);
    * `overexposed`: more than `MAX_SATURATED_FRACTION` (25 %) of the disc at luma >= 235, or
      a mean disc luma above `MAX_MEAN_LUMA` (200: washed out by flare or haze);
    * `too_blurry`: `sharpness < MIN_SHARPNESS` (see `quality_measures`);
    * `unmeasurable`: a measure or the score is not finite (no lit pixel far enough from the
      disc's edge to measure on); comparisons with NaN are false, so this is what makes the
      gate fail closed;
    * `poor_quality`: `quality_score < QUALITY_THRESHOLD` (what EyeQ's graders reject: haze,
      uneven illumination, low vessel contrast), for photos of at least `SCORE_MIN_SIZE`
      (128) px on the shorter side; smaller ones are judged by the limits above only.

    Args:
        image: `uint8 [H, W, 3]`, decoded and upright (`decode_image`).
        threshold: int. Fundus threshold. Defaults to 12.

    Returns:
        Dict: `gradable` (bool scalar), `ungradable_reason` (string scalar, `""` when gradable),
        `quality_score` (float32 scalar in [0, 1]; 0 when any reason but `poor_quality` applies) and
        the float32 measures of `quality_measures` (zeros for `too_small`).
    """
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    small = tf.minimum(shape[0], shape[1]) < MIN_IMAGE_SIZE

    def measure():
        m = quality_measures(image, threshold)
        return [m[n] for n in MEASURES]

    values = tf.cond(small, lambda: [tf.constant(0.0)] * len(MEASURES), measure)
    m = dict(zip(MEASURES, values, strict=True))
    score = quality_score(m)
    finite = tf.reduce_all(tf.math.is_finite(tf.stack([*values, score])))
    checks = [
        (small, "too_small"),
        (
            tf.logical_or(m["peak"] < DARK_PEAK, m["mean_luma"] < DARK_MEAN_LUMA),
            "too_dark",
        ),
        (
            tf.logical_or(
                m["fundus_fraction"] < MIN_FUNDUS_FRACTION,
                tf.logical_or(
                    m["green_detail_4"] < MIN_DETAIL_RATIO * m["green_detail_1"],
                    tf.logical_or(
                        m["illumination_cv"] < MIN_ILLUMINATION_CV,
                        m["sharpness"] > MAX_SHARPNESS,
                    ),
                ),
            ),
            "no_fundus",
        ),
        (
            tf.logical_or(
                m["saturated_fraction"] > MAX_SATURATED_FRACTION, m["mean_luma"] > MAX_MEAN_LUMA
            ),
            "overexposed",
        ),
        (m["sharpness"] < MIN_SHARPNESS, "too_blurry"),
        (tf.logical_not(finite), "unmeasurable"),
        (
            tf.logical_and(
                score < QUALITY_THRESHOLD, tf.minimum(shape[0], shape[1]) >= SCORE_MIN_SIZE
            ),
            "poor_quality",
        ),
    ]
    reason = tf.constant("")
    for failed, name in reversed(checks):
        reason = tf.where(failed, tf.constant(name), reason)
    # The score of a photo a hard limit refuses is 0: the model was never fitted on such photos.
    hard = tf.logical_and(
        tf.logical_not(tf.equal(reason, "")), tf.not_equal(reason, "poor_quality")
    )
    score = tf.where(hard, 0.0, score)
    return {
        "gradable": tf.equal(reason, ""),
        "ungradable_reason": reason,
        "quality_score": score,
        **m,
    }
