"""The one training step and loop, for every `tf.distribute` strategy.

Keras 3 `Model.fit` dies under `MultiWorkerMirroredStrategy` at the pinned versions
(keras-team/keras#20585), so `Trainer` runs one custom step (`strategy.run` + `GradientTape` +
`optimizer.apply_gradients`, loss averaged over the GLOBAL batch with
`tf.nn.compute_average_loss`) under default, mirrored, multi-worker and TPU strategies alike,
and drives ordinary Keras callbacks around it (`callbacks.TrainingBackup` for kill -9 and
resume mid-epoch, `callbacks.BestAdapterCheckpoint`, `callbacks.CollapseDetector`).
"""

from __future__ import annotations

import logging
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from eyegazer_keras.configs import settings as configs_lib
from eyegazer_keras.training.callbacks import CollapseDetector, TrainingBackup

logger = logging.getLogger(__name__)

__all__ = ["Trainer", "make_optimizer"]


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

    def predict(
        self, dataset: tf.data.Dataset, progress_bar: bool | None = False, desc: str = "predict"
    ) -> np.ndarray:
        """Probabilities for every example of a batched `(image, label, ...)` dataset, in order.

        Args:
            dataset: batched `tf.data.Dataset` whose first element is `float32 [B, S, S, 3]`.
            progress_bar: bool or None. A tqdm bar on stderr; None shows it only when stderr
                is a terminal. Defaults to False.
            desc: str. The bar's label. Defaults to "predict".

        Returns:
            float32 `[N, num_classes]` probabilities.
        """
        from tqdm import tqdm

        batches = int(dataset.cardinality())
        bar = tqdm(
            dataset,
            total=batches if batches >= 0 else None,
            desc=desc,
            unit="batch",
            file=sys.stderr,
            disable=(not sys.stderr.isatty()) if progress_bar is None else not progress_bar,
            leave=False,
        )
        out = [self.predict_step(batch[0]).numpy() for batch in bar]
        return np.concatenate(out, axis=0) if out else np.zeros((0, 1), np.float32)

    def fit(
        self,
        train_fn,
        steps_per_epoch: int,
        epochs: int,
        evaluate_fn,
        callbacks,
        backup: TrainingBackup,
        log_dir: str | None = None,
        progress=None,
    ) -> dict[str, list]:
        """Runs epochs of `steps_per_epoch` steps, resuming from `backup` where it stopped.

        Args:
            train_fn: callable(epoch) -> batched training dataset of `(image, label, weight)`.
            steps_per_epoch: int. Steps per epoch (datasets are batched with drop_remainder).
            epochs: int. Total epochs.
            evaluate_fn: callable() -> dict of `val_*` logs.
            callbacks: list of Keras callbacks (`backup` included, last).
            backup: the run's `callbacks.TrainingBackup`; its `state` carries the epoch, the
                step and the epoch's running loss sum across a kill.
            log_dir: str. TensorBoard dir (chief only). Defaults to None.
            progress: callable(str). Progress lines. Defaults to None.

        Returns:
            The history: `{log key: [one value per epoch]}` (`loss`, `val_*`, `seconds`,
            `examples_per_second`), every epoch's `loss` the mean over all its steps.

        Raises:
            callbacks.BackupError: the backup does not match the model.
        """
        callback_list = keras.callbacks.CallbackList(callbacks, model=self.model)
        self.model.stop_training = False
        callback_list.on_train_begin()  # TrainingBackup restores model, optimizer and state here
        state = backup.state
        start_epoch, start_step = int(state.epoch.numpy()), int(state.step.numpy())
        history = state.history
        if start_epoch or start_step:
            _resumed(callbacks, history, start_epoch, start_step, progress)
        writer = tf.summary.create_file_writer(log_dir) if log_dir else None
        step_counter = start_epoch * steps_per_epoch + start_step
        for epoch in range(start_epoch, epochs):
            callback_list.on_epoch_begin(epoch)
            state.begin_epoch(epoch)
            step_counter = self._train_epoch(
                train_fn(epoch), state, callback_list, writer, step_counter
            )
            logs = self._epoch_logs(state, evaluate_fn)
            _append(history, logs)
            if writer:
                _write_epoch_summary(writer, epoch, logs)
            state.end_epoch(history)  # the epoch-end backup (last callback) covers this epoch
            callback_list.on_epoch_end(epoch, logs)
            _report(_epoch_line(epoch, epochs, logs), progress)
            if self.model.stop_training:
                break
        callback_list.on_train_end()
        return history

    def _train_epoch(self, dataset, state, callback_list, writer, step_counter: int) -> int:
        """The epoch's steps from `state.step` on (resumed mid-epoch); returns the global step."""
        skip = int(state.step.numpy())
        dist = self.strategy.experimental_distribute_dataset(dataset.skip(skip))
        t0 = time.perf_counter()
        for batch_index, batch in enumerate(dist, start=skip):
            loss = float(self.train_step(*batch))
            t1 = time.perf_counter()
            state.add_step(loss, t1 - t0)
            t0 = t1
            step_counter += 1
            callback_list.on_train_batch_end(batch_index, {"loss": loss})
            if writer and step_counter % 10 == 0:
                with writer.as_default(step=step_counter):
                    tf.summary.scalar("train/loss", loss)
        return step_counter

    def _epoch_logs(self, state, evaluate_fn) -> dict:
        seconds, steps = float(state.seconds.numpy()), int(state.loss_count.numpy())
        logs = {"loss": state.epoch_loss()}
        logs.update(evaluate_fn())
        logs["seconds"] = seconds
        logs["examples_per_second"] = steps * self.global_batch_size / seconds if seconds else 0.0
        return logs


def _resumed(callbacks, history: dict, epoch: int, step: int, progress) -> None:
    for callback in callbacks:
        if isinstance(callback, CollapseDetector):
            callback.restore(history)
    logger.info("resuming at epoch %d, batch %d", epoch + 1, step)
    if progress:
        progress(f"resuming at epoch {epoch + 1}, step {step}")


def _report(line: str, progress) -> None:
    logger.info(line)
    if progress:
        progress(line)


def _append(history: dict, logs: dict) -> None:
    for key, value in logs.items():
        if isinstance(value, (int, float)) and value is not None:
            history.setdefault(key, []).append(float(value))
        elif isinstance(value, str):
            history.setdefault(key, []).append(value)


def _write_epoch_summary(writer, epoch: int, logs: dict) -> None:
    with writer.as_default(step=epoch + 1):
        for key, value in logs.items():
            if isinstance(value, (int, float)) and np.isfinite(value):
                tf.summary.scalar(f"epoch/{key}", value)
    writer.flush()


def _epoch_line(epoch: int, epochs: int, logs: dict) -> str:
    metrics = " ".join(
        f"{k} {logs[k]:.4f}"
        for k in ("val_accuracy", "val_qwk", "val_auroc")
        if isinstance(logs.get(k), float)
    )
    return (
        f"epoch {epoch + 1}/{epochs}: loss {logs['loss']:.4f} {metrics}"
        f" ({logs['examples_per_second']:.1f} img/s)"
    )
