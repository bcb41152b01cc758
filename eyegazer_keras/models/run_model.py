"""The model of an `eyegazer train` run folder: the files that rebuild it, and rebuilding it.

A run folder (written by ``eyegazer train``) holds what rebuilds its model without the dataset:

* ``config.json``: the resolved `configs.TrainConfig` (backbone source, LoRA settings, image size,
  mixed precision, seed);
* ``dataset.json``: what the run knows of its data, among it the ``preprocessing`` spec
  (`fundus.PreprocessingSpec`) that the model's preprocessor carries;
* ``checkpoints/best_adapter.npz``: the best epoch's trainable weights (LoRA ``A``/``B`` and head);
* ``pretrained_backbone/``: the backbone of a two-stage run (``pretrain_epochs > 0``).

`load_run_model` is the one place that turns those files into a `FundusImageClassifier`:
`FundusImageClassifier.from_preset(run_dir)` and ``runs.load_run`` (which adds the run's
error messages and its config) both call it, so the models layer reads a run folder without
importing the runs layer that writes it.
"""

from __future__ import annotations

import json
import os

import keras

from eyegazer_keras import fundus
from eyegazer_keras.configs import settings as configs_lib

__all__ = [
    "BEST_ADAPTER",
    "PRETRAINED_DIR",
    "RUN_CONFIG",
    "RUN_DATA",
    "dtype_policy",
    "is_run_folder",
    "load_run_model",
    "read_run_config",
    "read_run_spec",
]

RUN_CONFIG = "config.json"
RUN_DATA = "dataset.json"
BEST_ADAPTER = os.path.join("checkpoints", "best_adapter.npz")
PRETRAINED_DIR = "pretrained_backbone"


def is_run_folder(path: str) -> bool:
    """True for a folder whose ``config.json`` is an `eyegazer train` config (it has
    ``lora_rank``), not a keras-hub preset's or a Hugging Face checkpoint's."""
    config = os.path.join(path, RUN_CONFIG)
    if not os.path.isfile(config):
        return False
    with open(config) as f:
        try:
            content = json.load(f)
        except json.JSONDecodeError:
            return False
    return isinstance(content, dict) and "lora_rank" in content and "registered_name" not in content


def read_run_config(workdir: str) -> configs_lib.TrainConfig:
    """The run's `configs.TrainConfig`, from its ``config.json``.

    Raises:
        FileNotFoundError: no ``config.json`` in `workdir`.
        ValueError: a field the current `TrainConfig` does not know (`configs.from_dict`).
    """
    path = os.path.join(workdir, RUN_CONFIG)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {workdir} an `eyegazer train` workdir?")
    with open(path) as f:
        return configs_lib.from_dict(json.load(f))


def read_run_spec(workdir: str) -> fundus.PreprocessingSpec | None:
    """The run's `fundus.PreprocessingSpec`, from ``dataset.json``; None when the run has none
    (a run from before the file existed: ``runs.RunData.of_run`` reads it from the dataset)."""
    path = os.path.join(workdir, RUN_DATA)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        stored = json.load(f)
    preprocessing = stored.get("preprocessing")
    return fundus.PreprocessingSpec.from_dict(preprocessing) if preprocessing else None


def dtype_policy(config) -> str | None:
    """The Keras dtype policy of a run's backbone: ``"mixed_bfloat16"`` / ``"mixed_float16"``
    under mixed precision, else None (float32); ``"auto"`` not yet resolved counts as None."""
    return {"bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}.get(
        config.mixed_precision or "", None
    )


def _build(config, backbone, spec):
    from eyegazer_keras.models import vit_lora  # vit_lora builds on the task module

    return vit_lora.build_from_config(config, backbone, dtype_policy(config), spec=spec)


def load_run_model(workdir: str, config=None, spec=None, strategy=None, build=None):
    """Rebuilds a run's model with its best epoch's weights.

    Args:
        workdir: str. An `eyegazer train` run folder (any working directory; copied runs work).
        config: `configs.TrainConfig` or None. Defaults to None (read from ``config.json``).
        spec: `fundus.PreprocessingSpec` or None. The spec the preprocessor carries. Defaults to
            None (read from ``dataset.json`` when `config` is None too).
        strategy: `tf.distribute.Strategy` or None. Scope to build in. Defaults to the current.
        build: callable ``(config, backbone, spec) -> FundusImageClassifier`` or None. Builds
            the model (``runs.build_model`` adds its error messages). Defaults to None
            (`vit_lora.build_from_config` with `dtype_policy`).

    Returns:
        `FundusImageClassifier`: ``float32 [B, S, S, 3]`` RGB 0..255 in, float32 softmax
        ``[B, num_classes]`` out, the best adapter loaded. The backbone is built under the
        run's seed (a random ``"config"`` backbone is the training run's frozen weights).

    Raises:
        FileNotFoundError: no ``config.json``, or no best adapter (no finished epoch yet).
        ValueError / OSError: the backbone cannot be built or loaded.
    """
    import tensorflow as tf

    from eyegazer_keras.models import vit_lora

    workdir = os.path.abspath(os.path.expanduser(workdir))
    if config is None:
        config = read_run_config(workdir)
        spec = read_run_spec(workdir)
    best = os.path.join(workdir, BEST_ADAPTER)
    if not os.path.exists(best):
        raise FileNotFoundError(f"{best} not found: the run has not finished an epoch yet")
    backbone = os.path.join(workdir, PRETRAINED_DIR) if config.pretrain_epochs else config.backbone
    with (strategy or tf.distribute.get_strategy()).scope():
        keras.utils.set_random_seed(config.seed)  # as training built it
        model = (build or _build)(config, backbone, spec)
    vit_lora.load_adapter(model, best)
    return model
