"""Post-hoc calibration: temperature scaling and a sensitivity-targeted operating threshold.

``metrics`` measures how calibrated probabilities are (ECE, Brier score, NLL, reliability
bins); this module *fits* the corrections a run stores in ``calibration.json`` and export and
serving apply: one temperature ``T`` (``softmax(logits / T)``, Guo et al. 2017, "On Calibration
of Modern Neural Networks", ICML) and the threshold on the calibrated positive score (binary:
``p(DR)``; grade: referable ``p(2) + p(3) + p(4)``) that reaches a target sensitivity.
``fit_calibration`` fits both on one half of validation and measures them on the other; for
the 5-grade task it also tunes the grade decision there: four QWK-maximising cut-offs on the
calibrated expected grade ``sum_k k * p_k`` (``regression.optimize_cutoffs``; export serves the
result as ``predicted_grade``, next to the argmax ``predicted_class``).

Example:

```python
import numpy as np
from eyegazer_keras.evaluation import calibrate

rng = np.random.default_rng(0)
y = rng.integers(0, 2, 200)
logits = np.stack([np.zeros(200), 6.0 * (y - 0.5) + rng.normal(0, 3, 200)], axis=1)
probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)  # over-confident
cal = calibrate.fit_calibration(y, probs, task="binary", target_sensitivity=0.9)
calibrated = calibrate.apply_temperature(probs, cal["temperature"])
assert cal["temperature"] > 1.0
```
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_curve

from eyegazer_keras.evaluation import metrics, regression
from eyegazer_keras.evaluation.metric_inputs import as_labels, as_probs, as_scores, as_threshold
from eyegazer_keras.files import json_safe

# The usual screening operating point: refer at least 90 % of referable eyes.
DEFAULT_TARGET_SENSITIVITY = 0.90

__all__ = [
    "DEFAULT_TARGET_SENSITIVITY",
    "apply_temperature",
    "calibration_halves",
    "fit_calibration",
    "fit_temperature",
    "threshold_for_sensitivity",
]


def apply_temperature(probs, temperature: float) -> np.ndarray:
    """Temperature-scaled probabilities ``softmax(log(probs) / T)`` = ``softmax(logits / T)``.

    Args:
        probs: float array [n, k] of softmax probabilities.
        temperature: float > 0. ``T > 1`` softens over-confident outputs; 1 changes nothing.

    Returns:
        float64 array [n, k]; the argmax of every row is unchanged.

    Raises:
        ValueError: a non-positive or non-finite temperature, or probabilities that are not
            finite / in [0, 1] (naming the first bad row).
    """
    t = as_threshold(temperature, "temperature")
    if t <= 0:
        raise ValueError(f"temperature={temperature!r} must be > 0.")
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs has shape {p.shape}; expected [n, k] probabilities.")
    p = as_probs(p, p.shape[1], p.shape[0])
    z = np.log(np.clip(p, 1e-12, 1.0)) / t
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(y_true, probs, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Fits the temperature that minimises the negative log-likelihood (Guo et al. 2017).

    A bounded 1-D search over ``log T`` (``scipy.optimize.minimize_scalar``).

    Args:
        y_true: int array [n] of class ids (or one-hot [n, k]).
        probs: float array [n, k] of softmax probabilities of the uncalibrated model.
        bounds: (low, high) temperatures searched. Defaults to (0.05, 20).

    Returns:
        The temperature, a float in ``bounds``.

    Raises:
        ValueError: bad inputs, naming the first bad row.
    """
    from scipy.optimize import minimize_scalar

    p = np.asarray(probs, dtype=np.float64)
    k = p.shape[1] if p.ndim == 2 else 0
    y = as_labels(y_true, max(k, 2))
    p = as_probs(p, k, y.size)
    log_p = np.log(np.clip(p, 1e-12, 1.0))

    def nll(log_t: float) -> float:
        z = log_p / math.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(z).sum(axis=1))
        return float(np.mean(log_norm - z[np.arange(y.size), y]))

    lo, hi = (math.log(b) for b in bounds)
    result = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-5})
    return float(math.exp(result.x))


def threshold_for_sensitivity(
    y_true_binary, y_score, target: float = DEFAULT_TARGET_SENSITIVITY
) -> dict:
    """The highest threshold whose sensitivity (``y_score >= threshold``) reaches ``target``.

    The highest such threshold gives the best specificity at that sensitivity. The candidates are
    the observed scores (``sklearn.metrics.roc_curve``, no intermediate points dropped).

    Args:
        y_true_binary: array [n] of 0/1. 1 = positive (e.g. referable DR).
        y_score: float array [n]. score of the positive class.
        target: float in (0, 1]. required sensitivity. Defaults to 0.90.

    Returns:
        Dict with ``threshold``, ``target_sensitivity``, ``sensitivity`` and ``specificity`` at
        the threshold (on these rows), ``n_positive``, ``n_negative``.

    Raises:
        ValueError: ``target`` outside (0, 1], no positives or no negatives, or bad inputs
            (naming the first bad row).
    """
    target = as_threshold(target, "target")
    if not 0 < target <= 1:
        raise ValueError(f"target={target} must be a sensitivity in (0, 1], e.g. 0.9.")
    y = as_labels(y_true_binary, 2, name="y_true_binary")
    score = as_scores(y_score, y.size, name="y_score")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError(
            "threshold_for_sensitivity needs positives and negatives; this split has "
            f"{n_pos} positive(s) of {y.size}."
        )
    _, tpr, thresholds = roc_curve(y, score, drop_intermediate=False)
    i = int(np.flatnonzero(tpr >= target - 1e-12)[0])
    threshold = float(min(thresholds[i], 1.0) if np.isinf(thresholds[i]) else thresholds[i])
    sens, spec = metrics.sensitivity_specificity(y, score, threshold)
    return {
        "threshold": threshold,
        "target_sensitivity": target,
        "sensitivity": sens,
        "specificity": spec,
        "n_positive": n_pos,
        "n_negative": int(y.size - n_pos),
    }


def calibration_halves(y_true) -> tuple[np.ndarray, np.ndarray]:
    """Splits a split's rows into a fitting half and a reporting half, stratified by class.

    Within each class, rows alternate in their order: the 1st, 3rd, ... go to the fitting half,
    the 2nd, 4th, ... to the reporting half. Deterministic, so a rerun picks the same rows.

    Args:
        y_true: int array [n] of class ids.

    Returns:
        ``(fit_rows, report_rows)``: sorted int64 index arrays, disjoint, covering every row.

    Raises:
        ValueError: fewer than 2 rows, or bad labels (naming the first bad row).
    """
    y = np.asarray(y_true)
    y = as_labels(y, int(np.max(y)) + 1 if y.size and np.isfinite(y).all() else 2)
    if y.size < 2:
        raise ValueError("calibration needs at least 2 validation rows (one per half).")
    fit = np.zeros(y.size, dtype=bool)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        fit[rows[0::2]] = True
    return np.flatnonzero(fit), np.flatnonzero(~fit)


# --------------------------------------------------------------------------- fit_calibration

THRESHOLD_OUTPUTS = {"binary": "p_dr", "grade": "referable_probability"}
METHOD = (
    "temperature scaling (Guo et al. 2017) and the operating threshold fitted on "
    "one half of validation (class-stratified alternate rows); before/after "
    "figures measured on the other half"
)
GRADE_CUTOFFS_METHOD = (
    "grade = expected grade sum_k k * p_k of the calibrated probabilities, cut at 4 "
    "cut-offs maximising QWK on the calibration's fitting half (regression.optimize_cutoffs); "
    "report_half.grade_decision measures them on the other half"
)


def _positive_score(y: np.ndarray, probs: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """``(is_positive [n], score [n])``: DR and ``p(DR)``, or referable and ``p(grade >= 2)``."""
    if task == "binary":
        return y, probs[:, 1]
    ref = metrics.REFERABLE_MIN_GRADE
    return (y >= ref).astype(np.int64), probs[:, ref:].sum(1)


def _calibration_summary(y: np.ndarray, p: np.ndarray, task: str) -> dict:
    full = metrics.calibration_metrics(y, p, task)
    return {k: v for k, v in full.items() if k != "reliability"}


def _report_half(y, probs, calibrated, task, rows, threshold: float) -> dict:
    """Before/after calibration figures and the operating point, on the reporting half."""
    y_pos, score = _positive_score(y, calibrated, task)
    sens, spec = metrics.sensitivity_specificity(y_pos[rows], score[rows], threshold)
    return {
        "before": _calibration_summary(y[rows], probs[rows], task),
        "after": _calibration_summary(y[rows], calibrated[rows], task),
        "operating_point": {"threshold": threshold, "sensitivity": sens, "specificity": spec},
    }


def fit_calibration(
    y_true, probs, task: str, target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY
) -> dict:
    """Temperature scaling and a screening threshold, fitted on half of validation.

    The temperature (``fit_temperature``) and the threshold on the calibrated positive score
    (binary: ``p(DR)``; grade: referable ``p(2) + p(3) + p(4)``) for ``target_sensitivity`` are
    chosen on the fitting half of ``calibration_halves``; every "before/after" figure is measured
    on the other half, so none is optimistic from fitting and scoring the same rows.

    Args:
        y_true: int array [n]. validation class ids.
        probs: float array [n, k]. the uncalibrated model's validation probabilities.
        task: str. ``"grade"`` or ``"binary"``.
        target_sensitivity: float. sensitivity the threshold must reach on the fitting half.
            Defaults to 0.90.

    Returns:
        Dict with ``temperature``, ``threshold`` (the operating threshold, on calibrated
        probabilities), ``threshold_output`` (``"p_dr"`` or ``"referable_probability"``),
        ``target_sensitivity``, ``fit_rows``/``report_rows`` (counts), ``method`` (one sentence
        saying what was fitted where) and ``report_half``: ``before`` / ``after`` calibration
        metrics and ``operating_point`` (sensitivity and specificity at the threshold). The
        grade task adds ``grade_cutoffs`` (4 floats on the calibrated expected grade),
        ``grade_cutoffs_method`` and ``report_half.grade_decision``
        (``regression.grade_decision``: QWK, accuracy, confusion matrix of the argmax and of
        the cut-offs).

    Raises:
        ValueError: bad inputs, or a fitting half without positives and negatives.
    """
    names = metrics.class_names(task)
    y = as_labels(y_true, len(names))
    p = as_probs(probs, len(names), y.size)
    fit_rows, report_rows = calibration_halves(y)
    temperature = fit_temperature(y[fit_rows], p[fit_rows])
    calibrated = apply_temperature(p, temperature)
    y_pos, score = _positive_score(y, calibrated, task)
    chosen = threshold_for_sensitivity(y_pos[fit_rows], score[fit_rows], target_sensitivity)
    result = {
        "temperature": temperature,
        "threshold": chosen["threshold"],
        "threshold_output": THRESHOLD_OUTPUTS[task],
        "target_sensitivity": float(target_sensitivity),
        "fit_rows": int(fit_rows.size),
        "report_rows": int(report_rows.size),
        "method": METHOD,
        "fit_half": {"operating_point": chosen},
        "report_half": _report_half(y, p, calibrated, task, report_rows, chosen["threshold"]),
    }
    if task == "grade":
        expected = regression.expected_grade(calibrated)
        cut = regression.optimize_cutoffs(y[fit_rows], expected[fit_rows])
        result["grade_cutoffs"] = list(cut)
        result["grade_cutoffs_method"] = GRADE_CUTOFFS_METHOD
        result["report_half"]["grade_decision"] = regression.grade_decision(
            y[report_rows], calibrated[report_rows], cut
        )
    return json_safe(result)
