"""Faster drop-ins for the keras-hub ViT's LoRA projections and MLP activation (same math).

Measured CPU costs of the stock Keras/keras-hub layers (see ``benchmarks/NOTES.md``):

* Keras LoRA (``EinsumDense.enable_lora``) computes ``einsum(x, kernel + s * A @ B)`` every call.
  The gradient then goes through the *full* kernel: a ``[hidden, heads, head_dim]`` weight
  gradient per LoRA'd layer and step, of which only ``A``/``B`` are kept.
  `FactoredLoRAEinsumDense` / `FactoredLoRADense` compute ``x @ W + s * (x @ A) @ B`` instead (as
  PEFT does): the frozen ``W`` gets no weight gradient.
* Keras's attention core on TensorFlow is two einsums on ``[batch, tokens, heads, dim]``;
  `BatchMatMulAttention` runs the same math as batched matmuls on ``[batch, heads, tokens, dim]``
  (≈ 20 % faster forward + backward on CPU).
* keras-hub's MLP uses exact GELU; TF's ``Gelu``/``Erfc`` kernels have no vectorised bfloat16
  path, so under ``mixed_bfloat16`` GELU alone took as long as a large matmul.
  `gelu_float32` computes the same exact GELU in float32 and casts back.

The factored classes keep the variables, their names and paths and ``get_config`` of the Keras
base classes and replace ``call``. They are installed by swapping ``__class__`` on already built
layers (`use_fast_layers`), because keras-hub builds its sublayers itself.

Every LoRA class here (`LoRADense`, `LoRAEinsumDense` and the factored and rank-r ones built on
them) saves LoRA **unmerged**: ``save_own_variables`` writes the frozen kernel, the bias, ``A`` and
``B`` as four entries, and ``load_own_variables`` reads them back as they are. Keras core writes
``W + s * A @ B`` into the kernel and zeroes ``A``/``B`` on load, so a reloaded ``.keras`` file
would train no LoRA. A file written with LoRA merged (two entries) is refused with a one-line
error instead of being read as a LoRA-free kernel.

`RankRLoRAEinsumDense` is the PEFT-layout LoRA (``lora_layout="peft"``, the default of
`vit_lora.build_vit_classifier`, which swaps it in before ``enable_lora``): it also replaces
``enable_lora`` (``A`` on the kernel's input axes, ``B`` on its output axes) and the merged
``kernel`` property, with the same factored call.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from eyegazer_keras.models.vit_layers import serializable

__all__ = [
    "BatchMatMulAttention",
    "FactoredLoRADense",
    "FactoredLoRAEinsumDense",
    "LoRADense",
    "LoRAEinsumDense",
    "RankRLoRAEinsumDense",
    "gelu_float32",
    "use_fast_layers",
]

_INV_SQRT2 = 1.0 / math.sqrt(2.0)


@serializable
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


def _factored_call(layer, inputs, project, down=None, up=ops.matmul):
    """``act(project(x, W) + s * up(down(x, A), B) + bias)`` for a LoRA-enabled layer.

    ``down`` defaults to ``project`` (Keras's layout: ``A`` has the kernel's shape but the
    last axis); ``up`` to a matmul with ``B``.
    """
    dtype = layer.compute_dtype
    x = project(inputs, ops.cast(layer._kernel, dtype))
    lora = (down or project)(inputs, ops.cast(layer.lora_kernel_a, dtype))
    lora = up(lora, ops.cast(layer.lora_kernel_b, dtype))
    scale = _lora_scale(layer)
    x = ops.add(x, lora if scale == 1.0 else ops.multiply(lora, ops.cast(scale, dtype)))
    if layer.bias is not None:
        x = ops.add(x, layer.bias)
    if layer.activation is not None:
        x = layer.activation(x)
    return x


class _UnmergedLoRAVariables:
    """``save_own_variables``/``load_own_variables`` that keep LoRA ``A``/``B`` apart.

    Without LoRA (or quantized) it is the Keras layer's own saving. With LoRA the entries are
    ``"0"`` frozen kernel, ``"1"`` bias (when the layer has one), then ``A`` and ``B``.
    """

    def _lora_variables(self) -> list:
        bias = [] if self.bias is None else [self.bias]
        return [self._kernel, *bias, self.lora_kernel_a, self.lora_kernel_b]

    def save_own_variables(self, store):
        if not self.built or not _is_plain(self):
            return super().save_own_variables(store)
        for i, variable in enumerate(self._lora_variables()):
            store[str(i)] = variable

    def load_own_variables(self, store):
        if not self.built or not _is_plain(self):
            return super().load_own_variables(store)
        variables = self._lora_variables()
        if len(store.keys()) != len(variables):
            raise ValueError(
                f"layer '{self.name}': the file holds {len(store.keys())} variables but this "
                f"LoRA layer has {len(variables)} (kernel, bias, lora_kernel_a, lora_kernel_b); "
                "the file has LoRA merged into the kernel (a Keras core LoRA layer wrote it): "
                "load it into a model built with lora_rank=0, or save the LoRA model again "
                "with eyegazer_keras"
            )
        for i, variable in enumerate(variables):
            variable.assign(store[str(i)])


@serializable
class LoRAEinsumDense(_UnmergedLoRAVariables, keras.layers.EinsumDense):
    """`keras.layers.EinsumDense` (Keras core LoRA, Keras's call) that saves LoRA unmerged.

    Args:
        **kwargs: as `keras.layers.EinsumDense`.
    """


@serializable
class LoRADense(_UnmergedLoRAVariables, keras.layers.Dense):
    """`keras.layers.Dense` (Keras core LoRA, Keras's call) that saves LoRA unmerged.

    Args:
        **kwargs: as `keras.layers.Dense`.
    """


@serializable
class FactoredLoRAEinsumDense(LoRAEinsumDense):
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


@serializable
class FactoredLoRADense(LoRADense):
    """`keras.layers.Dense` whose LoRA path is ``x @ W + s * (x @ A) @ B`` (see the EinsumDense one).

    Args:
        **kwargs: as `keras.layers.Dense`.
    """

    def call(self, inputs, training=None):
        if not _is_plain(self):
            return super().call(inputs, training=training)
        return _factored_call(self, inputs, ops.matmul)


def _einsum_split(equation: str):
    """``(input, kernel, output, n_contracted)`` of an EinsumDense equation.

    Rank-r LoRA needs the kernel's contracted (input) axes to come first, as in every keras-hub
    projection (``abc,cde->abde``, ``abcd,cde->abe``); other equations are refused.
    """
    inputs, output = equation.split("->")
    x_spec, k_spec = inputs.split(",")
    n = 0
    while n < len(k_spec) and k_spec[n] in x_spec and k_spec[n] not in output:
        n += 1
    if n == 0 or any(c in x_spec and c not in output for c in k_spec[n:]):
        raise ValueError(
            f"lora_layout='peft' needs the kernel's input axes first; equation '{equation}' "
            "has not; use lora_layout='keras'"
        )
    return x_spec, k_spec, output, n


@serializable
class RankRLoRAEinsumDense(_UnmergedLoRAVariables, keras.layers.EinsumDense):
    """`keras.layers.EinsumDense` with a true rank-r LoRA, PEFT's layout.

    Keras's ``EinsumDense.enable_lora`` gives a ``(hidden, heads, head_dim)`` query kernel
    ``A: (hidden, heads, r)`` and ``B: (r, head_dim)``: ``heads`` times PEFT's parameters and an
    update of rank up to ``heads * r``. Here ``A`` covers the kernel's input axes and ``B`` its
    output axes (``A: (hidden, r)``, ``B: (r, heads, head_dim)``), i.e. PEFT's ``lora_A``/``lora_B``
    on the flattened ``Linear``: same parameter count, same rank, same update. The forward pass is
    factored (``x @ W + s * (x @ A) @ B``); ``kernel`` (and so export and merging) returns
    ``W + s * A @ B`` like the Keras layer; ``.keras`` files and weight files keep ``A``/``B``.

    Args:
        **kwargs: as `keras.layers.EinsumDense`.
    """

    def enable_lora(self, rank, lora_alpha=None, a_initializer="he_uniform", b_initializer="zeros"):
        if self.quantization_mode or self.kernel_constraint:
            raise ValueError("lora_layout='peft' supports plain float kernels only")
        if not self.built or self.lora_enabled:
            raise ValueError("enable_lora needs a built layer without LoRA")
        _, _, _, n = _einsum_split(self.equation)
        shape = tuple(self._kernel.shape)
        self._tracker.unlock()
        self.lora_kernel_a = self.add_weight(
            name="lora_kernel_a",
            shape=shape[:n] + (rank,),
            initializer=keras.initializers.get(a_initializer),
            dtype="float32",
            regularizer=self.kernel_regularizer,
        )
        self.lora_kernel_b = self.add_weight(
            name="lora_kernel_b",
            shape=(rank,) + shape[n:],
            initializer=keras.initializers.get(b_initializer),
            dtype="float32",
            regularizer=self.kernel_regularizer,
        )
        self._kernel.trainable = False
        self._tracker.lock()
        self.lora_enabled = True
        self.lora_rank = rank
        self.lora_alpha = lora_alpha if lora_alpha is not None else rank

    @property
    def kernel(self):
        if not _is_plain(self):
            return super().kernel
        delta = ops.tensordot(self.lora_kernel_a, self.lora_kernel_b, axes=1)
        merged = ops.add(self._kernel, ops.multiply(delta, _lora_scale(self)))
        return ops.cast(merged, self.compute_dtype)

    def call(self, inputs, training=None):
        if not _is_plain(self):
            return super().call(inputs, training=training)
        x_spec, k_spec, out_spec, n = _einsum_split(self.equation)
        r = next(c for c in "zyxwvutsrq" if c not in self.equation)
        mid = "".join(c for c in out_spec if c in x_spec) + r
        down = f"{x_spec},{k_spec[:n]}{r}->{mid}"
        up = f"{mid},{r}{k_spec[n:]}->{out_spec}"
        return _factored_call(
            self,
            inputs,
            lambda x, w: ops.einsum(self.equation, x, w),
            down=lambda x, a: ops.einsum(down, x, a),
            up=lambda x, b: ops.einsum(up, x, b),
        )


@serializable
class BatchMatMulAttention(keras.layers.MultiHeadAttention):
    """`keras.layers.MultiHeadAttention` whose attention core runs as two batched matmuls.

    On the TensorFlow backend Keras computes ``softmax(q k^T * scale) v`` with two
    ``einsum("BTNH,BSNH->BNTS")``-style ops on the ``[batch, tokens, heads, dim]`` layout; oneDNN
    runs those ≈ 20 % slower (forward + backward, ViT-S/16 bf16 on CPU) than ``tf.linalg.matmul``
    on ``[batch, heads, tokens, dim]`` with ``transpose_b``. Same math as the Keras path: logits
    cast to float32 and scaled there, softmax in float32, probabilities cast back. Any other case
    (mask, causal, dropout, attention scores requested, flash attention, another backend) is the
    Keras layer unchanged. Only ``_compute_attention``, Keras's documented override point, is
    replaced.

    Args:
        **kwargs: as `keras.layers.MultiHeadAttention`.
    """

    def _compute_attention(
        self,
        query,
        key,
        value,
        attention_mask=None,
        training=None,
        return_attention_scores=False,
        use_causal_mask=False,
    ):
        plain = (
            keras.backend.backend() == "tensorflow"
            and attention_mask is None
            and not (return_attention_scores or use_causal_mask or self._flash_attention)
            and not self._dropout
            and len(query.shape) == 4
        )
        if not plain:
            return super()._compute_attention(
                query,
                key,
                value,
                attention_mask=attention_mask,
                training=training,
                return_attention_scores=return_attention_scores,
                use_causal_mask=use_causal_mask,
            )
        import tensorflow as tf

        q, k, v = (tf.transpose(t, (0, 2, 1, 3)) for t in (query, key, value))
        logits = tf.cast(tf.linalg.matmul(q, k, transpose_b=True), "float32")
        logits = logits * tf.cast(self._inverse_sqrt_key_dim, "float32")
        probs = tf.cast(tf.nn.softmax(logits, axis=-1), k.dtype)
        return tf.transpose(tf.linalg.matmul(probs, v), (0, 2, 1, 3)), None


_FACTORED = {
    keras.layers.EinsumDense: FactoredLoRAEinsumDense,
    keras.layers.Dense: FactoredLoRADense,
    LoRAEinsumDense: FactoredLoRAEinsumDense,
    LoRADense: FactoredLoRADense,
}
# Keras core LoRA classes -> the same layer saving LoRA unmerged (`enable_unmerged_lora`).
UNMERGED = {keras.layers.EinsumDense: LoRAEinsumDense, keras.layers.Dense: LoRADense}


def use_fast_layers(
    backbone: keras.layers.Layer, *, lora: bool = True, gelu: bool = True, attention: bool = True
) -> dict:
    """Switches the built layers of a keras-hub ViT backbone to the faster, equivalent forms.

    Call it after ``enable_lora``. Layers are changed in place; variables are untouched.

    Args:
        backbone: keras.layers.Layer. A built `keras_hub.models.ViTBackbone`.
        lora: bool. Swap LoRA-enabled ``Dense``/``EinsumDense`` layers to the factored form.
            Defaults to True.
        gelu: bool. Under a non-float32 compute dtype, compute the MLP's exact GELU in float32
            (`gelu_float32`). Defaults to True.
        attention: bool. Swap `keras.layers.MultiHeadAttention` layers to
            `BatchMatMulAttention` (TensorFlow backend only; elsewhere it is a no-op). Defaults
            to True.

    Returns:
        ``{"factored_lora": n, "gelu_float32": m, "attention": k}``: how many layers changed.
    """
    counts = {"factored_lora": 0, "gelu_float32": 0, "attention": 0}
    gelu_fns = {keras.activations.gelu, ops.gelu}
    for layer in backbone._flatten_layers(include_self=False):
        if (
            attention
            and type(layer) is keras.layers.MultiHeadAttention
            and keras.backend.backend() == "tensorflow"
        ):
            layer.__class__ = BatchMatMulAttention
            counts["attention"] += 1
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
