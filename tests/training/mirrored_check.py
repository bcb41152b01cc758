"""Run as a script: 2 logical CPU replicas vs 1 device, one step, same global batch.

With `DATA_DIR WORKDIR` arguments it instead runs a one-epoch `run_training` with
`strategy=mirrored` (one MirroredStrategy per process: a second one in the same process
collides on collective instance keys).

Prints one JSON line. Logical devices must be configured before TensorFlow starts, hence a
separate process (see tests/training/test_distribute.py).
"""

import json
import sys
import time

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from eyegazer_keras import runs  # noqa: E402
from eyegazer_keras.configs import settings as configs  # noqa: E402
from eyegazer_keras.runs import train  # noqa: E402
from eyegazer_keras.training import distribute  # noqa: E402
from eyegazer_keras.training import trainer as trainer_lib  # noqa: E402

BACKBONE = dict(configs.RUNLOCAL_VIT)  # the tiny test ViT (tests/test_case.py)


def one_step(strategy, init_weights, x, y, w, steps=1):
    config = configs.TrainConfig(
        image_size=32, backbone_config=BACKBONE, lora_rank=4, batch_size=16
    )
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = runs.build_model(config)
        optimizer = trainer_lib.make_optimizer(config)
        model.compile(optimizer=optimizer)
        optimizer.build(model.trainable_variables)
    if init_weights is not None:
        model.set_weights(init_weights)
    start = [v.numpy().copy() for v in model.weights]
    trainer = trainer_lib.Trainer(model, optimizer, strategy, 16)
    ds = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(16).repeat()
    it = iter(strategy.experimental_distribute_dataset(ds))
    trainer.train_step(*next(it))  # compile
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(*next(it))
    per_step = (time.perf_counter() - t0) / max(steps, 1)
    return start, model, per_step


def search_mode(data_dir, workdir):
    """A 1-trial AutoKeras search under strategy=mirrored (2 logical CPUs)."""
    from eyegazer_keras.runs import search

    config = configs.apply_overrides(
        configs.get_config("search-demo"),
        {
            "dataset_config": "tiny",
            "data_dir": data_dir,
            "image_size": 16,
            "max_trials": 1,
            "epochs": 1,
            "batch_size": 16,
            "strategy": "mirrored",
            "export": False,
        },
    )
    lines = []
    summary = search.run_search(config, workdir, progress=lines.append)
    print(
        json.dumps(
            {
                "search_lines": [x for x in lines if "MirroredStrategy" in x],
                "qwk_tuned": summary["metrics"]["qwk_tuned"],
            }
        )
    )


def main():
    if len(sys.argv) > 3 and sys.argv[3] == "search":
        search_mode(sys.argv[1], sys.argv[2])
        return
    if len(sys.argv) > 1:  # a full one-epoch `eyegazer train` under strategy=mirrored
        data_dir, workdir = sys.argv[1], sys.argv[2]
        config = configs.apply_overrides(
            configs.TrainConfig(name="mirrored"),
            {
                "dataset_config": "tiny",
                "data_dir": data_dir,
                "image_size": 32,
                "backbone_config": BACKBONE,
                "batch_size": 16,
                "epochs": 1,
                "augment": False,
                "export": False,
                "strategy": "mirrored",
            },
        )
        summary = train.run_training(config, workdir)
        print(
            json.dumps(
                {
                    "run_replicas": summary["replicas"],
                    "per_replica": summary["per_replica_batch_size"],
                }
            )
        )
        return
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 5, 16)
    w = rng.uniform(0.5, 2.0, 16).astype("float32")
    mirrored = distribute.get_strategy("mirrored")
    single = tf.distribute.OneDeviceStrategy("/cpu:0")
    start_m, model_m, _ = one_step(mirrored, None, x, y, w, steps=0)
    _, model_s, _ = one_step(single, start_m, x, y, w, steps=0)
    diffs = [
        float(np.max(np.abs(a.numpy() - b.numpy())))
        for a, b in zip(model_m.weights, model_s.weights, strict=True)
    ]
    moved = [
        float(np.max(np.abs(a.numpy() - s))) for a, s in zip(model_m.weights, start_m, strict=True)
    ]
    _, _, t_m = one_step(mirrored, start_m, x, y, w, steps=5)
    _, _, t_s = one_step(single, start_m, x, y, w, steps=5)
    print(
        json.dumps(
            {
                "replicas": mirrored.num_replicas_in_sync,
                "devices": list(mirrored.extended.worker_devices),
                "max_weight_diff": max(diffs),
                "max_weight_change": max(moved),
                "step_seconds_2_replicas": t_m,
                "step_seconds_1_device": t_s,
            }
        )
    )


if __name__ == "__main__":
    main()
