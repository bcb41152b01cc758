"""Reading a PEFT LoRA adapter: `read_peft_adapter` -> `PeftAdapter`, or a one-line refusal.

A PEFT LoRA adapter (``PeftModel.save_pretrained``) is a folder with ``adapter_config.json``
(``r``, ``lora_alpha``, ``target_modules``, ``modules_to_save``, ...) and
``adapter_model.safetensors``; its key names (ViT or DINOv2, transformers 5 or 4) are
`peft_layout`'s. What a keras-hub LoRA backbone cannot hold is refused with one line
(`PeftFormatError`): DoRA, rsLoRA, ``bias != "none"``, LoRA on anything but the attention
projections, per-layer ranks or alphas, LoRA on only some layers, a rank that disagrees with the
weights, a config whose ``target_modules`` disagree with the weights.

Example:

```python
import json, os, tempfile
import numpy as np
from safetensors.numpy import save_file
from eyegazer_keras.interop import peft_adapter

folder = tempfile.mkdtemp()  # what PeftModel.save_pretrained writes for r=4 on a 2-block DINOv2
key = "base_model.model.dinov2.encoder.layer.{}.attention.{}.lora_{}.weight"
shapes = {"A": (4, 24), "B": (24, 4)}  # lora_A (r, in), lora_B (out, r); hidden 24
tensors = {
    key.format(i, proj, w): np.zeros(shapes[w], "float32")
    for i in range(2) for proj in ("q_proj", "v_proj") for w in "AB"
}
save_file(tensors, os.path.join(folder, peft_adapter.ADAPTER_WEIGHTS))
config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
with open(os.path.join(folder, peft_adapter.ADAPTER_CONFIG), "w") as f:
    json.dump(config, f)
adapter = peft_adapter.read_peft_adapter(folder)
print(adapter.family, adapter.naming, adapter.rank, adapter.targets)  # dinov2 current 4 (...)
```
"""

from __future__ import annotations

import dataclasses
import os

from eyegazer_keras.interop import peft_layout
from eyegazer_keras.models import hf_vit

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "PeftAdapter",
    "PeftFormatError",
    "read_peft_adapter",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class PeftFormatError(ValueError):
    """An adapter (or a run, for export) that this project cannot represent; says why."""


@dataclasses.dataclass
class PeftAdapter:
    """A PEFT LoRA adapter read into numpy, in HF's layout.

    Attributes:
        source: str. Where it was read from (directory or ``hf://org/name``).
        naming: str. ``"current"`` (transformers >= 5) or ``"legacy"`` (transformers 4).
        rank: int. ``r``.
        alpha: float. ``lora_alpha``.
        targets: tuple of str. keras-hub layer names (``"query"``, ``"value"``, ...).
        num_layers: int. Transformer blocks with LoRA (all of them, from 0).
        lora: dict. ``(layer, keras_target) -> (A (r, in), B (out, r))`` float32 arrays.
        head: dict or None. ``{"weight": (num_labels, features), "bias": (num_labels,)}``
            (features: hidden for a ViT, 2 * hidden for a DINOv2).
        config: dict. The ``adapter_config.json`` as read.
        family: str or None. ``"vit"`` or ``"dinov2"`` as the keys name it (None: legacy keys of
            an adapter made on a headless model; the base decides).
    """

    source: str
    naming: str
    rank: int
    alpha: float
    targets: tuple
    num_layers: int
    lora: dict
    head: dict | None
    config: dict
    family: str | None = None


def read_peft_adapter(source) -> PeftAdapter:
    """Reads and checks a PEFT LoRA adapter folder (local or ``hf://org/name``).

    Args:
        source: str or PathLike. A folder with ``adapter_config.json`` and
            ``adapter_model.safetensors``, or ``hf://org/name``.

    Returns:
        A `PeftAdapter`.

    Raises:
        FileNotFoundError: a file is missing.
        PeftFormatError: the adapter uses something a keras-hub LoRA ViT or DINOv2 cannot hold
            (DoRA, rsLoRA, biases, non-attention targets, per-layer ranks, a rank mismatch,
            keys of two model families, ...).
    """
    from safetensors.numpy import load_file

    source = os.fspath(source)
    if not source.startswith(hf_vit.HF_SCHEME):
        source = os.path.abspath(os.path.expanduser(source))
    config = hf_vit.read_json(source, ADAPTER_CONFIG)
    _check_config(source, config)
    try:
        weights_path = hf_vit.resolve_file(source, ADAPTER_WEIGHTS)
    except FileNotFoundError:
        hf_vit.resolve_file(source, "adapter_model.bin")  # FileNotFoundError if neither exists
        raise PeftFormatError(
            f"{source}: adapter_model.bin (a pickle) is not read; re-save the adapter with "
            "PeftModel.save_pretrained(..., safe_serialization=True)"
        ) from None
    tensors = load_file(weights_path)
    lora, head, naming, family = _split_tensors(source, tensors, config)
    adapter = _check_lora(source, config, lora, head, naming)
    adapter.family = family
    return adapter


def _check_config(source, config):
    def refuse(what):
        raise PeftFormatError(f"{source}/{ADAPTER_CONFIG}: {what}")

    if config.get("peft_type", "LORA") != "LORA":
        refuse(f"peft_type={config.get('peft_type')!r}: only LoRA adapters can be imported")
    if config.get("use_dora"):
        refuse("use_dora=true: DoRA (magnitude-scaled LoRA) has no keras-hub equivalent")
    if config.get("use_rslora"):
        refuse("use_rslora=true: rsLoRA scales by alpha/sqrt(r); eyegazer LoRA uses alpha/r")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        refuse(f"bias={config.get('bias')!r}: only bias='none' (frozen biases) is supported")
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            refuse(f"{key}={config[key]}: per-layer ranks/alphas are not supported")
    if config.get("layers_to_transform") is not None:
        refuse("layers_to_transform is set: eyegazer LoRA covers every transformer block")
    targets = config.get("target_modules") or []
    if isinstance(targets, str):
        refuse(f"target_modules={targets!r} is a regex: list the modules (e.g. [query, value])")
    known = set(peft_layout.HF_TO_KERAS) | {
        "dense"
    }  # legacy o-proj is "dense"; the keys decide which
    bad = sorted(t for t in targets if t not in known and t.rsplit(".", 1)[-1] not in known)
    if bad:
        refuse(
            f"target_modules {bad}: only attention projections (query/key/value, q_proj/k_proj/"
            "v_proj/o_proj) can be imported"
        )
    extra = sorted(set(config.get("modules_to_save") or []) - {"classifier"})
    if extra:
        refuse(f"modules_to_save {extra}: only the classifier head can be imported")


def _split_tensors(source, tensors, config):
    lora, head, namings, families = {}, {}, set(), set()
    for key, value in tensors.items():
        name = peft_layout.strip_prefix(key)
        if which := peft_layout.parse_head_key(name):
            head[which] = value.astype("float32")
            continue
        parsed = peft_layout.parse_lora_key(name)
        if parsed is None:
            what = "LoRA on a non-attention module" if ".lora_" in name else "an unknown tensor"
            raise PeftFormatError(
                f"{source}/{ADAPTER_WEIGHTS}: {key} is {what}; only LoRA on the attention "
                "projections and the classifier head can be imported"
            )
        layer, target, which, naming, family = parsed
        namings.add(naming)
        families.add(family)
        lora.setdefault((layer, target), {})[which] = value.astype("float32")
    if len(namings) > 1:
        raise PeftFormatError(f"{source}: mixes current and legacy transformers key names")
    if len(families - {None}) > 1:
        raise PeftFormatError(f"{source}: mixes ViT and DINOv2 key names")
    if not lora:
        raise PeftFormatError(f"{source}/{ADAPTER_WEIGHTS}: no LoRA weights found")
    if head and set(head) != {"weight", "bias"}:
        raise PeftFormatError(f"{source}: classifier has {sorted(head)}; expected weight + bias")
    if "classifier" in (config.get("modules_to_save") or []) and not head:
        raise PeftFormatError(f"{source}: modules_to_save names classifier but no weights for it")
    return lora, head or None, namings.pop(), (families - {None} or {None}).pop()


def _check_lora(source, config, lora, head, naming):
    rank = int(config.get("r", 8))
    alpha = float(config.get("lora_alpha", 8))
    layers = sorted({i for i, _ in lora})
    targets = tuple(t for t in peft_layout.PROJECTIONS if any(t == k for _, k in lora))
    _check_targets(source, config, targets)
    out = {}
    for i in range(max(layers) + 1):
        for t in targets:
            pair = lora.get((i, t), {})
            if set(pair) != {"A", "B"}:
                raise PeftFormatError(
                    f"{source}: layer {i} {t} has LoRA {sorted(pair) or 'missing'}; eyegazer "
                    "LoRA needs A and B on every transformer block for each target"
                )
            a, b = pair["A"], pair["B"]
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != rank or b.shape[1] != rank:
                raise PeftFormatError(
                    f"{source}: layer {i} {t} lora_A {a.shape} / lora_B {b.shape} disagree with "
                    f"r={rank} in {ADAPTER_CONFIG} (rank mismatch)"
                )
            out[(i, t)] = (a, b)
    return PeftAdapter(source, naming, rank, alpha, targets, len(layers), out, head, config)


def _check_targets(source, config, targets: tuple[str, ...]) -> None:
    """Refuses an adapter whose weights cover other modules than its `target_modules` say.

    PEFT applies LoRA only to `target_modules`; weights for other modules in the file are a
    config and weights that disagree (an edited config, or files from two runs). Importing
    them would give logits PEFT never computes (issue 23: up to 2.9 apart).
    """
    declared = config.get("target_modules") or []
    if not declared:
        return
    wanted = {
        peft_layout.HF_TO_KERAS.get(t.rsplit(".", 1)[-1], "attention_output") for t in declared
    }
    if wanted == set(targets):
        return
    names = {k: v[0] for k, v in peft_layout.PROJECTIONS.items()}
    held = [names[t] for t in targets]
    extra = [names[t] for t in targets if t not in wanted]
    missing = [names[t] for t in peft_layout.PROJECTIONS if t in wanted and t not in targets]
    detail = "; ".join(
        part
        for part in (
            f"weights for {extra} that PEFT would not apply" if extra else "",
            f"no weights for {missing}" if missing else "",
        )
        if part
    )
    raise PeftFormatError(
        f"{source}: {ADAPTER_CONFIG} says target_modules {sorted(declared)} but "
        f"{ADAPTER_WEIGHTS} holds LoRA on {held} ({detail}); the config and weights come from "
        "different runs. Fix target_modules or re-save the adapter with "
        "PeftModel.save_pretrained."
    )
