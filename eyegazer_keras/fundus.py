"""Fundus preprocessing as TensorFlow ops: the one copy used by builders, training and serving.

Every path that turns a photo into model input goes through these functions:

* the TFDS builders call `preprocess_fundus` once per image at build time and store the result
  losslessly (PNG), so training never decodes a full-size photo again;
* `eyegazer_keras.data` calls `resize_for_model` on the stored image;
* the exported SavedModel calls `serving_transform` on raw JPEG/PNG bytes, which is
  `decode_image` -> `preprocess_fundus` -> `resize_for_model`: exactly the build + training path.

All functions work eagerly, inside `tf.data.Dataset.map` and inside a `tf.function`.

Example:

```python
import tensorflow as tf
from eyegazer_keras import fundus

raw = tf.io.read_file("photo.png")
image = fundus.preprocess_fundus(fundus.decode_image(raw), size=512)  # uint8 [512, 512, 3]
```
"""

from __future__ import annotations

import math

import tensorflow as tf

# A pixel belongs to the fundus when its brightest channel exceeds this value (0..255).
DEFAULT_THRESHOLD = 12
# A row/column is part of the fundus when at least this fraction of its pixels are.
DEFAULT_MIN_FRACTION = 0.01
# Ben Graham's local-average subtraction: sigma of the Gaussian as a fraction of the image size.
BEN_GRAHAM_SIGMA_FRACTION = 1.0 / 30.0


def decode_image(image_bytes: tf.Tensor) -> tf.Tensor:
    """Decodes JPEG/PNG/GIF/BMP bytes to an RGB `uint8 [H, W, 3]` tensor.

    Grayscale, palette and RGBA inputs become RGB (alpha is dropped); 16-bit PNGs are scaled to
    8 bits. Garbage bytes raise `tf.errors.InvalidArgumentError`.

    Args:
        image_bytes: scalar `tf.string`. The encoded image.

    Returns:
        `uint8` tensor of shape `[H, W, 3]`.
    """
    image = tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def fundus_bbox(
    image: tf.Tensor,
    threshold: int = DEFAULT_THRESHOLD,
    min_fraction: float = DEFAULT_MIN_FRACTION,
) -> tf.Tensor:
    """Returns `[top, left, height, width]` (int32) of the fundus inside a dark border.

    When no pixel is bright enough (an all-black image) the whole image is returned.

    Args:
        image: `uint8 [H, W, 3]`.
        threshold: int. A pixel is fundus when its brightest channel exceeds it. Defaults to 12.
        min_fraction: float. Fraction of a row/column that must be fundus. Defaults to 0.01.
    """
    image = tf.convert_to_tensor(image)
    mask = tf.reduce_max(image, axis=-1) > tf.cast(threshold, image.dtype)
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


def crop_fundus(
    image: tf.Tensor,
    threshold: int = DEFAULT_THRESHOLD,
    min_fraction: float = DEFAULT_MIN_FRACTION,
) -> tf.Tensor:
    """Crops the black border around the fundus. See `fundus_bbox` for the arguments."""
    box = fundus_bbox(image, threshold, min_fraction)
    return image[box[0] : box[0] + box[2], box[1] : box[1] + box[3], :]


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
    """Separable Gaussian blur of a float `[H, W, C]` image (reflect padding)."""
    sigma = tf.maximum(tf.cast(sigma, tf.float32), 0.5)
    kernel = _gaussian_kernel(sigma)
    radius = (tf.shape(kernel)[0] - 1) // 2
    channels = tf.shape(image)[-1]
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
    threshold: int = DEFAULT_THRESHOLD,
) -> tf.Tensor:
    """Ben Graham's local-colour normalisation: `4 * (img - blur(img)) + 128`, border kept black.

    Args:
        image: `uint8 [S, S, 3]`, already cropped and resized.
        sigma_fraction: float. Gaussian sigma as a fraction of the image side. Defaults to 1/30.
        threshold: int. Pixels darker than this (the border) stay black. Defaults to 12.

    Returns:
        `uint8 [S, S, 3]`.
    """
    mask = tf.reduce_max(image, axis=-1, keepdims=True) > tf.cast(threshold, image.dtype)
    x = tf.cast(image, tf.float32)
    side = tf.cast(tf.reduce_max(tf.shape(image)[:2]), tf.float32)
    blurred = gaussian_blur(x, side * sigma_fraction)
    out = 4.0 * (x - blurred) + 128.0
    out = tf.where(mask, out, tf.zeros_like(out))
    return _to_uint8(out)


def preprocess_fundus(
    image: tf.Tensor,
    size: int,
    use_ben_graham: bool = False,
    threshold: int = DEFAULT_THRESHOLD,
) -> tf.Tensor:
    """Crops the border, pads to a square, resizes and optionally applies Ben Graham.

    This is what the dataset builders store and what serving recomputes from raw bytes.

    Args:
        image: `uint8 [H, W, 3]` decoded photo.
        size: int. Output side in pixels.
        use_ben_graham: bool. Apply `ben_graham` after resizing. Defaults to False.
        threshold: int. Border threshold, see `fundus_bbox`. Defaults to 12.

    Returns:
        `uint8 [size, size, 3]`.
    """
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8:
        raise TypeError(f"preprocess_fundus expects uint8 images, got {image.dtype}.")
    cropped = pad_to_square(crop_fundus(image, threshold))
    out = resize_uint8(cropped, size)
    if use_ben_graham:
        out = ben_graham(out, threshold=threshold)
    out.set_shape([size, size, 3])
    return out


def resize_for_model(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Turns a stored `uint8` image (or batch) into model input: float32 0..255 at `image_size`.

    Normalisation is not done here: it lives inside every model.

    Args:
        image: `uint8 [S, S, 3]` or `[B, S, S, 3]`.
        image_size: int. Model input side.
    """
    image = tf.convert_to_tensor(image)
    static = image.shape[-3:-1]
    if static[0] == image_size and static[1] == image_size:
        return tf.cast(image, tf.float32)
    resized = tf.image.resize(
        tf.cast(image, tf.float32), [image_size, image_size], method="bilinear", antialias=True
    )
    return tf.round(tf.clip_by_value(resized, 0.0, 255.0))


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
    """
    stored = preprocess_fundus(decode_image(image_bytes), source_size, use_ben_graham)
    return resize_for_model(stored, image_size)


def circle_mask(size: int, radius_fraction: float = 1.0) -> tf.Tensor:
    """A boolean `[size, size]` disc, handy for tests and synthetic images."""
    r = tf.range(size, dtype=tf.float32) - (size - 1) / 2.0
    yy, xx = tf.meshgrid(r, r, indexing="ij")
    return tf.sqrt(yy**2 + xx**2) <= radius_fraction * size / 2.0 + 1e-6 * math.pi
