"""Evaluation reports: a split's ``metrics_<split>.json`` with its figures (``plots``).

``write_report`` (classifiers) and ``write_regression_report`` (the AutoKeras regressor)
compute a split's metrics (``metrics``, ``regression``), write them as JSON and draw the
split's confusion matrix, ROC / predictions and reliability PNGs. Every file is written
atomically (temporary file in the same folder, then ``os.replace``), so a crash never leaves half
a JSON or PNG behind.

Example:

```python
import numpy as np
from eyegazer_keras.evaluation import report

y_true = np.array([0, 1, 2, 3, 4, 2])
probs = np.eye(5)[[0, 1, 2, 3, 4, 1]] * 0.9 + 0.02
metrics = report.write_report("eval_out", y_true, probs, task="grade")
# eval_out/metrics_validation.json, confusion_matrix_validation.png, roc_validation.png
```
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from eyegazer_keras import GRADE_NAMES, files
from eyegazer_keras.evaluation import calibrate, metrics, plots, regression

logger = logging.getLogger(__name__)

__all__ = [
    "write_metrics_json",
    "write_regression_report",
    "write_report",
]


# --------------------------------------------------------------------------- file writing


def write_metrics_json(path: str | os.PathLike, metrics_dict: Mapping) -> Path:
    """Writes a metrics dict as JSON atomically (sorted keys, indent 2, NaN stored as null).

    Args:
        path: str or PathLike. destination file; missing parent folders are created.
        metrics_dict: dict. metrics, e.g. from ``metrics.classification_metrics``; numpy values
            are converted and NaN/inf become ``null``.

    Returns:
        The path written, as a ``pathlib.Path``.
    """
    text = json.dumps(
        files.json_safe(dict(metrics_dict)), sort_keys=True, indent=2, allow_nan=False
    )
    return files.write_atomic(path, lambda f: f.write(text + "\n"))


# --------------------------------------------------------------------------- reports


def write_report(
    out_dir: str | os.PathLike,
    y_true,
    probs,
    task: str,
    history: Mapping[str, Sequence[float]] | None = None,
    split: str = "validation",
    calibration: Mapping | None = None,
    curves_title: str | None = None,
    **metric_kwargs,
) -> dict:
    """Computes classification metrics on one split and writes them with their plots.

    Writes ``metrics_<split>.json`` (with ``calibration``: ECE over 15 bins, Brier score, NLL),
    ``confusion_matrix_<split>.png``, ``roc_<split>.png``, ``reliability_<split>.png`` and, when
    ``history`` is given, ``training_curves.png`` into ``out_dir``.

    Args:
        out_dir: str or PathLike. folder for the files (created if missing).
        y_true: int array [n] of class ids.
        probs: float array [n, 5] (grade) or [n, 2] (binary).
        task: str. ``"grade"`` or ``"binary"``.
        history: dict or None. ``History.history`` of the fit. Defaults to ``None``.
        split: str. split name used in file names and stored as ``"split"``. Defaults to
            ``"validation"``.
        calibration: dict or None. a run's ``calibrate.fit_calibration`` result (temperature and
            operating threshold). When given, it is stored as ``temperature_scaling``, the
            metrics gain ``calibrated`` (the same split's figures with the temperature applied
            and the operating threshold, and for the grade task ``grade_decision``: QWK and
            accuracy of the argmax and of the calibration's ``grade_cutoffs``) and the reliability diagram draws both. Defaults to
            ``None``.
        curves_title: str or None. Title of ``training_curves.png`` (`plots.plot_training_curves`).
            Defaults to ``None``.
        **metric_kwargs: passed to ``metrics.classification_metrics`` (``threshold``,
            ``referable_threshold``, ``majority_class``, ``collapse_threshold``).

    Returns:
        The metrics dict (as written to the JSON).
    """
    out = Path(out_dir)
    result = metrics.classification_metrics(y_true, probs, task, **metric_kwargs)
    result["split"] = split
    curves = {"uncalibrated": probs}
    if calibration is not None:
        calibrated = calibrate.apply_temperature(probs, calibration["temperature"])
        result["temperature_scaling"] = dict(calibration)
        result["calibrated"] = _calibrated_figures(
            y_true, calibrated, task, calibration, metric_kwargs
        )
        curves["temperature-scaled"] = calibrated
    _plot_split(out, y_true, probs, curves, result, task, split)
    if history:
        plots.plot_training_curves(history, out / "training_curves.png", curves_title)
    path = write_metrics_json(out / f"metrics_{split}.json", result)
    logger.info("Wrote %s (accuracy=%s, qwk=%s)", path, result["accuracy"], result["qwk"])
    return result


def _calibrated_figures(y_true, calibrated, task: str, calibration: Mapping, metric_kwargs) -> dict:
    """The split's headline figures under the run's temperature and operating threshold."""
    key = "threshold" if task == "binary" else "referable_threshold"
    kwargs = {**metric_kwargs, key: calibration["threshold"]}
    cal = metrics.classification_metrics(y_true, calibrated, task, **kwargs)
    figures = {
        k: cal.get(k)
        for k in ("accuracy", "qwk", "auroc", "sensitivity", "specificity", "referable")
        if k in cal
    }
    figures["calibration"] = cal["calibration"]
    if task == "grade" and calibration.get("grade_cutoffs") is not None:
        # The exported `predicted_grade`: the calibrated expected grade at the tuned cut-offs.
        figures["grade_decision"] = regression.grade_decision(
            y_true, calibrated, calibration["grade_cutoffs"]
        )
    figures["note"] = (
        f"this split with temperature {calibration['temperature']:.4g} and the operating "
        f"threshold {calibration['threshold']:.4g}; when this split is validation, half of it "
        "fitted both (see temperature_scaling.report_half for unbiased figures)"
    )
    return figures


def _plot_split(out: Path, y_true, probs, curves: Mapping, result: Mapping, task, split) -> None:
    """``reliability_<split>.png``, ``confusion_matrix_<split>.png`` and ``roc_<split>.png``."""
    plots.plot_reliability(
        y_true, curves, out / f"reliability_{split}.png", title=f"Reliability {task} - {split}"
    )
    plots.plot_confusion_matrix(
        result["confusion_matrix"],
        result["classes"],
        out / f"confusion_matrix_{split}.png",
        title=f"{task} - {split}",
    )
    plots.plot_roc(y_true, probs, task, out / f"roc_{split}.png", title=f"ROC {task} - {split}")


def write_regression_report(
    out_dir: str | os.PathLike,
    y_true,
    y_pred,
    cutoffs: Sequence[float] | None,
    split: str = "validation",
) -> dict:
    """Computes regression metrics on one split and writes them with their plots.

    Writes ``metrics_<split>.json``, ``confusion_matrix_<split>.png`` (grades from ``cutoffs``)
    and ``predictions_<split>.png`` (predicted vs true grade) into ``out_dir``.

    Args:
        out_dir: str or PathLike. folder for the files (created if missing).
        y_true: int array [n]. true grades 0..4.
        y_pred: float array [n] or [n, 1]. regression outputs.
        cutoffs: 4 increasing floats (e.g. ``regression.optimize_cutoffs`` on another split) or
            ``None`` for plain rounding.
        split: str. split name used in file names and stored as ``"split"``. Defaults to
            ``"validation"``.

    Returns:
        The metrics dict (as written to the JSON).
    """
    out = Path(out_dir)
    result = regression.regression_metrics(y_true, y_pred, cutoffs)
    result["split"] = split
    cut_text = ", ".join(f"{c:.2f}" for c in result["cutoffs"])
    plots.plot_confusion_matrix(
        result["confusion_matrix_tuned"],
        GRADE_NAMES,
        out / f"confusion_matrix_{split}.png",
        title=f"regression - {split} (cut-offs {cut_text})",
    )
    plots.plot_predictions_vs_true(
        y_true, y_pred, out / f"predictions_{split}.png", result["cutoffs"]
    )
    path = write_metrics_json(out / f"metrics_{split}.json", result)
    logger.info("Wrote %s (rmse=%s, qwk_tuned=%s)", path, result["rmse"], result["qwk_tuned"])
    return result
