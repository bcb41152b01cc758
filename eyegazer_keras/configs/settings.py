"""Experiment configs: small dataclasses, chosen by name, overridden with `--set key=value`.

`TrainConfig` and `SearchConfig` hold every setting with its default; the named experiments are
recipes in `named_configs` (the fields that differ), each documented with the command, the
expected runtime and the expected result, in the manner of big_vision configs
(`big_vision/configs/*.py`). The trainer and the search are generic; configs choose. `--set`
values are parsed by the field's declared type (`field_values`).

Each config has a `runlocal` variant, as big_vision's `--config file.py:runlocal`: the same
recipe (task, LoRA layout, class weights, monitor, collapse detector) on the tiny synthetic set
(`synthetic_fundus/tiny`, 80 training photos) with a 2-layer ViT at 32 px and 1 epoch, for
tests, notebooks and checking an install. Ask for it by name:

```python
from eyegazer_keras import configs

config = configs.get_config("blog-run3:runlocal")
assert config.dataset_config == "tiny" and config.task == "binary"
config = configs.apply_overrides(config, ["epochs=2", 'backbone_config={"num_layers": 2}'])
assert config.epochs == 2 and config.backbone_config == {"num_layers": 2}
```

The blog-* configs reproduce the three runs of the eyegazer write-up on APTOS 2019 (see
`named_configs`, and README "Use the published eyegazer-vit-binary adapter"). Their docstrings
quote the write-up's figures; QWK is APTOS 2019's metric.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
from typing import Any

from eyegazer_keras.configs import field_values, named_configs

logger = logging.getLogger(__name__)

# The demo's self-made backbone (stage 1 trains it, stage 2 adds LoRA): 4 layers, hidden 96.
DEMO_VIT = {
    "patch_size": 8,
    "num_layers": 4,
    "num_heads": 4,
    "hidden_dim": 96,
    "mlp_dim": 192,
}
# The `runlocal` backbone: keras-hub's test size (2 layers, hidden 48), patch 8 at 32 px.
RUNLOCAL_VIT = {
    "patch_size": 8,
    "num_layers": 2,
    "num_heads": 2,
    "hidden_dim": 48,
    "mlp_dim": 96,
}
RUNLOCAL_TRAIN = {
    "dataset": "synthetic_fundus",
    "dataset_config": "tiny",
    "image_size": 32,
    "backbone": None,
    "backbone_config": RUNLOCAL_VIT,
    "pretrain_epochs": 0,
    "batch_size": 16,
    "epochs": 1,
    "augment": False,
    "lora_rank": 4,
}
RUNLOCAL_SEARCH = {
    "dataset": "synthetic_fundus",
    "dataset_config": "tiny",
    "image_size": 32,
    "max_trials": 1,
    "epochs": 1,
    "batch_size": 16,
    "block_type": "vanilla",
    "augment": False,
}
RUNLOCAL_SUFFIX = ":runlocal"


@dataclasses.dataclass
class TrainConfig:
    """ViT + LoRA fit settings. Every field can be overridden with `--set field=value`.

    `task` is what the head predicts: "grade" (5 classes, ICDR grades 0-4) or "binary" (grade 0
    vs 1-4, "any DR"). A regression model is the AutoKeras search's (`SearchConfig`).
    `backbone` is a keras-hub preset name, a local preset dir, `hf://id`, a local Hugging Face
    dir, or None for a randomly initialised ViT built from `backbone_config`.
    """

    name: str = "custom"
    # Data.
    dataset: str = "synthetic_fundus"
    dataset_config: str | None = None
    data_dir: str | None = None
    task: str = "grade"  # grade | binary
    image_size: int = 64
    augment: bool = True
    class_weight: str | None = "balanced"  # balanced | none
    balanced_sampling: bool = False
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    # Model.
    backbone: str | None = None  # preset name | local preset dir | hf://id | HF dir | None
    backbone_config: dict = dataclasses.field(default_factory=lambda: dict(DEMO_VIT))
    pretrain_epochs: int = 0  # >0: full fine-tune a self-made backbone first, save it as a preset
    pooling: str = "token"  # token | gap | token_gap (class token + patch mean, HF DINOv2's head)
    lora_rank: int = 8
    lora_alpha: float | None = None
    lora_targets: tuple[str, ...] = ("query", "value")
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
    # float32. See runtime.resolve_auto and runtime.xla_fusion.
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

    def __post_init__(self):
        _upgrade_values(self)

    @property
    def num_classes(self) -> int:
        """2 for `task="binary"`, else 5."""
        return 2 if self.task == "binary" else 5


@dataclasses.dataclass
class SearchConfig:
    """AutoKeras ImageRegressor search settings (`eyegazer search`); the task is regression."""

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

    @property
    def task(self) -> str:
        """Always "regression": the search fits an ImageRegressor on the grade."""
        return "regression"


# Keys and values that older run folders' `config.json` (and older `--set` habits) hold.
RENAMED_KEYS = {
    "label_mode": "task",  # issue 14: one name for grade | binary | regression
}
REMOVED_KEYS = (
    "requires_real_data",  # read nowhere; real-data configs fail fast on the missing dataset
)
LEGACY_VALUES = {
    ("backbone", "config"): None,  # the magic string for "built from backbone_config"
}


def _upgrade_values(config) -> None:
    for (key, old), new in LEGACY_VALUES.items():
        if getattr(config, key, None) == old:
            setattr(config, key, new)


def _runlocal(config):
    """The tiny variant of `config`: `RUNLOCAL_TRAIN` or `RUNLOCAL_SEARCH` applied to it."""
    settings = RUNLOCAL_TRAIN if isinstance(config, TrainConfig) else RUNLOCAL_SEARCH
    config.name = f"{config.name}-runlocal"
    for key, value in settings.items():
        setattr(config, key, dict(value) if isinstance(value, dict) else value)
    return config


def _factory(recipe, config_class):
    """`factory(runlocal=False) -> config` for a `named_configs` recipe, documented by it."""

    def factory(runlocal: bool = False):
        config = config_class(**copy.deepcopy(recipe()))
        return _runlocal(config) if runlocal else config

    factory.__name__ = factory.__qualname__ = recipe.__name__
    factory.__doc__ = inspect.cleandoc(recipe.__doc__ or "") + (
        "\n\nArgs:\n    runlocal: bool. The tiny variant. Defaults to False.\n\n"
        f"Returns:\n    A fresh `{config_class.__name__}`."
    )
    return factory


# name -> `factory(runlocal=False)`; each factory's docstring is its recipe's (`named_configs`).
CONFIGS = {
    **{name: _factory(r, TrainConfig) for name, r in named_configs.TRAIN.items()},
    **{name: _factory(r, SearchConfig) for name, r in named_configs.SEARCH.items()},
}


class ConfigError(ValueError):
    """A config name or `--set` override is wrong; the message says how to fix it."""


def get_config(name: str) -> TrainConfig | SearchConfig:
    """Returns a fresh copy of the named config.

    Args:
        name: str. One of `CONFIGS`, optionally followed by ":runlocal" for its tiny variant
            (e.g. "demo:runlocal").

    Returns:
        A new `TrainConfig` or `SearchConfig`.

    Raises:
        ConfigError: if the name (or its suffix) is unknown; the message lists the names.
    """
    base, runlocal = name, False
    if ":" in name:
        base, suffix = name.split(":", 1)
        if f":{suffix}" != RUNLOCAL_SUFFIX:
            raise ConfigError(
                f"unknown config variant ':{suffix}' in '{name}'; use {base}:runlocal"
            )
        runlocal = True
    if base not in CONFIGS:
        raise ConfigError(f"unknown config '{name}'; choose one of: {', '.join(sorted(CONFIGS))}")
    return CONFIGS[base](runlocal=runlocal)


def names(kind: str | None = None) -> list[str]:
    """The names in `CONFIGS`, in definition order.

    Args:
        kind: str or None. "train" (only `TrainConfig`s), "search" (only `SearchConfig`s) or
            None (all). Defaults to None.

    Returns:
        A list of config names.

    Raises:
        ValueError: for another `kind`.
    """
    classes = {None: (TrainConfig, SearchConfig), "train": TrainConfig, "search": SearchConfig}
    if kind not in classes:
        raise ValueError(f"kind must be 'train', 'search' or None, got {kind!r}")
    return [n for n, factory in CONFIGS.items() if isinstance(factory(), classes[kind])]


CHOICES = {
    "task": ("grade", "binary"),
    "class_weight": ("balanced", None),
    "pooling": ("token", "gap", "token_gap"),
    "lora_layout": ("peft", "keras"),
    "mixed_precision": ("auto", "bfloat16", "float16", None),
    "jit_compile": ("auto", True, False, "fusible"),
    "monitor": ("val_qwk", "val_auroc", "val_accuracy"),
    "strategy": ("auto", "default", "onedevice", "mirrored", "multiworker", "tpu"),
    "lr_schedule": ("cosine", "constant"),
    "tta": (None, "flip", "flip4"),
    "tuner": ("greedy", "bayesian", "random", "hyperband"),
}
WHY_NOT = {
    ("task", "regression"): "a grade regressor is `eyegazer search` (AutoKeras ImageRegressor)",
}
POSITIVE = ("batch_size", "epochs", "image_size", "max_trials", "learning_rate")
NON_NEGATIVE = ("lora_rank", "pretrain_epochs", "checkpoint_every_steps", "head_dropout")


def validate(config):
    """Checks a config's values.

    Args:
        config: a `TrainConfig` or `SearchConfig`.

    Returns:
        The same config.

    Raises:
        ConfigError: naming the field and the allowed values for a wrong setting.
    """
    fields = {f.name for f in dataclasses.fields(config)}
    for name, allowed in CHOICES.items():
        value = getattr(config, name, None)
        if name in fields and value not in allowed:
            shown = ", ".join("none" if a is None else str(a).lower() for a in allowed)
            why = WHY_NOT.get((name, value))
            raise ConfigError(
                f"--set {name}={value}: choose one of {shown}" + (f" ({why})" if why else "")
            )
    for name in POSITIVE:
        if name in fields and not getattr(config, name) > 0:
            raise ConfigError(f"--set {name}={getattr(config, name)}: must be > 0")
    for name in NON_NEGATIVE:
        if name in fields and getattr(config, name) < 0:
            raise ConfigError(f"--set {name}={getattr(config, name)}: must be >= 0")
    return config


def _items(overrides) -> list[tuple[str, Any]]:
    if isinstance(overrides, dict):
        return list(overrides.items())
    items = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set '{item}': expected key=value, e.g. --set epochs=2")
        key, value = item.split("=", 1)
        items.append((key.strip(), value))
    return items


def apply_overrides(config, overrides: list[str] | dict | None):
    """Applies `key=value` overrides (from `--set`) to a config dataclass, in place.

    String values are parsed with the field's declared type (`field_values.parse_value`): ints, floats,
    booleans (true/false), `none`, JSON for dicts (`backbone_config={"num_layers":2}`) and comma
    lists for tuples. Dict values are taken as they are. A renamed key (`label_mode`, now
    `task`) is applied to its new name with a logged notice.

    Args:
        config: a `TrainConfig` or `SearchConfig`.
        overrides: list of "key=value" strings, or a dict, or None.

    Returns:
        The same config, validated.

    Raises:
        ConfigError: for a malformed item, an unknown key (the message lists the valid keys),
            a value that does not parse, or a value `validate` refuses.
    """
    if not overrides:
        return config
    fields = {f.name for f in dataclasses.fields(config)}
    for key, value in _items(overrides):
        if key in RENAMED_KEYS and RENAMED_KEYS[key] in fields:
            logger.warning("config key '%s' is now '%s'", key, RENAMED_KEYS[key])
            key = RENAMED_KEYS[key]
        if key not in fields:
            raise ConfigError(
                f"--set {key}=...: '{key}' is not a field of {type(config).__name__}; "
                f"valid keys: {', '.join(sorted(fields))}"
            )
        if isinstance(value, str):
            try:
                value = field_values.parse_value(type(config), key, value)
            except ValueError as err:
                raise ConfigError(f"--set {key}={value}: {err}") from None
        setattr(config, key, value)
    _upgrade_values(config)
    return validate(config)


def to_dict(config) -> dict:
    """A JSON-serialisable dict of a config, with its class under "kind".

    Args:
        config: a `TrainConfig` or `SearchConfig`.

    Returns:
        A dict `from_dict` reads back.
    """
    out = dataclasses.asdict(config)
    out["kind"] = type(config).__name__
    return out


def from_dict(data: dict):
    """Rebuilds a config written by `to_dict` (e.g. a run's `config.json`), old ones included.

    Older files are upgraded: `label_mode` is read as `task`, `backbone: "config"` as None,
    `requires_real_data` is dropped, and a LoRA run written before `lora_layout` existed gets
    Keras core's layout (`"keras"`), which is what it trained with. Unknown keys are ignored.

    Args:
        data: dict. As `to_dict` returns (JSON-decoded).

    Returns:
        A `TrainConfig` or `SearchConfig`.

    Raises:
        KeyError: if "kind" names no config class.
    """
    data = dict(data)
    kind = data.pop("kind", "TrainConfig")
    cls = {"TrainConfig": TrainConfig, "SearchConfig": SearchConfig}[kind]
    names_ = {f.name for f in dataclasses.fields(cls)}
    for old, new in RENAMED_KEYS.items():
        if old in data and new in names_:
            data.setdefault(new, data.pop(old))
    for key in REMOVED_KEYS:
        data.pop(key, None)
    if cls is TrainConfig and "lora_layout" not in data and data.get("lora_rank", 8):
        data["lora_layout"] = "keras"  # written before lora_layout existed: Keras core's LoRA
    config = cls(**{k: v for k, v in data.items() if k in names_})
    if isinstance(getattr(config, "lora_targets", None), list):
        config.lora_targets = tuple(config.lora_targets)
    _upgrade_values(config)
    return config
