"""PEFT LoRA tensors <-> keras-hub LoRA variables: the key names and the weight layouts.

Pure functions on names and numpy arrays (no files, no checks: `peft` refuses what does not
fit). A PEFT adapter names its tensors after the Hugging Face model it was made on, per
transformers version ("current" = transformers >= 5, "legacy" = transformers 4):

* ViT (``ViTForImageClassification``), current: ``base_model.model.vit.layers.{i}.attention.
  {q_proj,k_proj,v_proj,o_proj}.lora_{A,B}.weight``; legacy: ``base_model.model.vit.encoder.
  layer.{i}.attention.attention.{query,key,value}`` / ``...attention.output.dense``;
* DINOv2 (``Dinov2ForImageClassification``; ``Dinov2WithRegistersForImageClassification``
  writes ``dinov2_with_registers.`` for ``dinov2.``), current: ``base_model.model.dinov2.
  encoder.layer.{i}.attention.{q_proj,...,o_proj}.lora_{A,B}.weight``; legacy: as the ViT's
  with ``dinov2.`` for ``vit.``;

plus ``base_model.model.classifier.{weight,bias}``. ``lora_A`` is ``(r, in)``, ``lora_B``
``(out, r)``; the update is ``(alpha / r) * B @ A`` (Hu et al., "LoRA", ICLR 2022).

keras-hub holds HF layer ``i`` of a ViT as ``vit_encoder/transformer_block_{i+1}/mha/{query,key,
value,attention_output}``, of a DINOv2 as ``encoder/layers_{i}/attention/attention/{...}``, with
variables ``lora_kernel_a`` / ``lora_kernel_b``: with ``lora_layout="peft"``, ``A.T`` and ``B.T``
reshaped to ``(r, heads, head_dim)`` (query/key/value) or ``A.T`` reshaped to
``(heads, head_dim, r)`` and ``B.T`` (attention output). Both families share those shapes.

Example:

```python
import numpy as np
from eyegazer_keras.interop import peft_layout

key = "base_model.model.dinov2.encoder.layer.0.attention.q_proj.lora_A.weight"
print(peft_layout.parse_lora_key(key))  # LoraKey(layer=0, target='query', ..., family='dinov2')
print(peft_layout.keras_lora_path(0, "query", "a", "dinov2"))
a, b = np.ones((2, 8), "float32"), np.ones((8, 2), "float32")  # r=2, hidden 8
ka, kb = peft_layout.keras_lora(a, b, "query", heads=2)  # (8, 2), (2, 2, 4)
a2, b2, heads = peft_layout.hf_lora(ka, kb, "query", "peft")
assert np.array_equal(a2, a) and np.array_equal(b2, b) and heads == 2
```
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

__all__ = [
    "FAMILIES",
    "HF_TO_KERAS",
    "PEFT_PREFIX",
    "PROJECTIONS",
    "LoraKey",
    "hf_lora",
    "hf_lora_key",
    "keras_lora",
    "keras_lora_path",
    "parse_head_key",
    "parse_keras_path",
    "parse_lora_key",
    "strip_prefix",
]

PEFT_PREFIX = "base_model.model."
# keras-hub attention layer <- (current name, legacy name) of the same HF projection.
PROJECTIONS = {
    "query": ("q_proj", "query"),
    "key": ("k_proj", "key"),
    "value": ("v_proj", "value"),
    "attention_output": ("o_proj", "output.dense"),
}
HF_TO_KERAS = {hf: k for k, names in PROJECTIONS.items() for hf in names}
_HF_NAME = {k: names[0] for k, names in PROJECTIONS.items()}  # current naming, for export
# Backbone family (keras-hub class) <- the HF model types (module prefixes) that map onto it.
FAMILIES = {"vit": ("vit",), "dinov2": ("dinov2", "dinov2_with_registers")}
_FAMILY_OF = {model_type: f for f, types in FAMILIES.items() for model_type in types}
_QKVO = r"(q_proj|k_proj|v_proj|o_proj)"
_CURRENT_VIT_KEY = re.compile(
    rf"^(?:vit\.)?layers\.(\d+)\.attention\.{_QKVO}\.lora_([AB])\.weight$"
)
_CURRENT_DINOV2_KEY = re.compile(
    rf"^(?:(?:dinov2|dinov2_with_registers)\.)?encoder\.layer\.(\d+)\.attention\.{_QKVO}"
    r"\.lora_([AB])\.weight$"
)
_LEGACY_KEY = re.compile(
    r"^(?:(vit|dinov2|dinov2_with_registers)\.)?encoder\.layer\.(\d+)\.attention\."
    r"(attention\.query|attention\.key|attention\.value|output\.dense)\.lora_([AB])\.weight$"
)
_HEAD_KEY = re.compile(r"^classifier\.(?:modules_to_save\.default\.)?(weight|bias)$")
_KERAS_PATHS = {
    "vit": (
        re.compile(r"^vit_encoder/transformer_block_(\d+)/mha/(\w+)/lora_kernel_([ab])$"),
        1,
        "vit_encoder/transformer_block_{block}/mha/{target}/lora_kernel_{which}",
    ),
    "dinov2": (
        # keras-hub prefixes the DINOv2's sublayers with the backbone's name, when it has one
        # at construction (a saved preset's): "backbone_encoder/...".
        re.compile(r"^(?:\w+_)?encoder/layers_(\d+)/attention/attention/(\w+)/lora_kernel_([ab])$"),
        0,
        "encoder/layers_{block}/attention/attention/{target}/lora_kernel_{which}",
    ),
}


class LoraKey(NamedTuple):
    """A parsed PEFT LoRA key: HF block, keras-hub projection, ``"A"``/``"B"``, naming and
    family (``"vit"``, ``"dinov2"``, or None when the key names no model: legacy keys of an
    adapter made on a headless ``ViTModel``/``Dinov2Model``)."""

    layer: int
    target: str
    which: str
    naming: str
    family: str | None


def strip_prefix(key: str) -> str:
    """An adapter tensor key without PEFT's ``base_model.model.`` prefix."""
    return key[len(PEFT_PREFIX) :] if key.startswith(PEFT_PREFIX) else key


def parse_head_key(name: str) -> str | None:
    """``"weight"``/``"bias"`` for a classifier key (prefix stripped), else None."""
    m = _HEAD_KEY.match(name)
    return m.group(1) if m else None


def parse_lora_key(key: str) -> LoraKey | None:
    """Reads a LoRA tensor key of either naming, on a ViT or a DINOv2.

    Args:
        key: str. An adapter tensor key, with or without ``base_model.model.``.

    Returns:
        A `LoraKey` ``(hf_layer, keras_target, "A" | "B", "current" | "legacy", family)``, or
        None when the key is not LoRA on an attention projection.
    """
    name = strip_prefix(key)
    if m := _CURRENT_VIT_KEY.match(name):
        return LoraKey(int(m.group(1)), HF_TO_KERAS[m.group(2)], m.group(3), "current", "vit")
    if m := _CURRENT_DINOV2_KEY.match(name):
        target = HF_TO_KERAS[m.group(2)]
        return LoraKey(int(m.group(1)), target, m.group(3), "current", "dinov2")
    if m := _LEGACY_KEY.match(name):
        target = HF_TO_KERAS[m.group(3).removeprefix("attention.")]
        family = _FAMILY_OF.get(m.group(1)) if m.group(1) else None
        return LoraKey(int(m.group(2)), target, m.group(4), "legacy", family)
    return None


def hf_lora_key(hf_layer: int, keras_target: str, which: str, model_type: str = "vit") -> str:
    """The current-naming PEFT key of ``lora_A``/``lora_B`` (``which`` = "A"/"B").

    Args:
        hf_layer: int. HF block index, from 0.
        keras_target: str. The keras-hub projection (``"query"``, ...).
        which: str. ``"A"`` or ``"B"``.
        model_type: str. HF ``model_type`` of the base: ``"vit"``, ``"dinov2"`` or
            ``"dinov2_with_registers"`` (its module prefix). Defaults to ``"vit"``.
    """
    hf = _HF_NAME[keras_target]
    if model_type == "vit":
        return PEFT_PREFIX + f"vit.layers.{hf_layer}.attention.{hf}.lora_{which}.weight"
    if model_type not in _FAMILY_OF:
        raise ValueError(f"model_type={model_type!r}: use one of {sorted(_FAMILY_OF)}")
    return PEFT_PREFIX + f"{model_type}.encoder.layer.{hf_layer}.attention.{hf}.lora_{which}.weight"


def keras_lora_path(hf_layer: int, keras_target: str, which: str, family: str = "vit") -> str:
    """The keras-hub variable path of ``lora_kernel_a``/``_b`` (``which`` = "a"/"b").

    Args:
        hf_layer: int. HF block index, from 0.
        keras_target: str. The keras-hub projection.
        which: str. ``"a"`` or ``"b"``.
        family: str. ``"vit"`` or ``"dinov2"`` (`FAMILIES`). Defaults to ``"vit"``.
    """
    _, first, template = _KERAS_PATHS[family]
    return template.format(block=hf_layer + first, target=keras_target, which=which)


def parse_keras_path(path: str) -> tuple[int, str, str] | None:
    """``(hf_layer, keras_target, "a" | "b")`` of a ViT or DINOv2 LoRA variable path, or None.

    Takes `keras_lora_path`'s paths, also with a DINOv2 backbone-name prefix
    (``backbone_encoder/layers_0/...``). None also for LoRA on a layer that is not an attention
    projection PEFT can name.
    """
    for pattern, first, _ in _KERAS_PATHS.values():
        m = pattern.match(path)
        if m is not None:
            if m.group(2) not in _HF_NAME:
                return None
            return int(m.group(1)) - first, m.group(2), m.group(3)
    return None


def keras_lora(a: np.ndarray, b: np.ndarray, target: str, heads: int) -> tuple:
    """HF ``lora_A (r, in)``, ``lora_B (out, r)`` -> keras-hub ``lora_kernel_a/b`` (peft layout).

    Args:
        a: float array ``(r, in)``.
        b: float array ``(out, r)``.
        target: str. The keras-hub projection (``"query"``, ..., ``"attention_output"``).
        heads: int. Attention heads of the ViT.

    Returns:
        ``(lora_kernel_a, lora_kernel_b)``: ``(hidden, r)``, ``(r, heads, head_dim)`` for
        query/key/value; ``(heads, head_dim, r)``, ``(r, hidden)`` for the attention output.
    """
    rank = a.shape[0]
    if target == "attention_output":
        return a.T.reshape(heads, -1, rank), b.T
    return a.T, b.T.reshape(rank, heads, -1)


def hf_lora(a: np.ndarray, b: np.ndarray, target: str, layout: str) -> tuple:
    """keras-hub ``lora_kernel_a/b`` -> HF ``(lora_A (R, in), lora_B (out, R), heads)``.

    The Keras-core layout (``"keras"``, ``A`` per head) on query/key/value is written exactly
    as a rank ``R = heads * r`` LoRA with a block-diagonal ``B``.

    Args:
        a: float array. ``lora_kernel_a``.
        b: float array. ``lora_kernel_b``.
        target: str. The keras-hub projection.
        layout: str. ``"peft"`` or ``"keras"`` (`vit_lora.LORA_LAYOUTS`).

    Returns:
        ``(lora_A, lora_B, heads)``.
    """
    if layout == "peft" or target == "attention_output":  # true rank-r either way
        rank = a.shape[-1]
        heads = b.shape[1] if b.ndim == 3 else a.shape[0]
        return a.reshape(-1, rank).T, b.reshape(rank, -1).T, heads
    # Keras-core layout on q/k/v: A (hidden, heads, r), B (r, head_dim); the update
    # dW[h, n, d] = sum_j A[h, n, j] B[j, d] is, exactly, a rank heads*r LoRA with
    # A' = A reshaped to (hidden, heads*r) and a block-diagonal B'.
    hidden, heads, rank = a.shape
    head_dim = b.shape[1]
    big_b = np.zeros((heads * rank, heads * head_dim), a.dtype)
    for n in range(heads):
        big_b[n * rank : (n + 1) * rank, n * head_dim : (n + 1) * head_dim] = b
    return a.reshape(hidden, heads * rank).T, big_b.T, heads
