"""Report files: they exist, PNGs open, JSON round-trips with the expected keys."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eyegazer_keras import GRADE_NAMES
from eyegazer_keras.evaluation import calibrate, metric_inputs, metrics, plots, regression, report

REPO = Path(__file__).resolve().parents[2]
HISTORY = {
    "loss": [1.2, 0.9, 0.7],
    "val_loss": [1.3, 1.0, 0.95],
    "accuracy": [0.3, 0.5, 0.6],
    "val_accuracy": [0.25, float("nan"), 0.5],
    "val_qwk": [0.1, 0.3, 0.4],
}


def assert_png(path: Path):
    assert path.is_file(), path
    assert path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] > 50 and im.size[1] > 50


def no_temp_files(folder: Path):
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture
def grade_data():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(5), 8)
    probs = rng.dirichlet(np.ones(5), size=y.size)
    probs[np.arange(y.size), y] += 1.0  # mostly right
    return y, probs / probs.sum(axis=1, keepdims=True)


def test_write_metrics_json_atomic_sorted_and_nan_safe(tmp_path):
    path = report.write_metrics_json(
        tmp_path / "sub" / "m.json",
        {"b": np.float64(np.nan), "a": np.int64(3), "c": [np.float32(0.5)]},
    )
    text = path.read_text()
    assert json.loads(text) == {"a": 3, "b": None, "c": [0.5]}
    assert text.index('"a"') < text.index('"b"') < text.index('"c"')
    assert '\n  "a": 3' in text  # indent 2
    assert no_temp_files(path.parent)
    # Overwrite in place.
    report.write_metrics_json(path, {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}


def test_write_report_grade(tmp_path, grade_data):
    y, probs = grade_data
    m = report.write_report(tmp_path, y, probs, "grade", history=HISTORY, majority_class=0)
    for name in ("confusion_matrix_validation.png", "roc_validation.png", "training_curves.png"):
        assert_png(tmp_path / name)
    loaded = json.loads((tmp_path / "metrics_validation.json").read_text())
    assert loaded == m
    for key in (
        "n", "accuracy", "majority_baseline", "majority_class", "qwk", "auroc",
        "auroc_per_class", "referable", "per_class_recall", "confusion_matrix",
        "prediction_distribution", "collapsed",
    ):  # fmt: skip
        assert key in loaded, key
    assert loaded["split"] == "validation"
    assert loaded["majority_class_source"] == "given"
    assert set(loaded["referable"]) >= {"sensitivity", "specificity", "auroc"}
    assert loaded["n"] == len(y)
    assert no_temp_files(tmp_path)


def test_write_report_binary_test_split_without_history(tmp_path):
    y = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.7, 0.3], [0.4, 0.6], [0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
    m = report.write_report(tmp_path, y, probs, "binary", split="test", threshold=0.5)
    assert_png(tmp_path / "confusion_matrix_test.png")
    assert_png(tmp_path / "roc_test.png")
    assert not (tmp_path / "training_curves.png").exists()
    loaded = json.loads((tmp_path / "metrics_test.json").read_text())
    assert loaded["sensitivity"] == pytest.approx(2 / 3) and loaded == m


def test_write_report_single_class_does_not_crash(tmp_path):
    y = np.zeros(5, dtype=int)
    probs = np.random.default_rng(0).dirichlet(np.ones(5), size=5)
    m = report.write_report(tmp_path, y, probs, "grade")
    assert m["auroc"] is None
    assert_png(tmp_path / "roc_validation.png")
    assert "NaN" not in (tmp_path / "metrics_validation.json").read_text()


def test_write_regression_report(tmp_path):
    y = np.repeat(np.arange(5), 6)
    pred = y + 0.6 + np.tile(np.linspace(-0.1, 0.1, 6), 5)
    cut = regression.optimize_cutoffs(y, pred)
    m = report.write_regression_report(tmp_path, y, pred, cut, split="validation")
    assert_png(tmp_path / "confusion_matrix_validation.png")
    assert_png(tmp_path / "predictions_validation.png")
    loaded = json.loads((tmp_path / "metrics_validation.json").read_text())
    assert loaded == m
    for key in ("rmse", "mae", "qwk_rounded", "qwk_tuned", "cutoffs", "confusion_matrix_tuned"):
        assert key in loaded
    assert loaded["qwk_tuned"] == 1.0
    assert loaded["cutoffs"] == list(cut)


def test_plot_functions_directly(tmp_path):
    plots.plot_confusion_matrix([[3, 1], [0, 2]], ["no_dr", "dr"], tmp_path / "cm.png", title="t")
    assert_png(tmp_path / "cm.png")
    with pytest.raises(ValueError, match="class_names"):
        plots.plot_confusion_matrix([[1, 0], [0, 1]], GRADE_NAMES, tmp_path / "bad.png")

    class FakeHistory:  # keras.callbacks.History has a .history dict
        history = {"loss": [1.0, 0.5]}

    plots.plot_training_curves(FakeHistory(), tmp_path / "curves.png")
    assert_png(tmp_path / "curves.png")
    with pytest.raises(ValueError, match="empty"):
        plots.plot_training_curves({}, tmp_path / "empty.png")


def test_report_leaves_user_backend_alone(tmp_path):
    code = (
        "import sys, matplotlib, numpy as np\n"
        "from eyegazer_keras.evaluation import report\n"
        "report.write_report(sys.argv[1], [0, 1, 2, 3, 4], np.eye(5) * 0.9 + 0.02, 'grade',\n"
        "                    history={'loss': [1.0, 0.5]})\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
        "print(matplotlib.get_backend())\n"
    )
    env = {**os.environ, "MPLBACKEND": "svg", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "svg"
    assert_png(tmp_path / "roc_validation.png")


@pytest.mark.parametrize("module", [metrics, metric_inputs, calibrate, regression, plots, report])
def test_module_docstring_example_runs(module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = module.__doc__.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, f"<{module.__name__} docstring>", "exec"), {})
