"""Decoding with the EXIF orientation, as TF string ops (see `eyegazer_keras.fundus`)."""

from __future__ import annotations

import tensorflow as tf

from eyegazer_keras.fundus.header import _bytes_at, _uint, _walk_segments, check_pixel_limit

# EXIF orientation values (TIFF tag 0x0112): 1 = upright ... 8; anything else is read as 1.
EXIF_ORIENTATION_TAG = 0x0112
# The scales libjpeg decodes at in the DCT domain (`decode_image(..., ratio=r)`: 1/r).
JPEG_RATIOS = (1, 2, 4, 8)


def _jpeg_exif_offset(data: tf.Tensor) -> tf.Tensor:
    """Offset of the TIFF header inside a JPEG's APP1 `Exif` segment, or -1."""
    size = tf.strings.length(data)
    big = tf.constant(False)

    def step(pos):
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
        verdict = tf.where(tf.logical_and(is_marker, exif), pos + 10, tf.where(stop, -2, -1))
        return pos + 2 + length, verdict

    return _walk_segments(data, 2, 10, step, maximum_iterations=4096)


def _png_exif_offset(data: tf.Tensor) -> tf.Tensor:
    """Offset of the TIFF header in a PNG's `eXIf` chunk (before or after IDAT), or -1."""
    big = tf.constant(False)

    def step(pos):
        length = tf.cast(_uint(data, pos, 4, big), tf.int32)
        kind = tf.strings.substr(data, pos + 4, 4)
        verdict = tf.where(
            tf.equal(kind, b"eXIf"), pos + 8, tf.where(tf.equal(kind, b"IEND"), -2, -1)
        )
        verdict = tf.where(length < 0, -2, verdict)
        return pos + 12 + length, verdict

    return _walk_segments(data, 8, 8, step, maximum_iterations=1 << 20)


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
    if tf.executing_eagerly():
        # Eagerly, the segment walk's `tf.while_loop` runs op by op in Python: ~1.5 s for a
        # 10 MP JPEG (benchmarks/build_stages.py), 10x the decode. The same ops as one graph.
        return _exif_orientation_graph(data)
    return _exif_orientation_ops(data)


def _exif_orientation_ops(data: tf.Tensor) -> tf.Tensor:
    magic = tf.strings.substr(data, 0, 8)
    is_jpeg = tf.equal(tf.strings.substr(data, 0, 2), b"\xff\xd8")
    is_png = tf.equal(magic, b"\x89PNG\r\n\x1a\n")
    tiff = tf.case(
        [(is_jpeg, lambda: _jpeg_exif_offset(data)), (is_png, lambda: _png_exif_offset(data))],
        default=lambda: tf.constant(-1),
    )
    return tf.cond(tiff >= 0, lambda: _tiff_orientation(data, tiff), lambda: tf.constant(1))


_exif_orientation_graph = tf.function(
    _exif_orientation_ops, input_signature=[tf.TensorSpec([], tf.string)], autograph=False
)


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


def composite_on_black(image: tf.Tensor) -> tf.Tensor:
    """Any decoded `uint8 [H, W, C]` (C = 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA) -> RGB on black.

    Transparency is composited onto black, the background of a fundus photo, so the picture
    is what a viewer shows on a dark page: `round(colour * alpha / 255)`. Whatever lies under
    fully transparent pixels (black, white or noise, as photo editors leave it) never reaches
    the quality gate or the model.

    Args:
        image: `uint8 [H, W, C]`, C in 1..4.

    Returns:
        `uint8 [H, W, 3]`.
    """
    image = tf.convert_to_tensor(image)
    channels = tf.shape(image)[-1]

    def blend():
        colour = tf.cond(
            channels >= 3, lambda: image[..., :3], lambda: tf.tile(image[..., :1], [1, 1, 3])
        )
        alpha = tf.case(
            [
                (tf.equal(channels, 4), lambda: image[..., 3:4]),
                (tf.equal(channels, 2), lambda: image[..., 1:2]),
            ],
            default=lambda: tf.fill(
                tf.concat([tf.shape(image)[:2], [1]], 0), tf.constant(255, tf.uint8)
            ),
        )
        blended = tf.round(tf.cast(colour, tf.float32) * (tf.cast(alpha, tf.float32) / 255.0))
        return tf.cast(blended, tf.uint8)

    # RGB (every camera JPEG) is its own composite: `round(c * 255 / 255) == c`. Skipping the
    # float round trip keeps the pixels and saves ~3 ms per megapixel.
    out = tf.cond(tf.equal(channels, 3), lambda: tf.identity(image), blend)
    out.set_shape([None, None, 3])
    return out


def jpeg_ratio(height: int, width: int, min_side: int) -> int:
    """The largest JPEG DCT scale divisor that still leaves `min_side` pixels on the short side.

    libjpeg decodes a JPEG at 1/2, 1/4 or 1/8 of its size in the DCT domain (each side
    `ceil(side / ratio)`), for a fraction of the full decode's cost: a photo much larger than
    what is stored need not be decoded at full size (`decode_image(..., ratio=...)`).

    Args:
        height, width: int. The photo's size in pixels (from its header).
        min_side: int. The short side the decoded image must keep, in pixels.

    Returns:
        int in `JPEG_RATIOS` (1 when even 1/2 would be too small).
    """
    short = min(int(height), int(width))
    return max(r for r in JPEG_RATIOS if r == 1 or -(-short // r) >= int(min_side))


def decode_image(image_bytes: tf.Tensor, ratio: int = 1) -> tf.Tensor:
    """Decodes JPEG/PNG/GIF/BMP bytes to an upright RGB `uint8 [H, W, 3]` tensor.

    The EXIF orientation (JPEG APP1, PNG `eXIf`; see `exif_orientation`) is applied, so the
    pixels are the way every viewer shows the photo. Grayscale and palette inputs become RGB;
    transparency (RGBA, grey + alpha) is composited onto black (`composite_on_black`); 16-bit
    PNGs are scaled to 8 bits first.

    Args:
        image_bytes: scalar `tf.string`. The encoded image.
        ratio: int, one of `JPEG_RATIOS` (1, 2, 4, 8). A JPEG is decoded at 1/ratio of its
            size in the DCT domain (libjpeg's scaled decoding, each side `ceil(side / ratio)`;
            see `jpeg_ratio`); other formats are always decoded at full size. Defaults to 1.

    Returns:
        `uint8` tensor of shape `[H, W, 3]`.

    Raises:
        ValueError: `ratio` is not one of `JPEG_RATIOS`.
        tf.errors.InvalidArgumentError: for bytes that are not a readable image, or whose
            header claims more than `header.MAX_PIXELS` (refused before decoding).
    """
    if ratio not in JPEG_RATIOS:
        raise ValueError(f"ratio must be one of {JPEG_RATIOS}, got {ratio!r}.")
    image_bytes = check_pixel_limit(tf.convert_to_tensor(image_bytes, tf.string))

    def full():
        return tf.io.decode_image(image_bytes, channels=0, dtype=tf.uint8, expand_animations=False)

    if ratio == 1:
        image = full()
    else:
        image = tf.cond(
            tf.io.is_jpeg(image_bytes),
            lambda: tf.io.decode_jpeg(image_bytes, channels=0, ratio=ratio),
            full,
        )
    image.set_shape([None, None, None])
    return apply_orientation(composite_on_black(image), exif_orientation(image_bytes))
