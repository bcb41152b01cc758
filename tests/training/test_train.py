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

from eyegazer_keras import files, fundus, runs
from eyegazer_keras.configs import settings as configs
from eyegazer_keras.models import vit_lora
from eyegazer_keras.runs import train
from eyegazer_keras.training import callbacks, runtime
from eyegazer_keras.training import trainer as trainer_lib
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
    after = runs.evaluate_run(workdir, "validation")
    assert after["qwk"] == pytest.approx(before["qwk"], abs=1e-6)
    assert after["confusion_matrix"] == before["confusion_matrix"]
    with pytest.raises(runs.RunError, match="no labels"):
        runs.evaluate_run(workdir, "test")
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


def test_evaluate_keeps_what_training_recorded(finished_run):
    """`eyegazer evaluate` rewrote metrics_validation.json without train's collapse_events."""
    workdir, summary, _ = finished_run
    before = json.load(open(os.path.join(workdir, "metrics_validation.json")))
    after = runs.evaluate_run(workdir, "validation", progress_bar=False)
    assert "collapse_events" in before
    assert after["collapse_events"] == before["collapse_events"] == summary["collapse_events"]
    stored = json.load(open(os.path.join(workdir, "metrics_validation.json")))
    assert stored["collapse_events"] == before["collapse_events"]


def test_evaluate_shows_a_progress_bar_on_request(finished_run, capsys):
    workdir, _, _ = finished_run
    runs.evaluate_run(workdir, "validation", progress_bar=True)
    assert "evaluate validation" in capsys.readouterr().err
    runs.evaluate_run(workdir, "validation")  # default: only on a terminal (pytest's is not)
    assert "evaluate validation" not in capsys.readouterr().err


def test_run_folder_is_self_contained(finished_run, tiny_data_dir, tmp_path, monkeypatch):
    """Issue 13 item 8: config.json holds absolute paths; a run folder copied elsewhere exports
    without the dataset, and evaluate works from any working directory."""
    import shutil

    workdir, _, _ = finished_run
    stored = json.load(open(os.path.join(workdir, "config.json")))
    assert os.path.isabs(stored["data_dir"]) and os.path.samefile(stored["data_dir"], tiny_data_dir)
    run_data = json.load(open(os.path.join(workdir, runs.RUN_DATA)))
    spec = fundus.PreprocessingSpec.from_dict(run_data["preprocessing"])
    assert spec == fundus.PreprocessingSpec(stored_size=64, ben_graham=False, crop="fundus")
    assert run_data["class_names"] == ["no_dr", "mild", "moderate", "severe", "proliferative"]
    assert run_data["splits"] == {"train": 80, "validation": 24, "test": 16}
    # Evaluate from another working directory, through a relative path to the run.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    m = runs.evaluate_run(os.path.relpath(workdir, elsewhere), "validation", progress_bar=False)
    assert m["n"] == 24
    # Copy the run to a new place and make its dataset unreachable: export still works.
    copy = tmp_path / "copied_run"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("export"))
    config = json.load(open(copy / "config.json"))
    config["data_dir"] = str(tmp_path / "no_such_data_dir")
    (copy / "config.json").write_text(json.dumps(config))
    out = runs.export_run(str(copy), str(tmp_path / "exp"))
    meta = json.load(open(os.path.join(out, "assets.extra", "eyegazer_metadata.json")))
    assert meta["source_size"] == 64 and meta["image_size"] == 32
    card = json.load(open(os.path.join(out, "model_card.json")))
    assert card["data"]["splits"] == {"train": 80, "validation": 24, "test": 16}
    assert card["validation_metrics"]["n"] == 24
    assert not (tmp_path / "no_such_data_dir").exists()  # nothing was written there
    with pytest.raises(Exception, match="not prepared"):  # evaluate does need the data
        runs.evaluate_run(str(copy), "validation", progress_bar=False)


def test_a_preset_that_cannot_be_loaded_is_one_line(tiny_data_dir, tmp_path, monkeypatch):
    """Issue 13 item 12: no reachability probe; the loader's own error becomes the message. The
    network is blocked here, so the loader fails without any connection attempt leaving."""
    import socket

    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "network blocked by the test")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    config = _config(tiny_data_dir, backbone="vit_base_patch16_224_imagenet21k")
    with pytest.raises(runs.RunError) as err:
        train.run_training(config, str(tmp_path / "run"))
    message = str(err.value)
    assert "vit_base_patch16_224_imagenet21k" in message and "--set backbone=" in message
    assert "\n" not in message


def test_from_preset_loads_a_trained_run_and_save_to_preset_writes_one(finished_run, tmp_path):
    """`FundusImageClassifier.from_preset(run_dir)` is the run's best model with its spec; a
    preset written from it loads back the same, without the run folder."""
    from eyegazer_keras import FundusImageClassifier

    workdir, _, _ = finished_run
    _, reference = runs.load_run(workdir)
    model = FundusImageClassifier.from_preset(workdir)
    assert isinstance(model, FundusImageClassifier)
    with open(os.path.join(workdir, runs.RUN_DATA)) as f:
        assert model.spec == fundus.PreprocessingSpec.from_dict(json.load(f)["preprocessing"])
    stored = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3)).astype("uint8")
    expected = reference(fundus.to_model_input(stored, model.image_size))
    np.testing.assert_allclose(model.predict(stored, verbose=0), expected, atol=1e-6)
    model.save_to_preset(str(tmp_path / "preset"))
    again = FundusImageClassifier.from_preset(str(tmp_path / "preset"))
    np.testing.assert_allclose(again.predict(stored, verbose=0), expected, atol=1e-6)
    assert [v.path for v in again.trainable_weights] == [v.path for v in model.trainable_weights]
    with pytest.raises(ValueError, match="run folder"):
        FundusImageClassifier.from_preset(workdir, num_classes=5)


def test_export_from_workdir_predicts(finished_run, tmp_path):
    from eyegazer_keras.serving import predict

    workdir, _, _ = finished_run
    out = runs.export_run(workdir, str(tmp_path / "exp"))
    from eyegazer_datasets.synthetic_fundus import generator
    from PIL import Image

    img, _ = generator.render(5, 3, 200)
    Image.fromarray(img).save(tmp_path / "eye.png")
    (result,) = predict.predict_paths(out, [str(tmp_path / "eye.png")])
    assert len(result["probabilities"]) == 5 and abs(sum(result["probabilities"]) - 1) < 1e-4


def test_cli_export_precision_bfloat16(finished_run, tmp_path):
    """`eyegazer export --precision bfloat16`: recorded, and within 0.01 of the float32 export."""
    from eyegazer_datasets.synthetic_fundus import generator

    from eyegazer_keras import cli
    from eyegazer_keras.serving import predict

    workdir, _, _ = finished_run
    outs = {}
    for name in ("float32", "bfloat16"):
        out = str(tmp_path / name)
        assert cli.main(["export", "--workdir", workdir, "--output", out, "--precision", name]) == 0
        outs[name] = predict.load_exported(out)
    assert outs["bfloat16"].metadata["precision"]["compute"] == "bfloat16"
    assert outs["float32"].metadata["precision"]["compute"] == "float32"
    blobs = []
    for seed in range(16):
        img, _ = generator.render(seed, seed % 5, 200)
        blobs.append(tf.io.encode_png(img).numpy())
    p32, p16 = (outs[k].predict_bytes(blobs)["probabilities"] for k in ("float32", "bfloat16"))
    assert 0 < np.abs(p16 - p32).max() <= 0.01
    assert (p16.argmax(1) == p32.argmax(1)).mean() >= 0.99
    # The explanation endpoint stays float32 (its ViT walk adds layer outputs itself).
    assert outs["bfloat16"].metadata["explanation"]["precision"] == "float32"
    explain = outs["bfloat16"].loaded.signatures["serving_explain"]
    maps = explain(image_bytes=tf.constant(blobs[:2]))["explanation"].numpy()
    assert maps.shape == (2, 32, 32) and np.isfinite(maps).all()


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
    trainer = trainer_lib.Trainer(model, opt, strategy, 4)
    x = np.random.default_rng(0).uniform(0, 255, (16, 8, 8, 3)).astype("float32")
    y = np.arange(16) % 5
    ds = tf.data.Dataset.from_tensor_slices((x, y, np.ones(16, "float32"))).batch(4)

    def evaluate():
        from eyegazer_keras.evaluation import metrics

        probs = trainer.predict(ds)
        m = metrics.classification_metrics(y, probs, "grade")
        return {
            "val_qwk": m["qwk"] or 0.0,
            "val_collapse_fraction": m["collapse_fraction"],
            "val_majority_prediction": "no_dr",
        }

    detector = callbacks.CollapseDetector(threshold=0.95, patience=2, stop=True)
    backup = callbacks.TrainingBackup(str(tmp_path / "b"), str(tmp_path / "b"), chief=True)
    with caplog.at_level("WARNING"):
        history = trainer.fit(lambda e: ds, 4, 6, evaluate, [detector, backup], backup)
    assert len(history["loss"]) == 2  # stopped after `patience` collapsed epochs, not 6
    assert detector.events and detector.events[0]["epoch"] == 2 and detector.events[0]["stopped"]
    assert any("COLLAPSE" in r.message for r in caplog.records)


def test_collapse_detector_ignores_healthy_predictions():
    detector = callbacks.CollapseDetector(threshold=0.95, patience=1)
    detector.set_model(keras.Sequential())
    detector.on_epoch_end(0, {"val_collapse_fraction": 0.6})
    assert detector.events == []


@pytest.mark.slow
def test_kill_minus_nine_then_resume(tiny_data_dir, tmp_path):
    workdir = tmp_path / "run"
    cmd = train_command(tiny_data_dir, workdir, epochs=6, checkpoint_every_steps=2)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        position = callbacks.backup_position(str(workdir / "backup"))
        if position:
            info = {"epoch": position[0], "batch": position[1]}
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
    from eyegazer_keras.data import datasets as data

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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
    """backbone=None (a random ViT from backbone_config) + pretrain_epochs=0: rebuilding the run reproduces its frozen weights."""
    workdir = str(tmp_path / "run")
    train.run_training(_config(tiny_data_dir, epochs=1), workdir)
    before = json.load(open(os.path.join(workdir, "metrics_validation.json")))
    after = runs.evaluate_run(workdir, "validation")
    assert after["qwk"] == pytest.approx(before["qwk"], abs=1e-6)
    assert os.path.exists(
        os.path.join(runs.export_run(workdir, str(tmp_path / "exp")), "saved_model.pb")
    )


def test_resume_with_a_different_config_is_refused(tiny_data_dir, tmp_path):
    workdir = tmp_path / "run"
    config = _config(tiny_data_dir)
    configs.validate(config)
    files.write_json_atomic(str(workdir / "config.json"), configs.to_dict(config))
    _write_backup(str(workdir / "backup"), epoch=1, step=0)
    train._check_resume_config(config, str(workdir))  # same config: fine
    changed = _config(tiny_data_dir, batch_size=8)
    with pytest.raises(
        runs.RunError, match="different config \\(batch_size\\).*--set batch_size=16"
    ):
        train._check_resume_config(changed, str(workdir))
    train._check_resume_config(_config(tiny_data_dir, jit_compile=False), str(workdir))  # speed
    # A config.json from before `lora_layout` existed means Keras core's layout.
    old = json.loads((workdir / "config.json").read_text())
    del old["lora_layout"]
    (workdir / "config.json").write_text(json.dumps(old))
    with pytest.raises(runs.RunError, match='--set lora_layout="keras"'):
        train._check_resume_config(config, str(workdir))
    train._check_resume_config(_config(tiny_data_dir, lora_layout="keras"), str(workdir))


def test_collapse_detector_state_survives_resume():
    detector = callbacks.CollapseDetector(threshold=0.9, patience=2)
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
from eyegazer_keras import cli
from eyegazer_keras.configs import settings as configs
from eyegazer_keras import runs
from eyegazer_keras.training import runtime
from eyegazer_keras.training import trainer as trainer_lib
if len(sys.argv) > 2:  # as `eyegazer demo`: TensorFlow prepares data before training starts
    assert cli.main(["prepare", "synthetic_fundus", "--config", "tiny", "--data-dir", sys.argv[2]]) == 0
    print("MARK prepared", file=sys.stderr, flush=True)
runtime.configure_runtime()
flags = os.environ["TF_XLA_FLAGS"]
config = configs.TrainConfig(name="t", backbone=None, backbone_config=json.loads(sys.argv[1]),
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
        model = runs.build_model(config)
        optimizer = trainer_lib.make_optimizer(config)
        optimizer.build(model.trainable_variables)
        trainer = trainer_lib.Trainer(model, optimizer, tf.distribute.get_strategy(), 8, mode)
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


def _tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.GlobalAveragePooling2D(name="pool"),
            keras.layers.Dense(5, activation="softmax", name="head"),
        ],
        name="tiny",
    )
    optimizer = keras.optimizers.SGD(0.05)
    model.compile(optimizer=optimizer)
    optimizer.build(model.trainable_variables)
    return model, optimizer


def _write_backup(backup_dir, epoch, step):
    """A real `TrainingBackup` checkpoint at (epoch, step) of a tiny model."""
    model, _ = _tiny_model()
    backup = callbacks.TrainingBackup(backup_dir)
    backup.set_model(model)
    backup.state.epoch.assign(epoch)
    backup.state.step.assign(step)
    backup.save()
    assert callbacks.backup_position(backup_dir) == (epoch, step)


def test_backup_survives_a_checkpoint_a_kill_left_half_written(tmp_path):
    """A kill -9 during a save leaves `ckpt-N_temp/` (and maybe a stale `ckpt-N.index`); the
    resumed run's next save reuses that number. It must succeed (the hand-written pruning used
    to fail here with "Is a directory") and leave exactly one complete backup."""
    model, _ = _tiny_model()
    stale = tmp_path / "ckpt-1_temp"
    stale.mkdir()
    (stale / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"half")
    (tmp_path / "ckpt-1.index").write_bytes(b"old")
    backup = callbacks.TrainingBackup(str(tmp_path), str(tmp_path), chief=True, save_freq=1)
    backup.set_model(model)
    backup.on_train_begin()  # nothing committed yet: nothing restored
    backup.state.begin_epoch(0)
    for batch in range(2):
        backup.state.add_step(0.5, 0.01)
        backup.on_train_batch_end(batch)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "checkpoint" in names and not any(n.endswith("_temp") for n in names), names
    assert [n for n in names if n != "checkpoint"] == [
        "ckpt-2.data-00000-of-00001",
        "ckpt-2.index",
    ], names  # max_to_keep=1: the manager swept ckpt-1, no hand-written pruning
    assert callbacks.backup_position(str(tmp_path)) == (0, 2)


class _Killed(Exception):
    pass


class _KillAt(keras.callbacks.Callback):
    """Raises after the backup of step `step` of epoch `epoch` (it comes after the backup)."""

    def __init__(self, epoch, step):
        super().__init__()
        self.at, self.epoch = (epoch, step), None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch + 1) == self.at:
            raise _Killed


class _StepLosses(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.losses = {}

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.losses.setdefault(self.epoch, []).append(logs["loss"])


def test_resumed_epoch_logs_the_loss_of_the_whole_epoch(tmp_path):
    """Issue 13 item 10: killed mid-epoch and resumed, history.json's loss of that epoch is the
    mean over ALL its steps (the running sum travels in the backup), equal to the loss an
    uninterrupted run logs, not the mean of the steps after the resume."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (32, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 5, 32)
    ds = tf.data.Dataset.from_tensor_slices((x, y, np.ones(32, "float32"))).batch(4)  # 8 steps

    def fit(backup_dir, extra=(), seed=0):
        model, optimizer = _tiny_model(seed)
        trainer = trainer_lib.Trainer(model, optimizer, tf.distribute.get_strategy(), 4)
        backup = callbacks.TrainingBackup(str(backup_dir), save_freq=1)
        return trainer.fit(lambda e: ds, 8, 3, lambda: {}, [backup, *extra], backup)

    steps = _StepLosses()
    uninterrupted = fit(tmp_path / "a", [steps])
    with pytest.raises(_Killed):
        fit(tmp_path / "b", [_KillAt(epoch=1, step=5)])
    assert callbacks.backup_position(str(tmp_path / "b")) == (1, 5)
    resumed = fit(tmp_path / "b", seed=1)  # other initial weights: the backup restores them
    np.testing.assert_allclose(resumed["loss"], uninterrupted["loss"], rtol=1e-5)
    np.testing.assert_allclose(uninterrupted["loss"][1], np.mean(steps.losses[1]), rtol=1e-6)
    after_resume = np.mean(steps.losses[1][5:])
    assert abs(after_resume - uninterrupted["loss"][1]) > 1e-3  # the test can tell them apart
    assert not (tmp_path / "b").exists()  # a finished run removes its backup
