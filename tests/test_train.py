"""eyegazer train / evaluate / export on the tiny synthetic set: the real workflow, tiny sizes."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from eyegazer_keras import configs, runtime, train
from eyegazer_keras.models import vit_lora
from tests.conftest import TINY_BACKBONE, tiny_train_overrides, train_command


def _config(data_dir, **extra):
    return configs.apply_overrides(
        configs.TrainConfig(name="tiny"), tiny_train_overrides(data_dir, **extra)
    )


@pytest.fixture(scope="module")
def finished_run(tiny_data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    lines = []
    summary = train.run_training(
        _config(tiny_data_dir, epochs=2, export=True, pretrain_epochs=1),
        workdir,
        progress=lines.append,
    )
    return workdir, summary, lines


def test_run_writes_everything(finished_run):
    workdir, summary, lines = finished_run
    for name in [
        "config.json",
        "run.json",
        "history.json",
        "adapter.npz",
        "metrics_validation.json",
        "confusion_matrix_validation.png",
        "roc_validation.png",
        "training_curves.png",
        os.path.join("checkpoints", "best_adapter.npz"),
        os.path.join("export", "saved_model.pb"),
        os.path.join("export", "MODEL_CARD.md"),
        os.path.join("pretrained_backbone", "config.json"),
    ]:
        assert os.path.exists(os.path.join(workdir, name)), name
    assert not os.path.exists(os.path.join(workdir, "backup")), (
        "backup is removed after a finished run"
    )
    assert any(os.scandir(os.path.join(workdir, "logs")))
    m = json.load(open(os.path.join(workdir, "metrics_validation.json")))
    for key in [
        "accuracy",
        "majority_baseline",
        "qwk",
        "auroc",
        "referable",
        "per_class_recall",
        "confusion_matrix",
        "collapse_events",
    ]:
        assert key in m, key
    assert m["n"] == 24 and np.asarray(m["confusion_matrix"]).sum() == 24
    history = json.load(open(os.path.join(workdir, "history.json")))
    assert len(history["val_qwk"]) == 2
    assert summary["parameters"]["trainable"] < summary["parameters"]["total"]
    assert summary["adapter"]["adapter_bytes"] < summary["adapter"]["full_model_bytes"]
    assert any("stage 1/2" in line for line in lines) and any("epoch 2/2" in line for line in lines)


def test_lora_stage_loads_the_pretrained_preset(finished_run):
    workdir, summary, _ = finished_run
    assert summary["backbone_source"].endswith("pretrained_backbone")
    info = (
        json.load(open(os.path.join(workdir, "adapter.npz.json")))
        if os.path.exists(os.path.join(workdir, "adapter.npz.json"))
        else vit_lora.read_adapter_metadata(os.path.join(workdir, "adapter.npz"))
    )
    assert "pretrained_backbone" in json.dumps(info)


def test_evaluate_matches_training_metrics_and_refuses_test(finished_run):
    workdir, summary, _ = finished_run
    before = json.load(open(os.path.join(workdir, "metrics_validation.json")))
    after = train.evaluate_run(workdir, "validation")
    assert after["qwk"] == pytest.approx(before["qwk"], abs=1e-6)
    assert after["confusion_matrix"] == before["confusion_matrix"]
    with pytest.raises(train.RunError, match="no labels"):
        train.evaluate_run(workdir, "test")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "eyegazer_keras.cli",
            "evaluate",
            "--workdir",
            workdir,
            "--split",
            "test",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "no labels" in out.stderr and "Traceback" not in out.stderr


def test_export_from_workdir_predicts(finished_run, tmp_path):
    from eyegazer_keras import predict

    workdir, _, _ = finished_run
    out = train.export_run(workdir, str(tmp_path / "exp"))
    from eyegazer_datasets.synthetic_fundus import generator
    from PIL import Image

    img, _ = generator.render(5, 3, 200)
    Image.fromarray(img).save(tmp_path / "eye.png")
    (result,) = predict.predict_paths(out, [str(tmp_path / "eye.png")])
    assert len(result["probabilities"]) == 5 and abs(sum(result["probabilities"]) - 1) < 1e-4


class CollapsedModel(keras.Model):
    """Always predicts class 0, whatever the image."""

    def __init__(self):
        super().__init__(name="collapsed")
        self.head = keras.layers.Dense(
            5,
            activation="softmax",
            kernel_initializer="zeros",
            bias_initializer=keras.initializers.Constant([6, 0, 0, 0, 0]),
        )

    def call(self, x):
        return self.head(tf.reduce_mean(x, axis=[1, 2]) * 0.0)


def test_collapse_detector_warns_records_and_stops(caplog, tmp_path):
    model = CollapsedModel()
    model(np.zeros((1, 8, 8, 3), "float32"))
    opt = keras.optimizers.SGD(0.0)
    model.compile(optimizer=opt)
    strategy = tf.distribute.get_strategy()
    trainer = train.Trainer(model, opt, strategy, 4)
    x = np.random.default_rng(0).uniform(0, 255, (16, 8, 8, 3)).astype("float32")
    y = np.arange(16) % 5
    ds = tf.data.Dataset.from_tensor_slices((x, y, np.ones(16, "float32"))).batch(4)

    def evaluate():
        from eyegazer_keras import metrics

        probs = trainer.predict(ds)
        m = metrics.classification_metrics(y, probs, "grade")
        return {
            "val_qwk": m["qwk"] or 0.0,
            "val_collapse_fraction": m["collapse_fraction"],
            "val_majority_prediction": "no_dr",
        }

    detector = train.CollapseDetector(threshold=0.95, patience=2, stop=True)
    backup = train.ChiefBackupAndRestore(str(tmp_path / "b"), str(tmp_path / "b"), chief=True)
    with caplog.at_level("WARNING"):
        history = trainer.fit(lambda e: ds, 4, 6, evaluate, [detector, backup], backup)
    assert len(history["loss"]) == 2  # stopped after `patience` collapsed epochs, not 6
    assert detector.events and detector.events[0]["epoch"] == 2 and detector.events[0]["stopped"]
    assert any("COLLAPSE" in r.message for r in caplog.records)


def test_collapse_detector_ignores_healthy_predictions():
    detector = train.CollapseDetector(threshold=0.95, patience=1)
    detector.set_model(keras.Sequential())
    detector.on_epoch_end(0, {"val_collapse_fraction": 0.6})
    assert detector.events == []


@pytest.mark.slow
def test_kill_minus_nine_then_resume(tiny_data_dir, tmp_path):
    workdir = tmp_path / "run"
    cmd = train_command(tiny_data_dir, workdir, epochs=6, checkpoint_every_steps=2)
    meta = workdir / "backup" / "training_metadata.json"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if meta.exists():
            info = json.loads(meta.read_text())
            if info["epoch"] >= 1 and info["batch"] > 0:  # mid-epoch, after one full epoch
                proc.send_signal(signal.SIGKILL)
                killed_at = info
                break
        time.sleep(0.05)
    proc.wait()
    assert killed_at is not None, "the run finished or stalled before it could be killed"
    assert proc.returncode == -signal.SIGKILL
    assert not (workdir / "run.json").exists()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"resuming at epoch {killed_at['epoch'] + 1}" in out.stdout
    history = json.loads((workdir / "history.json").read_text())
    assert len(history["val_qwk"]) == 6  # epochs before the kill are kept, none repeated
    assert (workdir / "run.json").exists() and not (workdir / "backup").exists()
    # LoRA factors survived the restore (Keras load_weights would have zeroed B).
    data = np.load(workdir / "adapter.npz", allow_pickle=True)
    lora_b = [k for k in data.files if "lora_kernel_b" in k]
    assert lora_b and all(np.abs(data[k]).max() > 0 for k in lora_b)


def test_trains_on_the_aptos_builder_output(tmp_path):
    """The same workflow on APTOS 2019 as the builder publishes it (dummy Kaggle zip)."""
    from eyegazer_keras import data

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    manual = os.path.join(repo, "datasets", "aptos2019", "dummy_data", "zip")
    data_dir = str(tmp_path / "tfds")
    data.prepare("aptos2019", data_dir=data_dir, config="256", manual_dir=manual)
    config = _config(data_dir, dataset="aptos2019", dataset_config="256", batch_size=4, export=True)
    summary = train.run_training(config, str(tmp_path / "run"))
    assert summary["metrics"]["n"] == 3
    meta = json.load(open(tmp_path / "run" / "export" / "assets.extra" / "eyegazer_metadata.json"))
    assert meta["source_size"] == 256 and meta["image_size"] == 32


def test_bfloat16_and_xla_options_train(tiny_data_dir, tmp_path):
    lines = []
    summary = train.run_training(
        _config(tiny_data_dir, mixed_precision="bfloat16", jit_compile=True, epochs=1),
        str(tmp_path / "run"),
        progress=lines.append,
    )
    assert np.isfinite(json.load(open(tmp_path / "run" / "history.json"))["loss"][0])
    assert any(line.startswith("model: trainable params:") for line in lines)
    assert summary["metrics"]["n"] == 24


def test_evaluate_and_export_a_run_without_pretraining(tiny_data_dir, tmp_path):
    """backbone="config" + pretrain_epochs=0: rebuilding the run reproduces its frozen weights."""
    workdir = str(tmp_path / "run")
    train.run_training(_config(tiny_data_dir, epochs=1), workdir)
    before = json.load(open(os.path.join(workdir, "metrics_validation.json")))
    after = train.evaluate_run(workdir, "validation")
    assert after["qwk"] == pytest.approx(before["qwk"], abs=1e-6)
    assert os.path.exists(
        os.path.join(train.export_run(workdir, str(tmp_path / "exp")), "saved_model.pb")
    )


def test_resume_with_a_different_config_is_refused(tiny_data_dir, tmp_path):
    workdir = tmp_path / "run"
    (workdir / "backup").mkdir(parents=True)
    config = _config(tiny_data_dir)
    train.configs_lib.validate(config)
    train._write_json(str(workdir / "config.json"), configs.to_dict(config))
    (workdir / "backup" / "training_metadata.json").write_text('{"epoch": 1, "batch": 0}')
    train._check_resume_config(config, str(workdir))  # same config: fine
    changed = _config(tiny_data_dir, batch_size=8)
    with pytest.raises(
        train.RunError, match="different config \\(batch_size\\).*--set batch_size=16"
    ):
        train._check_resume_config(changed, str(workdir))
    train._check_resume_config(_config(tiny_data_dir, jit_compile=False), str(workdir))  # speed
    # A config.json from before `lora_layout` existed means Keras core's layout.
    old = json.loads((workdir / "config.json").read_text())
    del old["lora_layout"]
    (workdir / "config.json").write_text(json.dumps(old))
    with pytest.raises(train.RunError, match='--set lora_layout="keras"'):
        train._check_resume_config(config, str(workdir))
    train._check_resume_config(_config(tiny_data_dir, lora_layout="keras"), str(workdir))


def test_collapse_detector_state_survives_resume():
    detector = train.CollapseDetector(threshold=0.9, patience=2)
    detector.restore(
        {
            "val_collapse_fraction": [0.95, 0.97, 0.5, 0.99],
            "val_majority_prediction": ["no_dr", "no_dr", "mild", "no_dr"],
        }
    )
    assert [e["epoch"] for e in detector.events] == [2]
    assert detector._streak == 1  # epoch 4 collapsed: one more collapsed epoch fires again


FUSION_SCRIPT = r"""
import json, os, sys
os.environ.pop("TF_XLA_FLAGS", None)
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"  # for "Compiled cluster using XLA!"
import keras, numpy as np, tensorflow as tf
from eyegazer_keras import cli, configs, runtime, train
if len(sys.argv) > 2:  # as `eyegazer demo`: TensorFlow prepares data before training starts
    assert cli.main(["prepare", "synthetic_fundus", "--config", "tiny", "--data-dir", sys.argv[2]]) == 0
    print("MARK prepared", file=sys.stderr, flush=True)
runtime.configure_runtime()
flags = os.environ["TF_XLA_FLAGS"]
config = configs.TrainConfig(name="t", backbone="config", backbone_config=json.loads(sys.argv[1]),
                             image_size=32, lora_rank=4, batch_size=8, strategy="default")
runtime.resolve_auto(config)
rng = np.random.default_rng(0)
x = tf.constant(rng.uniform(0, 255, (8, 32, 32, 3)).astype("float32"))
y = tf.constant(rng.integers(0, 5, 8).astype("int32"))
w = tf.ones([8])
losses = {}
for mode in (False, "fusible"):
    config.jit_compile = mode
    with runtime.xla_fusion(config):
        jit_inside = tf.config.optimizer.get_jit()
        keras.utils.set_random_seed(0)
        model = train.build_model(config, "config")
        optimizer = train.make_optimizer(config)
        optimizer.build(model.trainable_variables)
        trainer = train.Trainer(model, optimizer, tf.distribute.get_strategy(), 8, mode)
        assert trainer.jit_compile is False  # "fusible" never XLA-compiles the whole step
        losses[str(mode)] = [float(trainer.train_step(x, y, w)) for _ in range(3)]
    print(f"MARK {mode} jit={jit_inside!r} after={tf.config.optimizer.get_jit()!r}",
          file=sys.stderr, flush=True)
print("RESULT " + json.dumps({"flags": flags, "auto": "fusible", "losses": losses}))
"""


@pytest.mark.parametrize("order", ["fresh_process", "after_cli_prepare"])
def test_cpu_fusion_clusters_elementwise_ops_and_keeps_the_loss(tmp_path, order):
    """jit_compile="fusible" (the CPU default): XLA clusters appear only inside `xla_fusion`,
    and the training losses match the unfused step. Fails if the lever is removed, and (second
    case) if the CLI sets the flags too late for `eyegazer demo`, which prepares data first."""
    extra = [str(tmp_path / "tfds")] if order == "after_cli_prepare" else []
    proc = subprocess.run(
        [sys.executable, "-c", FUSION_SCRIPT, json.dumps(TINY_BACKBONE), *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert "--tf_xla_ops_to_cluster=FUSIBLE" in result["flags"]
    assert "--tf_xla_cpu_global_jit" in result["flags"]
    err = proc.stderr
    if extra:
        assert err.index("MARK prepared") < err.index("MARK False")
    unfused_end = err.index("MARK False jit='' after=''")
    fused_end = err.index("MARK fusible jit='autoclustering' after=''")
    compiled = err.find("Compiled cluster using XLA")
    assert unfused_end < compiled < fused_end, "XLA clustered nothing, or clustered outside"
    np.testing.assert_allclose(result["losses"]["fusible"], result["losses"]["False"], rtol=1e-4)


def test_resolve_auto_picks_fusion_on_cpu(monkeypatch):
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda *a, **k: [])  # a CPU host
    bf16 = runtime.resolve_auto(_config("unused", jit_compile="auto", mixed_precision="bfloat16"))
    assert bf16.jit_compile == "fusible"
    fp32 = runtime.resolve_auto(_config("unused", jit_compile="auto", mixed_precision="auto"))
    assert fp32.mixed_precision is None and fp32.jit_compile is False
    assert runtime.resolve_auto(_config("unused", jit_compile="false")).jit_compile is False
    # Unvalidated values (a hand-edited config.json read by `load_run`):
    upper = configs.TrainConfig(name="x", jit_compile="FUSIBLE")
    assert runtime.resolve_auto(upper).jit_compile == "fusible"
    assert runtime.resolve_auto(configs.TrainConfig(name="x", jit_compile=1)).jit_compile is True


def test_backup_removes_a_checkpoint_a_kill_left_half_written(tmp_path):
    """A kill -9 during `Checkpoint.write` leaves `ckpt-E-B_temp/`; the next save must clean it
    (it used to fail the resumed run with "Is a directory")."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    stale = tmp_path / "ckpt-0-1_temp"
    stale.mkdir()
    (stale / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"half")
    (tmp_path / "ckpt-0-1.index").write_bytes(b"old")
    backup = train.ChiefBackupAndRestore(str(tmp_path), str(tmp_path), chief=True, save_freq=1)
    backup.set_model(model)
    backup.on_epoch_begin(0)
    backup.on_train_batch_end(1)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "training_metadata.json" in names
    assert all(n.startswith("ckpt-0-2.") for n in names if n != "training_metadata.json"), names
    assert backup.resume_position() == (0, 2)
