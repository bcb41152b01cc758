"""Generated image bombs: small files whose header claims a huge image (issue 23).

Each is a real small image re-labelled in its header (the decoder would allocate what the
header says), or, for PNG with `full=True`, a complete valid deflate stream for every row.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

SIDE = 20000  # 20000 x 20000 = 400 MP


def _small(fmt: str, **kw) -> bytes:
    yy, xx = np.mgrid[0:16, 0:16]
    image = np.stack([yy * 16, xx * 16, np.full_like(yy, 90)], -1).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(image).save(out, fmt, **kw)
    return out.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width: int = SIDE, height: int = SIDE, full: bool = False) -> bytes:
    """An 8-bit RGB PNG of `width` x `height` black pixels.

    `full=False`: only the first rows are in the IDAT stream (a few hundred bytes).
    `full=True`: every row, deflated (about 1.2 MB for 20000 x 20000; a few seconds to make).
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    deflate = zlib.compressobj(9)
    row = bytes(1 + 3 * width)
    idat = b"".join(deflate.compress(row) for _ in range(height if full else 4))
    idat += deflate.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def jpeg_bomb(width: int = SIDE, height: int = SIDE, garbage: bool = False) -> bytes:
    """A 16 x 16 baseline JPEG whose SOF0 says `width` x `height`.

    `garbage=True` puts stray bytes and fill bytes before the SOF (libjpeg skips them).
    """
    data = bytearray(_small("JPEG", quality=90))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    if garbage:
        data[sof:sof] = b"\x00\x13\x37\xff\xff"
    return bytes(data)


def gif_bomb(width: int = SIDE, height: int = SIDE) -> bytes:
    """A 16 x 16 GIF whose logical screen and frame descriptor say `width` x `height`."""
    data = bytearray(_small("GIF"))
    struct.pack_into("<HH", data, 6, width, height)
    frame = data.index(b",", 13)
    struct.pack_into("<HH", data, frame + 5, width, height)
    return bytes(data)


def gif_frames_bomb(frames: int = 300, side: int = 1000) -> bytes:
    """An animated GIF of `frames` frames of `side` x `side` (each frame counts)."""
    data = bytearray(_small("GIF"))
    struct.pack_into("<HH", data, 6, side, side)
    frame = data.index(b",", 13)
    struct.pack_into("<HH", data, frame + 5, side, side)
    end = data.rindex(b";")
    one = bytes(data[frame:end])
    return bytes(data[:frame]) + one * frames + b";"


def webp_bomb(kind: str = "VP8X") -> bytes:
    """A 16 x 16 WebP whose header says 20000 x 20000 (`VP8X`) or 16383 x 16383 (`VP8 `,
    `VP8L`: their largest)."""
    if kind == "VP8L":
        data = bytearray(_small("WEBP", lossless=True))
        assert data[12:16] == b"VP8L"
        bits = struct.unpack_from("<I", data, 21)[0] & ~((1 << 28) - 1)
        struct.pack_into("<I", data, 21, bits | 16382 | (16382 << 14))
        return bytes(data)
    data = bytearray(_small("WEBP", quality=80))
    assert data[12:16] == b"VP8 "
    if kind == "VP8 ":
        struct.pack_into("<HH", data, 26, 16383, 16383)
        return bytes(data)
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes(4) + (SIDE - 1).to_bytes(3, "little") * 2
    body = b"WEBP" + vp8x + bytes(data[12:])
    return b"RIFF" + struct.pack("<I", len(body)) + body


def bmp_bomb(width: int = SIDE, height: int = SIDE) -> bytes:
    """A 16 x 16 BMP whose BITMAPINFOHEADER says `width` x `height` (top-down)."""
    data = bytearray(_small("BMP"))
    struct.pack_into("<ii", data, 18, width, -height)
    return bytes(data)


BOMBS = {
    "png": png_bomb,
    "jpeg": jpeg_bomb,
    "gif": gif_bomb,
    "webp": webp_bomb,
}
