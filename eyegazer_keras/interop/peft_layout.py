"""PEFT LoRA tensors <-> keras-hub LoRA variables: the key names and the weight layouts.

Pure functions on names and numpy arrays (no files, no checks: `peft` refuses what does not
fit). A PEFT adapter on a Hugging Face ViT names its tensors, per transformers version:

* transformers >= 5 ("current"): ``base_model.model.vit.layers.{i}.attention.{q_proj,k_proj,
  v_proj,o_proj}.lora_{A,B}.weight``;
* transformers 4 ("legacy"): ``base_model.model.vit.encoder.layer.{i}.attention.attention.
  {query,key,value}`` / ``...attention.output.dense`` ``.lora_{A,B}.weight``;

plus ``base_model.model.classifier.{weight,bias}``. ``lora_A`` is ``(r, in)``, ``lora_B``
``(out, r)``; the update is ``(alpha / r) * B @ A`` (Hu et al., "LoRA", ICLR 2022).

keras-hub's ViT (`vit_lora.build_vit_classifier`) holds HF layer ``i`` as
``vit_encoder/transformer_block_{i+1}/mha/{query,key,value,attention_output}`` with variables
``lora_kernel_a`` / ``lora_kernel_b``: with ``lora_layout="peft"``, ``A.T`` and ``B.T``
reshaped to ``(r, heads, head_dim)`` (query/key/value) or ``A.T`` reshaped to
``(heads, head_dim, r)`` and ``B.T`` (attention output).

Example:

```python
import numpy as np
from eyegazer_keras.interop import peft_layout

key = "base_model.model.vit.layers.0.attention.q_proj.lora_A.weight"
print(peft_layout.parse_lora_key(key))  # (0, 'query', 'A', 'current')
a, b = np.ones((2, 8), "float32"), np.ones((8, 2), "float32")  # r=2, hidden 8
ka, kb = peft_layout.keras_lora(a, b, "query", heads=2)  # (8, 2), (2, 2, 4)
a2, b2, heads = peft_layout.hf_lora(ka, kb, "query", "peft")
assert np.array_equal(a2, a) and np.array_equal(b2, b) and heads == 2
```
"""

from __future__ import annotations

import re

import numpy as np

__all__ = [
    "HF_TO_KERAS",
    "PEFT_PREFIX",
    "PROJECTIONS",
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
_CURRENT_KEY = re.compile(
    r"^(?:vit\.)?layers\.(\d+)\.attention\.(q_proj|k_proj|v_proj|o_proj)\.lora_([AB])\.weight$"
)
_LEGACY_KEY = re.compile(
    r"^(?:vit\.)?encoder\.layer\.(\d+)\.attention\."
    r"(attention\.query|attention\.key|attention\.value|output\.dense)\.lora_([AB])\.weight$"
)
_HEAD_KEY = re.compile(r"^classifier\.(?:modules_to_save\.default\.)?(weight|bias)$")
_KERAS_PATH = re.compile(r"^vit_encoder/transformer_block_(\d+)/mha/(\w+)/lora_kernel_([ab])$")


def strip_prefix(key: str) -> str:
    """An adapter tensor key without PEFT's ``base_model.model.`` prefix."""
    return key[len(PEFT_PREFIX) :] if key.startswith(PEFT_PREFIX) else key


def parse_head_key(name: str) -> str | None:
    """``"weight"``/``"bias"`` for a classifier key (prefix stripped), else None."""
    m = _HEAD_KEY.match(name)
    return m.group(1) if m else None


def parse_lora_key(key: str) -> tuple[int, str, str, str] | None:
    """Reads a LoRA tensor key of either naming.

    Args:
        key: str. An adapter tensor key, with or without ``base_model.model.``.

    Returns:
        ``(hf_layer, keras_target, "A" | "B", "current" | "legacy")``, or None when the key is
        not LoRA on an attention projection.
    """
    name = strip_prefix(key)
    current, legacy = _CURRENT_KEY.match(name), _LEGACY_KEY.match(name)
    m = current or legacy
    if m is None:
        return None
    target = HF_TO_KERAS[m.group(2).removeprefix("attention.")]
    return int(m.group(1)), target, m.group(3), "current" if current else "legacy"


def hf_lora_key(hf_layer: int, keras_target: str, which: str) -> str:
    """The current-naming PEFT key of ``lora_A``/``lora_B`` (``which`` = "A"/"B")."""
    hf = _HF_NAME[keras_target]
    return PEFT_PREFIX + f"vit.layers.{hf_layer}.attention.{hf}.lora_{which}.weight"


def keras_lora_path(hf_layer: int, keras_target: str, which: str) -> str:
    """The keras-hub variable path of ``lora_kernel_a``/``_b`` (``which`` = "a"/"b")."""
    return f"vit_encoder/transformer_block_{hf_layer + 1}/mha/{keras_target}/lora_kernel_{which}"


def parse_keras_path(path: str) -> tuple[int, str, str] | None:
    """``(hf_layer, keras_target, "a" | "b")`` of a LoRA variable path, or None.

    None also for LoRA on a layer that is not an attention projection PEFT can name.
    """
    m = _KERAS_PATH.match(path)
    if m is None or m.group(2) not in _HF_NAME:
        return None
    return int(m.group(1)) - 1, m.group(2), m.group(3)


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
