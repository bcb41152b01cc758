"""`fundus.header`: the size a header claims, and the one pixel limit, before decoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from eyegazer_keras import fundus
from eyegazer_keras.fundus import header
from tests import bombs


def _encode(fmt: str, height: int = 37, width: int = 53, **kw) -> bytes:
    image = np.random.default_rng(0).integers(0, 255, (height, width, 3), np.uint8)
    out = io.BytesIO()
    Image.fromarray(image).save(out, fmt, **kw)
    return out.getvalue()


FORMATS = {
    "png": ("PNG", {}),
    "jpeg": ("JPEG", {"quality": 90}),
    "jpeg_progressive": ("JPEG", {"progressive": True}),
    "jpeg_exif": ("JPEG", {"exif": Image.Exif()}),
    "gif": ("GIF", {}),
    "bmp": ("BMP", {}),
    "webp_lossy": ("WEBP", {"quality": 80}),
    "webp_lossless": ("WEBP", {"lossless": True}),
    "webp_extended": (
        "WEBP",
        {"quality": 80, "exif": b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00"},
    ),
}


@pytest.mark.parametrize("case", sorted(FORMATS))
def test_header_size_matches_the_decoded_size(case):
    fmt, kw = FORMATS[case]
    data = _encode(fmt, **kw)
    if case == "webp_extended":
        assert data[12:16] == b"VP8X"
    assert header.image_header_size(data).numpy().tolist() == [37, 53]
    assert fundus.decode_image(data).shape == (37, 53, 3)
    assert header.check_pixel_limit(data).numpy() == data


BOMBS = {
    "png": (bombs.png_bomb, "20000x20000 pixels (400.0 MP)"),
    "jpeg": (bombs.jpeg_bomb, "20000x20000 pixels (400.0 MP)"),
    "jpeg, stray bytes before the SOF": (
        lambda: bombs.jpeg_bomb(garbage=True),
        "20000x20000 pixels (400.0 MP)",
    ),
    "gif": (bombs.gif_bomb, "20000x20000 pixels (400.0 MP)"),
    "gif, 300 frames of 1 MP": (
        bombs.gif_frames_bomb,
        "1000x1000 pixels (frames totalling 300.0 MP)",
    ),
    "bmp": (bombs.bmp_bomb, "20000x20000 pixels (400.0 MP)"),
    "webp VP8X": (bombs.webp_bomb, "20000x20000 pixels (400.0 MP)"),
    "webp VP8": (lambda: bombs.webp_bomb("VP8 "), "16383x16383 pixels (268.4 MP)"),
    "webp VP8L": (lambda: bombs.webp_bomb("VP8L"), "16383x16383 pixels (268.4 MP)"),
}


@pytest.mark.parametrize("case", sorted(BOMBS))
def test_bombs_are_refused_before_decoding(case):
    make, claim = BOMBS[case]
    data = make()
    assert len(data) < 2_000_000
    expected = (
        f"image too large: its header says {claim}, over the limit of 50 MP; refused before "
        "decoding. Send a photo of at most 50 MP (resize it)."
    )
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        fundus.decode_image(data)
    assert info.value.message == expected


def test_the_limit_holds_inside_a_graph_and_map_fn():
    """What an export runs: the assert comes before the decoder, and its text survives."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def sizes(images):
        return tf.map_fn(
            lambda b: tf.shape(fundus.decode_image(b)),
            images,
            fn_output_signature=tf.TensorSpec([3], tf.int32),
        )

    good = _encode("PNG", 20, 30)
    assert sizes(tf.constant([good])).numpy().tolist() == [[20, 30, 3]]
    with pytest.raises(tf.errors.InvalidArgumentError, match="image too large: its header says"):
        sizes(tf.constant([good, bombs.png_bomb(30000, 30000)]))


def test_jpeg_without_a_frame_header_is_refused_and_unknown_formats_pass_to_the_decoder():
    data = bytearray(_encode("JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 1] = 0xFE  # SOF0 -> COM: no frame header before the scan
    assert header.image_header_size(bytes(data)).numpy().tolist() == [-1, -1]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"^no image size in the header"):
        header.check_pixel_limit(bytes(data))
    notes = b"patient notes, not an image"
    assert header.image_header_size(notes).numpy().tolist() == [0, 0]
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
        fundus.decode_image(notes)


def test_a_12_megapixel_photo_passes_and_the_limit_is_a_parameter():
    jpeg = _encode("JPEG", 3000, 4000)
    assert header.image_header_size(jpeg).numpy().tolist() == [3000, 4000]
    assert header.check_pixel_limit(jpeg).numpy() == jpeg
    with pytest.raises(tf.errors.InvalidArgumentError, match="over the limit of 10 MP"):
        header.check_pixel_limit(jpeg, max_pixels=10_000_000)


def test_one_limit_for_builders_and_serving():
    from eyegazer_datasets.common import images

    from eyegazer_keras.fundus import formats

    assert images.DEFAULT_MAX_MEGAPIXELS * 1e6 == fundus.MAX_PIXELS == header.MAX_PIXELS
    assert formats.DEFAULT_MAX_PIXELS == header.MAX_PIXELS  # TIFF / DICOM (TF-free module)


def test_the_cli_help_shows_the_modules_limits():
    """`eyegazer serve/app --help` show the limits without importing TF, kserve or gradio."""
    from eyegazer_keras.cli.commands import exported
    from eyegazer_keras.serving import app, serve

    assert exported.MAX_MEGAPIXELS * 1_000_000 == fundus.MAX_PIXELS
    assert exported.SERVE_MAX_BODY_MB * 1e6 == serve.DEFAULT_MAX_BODY_BYTES
    assert exported.SERVE_MAX_INSTANCES == serve.DEFAULT_MAX_INSTANCES
    assert exported.APP_MAX_UPLOAD_MB * 1e6 == app.DEFAULT_MAX_UPLOAD_BYTES
