"""EXIF orientation: all 8 values, JPEG (APP1) and PNG (eXIf), both TIFF byte orders, files
written by Pillow and compared with the upright file; malformed tags never break decoding."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from eyegazer_keras import fundus
from tests.test_case import exif_tagged_photo


def _upright() -> np.ndarray:
    """Non-square, no symmetry (any wrong flip or rotation changes it), smooth enough for JPEG."""
    yy, xx = np.mgrid[0:36, 0:52]
    image = np.stack([5 * xx, 6 * yy, 120 + 2 * (xx - yy)], axis=-1)
    image[:6, :10] = (255, 0, 0)  # a red top-left corner, to read failures by eye
    return np.clip(image, 0, 255).astype(np.uint8)


def _tiff(orientation: int, order: str) -> bytes:
    """A minimal EXIF block (`Exif\\0\\0` + TIFF header + IFD0 with tag 0x0112) by hand."""
    e = "<" if order == "II" else ">"
    entry = struct.pack(e + "HHI", 0x0112, 3, 1) + struct.pack(e + "HH", orientation, 0)
    ifd = struct.pack(e + "H", 2) + struct.pack(e + "HHII", 0x010F, 2, 1, 0) + entry
    ifd += struct.pack(e + "I", 0)
    return b"Exif\x00\x00" + order.encode() + struct.pack(e + "HI", 42, 8) + ifd


@pytest.mark.parametrize("orientation", range(1, 9))
def test_png_every_orientation_gives_the_upright_pixels(orientation):
    upright = _upright()
    data = exif_tagged_photo(upright, orientation, "PNG")
    assert b"eXIf" in data
    assert int(fundus.exif_orientation(data)) == orientation
    np.testing.assert_array_equal(fundus.decode_image(data).numpy(), upright)
    # Pillow (every viewer) agrees that this file shows the upright picture.
    np.testing.assert_array_equal(
        np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data)))), upright
    )


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_every_orientation_matches_pillows_exif_transpose(orientation):
    upright = _upright()
    data = exif_tagged_photo(upright, orientation, "JPEG")
    assert int(fundus.exif_orientation(data)) == orientation
    ours = fundus.decode_image(data).numpy()
    pil = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert ours.shape == upright.shape
    # Same file, two JPEG decoders: a few levels apart; a wrong orientation is ~100 apart.
    assert np.abs(ours.astype(int) - pil).mean() < 2.0
    assert np.abs(ours.astype(int) - upright).mean() < 8.0
    raw = tf.io.decode_jpeg(data).numpy()
    if orientation != 1:
        assert np.abs(raw.astype(int)[:36, :36] - upright[:36, :36]).mean() > 30


@pytest.mark.parametrize("order", ["II", "MM"])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_both_byte_orders(order, fmt, orientation):
    upright = _upright()
    data = exif_tagged_photo(upright, orientation, fmt, exif=_tiff(orientation, order))
    assert int(fundus.exif_orientation(data)) == orientation
    assert fundus.decode_image(data).shape == upright.shape
    pil = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert pil.size == (upright.shape[1], upright.shape[0])


def _png_chunks(data: bytes) -> list[bytes]:
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append(data[pos : pos + 12 + length])
        pos += 12 + length
    return chunks


def test_png_exif_after_idat_and_jpeg_with_segments_before_app1():
    upright = _upright()
    png = exif_tagged_photo(upright, 6, "PNG")
    chunks = _png_chunks(png)
    exif = [c for c in chunks if c[4:8] == b"eXIf"]
    rest = [c for c in chunks if c[4:8] != b"eXIf"]
    moved = png[:8] + b"".join(rest[:-1] + exif + rest[-1:])  # eXIf just before IEND
    assert moved.index(b"eXIf") > moved.index(b"IDAT")
    np.testing.assert_array_equal(fundus.decode_image(moved).numpy(), upright)

    jpeg = exif_tagged_photo(upright, 8, "JPEG")
    comment = b"\xff\xfe" + struct.pack(">H", 2 + 11) + b"camera: X1\x00"
    app0 = b"\xff\xe0" + struct.pack(">H", 2 + 5) + b"JFIF\x00"[:5]
    padded = jpeg[:2] + app0 + comment + jpeg[2:]
    assert int(fundus.exif_orientation(padded)) == 8


def test_jpeg_walk_stops_at_the_start_of_scan():
    """Entropy-coded bytes after SOS are not segments: an `Exif` look-alike there is not read."""
    upright = _upright()
    jpeg = exif_tagged_photo(upright, 1, "JPEG", exif=b"")  # no APP1 at all
    sos = jpeg.index(b"\xff\xda")
    (length,) = struct.unpack(">H", jpeg[sos + 2 : sos + 4])
    fake = _tiff(6, "MM")
    look_alike = b"\xff\xe1" + struct.pack(">H", 2 + len(fake)) + fake
    # Right where a walk that did not stop at SOS would read its next "segment".
    data = jpeg[: sos + 2 + length] + look_alike + jpeg[sos + 2 + length :]
    assert int(fundus.exif_orientation(data)) == 1
    assert int(fundus.exif_orientation(jpeg[:sos] + look_alike + jpeg[sos:])) == 6  # before SOS


@pytest.mark.parametrize(
    "exif",
    [
        _tiff(9, "II"),  # out of range
        _tiff(0, "MM"),
        b"Exif\x00\x00II*\x00\xff\xff\xff\x7f",  # IFD offset far past the end
        b"Exif\x00\x00XX*\x00\x08\x00\x00\x00",  # unknown byte order
        b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff",  # IFD claims 65535 entries
        b"Exif\x00\x00",
    ],
    ids=["orientation-9", "orientation-0", "offset-past-end", "bad-order", "huge-count", "empty"],
)
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_malformed_exif_reads_as_upright(exif, fmt):
    upright = _upright()
    buf = io.BytesIO()
    Image.fromarray(upright).save(buf, format=fmt, exif=exif)
    data = buf.getvalue()
    assert int(fundus.exif_orientation(data)) == 1
    assert fundus.decode_image(data).shape == upright.shape


def test_no_exif_and_other_formats():
    upright = _upright()
    for fmt in ("PNG", "JPEG", "BMP", "GIF"):
        buf = io.BytesIO()
        Image.fromarray(upright).save(buf, format=fmt)
        assert int(fundus.exif_orientation(buf.getvalue())) == 1
        assert fundus.decode_image(buf.getvalue()).shape == upright.shape
    assert int(fundus.exif_orientation(b"")) == 1
    assert int(fundus.exif_orientation(b"\xff\xd8")) == 1


def test_orientation_inside_tf_function_and_dataset():
    upright = _upright()
    blobs = [exif_tagged_photo(upright, o, "PNG") for o in range(1, 9)]
    fn = tf.function(fundus.decode_image, input_signature=[tf.TensorSpec([], tf.string)])
    ds = tf.data.Dataset.from_tensor_slices(blobs).map(fundus.decode_image)
    for blob, from_ds in zip(blobs, ds, strict=True):
        np.testing.assert_array_equal(fn(blob).numpy(), upright)
        np.testing.assert_array_equal(from_ds.numpy(), upright)
