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

from eyegazer_keras.configs import settings as configs

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


TINY_STORED_SIZE = 64  # the stored (dataset) side of the test exports, px


def export_tiny(model: keras.Model, path, task: str = "grade", **kwargs) -> str:
    """`export.export_saved_model` at the test sizes: 32 px model input, 64 px stored.

    Args:
        model: keras.Model. `[B, 32, 32, 3]` float 0..255 in (e.g. `tiny_vit_classifier`).
        path: str or path. The SavedModel directory to write.
        task: str. "grade", "binary" or "regression". Defaults to "grade".
        **kwargs: more `export_saved_model` arguments (`explain_method`, `calibration`, ...);
            `image_size` and `source_size` (or `preprocessing`) override the test sizes.

    Returns:
        The SavedModel directory, as a string.
    """
    from eyegazer_keras.serving import export

    kwargs.setdefault("image_size", TINY_IMAGE_SIZE)
    if "preprocessing" not in kwargs:
        kwargs.setdefault("source_size", TINY_STORED_SIZE)
    return export.export_saved_model(model, path, task=task, **kwargs)


# What a camera stores, for the picture a viewer shows upright: the inverse of PIL's
# `ImageOps.exif_transpose` for each EXIF orientation 1..8 (None: stored as shown).
STORED_FROM_UPRIGHT = {
    1: None,
    2: "FLIP_LEFT_RIGHT",
    3: "ROTATE_180",
    4: "FLIP_TOP_BOTTOM",
    5: "TRANSPOSE",
    6: "ROTATE_90",
    7: "TRANSVERSE",
    8: "ROTATE_270",
}


def exif_tagged_photo(
    upright: np.ndarray, orientation: int, fmt: str, exif: bytes | None = None, quality: int = 95
) -> bytes:
    """A PNG/JPEG file that shows `upright` once its EXIF orientation is applied.

    Args:
        upright: uint8 array `[H, W, 3]`. The picture as a viewer should show it.
        orientation: int. EXIF orientation 1..8 (tag 0x0112).
        fmt: str. "PNG" (eXIf chunk) or "JPEG" (APP1 segment).
        exif: bytes or None. A raw EXIF block to write instead of Pillow's. Defaults to None.
        quality: int. JPEG quality. Defaults to 95.

    Returns:
        The encoded file: the pixels stored turned (`STORED_FROM_UPRIGHT`), the tag set.
    """
    import io

    from PIL import Image

    stored = Image.fromarray(upright)
    if STORED_FROM_UPRIGHT[orientation] is not None:
        stored = stored.transpose(getattr(Image.Transpose, STORED_FROM_UPRIGHT[orientation]))
    if exif is None:
        tags = Image.Exif()
        tags[0x0112] = orientation
        exif = tags.tobytes()
    buf = io.BytesIO()
    stored.save(buf, format=fmt, exif=exif, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()
