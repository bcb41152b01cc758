"""Fundus photos as TensorFlow ops: the one copy used by builders, training and serving.

Every path that turns a photo into model input goes through this module:

* `decode_image`: JPEG/PNG/GIF/BMP bytes -> upright RGB `uint8`, honouring the EXIF
  orientation tag (JPEG APP1 `Exif`, PNG `eXIf`), parsed with string ops so a SavedModel
  (and TF Serving, which has no Python) applies it too;
* `assess_quality`: the gradable / ungradable gate, with a reason (see `REASONS`);
* `fundus_circle` / `fundus_bbox` / `crop_fundus`: the crop that finds the disc (a circle fitted
  to its rim), not the box of everything bright;
* `preprocess_fundus`: crop -> square -> resize to the stored size -> optional Ben Graham. The
  TFDS builders store its output once; serving recomputes it from bytes;
* `to_model_input`: stored image -> model input (the one "stored -> model" step);
* `PreprocessingSpec` + `photo_to_model_input`: the whole photo -> model input recipe of a run.

All functions work eagerly, inside `tf.data.Dataset.map` and inside a `tf.function`.

Example:

```python
import numpy as np
import tensorflow as tf
from eyegazer_keras import fundus

yy, xx = np.mgrid[0:300, 0:400]
photo = np.zeros((300, 400, 3), np.uint8)
photo[(yy - 150) ** 2 + (xx - 200) ** 2 < 140**2] = (200, 90, 40)
raw = tf.io.encode_png(photo)
image = fundus.decode_image(raw)                      # uint8 [300, 400, 3], upright
quality = fundus.assess_quality(image)                # {"gradable": False, ...}: no vessels
spec = fundus.PreprocessingSpec(stored_size=128)
x = fundus.photo_to_model_input(image, 64, spec)      # float32 [64, 64, 3] in 0..255
```
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import tensorflow as tf

# A pixel belongs to the fundus when its brightest channel exceeds this value (0..255).
DEFAULT_THRESHOLD = 12
# Fallback crop (no circle found): a row/column is fundus when this fraction of it is.
DEFAULT_MIN_FRACTION = 0.01
# Ben Graham's local-average subtraction: sigma of the Gaussian as a fraction of the image size.
BEN_GRAHAM_SIGMA_FRACTION = 1.0 / 30.0
# Graham (2015) clips the result to 90 % of the disc radius to remove the halo at the rim.
BEN_GRAHAM_CLIP_FRACTION = 0.9

# Smallest side (pixels) of a photo that is graded. Below 32 px the disc spans fewer than ~30
# pixels: no DR lesion (microaneurysms and dot haemorrhages are ~1/100 of the field) covers
# even one pixel, and the crop fit and the blur measure have too few pixels to be trusted.
MIN_IMAGE_SIZE = 32

# EXIF orientation values (TIFF tag 0x0112): 1 = upright ... 8; anything else is read as 1.
EXIF_ORIENTATION_TAG = 0x0112

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
CROPS = ("fundus", "none")


# ---- Decoding with EXIF orientation ---------------------------------------------------------


def _bytes_at(data: tf.Tensor, pos: tf.Tensor, n: int) -> tf.Tensor:
    """`n` bytes of `data` at `pos` as int32; zeros past the end (never raises)."""
    size = tf.strings.length(data)
    pos = tf.clip_by_value(tf.cast(pos, tf.int32), 0, size)
    raw = tf.io.decode_raw(tf.strings.substr(data, pos, n), tf.uint8)
    raw = tf.pad(tf.cast(raw, tf.int32), [[0, n - tf.shape(raw)[0]]])
    return tf.reshape(raw, [n])


def _uint(data: tf.Tensor, pos: tf.Tensor, n: int, little: tf.Tensor) -> tf.Tensor:
    raw = _bytes_at(data, pos, n)
    weights_be = tf.constant([256 ** (n - 1 - i) for i in range(n)], tf.int64)
    weights = tf.where(little, tf.reverse(weights_be, [0]), weights_be)
    return tf.reduce_sum(tf.cast(raw, tf.int64) * weights)


def _jpeg_exif_offset(data: tf.Tensor) -> tf.Tensor:
    """Offset of the TIFF header inside a JPEG's APP1 `Exif` segment, or -1."""
    size = tf.strings.length(data)
    big = tf.constant(False)

    def cond(pos, found):
        return tf.logical_and(found < 0, pos + 10 <= size)

    def body(pos, found):
        head = _bytes_at(data, pos, 2)
        length = tf.cast(_uint(data, pos + 2, 2, big), tf.int32)
        is_marker = tf.equal(head[0], 0xFF)
        exif = tf.logical_and(
            tf.equal(head[1], 0xE1),
            tf.equal(tf.strings.substr(data, tf.minimum(pos + 4, size), 6), b"Exif\x00\x00"),
        )
        stop = tf.logical_or(
            tf.logical_not(is_marker), tf.logical_or(tf.equal(head[1], 0xDA), length < 2)
        )
        found = tf.where(tf.logical_and(is_marker, exif), pos + 10, tf.where(stop, -2, found))
        return pos + 2 + length, found

    _, found = tf.while_loop(cond, body, (tf.constant(2), tf.constant(-1)), maximum_iterations=4096)
    return tf.maximum(found, -1)


def _png_exif_offset(data: tf.Tensor) -> tf.Tensor:
    """Offset of the TIFF header in a PNG's `eXIf` chunk (before or after IDAT), or -1."""
    size = tf.strings.length(data)
    big = tf.constant(False)

    def cond(pos, found):
        return tf.logical_and(found < 0, pos + 8 <= size)

    def body(pos, found):
        length = tf.cast(_uint(data, pos, 4, big), tf.int32)
        kind = tf.strings.substr(data, pos + 4, 4)
        found = tf.where(
            tf.equal(kind, b"eXIf"), pos + 8, tf.where(tf.equal(kind, b"IEND"), -2, found)
        )
        found = tf.where(length < 0, -2, found)
        return pos + 12 + length, found

    _, found = tf.while_loop(
        cond, body, (tf.constant(8), tf.constant(-1)), maximum_iterations=1 << 20
    )
    return tf.maximum(found, -1)


def _tiff_orientation(data: tf.Tensor, tiff: tf.Tensor) -> tf.Tensor:
    """Orientation (1..8) from the TIFF header at `tiff` (both byte orders), else 1."""
    order = tf.strings.substr(data, tiff, 2)
    little = tf.equal(order, b"II")
    known = tf.logical_or(little, tf.equal(order, b"MM"))
    magic_ok = tf.equal(_uint(data, tiff + 2, 2, little), 42)
    ifd = tiff + tf.cast(_uint(data, tiff + 4, 4, little), tf.int32)
    count = tf.cast(_uint(data, ifd, 2, little), tf.int32)
    count = tf.clip_by_value(count, 0, 512)
    # Every IFD0 entry is 12 bytes: tag(2) type(2) count(4) value(4).
    size = tf.strings.length(data)
    start = tf.clip_by_value(ifd + 2, 0, size)
    raw = tf.io.decode_raw(tf.strings.substr(data, start, 12 * count), tf.uint8)
    n = tf.shape(raw)[0] // 12
    entries = tf.reshape(tf.cast(raw[: 12 * n], tf.int32), [n, 12])
    tag = tf.where(little, entries[:, 0] + 256 * entries[:, 1], 256 * entries[:, 0] + entries[:, 1])
    value = tf.where(
        little, entries[:, 8] + 256 * entries[:, 9], 256 * entries[:, 8] + entries[:, 9]
    )
    hit = tf.where(tf.equal(tag, EXIF_ORIENTATION_TAG))[:, 0]
    orientation = tf.cond(
        tf.size(hit) > 0, lambda: tf.gather(value, hit[0]), lambda: tf.constant(1, tf.int32)
    )
    valid = tf.logical_and(
        tf.logical_and(known, magic_ok), tf.logical_and(orientation >= 1, orientation <= 8)
    )
    return tf.where(valid, orientation, 1)


def exif_orientation(image_bytes: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation of an encoded JPEG or PNG, parsed with TF string ops.

    Reads the TIFF header (`II` little-endian or `MM` big-endian) of a JPEG APP1 `Exif` segment
    or a PNG `eXIf` chunk and returns the value of tag 0x0112 (TIFF 6.0 / EXIF 2.3). Missing,
    malformed or out-of-range tags give 1 (upright); other formats give 1. Never raises.

    Args:
        image_bytes: scalar `tf.string`. The encoded file.

    Returns:
        `int32` scalar in 1..8.
    """
    data = tf.convert_to_tensor(image_bytes, tf.string)
    magic = tf.strings.substr(data, 0, 8)
    is_jpeg = tf.equal(tf.strings.substr(data, 0, 2), b"\xff\xd8")
    is_png = tf.equal(magic, b"\x89PNG\r\n\x1a\n")
    tiff = tf.case(
        [(is_jpeg, lambda: _jpeg_exif_offset(data)), (is_png, lambda: _png_exif_offset(data))],
        default=lambda: tf.constant(-1),
    )
    return tf.cond(tiff >= 0, lambda: _tiff_orientation(data, tiff), lambda: tf.constant(1))


def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Turns stored pixels upright for an EXIF orientation (what every photo viewer shows).

    1 as is; 2 mirror left-right; 3 rotate 180; 4 mirror top-bottom; 5 transpose; 6 rotate 90
    clockwise; 7 transverse; 8 rotate 90 counter-clockwise (PIL's `ImageOps.exif_transpose`).

    Args:
        image: `[H, W, C]` tensor.
        orientation: int scalar 1..8 (others are treated as 1).

    Returns:
        `[H, W, C]` or `[W, H, C]` tensor.
    """
    image = tf.convert_to_tensor(image)
    branches = [
        lambda: image,
        lambda: tf.image.flip_left_right(image),
        lambda: tf.image.rot90(image, 2),
        lambda: tf.image.flip_up_down(image),
        lambda: tf.image.transpose(image),
        lambda: tf.image.rot90(image, 3),
        lambda: tf.image.rot90(tf.image.transpose(image), 2),
        lambda: tf.image.rot90(image, 1),
    ]
    index = tf.cast(orientation, tf.int32) - 1
    index = tf.where(tf.logical_and(index >= 0, index < 8), index, 0)
    out = tf.switch_case(index, branches)
    out.set_shape([None, None, image.shape[-1]])
    return out


def decode_image(image_bytes: tf.Tensor) -> tf.Tensor:
    """Decodes JPEG/PNG/GIF/BMP bytes to an upright RGB `uint8 [H, W, 3]` tensor.

    The EXIF orientation (JPEG APP1, PNG `eXIf`; see `exif_orientation`) is applied, so the
    pixels are the way every viewer shows the photo. Grayscale, palette and RGBA inputs become
    RGB (alpha is dropped); 16-bit PNGs are scaled to 8 bits.

    Args:
        image_bytes: scalar `tf.string`. The encoded image.

    Returns:
        `uint8` tensor of shape `[H, W, 3]`.

    Raises:
        tf.errors.InvalidArgumentError: for bytes that are not a readable image.
    """
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    image = tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return apply_orientation(image, exif_orientation(image_bytes))


# ---- The crop: a circle fitted to the disc's rim --------------------------------------------


def _fundus_mask(image: tf.Tensor, threshold: int) -> tf.Tensor:
    return tf.reduce_max(image, axis=-1) > tf.cast(threshold, image.dtype)


def _median_index(profile: tf.Tensor) -> tf.Tensor:
    cum = tf.cumsum(profile)
    return tf.cast(tf.argmax(tf.cast(cum >= 0.5 * cum[-1], tf.int32)), tf.int32)


def _runs_through(mask: tf.Tensor, centre: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Per row of `mask [N, L]`: first and last index of the lit run holding column `centre`."""
    length = tf.shape(mask)[1]
    idx = tf.range(length)[tf.newaxis, :]
    off = tf.logical_not(mask)
    before = tf.logical_and(off, idx <= centre)
    after = tf.logical_and(off, idx >= centre)
    start = tf.reduce_max(tf.where(before, idx, -1), axis=1) + 1
    end = tf.reduce_min(tf.where(after, idx, length), axis=1) - 1
    return start, end


def _rim_points(mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Rim points `(x, y, valid)` of the lit region holding the mask's median point.

    Only rows/columns connected to the centre through the centre column/row are used, and only
    ends that are not on the frame's edge: labels, timestamps and reflections that a black gap
    separates from the disc contribute nothing, and a disc cut by the frame keeps its real rim.
    """
    shape = tf.shape(mask)
    height, width = shape[0], shape[1]
    maskf = tf.cast(mask, tf.float32)
    cy = _median_index(tf.reduce_sum(maskf, axis=1))
    cx = _median_index(tf.reduce_sum(maskf, axis=0))
    # Vertical run of the centre column and horizontal run of the centre row.
    col = tf.transpose(mask)[cx : cx + 1]
    top, bottom = _runs_through(col, cy)
    row = mask[cy : cy + 1]
    left, right = _runs_through(row, cx)
    rows = tf.range(height)
    cols = tf.range(width)
    in_rows = tf.logical_and(rows >= top[0], rows <= bottom[0])
    in_cols = tf.logical_and(cols >= left[0], cols <= right[0])
    r_start, r_end = _runs_through(mask, cx)
    c_start, c_end = _runs_through(tf.transpose(mask), cy)
    y_rows = tf.cast(rows, tf.float64) + 0.5
    x_cols = tf.cast(cols, tf.float64) + 0.5
    xs = tf.concat(
        [tf.cast(r_start, tf.float64), tf.cast(r_end + 1, tf.float64), x_cols, x_cols], 0
    )
    ys = tf.concat(
        [y_rows, y_rows, tf.cast(c_start, tf.float64), tf.cast(c_end + 1, tf.float64)], 0
    )
    valid = tf.concat(
        [
            tf.logical_and(in_rows, r_start > 0),
            tf.logical_and(in_rows, r_end < width - 1),
            tf.logical_and(in_cols, c_start > 0),
            tf.logical_and(in_cols, c_end < height - 1),
        ],
        0,
    )
    centre_lit = mask[cy, cx]
    valid = tf.logical_and(tf.reshape(valid, [-1]), centre_lit)
    return tf.reshape(xs, [-1]), tf.reshape(ys, [-1]), valid


def _kasa_fit(xs, ys, weights):
    """Algebraic circle fit `x^2 + y^2 = 2 a x + 2 b y + c` (Kasa 1976), weighted."""
    a = tf.stack([xs, ys, tf.ones_like(xs)], axis=1)
    w = weights[:, tf.newaxis]
    lhs = tf.matmul(a * w, a, transpose_a=True) + 1e-9 * tf.eye(3, dtype=tf.float64)
    rhs = tf.matmul(a * w, (xs**2 + ys**2)[:, tf.newaxis], transpose_a=True)
    sol = tf.linalg.solve(lhs, rhs)[:, 0]
    cx, cy = sol[0] / 2.0, sol[1] / 2.0
    r = tf.sqrt(tf.maximum(sol[2] + cx**2 + cy**2, 0.0))
    return cx, cy, r


def fundus_circle(image: tf.Tensor, threshold: int = DEFAULT_THRESHOLD) -> tf.Tensor:
    """Fits the fundus disc: `[cy, cx, r, found]` (float32, pixels; `found` is 1.0 or 0.0).

    The disc is the lit region (brightest channel > `threshold`) around the mask's median
    point. A circle is fitted (Kasa's algebraic fit, then twice refitted without points more
    than 2.5 median residuals off) to the ends of that region's runs along rows and columns,
    leaving out runs that a black gap separates from the disc (labels, timestamps,
    reflections in the border) and ends that lie on the frame edge (discs cut at top and
    bottom keep their true radius). Photos larger than 1024 px are measured on a strided copy.

    `found` is 0 when no plausible circle exists: a borderless photo (the fundus fills the
    frame), an all-dark image, or a lit region too small to fit.

    Args:
        image: `uint8 [H, W, 3]`.
        threshold: int. A pixel is fundus when its brightest channel exceeds it. Defaults to 12.

    Returns:
        `float32 [4]`: centre row, centre column, radius, found flag.
    """
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    stride = tf.maximum(1, (tf.maximum(height, width) + 1023) // 1024)
    mask = _fundus_mask(image[::stride, ::stride], threshold)
    xs, ys, valid = _rim_points(mask)
    weights = tf.cast(valid, tf.float64)
    count = tf.reduce_sum(weights)

    def fit():
        cx, cy, r = _kasa_fit(xs, ys, weights)
        w = weights
        for _ in range(2):
            resid = tf.abs(tf.sqrt((xs - cx) ** 2 + (ys - cy) ** 2) - r)
            n_used = tf.cast(tf.reduce_sum(w), tf.int32)
            ranked = tf.sort(tf.where(w > 0, resid, tf.constant(math.inf, tf.float64)))
            median = ranked[n_used // 2]
            w = weights * tf.cast(resid <= tf.maximum(2.5 * median, 1.0), tf.float64)
            cx, cy, r = _kasa_fit(xs, ys, w)
        return tf.stack([cy, cx, r, tf.reduce_sum(w)])

    out = tf.cond(count >= 12.0, fit, lambda: tf.zeros([4], tf.float64))
    s = tf.cast(stride, tf.float64)
    cy, cx, r, used = out[0] * s, out[1] * s, out[2] * s, out[3]
    h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    plausible = tf.reduce_all(
        [
            used >= 12.0,
            r >= 0.1 * tf.minimum(h, w),
            r <= 1.0 * tf.maximum(h, w),
            cy > 0.0,
            cy < h,
            cx > 0.0,
            cx < w,
        ]
    )
    return tf.cast(tf.stack([cy, cx, r, tf.cast(plausible, tf.float64)]), tf.float32)


def _profile_bbox(image, threshold, min_fraction):
    mask = _fundus_mask(image, threshold)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    row_frac = tf.reduce_mean(tf.cast(mask, tf.float32), axis=1)
    col_frac = tf.reduce_mean(tf.cast(mask, tf.float32), axis=0)
    rows = tf.cast(tf.where(row_frac > min_fraction)[:, 0], tf.int32)
    cols = tf.cast(tf.where(col_frac > min_fraction)[:, 0], tf.int32)
    found = tf.logical_and(tf.size(rows) > 0, tf.size(cols) > 0)

    def _box():
        top, bottom = tf.reduce_min(rows), tf.reduce_max(rows)
        left, right = tf.reduce_min(cols), tf.reduce_max(cols)
        return tf.stack([top, left, bottom - top + 1, right - left + 1])

    return tf.cond(found, _box, lambda: tf.stack([0, 0, height, width]))


def fundus_bbox(
    image: tf.Tensor,
    threshold: int = DEFAULT_THRESHOLD,
    min_fraction: float = DEFAULT_MIN_FRACTION,
) -> tf.Tensor:
    """Returns the crop box `[top, left, height, width]` (int32) of the fundus.

    When `fundus_circle` finds the disc, the box is the disc's bounding square, which may
    extend past the frame (a disc cut at top and bottom): `crop_fundus` pads those parts black,
    so the disc stays centred. Otherwise (a borderless photo) the box of the rows/columns
    holding more than `min_fraction` lit pixels is used, and the whole frame when nothing is lit.

    Args:
        image: `uint8 [H, W, 3]`.
        threshold: int. A pixel is fundus when its brightest channel exceeds it. Defaults to 12.
        min_fraction: float. Fallback only: fraction of a row/column that must be fundus.
            Defaults to 0.01.

    Returns:
        `int32 [4]`.
    """
    image = tf.convert_to_tensor(image)
    circle = fundus_circle(image, threshold)

    def from_circle():
        top = tf.round(circle[0] - circle[2])
        left = tf.round(circle[1] - circle[2])
        side = tf.maximum(tf.round(2.0 * circle[2]), 1.0)
        return tf.cast(tf.stack([top, left, side, side]), tf.int32)

    return tf.cond(
        circle[3] > 0, from_circle, lambda: _profile_bbox(image, threshold, min_fraction)
    )


def crop_to_box(image: tf.Tensor, box: tf.Tensor) -> tf.Tensor:
    """Crops `[top, left, height, width]` from `[H, W, C]`, padding what lies outside with 0."""
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    top, left, h, w = box[0], box[1], box[2], box[3]
    pad_top = tf.maximum(0, -top)
    pad_left = tf.maximum(0, -left)
    pad_bottom = tf.maximum(0, top + h - height)
    pad_right = tf.maximum(0, left + w - width)
    inner = image[
        tf.maximum(top, 0) : tf.minimum(top + h, height),
        tf.maximum(left, 0) : tf.minimum(left + w, width),
        :,
    ]
    return tf.pad(inner, [[pad_top, pad_bottom], [pad_left, pad_right], [0, 0]])


def crop_fundus(
    image: tf.Tensor,
    threshold: int = DEFAULT_THRESHOLD,
    min_fraction: float = DEFAULT_MIN_FRACTION,
) -> tf.Tensor:
    """Crops the fundus (see `fundus_bbox`); with a fitted disc, pixels outside it become black.

    Blanking outside the circle (2 % margin) removes border marks that fall inside the disc's
    bounding square (a timestamp in a corner).

    Args:
        image: `uint8 [H, W, 3]`.
        threshold: int. See `fundus_bbox`. Defaults to 12.
        min_fraction: float. See `fundus_bbox`. Defaults to 0.01.

    Returns:
        `uint8 [h, w, 3]`.
    """
    image = tf.convert_to_tensor(image)
    return _crop_with_circle(image, *_crop_geometry(image, threshold, min_fraction))


def _crop_geometry(photo, threshold, min_fraction):
    """`(circle, fallback box)`: the fitted disc, and the profile box used when none is found."""
    circle = fundus_circle(photo, threshold)
    box = tf.cond(
        circle[3] > 0,
        lambda: tf.zeros([4], tf.int32),
        lambda: _profile_bbox(photo, threshold, min_fraction),
    )
    return circle, box


def _crop_with_circle(image, circle, fallback_box):
    """Crop by a fitted `circle` (`fundus_circle`), or by `fallback_box` when none was found."""

    def disc():
        top = tf.round(circle[0] - circle[2])
        left = tf.round(circle[1] - circle[2])
        side = tf.maximum(tf.round(2.0 * circle[2]), 1.0)
        box = tf.cast(tf.stack([top, left, side, side]), tf.int32)
        crop = crop_to_box(image, box)
        coords = tf.range(box[2], dtype=tf.float32) + 0.5
        yy = coords[:, tf.newaxis] + top - circle[0]
        xx = coords[tf.newaxis, :] + left - circle[1]
        inside = yy**2 + xx**2 <= (circle[2] * 1.02 + 1.0) ** 2
        return tf.where(inside[..., tf.newaxis], crop, tf.zeros_like(crop))

    out = tf.cond(circle[3] > 0, disc, lambda: crop_to_box(image, fallback_box))
    out.set_shape([None, None, image.shape[-1]])
    return out


def pad_to_square(image: tf.Tensor) -> tf.Tensor:
    """Pads an `[H, W, C]` image with black to a centred square of side `max(H, W)`."""
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    side = tf.maximum(height, width)
    top = (side - height) // 2
    left = (side - width) // 2
    return tf.image.pad_to_bounding_box(image, top, left, side, side)


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def resize_uint8(image: tf.Tensor, size: int) -> tf.Tensor:
    """Resizes a `uint8` image to `[size, size]` with antialiased bilinear filtering."""
    resized = tf.image.resize(
        tf.cast(image, tf.float32), [size, size], method="bilinear", antialias=True
    )
    return _to_uint8(resized)


def _gaussian_kernel(sigma: tf.Tensor) -> tf.Tensor:
    radius = tf.cast(tf.math.ceil(3.0 * sigma), tf.int32)
    x = tf.cast(tf.range(-radius, radius + 1), tf.float32)
    kernel = tf.exp(-0.5 * tf.square(x / sigma))
    return kernel / tf.reduce_sum(kernel)


def gaussian_blur(image: tf.Tensor, sigma: float | tf.Tensor) -> tf.Tensor:
    """Separable Gaussian blur of a float `[H, W, C]` image (reflect padding).

    The kernel radius is `ceil(3 sigma)`, limited to the image side minus one.
    """
    sigma = tf.maximum(tf.cast(sigma, tf.float32), 0.5)
    kernel = _gaussian_kernel(sigma)
    radius = (tf.shape(kernel)[0] - 1) // 2
    shape = tf.shape(image)
    limit = tf.maximum(tf.minimum(shape[0], shape[1]) - 1, 0)
    cut = tf.maximum(radius - limit, 0)
    kernel = kernel[cut : tf.shape(kernel)[0] - cut]
    kernel = kernel / tf.reduce_sum(kernel)
    radius = radius - cut
    channels = shape[-1]
    x = image[tf.newaxis]
    x = tf.pad(x, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="SYMMETRIC")
    k_rows = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
    k_cols = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, channels, 1])
    x = tf.nn.depthwise_conv2d(x, k_rows, strides=[1, 1, 1, 1], padding="VALID")
    x = tf.nn.depthwise_conv2d(x, k_cols, strides=[1, 1, 1, 1], padding="VALID")
    return x[0]


def ben_graham(
    image: tf.Tensor,
    sigma_fraction: float = BEN_GRAHAM_SIGMA_FRACTION,
    clip_fraction: float = BEN_GRAHAM_CLIP_FRACTION,
) -> tf.Tensor:
    """Ben Graham's local-colour normalisation with the 90 % boundary clip.

    `4 * (img - GaussianBlur(img, sigma = side * sigma_fraction)) + 128`, then every pixel
    outside a centred circle of `clip_fraction` times the disc radius (half the side of the
    cropped square) is set to 128. The clip removes the bright halo the subtraction leaves along
    the rim of the disc.

    Source: B. Graham, "Kaggle Diabetic Retinopathy Detection competition report" (2015), the
    winning solution: images scaled to a common radius, local average colour subtracted
    (`addWeighted(img, 4, GaussianBlur(img, scale / 30), -4, 128)`), then "clipped to 90 %
    size to remove the boundary effects".

    Args:
        image: `uint8 [S, S, 3]`, cropped to the disc's square and resized.
        sigma_fraction: float. Gaussian sigma as a fraction of the image side. Defaults to 1/30.
        clip_fraction: float. Kept circle, as a fraction of the radius. Defaults to 0.9.

    Returns:
        `uint8 [S, S, 3]`.
    """
    x = tf.cast(image, tf.float32)
    shape = tf.shape(image)
    side = tf.cast(tf.reduce_max(shape[:2]), tf.float32)
    blurred = gaussian_blur(x, side * sigma_fraction)
    out = 4.0 * (x - blurred) + 128.0
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    yy = tf.range(h)[:, tf.newaxis] + 0.5 - h / 2.0
    xx = tf.range(w)[tf.newaxis, :] + 0.5 - w / 2.0
    inside = yy**2 + xx**2 <= (clip_fraction * side / 2.0) ** 2
    out = tf.where(inside[..., tf.newaxis], out, 128.0 * tf.ones_like(out))
    return _to_uint8(out)


def preprocess_fundus(
    image: tf.Tensor,
    size: int,
    use_ben_graham: bool = False,
    threshold: int = DEFAULT_THRESHOLD,
) -> tf.Tensor:
    """Crops the disc, pads to a square, resizes and optionally applies Ben Graham.

    This is what the dataset builders store and what serving recomputes from raw bytes.

    Args:
        image: `uint8 [H, W, 3]` decoded photo (any size; see `MIN_IMAGE_SIZE` for grading).
        size: int. Output side in pixels.
        use_ben_graham: bool. Apply `ben_graham` after resizing. Defaults to False.
        threshold: int. Fundus threshold, see `fundus_bbox`. Defaults to 12.

    Returns:
        `uint8 [size, size, 3]`.

    Raises:
        TypeError: when `image` is not `uint8`.
    """
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8:
        raise TypeError(f"preprocess_fundus expects uint8 images, got {image.dtype}.")
    out = crop_like(image, image, size, threshold)
    if use_ben_graham:
        out = ben_graham(out)
    out.set_shape([size, size, 3])
    return out


def crop_like(
    array: tf.Tensor, photo: tf.Tensor, size: int, threshold: int = DEFAULT_THRESHOLD
) -> tf.Tensor:
    """Applies the geometry of `preprocess_fundus(photo, size)` to another array of its size.

    The crop of `photo` (fitted disc, out-of-frame padding, blanking outside the disc, square
    padding, antialiased resize), without the colour steps: a lesion mask drawn on the photo
    lands on the stored image's pixels. `crop_like(photo, photo, size)` equals
    `preprocess_fundus(photo, size)`.

    Args:
        array: `uint8 [H, W, C]`, e.g. a lesion mask scaled to 0/255.
        photo: `uint8 [H, W, 3]`. The photo whose crop is used.
        size: int. Stored side in pixels.
        threshold: int. Fundus threshold. Defaults to 12.

    Returns:
        `uint8 [size, size, C]`.
    """
    array = tf.convert_to_tensor(array)
    photo = tf.convert_to_tensor(photo)
    cropped = _crop_with_circle(array, *_crop_geometry(photo, threshold, DEFAULT_MIN_FRACTION))
    return resize_uint8(pad_to_square(cropped), size)


# ---- Quality gate ---------------------------------------------------------------------------


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


# ---- Stored image -> model input, and the per-run spec --------------------------------------


@dataclasses.dataclass(frozen=True)
class PreprocessingSpec:
    """How a photo becomes model input; stored with every run and every export.

    Args:
        stored_size: int. Side in pixels of the image the dataset builder stored (the
            builder config's resolution); the photo is cropped and resized to it first.
        ben_graham: bool. Ben Graham normalisation (with the 90 % clip) at the stored size.
            Defaults to False.
        crop: str. `"fundus"`: crop the fitted disc, pad to a square (`preprocess_fundus`);
            `"none"`: plain resize of the whole photo to a square (Hugging Face
            `ViTImageProcessor`). Defaults to `"fundus"`.
        mean: tuple of 3 floats or None. Per-channel mean on the 0..1 scale; with `std`, the
            model input is `(x / 255 - mean) / std`. None (the default): the model normalises
            inside and takes float32 0..255.
        std: tuple of 3 floats or None. Per-channel std on the 0..1 scale, with `mean`.

    Raises:
        ValueError: for a stored size under 1, an unknown crop, or only one of mean/std.
    """

    stored_size: int
    ben_graham: bool = False
    crop: str = "fundus"
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __post_init__(self):
        if int(self.stored_size) < 1:
            raise ValueError(f"stored_size must be a positive int, got {self.stored_size!r}.")
        object.__setattr__(self, "stored_size", int(self.stored_size))
        object.__setattr__(self, "ben_graham", bool(self.ben_graham))
        if self.crop not in CROPS:
            raise ValueError(f"crop={self.crop!r} is not one of {CROPS}.")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std (0..1 scale), or neither (model-inside).")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                value = tuple(float(v) for v in value)
                if len(value) != 3:
                    raise ValueError(f"{name} needs 3 per-channel values, got {value}.")
                if name == "std" and min(value) <= 0:
                    raise ValueError(f"std values must be > 0, got {value}.")
                object.__setattr__(self, name, value)

    @property
    def normalization(self) -> str:
        """`"inside_model"` (float32 0..255 in) or `"mean_std"` (see `mean`, `std`)."""
        return "inside_model" if self.mean is None else "mean_std"

    def to_dict(self) -> dict:
        """JSON-ready dict; `PreprocessingSpec.from_dict` reads it back."""
        return {
            "stored_size": self.stored_size,
            "ben_graham": self.ben_graham,
            "crop": self.crop,
            "normalization": self.normalization,
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> PreprocessingSpec:
        """Reads `to_dict` output.

        Raises:
            ValueError: for unknown keys or a `normalization` that contradicts mean/std.
        """
        d = dict(d)
        normalization = d.pop("normalization", None)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(
                f"unknown preprocessing keys {sorted(unknown)}; expected {sorted(fields)}."
            )
        spec = cls(**d)
        if normalization is not None and normalization != spec.normalization:
            raise ValueError(
                f"normalization={normalization!r} contradicts mean/std ({spec.normalization})."
            )
        return spec

    def describe(self, image_size: int) -> str:
        """One line naming every step, for metadata and model cards."""
        if self.crop == "fundus":
            steps = [
                "decode JPEG/PNG with EXIF orientation",
                "quality gate (fundus.assess_quality)",
                f"crop the fitted disc, pad to square, antialiased resize to {self.stored_size}",
            ]
        else:
            steps = [
                "decode JPEG/PNG with EXIF orientation",
                "quality gate (fundus.assess_quality)",
                f"antialiased resize of the whole photo to {self.stored_size}",
            ]
        if self.ben_graham:
            steps.append("Ben Graham with the 90% clip")
        steps.append(f"resize to {int(image_size)} (fundus.to_model_input)")
        if self.mean is None:
            steps.append("model (normalisation inside, input float32 0..255)")
        else:
            steps.append(f"(x/255 - mean {list(self.mean)}) / std {list(self.std)} -> model")
        return " -> ".join(steps)


def preprocess_photo(image: tf.Tensor, spec: PreprocessingSpec) -> tf.Tensor:
    """A decoded photo -> the stored image of `spec` (what the builders write).

    Args:
        image: `uint8 [H, W, 3]`.
        spec: `PreprocessingSpec`.

    Returns:
        `uint8 [spec.stored_size, spec.stored_size, 3]`.
    """
    if spec.crop == "fundus":
        return preprocess_fundus(image, spec.stored_size, spec.ben_graham)
    out = resize_uint8(tf.convert_to_tensor(image), spec.stored_size)
    if spec.ben_graham:
        out = ben_graham(out)
    out.set_shape([spec.stored_size, spec.stored_size, 3])
    return out


def to_model_input(
    stored: tf.Tensor, image_size: int, spec: PreprocessingSpec | None = None
) -> tf.Tensor:
    """A stored image (or batch) -> model input: the one "stored -> model" step.

    Resizes (antialiased bilinear, rounded to whole 0..255 values, so a uint8 cache of the
    result is exact) unless the stored side already equals `image_size`, then normalises as the
    spec says (nothing when the model normalises inside, the default).

    Args:
        stored: `uint8 [S, S, 3]` or `[B, S, S, 3]`.
        image_size: int. Model input side.
        spec: `PreprocessingSpec` or None. Only its normalisation is used here. Defaults to
            None (normalisation inside the model).

    Returns:
        `float32 [..., image_size, image_size, 3]`: 0..255, or `(x / 255 - mean) / std`.
    """
    stored = tf.convert_to_tensor(stored)
    static = stored.shape[-3:-1]
    if static[0] == image_size and static[1] == image_size:
        out = tf.cast(stored, tf.float32)
    else:
        resized = tf.image.resize(
            tf.cast(stored, tf.float32), [image_size, image_size], method="bilinear", antialias=True
        )
        out = tf.round(tf.clip_by_value(resized, 0.0, 255.0))
    if spec is not None and spec.mean is not None:
        mean = tf.constant(spec.mean, tf.float32)
        std = tf.constant(spec.std, tf.float32)
        out = (out / 255.0 - mean) / std
    return out


# The name used before the PreprocessingSpec existed.
resize_for_model = to_model_input


def photo_to_model_input(image: tf.Tensor, image_size: int, spec: PreprocessingSpec) -> tf.Tensor:
    """A decoded photo -> model input: `preprocess_photo` then `to_model_input`.

    Exactly the builder (stored image) + training path, so serving matches training.

    Args:
        image: `uint8 [H, W, 3]` decoded, upright photo (see `decode_image`).
        image_size: int. Model input side.
        spec: `PreprocessingSpec`.

    Returns:
        `float32 [image_size, image_size, 3]`.
    """
    return to_model_input(preprocess_photo(image, spec), image_size, spec)


def serving_transform(
    image_bytes: tf.Tensor, source_size: int, image_size: int, use_ben_graham: bool = False
) -> tf.Tensor:
    """Raw bytes to model input, identical to build (`preprocess_fundus`) + training path.

    Args:
        image_bytes: scalar `tf.string`, JPEG or PNG of any size.
        source_size: int. The size the dataset builder stored (its config's resolution).
        image_size: int. The model input size.
        use_ben_graham: bool. Whether the dataset config applied Ben Graham.

    Returns:
        `float32 [image_size, image_size, 3]` in 0..255.

    Raises:
        tf.errors.InvalidArgumentError: for bytes that are not a readable image.
    """
    spec = PreprocessingSpec(stored_size=source_size, ben_graham=use_ben_graham)
    return photo_to_model_input(decode_image(image_bytes), image_size, spec)


def circle_mask(size: int, radius_fraction: float = 1.0) -> tf.Tensor:
    """A boolean `[size, size]` disc, handy for tests and synthetic images."""
    r = tf.range(size, dtype=tf.float32) - (size - 1) / 2.0
    yy, xx = tf.meshgrid(r, r, indexing="ij")
    return tf.sqrt(yy**2 + xx**2) <= radius_fraction * size / 2.0 + 1e-6 * math.pi
