"""Process and hardware settings for training: XLA fusion flags, threads, precision, XLA.

Importable without keras, keras-hub, matplotlib or sklearn (TensorFlow is imported only inside
the functions that need it), so the `eyegazer` CLI calls `add_cpu_fusion_flags` for every verb
before anything starts TensorFlow.

Example:

```python
from eyegazer_keras import configs
from eyegazer_keras.training import runtime

runtime.configure_runtime()  # first thing, before TensorFlow runs an op
config = runtime.resolve_auto(configs.TrainConfig(name="x", mixed_precision="auto"))
with runtime.xla_fusion(config):
    pass  # build and train here
```
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from eyegazer_keras.configs import settings as configs_lib

logger = logging.getLogger(__name__)

__all__ = [
    "CPU_FUSION_FLAGS",
    "add_cpu_fusion_flags",
    "configure_runtime",
    "resolve_auto",
    "xla_fusion",
]


# XLA auto-clustering limited to element-wise/reduction ops ("fusible"), for CPU hosts. These
# flags are read once, when TensorFlow runs its first function, and do nothing on their own:
# clustering starts only under `xla_fusion` (`jit_compile="fusible"`, which "auto" picks on CPU
# under mixed precision).
CPU_FUSION_FLAGS = ("--tf_xla_cpu_global_jit", "--tf_xla_ops_to_cluster=FUSIBLE")


def add_cpu_fusion_flags() -> None:
    """Adds `CPU_FUSION_FLAGS` to ``TF_XLA_FLAGS`` unless that variable already sets either flag.

    They let `xla_fusion` fuse the element-wise ops on CPU while matmuls stay on oneDNN. They
    must be in place before TensorFlow runs any function (a ``tf.function``, a ``tf.data`` map):
    the `eyegazer` CLI calls this first thing, `configure_runtime` again. Later in a process
    (a notebook that ran TensorFlow cells first) they are ignored and ``"fusible"`` trains
    unfused: same results, slower.
    """
    flags = os.environ.get("TF_XLA_FLAGS", "")
    if not any(f.split("=")[0] in flags for f in CPU_FUSION_FLAGS):
        os.environ["TF_XLA_FLAGS"] = " ".join([flags, *CPU_FUSION_FLAGS]).strip()


def configure_runtime() -> None:
    """Process settings that must precede TensorFlow's first op (`eyegazer train` calls it first).

    * On small CPU machines one inter-op thread avoids two op threads fighting over the same
      cores (benchmarks/NOTES.md).
    * `add_cpu_fusion_flags`.
    """
    import tensorflow as tf

    add_cpu_fusion_flags()
    if not tf.config.list_physical_devices("GPU") and (os.cpu_count() or 1) <= 4:
        try:
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            logger.info("TensorFlow already initialised; inter-op threads left as they are")


@contextlib.contextmanager
def xla_fusion(config: configs_lib.TrainConfig):
    """While active, `jit_compile="fusible"` XLA-clusters the element-wise ops of new functions.

    TensorFlow's auto-clustering (``tf.config.optimizer.set_jit``) is process-wide, so it is
    switched on for the training run only and restored afterwards. With `configure_runtime`'s
    flags only fusible ops are clustered: on CPU, ``jit_compile=True`` also hands the matmuls to
    XLA, which is slower than oneDNN there (benchmarks/NOTES.md). Any other setting: no-op.
    """
    if config.jit_compile != "fusible":
        yield
        return
    import tensorflow as tf

    previous = tf.config.optimizer.get_jit()
    tf.config.optimizer.set_jit("autoclustering")
    try:
        yield
    finally:
        tf.config.optimizer.set_jit(previous or False)


def resolve_auto(config: configs_lib.TrainConfig) -> configs_lib.TrainConfig:
    """Resolves `mixed_precision="auto"` and `jit_compile="auto"` for the hardware present.

    GPU: bfloat16 from compute capability 8.0 (A100, H100), float16 before (V100, T4, with loss
    scaling), XLA on. TPU: bfloat16 + XLA. CPU: float32 and no XLA; with mixed precision set,
    XLA for the element-wise ops only (``"fusible"``, see `xla_fusion`): +15 % for a bf16 ViT-S
    step, while in float32 it gains ≈ 1 % and costs compile time (benchmarks/NOTES.md).
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    accelerator = bool(gpus) or config.strategy == "tpu"
    if isinstance(config.mixed_precision, str) and config.mixed_precision.lower() == "none":
        config.mixed_precision = None
    if config.mixed_precision == "auto":
        if config.strategy == "tpu":
            config.mixed_precision = "bfloat16"
        elif gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            capability = tuple(details.get("compute_capability", (0, 0)))
            config.mixed_precision = "bfloat16" if capability >= (8, 0) else "float16"
        else:
            config.mixed_precision = None
    mixed = config.mixed_precision in ("bfloat16", "float16")
    if isinstance(config.jit_compile, str):
        value = config.jit_compile.lower()
        if value == "auto":  # fusion pays on CPU under mixed precision only (NOTES.md)
            config.jit_compile = True if accelerator else ("fusible" if mixed else False)
        elif value == "fusible":
            config.jit_compile = "fusible"
        else:
            config.jit_compile = value in ("true", "1", "yes", "on")
    else:
        config.jit_compile = bool(config.jit_compile)
    return config
