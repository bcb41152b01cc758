"""The fundus crop (a circle fitted to the disc's rim), resizing and Ben Graham, as TF ops.

See `eyegazer_keras.fundus`.
"""

from __future__ import annotations

import math

import tensorflow as tf

# A pixel belongs to the fundus when its brightest channel exceeds this value (0..255).
DEFAULT_THRESHOLD = 12
# Fallback crop (no circle found): a row/column is fundus when this fraction of it is.
DEFAULT_MIN_FRACTION = 0.01
# Ben Graham's local-average subtraction: sigma of the Gaussian as a fraction of the image size.
BEN_GRAHAM_SIGMA_FRACTION = 1.0 / 30.0
# Graham (2015) clips the result to 90 % of the disc radius to remove the halo at the rim.
BEN_GRAHAM_CLIP_FRACTION = 0.9


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


def circle_mask(size: int, radius_fraction: float = 1.0) -> tf.Tensor:
    """A boolean `[size, size]` disc, handy for tests and synthetic images."""
    r = tf.range(size, dtype=tf.float32) - (size - 1) / 2.0
    yy, xx = tf.meshgrid(r, r, indexing="ij")
    return tf.sqrt(yy**2 + xx**2) <= radius_fraction * size / 2.0 + 1e-6 * math.pi
