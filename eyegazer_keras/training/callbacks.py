"""Keras callbacks of the fit workflow: collapse detector, backup/resume, best adapter.

* `CollapseDetector` flags validation predictions collapsing onto one class, the failure of the
  monsoon-nlp "eyegazer-vit-binary" write-up (ViT-Large + PEFT LoRA on APTOS 2019), whose
  classifier ended up predicting the majority class.
* `TrainingBackup` is what `keras.callbacks.BackupAndRestore` does (kill -9, then re-run the
  same command to resume mid-epoch) for the custom multi-worker loop: a `tf.train.Checkpoint`
  of the model, the optimizer and a `TrainingState` (epoch, step, the epoch's running loss sum
  and count, the history so far), kept by a `tf.train.CheckpointManager(max_to_keep=...)`. The
  manager's `checkpoint` state file is the commit point: no metadata file, no hand pruning.
* `BestAdapterCheckpoint` keeps the adapter of the best epoch (by validation QWK or AUROC).

Why not the stock callbacks: Keras core LoRA layers fold LoRA into the kernels on `save_weights`
and reset A/B to zero on load (the project's LoRA layers, `models.fast_layers`, keep A/B apart),
and the backups here also hold the optimizer and the position inside an epoch, so a resumed run
continues mid-epoch; the best checkpoint is the small adapter file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import keras
import numpy as np
import tensorflow as tf

from eyegazer_keras import files
from eyegazer_keras.models import vit_lora

logger = logging.getLogger(__name__)

__all__ = [
    "BackupError",
    "BestAdapterCheckpoint",
    "CollapseDetector",
    "TrainingBackup",
    "TrainingState",
    "backup_position",
]


class BackupError(RuntimeError):
    """A backup cannot be restored; the message names it and the fix."""


# --------------------------------------------------------------------------------------------
# Collapse
# --------------------------------------------------------------------------------------------
class CollapseDetector(keras.callbacks.Callback):
    """Detects validation predictions collapsing onto one class.

    Reproduces the failure of the monsoon-nlp "eyegazer-vit-binary" write-up (fine-tuning
    ViT-Large with PEFT LoRA on APTOS 2019), whose run 2 predicted the majority class for every
    image. Reads `val_collapse_fraction` and `val_majority_prediction` from the epoch logs.
    When the fraction of predictions in one class reaches `threshold` for `patience` epochs in
    a row it logs a warning, records the event in `events` (the trainer writes them to
    `run.json` and the metrics), and, with `stop=True`, stops training.

    Args:
        threshold: float. Fraction (0..1) of predictions in one class that counts as collapse.
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
        if self._streak < self.patience:
            return
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


# --------------------------------------------------------------------------------------------
# Backup and resume
# --------------------------------------------------------------------------------------------
_STATE = "state"  # checkpoint attribute holding the TrainingState


class TrainingState(tf.Module):
    """Where a run stands, saved in every backup next to the model and optimizer.

    Attributes (all `tf.Variable`s, so `tf.train.Checkpoint` saves and restores them):
        epoch: int64. Epochs completed (0-based index of the epoch in progress).
        step: int64. Steps completed in the epoch in progress.
        loss_sum: float64. Sum of the per-step training losses of the epoch in progress.
        loss_count: int64. Number of steps in `loss_sum`.
        seconds: float64. Training seconds spent on the epoch in progress (throughput).
        history_json: string. The per-epoch history of the completed epochs, as JSON.

    The running sums make a resumed epoch's logged loss the mean over the WHOLE epoch, not over
    the steps after the resume (issue 13 item 10).
    """

    def __init__(self):
        super().__init__(name="training_state")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="loss_sum")
        self.loss_count = tf.Variable(0, dtype=tf.int64, trainable=False, name="loss_count")
        self.seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="seconds")
        self.history_json = tf.Variable("{}", dtype=tf.string, trainable=False, name="history")

    @property
    def history(self) -> dict[str, list]:
        return json.loads(self.history_json.numpy().decode("utf-8"))

    def begin_epoch(self, epoch: int) -> None:
        """Starts `epoch` afresh unless it is the one a restored backup stopped in."""
        if int(self.epoch.numpy()) != epoch:
            self.epoch.assign(epoch)
            self.step.assign(0)
            self.loss_sum.assign(0.0)
            self.loss_count.assign(0)
            self.seconds.assign(0.0)

    def add_step(self, loss: float, seconds: float) -> None:
        """Counts one finished training step of the epoch in progress."""
        self.step.assign_add(1)
        self.loss_sum.assign_add(float(loss))
        self.loss_count.assign_add(1)
        self.seconds.assign_add(float(seconds))

    def epoch_loss(self) -> float:
        """Mean training loss over every step of the epoch in progress (NaN before a step)."""
        count = int(self.loss_count.numpy())
        return float(self.loss_sum.numpy()) / count if count else float("nan")

    def end_epoch(self, history: dict) -> None:
        """Marks the epoch in progress complete, with `history` covering it."""
        self.history_json.assign(json.dumps(history))
        self.epoch.assign_add(1)
        self.step.assign(0)
        self.loss_sum.assign(0.0)
        self.loss_count.assign(0)
        self.seconds.assign(0.0)


def _state_key(name: str) -> str:
    return f"{_STATE}/{name}/.ATTRIBUTES/VARIABLE_VALUE"


def backup_position(backup_dir: str) -> tuple[int, int] | None:
    """`(epoch, step)` of the latest complete backup in `backup_dir`; None when there is none.

    Read-only and safe while a run is writing (a checkpoint swept in between reads as None).

    Args:
        backup_dir: str. A `TrainingBackup` directory (`<workdir>/backup`).

    Returns:
        `(epochs completed, steps completed in the next epoch)`, or None.
    """
    latest = tf.train.latest_checkpoint(backup_dir) if os.path.isdir(backup_dir) else None
    if not latest:
        return None
    try:
        reader = tf.train.load_checkpoint(latest)
        return int(reader.get_tensor(_state_key("epoch"))), int(
            reader.get_tensor(_state_key("step"))
        )
    except (tf.errors.OpError, ValueError):
        return None


class TrainingBackup(keras.callbacks.Callback):
    """Backs up model, optimizer and `TrainingState`; restores them when training starts.

    Multi-worker: every worker saves (saving may involve collectives), but only the chief
    writes into `backup_dir`; the others write to their private `write_dir`. Every worker
    restores from the chief's backup (on storage all workers read, as TF requires for
    multi-worker fault tolerance): after each step all replicas hold identical weights.

    Args:
        backup_dir: str. The chief's backup directory (read by every worker).
        write_dir: str. Where this process writes (== `backup_dir` on the chief). Defaults to
            `backup_dir`.
        chief: bool. Whether this process is the chief. Defaults to True.
        save_freq: "epoch" or int. Back up at each epoch end, and also every `save_freq` steps.
            Defaults to "epoch".
        max_to_keep: int. Backups kept by the `tf.train.CheckpointManager`. Defaults to 1.

    Raises:
        BackupError: (on train begin) the latest backup does not match the model.
    """

    def __init__(
        self,
        backup_dir: str,
        write_dir: str | None = None,
        chief: bool = True,
        save_freq="epoch",
        max_to_keep: int = 1,
    ):
        super().__init__()
        self.backup_dir = backup_dir
        self.write_dir = write_dir or backup_dir
        self.chief = chief
        self.save_freq = save_freq
        self.max_to_keep = max_to_keep
        self.state = TrainingState()
        self._checkpoint = None
        self._manager = None
        self._since_save = 0

    def _ensure_checkpoint(self):
        if self._checkpoint is None:
            self._checkpoint = tf.train.Checkpoint(
                model=self.model, optimizer=self.model.optimizer, **{_STATE: self.state}
            )
        return self._checkpoint

    def restore(self) -> bool:
        """Restores the latest backup of `backup_dir` (if any); True when one was restored."""
        latest = (
            tf.train.latest_checkpoint(self.backup_dir) if os.path.isdir(self.backup_dir) else None
        )
        if not latest:
            return False
        try:
            self._ensure_checkpoint().restore(latest).assert_existing_objects_matched()
        except (tf.errors.OpError, AssertionError, ValueError) as err:
            raise BackupError(
                f"backup {latest} cannot be restored ({type(err).__name__}); delete "
                f"{self.backup_dir} to restart the run from scratch"
            ) from None
        return True

    def save(self) -> str:
        """Writes a backup now (every worker must call it; only the chief's is kept)."""
        if self._manager is None:
            os.makedirs(self.write_dir, exist_ok=True)
            self._manager = tf.train.CheckpointManager(
                self._ensure_checkpoint(), self.write_dir, max_to_keep=self.max_to_keep
            )
        self._since_save = 0
        return self._manager.save()

    def on_train_begin(self, logs=None):
        self._since_save = 0
        if self.restore():
            logger.info(
                "restored %s at epoch %d, step %d",
                self.backup_dir,
                int(self.state.epoch.numpy()) + 1,
                int(self.state.step.numpy()),
            )

    def on_train_batch_end(self, batch, logs=None):
        self._since_save += 1
        if self.save_freq != "epoch" and self._since_save >= self.save_freq:
            self.save()

    def on_epoch_end(self, epoch, logs=None):
        self.save()

    def on_train_end(self, logs=None):
        if self.chief and os.path.isdir(self.backup_dir):  # a finished run needs no backup
            shutil.rmtree(self.backup_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Best adapter
# --------------------------------------------------------------------------------------------
class BestAdapterCheckpoint(keras.callbacks.Callback):
    """Saves the adapter (every trainable variable, by path) when `monitor` improves.

    Replaces `ModelCheckpoint(save_weights_only=True)`: only the trainable variables are written
    (`vit_lora.save_adapter`). The best value survives a resume (kept in `<path>.json`).

    Args:
        path: str. Adapter file (`.npz`, see `vit_lora.save_adapter`).
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
            files.write_json_atomic(
                self.path + ".json",
                {"best": self.best, "epoch": int(epoch) + 1, "monitor": self.monitor},
            )
