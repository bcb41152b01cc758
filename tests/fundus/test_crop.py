"""The fundus crop finds the disc: a generated family of border marks, reflections, cut discs
and borderless photos, each asserting the crop box against the disc that was drawn."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageDraw

from eyegazer_keras import fundus

TOLERANCE = 3  # pixels, on every box coordinate


def _disc(h=600, w=800, cy=None, cx=None, r=280, seed=0):
    """A textured orange disc (vignette, noise) on a noisy dark border; returns (image, circle)."""
    rng = np.random.default_rng(seed)
    cy = h / 2 if cy is None else cy
    cx = w / 2 if cx is None else cx
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    shade = np.clip(1 - 0.45 * (d / r) ** 2, 0, 1)
    img = np.zeros((h, w, 3), np.float32)
    img[..., 0], img[..., 1], img[..., 2] = 200 * shade + 20, 90 * shade + 5, 40 * shade
    img += rng.normal(0, 4, img.shape)
    outside = d > r
    img[outside] = rng.uniform(0, 8, (int(outside.sum()), 3))
    return np.clip(img, 0, 255).astype(np.uint8), (cy, cx, r)


def _strip(img, corner, hh=20, ww=290, value=230):
    """The issue's example: a light 20x290 strip in a corner of the border."""
    img = img.copy()
    h, w = img.shape[:2]
    top = 4 if corner[0] == "t" else h - 4 - hh
    left = 4 if corner[1] == "l" else w - 4 - ww
    img[top : top + hh, left : left + ww] = value
    return img


def _timestamp(img, corner):
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    h, w = img.shape[:2]
    x = 6 if corner[1] == "l" else w - 230
    y = 6 if corner[0] == "t" else h - 30
    draw.text((x, y), "2019-07-14 10:32:07 OD", fill=(255, 255, 255), font_size=18)
    return np.asarray(pil)


def _spot(img, y, x, r=18, value=(250, 250, 250)):
    img = img.copy()
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    img[(yy - y) ** 2 + (xx - x) ** 2 < r * r] = value
    return img


def _cases():
    base, full = _disc()
    cut, cut_c = _disc(r=360)  # cut at top and bottom, as in APTOS
    cut_off, cut_off_c = _disc(cy=330, r=350)  # cut unevenly
    off, off_c = _disc(cy=290, cx=420, r=250, seed=1)
    wide, wide_c = _disc(h=480, w=640, cy=244, cx=311, r=216, seed=2)  # tests' 4:3 photo
    small, small_c = _disc(h=150, w=200, r=70, seed=3)
    big, big_c = _disc(h=1536, w=2048, cx=1010, r=740, seed=4)  # measured on a strided copy
    yield "clean", base, full
    for corner in ("tl", "tr", "bl", "br"):
        yield f"strip-{corner}", _strip(base, corner), full
        yield f"timestamp-{corner}", _timestamp(base, corner), full
        yield f"strip-offcentre-{corner}", _strip(off, corner, ww=200), off_c
        yield f"timestamp-cut-{corner}", _timestamp(cut, corner), cut_c
    yield "tall-label-left", _strip(base, "tl", hh=400, ww=40), full
    yield "reflection-left-border", _spot(base, 300, 60), full
    yield "reflection-corner", _spot(base, 40, 700), full
    yield "reflection-touching-rim-outside", _spot(base, 300, 400 + 280 + 12, r=14), full
    glare = base.copy()
    yy, xx = np.mgrid[0:600, 0:800]
    glare[(np.abs(np.hypot(yy - 300, xx - 400) - 268) < 10) & (yy < 200)] = 250
    yield "glare-crescent-inside-rim", glare, full
    yield "cut-top-bottom", cut, cut_c
    yield "cut-uneven", cut_off, cut_off_c
    yield "cut-with-strip", _strip(cut, "tl", ww=150), cut_c
    yield "photo-640x480", wide, wide_c
    yield "photo-200x150", small, small_c
    yield "photo-2048x1536", big, big_c
    yield "two-marks-and-reflection", _spot(_strip(_timestamp(base, "br"), "tl"), 560, 80), full


CASES = list(_cases())


def _box(circle):
    cy, cx, r = circle
    return [round(cy - r), round(cx - r), round(2 * r), round(2 * r)]


@pytest.mark.parametrize("name,image,circle", CASES, ids=[c[0] for c in CASES])
def test_crop_box_is_the_drawn_disc(name, image, circle):
    box = fundus.fundus_bbox(image).numpy()
    error = np.abs(box - np.array(_box(circle))).max()
    assert error <= TOLERANCE, f"{name}: box {box.tolist()} vs drawn {_box(circle)}"
    fitted = fundus.fundus_circle(image).numpy()
    assert fitted[3] == 1.0


def test_issue_example_strip_does_not_move_the_crop_or_the_input():
    clean, _ = _disc()
    marked = _strip(clean, "tl")
    assert np.abs(fundus.fundus_bbox(marked).numpy() - fundus.fundus_bbox(clean).numpy()).max() <= 1
    a = fundus.preprocess_fundus(clean, 128).numpy().astype(int)
    b = fundus.preprocess_fundus(marked, 128).numpy().astype(int)
    # The part of the strip inside the disc's bounding square is blanked with the border.
    assert np.abs(a - b).max() <= 2


def test_old_profile_box_was_fooled_by_the_strip():
    """Keeps the failing input: the row/column-fraction box widens by the strip's length."""
    marked = _strip(_disc()[0], "tl")
    mask = marked.max(axis=-1) > fundus.DEFAULT_THRESHOLD
    cols = np.where(mask.mean(axis=0) > fundus.DEFAULT_MIN_FRACTION)[0]
    assert cols.min() < 10  # the strip's columns count as "fundus" for a profile box
    assert fundus.fundus_bbox(marked).numpy()[1] >= 117


def test_cut_disc_stays_centred_after_crop():
    cut, (cy, cx, r) = _disc(cy=330, r=350)
    out = fundus.preprocess_fundus(cut, 100).numpy()
    # Rows of the square above/below the frame are black padding; the disc centre is central.
    lit = out.max(axis=-1) > fundus.DEFAULT_THRESHOLD
    cols = np.where(lit.any(axis=0))[0]
    assert abs((cols.min() + cols.max()) / 2 - 49.5) <= 1.5
    # 330 - 350 = -20: the top 20 of 700 rows (2.9 of 100) lie outside the frame.
    assert not lit[:2].any() and lit[4].any()


def test_borderless_photos_keep_the_whole_frame():
    for h, w in [(600, 800), (300, 300), (480, 640)]:
        img, _ = _disc(h=h, w=w, r=max(h, w))  # fundus fills the frame
        assert fundus.fundus_circle(img).numpy()[3] == 0.0
        assert fundus.fundus_bbox(img).numpy().tolist() == [0, 0, h, w]


@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (300, 1), (2, 2), (7, 40)])
def test_degenerate_images_do_not_break_the_crop(shape):
    for value in (0, 120, 255):
        img = np.full((*shape, 3), value, np.uint8)
        box = fundus.fundus_bbox(img).numpy()
        assert box[2] >= 1 and box[3] >= 1
        assert fundus.preprocess_fundus(img, 16).shape == (16, 16, 3)


def test_jpeg_file_with_timestamp_through_decode():
    clean, circle = _disc()
    buf = io.BytesIO()
    Image.fromarray(_timestamp(clean, "br")).save(buf, format="JPEG", quality=85)
    decoded = fundus.decode_image(buf.getvalue())
    error = np.abs(fundus.fundus_bbox(decoded).numpy() - np.array(_box(circle))).max()
    assert error <= TOLERANCE


def test_crop_in_tf_function_matches_eager():
    image, _ = _disc(h=150, w=200, r=70)
    fn = tf.function(fundus.fundus_bbox, input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    assert fn(image).numpy().tolist() == fundus.fundus_bbox(image).numpy().tolist()
