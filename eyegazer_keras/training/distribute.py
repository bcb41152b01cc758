"""tf.distribute strategies from a flag, chief-only writing, and the batch-size rule.

Batch-size rule: `batch_size` in every config is the GLOBAL batch. Each of the
`strategy.num_replicas_in_sync` replicas sees `batch_size // num_replicas` examples per step; the
global batch must divide evenly.

Every model is built (from_preset, LoRA, optimizer) inside `strategy.scope()` by the trainer.

Strategies (`--set strategy=...`):

| name | strategy |
|---|---|
| `auto` | `MirroredStrategy` over all GPUs when there are several, else the default strategy |
| `default` | `tf.distribute.get_strategy()` (one device, no replication) |
| `onedevice` | `OneDeviceStrategy` on the first GPU, else the CPU |
| `mirrored` | `MirroredStrategy` over all GPUs, else over all logical CPUs |
| `multiworker` | `MultiWorkerMirroredStrategy`; cluster from the `TF_CONFIG` environment variable |
| `tpu` | `TPUStrategy` via `TPUClusterResolver` (`--set tpu=...` address or Cloud TPU VM) |
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile

import tensorflow as tf

logger = logging.getLogger(__name__)

STRATEGIES = ("auto", "default", "onedevice", "mirrored", "multiworker", "tpu")


class StrategyError(ValueError):
    """A strategy cannot be created here; the message says why and what to set."""


def get_strategy(name: str = "auto", tpu_address: str | None = None) -> tf.distribute.Strategy:
    """Returns the `tf.distribute.Strategy` named by `name` (see the module docstring).

    Args:
        name: str. One of `STRATEGIES`. Defaults to "auto".
        tpu_address: str. TPU name/address for `tpu`. Defaults to None (Cloud TPU VM / env).
    """
    if name not in STRATEGIES:
        raise StrategyError(f"strategy '{name}' is not one of: {', '.join(STRATEGIES)}")
    # Physical listing does not start the runtime: multi-worker collectives must be configured
    # before it starts.
    num_gpus = len(tf.config.list_physical_devices("GPU"))
    if name == "auto":
        name = "mirrored" if num_gpus > 1 else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "onedevice":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if num_gpus else "/cpu:0")
    if name == "mirrored":
        kind = "GPU" if num_gpus else "CPU"
        devices = [d.name for d in tf.config.list_logical_devices(kind)]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multiworker":
        if not os.environ.get("TF_CONFIG"):
            raise StrategyError(
                "strategy=multiworker needs the TF_CONFIG environment variable, e.g. "
                '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                '"task": {"type": "worker", "index": 0}}'
            )
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def task_info(strategy: tf.distribute.Strategy) -> tuple[str | None, int]:
    """`(task_type, task_id)` of this process; `(None, 0)` outside a multi-worker cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None, 0
    return resolver.task_type, int(resolver.task_id or 0)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True where this process should write checkpoints, adapters, metrics and exports.

    The chief is task `chief`, or `worker` 0 when the cluster has no chief.
    """
    task_type, task_id = task_info(strategy)
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


def per_replica_batch_size(global_batch_size: int, strategy: tf.distribute.Strategy) -> int:
    """Applies the batch-size rule and logs it; raises when the global batch does not divide."""
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise StrategyError(
            f"batch_size={global_batch_size} is the GLOBAL batch and must divide evenly over "
            f"{replicas} replicas; set --set batch_size={replicas * max(1, global_batch_size // replicas)}"
        )
    per_replica = global_batch_size // replicas
    logger.info(
        "batch size: global %d = %d replicas x %d per replica (%s)",
        global_batch_size,
        replicas,
        per_replica,
        type(strategy).__name__,
    )
    return per_replica


class WriteDir:
    """Where this process writes: the real dir on the chief, a temporary dir elsewhere.

    Non-chief workers must still run the same code (saving can involve collectives), so they get
    a private temporary directory that `cleanup()` removes.

    Args:
        path: str. The run's real output dir.
        chief: bool. Whether this process is the chief.
    """

    def __init__(self, path: str, chief: bool):
        self.chief = chief
        self.real = path
        self.path = path if chief else tempfile.mkdtemp(prefix="eyegazer-worker-")
        os.makedirs(self.path, exist_ok=True)

    def join(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def cleanup(self) -> None:
        if not self.chief:
            shutil.rmtree(self.path, ignore_errors=True)
