"""Grades from a regressor's continuous output: cut-offs, QWK-tuned cut-offs and their metrics.

A grade regressor (the AutoKeras ``ImageRegressor`` of ``eyegazer search``) outputs a float;
four increasing cut-offs turn it into grades 0..4 (``apply_cutoffs``). Plain rounding is the
cut-offs ``(0.5, 1.5, 2.5, 3.5)``; ``optimize_cutoffs`` moves them to maximise the quadratic
weighted kappa on a tuning split (QWK is the metric the APTOS 2019 Kaggle competition scored).
``regression_metrics`` reports a split's errors and its QWK under both.

A 5-grade classifier uses the same cut-offs on its expected grade ``sum_k k * p_k``
(``expected_grade``): ``grade_decision`` reports QWK with the argmax and with cut-offs tuned on
another split (``calibrate.fit_calibration`` tunes them on its fitting half).

Example:

```python
import numpy as np
from eyegazer_keras.evaluation import regression

y = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
pred = np.array([0.1, 0.4, 0.9, 1.1, 2.2, 2.3, 2.6, 2.7, 3.9, 4.2])
cut = regression.optimize_cutoffs(y, pred)  # tune on a split you do not report
m = regression.regression_metrics(y, pred, cut)
assert m["qwk_tuned"] >= m["qwk_rounded"]
```
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    mean_absolute_error,
    mean_squared_error,
)

from eyegazer_keras import GRADE_NAMES
from eyegazer_keras.evaluation import metrics
from eyegazer_keras.evaluation.metric_inputs import as_labels, as_probs, as_scores
from eyegazer_keras.files import json_safe

logger = logging.getLogger(__name__)

NUM_GRADES = len(GRADE_NAMES)
DEFAULT_CUTOFFS = (0.5, 1.5, 2.5, 3.5)

__all__ = [
    "DEFAULT_CUTOFFS",
    "apply_cutoffs",
    "check_cutoffs",
    "expected_grade",
    "grade_decision",
    "optimize_cutoffs",
    "regression_metrics",
]


def check_cutoffs(cutoffs) -> tuple[float, float, float, float]:
    """Validates four grade cut-offs.

    Args:
        cutoffs: 4 numbers (any sequence or array).

    Returns:
        Tuple of 4 Python floats.

    Raises:
        ValueError: not 4 finite, strictly increasing numbers.
    """
    c = np.asarray(cutoffs, dtype=np.float64).ravel()
    if c.size != NUM_GRADES - 1 or not np.isfinite(c).all() or np.any(np.diff(c) <= 0):
        raise ValueError(
            f"cutoffs={list(np.asarray(cutoffs).ravel())} must be {NUM_GRADES - 1} finite, "
            f"strictly increasing numbers, e.g. {DEFAULT_CUTOFFS}."
        )
    return tuple(float(v) for v in c)


def apply_cutoffs(pred, cutoffs: Sequence[float] = DEFAULT_CUTOFFS) -> np.ndarray:
    """Turns continuous grade predictions into grades 0..4 with four cut-offs.

    ``pred < cutoffs[0]`` is grade 0, ``cutoffs[0] <= pred < cutoffs[1]`` grade 1, and so on
    (``np.digitize``). The default ``(0.5, 1.5, 2.5, 3.5)`` equals clipped rounding, except that
    an exact ``x.5`` goes up (``np.rint`` rounds half to even).

    Args:
        pred: float array [n] or [n, 1]. regression outputs.
        cutoffs: 4 strictly increasing floats. Defaults to ``(0.5, 1.5, 2.5, 3.5)``.

    Returns:
        int64 array [n] of grades in 0..4.

    Raises:
        ValueError: cut-offs that are not 4 finite increasing numbers, or naming the first row
            of ``pred`` that is not finite.
    """
    c = check_cutoffs(cutoffs)
    s = np.atleast_1d(np.asarray(pred, dtype=np.float64))
    s = as_scores(s, s.shape[0], name="pred")
    return np.digitize(s, c).astype(np.int64)


def expected_grade(probs) -> np.ndarray:
    """The expected grade ``sum_k k * p_k`` of 5-grade probabilities.

    Args:
        probs: float array [n, 5]. probabilities of grades 0..4 (rows summing to 1).

    Returns:
        float64 array [n] in [0, 4].

    Raises:
        ValueError: not [n, 5], or naming the first row that is not a probability vector.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != NUM_GRADES:
        raise ValueError(f"probs has shape {p.shape}; expected [n, {NUM_GRADES}] probabilities.")
    p = as_probs(p, NUM_GRADES, p.shape[0])
    return p @ np.arange(NUM_GRADES, dtype=np.float64)


# --------------------------------------------------------------------------- the QWK search


def _fast_qwk(cm: np.ndarray, weights: np.ndarray) -> float:
    """QWK from a confusion matrix (same formula as sklearn); -inf where undefined."""
    n = cm.sum()
    expected = np.outer(cm.sum(axis=1), cm.sum(axis=0)) / n
    denom = (weights * expected).sum()
    if denom <= 0:
        return -math.inf
    return 1.0 - (weights * cm).sum() / denom


def _qwk_of_cutoffs(y: np.ndarray, s: np.ndarray) -> Callable[[np.ndarray], float]:
    """``cutoffs -> QWK`` on these rows, from a bincount confusion matrix (no sklearn call)."""
    k = NUM_GRADES
    weights = np.subtract.outer(np.arange(k), np.arange(k)) ** 2 / (k - 1) ** 2

    def score(c: np.ndarray) -> float:
        cm = np.bincount(y * k + np.digitize(s, c), minlength=k * k).reshape(k, k)
        return _fast_qwk(cm.astype(np.float64), weights)

    return score


def _candidate_cutoffs(s: np.ndarray, max_candidates: int) -> np.ndarray:
    """Midpoints between consecutive distinct predictions (thinned to quantiles if too many)."""
    uniq = np.unique(s)
    cands = (uniq[:-1] + uniq[1:]) / 2
    if cands.size > max_candidates:
        cands = np.unique(np.quantile(cands, np.linspace(0, 1, max_candidates)))
    return cands


def _coordinate_search(
    score: Callable[[np.ndarray], float], cut: np.ndarray, cands: np.ndarray, max_passes: int
) -> tuple[np.ndarray, float]:
    """Moves each cut-off in turn to the candidate that raises ``score`` most, until none does.

    A candidate stays strictly between the neighbouring cut-offs; only strict improvements are
    taken, so the result is sorted and never scores below ``cut``.
    """
    best = score(cut)
    for _ in range(max_passes):
        improved = False
        for i in range(cut.size):
            lo = cut[i - 1] if i > 0 else -np.inf
            hi = cut[i + 1] if i < cut.size - 1 else np.inf
            for value in cands[(cands > lo) & (cands < hi)]:
                trial = cut.copy()
                trial[i] = value
                q = score(trial)
                if q > best + 1e-12:
                    best, cut, improved = q, trial, True
        if not improved:
            break
    return cut, best


def optimize_cutoffs(
    y_true,
    y_pred,
    initial: Sequence[float] = DEFAULT_CUTOFFS,
    max_passes: int = 20,
    max_candidates: int = 2000,
) -> tuple[float, float, float, float]:
    """Finds four grade cut-offs that maximise QWK, starting from plain rounding.

    A deterministic coordinate search: each cut-off in turn moves to the candidate (a midpoint
    between consecutive distinct predictions, kept strictly between its neighbours) that raises
    QWK most; passes repeat until none improves. Only strict improvements are accepted, so the
    result is never worse than ``initial`` and stays sorted. Tune on a split other than the one
    you report, or the tuned QWK is optimistic.

    Args:
        y_true: int array [n]. true grades 0..4.
        y_pred: float array [n] or [n, 1]. regression outputs.
        initial: 4 strictly increasing floats to start from. Defaults to
            ``(0.5, 1.5, 2.5, 3.5)``.
        max_passes: int. upper bound on full passes over the four cut-offs. Defaults to 20.
        max_candidates: int. when there are more distinct midpoints than this, use this many
            evenly spaced quantiles of them instead. Defaults to 2000.

    Returns:
        Tuple of 4 floats, strictly increasing.

    Raises:
        ValueError: naming the first row of ``y_true`` that is not a grade 0..4 or of
            ``y_pred`` that is not finite, when the lengths differ, or for bad ``initial``.
    """
    y = as_labels(y_true, NUM_GRADES)
    s = as_scores(y_pred, y.size)
    score = _qwk_of_cutoffs(y, s)
    start_cut = np.array(check_cutoffs(initial))
    start = score(start_cut)
    cut, best = _coordinate_search(
        score, start_cut, _candidate_cutoffs(s, max_candidates), max_passes
    )
    result = check_cutoffs(cut)
    # Guard against any numeric disagreement with sklearn: never hand back something worse.
    init_q = metrics.quadratic_weighted_kappa(y, apply_cutoffs(s, initial))
    new_q = metrics.quadratic_weighted_kappa(y, apply_cutoffs(s, result))
    if init_q is not None and (new_q is None or new_q < init_q):
        return check_cutoffs(initial)
    logger.info("optimize_cutoffs: QWK %.4f -> %.4f with cut-offs %s", start, best, result)
    return result


# --------------------------------------------------------------------------- regression metrics


def _graded(y: np.ndarray, grades: np.ndarray, suffix: str) -> dict:
    """QWK, accuracy and confusion matrix of grades obtained one way (``rounded``/``tuned``)."""
    return {
        f"qwk_{suffix}": metrics.quadratic_weighted_kappa(y, grades),
        f"accuracy_{suffix}": float(accuracy_score(y, grades)),
        f"confusion_matrix_{suffix}": confusion_matrix(
            y, grades, labels=list(range(NUM_GRADES))
        ).tolist(),
    }


def regression_metrics(y_true, y_pred, cutoffs: Sequence[float] | None = None) -> dict:
    """Metrics of a grade regressor: errors, and QWK after rounding and after cut-offs.

    Args:
        y_true: int array [n]. true grades 0..4.
        y_pred: float array [n] or [n, 1]. regression outputs.
        cutoffs: 4 strictly increasing floats, e.g. from ``optimize_cutoffs`` on another split.
            Defaults to ``None``: plain rounding cut-offs ``(0.5, 1.5, 2.5, 3.5)``.

    Returns:
        Dict with ``n``, ``rmse``, ``mae``, ``qwk_rounded`` (``clip(rint(pred), 0, 4)``),
        ``accuracy_rounded``, ``confusion_matrix_rounded``, ``qwk_tuned``, ``accuracy_tuned``,
        ``confusion_matrix_tuned`` (grades from ``cutoffs``), ``cutoffs``,
        ``prediction_distribution`` (tuned grades), ``collapse_fraction`` and ``collapsed``.

    Raises:
        ValueError: naming the first row of ``y_true`` that is not a grade 0..4 or of
            ``y_pred`` that is not finite, when the lengths differ, or for bad ``cutoffs``.
    """
    y = as_labels(y_true, NUM_GRADES)
    s = as_scores(y_pred, y.size)
    used = check_cutoffs(DEFAULT_CUTOFFS if cutoffs is None else cutoffs)
    rounded = np.clip(np.rint(s), 0, NUM_GRADES - 1).astype(np.int64)
    tuned = apply_cutoffs(s, used)
    frac = metrics.collapse_fraction(tuned, NUM_GRADES)
    threshold = metrics.DEFAULT_COLLAPSE_THRESHOLD
    out = {
        "n": int(y.size),
        "task": "regression",
        "classes": list(GRADE_NAMES),
        "rmse": float(np.sqrt(mean_squared_error(y, s))),
        "mae": float(mean_absolute_error(y, s)),
        **_graded(y, rounded, "rounded"),
        **_graded(y, tuned, "tuned"),
        "cutoffs": list(used),
        "cutoffs_source": "default" if cutoffs is None else "given",
        "prediction_distribution": metrics.prediction_distribution(tuned, GRADE_NAMES),
        "collapse_fraction": frac,
        "collapse_threshold": threshold,
        "collapsed": bool(frac >= threshold),
        "calibration": {
            "note": "regression outputs are continuous grades, not probabilities: no ECE/Brier"
        },
    }
    return json_safe(out)


def grade_decision(y_true, probs, cutoffs: Sequence[float] | None) -> dict:
    """A 5-grade classifier's grades two ways: the argmax, and cut-offs on the expected grade.

    Args:
        y_true: int array [n]. true grades 0..4.
        probs: float array [n, 5]. the classifier's probabilities.
        cutoffs: 4 strictly increasing floats on ``expected_grade(probs)``, tuned on another
            split (``optimize_cutoffs``); None uses ``DEFAULT_CUTOFFS`` (rounding).

    Returns:
        Dict with ``qwk_argmax``, ``accuracy_argmax``, ``confusion_matrix_argmax``,
        ``qwk_cutoffs``, ``accuracy_cutoffs``, ``confusion_matrix_cutoffs``, ``cutoffs`` and
        ``cutoffs_source`` (``"given"`` or ``"default"``).

    Raises:
        ValueError: bad labels, probabilities or cut-offs (naming the first bad row).
    """
    y = as_labels(y_true, NUM_GRADES)
    score = expected_grade(probs)
    if score.size != y.size:
        raise ValueError(f"y_true has {y.size} rows but probs has {score.size}.")
    used = check_cutoffs(DEFAULT_CUTOFFS if cutoffs is None else cutoffs)
    argmax = np.asarray(probs).argmax(axis=1)
    return json_safe(
        {
            **_graded(y, argmax, "argmax"),
            **_graded(y, apply_cutoffs(score, used), "cutoffs"),
            "cutoffs": list(used),
            "cutoffs_source": "default" if cutoffs is None else "given",
        }
    )
