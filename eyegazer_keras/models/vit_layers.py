"""The custom Keras layers of the ViT classifier: pixel normalisation and token pooling.

Both are registered Keras serializables (`serializable`): saved as
``"eyegazer_keras>PixelNormalization"``, ``"eyegazer_keras>ViTPooling"``; files written under the
earlier package name ``"eyegazer"`` (also when they lived in ``eyegazer_keras.models.vit_lora``)
load unchanged (Keras resolves the registered name, not the module path), once this module is
imported (`vit_lora` imports it).

Example:

```python
import numpy as np
from eyegazer_keras.models.vit_layers import PixelNormalization, ViTPooling

pixels = PixelNormalization(scale=1 / 127.5, offset=-1.0)(np.array([[0.0, 255.0]]))  # [-1, 1]
tokens = np.arange(2 * 5 * 4, dtype="float32").reshape(2, 5, 4)
cls = ViTPooling("token")(tokens)  # [2, 4]: the class token
```
"""

from __future__ import annotations

import keras
import numpy as np

__all__ = ["POOLING_MODES", "PixelNormalization", "ViTPooling", "as_float_list", "serializable"]

# Class token, mean of the patch tokens, or both concatenated (HF Dinov2ForImageClassification).
POOLING_MODES = ("token", "gap", "token_gap")


def serializable(obj):
    """Registers a Keras class or function as ``"eyegazer_keras>Name"``.

    Files are written under that name; the name used before (``"eyegazer>Name"``) stays
    registered, so older ``.keras`` files load.

    Args:
        obj: a class with ``get_config`` or a function.

    Returns:
        `obj` itself.
    """
    keras.saving.register_keras_serializable(package="eyegazer")(obj)
    return keras.saving.register_keras_serializable(package="eyegazer_keras")(obj)


@serializable
class PixelNormalization(keras.layers.Layer):
    """Maps 0..255 pixels to the backbone's input range: ``x * scale + offset``.

    Args:
        scale: float or sequence of 3 floats (per RGB channel). Multiplies the pixel values.
        offset: float or sequence of 3 floats (per RGB channel). Added after scaling.
            Defaults to 0.
        **kwargs: passed to `keras.layers.Layer`.
    """

    def __init__(self, scale, offset=0.0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.scale = as_float_list(scale)
        self.offset = as_float_list(offset)

    def call(self, inputs):
        x = keras.ops.cast(inputs, self.compute_dtype)
        scale = keras.ops.convert_to_tensor(self.scale, dtype=self.compute_dtype)
        offset = keras.ops.convert_to_tensor(self.offset, dtype=self.compute_dtype)
        return x * scale + offset

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"scale": self.scale, "offset": self.offset})
        return config


@serializable
class ViTPooling(keras.layers.Layer):
    """Turns ViT token sequences ``[batch, tokens, hidden]`` into ``[batch, features]``.

    Args:
        mode: str. ``"token"`` takes the class token (position 0); ``"gap"`` averages the patch
            tokens, leaving out the ``num_prefix_tokens`` leading ones (as timm's ``avg`` pool);
            ``"token_gap"`` concatenates the two, ``[batch, 2 * hidden]``: what Hugging Face's
            ``Dinov2ForImageClassification`` (and its ``WithRegisters`` form) classifies.
        num_prefix_tokens: int. Leading non-patch tokens (1 with a class token, else 0).
            Defaults to 1.
        **kwargs: passed to `keras.layers.Layer`.
    """

    def __init__(self, mode="token", num_prefix_tokens=1, **kwargs):
        super().__init__(**kwargs)
        if mode not in POOLING_MODES:
            raise ValueError(
                f"pooling={mode!r} is not supported: use one of {', '.join(POOLING_MODES)}."
            )
        if mode != "gap" and num_prefix_tokens < 1:
            raise ValueError(
                f"pooling={mode!r} needs a class token; this backbone has use_class_token=False: "
                "use pooling='gap'."
            )
        self.mode = mode
        self.num_prefix_tokens = int(num_prefix_tokens)

    def call(self, inputs):
        if self.mode == "token":
            return inputs[:, 0, :]
        mean = keras.ops.mean(inputs[:, self.num_prefix_tokens :, :], axis=1)
        if self.mode == "token_gap":
            return keras.ops.concatenate([inputs[:, 0, :], mean], axis=-1)
        return mean

    def compute_output_shape(self, input_shape):
        features = input_shape[-1]
        if self.mode == "token_gap" and features is not None:
            features = 2 * features
        return (input_shape[0], features)

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode, "num_prefix_tokens": self.num_prefix_tokens})
        return config


def as_float_list(value) -> float | list[float]:
    """A float (scalar input) or a flat list of floats, JSON-able for `get_config`.

    Args:
        value: float or array-like of floats.

    Returns:
        float for a scalar, else the values flattened to a list of Python floats.
    """
    array = np.asarray(value, dtype="float64")
    return float(array) if array.ndim == 0 else [float(v) for v in array.ravel()]
