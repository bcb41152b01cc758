"""The quality gate: good photos pass (synthetic generator output, skimage's real retina),
realistic bad photos are refused with the right reason, degenerate images are too_small."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import tensorflow as tf
from eyegazer_datasets.synthetic_fundus import generator
from scipy import ndimage

from eyegazer_keras import fundus

_GATE = tf.function(
    fundus.assess_quality, input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)]
)


def _reason(image) -> str:
    out = _GATE(tf.constant(image))
    reason = out["ungradable_reason"].numpy().decode()
    assert bool(out["gradable"].numpy()) == (reason == "")
    return reason


@pytest.fixture(scope="module")
def retina():
    return skimage.data.retina()  # a real fundus photograph, 1411x1411


def test_real_retina_is_gradable(retina):
    assert _reason(retina) == ""
    m = {k: float(v) for k, v in fundus.quality_measures(retina).items()}
    assert m["sharpness"] > 2 * fundus.MIN_SHARPNESS
    assert m["mean_luma"] > 3 * fundus.DARK_MEAN_LUMA


def test_synthetic_generator_photos_are_gradable():
    """A sample of every framing and grade; the full default set is checked in the report."""
    reasons = []
    for index in range(48):
        rng = np.random.default_rng([2019, 7, index])
        grade = index % 5
        photo, framing = generator.render(int(rng.integers(2**31)), grade, 160 + 8 * (index % 20))
        reasons.append((framing, grade, _reason(photo)))
    assert [r for r in reasons if r[2]] == []
    assert {r[0] for r in reasons} == set(generator.FRAMINGS)


def test_black_photo_is_too_dark():
    assert _reason(np.zeros((480, 640, 3), np.uint8)) == "too_dark"
    # Every pixel <= 10: the lens cap / failed flash of the issue.
    cap = np.random.default_rng(0).integers(0, 11, (480, 640, 3), dtype=np.uint8)
    assert _reason(cap) == "too_dark"


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda r: (r * 0.12).astype(np.uint8), "too_dark"),  # failed flash
        (lambda r: np.clip(r * 3.0, 0, 255).astype(np.uint8), "overexposed"),
        (lambda r: np.clip(r + 130.0, 0, 255).astype(np.uint8), "overexposed"),  # flare haze
        (
            lambda r: np.clip(
                ndimage.gaussian_filter(r.astype(np.float32), (16, 16, 0)), 0, 255
            ).astype(np.uint8),
            "too_blurry",
        ),  # defocus: sigma ~1.1 % of the disc diameter
        (lambda r: r[::50, ::50], "too_small"),  # 29x29 px thumbnail
    ],
    ids=["dark", "overexposed-gain", "overexposed-haze", "blurred", "tiny"],
)
def test_bad_versions_of_the_real_retina(retina, make, reason):
    assert _reason(make(retina)) == reason


def test_no_fundus():
    page = np.zeros((480, 640, 3), np.uint8)
    page[200:230, 100:500] = 255  # only a label on a black frame
    assert _reason(page) == "no_fundus"


@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (300, 1), (31, 400), (20, 20)])
def test_degenerate_sizes_are_too_small(shape):
    for value in (0, 128, 255):
        assert _reason(np.full((*shape, 3), value, np.uint8)) == "too_small"


def test_minimum_size_is_exactly_the_constant():
    photo, _ = generator.render(3, 2, 64)
    side = fundus.MIN_IMAGE_SIZE
    ok = tf.image.resize(photo, [side, side], antialias=True).numpy().astype(np.uint8)
    small = tf.image.resize(photo, [side - 1, side + 20], antialias=True).numpy().astype(np.uint8)
    assert _reason(small) == "too_small"
    assert _reason(ok) != "too_small"


def test_reasons_are_the_documented_ones():
    assert set(fundus.REASONS) == {
        "too_small",
        "too_dark",
        "no_fundus",
        "overexposed",
        "too_blurry",
    }
    for reason in fundus.REASONS:
        assert f"`{reason}`" in fundus.assess_quality.__doc__
