"""A split's metrics file, and what evaluation adds to it: calibration, TTA, explanations.

* `write_split_metrics`: the one writer of `metrics_<split>.json` (+ plots), keeping what
  training recorded there (`recorded_extras`: the collapse events).
* `run_calibration`: temperature scaling and a sensitivity-targeted operating threshold
  (`calibrate.fit_calibration`), fitted once at the end of `eyegazer train` on half of the
  validation split and stored as `calibration.json`; evaluation and export read it back.
* `tta_comparison`: QWK, AUROC and ECE without and with test-time flips
  (`models.wrappers.serving_model`).
* `explain_split`: maps scored against the lesion masks (`explain_scores.explanations_report`).
* `card_sections`: the model-card sections describing all three.
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from eyegazer_keras import files
from eyegazer_keras.evaluation import (
    calibrate,
    explain_scores,
    gate_metrics,
    metrics,
    plots,
    report,
)
from eyegazer_keras.models import wrappers

if TYPE_CHECKING:  # annotations only: runs imports this module
    from eyegazer_keras.configs.settings import TrainConfig
    from eyegazer_keras.runs.folder import RunData

logger = logging.getLogger(__name__)

__all__ = [
    "CALIBRATION_FILE",
    "card_sections",
    "explain_split",
    "recorded_extras",
    "run_calibration",
    "tta_comparison",
    "model_selection",
    "tta_calibration",
    "tta_card",
    "tta_probabilities",
    "write_split_metrics",
]

CALIBRATION_FILE = "calibration.json"
# What `callbacks.BestAdapterCheckpoint` writes next to the best adapter (runs.BEST_ADAPTER).
BEST_ADAPTER_RECORD = os.path.join("checkpoints", "best_adapter.npz.json")


def run_calibration(workdir, y, probs, task, fit: bool) -> dict | None:
    """Fits (end of train) or reads (evaluate) the run's temperature and operating threshold."""
    path = os.path.join(workdir, CALIBRATION_FILE)
    if fit:
        try:
            calibration = calibrate.fit_calibration(y, probs, task)
        except ValueError as err:  # e.g. a validation half without referable photos
            logger.warning("No calibration fitted: %s", err)
            return None
        files.write_json_atomic(path, calibration)
        return calibration
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return None


def tta_probabilities(model, dataset, mode: str) -> np.ndarray:
    """Probabilities `[N, k]` of `model` averaged over the `mode` flips, for a batched dataset."""
    served = wrappers.serving_model(model, None, mode)
    return np.concatenate([served(b[0], training=False).numpy() for b in dataset], axis=0)


def tta_comparison(y, probs, tta_probs, task, mode) -> dict:
    """QWK, AUROC and ECE without and with test-time augmentation (uncalibrated both)."""

    def summary(p):
        m = metrics.classification_metrics(y, p, task)
        return {"qwk": m["qwk"], "auroc": m["auroc"], "ece": m["calibration"]["ece"]}

    without, with_tta = summary(probs), summary(tta_probs)
    delta = {
        k: (with_tta[k] - without[k]) if None not in (with_tta[k], without[k]) else None
        for k in without
    }
    views = len(wrappers.tta_views(tf.zeros([1, 1, 1, 3]), mode))
    return {"mode": mode, "views": views, "without": without, "with": with_tta, "delta": delta}


def explain_split(model, split_ds, image_size: int, workdir: str, split: str, name: str) -> dict:
    """Writes `explanations_<split>.json` (pointing game, pixel AUROC vs lesion masks) and PNG.

    Args:
        model: the run's model.
        split_ds: the split as `data.load_split` returns it (dicts with `image`, `label`, ...).
        image_size: int. Model input side.
        workdir: str. The run folder.
        split: str. Split name (file names).
        name: str. The config name (plot title).

    Returns:
        The scores dict of `explain_scores.explanations_report`.
    """
    scores, examples = explain_scores.explanations_report(model, split_ds, image_size, split=split)
    report.write_metrics_json(os.path.join(workdir, f"explanations_{split}.json"), scores)
    plots.plot_explanations(
        examples,
        os.path.join(workdir, f"explanations_{split}.png"),
        title=f"{name}: {split}, one photo per grade >= 2",
    )
    return scores


def card_sections(val_metrics: dict, calibration: dict | None, tta: str) -> dict:
    """Model-card sections: calibration figures, operating threshold, TTA, what maps are."""
    maps = (
        "serving_explain returns a map of where the model's output is sensitive (gradient-"
        "weighted attention rollout, Chefer et al. 2021; Grad-CAM for CNNs), on the patch grid. "
        "It is not a lesion segmentation and has not been validated clinically."
    )
    if calibration is None or calibration.get("not_carried"):
        why = (calibration or {}).get(
            "not_carried"
        ) or "not fitted (no calibration.json in the run)"
        return {
            "calibration": why,
            "operating_threshold": "none: " + why if calibration else "none",
            "tta": tta_card(tta, calibration, val_metrics),
            "explanations": maps,
        }
    half = calibration.get("report_half", {})
    before, after = half.get("before", {}), half.get("after", {})
    point = half.get("operating_point", {})
    selection = val_metrics.get("model_selection")
    measured_on = f"the other half of validation ({calibration.get('report_rows')} rows)"
    if selection:
        measured_on += (
            f"; validation also chose the epoch (best {selection.get('monitor')}), so these "
            "figures are optimistic"
        )
    tta_mode = calibration.get("tta", "none")
    if tta_mode != "none":
        measured_on += f"; measured on the {tta_mode} test-time-augmented outputs the export serves"
    sections = {
        "calibration": {
            "method": calibration.get("method"),
            "temperature": calibration.get("temperature"),
            "ece_15_bins": {"before": before.get("ece"), "after": after.get("ece")},
            "brier": {"before": before.get("brier"), "after": after.get("brier")},
            "measured_on": measured_on,
            "reliability_diagram": "reliability_validation.png in the run folder"
            + (" (without TTA)" if tta_mode != "none" else ""),
        },
        "operating_threshold": {
            "output": calibration.get("threshold_output"),
            "threshold": calibration.get("threshold"),
            "target_sensitivity": calibration.get("target_sensitivity"),
            "sensitivity_on_report_half": point.get("sensitivity"),
            "specificity_on_report_half": point.get("specificity"),
        },
        "tta": tta_card(tta, calibration, val_metrics),
        "explanations": maps,
        "uncalibrated_validation_ece": (val_metrics.get("calibration") or {}).get("ece"),
    }
    decision = half.get("grade_decision")
    if calibration.get("grade_cutoffs") is not None and decision:
        sections["grade_decision"] = {
            "output": "predicted_grade (predicted_class stays the argmax)",
            "cutoffs": calibration["grade_cutoffs"],
            "method": calibration.get("grade_cutoffs_method"),
            "qwk_on_report_half": {
                "argmax": decision.get("qwk_argmax"),
                "cutoffs": decision.get("qwk_cutoffs"),
            },
            "measured_on": measured_on,
        }
    return sections


def tta_calibration(workdir: str, calibration: dict, task: str, tta: str, outputs) -> dict:
    """The calibration of a TTA export: refitted on the TTA outputs, or marked not carried.

    `calibration.json` (temperature, operating threshold) was fitted on the model's outputs
    without test-time augmentation; averaging flips changes them (issue 23: sensitivity 0.90
    at the old threshold became 0.975). It is refitted on the validation split's TTA outputs
    (kept as `calibration_<tta>.json`, reused by later exports); without the validation split
    it is not carried (`{"not_carried": why}`): the export then serves uncalibrated
    probabilities and no threshold, and its card says so.

    Args:
        workdir: str. The run folder.
        calibration: dict. The run's `calibration.json` (its target sensitivity is kept).
        task: str. `"grade"` or `"binary"`.
        tta: str. `"flip"` or `"flip4"`.
        outputs: `() -> (y_true [N], probs [N, k])`: validation labels and TTA probabilities;
            may raise `data.DataNotPreparedError` / `OSError` when the data is not here.

    Returns:
        The refitted calibration (`calibrate.fit_calibration` plus `tta` and
        `validation_with_tta`: QWK, AUROC, ECE of the TTA outputs), or `{"not_carried": str}`.
    """
    path = os.path.join(workdir, f"calibration_{tta}.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    try:
        y_true, probs = outputs()
        refit = calibrate.fit_calibration(
            y_true, probs, task, calibration.get("target_sensitivity", 0.9)
        )
    except (RuntimeError, OSError, ValueError) as err:  # DataNotPreparedError is a RuntimeError
        why = (
            f"not carried: calibration.json was fitted on outputs without TTA and could not be "
            f"refitted for tta={tta} ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
            "export where the run's dataset is prepared to refit it"
        )
        logger.warning("export with tta=%s: calibration and threshold %s", tta, why)
        return {"not_carried": why}
    summary = metrics.classification_metrics(y_true, probs, task)
    refit["tta"] = tta
    refit["method"] = f"{refit.get('method', '')} Refitted at export on the {tta} TTA outputs."
    refit["validation_with_tta"] = {
        "qwk": summary["qwk"],
        "auroc": summary["auroc"],
        "ece": summary["calibration"]["ece"],
        "n": int(len(y_true)),
    }
    files.write_json_atomic(path, refit)
    return refit


def tta_card(tta: str, calibration: dict | None, val_metrics: dict):
    """The card's `tta` section: the mode, and which figures were measured with it."""
    if tta == "none":
        return "none"
    section = {"mode": tta}
    with_tta = (calibration or {}).get("validation_with_tta")
    if with_tta:
        section["validation_with_tta"] = with_tta
    if calibration and not calibration.get("not_carried"):
        section["calibration_and_threshold"] = (
            f"refitted at export on validation outputs averaged over the {tta} views (the "
            "outputs this export serves)"
        )
    section["validation_metrics"] = (
        "the 'Validation metrics' section is of the model without TTA"
        + ("; 'validation_with_tta' above is with it" if with_tta else "")
    )
    if val_metrics.get("tta"):
        section["evaluate_comparison"] = val_metrics["tta"]
    return section


def _curves_title(config: TrainConfig, history: dict | None) -> str | None:
    """Says which stage `training_curves.png` draws: a two-stage run's history is stage 2's."""
    if not history or not config.pretrain_epochs:
        return None
    epochs = max(len(v) for v in history.values())
    return (
        f"LoRA stage (2 of 2, {epochs} epochs); stage 1, {config.pretrain_epochs} epochs of "
        "backbone pretraining, is not drawn"
    )


def write_split_metrics(
    workdir: str,
    split: str,
    y_true: np.ndarray,
    probs: np.ndarray,
    run_data: RunData,
    config: TrainConfig,
    history: dict | None = None,
    extras: dict | None = None,
    calibration: dict | None = None,
    gate: dict | None = None,
) -> dict:
    """The one writer of a split's `metrics_<split>.json` (+ plots), with the run's extras.

    Args:
        workdir: str. The run directory.
        split: str. Split name (file names and the `split` key).
        y_true: int array `[N]`. Class ids (grades 0..4, or 0/1 for binary).
        probs: float array `[N, num_classes]`. Predicted probabilities.
        run_data: RunData. Task and majority class.
        config: TrainConfig. The collapse threshold.
        history: dict or None. The fit history, for `training_curves.png`. Defaults to None.
        extras: dict or None. Keys stored next to the metrics, e.g. the training's
            `collapse_events`. Defaults to None.
        calibration: dict or None. The run's `calibration.json` (`evaluation.run_calibration`),
            adding the calibrated figures. Defaults to None.
        gate: dict or None. The split's stored gate verdicts (`data.split_gate`) plus
            `refused_at_build` (int); adds the `quality_gate` section
            (`gate_metrics.gate_section`: imageability, metrics on gradable photos, agreement
            with human quality labels). Defaults to None ("not recorded").

    Returns:
        The metrics dict as written (accuracy, QWK as in the APTOS 2019 competition, AUROC,
        referable sensitivity/specificity, confusion matrix, ..., plus `extras` and
        `quality_gate`).
    """
    result = report.write_report(
        workdir,
        y_true,
        probs,
        run_data.task,
        history=history,
        split=split,
        calibration=calibration,
        curves_title=_curves_title(config, history),
        majority_class=run_data.majority_class,
        collapse_threshold=config.collapse_threshold,
    )
    gate = dict(gate or {})
    refused = int(gate.pop("refused_at_build", 0) or 0)
    if run_data.task in ("grade", "binary"):
        section = gate_metrics.gate_section(y_true, probs, run_data.task, gate, refused)
        result["quality_gate"] = section
    result.update(extras or {})
    report.write_metrics_json(os.path.join(workdir, f"metrics_{split}.json"), result)
    return result


def recorded_extras(workdir: str, split: str) -> dict:
    """What training recorded about `split` beyond the metrics (the collapse events, and
    `model_selection` when this split chose the epoch)."""
    if split != "validation":
        return {}
    extras = {}
    selection = model_selection(os.path.join(workdir, BEST_ADAPTER_RECORD))
    if selection:
        extras["model_selection"] = selection
    for name in ("run.json", "metrics_validation.json"):
        path = os.path.join(workdir, name)
        if os.path.exists(path):
            with open(path) as f:
                recorded = json.load(f)
            if "collapse_events" in recorded:
                return {"collapse_events": recorded["collapse_events"], **extras}
    return extras


def model_selection(record_path: str) -> dict | None:
    """Says that the validation split also chose the epoch, from the best checkpoint's record.

    Args:
        record_path: str. `checkpoints/best_adapter.npz.json` (`BestAdapterCheckpoint`:
            `{"best", "epoch", "monitor"}`).

    Returns:
        `{"chosen_on": "validation", "monitor", "best_epoch", "best_value", "note"}`, or None
        when there is no record (an imported adapter: no epoch was chosen here).
    """
    if not os.path.exists(record_path):
        return None
    with open(record_path) as f:
        best = json.load(f)
    monitor = best.get("monitor", "?")
    return {
        "chosen_on": "validation",
        "monitor": monitor,
        "best_epoch": best.get("epoch"),
        "best_value": best.get("best"),
        "note": (
            f"the exported weights are the epoch with the best validation {monitor}, chosen "
            "on this same split: validation figures (and the calibration's report half, drawn "
            "from it) are optimistic. Unbiased figures come from a split that chose nothing "
            "(test, or `eyegazer evaluate --dataset OTHER`)."
        ),
    }
