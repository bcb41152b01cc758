"""`eyegazer search` workflow: fail fast, cut-offs, report, export parity, resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from eyegazer_keras.configs import settings as configs
from eyegazer_keras.data import datasets as data
from eyegazer_keras.data import pipeline
from eyegazer_keras.runs import search

TRIAL_DIR = Path(search.SEARCH_DIR) / search.PROJECT_NAME


def _tiny_search_overrides(data_dir: str, **extra) -> dict:
    out = {
        "dataset_config": "tiny",
        "data_dir": data_dir,
        "image_size": 32,
        "max_trials": 1,
        "epochs": 1,
        "batch_size": 16,
        "block_type": "vanilla",
        "seed": 0,
    }
    out.update(extra)
    return out


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")


def _status(workdir: Path, trial: int) -> str | None:
    path = workdir / TRIAL_DIR / f"trial_{trial}" / "trial.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())["status"]


def test_search_aptos_without_data_fails_fast(tmp_path):
    config = configs.apply_overrides(
        configs.get_config("search-aptos"), {"data_dir": str(tmp_path / "empty")}
    )
    start = time.monotonic()
    with pytest.raises(data.DataNotPreparedError, match="eyegazer prepare aptos2019"):
        search.run_search(config, tmp_path / "run")
    assert time.monotonic() - start < 60  # generous: no import of autokeras, no data work
    assert not (tmp_path / "run" / search.SEARCH_DIR).exists()


def test_train_config_is_rejected(tmp_path):
    with pytest.raises(TypeError, match="search-demo"):
        search.run_search(configs.get_config("demo"), tmp_path)


@pytest.fixture(scope="module")
def finished_run(tiny_data_dir, tmp_path_factory):
    """One real 1-trial search on the tiny set, with export."""
    workdir = tmp_path_factory.mktemp("search_run")
    config = configs.apply_overrides(
        configs.get_config("search-demo"), _tiny_search_overrides(tiny_data_dir)
    )
    lines = []
    summary = search.run_search(config, workdir, progress=lines.append)
    return config, workdir, summary, lines


def test_run_writes_report_config_and_progress(finished_run):
    config, workdir, summary, lines = finished_run
    assert summary["trials"] == 1 and summary["max_trials"] == 1
    assert any("trial 1 of 1" in line and "best val_loss so far" in line for line in lines)
    saved = json.loads((workdir / "config.json").read_text())
    assert configs.from_dict(saved) == config
    m = json.loads((workdir / "metrics_validation.json").read_text())
    for key in ("rmse", "mae", "qwk_rounded", "qwk_tuned"):
        assert key in m and key in summary["metrics"]
    assert (workdir / "confusion_matrix_validation.png").stat().st_size > 0
    assert (workdir / "predictions_validation.png").stat().st_size > 0
    assert json.loads((workdir / search.SUMMARY_FILE).read_text())["trials"] == 1


def test_cutoffs_are_tuned_on_validation_predictions(finished_run):
    """The written cut-offs are `optimize_cutoffs` on the best model's validation grades."""
    import keras

    from eyegazer_keras.evaluation import regression
    from eyegazer_keras.models import regressor  # noqa: F401  (registers autokeras layers)

    config, workdir, summary, _ = finished_run
    x_val, y_val, _ = pipeline.load_numpy(
        config.dataset, "validation", config.image_size, config.data_dir, config.dataset_config
    )
    assert x_val.dtype == np.uint8
    model = keras.models.load_model(workdir / search.MODEL_FILE)
    y_pred = search._predict(model, x_val)
    expected = regression.optimize_cutoffs(y_val, y_pred)
    np.testing.assert_allclose(summary["cutoffs"], expected, atol=1e-6)
    m = summary["metrics"]
    np.testing.assert_allclose(m["cutoffs"], expected, atol=1e-6)
    assert m["qwk_tuned"] >= m["qwk_rounded"] - 1e-12
    rounded = regression.regression_metrics(y_val, y_pred, None)
    assert m["qwk_rounded"] == pytest.approx(rounded["qwk_rounded"])


PARITY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    export_dir, png_path = sys.argv[1], sys.argv[2]
    loaded = tf.saved_model.load(export_dir)
    out = loaded.signatures["serving_default"](
        image_bytes=tf.constant([open(png_path, "rb").read()]))
    meta = json.loads(loaded.signatures["metadata"]()["metadata_json"].numpy().decode())
    print(json.dumps({
        "grade": float(out["grade"].numpy()[0]),
        "predicted_grade": int(out["predicted_grade"].numpy()[0]),
        "referable": bool(out["referable"].numpy()[0]),
        "cutoffs": meta.get("cutoffs"),
    }))
    """
)


@pytest.mark.slow
def test_export_parity_in_fresh_process(finished_run, tmp_path):
    """The SavedModel (fresh process, bytes in) matches the in-memory model within 1e-5."""
    import keras
    import tensorflow as tf

    from eyegazer_keras import fundus
    from eyegazer_keras.evaluation import regression
    from eyegazer_keras.models import regressor  # noqa: F401  (registers autokeras layers)

    config, workdir, summary, _ = finished_run
    export_dir = summary["export_dir"]
    assert export_dir and (Path(export_dir) / "saved_model.pb").exists()
    assert any(Path(export_dir).glob("MODEL_CARD.md"))
    builder = data.prepared_builder(config.dataset, config.data_dir, config.dataset_config)
    example = next(
        iter(
            data.load_split(
                config.dataset, "validation", config.data_dir, config.dataset_config
            ).take(1)
        )
    )
    png = tf.io.encode_png(example["image"]).numpy()
    png_path = tmp_path / "eye.png"
    png_path.write_bytes(png)

    proc = subprocess.run(
        [sys.executable, "-c", PARITY_SCRIPT, export_dir, str(png_path)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])

    model = keras.models.load_model(workdir / search.MODEL_FILE)
    image = fundus.serving_transform(tf.constant(png), data.source_size(builder), config.image_size)
    in_memory = float(np.asarray(model(image[None], training=False)).reshape(-1)[0])
    assert abs(served["grade"] - in_memory) <= 1e-5
    np.testing.assert_allclose(served["cutoffs"], summary["cutoffs"], atol=1e-6)
    expected_grade = int(regression.apply_cutoffs([in_memory], summary["cutoffs"])[0])
    assert served["predicted_grade"] == expected_grade
    assert served["referable"] == (expected_grade >= 2)


@pytest.mark.slow
def test_resume_after_kill_keeps_finished_trials(tiny_data_dir, tmp_path):
    """kill -9 during trial 2, re-run: trial 1 is kept as it was, the search completes 3 trials."""
    workdir = tmp_path / "run"
    sets = _tiny_search_overrides(tiny_data_dir, max_trials=3, epochs=3, export="false")
    argv = [
        sys.executable,
        "-m",
        "eyegazer_keras.runs.search",
        "--config",
        "search-demo",
        "--workdir",
        str(workdir),
    ]
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}"]

    first = subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while _status(workdir, 1) is None:  # trial_1 appears when trial 2 starts
            assert first.poll() is None, "search exited before trial 2 started"
            assert time.monotonic() < deadline, "trial 2 never started"
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL
    assert _status(workdir, 0) == "COMPLETED"
    assert _status(workdir, 1) != "COMPLETED"
    trial0 = workdir / TRIAL_DIR / "trial_0"
    kept = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in trial0.iterdir()}

    second = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming search" in second.stderr and "1 of 3 trials done" in second.stderr
    assert "trial 2 of 3 started" in second.stderr
    assert "trial 1 of 3 started" not in second.stderr
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in trial0.iterdir()}
    assert after == kept, "the finished trial was re-run or rewritten"
    assert [_status(workdir, i) for i in range(3)] == ["COMPLETED"] * 3
    assert _status(workdir, 3) is None
    summary = json.loads((workdir / search.SUMMARY_FILE).read_text())
    assert summary["trials"] == 3

    # overwrite=true starts afresh: the old trials are gone, one new trial runs.
    config = configs.apply_overrides(
        configs.get_config("search-demo"),
        {
            **_tiny_search_overrides(tiny_data_dir, max_trials=1, epochs=1),
            "export": False,
            "overwrite": True,
        },
    )
    fresh = search.run_search(config, workdir)
    assert fresh["trials"] == 1
    assert _status(workdir, 1) is None
    assert (workdir / TRIAL_DIR / "trial_0" / "trial.json").stat().st_mtime_ns > max(
        t for t, _ in kept.values()
    )
