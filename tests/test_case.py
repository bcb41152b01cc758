"""The shared test base: one tiny ViT, and layer/model round-trip checks.

keras-hub's own `TestCase` (installed with keras-hub, `keras_hub.src.tests.test_case`) runs the
layer checks: `run_layer_test` (build, symbolic and eager call, a compiled training step,
dtype policies) and `run_serialization_test` (`get_config` / `from_config` and Keras
serialization round trips). `TestCase` here adds a whole-model save/load round trip.

The tiny ViT is keras-hub's test size (2 layers, 2 heads, hidden 48, MLP 96), the same as the
configs' `runlocal` backbone; the patch is a quarter of the image side, so 28 px gives keras-hub's
own `image_shape=(28, 28, 3)`, patch 7, and 32 px the runlocal patch 8.
"""

from __future__ import annotations

import os

import keras
import keras_hub
import numpy as np
from keras_hub.src.tests.test_case import TestCase as KerasHubTestCase

from eyegazer_keras import configs

TINY_IMAGE_SIZE = 32


def tiny_vit(image_size: int = TINY_IMAGE_SIZE) -> dict:
    """`keras_hub.models.ViTBackbone` kwargs (without `image_shape`) of the tiny test ViT.

    Args:
        image_size: int. Image side in pixels; a multiple of 4. Defaults to 32.

    Returns:
        dict with patch_size (image_size // 4), num_layers, num_heads, hidden_dim, mlp_dim.
    """
    if image_size % 4:
        raise ValueError(f"image_size {image_size} is not a multiple of 4")
    return dict(configs.RUNLOCAL_VIT, patch_size=image_size // 4)


TINY_VIT = tiny_vit()  # at 32 px: configs.RUNLOCAL_VIT itself


def tiny_vit_classifier(
    num_classes: int, seed: int = 0, image_size: int = TINY_IMAGE_SIZE
) -> keras.Model:
    """Tiny random ViT with the project's model contract (0..255 in, normalisation inside).

    Args:
        num_classes: int. Softmax outputs.
        seed: int. Weight initialisation seed. Defaults to 0.
        image_size: int. Input side in pixels. Defaults to 32.

    Returns:
        A `keras.Model` from `[batch, image_size, image_size, 3]` float 0..255 to
        `[batch, num_classes]` probabilities.
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)
    x = keras_hub.models.ViTBackbone(
        image_shape=(image_size, image_size, 3), **tiny_vit(image_size)
    )(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def random_images(n: int = 2, size: int = TINY_IMAGE_SIZE, seed: int = 0) -> np.ndarray:
    """`[n, size, size, 3]` float32 pixels uniform in 0..255."""
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


class TestCase(KerasHubTestCase):
    """keras-hub's test base plus a whole-model round trip."""

    def run_model_round_trip(self, model: keras.Model, inputs, atol: float = 1e-6) -> keras.Model:
        """Saves `model` as `.keras`, loads it back, and checks config and outputs match.

        Returns:
            The reloaded model.
        """
        path = os.path.join(self.get_temp_dir(), "model.keras")
        expected = model.predict(inputs, verbose=0)
        model.save(path)
        reloaded = keras.saving.load_model(path)
        self.assertEqual(
            [type(layer).__name__ for layer in model.layers],
            [type(layer).__name__ for layer in reloaded.layers],
        )
        self.assertAllClose(expected, reloaded.predict(inputs, verbose=0), atol=atol, rtol=atol)
        return reloaded
