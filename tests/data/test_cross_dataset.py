"""Across datasets: train on a tiny aptos2019 build, evaluate on a tiny eyepacs2015 build.

Both are built by the real builders from their dummy Kaggle layouts (generated photos); the run
is a tiny ViT trained for one epoch through `eyegazer train`, in-process.
"""

from __future__ import annotations

import json
import pathlib

import pytest

from eyegazer_keras import cli
from tests.conftest import train_command

DATASETS = pathlib.Path(__file__).resolve().parents[2] / "datasets"


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    from eyegazer_datasets.aptos2019 import aptos2019_dataset_builder as aptos
    from eyegazer_datasets.eyepacs2015 import eyepacs2015_dataset_builder as eyepacs

    data_dir = tmp_path_factory.mktemp("tfds")
    aptos.prepare(DATASETS / "aptos2019" / "dummy_data" / "folder", data_dir, "256")
    eyepacs.prepare(DATASETS / "eyepacs2015" / "dummy_data" / "zip_parts", data_dir, "256")
    return str(data_dir)


@pytest.mark.slow  # one tiny fit + two evaluations
def test_train_on_aptos_evaluate_on_eyepacs(two_builds, tmp_path, capsys):
    workdir = tmp_path / "run"
    argv = train_command(
        two_builds, workdir, dataset="aptos2019", dataset_config="256", batch_size=4
    )[3:]
    assert cli.main(argv) == 0
    own = json.loads((workdir / "metrics_validation.json").read_text())
    argv = ["evaluate", "--workdir", str(workdir), "--dataset", "eyepacs2015", "--split"]
    assert cli.main([*argv, "validation", "--config", "256", "--data-dir", two_builds]) == 0
    out = capsys.readouterr().out
    path = workdir / "metrics_eyepacs2015_validation.json"
    assert str(path) in out
    external = json.loads(path.read_text())
    assert external["trained_on"]["dataset"] == "aptos2019"
    assert external["evaluated_on"] == {
        "dataset": "eyepacs2015",
        "config": "256",
        "split": "validation",
    }
    assert external["n"] == 4  # EyePACS dummy validation: 2 patients, both eyes
    assert own["n"] == 3  # the run's own validation metrics are untouched
    assert json.loads((workdir / "metrics_validation.json").read_text()) == own
    # The test split of EyePACS has labels (the solution file): external test works too.
    assert cli.main([*argv, "test", "--config", "256", "--data-dir", two_builds]) == 0
    assert json.loads((workdir / "metrics_eyepacs2015_test.json").read_text())["n"] == 6


@pytest.mark.slow  # one tiny fit on a mixture
def test_train_on_a_mixture(two_builds, tmp_path):
    workdir = tmp_path / "mix"
    argv = train_command(
        two_builds,
        workdir,
        dataset="aptos2019:0.5,eyepacs2015:0.5",
        dataset_config="256",
        batch_size=4,
    )[3:]
    assert cli.main(argv) == 0
    metrics = json.loads((workdir / "metrics_validation.json").read_text())
    assert metrics["n"] == 3 + 4  # both members' validation splits, whole
