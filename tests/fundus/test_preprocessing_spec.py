"""PreprocessingSpec: round trip, validation, and the one stored -> model input step."""

from __future__ import annotations

import json

import numpy as np
import pytest
import skimage.data
import tensorflow as tf

from eyegazer_keras import fundus


def test_round_trip_through_json():
    for spec in (
        fundus.PreprocessingSpec(stored_size=512),
        fundus.PreprocessingSpec(stored_size=128, ben_graham=True),
        fundus.PreprocessingSpec(stored_size=224, crop="none", mean=(0.5,) * 3, std=(0.5,) * 3),
    ):
        d = json.loads(json.dumps(spec.to_dict()))
        assert fundus.PreprocessingSpec.from_dict(d) == spec
    hf = fundus.PreprocessingSpec(stored_size=224, crop="none", mean=(0.5,) * 3, std=(0.5,) * 3)
    assert hf.to_dict()["normalization"] == "mean_std"
    assert fundus.PreprocessingSpec(64).to_dict()["normalization"] == "inside_model"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"stored_size": 0}, "stored_size"),
        ({"stored_size": 64, "crop": "centre"}, "crop"),
        ({"stored_size": 64, "mean": (0.5, 0.5, 0.5)}, "both mean and std"),
        ({"stored_size": 64, "mean": (0.5, 0.5), "std": (0.5, 0.5)}, "3 per-channel"),
        ({"stored_size": 64, "mean": (0.5,) * 3, "std": (0.5, 0.0, 0.5)}, "> 0"),
    ],
)
def test_invalid_specs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fundus.PreprocessingSpec(**kwargs)


def test_from_dict_refuses_unknown_keys_and_contradictions():
    with pytest.raises(ValueError, match="unknown preprocessing keys"):
        fundus.PreprocessingSpec.from_dict({"stored_size": 64, "colour": "rgb"})
    with pytest.raises(ValueError, match="contradicts"):
        fundus.PreprocessingSpec.from_dict({"stored_size": 64, "normalization": "mean_std"})


def test_to_model_input_resizes_and_normalises():
    stored = np.random.default_rng(0).integers(0, 255, (2, 16, 16, 3), dtype=np.uint8)
    inside = fundus.to_model_input(stored, 16).numpy()
    np.testing.assert_array_equal(inside, stored.astype(np.float32))
    half = fundus.to_model_input(stored, 8).numpy()
    assert half.shape == (2, 8, 8, 3) and np.all(half == np.round(half))
    hf = fundus.PreprocessingSpec(16, crop="none", mean=(0.5,) * 3, std=(0.5,) * 3)
    np.testing.assert_allclose(
        fundus.to_model_input(stored, 16, hf).numpy(), stored / 127.5 - 1.0, atol=1e-6
    )


def test_photo_to_model_input_is_builder_plus_training_path():
    retina = skimage.data.retina()[::4, ::4]
    spec = fundus.PreprocessingSpec(stored_size=96, ben_graham=True)
    stored = fundus.preprocess_fundus(retina, 96, use_ben_graham=True)
    expected = fundus.to_model_input(stored, 48).numpy()
    np.testing.assert_array_equal(fundus.photo_to_model_input(retina, 48, spec).numpy(), expected)
    np.testing.assert_array_equal(
        fundus.serving_transform(tf.io.encode_png(retina), 96, 48, True).numpy(), expected
    )


def test_crop_none_is_a_plain_resize_of_the_whole_photo():
    photo = np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    spec = fundus.PreprocessingSpec(stored_size=32, crop="none")
    out = fundus.photo_to_model_input(photo, 32, spec).numpy()
    plain = tf.image.resize(photo.astype(np.float32), [32, 32], antialias=True).numpy()
    np.testing.assert_allclose(out, np.clip(np.round(plain), 0, 255), atol=0)


def test_describe_names_the_steps():
    text = fundus.PreprocessingSpec(stored_size=512, ben_graham=True).describe(224)
    assert "512" in text and "224" in text and "Ben Graham" in text and "EXIF" in text
