"""The fit workflow: config -> data -> model (in strategy scope) -> loop -> metrics -> export.

It reproduces the monsoon-nlp "eyegazer-vit-binary" write-up (fine-tuning ViT-Large with PEFT
LoRA on APTOS 2019) with keras-hub. The dataset facts a run needs (labels, majority class,
task, preprocessing) are resolved once into a `RunData` and passed down; the loop is
`trainer.Trainer`, the callbacks are in `callbacks`, the process settings in `runtime`.

Workdir layout (written by the chief only); the folder is self-contained: `export_run` needs
only it, `evaluate_run` it and the prepared dataset, from any working directory:

```
config.json            resolved config (absolute data_dir / local backbone paths)
dataset.json           `RunData`: dataset version, splits, task, class names, majority class,
                       the preprocessing (stored size, Ben Graham, crop, normalisation)
pretrained_backbone/   (configs with pretrain_epochs) the self-made keras-hub preset
backup/                tf.train.CheckpointManager backups while a run is in progress
checkpoints/best_adapter.npz  adapter of the best epoch (by validation QWK or AUROC)
adapter.npz            LoRA + head + every other trainable variable, keyed by path
logs/                  TensorBoard
history.json, metrics_validation.json, *.png, run.json
export/                SavedModel + MODEL_CARD.md
```
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import keras
import tensorflow as tf

from eyegazer_keras import files
from eyegazer_keras.configs import settings as configs_lib
from eyegazer_keras.data import datasets as data
from eyegazer_keras.data import pipeline
from eyegazer_keras.evaluation import metrics
from eyegazer_keras.models import vit_lora
from eyegazer_keras.runs import evaluation
from eyegazer_keras.runs.export import export_run
from eyegazer_keras.runs.folder import (
    BEST_ADAPTER,
    PRETRAINED_DIR,
    RUN_DATA,
    RunData,
    RunError,
    build_model,
    find_backbone,
    predict_split,
    split_gate,
)
from eyegazer_keras.runs.folder import split_args as _split_args
from eyegazer_keras.training import distribute
from eyegazer_keras.training.callbacks import (
    BestAdapterCheckpoint,
    CollapseDetector,
    TrainingBackup,
    backup_position,
)
from eyegazer_keras.training.runtime import configure_runtime, resolve_auto, xla_fusion
from eyegazer_keras.training.trainer import Trainer, make_optimizer

logger = logging.getLogger(__name__)

PRETRAINED_DONE = "EYEGAZER_PRESET_COMPLETE"


# --------------------------------------------------------------------------------------------
# One training stage
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Stage:
    """One fit: the LoRA run itself, or the demo's pretraining stage before it."""

    config: configs_lib.TrainConfig
    run_data: RunData
    strategy: tf.distribute.Strategy
    write: distribute.WriteDir
    stage_dir: str  # where this stage writes (`write.path` or `write.path/pretrain`)
    epochs: int
    best_path: str | None = None  # relative to the workdir; None: no best-adapter checkpoint


def _build_in_scope(stage: _Stage, model_fn, steps: int):
    config = stage.config
    with stage.strategy.scope():
        # Seeded right before the build: `load_run` rebuilds the same frozen initial weights
        # for a run on a random ViT (`backbone` None), which the adapter's base fingerprint checks.
        keras.utils.set_random_seed(config.seed)
        model = model_fn()
        optimizer = make_optimizer(config, total_steps=steps * stage.epochs)
        model.compile(optimizer=optimizer)  # the backup checkpoints model.optimizer too
        optimizer.build(model.trainable_variables)
    return model, optimizer


def _datasets(stage: _Stage):
    """`(train_fn(epoch) -> dataset, validation dataset)` for the stage."""
    config, run_data = stage.config, stage.run_data
    num_classes = config.num_classes
    weights = (  # balanced sampling already evens classes out: do not correct twice
        pipeline.class_weights(run_data.train_targets, num_classes)
        if config.class_weight == "balanced" and not config.balanced_sampling
        else {c: 1.0 for c in range(num_classes)}
    )
    split_train = data.load_split(*_split_args(config, "train"))
    split_val = data.load_split(*_split_args(config, "validation"))
    cached_train = pipeline.cached_images(split_train, config.image_size)
    common = dict(task=config.task, image_size=config.image_size)

    def train_fn(epoch: int):
        return pipeline.make_dataset(
            cached_train,
            batch_size=config.batch_size,
            training=True,
            augment=config.augment,
            seed=config.seed * 1000 + epoch,
            class_weight=weights,
            balanced_sampling=config.balanced_sampling,
            drop_remainder=True,
            cache=False,
            num_classes=num_classes,
            **common,
        )

    val_ds = pipeline.make_dataset(
        split_val, batch_size=config.batch_size, num_classes=num_classes, **common
    )
    return train_fn, val_ds


def _evaluate_fn(stage: _Stage, trainer: Trainer, val_ds):
    def evaluate():
        m = metrics.classification_metrics(
            stage.run_data.val_targets,
            trainer.predict(val_ds),
            stage.run_data.task,
            majority_class=stage.run_data.majority_class,
            collapse_threshold=stage.config.collapse_threshold,
        )
        dist = m["prediction_distribution"]
        top = max(dist, key=lambda k: dist[k]) if isinstance(dist, dict) else None
        return {
            "val_accuracy": m["accuracy"],
            "val_qwk": m["qwk"] if m["qwk"] is not None else 0.0,
            "val_auroc": m["auroc"] if m["auroc"] is not None else 0.5,
            "val_collapse_fraction": m["collapse_fraction"],
            "val_majority_prediction": top,
        }

    return evaluate


def _callbacks(stage: _Stage):
    """`(callbacks, backup, collapse detector)`; the backup comes last."""
    config, write = stage.config, stage.write
    stage_name = os.path.relpath(stage.stage_dir, write.path)
    backup = TrainingBackup(
        os.path.normpath(os.path.join(write.real, stage_name, "backup")),
        os.path.normpath(os.path.join(stage.stage_dir, "backup")),
        chief=write.chief,
        save_freq=config.checkpoint_every_steps or "epoch",
    )
    collapse = CollapseDetector(
        config.collapse_threshold, config.collapse_patience, config.stop_on_collapse
    )
    callbacks = [collapse]
    if stage.best_path:
        resuming = backup_position(backup.backup_dir) is not None
        best = write.join(stage.best_path)
        if not resuming and write.chief:  # a fresh run never reuses an older run's best
            for stale in (best, best + ".json"):
                if os.path.exists(stale):
                    os.remove(stale)
        callbacks.append(BestAdapterCheckpoint(best, config.monitor, write.chief, resuming))
    callbacks.append(backup)  # last: its epoch-end backup covers everything above
    return callbacks, backup, collapse


def _run_stage(stage: _Stage, model_fn, progress=None):
    """Builds a model in scope and trains it with backup/resume.

    Returns:
        `(model, trainer, history, collapse detector)`.
    """
    config = stage.config
    distribute.per_replica_batch_size(config.batch_size, stage.strategy)
    n_train = len(stage.run_data.train_targets)
    steps = n_train // config.batch_size
    if steps < 1:
        raise RunError(
            f"the train split has {n_train} examples, fewer than one global batch "
            f"({config.batch_size}); lower --set batch_size"
        )
    model, optimizer = _build_in_scope(stage, model_fn, steps)
    trainer = Trainer(model, optimizer, stage.strategy, config.batch_size, config.jit_compile)
    if progress:
        progress(f"model: {vit_lora.format_trainable_parameters(model)}")
    train_fn, val_ds = _datasets(stage)
    callbacks, backup, collapse = _callbacks(stage)
    history = trainer.fit(
        train_fn,
        steps,
        stage.epochs,
        _evaluate_fn(stage, trainer, val_ds),
        callbacks,
        backup,
        log_dir=os.path.join(stage.write.path, "logs", os.path.basename(stage.stage_dir)),
        progress=progress,
    )
    return model, trainer, history, collapse


def _pretrain_backbone(stage: _Stage, progress) -> str:
    """Demo stage 1: full fine-tune a ViT from `backbone_config` and save it as a keras-hub preset.

    It stands in for ImageNet pretraining on a machine without network. Its output is a real
    `save_to_preset` directory, loaded back with `from_preset` by the LoRA stage.
    """
    write = stage.write
    preset_dir = os.path.join(write.real, PRETRAINED_DIR)
    marker = os.path.join(preset_dir, PRETRAINED_DONE)
    if os.path.exists(marker):
        logger.info("using the existing pretrained backbone in %s", preset_dir)
        return preset_dir
    pre_config = configs_lib.from_dict(configs_lib.to_dict(stage.config))
    pre_config.lora_rank = 0
    pre_config.backbone = None  # a random ViT from backbone_config
    if progress:
        progress(f"stage 1/2: pretraining the backbone for {stage.config.pretrain_epochs} epochs")
    pre_stage = dataclasses.replace(
        stage,
        config=pre_config,
        stage_dir=os.path.join(write.path, "pretrain"),
        epochs=stage.config.pretrain_epochs,
        best_path=None,
    )
    spec = stage.run_data.spec()
    model, _, _, _ = _run_stage(pre_stage, lambda: build_model(pre_config, spec=spec), progress)
    if write.chief:
        find_backbone(model).save_to_preset(preset_dir)
        with open(marker, "w") as f:
            f.write("ok\n")
    else:  # wait for the chief's preset (shared storage), like every multi-worker output
        for _ in range(600):
            if os.path.exists(marker):
                break
            time.sleep(1)
        else:
            raise RunError(f"timed out waiting for the chief's preset in {preset_dir}")
    return preset_dir


# --------------------------------------------------------------------------------------------
# Workflow
# --------------------------------------------------------------------------------------------
def run_training(config: configs_lib.TrainConfig, workdir: str, progress=None) -> dict:
    """`eyegazer train`: trains, evaluates and (chief only) writes everything into `workdir`.

    Re-running the same command after a kill resumes from the last backup, mid-epoch, with the
    resumed epoch's loss averaged over the whole epoch. Reproduces the monsoon-nlp
    "eyegazer-vit-binary" write-up (ViT + PEFT LoRA on APTOS 2019) with keras-hub; the
    collapse detector flags its majority-class collapse.

    Args:
        config: TrainConfig. Resolved in place: `"auto"` precision/XLA for this machine,
            absolute `data_dir` and local backbone paths.
        workdir: str. The run directory (created; see the module docstring for its layout).
        progress: callable(str). Receives progress lines (the CLI prints them). Defaults to None.

    Returns:
        A summary dict (also written to `workdir/run.json` by the chief): `config`, `strategy`,
        `replicas`, `global_batch_size`, `per_replica_batch_size`, `chief`, `backbone_source`,
        `parameters`, `trainable_parameters`, `collapse_events`; on the chief also `adapter`,
        `metrics` (the validation metrics of `metrics_validation.json`: accuracy, QWK, AUROC,
        ...), `export` (SavedModel dir, when `config.export`) and `wall_seconds`.

    Raises:
        configs.ConfigError: a config field has a value outside its choices.
        data.DataNotPreparedError: the dataset is not prepared in `config.data_dir`.
        RunError: the data, the backbone or an interrupted run in `workdir` (different
            config) do not allow the run; the message says what to change.
        distribute.StrategyError: the strategy cannot be created or the batch does not divide.
    """
    t_start = time.perf_counter()
    workdir = os.path.abspath(os.path.expanduser(workdir))
    configs_lib.validate(config)
    # Thread settings and multi-worker collectives must be configured before TensorFlow runs
    # any op, so they come first; then fail fast on data and backbone before any heavy work.
    configure_runtime()
    strategy = distribute.get_strategy(config.strategy, config.tpu)
    resolve_auto(config)
    with xla_fusion(config):
        return _train(config, workdir, strategy, progress, t_start)


def _absolute_paths(config) -> None:
    """config.json holds absolute paths, so the run works from any working directory."""
    config.data_dir = os.path.abspath(data.default_data_dir(config.data_dir))
    if config.backbone and os.path.isdir(os.path.expanduser(config.backbone)):
        config.backbone = os.path.abspath(os.path.expanduser(config.backbone))


def _train(config, workdir, strategy, progress, t_start) -> dict:
    """`run_training` once the runtime, strategy and auto settings are in place."""
    _absolute_paths(config)
    run_data = RunData.from_config(config)
    keras.utils.set_random_seed(config.seed)
    chief = distribute.is_chief(strategy)
    os.makedirs(workdir, exist_ok=True)
    write = distribute.WriteDir(workdir, chief)
    _check_resume_config(config, workdir)
    if chief:
        files.write_json_atomic(os.path.join(workdir, "config.json"), configs_lib.to_dict(config))
        files.write_json_atomic(os.path.join(workdir, RUN_DATA), run_data.to_dict())
    replicas = strategy.num_replicas_in_sync
    if progress:
        progress(
            f"{type(strategy).__name__}: {replicas} replica(s), global batch {config.batch_size} "
            f"= {config.batch_size // max(1, replicas)} per replica; chief={chief}"
        )
    stage = _Stage(config, run_data, strategy, write, write.path, config.epochs, BEST_ADAPTER)
    backbone = config.backbone
    if config.pretrain_epochs:
        backbone = _pretrain_backbone(stage, progress)
        if progress:
            progress("stage 2/2: LoRA fine-tuning from the saved preset")
    spec = run_data.spec()  # carried by the model's preprocessor (FundusImageConverter)
    model, trainer, history, collapse = _run_stage(
        stage, lambda: build_model(config, backbone, spec), progress
    )
    summary = {
        "config": config.name,
        "strategy": type(strategy).__name__,
        "replicas": replicas,
        "global_batch_size": config.batch_size,
        "per_replica_batch_size": config.batch_size // replicas,
        "chief": chief,
        "backbone_source": backbone,
        "parameters": vit_lora.count_parameters(model),
        "trainable_parameters": vit_lora.format_trainable_parameters(model),
        "collapse_events": collapse.events,
    }
    if chief:
        _finish_on_chief(stage, model, trainer, history, summary, t_start)
    write.cleanup()
    return summary


def selection_extras(selection: dict | None) -> dict:
    """`{"model_selection": ...}` when validation chose the epoch, else `{}`."""
    return {"model_selection": selection} if selection else {}


def _finish_on_chief(stage: _Stage, model, trainer, history, summary, t_start) -> None:
    """Best adapter -> adapter.npz, history, validation metrics, export, run.json."""
    workdir = stage.write.real
    best = stage.write.join(BEST_ADAPTER)
    if os.path.exists(best):
        vit_lora.load_adapter(model, best)
    adapter_path = os.path.join(workdir, "adapter.npz")
    vit_lora.save_adapter(model, adapter_path)
    summary["adapter"] = vit_lora.adapter_size_report(model, adapter_path)
    files.write_json_atomic(os.path.join(workdir, "history.json"), history)
    probs = predict_split(trainer, stage.config, "validation")
    calibration = evaluation.run_calibration(
        workdir, stage.run_data.val_targets, probs, stage.run_data.task, fit=True
    )
    summary["metrics"] = evaluation.write_split_metrics(
        workdir,
        "validation",
        stage.run_data.val_targets,
        probs,
        stage.run_data,
        stage.config,
        history={k: v for k, v in history.items() if k != "val_majority_prediction"},
        gate=split_gate(stage.config, "validation"),
        extras={
            "collapse_events": summary["collapse_events"],
            **selection_extras(evaluation.model_selection(best + ".json")),
        },
        calibration=calibration,
    )
    if stage.config.export:
        summary["export"] = export_run(workdir, os.path.join(workdir, "export"), model=model)
    summary["wall_seconds"] = time.perf_counter() - t_start
    files.write_json_atomic(os.path.join(workdir, "run.json"), summary)


def _check_resume_config(config, workdir: str) -> None:
    """Refuses to resume an interrupted run with a different config (data dir aside)."""
    backups = [os.path.join(workdir, d, "backup") for d in ("", "pretrain")]
    if all(backup_position(b) is None for b in backups):
        return
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        old = json.load(f)

    def plain(c):  # as config.json holds it
        return json.loads(json.dumps(files.json_safe(configs_lib.to_dict(c))))

    new, old = plain(config), plain(configs_lib.from_dict(old))  # from_dict fills new fields
    ignore = {"data_dir", "jit_compile"}  # where the data lives and how fast it runs
    changed = sorted(k for k in set(old) | set(new) if k not in ignore and old.get(k) != new.get(k))
    if changed:
        fix = " ".join(f"--set {k}={json.dumps(old.get(k))}" for k in changed)
        raise RunError(
            f"{workdir} holds an interrupted run with a different config ({', '.join(changed)}); "
            f"to resume it, run the same command (here: add {fix}), or use a new --workdir"
        )
