"""The image size from the file header, read before decoding, as TF string ops.

A decoder allocates what the header claims: a 0.75 MB PNG whose header says 16000x16000 costs
768 MB of pixels, and more in the decoder's buffers. `check_pixel_limit` reads the size from
the header (never the pixels) and refuses more than `MAX_PIXELS` before anything is decoded.
It is plain TF string ops, so an exported SavedModel (and TF Serving, which has no Python)
refuses too; `fundus.decode_image` calls it first. One limit for serving, `eyegazer predict`,
the app and the dataset builders.

Formats (the ones `tf.io.decode_image` reads, recognised by the same magic bytes):

* PNG: the IHDR chunk (width, height at bytes 16..24; libpng requires IHDR first);
* JPEG: the first SOF0..SOF15 frame header (not DHT C4, JPG C8, DAC CC), found by walking the
  marker segments as libjpeg does (fill bytes, stuffed bytes and garbage between segments
  are skipped); a JPEG with no frame header before its first scan is refused;
* GIF: the logical screen and every frame's image descriptor; the pixels counted are the
  larger of the screen and the sum of all frames (the decoder reads every frame);
* BMP: the BITMAPINFOHEADER width and |height|;
* WebP: `VP8 ` (lossy frame header), `VP8L` (lossless) or `VP8X` (extended canvas).

Example:

```python
import numpy as np
import tensorflow as tf
from eyegazer_keras.fundus import header

png = tf.io.encode_png(np.zeros((30, 40, 3), np.uint8))
header.image_header_size(png).numpy().tolist()  # [30, 40]
header.check_pixel_limit(png)                    # the same bytes; raises when too large
```
"""

from __future__ import annotations

import tensorflow as tf

# The largest photo, in pixels (height x width from the header), any path decodes: 50 MP is
# above every fundus camera (the largest are ~24 MP) and below a decompression bomb; a 50 MP
# RGB image is 150 MB of uint8. PIL refuses 179 MP (2x its MAX_IMAGE_PIXELS) outright.
MAX_PIXELS = 50_000_000
# The first words of the refusal message (`predict.decode_error` recognises it).
TOO_LARGE = "image too large"
NO_SIZE = "no image size in the header"

_JPEG_MAX_SEGMENTS = 1 << 16
_JPEG_SCAN_WINDOW = 4096
_GIF_MAX_BLOCKS = 1 << 20


def _bytes_at(data: tf.Tensor, pos: tf.Tensor, n: int) -> tf.Tensor:
    """`n` bytes of `data` at `pos` as int32; zeros past the end (never raises)."""
    size = tf.strings.length(data)
    pos = tf.clip_by_value(tf.cast(pos, tf.int32), 0, size)
    raw = tf.io.decode_raw(tf.strings.substr(data, pos, n), tf.uint8)
    raw = tf.pad(tf.cast(raw, tf.int32), [[0, n - tf.shape(raw)[0]]])
    return tf.reshape(raw, [n])


def _uint(data: tf.Tensor, pos: tf.Tensor, n: int, little: tf.Tensor) -> tf.Tensor:
    """The `n`-byte unsigned integer at `pos` (`int64`), little- or big-endian."""
    raw = _bytes_at(data, pos, n)
    weights_be = tf.constant([256 ** (n - 1 - i) for i in range(n)], tf.int64)
    weights = tf.where(little, tf.reverse(weights_be, [0]), weights_be)
    return tf.reduce_sum(tf.cast(raw, tf.int64) * weights)


def _walk_segments(data: tf.Tensor, first: int, header: int, step, maximum_iterations: int):
    """Walks a file's segments from byte `first` until `step` finds what it looks for.

    `step(pos) -> (next_pos, verdict)`: verdict is an offset (>= 0) when the segment at `pos`
    is the one sought, -2 when that segment ends the readable ones (a JPEG's start of scan, a
    PNG's IEND or a broken length) and -1 otherwise. The walk ends at an offset, at a -2, when
    fewer than `header` bytes are left, or after `maximum_iterations` segments. Returns the
    offset, or -1.
    """
    size = tf.strings.length(data)

    def cond(pos, found):
        return tf.logical_and(tf.equal(found, -1), pos + header <= size)

    def body(pos, found):
        next_pos, verdict = step(pos)
        return next_pos, tf.where(verdict == -1, found, verdict)

    start = (tf.constant(first), tf.constant(-1))
    _, found = tf.while_loop(cond, body, start, maximum_iterations=maximum_iterations)
    return tf.maximum(found, -1)


def _jpeg_sof_offset(data: tf.Tensor) -> tf.Tensor:
    """Offset of the first SOFn marker before the first scan, or -1 (libjpeg's marker walk)."""
    big = tf.constant(False)

    def next_ff(pos):
        window = tf.io.decode_raw(tf.strings.substr(data, pos, _JPEG_SCAN_WINDOW), tf.uint8)
        hits = tf.where(tf.equal(window, 0xFF))[:, 0]
        return tf.cond(
            tf.size(hits) > 0,
            lambda: pos + tf.cast(hits[0], tf.int32),
            lambda: pos + _JPEG_SCAN_WINDOW,
        )

    def step(pos):
        head = _bytes_at(data, pos, 2)
        code = head[1]
        length = tf.cast(_uint(data, pos + 2, 2, big), tf.int32)
        standalone = (code == 0x00) | (code == 0x01) | ((code >= 0xD0) & (code <= 0xD8))
        sof = (code >= 0xC0) & (code <= 0xCF) & (code != 0xC4) & (code != 0xC8) & (code != 0xCC)
        next_pos = tf.where(
            code == 0xFF,
            pos + 1,  # a fill byte before the marker
            tf.where(standalone, pos + 2, pos + 2 + tf.maximum(length, 2)),
        )
        verdict = tf.where(sof, pos, tf.where((code == 0xDA) | (code == 0xD9), -2, -1))
        is_marker = tf.equal(head[0], 0xFF)
        # Garbage between segments: libjpeg skips to the next 0xFF ("extraneous bytes").
        next_pos = tf.cond(is_marker, lambda: next_pos, lambda: next_ff(pos))
        return next_pos, tf.where(is_marker, verdict, -1)

    return _walk_segments(data, 2, 2, step, maximum_iterations=_JPEG_MAX_SEGMENTS)


def _gif_pixels(data: tf.Tensor) -> tf.Tensor:
    """Sum of the frames' descriptor areas (`int64`) of a GIF: every frame is decoded."""
    size = tf.strings.length(data)
    little = tf.constant(True)
    packed = _bytes_at(data, 10, 1)[0]
    table = tf.where(packed >= 0x80, 3 * tf.bitwise.left_shift(2, packed & 7), 0)

    def cond(pos, in_blocks, area):
        return pos < size

    def body(pos, in_blocks, area):
        b = _bytes_at(data, pos, 1)[0]
        # In sub-blocks: a length byte; 0 ends them.
        sub_next = tf.where(b == 0, pos + 1, pos + 1 + b)
        # Between blocks: 0x21 extension (label, sub-blocks), 0x2C image descriptor (+ local
        # colour table + LZW code size, sub-blocks), 0x3B trailer; anything else ends the file.
        local = _bytes_at(data, pos + 9, 1)[0]
        local_table = tf.where(local >= 0x80, 3 * tf.bitwise.left_shift(2, local & 7), 0)
        frame = _uint(data, pos + 5, 2, little) * _uint(data, pos + 7, 2, little)
        block_next = tf.where(b == 0x21, pos + 2, tf.where(b == 0x2C, pos + 11 + local_table, size))
        next_pos = tf.where(in_blocks, sub_next, block_next)
        next_in = tf.where(in_blocks, b != 0, (b == 0x21) | (b == 0x2C))
        area = area + tf.where(tf.logical_not(in_blocks) & (b == 0x2C), frame, 0)
        return next_pos, next_in, area

    start = (13 + table, tf.constant(False), tf.constant(0, tf.int64))
    _, _, area = tf.while_loop(cond, body, start, maximum_iterations=_GIF_MAX_BLOCKS)
    return area


def _webp_size(data: tf.Tensor) -> tf.Tensor:
    """`[height, width]` of a WebP from its first chunk, or `[-1, -1]`."""
    little = tf.constant(True)
    chunk = tf.strings.substr(data, 12, 4)
    vp8 = tf.stack([_uint(data, 28, 2, little) & 0x3FFF, _uint(data, 26, 2, little) & 0x3FFF])
    bits = _uint(data, 21, 4, little)
    vp8l = tf.stack([(tf.bitwise.right_shift(bits, 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1])
    vp8x = tf.stack([_uint(data, 27, 3, little) + 1, _uint(data, 24, 3, little) + 1])
    unknown = tf.constant([-1, -1], tf.int64)
    return tf.where(
        chunk == b"VP8X",
        vp8x,
        tf.where(chunk == b"VP8L", vp8l, tf.where(chunk == b"VP8 ", vp8, unknown)),
    )


def _header_ops(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """`(size, pixels)`: `int64 [2]` height, width and `int64` pixels the decoder allocates."""
    big, little = tf.constant(False), tf.constant(True)
    magic = tf.strings.substr(data, 0, 4)
    is_png = tf.equal(magic, b"\x89PNG")
    is_jpeg = tf.equal(tf.strings.substr(data, 0, 3), b"\xff\xd8\xff")
    is_gif = tf.equal(magic, b"GIF8")
    is_bmp = tf.equal(tf.strings.substr(data, 0, 2), b"BM")
    is_webp = tf.logical_and(
        tf.equal(magic, b"RIFF"), tf.equal(tf.strings.substr(data, 8, 4), b"WEBP")
    )
    unknown = tf.constant([-1, -1], tf.int64)

    def png():
        return tf.stack([_uint(data, 20, 4, big), _uint(data, 16, 4, big)])

    def jpeg():
        sof = _jpeg_sof_offset(data)
        size = tf.stack([_uint(data, sof + 5, 2, big), _uint(data, sof + 7, 2, big)])
        return tf.where(sof >= 0, size, unknown)

    def gif():
        return tf.stack([_uint(data, 8, 2, little), _uint(data, 6, 2, little)])

    def bmp():
        def signed(pos):
            value = _uint(data, pos, 4, little)
            return tf.abs(tf.where(value >= 1 << 31, value - (1 << 32), value))

        return tf.stack([signed(22), signed(18)])

    size = tf.case(
        [
            (is_png, png),
            (is_jpeg, jpeg),
            (is_gif, gif),
            (is_bmp, bmp),
            (is_webp, lambda: _webp_size(data)),
        ],
        default=lambda: tf.constant([0, 0], tf.int64),
    )
    pixels = size[0] * size[1]
    pixels = tf.cond(is_gif, lambda: tf.maximum(pixels, _gif_pixels(data)), lambda: pixels)
    return size, tf.where(size[0] < 0, tf.constant(-1, tf.int64), pixels)


_header_graph = tf.function(
    _header_ops, input_signature=[tf.TensorSpec([], tf.string)], autograph=False
)


def _header(image_bytes) -> tuple[tf.Tensor, tf.Tensor]:
    data = tf.convert_to_tensor(image_bytes, tf.string)
    # Eagerly the walks' `tf.while_loop`s would run op by op in Python; one graph instead.
    return _header_graph(data) if tf.executing_eagerly() else _header_ops(data)


def image_header_size(image_bytes) -> tf.Tensor:
    """The image size an encoded file's header claims, without decoding it.

    Args:
        image_bytes: scalar `tf.string` (or bytes). The encoded file.

    Returns:
        `int64 [2]`: `(height, width)` in pixels. `(0, 0)` for a format other than PNG, JPEG,
        GIF, BMP or WebP (the decoder refuses those); `(-1, -1)` for one of those whose size
        cannot be found (a JPEG with no frame header before its scan, a WebP chunk other than
        VP8/VP8L/VP8X). Never raises.
    """
    return _header(image_bytes)[0]


def check_pixel_limit(image_bytes, max_pixels: int = MAX_PIXELS) -> tf.Tensor:
    """Refuses, before decoding, an image whose header claims more than `max_pixels`.

    Use the returned tensor as the decoder's input: in a graph the decoder then runs only after
    the check passed.

    Args:
        image_bytes: scalar `tf.string` (or bytes). The encoded file.
        max_pixels: int. The most pixels allowed (height x width; for a GIF, the larger of the
            screen and all frames together). Defaults to `MAX_PIXELS` (50 MP).

    Returns:
        The same scalar `tf.string`.

    Raises:
        tf.errors.InvalidArgumentError: "image too large: its header says WxH pixels (N MP),
            over the limit of M MP; ..." or "no image size in the header ..." (a JPEG without
            a frame header, an unknown WebP chunk). In a graph, when the op runs.
    """
    data = tf.convert_to_tensor(image_bytes, tf.string)
    if tf.executing_eagerly():
        size, pixels = _header_graph(data)
        if 0 <= int(pixels) <= max_pixels:
            return data
        message = _message(size, pixels, max_pixels).numpy().decode()
        raise tf.errors.InvalidArgumentError(None, None, message)
    size, pixels = _header_ops(data)
    ok = tf.logical_and(pixels >= 0, pixels <= max_pixels)
    check = tf.debugging.Assert(ok, [_message(size, pixels, max_pixels)])
    with tf.control_dependencies([check]):
        return tf.identity(data)


def _message(size: tf.Tensor, pixels: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """The one-line refusal of `check_pixel_limit` (a scalar `tf.string`)."""
    limit_mp = f"{max_pixels / 1e6:.3g} MP"
    mp = tf.strings.as_string(tf.cast(pixels, tf.float64) / 1e6, precision=1)
    return tf.where(
        pixels < 0,
        f"{NO_SIZE} (no frame header before the image data): corrupt or truncated file; "
        "re-save it as JPEG or PNG.",
        tf.strings.join(
            [
                f"{TOO_LARGE}: its header says ",
                tf.strings.as_string(size[1]),
                "x",
                tf.strings.as_string(size[0]),
                " pixels (",
                tf.where(pixels > size[0] * size[1], "frames totalling ", ""),
                mp,
                f" MP), over the limit of {limit_mp}; refused before decoding. "
                f"Send a photo of at most {limit_mp} (resize it).",
            ]
        ),
    )
