"""The fit workflow: config -> data -> model (in strategy scope) -> loop -> metrics -> export.

One training path for every strategy. Keras 3 `Model.fit` dies under
`MultiWorkerMirroredStrategy` at the pinned versions (keras-team/keras#20585), so the trainer runs
one custom step (`strategy.run` + `GradientTape` + `optimizer.apply_gradients`, loss averaged over
the GLOBAL batch with `tf.nn.compute_average_loss`) under default, mirrored, multi-worker and TPU
strategies alike, and drives ordinary Keras callbacks around it: `BackupAndRestore` (kill -9 and
resume, mid-epoch), `BestAdapterCheckpoint` (best by validation QWK or AUROC), and `CollapseDetector`.

Workdir layout (written by the chief only):

```
config.json            resolved config
pretrained_backbone/   (configs with pretrain_epochs) the self-made keras-hub preset
backup/                BackupAndRestore state while a run is in progress
checkpoints/best_adapter.npz  adapter of the best epoch (by validation QWK or AUROC)
adapter.npz            LoRA + head + every other trainable variable, keyed by path
logs/                  TensorBoard
history.json, metrics_validation.json, *.png, run.json
export/                SavedModel + MODEL_CARD.md
```
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from eyegazer_keras import configs as configs_lib
from eyegazer_keras import data, distribute, explain, export, metrics, report
from eyegazer_keras.models import vit_lora, wrappers
from eyegazer_keras.runtime import (  # noqa: F401  (re-exported until every caller uses runtime)
    CPU_FUSION_FLAGS,
    add_cpu_fusion_flags,
    configure_runtime,
    resolve_auto,
    xla_fusion,
)

logger = logging.getLogger(__name__)

BEST_ADAPTER = os.path.join("checkpoints", "best_adapter.npz")
PRETRAINED_DIR = "pretrained_backbone"
PRETRAINED_DONE = "EYEGAZER_PRESET_COMPLETE"


class RunError(RuntimeError):
    """A run cannot start or continue; the message says why and how to fix it."""


# --------------------------------------------------------------------------------------------
# Callbacks
# --------------------------------------------------------------------------------------------
class CollapseDetector(keras.callbacks.Callback):
    """Detects validation predictions collapsing onto one class (the write-up's run 2).

    Reads `val_collapse_fraction` and `val_majority_prediction` from the epoch logs. When the
    fraction of predictions in one class reaches `threshold` for `patience` epochs in a row it
    logs a warning, records the event in `events` (the trainer writes them to `run.json` and the
    metrics), and, with `stop=True`, stops training.

    Args:
        threshold: float. Fraction of predictions in one class that counts as collapse.
            Defaults to 0.95.
        patience: int. Consecutive collapsed epochs before acting. Defaults to 1.
        stop: bool. Stop training on collapse. Defaults to False.
    """

    def __init__(self, threshold: float = 0.95, patience: int = 1, stop: bool = False):
        super().__init__()
        self.threshold = threshold
        self.patience = patience
        self.stop = stop
        self.events: list[dict] = []
        self._streak = 0

    def restore(self, history: dict) -> None:
        """Rebuilds `events` and the streak from a resumed run's history."""
        self.events, self._streak = [], 0
        majority = history.get("val_majority_prediction", [])
        for epoch, fraction in enumerate(history.get("val_collapse_fraction", [])):
            logs = {"val_collapse_fraction": fraction}
            if epoch < len(majority):
                logs["val_majority_prediction"] = majority[epoch]
            self._record(epoch, logs, quiet=True)

    def on_epoch_end(self, epoch, logs=None):
        self._record(epoch, logs or {})

    def _record(self, epoch, logs, quiet=False):
        fraction = logs.get("val_collapse_fraction")
        if fraction is None:
            return
        self._streak = self._streak + 1 if fraction >= self.threshold else 0
        if self._streak >= self.patience:
            event = {
                "epoch": int(epoch) + 1,
                "fraction": float(fraction),
                "class": logs.get("val_majority_prediction"),
                "stopped": bool(self.stop),
            }
            self.events.append(event)
            if quiet:
                return
            logger.warning(
                "COLLAPSE: epoch %d: %.1f%% of validation predictions are class %s "
                "(threshold %.0f%%)%s. Check class weights / learning rate.",
                event["epoch"],
                100 * fraction,
                event["class"],
                100 * self.threshold,
                "; stopping" if self.stop else "",
            )
            if self.stop:
                self.model.stop_training = True


class ChiefBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras `BackupAndRestore` that keeps LoRA factors and writes on the chief only.

    Two changes to the stock callback, both needed at the pinned versions:

    * state goes through `tf.train.Checkpoint(model, optimizer)`, not `save_weights`: Keras
      `save_weights`/`load_weights` fold LoRA into the kernels and reset A/B to zero on load, so a
      resumed run would silently stop training the adapters;
    * every worker writes (saving may involve collectives), but only the chief writes into
      `backup_dir`; other workers write to their private temporary dir. Every worker restores
      from the chief's backup (on storage all workers read, as TF requires for multi-worker
      fault tolerance): after each step all replicas hold identical weights.

    Args:
        backup_dir: str. The chief's backup dir (read by everyone).
        write_dir: str. Where this process writes (== backup_dir on the chief).
        chief: bool. Whether this process is the chief.
        save_freq: "epoch" or int (steps).
    """

    def __init__(self, backup_dir: str, write_dir: str, chief: bool, save_freq="epoch"):
        super().__init__(backup_dir, save_freq=save_freq, delete_checkpoint=True)
        self.chief = chief
        self.write_dir = write_dir
        self._meta_name = "training_metadata.json"

    def _checkpoint(self):
        return tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer)

    def _load_model(self):
        meta = os.path.join(self.backup_dir, self._meta_name)
        if not os.path.exists(meta):
            return
        with open(meta) as f:
            info = json.load(f)
        prefix = os.path.join(self.backup_dir, info["checkpoint"])
        try:
            self._checkpoint().read(prefix).assert_existing_objects_matched()
        except (tf.errors.OpError, AssertionError, ValueError) as err:
            raise RunError(
                f"backup {prefix} cannot be restored ({type(err).__name__}); delete "
                f"{self.backup_dir} to restart the run from scratch"
            ) from None
        self.model._initial_epoch = int(info["epoch"])

    def _save_model(self):
        os.makedirs(self.write_dir, exist_ok=True)
        name = f"ckpt-{self._current_epoch}-{self._last_batch_seen}"
        self._checkpoint().write(os.path.join(self.write_dir, name))
        if self.chief:
            meta = {
                "epoch": self._current_epoch,
                "batch": self._last_batch_seen,
                "checkpoint": name,
            }
            tmp = os.path.join(self.write_dir, self._meta_name + ".tmp")
            with open(tmp, "w") as f:
                json.dump(meta, f)
            os.replace(tmp, os.path.join(self.write_dir, self._meta_name))  # atomic commit point
        # Drop older checkpoints (every worker), including the `<prefix>_temp/` folder a save
        # killed half-way leaves behind.
        for entry in os.listdir(self.write_dir):
            if entry.startswith("ckpt-") and not entry.startswith(name + "."):
                path = os.path.join(self.write_dir, entry)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.remove(path)

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._last_batch_seen = batch + 1  # batches completed in this epoch
        self._batches_seen_since_last_saving += 1
        if self.save_freq != "epoch" and self._batches_seen_since_last_saving >= self.save_freq:
            self._batches_seen_since_last_saving = 0
            self._save_model()

    def on_epoch_end(self, epoch, logs=None):
        self._current_epoch = epoch + 1
        self._last_batch_seen = 0
        self._batches_seen_since_last_saving = 0
        self._save_model()

    def on_train_end(self, logs=None):
        if self.chief and self.delete_checkpoint and os.path.isdir(self.backup_dir):
            shutil.rmtree(self.backup_dir, ignore_errors=True)

    def resume_position(self) -> tuple[int, int]:
        """`(epoch, batch)` the backup was taken at; `(0, 0)` when there is none."""
        meta = os.path.join(self.backup_dir, self._meta_name)
        if not os.path.exists(meta):
            return 0, 0
        with open(meta) as f:
            info = json.load(f)
        return int(info.get("epoch", 0)), int(info.get("batch", 0) or 0)


class BestAdapterCheckpoint(keras.callbacks.Callback):
    """Saves the adapter (every trainable variable, by path) when `monitor` improves.

    Replaces `ModelCheckpoint(save_weights_only=True)`, whose `save_weights` folds LoRA into the
    kernels. The best value survives a resume (kept in `<path>.json`).

    Args:
        path: str. Adapter file (`.npz`).
        monitor: str. Log key to maximise. Defaults to "val_qwk".
        chief: bool. Only the chief writes. Defaults to True.
        resume: bool. Keep the best value of the interrupted run being resumed; False for a
            fresh run. Defaults to True.
    """

    def __init__(
        self, path: str, monitor: str = "val_qwk", chief: bool = True, resume: bool = True
    ):
        super().__init__()
        self.path = path
        self.monitor = monitor
        self.chief = chief
        self.best = -np.inf
        if resume and os.path.exists(path + ".json"):  # a fresh run ignores an old run's best
            with open(path + ".json") as f:
                self.best = float(json.load(f)["best"])

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not value > self.best:
            return
        self.best = float(value)
        if self.chief:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = self.path + ".tmp.npz"
            vit_lora.save_adapter(self.model, tmp)
            os.replace(tmp, self.path)  # a kill never leaves a truncated adapter
            _write_json(
                self.path + ".json",
                {"best": self.best, "epoch": int(epoch) + 1, "monitor": self.monitor},
            )


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
def build_model(config: configs_lib.TrainConfig, backbone: str | None = None) -> keras.Model:
    """Builds the configured ViT(+LoRA) classifier in the current strategy scope."""
    dtype = {"bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}.get(
        config.mixed_precision or "", None
    )
    return vit_lora.build_vit_classifier(
        backbone or config.backbone,
        num_classes=config.num_classes,
        image_size=config.image_size,
        pooling=config.pooling,
        lora_rank=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_targets=tuple(config.lora_targets),
        lora_layout=config.lora_layout,
        head_dropout=config.head_dropout,
        backbone_config=dict(config.backbone_config) if config.backbone_config else None,
        dtype=dtype,
    )


def make_optimizer(
    config: configs_lib.TrainConfig, total_steps: int | None = None
) -> keras.optimizers.Optimizer:
    """AdamW with the configured schedule (cosine over `total_steps`, or constant).

    The schedule is a function of the optimizer's step counter, which the backup restores, so a
    resumed run continues the same curve.
    """
    learning_rate = config.learning_rate
    if config.lr_schedule == "cosine" and total_steps:
        warmup = max(1, total_steps // 20)
        learning_rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=config.learning_rate * 0.1,
            decay_steps=max(1, total_steps - warmup),
            alpha=0.05,
            warmup_target=config.learning_rate,
            warmup_steps=warmup,
        )
    elif config.lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"lr_schedule '{config.lr_schedule}': use cosine or constant")
    optimizer = keras.optimizers.AdamW(
        learning_rate=learning_rate, weight_decay=config.weight_decay
    )
    if config.mixed_precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def find_backbone(model: keras.Model):
    """The keras-hub `ViTBackbone` inside a classifier."""
    import keras_hub

    for layer in model.layers:
        if isinstance(layer, keras_hub.models.ViTBackbone):
            return layer
    raise RunError("no keras_hub ViTBackbone inside the model")


# --------------------------------------------------------------------------------------------
# The one training step / loop
# --------------------------------------------------------------------------------------------
class Trainer:
    """One custom training step for every `tf.distribute` strategy.

    Args:
        model: keras.Model built inside `strategy.scope()`, outputting probabilities.
        optimizer: keras optimizer built inside the same scope.
        strategy: the `tf.distribute.Strategy`.
        global_batch_size: int. The GLOBAL batch size (see `distribute`).
        jit_compile: bool or "fusible". True: XLA-compile the replica step. "fusible": leave it
            to `xla_fusion`'s auto-clustering. Defaults to False.
    """

    def __init__(self, model, optimizer, strategy, global_batch_size: int, jit_compile=False):
        self.model = model
        self.optimizer = optimizer
        self.strategy = strategy
        self.global_batch_size = global_batch_size
        self.jit_compile = jit_compile is True  # "fusible" is `xla_fusion`'s business
        self._scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

        def replica_step(images, labels, weights):
            with tf.GradientTape() as tape:
                probs = self.model(images, training=True)
                per_example = keras.losses.sparse_categorical_crossentropy(labels, probs)
                per_example = tf.cast(per_example, tf.float32) * weights
                loss = tf.nn.compute_average_loss(
                    per_example, global_batch_size=self.global_batch_size
                )
                if self.model.losses:
                    loss += tf.nn.scale_regularization_loss(tf.add_n(self.model.losses))
                scaled = self.optimizer.scale_loss(loss) if self._scaled else loss
            variables = self.model.trainable_variables
            grads = tape.gradient(scaled, variables)
            self.optimizer.apply_gradients(zip(grads, variables, strict=True))
            return loss

        step = replica_step
        if self.jit_compile:
            step = tf.function(replica_step, jit_compile=True)

        @tf.function
        def train_step(images, labels, weights):
            per_replica = self.strategy.run(step, args=(images, labels, weights))
            return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        @tf.function(reduce_retracing=True)
        def predict_step(images):
            return self.model(images, training=False)

        self.train_step = train_step
        self.predict_step = predict_step

    def predict(self, dataset: tf.data.Dataset) -> np.ndarray:
        """Probabilities for every example of a batched `(image, label, ...)` dataset, in order."""
        out = [self.predict_step(batch[0]).numpy() for batch in dataset]
        return np.concatenate(out, axis=0) if out else np.zeros((0, 1), np.float32)

    def fit(
        self,
        train_fn,
        steps_per_epoch: int,
        epochs: int,
        evaluate_fn,
        callbacks,
        backup: ChiefBackupAndRestore,
        log_dir: str | None = None,
        progress=None,
    ) -> dict[str, list[float]]:
        """Runs epochs of `steps_per_epoch` steps, resuming from `backup` where it stopped.

        Args:
            train_fn: callable(epoch) -> batched training dataset of `(image, label, weight)`.
            steps_per_epoch: int. Steps per epoch (datasets are batched with drop_remainder).
            epochs: int. Total epochs.
            evaluate_fn: callable() -> dict of `val_*` logs.
            callbacks: list of Keras callbacks (backup included).
            backup: the run's `ChiefBackupAndRestore`.
            log_dir: str. TensorBoard dir (chief only). Defaults to None.
            progress: callable(str). Progress lines. Defaults to None.
        """
        callback_list = keras.callbacks.CallbackList(callbacks, model=self.model)
        self.model.stop_training = False
        callback_list.on_train_begin()  # BackupAndRestore restores weights + optimizer here.
        start_epoch, start_batch = backup.resume_position()
        history: dict[str, list[float]] = {}
        history_path = os.path.join(backup.backup_dir, "history.json")
        if start_epoch or start_batch:
            if os.path.exists(history_path):
                with open(history_path) as f:
                    history = json.load(f)
                # A kill between writing the history and the epoch-end backup must not
                # duplicate that epoch: keep exactly the epochs the backup covers.
                history = {k: v[:start_epoch] for k, v in history.items()}
            for callback in callbacks:
                if isinstance(callback, CollapseDetector):
                    callback.restore(history)
            logger.info("resuming at epoch %d, batch %d", start_epoch + 1, start_batch)
            if progress:
                progress(f"resuming at epoch {start_epoch + 1}, step {start_batch}")
        writer = tf.summary.create_file_writer(log_dir) if log_dir else None
        step_counter = start_epoch * steps_per_epoch + start_batch
        for epoch in range(start_epoch, epochs):
            callback_list.on_epoch_begin(epoch)
            skip = start_batch if epoch == start_epoch else 0
            dataset = train_fn(epoch).skip(skip)
            dist = self.strategy.experimental_distribute_dataset(dataset)
            losses = []
            t0 = time.perf_counter()
            for batch_index, batch in enumerate(dist, start=skip):
                loss = float(self.train_step(*batch))
                losses.append(loss)
                step_counter += 1
                callback_list.on_train_batch_end(batch_index, {"loss": loss})
                if writer and step_counter % 10 == 0:
                    with writer.as_default(step=step_counter):
                        tf.summary.scalar("train/loss", loss)
            seconds = time.perf_counter() - t0
            logs = {"loss": float(np.mean(losses)) if losses else float("nan")}
            logs.update(evaluate_fn())
            logs["seconds"] = seconds
            logs["examples_per_second"] = (
                len(losses) * self.global_batch_size / seconds if seconds else 0.0
            )
            for key, value in logs.items():
                if isinstance(value, (int, float)) and value is not None:
                    history.setdefault(key, []).append(float(value))
                elif isinstance(value, str):
                    history.setdefault(key, []).append(value)
            if writer:
                with writer.as_default(step=epoch + 1):
                    for key, value in logs.items():
                        if isinstance(value, (int, float)) and np.isfinite(value):
                            tf.summary.scalar(f"epoch/{key}", value)
                writer.flush()
            if backup.chief:
                os.makedirs(backup.backup_dir, exist_ok=True)
                with open(history_path + ".tmp", "w") as f:
                    json.dump(history, f)
                os.replace(history_path + ".tmp", history_path)
            callback_list.on_epoch_end(epoch, logs)
            line = (
                f"epoch {epoch + 1}/{epochs}: loss {logs['loss']:.4f} "
                + " ".join(
                    f"{k} {logs[k]:.4f}"
                    for k in ("val_accuracy", "val_qwk", "val_auroc")
                    if isinstance(logs.get(k), float)
                )
                + f" ({logs['examples_per_second']:.1f} img/s)"
            )
            logger.info(line)
            if progress:
                progress(line)
            if self.model.stop_training:
                break
        callback_list.on_train_end()
        return history


# --------------------------------------------------------------------------------------------
# Workflow
# --------------------------------------------------------------------------------------------
def _check_backbone_reachable(config: configs_lib.TrainConfig) -> None:
    """Fails fast when a preset/HF backbone can be neither found locally nor downloaded."""
    source = config.backbone
    if source in (None, "config") or os.path.isdir(os.path.expanduser(source)):
        return
    if config.pretrain_epochs:
        return
    import socket

    host = "huggingface.co" if source.startswith("hf://") else "www.kaggle.com"
    cached = False
    if not source.startswith("hf://"):
        cache = os.path.expanduser(os.environ.get("KAGGLEHUB_CACHE", "~/.cache/kagglehub"))
        cached = (
            any(source in root for root, _, _ in os.walk(cache)) if os.path.isdir(cache) else False
        )
    if cached:
        return
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError:
        raise RunError(
            f"backbone '{source}' is not a local directory and {host} cannot be reached; "
            "download the preset on a machine with network access and pass its local directory "
            "with --set backbone=/path/to/preset"
        ) from None


def _check_resume_config(config, workdir: str) -> None:
    """Refuses to resume an interrupted run with a different config (data dir aside)."""
    backups = [os.path.join(workdir, d, "backup") for d in ("", "pretrain")]
    if not any(os.path.exists(os.path.join(b, "training_metadata.json")) for b in backups):
        return
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        old = json.load(f)

    def plain(c):  # as config.json holds it
        return json.loads(json.dumps(metrics.json_safe(configs_lib.to_dict(c))))

    new, old = plain(config), plain(configs_lib.from_dict(old))  # from_dict fills new fields
    ignore = {"data_dir", "jit_compile"}  # where the data lives and how fast it runs
    changed = sorted(k for k in set(old) | set(new) if k not in ignore and old.get(k) != new.get(k))
    if changed:
        fix = " ".join(f"--set {k}={json.dumps(old.get(k))}" for k in changed)
        raise RunError(
            f"{workdir} holds an interrupted run with a different config ({', '.join(changed)}); "
            f"to resume it, run the same command (here: add {fix}), or use a new --workdir"
        )


def _split_args(config, split: str) -> tuple:
    """(dataset, split, data_dir, dataset_config, max_examples) for `data.load_split` & co."""
    limit = config.max_train_examples if split == "train" else config.max_eval_examples
    return config.dataset, split, config.data_dir, config.dataset_config, limit


def _dataset_sizes(config) -> tuple[np.ndarray, np.ndarray]:
    return (
        data.split_labels(*_split_args(config, "train")),
        data.split_labels(*_split_args(config, "validation")),
    )


def _run_stage(
    config,
    strategy,
    write: distribute.WriteDir,
    stage_dir: str,
    model_fn,
    train_labels: np.ndarray,
    val_labels: np.ndarray,
    epochs: int,
    progress=None,
    best_path: str | None = None,
    extra_callbacks=(),
) -> tuple[keras.Model, Trainer, dict, CollapseDetector]:
    """Builds a model in scope and trains it with backup/resume. Returns model and history."""
    distribute.per_replica_batch_size(config.batch_size, strategy)
    steps = len(train_labels) // config.batch_size
    if steps < 1:
        raise RunError(
            f"the train split has {len(train_labels)} examples, fewer than one global batch "
            f"({config.batch_size}); lower --set batch_size"
        )
    with strategy.scope():
        # Seeded right before the build: `load_run` rebuilds the same frozen initial weights
        # for a `backbone="config"` run, which the adapter's base fingerprint checks.
        keras.utils.set_random_seed(config.seed)
        model = model_fn()
        optimizer = make_optimizer(config, total_steps=steps * epochs)
        model.compile(optimizer=optimizer)  # lets BackupAndRestore save optimizer state too
        optimizer.build(model.trainable_variables)
    trainer = Trainer(model, optimizer, strategy, config.batch_size, config.jit_compile)
    if progress:
        progress(f"model: {vit_lora.format_trainable_parameters(model)}")

    num_classes = config.num_classes
    train_targets = data.transform_labels_np(train_labels, config.task)
    weights = (  # balanced sampling already evens classes out: do not correct twice
        data.class_weights(train_targets, num_classes)
        if config.class_weight == "balanced" and not config.balanced_sampling
        else {c: 1.0 for c in range(num_classes)}
    )
    majority = int(np.bincount(train_targets, minlength=num_classes).argmax())
    split_train = data.load_split(*_split_args(config, "train"))
    split_val = data.load_split(*_split_args(config, "validation"))
    cached_train = data.cached_images(split_train, config.image_size)
    base_kwargs = dict(
        label_mode=config.task, image_size=config.image_size, num_classes=num_classes
    )

    def train_fn(epoch: int):
        return data.make_dataset(
            cached_train,
            batch_size=config.batch_size,
            training=True,
            augment=config.augment,
            seed=config.seed * 1000 + epoch,
            class_weight=weights,
            balanced_sampling=config.balanced_sampling,
            drop_remainder=True,
            cache=False,
            **base_kwargs,
        )

    val_ds = data.make_dataset(split_val, batch_size=config.batch_size, **base_kwargs)
    val_targets = data.transform_labels_np(val_labels, config.task)
    task = config.task

    def evaluate_fn():
        probs = trainer.predict(val_ds)
        m = metrics.classification_metrics(
            val_targets,
            probs,
            task,
            majority_class=majority,
            collapse_threshold=config.collapse_threshold,
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

    stage_name = os.path.relpath(stage_dir, write.path)
    backup = ChiefBackupAndRestore(
        os.path.normpath(os.path.join(write.real, stage_name, "backup")),
        os.path.normpath(os.path.join(stage_dir, "backup")),
        chief=write.chief,
        save_freq=config.checkpoint_every_steps or "epoch",
    )
    collapse = CollapseDetector(
        config.collapse_threshold, config.collapse_patience, config.stop_on_collapse
    )
    callbacks = [collapse, *extra_callbacks]
    if best_path:
        resuming = backup.resume_position() != (0, 0)
        if not resuming and write.chief:  # a fresh run never reuses an older run's best
            for stale in (write.join(best_path), write.join(best_path) + ".json"):
                if os.path.exists(stale):
                    os.remove(stale)
        callbacks.append(
            BestAdapterCheckpoint(write.join(best_path), config.monitor, write.chief, resuming)
        )
    callbacks.append(backup)  # last: its epoch-end backup covers everything above
    history = trainer.fit(
        train_fn,
        steps,
        epochs,
        evaluate_fn,
        callbacks,
        backup,
        log_dir=os.path.join(write.path, "logs", os.path.basename(stage_dir)),
        progress=progress,
    )
    return model, trainer, history, collapse


def _pretrain_backbone(config, strategy, write, train_labels, val_labels, progress):
    """Demo stage 1: full fine-tune a ViT from `backbone_config` and save it as a keras-hub preset.

    It stands in for ImageNet pretraining on a machine without network. Its output is a real
    `save_to_preset` directory, loaded back with `from_preset` by the LoRA stage.
    """
    preset_dir = os.path.join(write.real, PRETRAINED_DIR)
    marker = os.path.join(preset_dir, PRETRAINED_DONE)
    if os.path.exists(marker):
        logger.info("using the existing pretrained backbone in %s", preset_dir)
        return preset_dir
    pre_config = configs_lib.from_dict(configs_lib.to_dict(config))
    pre_config.lora_rank = 0
    pre_config.backbone = "config"
    if progress:
        progress(f"stage 1/2: pretraining the backbone for {config.pretrain_epochs} epochs")
    model, _, _, _ = _run_stage(
        pre_config,
        strategy,
        write,
        os.path.join(write.path, "pretrain"),
        lambda: build_model(pre_config, "config"),
        train_labels,
        val_labels,
        config.pretrain_epochs,
        progress,
    )
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


def run_training(config: configs_lib.TrainConfig, workdir: str, progress=None) -> dict:
    """`eyegazer train`: trains, evaluates and (chief only) writes everything into `workdir`.

    Re-running the same command after a kill resumes from the last backup.

    Args:
        config: TrainConfig.
        workdir: str. The run directory.
        progress: callable(str). Receives progress lines (the CLI prints them). Defaults to None.

    Returns:
        A summary dict (also written to `workdir/run.json`).
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


def _train(config, workdir, strategy, progress, t_start) -> dict:
    """`run_training` once the runtime, strategy and auto settings are in place."""
    data.prepared_builder(config.dataset, config.data_dir, config.dataset_config)
    _check_backbone_reachable(config)
    keras.utils.set_random_seed(config.seed)
    chief = distribute.is_chief(strategy)
    os.makedirs(workdir, exist_ok=True)
    write = distribute.WriteDir(workdir, chief)
    _check_resume_config(config, workdir)
    if chief:
        _write_json(os.path.join(workdir, "config.json"), configs_lib.to_dict(config))
    train_labels, val_labels = _dataset_sizes(config)
    if not data.has_labels(val_labels):
        raise RunError("the validation split has no labels; cannot select checkpoints")
    replicas = strategy.num_replicas_in_sync
    if progress:
        progress(
            f"{type(strategy).__name__}: {replicas} replica(s), global batch {config.batch_size} "
            f"= {config.batch_size // max(1, replicas)} per replica; chief={chief}"
        )

    backbone = config.backbone
    if config.pretrain_epochs:
        backbone = _pretrain_backbone(config, strategy, write, train_labels, val_labels, progress)
        if progress:
            progress("stage 2/2: LoRA fine-tuning from the saved preset")
    model, trainer, history, collapse = _run_stage(
        config,
        strategy,
        write,
        write.path,
        lambda: build_model(config, backbone),
        train_labels,
        val_labels,
        config.epochs,
        progress,
        best_path=BEST_ADAPTER,
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
        best = write.join(BEST_ADAPTER)
        if os.path.exists(best):
            vit_lora.load_adapter(model, best)
        adapter_path = os.path.join(workdir, "adapter.npz")
        vit_lora.save_adapter(model, adapter_path)
        summary["adapter"] = vit_lora.adapter_size_report(model, adapter_path)
        _write_json(os.path.join(workdir, "history.json"), history)
        summary["metrics"] = _evaluate_model(
            config,
            trainer,
            workdir,
            "validation",
            history={k: v for k, v in history.items() if k != "val_majority_prediction"},
            collapse=collapse.events,
            fit_calibration=True,
        )
        if config.export:
            summary["export"] = export_run(workdir, os.path.join(workdir, "export"), model=model)
        summary["wall_seconds"] = time.perf_counter() - t_start
        _write_json(os.path.join(workdir, "run.json"), summary)
    write.cleanup()
    return summary


def _evaluate_model(
    config,
    trainer,
    workdir,
    split,
    history=None,
    collapse=None,
    fit_calibration=False,
    tta="none",
) -> dict:
    labels = data.split_labels(*_split_args(config, split))
    if not data.has_labels(labels):
        raise RunError(
            f"split '{split}' of {config.dataset} has no labels (Kaggle test images are "
            "unlabeled); evaluate on 'validation' or 'train'"
        )
    ds = data.make_dataset(
        data.load_split(*_split_args(config, split)),
        label_mode=config.task,
        image_size=config.image_size,
        batch_size=config.batch_size,
        cache=False,
    )
    probs = trainer.predict(ds)
    train_labels = data.split_labels(*_split_args(config, "train"))
    train_targets = data.transform_labels_np(train_labels, config.task)
    task = config.task
    y = data.transform_labels_np(labels, config.task)
    calibration = _run_calibration(workdir, y, probs, task, fit=fit_calibration)
    result = report.write_report(
        workdir,
        y,
        probs,
        task,
        history=history,
        split=split,
        calibration=calibration,
        majority_class=int(np.bincount(train_targets).argmax()),
        collapse_threshold=config.collapse_threshold,
    )
    rewrite = False
    if collapse is not None:
        result["collapse_events"] = collapse
        rewrite = True
    if tta != "none":
        served = wrappers.serving_model(trainer.model, None, tta)
        tta_probs = np.concatenate([served(b[0], training=False).numpy() for b in ds], axis=0)
        result["tta"] = _tta_comparison(y, probs, tta_probs, task, tta)
        rewrite = True
    if rewrite:
        report.write_metrics_json(os.path.join(workdir, f"metrics_{split}.json"), result)
    return result


CALIBRATION_FILE = "calibration.json"


def _run_calibration(workdir, y, probs, task, fit: bool) -> dict | None:
    """Fits (end of train) or reads (evaluate) the run's temperature and operating threshold."""
    path = os.path.join(workdir, CALIBRATION_FILE)
    if fit:
        try:
            calibration = metrics.fit_calibration(y, probs, task)
        except ValueError as err:  # e.g. a validation half without referable photos
            logger.warning("No calibration fitted: %s", err)
            return None
        _write_json(path, calibration)
        return calibration
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return None


def _tta_comparison(y, probs, tta_probs, task, mode) -> dict:
    """QWK, AUROC and ECE without and with test-time augmentation (uncalibrated both)."""

    def summary(p):
        m = metrics.classification_metrics(y, p, task)
        return {"qwk": m["qwk"], "auroc": m["auroc"], "ece": m["calibration"]["ece"]}

    without, with_tta = summary(probs), summary(tta_probs)
    delta = {
        k: (with_tta[k] - without[k]) if None not in (with_tta[k], without[k]) else None
        for k in without
    }
    views = len(wrappers.tta_views(tf.zeros([1, 1, 1, 3]), mode))
    return {"mode": mode, "views": views, "without": without, "with": with_tta, "delta": delta}


def load_run(workdir: str, strategy=None):
    """Rebuilds a finished run's model (best weights) and config from its workdir."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
        raise RunError(f"{config_path} not found: is {workdir} an `eyegazer train` workdir?")
    with open(config_path) as f:
        config = configs_lib.from_dict(json.load(f))
    best = os.path.join(workdir, BEST_ADAPTER)
    if not os.path.exists(best):
        raise RunError(f"{best} not found: the run has not finished an epoch yet")
    backbone = config.backbone
    if config.pretrain_epochs:
        backbone = os.path.join(workdir, PRETRAINED_DIR)
    strategy = strategy or tf.distribute.get_strategy()
    resolve_auto(config)
    with strategy.scope():
        keras.utils.set_random_seed(config.seed)  # as in `_run_stage`
        model = build_model(config, backbone)
    vit_lora.load_adapter(model, best)
    return config, model


def evaluate_run(
    workdir: str, split: str = "validation", explain_maps: bool = False, tta: str | None = None
) -> dict:
    """`eyegazer evaluate`: recomputes metrics and plots of a run for a labeled split.

    With ``explain_maps`` it also writes ``explanations_<split>.json`` (pointing game and pixel
    AUROC of the maps against the lesion masks, with baselines; `explain.explanations_report`)
    and ``explanations_<split>.png``; with ``tta`` ("flip", "flip4") the metrics gain a ``tta``
    section (QWK, AUROC, ECE without and with test-time augmentation).
    """
    workdir = os.path.abspath(os.path.expanduser(workdir))
    config, model = load_run(workdir)
    trainer = Trainer(model, None, tf.distribute.get_strategy(), config.batch_size)
    tta = tta or getattr(config, "tta", None) or "none"
    with xla_fusion(config):  # predict as during training
        result = _evaluate_model(config, trainer, workdir, split, tta=tta)
        if explain_maps:
            result["explanations"] = _explain_split(config, model, workdir, split)
    return result


def _explain_split(config, model, workdir, split) -> dict:
    ds = data.load_split(*_split_args(config, split))
    scores, examples = explain.explanations_report(model, ds, config.image_size, split=split)
    report.write_metrics_json(os.path.join(workdir, f"explanations_{split}.json"), scores)
    report.plot_explanations(
        examples,
        os.path.join(workdir, f"explanations_{split}.png"),
        title=f"{config.name}: {split}, one photo per grade >= 2",
    )
    return scores


def export_run(
    workdir: str, output: str, model: keras.Model | None = None, tta: str | None = None
) -> str:
    """`eyegazer export`: SavedModel (bytes + tensor endpoints) and model card from a run.

    The run's `calibration.json` (temperature and operating threshold, fitted at the end of
    `train`) is applied inside the export; `tta` (default: the config's `tta`) averages flips
    inside it; the `serving_explain` signature returns `explain.default_method` maps.
    """
    workdir = os.path.abspath(os.path.expanduser(workdir))
    if model is None:
        config, model = load_run(workdir)
    else:
        with open(os.path.join(workdir, "config.json")) as f:
            config = configs_lib.from_dict(json.load(f))
    builder = data.prepared_builder(config.dataset, config.data_dir, config.dataset_config)
    source = data.source_size(builder)
    ben_graham = bool(getattr(builder.builder_config, "ben_graham", False))
    val_metrics = {}
    metrics_path = os.path.join(workdir, "metrics_validation.json")
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            val_metrics = json.load(f)
    task = config.task
    card = {
        "model": f"keras-hub ViT + LoRA (rank {config.lora_rank}) {task} classifier",
        "data": {
            "dataset": config.dataset,
            "config": builder.builder_config.name,
            "version": str(builder.version),
            "splits": {k: v.num_examples for k, v in builder.info.splits.items()},
            "trained_on": "train",
            "validated_on": "validation",
        },
        "training_config": configs_lib.to_dict(config),
        "validation_metrics": {
            k: val_metrics.get(k)
            for k in (
                "accuracy",
                "majority_baseline",
                "qwk",
                "auroc",
                "sensitivity",
                "specificity",
                "referable",
                "n",
            )
            if k in val_metrics
        },
        "preprocessing": (
            f"decode JPEG/PNG -> crop black border, pad to square, resize to {source}px"
            f"{' + Ben Graham' if ben_graham else ''} (eyegazer_keras.fundus.preprocess_fundus) -> "
            f"resize to {config.image_size}px; normalisation inside the model"
        ),
    }
    calibration = _run_calibration(workdir, None, None, task, fit=False)
    tta = tta or getattr(config, "tta", None) or "none"
    card.update(_card_calibration(val_metrics, calibration, tta))
    return str(
        export.export_saved_model(
            model,
            output,
            calibration=calibration,
            tta=tta,
            explain_method=explain.default_method(model),
            task=task,
            image_size=config.image_size,
            source_size=source,
            use_ben_graham=ben_graham,
            metadata={"config": configs_lib.to_dict(config)},
            model_card=card,
        )
    )


def _card_calibration(val_metrics: dict, calibration: dict | None, tta: str) -> dict:
    """Model-card sections: calibration figures, operating threshold, TTA, what maps are."""
    maps = (
        "serving_explain returns a map of where the model's output is sensitive (gradient-"
        "weighted attention rollout, Chefer et al. 2021; Grad-CAM for CNNs), on the patch grid. "
        "It is not a lesion segmentation and has not been validated clinically."
    )
    if calibration is None:
        return {"calibration": "not fitted (no calibration.json in the run)", "explanations": maps}
    half = calibration.get("report_half", {})
    before, after = half.get("before", {}), half.get("after", {})
    point = half.get("operating_point", {})
    return {
        "calibration": {
            "method": calibration.get("method"),
            "temperature": calibration.get("temperature"),
            "ece_15_bins": {"before": before.get("ece"), "after": after.get("ece")},
            "brier": {"before": before.get("brier"), "after": after.get("brier")},
            "measured_on": f"the other half of validation ({calibration.get('report_rows')} rows)",
            "reliability_diagram": "reliability_validation.png in the run folder",
        },
        "operating_threshold": {
            "output": calibration.get("threshold_output"),
            "threshold": calibration.get("threshold"),
            "target_sensitivity": calibration.get("target_sensitivity"),
            "sensitivity_on_report_half": point.get("sensitivity"),
            "specificity_on_report_half": point.get("specificity"),
        },
        "tta": tta,
        "explanations": maps,
        "uncalibrated_validation_ece": (val_metrics.get("calibration") or {}).get("ece"),
    }


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(metrics.json_safe(obj), f, indent=2, sort_keys=True)
    os.replace(tmp, path)
