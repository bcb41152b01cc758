"""Named experiment configs: small dataclasses, chosen by name, overridden with `--set key=value`.

Every config docstring says the command, the expected runtime and the expected result, in the
manner of big_vision configs. The trainer and the search are generic; configs choose.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

TINY_VIT = {
    "patch_size": 8,
    "num_layers": 4,
    "num_heads": 4,
    "hidden_dim": 96,
    "mlp_dim": 192,
}


@dataclasses.dataclass
class TrainConfig:
    """ViT + LoRA fit settings. Every field can be overridden with `--set field=value`."""

    name: str = "custom"
    # Data.
    dataset: str = "synthetic_fundus"
    dataset_config: str | None = None
    data_dir: str | None = None
    label_mode: str = "grade"  # grade | binary
    image_size: int = 64
    augment: bool = True
    class_weight: str | None = "balanced"  # balanced | none
    balanced_sampling: bool = False
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    # Model.
    backbone: str = "config"  # keras-hub preset name | local preset dir | hf://id | HF dir | config
    backbone_config: dict = dataclasses.field(default_factory=lambda: dict(TINY_VIT))
    pretrain_epochs: int = 0  # >0: full fine-tune a self-made backbone first, save it as a preset
    pooling: str = "token"
    lora_rank: int = 8
    lora_alpha: float | None = None
    lora_targets: tuple = ("query", "value")
    # peft: rank-r A (hidden, r) / B (r, heads, head_dim) as PEFT; keras: Keras core's per-head A.
    lora_layout: str = "peft"
    head_dropout: float = 0.0
    # Optimisation.
    batch_size: int = 32  # GLOBAL batch size; per-replica = batch_size / num_replicas
    epochs: int = 3
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"  # cosine (decay to 5% over the run, 5% warm-up) | constant
    weight_decay: float = 1e-4
    # auto: bfloat16 on GPUs with compute capability >= 8 (float16 before), fp32 on CPU.
    mixed_precision: str | None = "auto"  # auto | none | bfloat16 | float16
    # auto: XLA on GPU/TPU; on CPU "fusible" under mixed precision (XLA fuses the element-wise
    # ops only, matmuls stay on oneDNN; a fully XLA-compiled step is 35% slower on CPU), off in
    # float32. See train.resolve_auto and train.xla_fusion.
    jit_compile: bool | str = "auto"  # auto | true | false | fusible
    seed: int = 0
    # Collapse detection (the write-up's run 2).
    collapse_threshold: float = 0.95
    collapse_patience: int = 1
    stop_on_collapse: bool = False
    monitor: str = "val_qwk"  # val_qwk | val_auroc
    # Runtime.
    strategy: str = "auto"  # auto | default | onedevice | mirrored | multiworker | tpu
    tpu: str | None = None  # TPU name/address for strategy=tpu (None: Cloud TPU VM / env)
    checkpoint_every_steps: int = 50  # 0: back up at epoch ends only
    export: bool = True
    # Test-time augmentation in evaluate/export: none | flip (+ left-right) | flip4 (+ up-down).
    tta: str | None = None
    requires_real_data: bool = False

    @property
    def num_classes(self) -> int:
        return 2 if self.label_mode == "binary" else 5


@dataclasses.dataclass
class SearchConfig:
    """AutoKeras ImageRegressor search settings (`eyegazer search`)."""

    name: str = "custom-search"
    dataset: str = "synthetic_fundus"
    dataset_config: str | None = None
    data_dir: str | None = None
    image_size: int = 32
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    max_trials: int = 2
    epochs: int = 2
    tuner: str = "greedy"  # greedy | bayesian | random | hyperband
    objective: str = "val_loss"
    block_type: str | None = "vanilla"  # None (searched) | vanilla | resnet | xception | efficient
    normalize: bool = True
    augment: bool = False
    batch_size: int = 32
    seed: int = 0
    overwrite: bool = False
    strategy: str = "default"
    export: bool = True
    requires_real_data: bool = False


def _demo() -> TrainConfig:
    """The embedded default: synthetic fundus set (Ben Graham config), tiny ViT, LoRA r=8.

    Stage 1 fully trains a 4-layer ViT on the synthetic train split and saves it with
    `save_to_preset` (the stand-in for ImageNet pretraining: no downloads here); stage 2 loads
    it back with `from_preset`, enables LoRA on query/value and trains adapters + a new head.

    Command: `eyegazer train --config demo --workdir runs/demo`
    Runtime: a few minutes on 2 CPU cores (pretraining stage + LoRA stage).
    Expected: validation QWK >= 0.7 on synthetic_fundus (see README for the measured figure).
    """
    return TrainConfig(
        name="demo",
        dataset_config="ben_graham",
        pretrain_epochs=12,
        epochs=8,
        image_size=64,
        pooling="gap",
        batch_size=32,
        learning_rate=5e-4,
    )


def _blog_run1() -> TrainConfig:
    """Write-up run 1: ViT-Base in21k, 5-class, LoRA r=16 on query/value, 3 epochs.

    Command: `eyegazer prepare aptos2019 --manual-dir ~/Downloads` then
    `eyegazer train --config blog-run1 --workdir runs/blog-run1`
    Runtime: about 20 min on one V100 in the write-up; see benchmarks/NOTES.md for ours.
    Expected: accuracy around 0.76 (the write-up), QWK reported alongside.
    """
    return TrainConfig(
        name="blog-run1",
        dataset="aptos2019",
        backbone="vit_base_patch16_224_imagenet21k",
        backbone_config={},
        image_size=224,
        lora_rank=16,
        lora_alpha=16,
        epochs=3,
        batch_size=32,
        learning_rate=5e-4,
        requires_real_data=True,
    )


def _blog_run2() -> TrainConfig:
    """Write-up run 2: ViT-Large in21k, 5-class, batch 16, class weights + collapse detector.

    The backbone is the ImageNet-21k ViT-L/16 the write-up started from
    (`vit_large_patch16_224_imagenet21k`, converted by keras-hub from
    `google/vit-large-patch16-224-in21k`), not the ImageNet-1k fine-tuned `*_imagenet` preset.

    The write-up's run collapsed onto the majority class (accuracy 0.53). Here class weights are on
    and the collapse detector warns, records and (with `stop_on_collapse`) stops.
    Command: `eyegazer train --config blog-run2 --workdir runs/blog-run2`
    Runtime: hours on one GPU. Expected: no collapse; QWK and AUROC in metrics.json.
    """
    return TrainConfig(
        name="blog-run2",
        dataset="aptos2019",
        backbone="vit_large_patch16_224_imagenet21k",
        backbone_config={},
        image_size=224,
        lora_rank=16,
        lora_alpha=16,
        epochs=3,
        batch_size=16,
        learning_rate=5e-4,
        class_weight="balanced",
        stop_on_collapse=True,
        requires_real_data=True,
    )


def _blog_run3() -> TrainConfig:
    """Write-up run 3: binary (grade 0 vs 1-4), ViT-Large in21k, LoRA r=16 alpha=16 on query/value, 2 epochs.

    Same recipe as the published PEFT adapter `monsoon-nlp/eyegazer-vit-binary` (base
    `google/vit-large-patch16-224-in21k` = keras-hub `vit_large_patch16_224_imagenet21k`).

    Command: `eyegazer train --config blog-run3 --workdir runs/blog-run3`
    Runtime: about an hour on one GPU. Expected: accuracy around 0.90 (the write-up), AUROC,
    sensitivity and specificity in metrics.json.
    """
    return TrainConfig(
        name="blog-run3",
        dataset="aptos2019",
        label_mode="binary",
        backbone="vit_large_patch16_224_imagenet21k",
        backbone_config={},
        image_size=224,
        lora_rank=16,
        lora_alpha=16,
        epochs=2,
        batch_size=16,
        learning_rate=5e-4,
        monitor="val_auroc",
        requires_real_data=True,
    )


def _search_demo() -> SearchConfig:
    """AutoKeras ImageRegressor search on the synthetic set: 2 trials, 32 px.

    Command: `eyegazer search --config search-demo --workdir runs/search-demo`
    Runtime: a few minutes on 2 CPU cores. Expected: QWK with tuned cut-offs >= QWK with rounding.
    """
    return SearchConfig(name="search-demo", max_trials=2, epochs=3, image_size=32)


def _search_aptos() -> SearchConfig:
    """AutoKeras ImageRegressor search on real APTOS 2019 at 224 px.

    Command: `eyegazer prepare aptos2019 --manual-dir ~/Downloads` then
    `eyegazer search --config search-aptos --workdir runs/search-aptos`
    Runtime: hours on one GPU. Expected: QWK around 0.85+ with tuned cut-offs.
    """
    return SearchConfig(
        name="search-aptos",
        dataset="aptos2019",
        image_size=224,
        max_trials=10,
        epochs=15,
        block_type=None,
        augment=True,
        requires_real_data=True,
    )


CONFIGS = {
    "demo": _demo,
    "blog-run1": _blog_run1,
    "blog-run2": _blog_run2,
    "blog-run3": _blog_run3,
    "search-demo": _search_demo,
    "search-aptos": _search_aptos,
}


class ConfigError(ValueError):
    """A config name or `--set` override is wrong; the message says how to fix it."""


def get_config(name: str) -> TrainConfig | SearchConfig:
    """Returns a fresh copy of the named config.

    Args:
        name: str. One of `CONFIGS`.
    """
    if name not in CONFIGS:
        raise ConfigError(f"unknown config '{name}'; choose one of: {', '.join(sorted(CONFIGS))}")
    return CONFIGS[name]()


def _parse_value(text: str, current: Any, field: dataclasses.Field) -> Any:
    """Parses `text` by the field's DECLARED type (not the default's runtime type)."""
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered in ("none", "null"):
        return None
    hint = str(field.type).replace(" ", "")
    kinds = set(hint.split("|"))
    if "dict" in kinds:
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            raise ValueError(f"expected a JSON object such as {{\"num_layers\": 2}}, got '{text}'")
        return value
    if "tuple" in kinds:
        items = json.loads(stripped) if stripped.startswith("[") else stripped.split(",")
        items = [str(x).strip() for x in items if str(x).strip()]
        if not items:
            raise ValueError("expected a comma-separated list, e.g. query,value")
        return tuple(items)
    if "bool" in kinds and lowered in ("true", "false", "yes", "no", "on", "off", "1", "0"):
        return lowered in ("true", "yes", "on", "1")
    if "float" in kinds:
        return float(stripped)
    if "int" in kinds:
        return int(stripped)
    if "bool" in kinds and "str" not in kinds:
        raise ValueError(f"expected true/false, got '{text}'")
    del current
    return stripped


CHOICES = {
    "label_mode": ("grade", "binary"),
    "class_weight": ("balanced", None),
    "pooling": ("token", "gap"),
    "lora_layout": ("peft", "keras"),
    "mixed_precision": ("auto", "bfloat16", "float16", None),
    "jit_compile": ("auto", True, False, "fusible"),
    "monitor": ("val_qwk", "val_auroc", "val_accuracy"),
    "strategy": ("auto", "default", "onedevice", "mirrored", "multiworker", "tpu"),
    "lr_schedule": ("cosine", "constant"),
    "tta": (None, "flip", "flip4"),
    "tuner": ("greedy", "bayesian", "random", "hyperband"),
}
POSITIVE = ("batch_size", "epochs", "image_size", "max_trials", "learning_rate")
NON_NEGATIVE = ("lora_rank", "pretrain_epochs", "checkpoint_every_steps", "head_dropout")


def validate(config):
    """Raises `ConfigError` naming the field and the allowed values for a wrong setting."""
    for name, allowed in CHOICES.items():
        if hasattr(config, name) and getattr(config, name) not in allowed:
            shown = ", ".join("none" if a is None else str(a).lower() for a in allowed)
            raise ConfigError(f"--set {name}={getattr(config, name)}: choose one of {shown}")
    for name in POSITIVE:
        if hasattr(config, name) and not getattr(config, name) > 0:
            raise ConfigError(f"--set {name}={getattr(config, name)}: must be > 0")
    for name in NON_NEGATIVE:
        if hasattr(config, name) and getattr(config, name) < 0:
            raise ConfigError(f"--set {name}={getattr(config, name)}: must be >= 0")
    return config


def apply_overrides(config, overrides: list[str] | dict | None):
    """Applies `key=value` overrides (from `--set`) to a config dataclass, in place.

    Values are parsed with the field's type: ints, floats, booleans (true/false), `none`,
    JSON for dicts (`backbone_config={"num_layers":2}`) and comma lists for tuples.

    Args:
        config: a `TrainConfig` or `SearchConfig`.
        overrides: list of "key=value" strings, or a dict.

    Returns:
        The same config.
    """
    if not overrides:
        return config
    items = overrides.items() if isinstance(overrides, dict) else None
    if items is None:
        items = []
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"--set '{item}': expected key=value, e.g. --set epochs=2")
            key, value = item.split("=", 1)
            items.append((key.strip(), value))
    fields = {f.name: f for f in dataclasses.fields(config)}
    for key, value in items:
        if key not in fields:
            raise ConfigError(
                f"--set {key}=...: '{key}' is not a field of {type(config).__name__}; "
                f"valid keys: {', '.join(sorted(fields))}"
            )
        if isinstance(value, str):
            try:
                value = _parse_value(value, getattr(config, key), fields[key])
            except (ValueError, json.JSONDecodeError) as err:
                raise ConfigError(f"--set {key}={value}: {err}") from None
        setattr(config, key, value)
    return validate(config)


def to_dict(config) -> dict:
    """A JSON-serialisable dict of a config."""
    out = dataclasses.asdict(config)
    out["kind"] = type(config).__name__
    return out


def from_dict(data: dict):
    """Rebuilds a config written by `to_dict` (e.g. a run's `config.json`)."""
    data = dict(data)
    kind = data.pop("kind", "TrainConfig")
    cls = {"TrainConfig": TrainConfig, "SearchConfig": SearchConfig}[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    if cls is TrainConfig and "lora_layout" not in data and data.get("lora_rank", 8):
        data["lora_layout"] = "keras"  # written before lora_layout existed: Keras core's LoRA
    config = cls(**{k: v for k, v in data.items() if k in names})
    if isinstance(getattr(config, "lora_targets", None), list):
        config.lora_targets = tuple(config.lora_targets)
    return config
