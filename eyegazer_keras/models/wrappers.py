"""Serving wrappers around a trained classifier: temperature scaling and test-time augmentation.

`serving_model(model, temperature, tta)` returns a Keras model with the same input
(``float32 [B, S, S, 3]``, 0..255) and output (softmax ``[B, k]``, or ``[B, 1]`` for a regressor)
whose output is

* the mean of the model over the TTA views (``TTA_MODES``): ``"none"``; ``"flip"`` = identity +
  left-right flip (a fundus is a mirror image of the other eye's, and training augments with
  flips); ``"flip4"`` = identity, left-right, up-down and both (the four flips Kaggle DR winners
  averaged);
* then temperature-scaled (Guo et al. 2017), ``softmax(log(p) / T)``, so probabilities come out
  calibrated. Regressors are never temperature-scaled.

Averaging probabilities and then scaling keeps the exported model one function of the input:
``serving_model(m, T, tta)(x) == apply_temperature(mean_v m(view_v(x)), T)``.

Example:

```python
import keras
import numpy as np
from eyegazer_keras.models import wrappers

inputs = keras.Input((8, 8, 3))
x = keras.layers.GlobalAveragePooling2D()(inputs)
model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(x))
served = wrappers.serving_model(model, temperature=1.5, tta="flip")
probs = served(np.zeros((2, 8, 8, 3), "float32"))  # [2, 5]
```
"""

from __future__ import annotations

import keras
from keras import ops

from eyegazer_keras.models.vit_layers import serializable

TTA_MODES = ("none", "flip", "flip4")


def tta_views(images, mode: str) -> list:
    """The TTA views of a batch ``[B, H, W, C]``, the identity first.

    Args:
        images: tensor ``[B, H, W, C]``.
        mode: str. one of ``TTA_MODES``.

    Returns:
        List of tensors of the same shape: 1 (none), 2 (flip) or 4 (flip4) views.

    Raises:
        ValueError: unknown mode.
    """
    if mode not in TTA_MODES:
        raise ValueError(f"tta={mode!r} is not one of {', '.join(TTA_MODES)}.")
    views = [images]
    if mode in ("flip", "flip4"):
        views.append(ops.flip(images, axis=2))
    if mode == "flip4":
        views.append(ops.flip(images, axis=1))
        views.append(ops.flip(images, axis=(1, 2)))
    return views


@serializable
class TemperatureScaling(keras.layers.Layer):
    """``softmax(log(p) / temperature)`` of softmax probabilities ``p`` (float32).

    Args:
        temperature: float > 0. Fitted by `calibrate.fit_temperature`; 1 changes nothing.
        **kwargs: passed to `keras.layers.Layer`.
    """

    def __init__(self, temperature: float = 1.0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not float(temperature) > 0:
            raise ValueError(f"temperature={temperature!r} must be > 0.")
        self.temperature = float(temperature)

    def call(self, probs):
        logp = ops.log(ops.maximum(ops.cast(probs, "float32"), 1e-12))
        return ops.softmax(logp / self.temperature, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"temperature": self.temperature})
        return config


def serving_model(
    model: keras.Model, temperature: float | None = None, tta: str = "none"
) -> keras.Model:
    """Wraps a model with test-time augmentation and temperature scaling for export.

    Args:
        model: keras.Model. ``float32 [B, S, S, 3]`` in, softmax ``[B, k]`` (or ``[B, 1]``
            regression) out.
        temperature: float or None. None (or 1) leaves probabilities as they are. Must be None
            for a regressor.
        tta: str. one of ``TTA_MODES``. Defaults to ``"none"``.

    Returns:
        The model itself when there is nothing to wrap, else a functional model named
        ``<name>_serving`` with the same input and output shapes.

    Raises:
        ValueError: unknown TTA mode, a non-positive temperature, or a temperature for a
            single-output regressor.
    """
    if tta not in TTA_MODES:
        raise ValueError(f"tta={tta!r} is not one of {', '.join(TTA_MODES)}.")
    regression = int(model.outputs[0].shape[-1]) == 1
    if temperature is not None and regression:
        raise ValueError("temperature scaling applies to softmax classifiers, not regressors.")
    if tta == "none" and (temperature is None or float(temperature) == 1.0):
        return model
    inputs = keras.Input(model.inputs[0].shape[1:], dtype=model.inputs[0].dtype, name="images")
    outs = [model(view, training=False) for view in tta_views(inputs, tta)]
    x = outs[0] if len(outs) == 1 else keras.layers.Average(name="tta_mean")(outs)
    if temperature is not None:
        x = TemperatureScaling(temperature, name="temperature_scaling")(x)
    return keras.Model(inputs, x, name=f"{model.name}_serving")
