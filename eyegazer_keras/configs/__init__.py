"""Experiment configs: the dataclasses, the named recipes (each with a ``runlocal`` branch) and
``--set key=value`` parsing.

* `settings`: `TrainConfig`, `SearchConfig`, `get_config`, `apply_overrides`, `validate`,
  `to_dict` / `from_dict` (its public names are re-exported here, so
  ``from eyegazer_keras import configs; configs.get_config(...)`` reads as before);
* `named_configs`: the recipes, one function each, documented with command, runtime and result;
* `field_values`: a ``--set`` value parsed by the field's declared type.

Floor 0: imports nothing else from the package (and no TensorFlow).
"""

from eyegazer_keras.configs.settings import (
    CHOICES,
    CONFIGS,
    DEMO_VIT,
    LEGACY_VALUES,
    NON_NEGATIVE,
    POSITIVE,
    REMOVED_KEYS,
    RENAMED_KEYS,
    RUNLOCAL_SEARCH,
    RUNLOCAL_SUFFIX,
    RUNLOCAL_TRAIN,
    RUNLOCAL_VIT,
    WHY_NOT,
    ConfigError,
    SearchConfig,
    TrainConfig,
    apply_overrides,
    from_dict,
    get_config,
    names,
    to_dict,
    validate,
)

__all__ = [
    "CHOICES",
    "CONFIGS",
    "DEMO_VIT",
    "LEGACY_VALUES",
    "NON_NEGATIVE",
    "POSITIVE",
    "REMOVED_KEYS",
    "RENAMED_KEYS",
    "RUNLOCAL_SEARCH",
    "RUNLOCAL_SUFFIX",
    "RUNLOCAL_TRAIN",
    "RUNLOCAL_VIT",
    "WHY_NOT",
    "ConfigError",
    "SearchConfig",
    "TrainConfig",
    "apply_overrides",
    "from_dict",
    "get_config",
    "names",
    "to_dict",
    "validate",
]
