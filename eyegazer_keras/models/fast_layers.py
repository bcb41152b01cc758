"""Faster drop-ins for the keras-hub ViT's LoRA projections and MLP activation (same math).

Two measured CPU costs of the stock Keras/keras-hub layers (see ``benchmarks/NOTES.md``):

* Keras LoRA (``EinsumDense.enable_lora``) computes ``einsum(x, kernel + s * A @ B)`` every call.
  The gradient then goes through the *full* kernel: a ``[hidden, heads, head_dim]`` weight
  gradient per LoRA'd layer and step, of which only ``A``/``B`` are kept.
  `FactoredLoRAEinsumDense` / `FactoredLoRADense` compute ``x @ W + s * (x @ A) @ B`` instead (as
  PEFT does): the frozen ``W`` gets no weight gradient.
* keras-hub's MLP uses exact GELU; TF's ``Gelu``/``Erfc`` kernels have no vectorised bfloat16
  path, so under ``mixed_bfloat16`` GELU alone took as long as a large matmul.
  `gelu_float32` computes the same exact GELU in float32 and casts back.

The classes keep the variables, their names and paths, ``get_config`` and the merged-kernel
``save_own_variables``/``load_own_variables`` of the Keras base classes; they only replace
``call``. They are installed by swapping ``__class__`` on already built layers
(`use_fast_layers`), because keras-hub builds its sublayers itself.
"""

from __future__ import annotations

import math

import keras
from keras import ops

__all__ = [
    "FactoredLoRADense",
    "FactoredLoRAEinsumDense",
    "gelu_float32",
    "use_fast_layers",
]

_INV_SQRT2 = 1.0 / math.sqrt(2.0)


@keras.saving.register_keras_serializable(package="eyegazer")
def gelu_float32(x):
    """Exact GELU ``0.5 x (1 + erf(x / sqrt(2)))`` computed in float32, returned in ``x.dtype``.

    Args:
        x: tensor of any float dtype.
    """
    dtype = x.dtype
    x32 = ops.cast(x, "float32")
    y = 0.5 * x32 * (1.0 + ops.erf(x32 * _INV_SQRT2))
    return ops.cast(y, dtype)


def _lora_scale(layer):
    return float(layer.lora_alpha) / float(layer.lora_rank)


def _is_plain(layer):
    return layer.lora_enabled and not layer.quantization_mode


def _factored_call(layer, inputs, project):
    """``act(project(x, W) + s * project(x, A) @ B + bias)`` for a LoRA-enabled layer."""
    dtype = layer.compute_dtype
    x = project(inputs, ops.cast(layer._kernel, dtype))
    lora = project(inputs, ops.cast(layer.lora_kernel_a, dtype))
    lora = ops.matmul(lora, ops.cast(layer.lora_kernel_b, dtype))
    scale = _lora_scale(layer)
    x = ops.add(x, lora if scale == 1.0 else ops.multiply(lora, ops.cast(scale, dtype)))
    if layer.bias is not None:
        x = ops.add(x, layer.bias)
    if layer.activation is not None:
        x = layer.activation(x)
    return x


@keras.saving.register_keras_serializable(package="eyegazer")
class FactoredLoRAEinsumDense(keras.layers.EinsumDense):
    """`keras.layers.EinsumDense` whose LoRA path is ``einsum(x, W) + s * einsum(x, A) @ B``.

    Same variables and result as Keras LoRA (``einsum(x, W + s * A @ B)``); the frozen ``W`` gets
    no weight gradient. Without LoRA, or quantized, it is the Keras layer unchanged.

    Args:
        **kwargs: as `keras.layers.EinsumDense`.
    """

    def call(self, inputs, training=None):
        if not _is_plain(self):
            return super().call(inputs, training=training)
        return _factored_call(self, inputs, lambda x, w: ops.einsum(self.equation, x, w))


@keras.saving.register_keras_serializable(package="eyegazer")
class FactoredLoRADense(keras.layers.Dense):
    """`keras.layers.Dense` whose LoRA path is ``x @ W + s * (x @ A) @ B`` (see the EinsumDense one).

    Args:
        **kwargs: as `keras.layers.Dense`.
    """

    def call(self, inputs, training=None):
        if not _is_plain(self):
            return super().call(inputs, training=training)
        return _factored_call(self, inputs, ops.matmul)


_FACTORED = {
    keras.layers.EinsumDense: FactoredLoRAEinsumDense,
    keras.layers.Dense: FactoredLoRADense,
}


def use_fast_layers(backbone: keras.layers.Layer, *, lora: bool = True, gelu: bool = True) -> dict:
    """Switches the built layers of a keras-hub ViT backbone to the faster, equivalent forms.

    Call it after ``enable_lora``. Layers are changed in place; variables are untouched.

    Args:
        backbone: keras.layers.Layer. A built `keras_hub.models.ViTBackbone`.
        lora: bool. Swap LoRA-enabled ``Dense``/``EinsumDense`` layers to the factored form.
            Defaults to True.
        gelu: bool. Under a non-float32 compute dtype, compute the MLP's exact GELU in float32
            (`gelu_float32`). Defaults to True.

    Returns:
        ``{"factored_lora": n, "gelu_float32": m}``: how many layers were changed.
    """
    counts = {"factored_lora": 0, "gelu_float32": 0}
    gelu_fns = {keras.activations.gelu, ops.gelu}
    for layer in backbone._flatten_layers(include_self=False):
        if lora and getattr(layer, "lora_enabled", False):
            target = _FACTORED.get(type(layer))
            if target is not None:
                layer.__class__ = target
                counts["factored_lora"] += 1
        if (
            gelu
            and isinstance(layer, keras.layers.Dense)
            and getattr(layer, "activation", None) in gelu_fns
            and layer.compute_dtype != "float32"
        ):
            layer.activation = gelu_float32
            counts["gelu_float32"] += 1
    return counts
