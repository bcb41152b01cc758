"""fundus.py: eager, tf.data and tf.function paths agree; real retina photo; decoding to RGB."""

import io

import numpy as np
import pytest
import skimage.data
import tensorflow as tf
from PIL import Image

from eyegazer_keras import fundus


def _photo(width=200, height=150, radius=70, rect=False):
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.zeros((height, width, 3), np.uint8)
    img[...] = (200, 90, 40)
    if not rect:
        img[(yy - height / 2) ** 2 + (xx - width / 2) ** 2 > radius**2] = 0
    return img


def test_crop_finds_the_disc_and_pads_square():
    img = _photo()
    top, left, h, w = fundus.fundus_bbox(img).numpy()
    # The disc spans rows 5..145 and columns 30..170; rows/columns holding under 1% fundus
    # pixels (the disc's extreme tips) are border noise and may be dropped.
    assert 137 <= h <= 141 and 137 <= w <= 141
    assert 4 <= top <= 7 and 29 <= left <= 32
    out = fundus.preprocess_fundus(img, 64).numpy()
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert out[32, 32].tolist() == [200, 90, 40]
    assert out[0, 0].tolist() == [0, 0, 0]


def test_borderless_rectangle_is_padded_not_cropped():
    img = _photo(rect=True)
    assert fundus.fundus_bbox(img).numpy().tolist() == [0, 0, 150, 200]
    out = fundus.preprocess_fundus(img, 40).numpy()
    assert out[0, 20].tolist() == [0, 0, 0]  # black band from square padding
    assert out[20, 20].tolist() == [200, 90, 40]


def test_all_black_image_keeps_whole_frame():
    img = np.zeros((30, 40, 3), np.uint8)
    assert fundus.fundus_bbox(img).numpy().tolist() == [0, 0, 30, 40]
    assert fundus.preprocess_fundus(img, 16).shape == (16, 16, 3)


@pytest.mark.parametrize("use_ben_graham", [False, True])
def test_eager_tf_data_and_tf_function_agree_on_real_retina(use_ben_graham):
    retina = skimage.data.retina()  # a real fundus photograph, 1411x1411
    png = tf.io.encode_png(retina)
    eager = fundus.preprocess_fundus(fundus.decode_image(png), 128, use_ben_graham).numpy()
    ds = tf.data.Dataset.from_tensors(png).map(
        lambda b: fundus.preprocess_fundus(fundus.decode_image(b), 128, use_ben_graham)
    )
    from_ds = next(iter(ds)).numpy()
    fn = tf.function(lambda b: fundus.serving_transform(b, 128, 128, use_ben_graham))
    from_fn = fn(png).numpy()
    np.testing.assert_array_equal(eager, from_ds)
    np.testing.assert_array_equal(eager.astype(np.float32), from_fn)
    # The real photo's fundus fills the crop: the centre is bright, corners black.
    assert eager[64, 64].max() > 40
    if use_ben_graham:  # Graham's 90 % clip: outside it, the neutral grey 128
        assert eager[2, 2].tolist() == [128, 128, 128]
    else:
        assert eager[2, 2].max() <= 12  # the photo's own dark border (JPEG noise), not fundus


def test_ben_graham_centres_colours_on_grey():
    retina = skimage.data.retina()
    out = fundus.preprocess_fundus(retina, 96, use_ben_graham=True).numpy()
    inside = out[fundus.circle_mask(96, 0.8).numpy()]
    assert abs(float(inside.mean()) - 128) < 20


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "I;16", "CMYK"])
def test_decode_to_rgb(mode):
    rgb = Image.fromarray(_photo())
    if mode == "I;16":
        img = Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257)
        fmt = "PNG"
    elif mode == "CMYK":
        img, fmt = rgb.convert("CMYK"), "JPEG"
    else:
        img, fmt = rgb.convert(mode), "PNG"
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    if mode == "CMYK":
        try:
            decoded = fundus.decode_image(buf.getvalue())
        except tf.errors.InvalidArgumentError:
            pytest.skip("TF's JPEG decoder refuses CMYK; the builder falls back to Pillow")
    else:
        decoded = fundus.decode_image(buf.getvalue())
    assert decoded.shape[-1] == 3 and decoded.dtype == tf.uint8
    assert decoded.numpy()[75, 100].max() > 30


def test_garbage_bytes_raise_invalid_argument():
    with pytest.raises(tf.errors.InvalidArgumentError):
        fundus.decode_image(b"definitely not an image")


def test_to_model_input_is_identity_at_same_size():
    img = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(fundus.to_model_input(img, 8).numpy(), img.astype(np.float32))
    assert fundus.to_model_input(img, 4).shape == (4, 4, 3)
