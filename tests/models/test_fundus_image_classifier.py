"""FundusImageClassifier (models/fundus_image_classifier.py), its preprocessor and converter:
keras-hub's layer and serialization checks, presets, the spec carried along, and the README's
Keras-user script run verbatim."""

import os
import re
import subprocess
import sys

import keras
import keras_hub
import numpy as np
import pytest

from eyegazer_keras import fundus
from eyegazer_keras.models import vit_lora
from eyegazer_keras.models.fundus_image_classifier import FundusImageClassifier
from eyegazer_keras.models.fundus_image_classifier_preprocessor import (
    FundusImageClassifierPreprocessor,
)
from eyegazer_keras.models.fundus_image_converter import FundusImageConverter
from tests.test_case import TINY_IMAGE_SIZE, TestCase, random_images, tiny_vit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = fundus.PreprocessingSpec(stored_size=64, ben_graham=True)


def _model(**kwargs) -> FundusImageClassifier:
    kwargs.setdefault("lora_rank", 2)
    model = vit_lora.build_vit_classifier(
        None,
        backbone_config=tiny_vit(),
        num_classes=5,
        image_size=TINY_IMAGE_SIZE,
        spec=SPEC,
        **kwargs,
    )
    rng = np.random.default_rng(1)
    for v in model.trainable_weights:  # B starts at zero: make LoRA change the output
        if v.path.endswith("lora_kernel_b"):
            v.assign(rng.normal(0, 0.5, v.shape).astype("float32"))
    return model


def _stored(n=3, size=64, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype("uint8")


class FundusImageClassifierTest(TestCase):
    def test_converter_and_preprocessor_serialize(self):
        converter = FundusImageConverter(image_size=TINY_IMAGE_SIZE, spec=SPEC)
        self.run_serialization_test(converter)
        self.run_serialization_test(FundusImageClassifierPreprocessor(converter))
        restored = FundusImageConverter.from_config(converter.get_config())
        self.assertEqual(restored.spec, SPEC)
        self.assertEqual(restored.image_size, (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE))

    def test_converter_is_the_one_stored_to_model_step(self):
        converter = FundusImageConverter(image_size=TINY_IMAGE_SIZE, spec=SPEC)
        stored = _stored()
        self.assertAllClose(
            converter(stored), fundus.to_model_input(stored, TINY_IMAGE_SIZE, SPEC), atol=0
        )
        hf = fundus.PreprocessingSpec(stored_size=64, crop="none", mean=(0.5,) * 3, std=(0.5,) * 3)
        out = keras.ops.convert_to_numpy(FundusImageConverter(32, spec=hf)(stored))
        self.assertTrue(out.min() >= -1.0 and out.max() <= 1.0)
        with self.assertRaisesRegex(ValueError, "square"):
            FundusImageConverter(image_size=(32, 48))
        with self.assertRaisesRegex(ValueError, "needs a spec"):
            FundusImageConverter(32).photo_to_model_input(stored[0])

    def test_predict_takes_stored_images_and_resizes_as_training(self):
        model = _model()
        self.assertEqual(model.spec, SPEC)
        stored = _stored()
        expected = model(fundus.to_model_input(stored, TINY_IMAGE_SIZE, SPEC))
        self.assertAllClose(model.predict(stored, verbose=0), expected, atol=1e-6)

    def test_converter_size_must_match_the_backbone(self):
        backbone = keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), **tiny_vit())
        preprocessor = FundusImageClassifierPreprocessor(FundusImageConverter(64))
        with self.assertRaisesRegex(ValueError, "image_size=32"):
            FundusImageClassifier(backbone, 5, preprocessor=preprocessor)

    def test_save_to_preset_and_from_preset_keep_lora_and_spec(self):
        model = _model()
        preset = os.path.join(self.get_temp_dir(), "preset")
        model.save_to_preset(preset)
        loaded = FundusImageClassifier.from_preset(preset)
        self.assertIsInstance(loaded, FundusImageClassifier)
        x = random_images()
        self.assertAllClose(loaded(x), model(x), atol=1e-6)
        self.assertEqual(
            [v.path for v in loaded.trainable_weights], [v.path for v in model.trainable_weights]
        )
        for a, b in zip(model.trainable_weights, loaded.trainable_weights, strict=True):
            self.assertAllClose(a, b, atol=0)
        self.assertEqual(loaded.spec, SPEC)
        self.assertEqual(vit_lora.build_info(loaded), vit_lora.build_info(model))

    def test_from_preset_on_a_backbone_source_builds_a_new_classifier(self):
        backbone = keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), **tiny_vit())
        preset = os.path.join(self.get_temp_dir(), "vit")
        backbone.save_to_preset(preset)
        with self.assertRaisesRegex(ValueError, "num_classes, image_size"):
            FundusImageClassifier.from_preset(preset)
        model = FundusImageClassifier.from_preset(
            preset, num_classes=2, image_size=32, lora_rank=2, spec=SPEC
        )
        self.assertEqual(vit_lora.build_info(model)["backbone"]["type"], "keras_preset")
        self.assertEqual(model.spec, SPEC)
        # keras-hub's own ImageClassifier.from_preset still finds keras-hub's ViT classifier.
        keras_hub.layers.ViTImageConverter(image_size=(32, 32)).save_to_preset(preset)
        plain = keras_hub.models.ImageClassifier.from_preset(preset, num_classes=5)
        self.assertIsInstance(plain, keras_hub.models.ViTImageClassifier)


def _readme_script() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    section = readme.split("## Use it from Keras", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_keras_user_script_runs_verbatim(tiny_data_dir, tmp_path):
    """The README's script, as written, on the tiny prepared set (no download, no network)."""
    script = _readme_script()
    assert "model.fit(" in script and "model.predict(" in script and "model.save(" in script
    assert len(script.strip().splitlines()) <= 20
    (tmp_path / "script.py").write_text(
        script + "\nprint('probs', probs.shape, 'trainable', len(model.trainable_weights))\n"
    )
    env = dict(
        os.environ,
        EYEGAZER_DATA_DIR=tiny_data_dir,
        PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p),
    )
    result = subprocess.run(
        [sys.executable, "script.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "probs (16, 5)" in result.stdout  # the tiny set's 16 test images, 5 grades
    reloaded = keras.models.load_model(tmp_path / "fundus_vit.keras")
    assert isinstance(reloaded, FundusImageClassifier)
    assert f"trainable {len(reloaded.trainable_weights)}" in result.stdout
    assert any("lora_kernel_a" in v.path for v in reloaded.trainable_weights)
    assert reloaded.spec == fundus.PreprocessingSpec(stored_size=64)


@pytest.mark.parametrize("name", ["FundusImageClassifier", "FundusImageConverter"])
def test_registered_under_the_package_name(name):
    assert keras.saving.get_registered_object(f"eyegazer_keras>{name}") is not None
