"""The export's compute precision: float32, or bfloat16 on CPUs with bf16 units.

`eyegazer export --precision {float32,bfloat16,auto}` (`export.export_saved_model(precision=)`):

* ``"float32"``: the model as trained in float32 (the default; every CPU).
* ``"bfloat16"``: the backbone's matmuls (dense layers, attention, the patch convolution) run
  in bfloat16 on its float32 weights (`bfloat16_backbone`: cast to bf16 inside the graph); the
  residual stream, LayerNorm, softmax, GELU, the pixel normalisation, the head and every output
  stay float32. On a CPU with bf16 units (AVX512-BF16, AMX-BF16) oneDNN runs its matmuls at
  about twice the float32 rate; on one without (AVX2 only) it emulates them and is slower
  than float32 (benchmarks/NOTES.md).
* ``"auto"``: ``"bfloat16"`` when this machine's CPU has bf16 units (`cpu_bf16_flags`), else
  ``"float32"``. The choice and the flags it was made on are recorded in the export's metadata
  (``precision``) and model card: an export made for a bf16 CPU stays bf16 on any machine.

Example:

```python
from eyegazer_keras.serving import precision

precision.resolve("auto")  # "bfloat16" on an AVX512-BF16 / AMX host, else "float32"
```
"""

from __future__ import annotations

import contextlib
import os
import platform

__all__ = [
    "BF16_FLAGS",
    "PRECISIONS",
    "bfloat16_backbone",
    "cpu_bf16_flags",
    "cpu_model",
    "describe",
    "resolve",
]

PRECISIONS = ("float32", "bfloat16", "auto")
# /proc/cpuinfo flags of CPU bf16 units oneDNN uses (AVX512-BF16 dot products; AMX tiles).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else `platform.processor()`; a str."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The bf16-related ISA flags of this CPU (`BF16_FLAGS` plus ``amx_tile``), in that order.

    Args:
        cpuinfo: str or None. The text of ``/proc/cpuinfo``; None reads this machine's. Where
            there is none (macOS, Windows) the list is empty: ``"auto"`` then picks float32.

    Returns:
        list of str, e.g. ``["avx512_bf16"]`` on AMD Zen 4/5, ``["avx512_bf16", "amx_bf16",
        "amx_tile"]`` on Intel Sapphire Rapids, ``[]`` on an AVX2-only CPU.
    """
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            break
    return [f for f in (*BF16_FLAGS, "amx_tile") if f in flags]


def resolve(requested: str, cpuinfo: str | None = None) -> str:
    """``"float32"`` or ``"bfloat16"`` for a requested precision.

    Args:
        requested: str. One of `PRECISIONS`.
        cpuinfo: str or None. ``/proc/cpuinfo`` text for ``"auto"`` (None: this machine's).

    Returns:
        ``"bfloat16"`` for ``"bfloat16"``, and for ``"auto"`` on a CPU with a `BF16_FLAGS` unit;
        else ``"float32"``.

    Raises:
        ValueError: `requested` is not one of `PRECISIONS`.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision={requested!r} is not one of {', '.join(PRECISIONS)}.")
    if requested == "auto":
        has_bf16 = any(f in BF16_FLAGS for f in cpu_bf16_flags(cpuinfo))
        return "bfloat16" if has_bf16 else "float32"
    return requested


def describe(requested: str, compute: str) -> dict:
    """The export metadata's ``precision`` entry.

    Args:
        requested: str. What the caller asked for (one of `PRECISIONS`).
        compute: str. What `resolve` chose.

    Returns:
        ``{"compute", "requested", "outputs", "weights", "export_cpu", "export_cpu_bf16"}``.
    """
    bf16 = compute == "bfloat16"
    return {
        "compute": compute,
        "requested": requested,
        "outputs": "float32",
        "weights": "float32 (cast to bfloat16 in the graph)" if bf16 else "float32",
        "note": (
            "backbone matmuls in bfloat16: fast on CPUs with bf16 units (AVX512-BF16, "
            "AMX-BF16), slower than float32 on CPUs without them"
            if bf16
            else "float32 throughout"
        ),
        "export_cpu": cpu_model(),
        "export_cpu_bf16": cpu_bf16_flags(),
        "cpu_count": os.cpu_count(),
    }


def _backbone(model):
    """The keras-hub backbone inside `model` (a `Backbone` layer), or None."""
    import keras_hub

    for layer in model._flatten_layers(include_self=True):
        if isinstance(layer, keras_hub.models.Backbone):
            return layer
    return None


def _matmul_layers(backbone) -> list:
    """The backbone's layers that multiply matrices: Dense, EinsumDense, convolutions and
    attention (with its projections and core)."""
    import keras

    kinds = (
        keras.layers.Dense,
        keras.layers.EinsumDense,
        keras.layers.Conv1D,
        keras.layers.Conv2D,
        keras.layers.MultiHeadAttention,
    )
    found = []
    for layer in backbone._flatten_layers(include_self=False):
        if isinstance(layer, kinds):
            found.extend(layer._flatten_layers(include_self=True))
    return list({id(layer): layer for layer in found}.values())


@contextlib.contextmanager
def bfloat16_backbone(model):
    """While active, the matmuls of `model`'s keras-hub backbone compute in bfloat16.

    The matmul layers (`_matmul_layers`: Dense, EinsumDense, convolutions, attention) get the
    ``mixed_bfloat16`` policy: their float32 weights and inputs are cast to bf16 in the graph and
    their outputs are bf16. Everything between them (LayerNorm, the residual adds, the class
    token and position embeddings) stays float32 and casts their outputs back, and the MLP's
    exact GELU and the attention softmax run in float32 (`fast_layers`). Against switching the
    whole backbone to ``mixed_bfloat16`` this halves the error on ViT-S/16 (max |delta p| 3.4e-3
    vs 7.2e-3 against float32) and was not slower (benchmarks/NOTES.md).

    The built layers' dtype policies are switched in place and restored on exit, so a function
    traced inside (the export's endpoints) keeps the bf16 graph while the caller's model is
    unchanged afterwards.

    Args:
        model: keras.Model holding a built `keras_hub.models.Backbone` (ViT, DINOv2).

    Raises:
        ValueError: `model` holds no keras-hub backbone.
    """
    from eyegazer_keras.models import fast_layers

    backbone = _backbone(model)
    if backbone is None:
        raise ValueError(
            f"precision='bfloat16' needs a keras-hub backbone inside the model; "
            f"{type(model).__name__} has none. Export it with precision='float32'."
        )
    layers = _matmul_layers(backbone)
    saved = [(layer, layer.dtype_policy, getattr(layer, "activation", None)) for layer in layers]
    try:
        for layer in layers:
            layer.dtype_policy = "mixed_bfloat16"
        fast_layers.use_fast_layers(backbone, lora=False, attention=False)
        yield model
    finally:
        for layer, policy, activation in saved:
            layer.dtype_policy = policy
            if activation is not None:
                layer.activation = activation
