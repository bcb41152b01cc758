"""The run workflow: calibration at the end of train, evaluate --explain/--tta, export, predict --explain."""

import json
import os
import subprocess
import sys

import pytest

from eyegazer_keras import runs
from eyegazer_keras.configs import settings as configs
from eyegazer_keras.runs import evaluation, train
from eyegazer_keras.serving import export, signatures
from tests.conftest import tiny_train_overrides


@pytest.fixture(scope="module")
def run_dir(tiny_data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    config = configs.apply_overrides(
        configs.TrainConfig(name="tiny"), tiny_train_overrides(tiny_data_dir, epochs=1)
    )
    train.run_training(config, workdir)
    return workdir


@pytest.mark.slow
def test_train_fits_calibration_on_half_of_validation(run_dir):
    cal = json.load(open(os.path.join(run_dir, evaluation.CALIBRATION_FILE)))
    assert cal["temperature"] > 0 and 0 <= cal["threshold"] <= 1
    assert cal["fit_rows"] + cal["report_rows"] == 24  # tiny validation split
    m = json.load(open(os.path.join(run_dir, "metrics_validation.json")))
    assert m["temperature_scaling"]["temperature"] == cal["temperature"]
    assert "other half" in m["temperature_scaling"]["method"]
    assert m["calibration"]["n_bins"] == 15 and m["calibration"]["brier"] >= 0
    assert os.path.getsize(os.path.join(run_dir, "reliability_validation.png")) > 5000


@pytest.mark.slow
def test_validation_figures_say_validation_chose_the_epoch(run_dir, tmp_path):
    """Issue 23 item 16: metrics and card say the best epoch was chosen on validation."""
    m = json.load(open(os.path.join(run_dir, "metrics_validation.json")))
    selection = m["model_selection"]
    assert selection["chosen_on"] == "validation" and selection["monitor"] == "val_qwk"
    assert selection["best_epoch"] == 1 and "optimistic" in selection["note"]
    again = runs.evaluate_run(run_dir, "validation")
    assert again["model_selection"] == selection
    out = runs.export_run(run_dir, str(tmp_path / "exp"), tta="none")
    card = open(os.path.join(out, "MODEL_CARD.md")).read()
    assert "validation also chose the epoch (best val_qwk)" in card
    assert "chosen on this same split" in card


@pytest.mark.slow
def test_tta_export_without_the_data_carries_no_threshold(run_dir, tmp_path):
    """Issue 23 item 5: no validation split to refit on -> no calibration or threshold."""
    import shutil

    copy = tmp_path / "copied_run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("calibration_*.json", "export"))
    config_path = copy / "config.json"
    config = json.loads(config_path.read_text())
    config["data_dir"] = str(tmp_path / "no_data_here")
    config_path.write_text(json.dumps(config))
    out = runs.export_run(str(copy), str(tmp_path / "exp"), tta="flip4")
    meta = json.load(open(os.path.join(out, "assets.extra", export.METADATA_FILENAME)))
    assert meta["calibrated"] is False and meta["operating_threshold"] is None
    assert meta["tta"]["mode"] == "flip4"
    card = open(os.path.join(out, "MODEL_CARD.md")).read()
    assert "not carried: calibration.json was fitted on outputs without TTA" in card


@pytest.mark.slow
def test_evaluate_explain_and_tta(run_dir):
    m = runs.evaluate_run(run_dir, "validation", explain_maps=True, tta="flip")
    e = json.load(open(os.path.join(run_dir, "explanations_validation.json")))
    assert e == json.loads(json.dumps(m["explanations"]))
    assert e["min_grade"] == 2 and e["n_scored"] > 0 and e["tolerance_px"] == 2  # 32 px
    assert set(e["maps"]) == {"attention_rollout", "gradient_rollout", "random", "centre_prior"}
    assert e["grid"].startswith("4x4 patches")
    for v in e["maps"].values():
        assert 0 <= v["pointing_game"] <= 1 and 0 <= v["pixel_auroc"] <= 1
    assert os.path.getsize(os.path.join(run_dir, "explanations_validation.png")) > 5000
    tta = json.load(open(os.path.join(run_dir, "metrics_validation.json")))["tta"]
    assert tta["mode"] == "flip" and tta["views"] == 2
    assert set(tta["with"]) == {"qwk", "auroc", "ece"} and set(tta["delta"]) == set(tta["with"])


@pytest.mark.slow
def test_export_is_calibrated_and_predict_writes_overlays(run_dir, tmp_path):
    from eyegazer_datasets.synthetic_fundus import generator
    from PIL import Image

    # Without TTA the export carries the calibration train fitted.
    plain = runs.export_run(run_dir, str(tmp_path / "plain"), tta="none")
    meta = json.load(open(os.path.join(plain, "assets.extra", export.METADATA_FILENAME)))
    cal = json.load(open(os.path.join(run_dir, evaluation.CALIBRATION_FILE)))
    assert meta["calibrated"] is True and meta["temperature"] == cal["temperature"]
    assert meta["operating_threshold"]["threshold"] == cal["threshold"]
    # With TTA (issue 23 item 5) the temperature and threshold are refitted on the TTA outputs.
    out = runs.export_run(run_dir, str(tmp_path / "exp"), tta="flip")
    meta = json.load(open(os.path.join(out, "assets.extra", export.METADATA_FILENAME)))
    refit = json.load(open(os.path.join(run_dir, "calibration_flip.json")))
    assert refit["tta"] == "flip" and refit["fit_rows"] + refit["report_rows"] == 24
    assert meta["calibrated"] is True and meta["temperature"] == refit["temperature"]
    assert meta["operating_threshold"]["threshold"] == refit["threshold"]
    assert meta["tta"]["mode"] == "flip" and signatures.EXPLAIN_SIGNATURE in meta["signatures"]
    card = open(os.path.join(out, "MODEL_CARD.md")).read()
    assert "not a lesion segmentation" in card and "half of validation" in card
    assert "measured on the flip test-time-augmented outputs" in card
    assert "validation_with_tta" in card and "of the model without TTA" in card
    img, _ = generator.render(5, 3, 200)
    Image.fromarray(img).save(tmp_path / "eye.png")
    overlays = tmp_path / "maps"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "eyegazer_keras.cli",
            "predict",
            "--model",
            out,
            "--explain",
            str(overlays),
            str(tmp_path / "eye.png"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert row["explanation_png"] == str(overlays / "eye_explain.png")
    with Image.open(row["explanation_png"]) as png:
        assert png.size == (128, 128)  # 32 px model input, drawn 4x
    assert sorted(os.listdir(overlays)) == ["eye_explain.png"]
