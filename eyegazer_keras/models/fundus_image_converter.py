"""`FundusImageConverter`: the keras-hub image converter that carries a run's `PreprocessingSpec`.

It turns stored fundus images (what the dataset builders wrote: ``uint8 [S, S, 3]``, the
`fundus.PreprocessingSpec`'s ``stored_size``) into model input with `fundus.to_model_input`, the
one "stored -> model" step training, evaluation and export share: an antialiased resize to
``image_size``, rounded to whole 0..255 values, and the spec's mean/std when it has them (the
default spec leaves normalisation to the model). The spec travels with the converter through
``get_config`` (so through ``.keras`` files and presets); `photo_to_model_input` runs the whole
photo -> model input recipe of the spec (crop, Ben Graham, resize).

Example:

```python
import numpy as np
from eyegazer_keras import fundus
from eyegazer_keras.models.fundus_image_converter import FundusImageConverter

converter = FundusImageConverter(image_size=32, spec=fundus.PreprocessingSpec(stored_size=64))
x = converter(np.zeros((2, 64, 64, 3), "uint8"))  # float32 [2, 32, 32, 3], 0..255
```
"""

from __future__ import annotations

from collections.abc import Mapping

import keras_hub
import tensorflow as tf

from eyegazer_keras import fundus
from eyegazer_keras.models.vit_layers import serializable

__all__ = ["FundusImageConverter"]


def _side(image_size) -> int:
    """An int side from an int or a square ``(h, w)``."""
    if isinstance(image_size, int):
        return int(image_size)
    height, width = (int(v) for v in image_size)
    if height != width:
        raise ValueError(
            f"image_size={tuple(image_size)}: the model input is square, give one side."
        )
    return height


@serializable
class FundusImageConverter(keras_hub.layers.ImageConverter):
    """Stored fundus images -> model input, as the run's `fundus.PreprocessingSpec` says.

    Args:
        image_size: int or square ``(side, side)``. Model input side in pixels.
        spec: `fundus.PreprocessingSpec`, its ``to_dict()``, or None. How photos became the
            stored images and how stored images become model input (its ``mean``/``std``, when
            set, normalise here; otherwise the model normalises inside). None: a bare resize,
            the stored size unknown (`photo_to_model_input` then refuses). Defaults to None.
        **kwargs: passed to `keras_hub.layers.ImageConverter` (``name``, ``dtype``).

    Call:
        ``uint8`` or float ``[S, S, 3]`` or ``[B, S, S, 3]`` 0..255 stored images -> ``float32
        [..., image_size, image_size, 3]`` (0..255, or ``(x / 255 - mean) / std``).

    Raises:
        ValueError: a non-square image size, or a bad spec dict.
    """

    # Not keras-hub's ViTBackbone: `keras_hub.models.ImageClassifier.from_preset("vit_...")`
    # must keep finding keras-hub's own ViT classes, not this one.
    backbone_cls = None

    def __init__(self, image_size=None, spec=None, **kwargs):
        for key in ("scale", "offset"):  # normalisation lives in the spec or the model
            if kwargs.pop(key, None) is not None:
                raise ValueError(f"{key}: give normalisation in spec (mean/std), not as {key}.")
        for key in ("crop_to_aspect_ratio", "pad_to_aspect_ratio", "interpolation", "antialias"):
            kwargs.pop(key, None)  # fixed here: square stored images, antialiased bilinear
        kwargs.pop("bounding_box_format", None)
        side = None if image_size is None else _side(image_size)
        super().__init__(
            image_size=None if side is None else (side, side),
            crop_to_aspect_ratio=False,
            interpolation="bilinear",
            antialias=True,
            **kwargs,
        )
        if isinstance(spec, Mapping):
            spec = fundus.PreprocessingSpec.from_dict(spec)
        if spec is not None and not isinstance(spec, fundus.PreprocessingSpec):
            raise ValueError(f"spec={spec!r}: give a fundus.PreprocessingSpec, its dict or None.")
        self.spec = spec

    def call(self, inputs):
        images = tf.convert_to_tensor(inputs)
        if self.image_size is None:
            return fundus.to_model_input(images, int(images.shape[-2]), self.spec)
        return fundus.to_model_input(images, self.image_size[0], self.spec)

    def photo_to_model_input(self, image):
        """A decoded photo -> model input: the spec's crop, stored size, Ben Graham, resize.

        Args:
            image: ``uint8 [H, W, 3]`` upright photo (`fundus.decode_image`).

        Returns:
            ``float32 [image_size, image_size, 3]``.

        Raises:
            ValueError: the converter has no spec or no image size.
        """
        if self.spec is None or self.image_size is None:
            raise ValueError(
                f"{self.name}: photo_to_model_input needs a spec and an image_size; build the "
                "converter with spec=fundus.PreprocessingSpec(stored_size=...)"
            )
        return fundus.photo_to_model_input(image, self.image_size[0], self.spec)

    def get_config(self):
        config = super().get_config()
        config["spec"] = None if self.spec is None else self.spec.to_dict()
        return config
