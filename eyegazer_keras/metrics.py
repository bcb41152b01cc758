"""Evaluation metrics for diabetic-retinopathy grading (sklearn underneath).

Every public function takes numpy arrays (or anything ``np.asarray`` accepts) and returns plain,
JSON-serialisable Python: ``int``, ``float``, ``bool``, ``str``, ``None``, lists and dicts. A
metric that is undefined on the given data (for example AUROC when ``y_true`` holds one class
only) is ``None``, never NaN, so ``json.dumps(..., allow_nan=False)`` always works.

Example:

```python
import numpy as np
from eyegazer_keras import metrics

y_true = np.array([0, 0, 1, 1])
probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
m = metrics.classification_metrics(y_true, probs, task="binary")
assert m["accuracy"] == 1.0 and m["auroc"] == 1.0
```
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    mean_absolute_error,
    mean_squared_error,
    roc_auc_score,
    roc_curve,
)

from eyegazer_keras import GRADE_NAMES
from eyegazer_keras.files import json_safe  # re-exported: metrics.json_safe is public

logger = logging.getLogger(__name__)

BINARY_NAMES = ("no_dr", "dr")
NUM_GRADES = len(GRADE_NAMES)
REFERABLE_MIN_GRADE = 2
DEFAULT_CUTOFFS = (0.5, 1.5, 2.5, 3.5)
DEFAULT_COLLAPSE_THRESHOLD = 0.95
TASKS = {"grade": GRADE_NAMES, "binary": BINARY_NAMES}
# Guo et al. 2017 ("On Calibration of Modern Neural Networks", ICML) report ECE with 15 bins.
ECE_BINS = 15
# The usual screening operating point: refer at least 90 % of referable eyes.
DEFAULT_TARGET_SENSITIVITY = 0.90

__all__ = [
    "BINARY_NAMES",
    "DEFAULT_CUTOFFS",
    "DEFAULT_TARGET_SENSITIVITY",
    "ECE_BINS",
    "apply_cutoffs",
    "apply_temperature",
    "brier_score",
    "calibration_halves",
    "calibration_metrics",
    "class_names",
    "classification_metrics",
    "collapse_fraction",
    "expected_calibration_error",
    "fit_calibration",
    "fit_temperature",
    "json_safe",
    "optimize_cutoffs",
    "quadratic_weighted_kappa",
    "regression_metrics",
    "reliability_bins",
    "sensitivity_specificity",
    "threshold_for_sensitivity",
]


# --------------------------------------------------------------------------- helpers


def _float_or_none(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def class_names(task: str) -> tuple[str, ...]:
    """Returns the class names of a task.

    Args:
        task: str. ``"grade"`` (five ICDR grades) or ``"binary"`` (no DR / DR).

    Returns:
        Tuple of class names, index = class id.
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not one of {sorted(TASKS)}; pass 'grade' or 'binary'.")
    return TASKS[task]


def _as_labels(y_true, n_classes: int, name: str = "y_true") -> np.ndarray:
    """Validates integer class labels (or one-hot rows) and returns an int64 vector.

    Raises:
        ValueError: naming the first bad row: not a class id in ``0..n_classes-1`` (out of
            range, fractional, NaN/inf), a one-hot row that is not one-hot, a wrong shape or an
            empty array.
    """
    y = np.asarray(y_true)
    if y.ndim == 2 and y.shape[1] == n_classes and n_classes > 1:
        if not np.issubdtype(y.dtype, np.number) and y.dtype != np.bool_:
            raise ValueError(f"{name} has dtype {y.dtype}; expected one-hot rows of 0/1.")
        yf = y.astype(np.float64)
        bad = ~(((yf == 0) | (yf == 1)).all(axis=1) & (yf.sum(axis=1) == 1))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{name} row {row}: {y[row].tolist()} is not a one-hot row of {n_classes} "
                "classes; pass class ids [n] or one-hot rows [n, k]."
            )
        y = np.argmax(yf, axis=1)
    elif y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            f"{name} has shape {y.shape}; expected a vector of class ids [n] "
            f"(or one-hot [n, {n_classes}])."
        )
    if y.size == 0:
        raise ValueError(f"{name} is empty; evaluate on at least one example.")
    if not np.issubdtype(y.dtype, np.number) and y.dtype != np.bool_:
        raise ValueError(
            f"{name} has dtype {y.dtype}; expected integer class ids 0..{n_classes - 1}."
        )
    yf = y.astype(np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(yf) | (yf != np.round(yf)) | (yf < 0) | (yf > n_classes - 1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name} row {row}: label {y[row].item()!r} is not a class id in 0..{n_classes - 1}; "
            "check the label mode (grade vs binary) of the split."
        )
    return yf.astype(np.int64)


def _check_lengths(n_true: int, n_pred: int, name: str = "y_pred") -> None:
    if n_true != n_pred:
        raise ValueError(
            f"{name} has {n_pred} rows but y_true has {n_true}; pass matching arrays "
            "(one prediction per example, in the same order)."
        )


def _as_threshold(value, name: str = "threshold") -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is not a number; pass a float.") from None
    if not math.isfinite(t):
        raise ValueError(f"{name}={value!r} is not finite; pass a finite float.")
    return t


# Softmax rows of a float32 (or mixed-precision) model sum to 1 within ~1e-3, and float32
# rounding puts single entries up to ~1e-7 outside [0, 1]; both are accepted (and clipped).
PROBS_SUM_TOLERANCE = 1e-2
PROBS_RANGE_TOLERANCE = 1e-5


def _as_probs(probs, n_classes: int, n: int) -> np.ndarray:
    """Validates class probabilities [n, k]: finite, in [0, 1], rows summing to 1.

    Raises:
        ValueError: wrong shape, or naming the first row that is not finite, leaves [0, 1]
            or does not sum to 1 (within ``PROBS_SUM_TOLERANCE``).
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != n_classes:
        raise ValueError(
            f"probs has shape {p.shape}; expected [n, {n_classes}] class probabilities for this "
            "task (grade: 5 columns, binary: 2 columns)."
        )
    _check_lengths(n, p.shape[0], "probs")
    bad = ~np.isfinite(p).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"probs row {row} is not finite ({p[row].tolist()}); the model diverged?")
    out_of_range = ((p < -PROBS_RANGE_TOLERANCE) | (p > 1 + PROBS_RANGE_TOLERANCE)).any(axis=1)
    bad = out_of_range | (np.abs(p.sum(axis=1) - 1) > PROBS_SUM_TOLERANCE)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"probs row {row} ({p[row].tolist()}) is not a probability vector (each in [0, 1], "
            "summing to 1); pass softmax outputs, not logits."
        )
    return np.clip(p, 0.0, 1.0)


def _as_scores(y_pred, n: int, name: str = "y_pred") -> np.ndarray:
    s = np.asarray(y_pred, dtype=np.float64)
    if s.ndim == 2 and s.shape[1] == 1:
        s = s[:, 0]
    if s.ndim != 1:
        raise ValueError(f"{name} has shape {s.shape}; expected [n] or [n, 1] scores.")
    _check_lengths(n, s.shape[0], name)
    bad = ~np.isfinite(s)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} row {row} is {s[row]}; predictions must be finite.")
    return s


def quadratic_weighted_kappa(y_true, y_pred, n_classes: int = NUM_GRADES) -> float | None:
    """Quadratic weighted Cohen's kappa (``sklearn.metrics.cohen_kappa_score``).

    Args:
        y_true: int array [n]. true classes.
        y_pred: int array [n]. predicted classes.
        n_classes: int. number of classes; labels are fixed to ``0..n_classes-1``. Defaults to 5.

    Returns:
        The kappa, or ``None`` where it is undefined (e.g. every label and prediction is the
        same single class).

    Raises:
        ValueError: naming the first row of ``y_true`` or ``y_pred`` that is not a class id in
            ``0..n_classes-1`` (sklearn's fixed ``labels`` would silently drop it), or when the
            lengths differ.
    """
    y_true = _as_labels(y_true, n_classes)
    y_pred = _as_labels(y_pred, n_classes, name="y_pred")
    _check_lengths(y_true.size, y_pred.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        value = cohen_kappa_score(
            np.asarray(y_true),
            np.asarray(y_pred),
            labels=list(range(n_classes)),
            weights="quadratic",
            replace_undefined_by=np.nan,
        )
    return _float_or_none(value)


def _fast_qwk(cm: np.ndarray, weights: np.ndarray) -> float:
    """QWK from a confusion matrix (same formula as sklearn); -inf where undefined."""
    n = cm.sum()
    expected = np.outer(cm.sum(axis=1), cm.sum(axis=0)) / n
    denom = (weights * expected).sum()
    if denom <= 0:
        return -math.inf
    return 1.0 - (weights * cm).sum() / denom


def _binary_auroc(y_binary: np.ndarray, score: np.ndarray) -> float | None:
    if np.unique(y_binary).size < 2:
        return None
    return _float_or_none(roc_auc_score(y_binary, score))


def sensitivity_specificity(
    y_true_binary, y_score, threshold: float = 0.5
) -> tuple[float | None, float | None]:
    """Sensitivity and specificity of ``y_score >= threshold`` as the positive call.

    Args:
        y_true_binary: array [n] of 0/1 (or bool). 1 = positive (disease).
        y_score: float array [n]. score or probability of the positive class.
        threshold: float. a score at or above it is called positive. Defaults to 0.5.

    Returns:
        ``(sensitivity, specificity)``; each is ``None`` when there are no positives
        (sensitivity) or no negatives (specificity) in ``y_true_binary``.

    Raises:
        ValueError: naming the first row of ``y_true_binary`` that is not 0/1 or of
            ``y_score`` that is not finite, when the lengths differ, or when ``threshold`` is
            not a finite number.
    """
    threshold = _as_threshold(threshold)
    y = _as_labels(y_true_binary, 2, name="y_true_binary").astype(bool)
    score = _as_scores(y_score, y.size, name="y_score")
    called = score >= threshold
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    sens = float((called & y).sum() / n_pos) if n_pos else None
    spec = float((~called & ~y).sum() / n_neg) if n_neg else None
    return sens, spec


def collapse_fraction(preds, n_classes: int | None = None) -> float:
    """Largest fraction of predictions that fall in a single class.

    Args:
        preds: int array [n]. predicted classes.
        n_classes: int or None. number of classes (only used to size the histogram).
            Defaults to ``max(preds) + 1``.

    Returns:
        A float in (0, 1]; 1.0 means every prediction is the same class.

    Raises:
        ValueError: ``preds`` is empty, or naming the first row that is not a class id
            (negative, fractional, NaN/inf, or ``>= n_classes`` when given).
    """
    p = np.asarray(preds).ravel()
    if p.size == 0:
        raise ValueError("preds is empty; collapse_fraction needs at least one prediction.")
    if n_classes is None:
        if not np.issubdtype(p.dtype, np.number) and p.dtype != np.bool_:
            raise ValueError(f"preds has dtype {p.dtype}; expected integer class ids.")
        finite = np.isfinite(p.astype(np.float64))
        top = int(np.max(p[finite])) + 1 if finite.any() else 1
        p = _as_labels(p, max(top, 1), name="preds")
    else:
        p = _as_labels(p, int(n_classes), name="preds")
    counts = np.bincount(p, minlength=n_classes or 0)
    return float(counts.max() / p.size)


def _distribution(preds: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    counts = np.bincount(preds, minlength=len(names))
    return {name: float(c / preds.size) for name, c in zip(names, counts, strict=True)}


# --------------------------------------------------------------------------- classification


def classification_metrics(
    y_true,
    probs,
    task: str,
    threshold: float = 0.5,
    referable_threshold: float = 0.5,
    majority_class: int | None = None,
    collapse_threshold: float = DEFAULT_COLLAPSE_THRESHOLD,
) -> dict:
    """Metrics of a softmax classifier (5-grade or binary) on one split.

    Predictions are ``argmax(probs)`` for ``task="grade"`` and ``probs[:, 1] >= threshold`` for
    ``task="binary"``.

    Args:
        y_true: int array [n] of class ids (or one-hot [n, k]).
        probs: float array [n, 5] (grade) or [n, 2] (binary) of class probabilities.
        task: str. ``"grade"`` or ``"binary"``.
        threshold: float. binary mode: p(DR) at or above it is called DR. Defaults to 0.5.
        referable_threshold: float. grade mode: ``p(grade 2) + p(3) + p(4)`` at or above it is
            called referable DR (grade >= 2). Defaults to 0.5.
        majority_class: int or None. class of the majority baseline, normally the most
            frequent class of the TRAIN split. Defaults to the most frequent class of
            ``y_true`` (ties: the lowest class id).
        collapse_threshold: float. ``collapsed`` is True when at least this fraction of
            predictions fall in one class. Defaults to 0.95.

    Returns:
        Dict with ``n``, ``task``, ``classes``, ``accuracy``, ``majority_class``,
        ``majority_class_name``, ``majority_class_source`` (``"given"`` or ``"y_true"``),
        ``majority_baseline`` (accuracy of always predicting the majority class), ``qwk``,
        ``auroc`` (binary AUROC of p(DR), or one-vs-rest macro AUROC over the grades present),
        ``auroc_per_class`` (grade only; ``None`` for a class absent from ``y_true``),
        ``sensitivity``/``specificity``/``threshold`` (binary only), ``referable`` (grade
        only: ``sensitivity``, ``specificity``, ``auroc``, ``threshold``, ``n_positive``,
        ``n_negative``), ``per_class_recall``, ``class_support``, ``confusion_matrix`` (rows =
        true, columns = predicted, every class), ``prediction_distribution``,
        ``collapse_fraction``, ``collapse_threshold`` and ``collapsed``. Undefined values are
        ``None``.

    Raises:
        ValueError: unknown ``task``; ``y_true``/``probs`` of the wrong shape or length; naming
            the first row whose label is not a class id or whose probabilities are not finite,
            leave [0, 1] or do not sum to 1; a threshold that is not finite.
    """
    names = class_names(task)
    threshold = _as_threshold(threshold)
    referable_threshold = _as_threshold(referable_threshold, "referable_threshold")
    k = len(names)
    y = _as_labels(y_true, k)
    p = _as_probs(probs, k, y.size)
    preds = (p[:, 1] >= threshold).astype(np.int64) if task == "binary" else np.argmax(p, axis=1)

    support = np.bincount(y, minlength=k)
    if majority_class is None:
        majority = int(np.argmax(support))
        source = "y_true"
    else:
        majority = int(majority_class)
        if not 0 <= majority < k:
            raise ValueError(f"majority_class={majority_class!r} is not a class id in 0..{k - 1}.")
        source = "given"

    cm = confusion_matrix(y, preds, labels=list(range(k)))
    recall = {
        name: (float(cm[i, i] / support[i]) if support[i] else None) for i, name in enumerate(names)
    }
    frac = collapse_fraction(preds, k)
    out = {
        "n": int(y.size),
        "task": task,
        "classes": list(names),
        "accuracy": float(accuracy_score(y, preds)),
        "majority_class": majority,
        "majority_class_name": names[majority],
        "majority_class_source": source,
        "majority_baseline": float(np.mean(y == majority)),
        "qwk": quadratic_weighted_kappa(y, preds, k),
        "per_class_recall": recall,
        "class_support": {name: int(c) for name, c in zip(names, support, strict=True)},
        "confusion_matrix": cm.tolist(),
        "prediction_distribution": _distribution(preds, names),
        "collapse_fraction": frac,
        "collapse_threshold": float(collapse_threshold),
        "collapsed": bool(frac >= collapse_threshold),
    }
    if task == "binary":
        sens, spec = sensitivity_specificity(y, p[:, 1], threshold)
        out.update(
            auroc=_binary_auroc(y, p[:, 1]),
            sensitivity=sens,
            specificity=spec,
            threshold=float(threshold),
        )
    else:
        per_class = {name: _binary_auroc(y == i, p[:, i]) for i, name in enumerate(names)}
        defined = [v for v in per_class.values() if v is not None]
        y_ref = (y >= REFERABLE_MIN_GRADE).astype(np.int64)
        score_ref = p[:, REFERABLE_MIN_GRADE:].sum(axis=1)
        sens, spec = sensitivity_specificity(y_ref, score_ref, referable_threshold)
        out.update(
            auroc=float(np.mean(defined)) if defined else None,
            auroc_per_class=per_class,
            referable={
                "definition": f"grade >= {REFERABLE_MIN_GRADE}",
                "threshold": float(referable_threshold),
                "sensitivity": sens,
                "specificity": spec,
                "auroc": _binary_auroc(y_ref, score_ref),
                "n_positive": int(y_ref.sum()),
                "n_negative": int(y_ref.size - y_ref.sum()),
            },
        )
    out["calibration"] = calibration_metrics(y, p, task)
    if out["collapsed"]:
        logger.warning(
            "Predictions collapsed: %.1f%% of %d predictions are one class (%s).",
            100 * frac,
            y.size,
            out["prediction_distribution"],
        )
    return json_safe(out)


# --------------------------------------------------------------------------- regression


def _check_cutoffs(cutoffs) -> tuple[float, float, float, float]:
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
    c = _check_cutoffs(cutoffs)
    s = np.atleast_1d(np.asarray(pred, dtype=np.float64))
    s = _as_scores(s, s.shape[0], name="pred")
    return np.digitize(s, c).astype(np.int64)


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
    y = _as_labels(y_true, NUM_GRADES)
    s = _as_scores(y_pred, y.size)
    cut = np.array(_check_cutoffs(initial))
    k = NUM_GRADES
    weights = np.subtract.outer(np.arange(k), np.arange(k)) ** 2 / (k - 1) ** 2

    def score(c: np.ndarray) -> float:
        cm = np.bincount(y * k + np.digitize(s, c), minlength=k * k).reshape(k, k)
        return _fast_qwk(cm.astype(np.float64), weights)

    uniq = np.unique(s)
    cands = (uniq[:-1] + uniq[1:]) / 2
    if cands.size > max_candidates:
        cands = np.unique(np.quantile(cands, np.linspace(0, 1, max_candidates)))
    best = score(cut)
    start = best
    for _ in range(max_passes):
        improved = False
        for i in range(k - 1):
            lo = cut[i - 1] if i > 0 else -np.inf
            hi = cut[i + 1] if i < k - 2 else np.inf
            for value in cands[(cands > lo) & (cands < hi)]:
                trial = cut.copy()
                trial[i] = value
                q = score(trial)
                if q > best + 1e-12:
                    best, cut, improved = q, trial, True
        if not improved:
            break
    result = _check_cutoffs(cut)
    # Guard against any numeric disagreement with sklearn: never hand back something worse.
    init_q = quadratic_weighted_kappa(y, apply_cutoffs(s, initial))
    new_q = quadratic_weighted_kappa(y, apply_cutoffs(s, result))
    if init_q is not None and (new_q is None or new_q < init_q):
        return _check_cutoffs(initial)
    logger.info("optimize_cutoffs: QWK %.4f -> %.4f with cut-offs %s", start, best, result)
    return result


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
    y = _as_labels(y_true, NUM_GRADES)
    s = _as_scores(y_pred, y.size)
    used = _check_cutoffs(DEFAULT_CUTOFFS if cutoffs is None else cutoffs)
    rounded = np.clip(np.rint(s), 0, NUM_GRADES - 1).astype(np.int64)
    tuned = apply_cutoffs(s, used)
    labels = list(range(NUM_GRADES))
    frac = collapse_fraction(tuned, NUM_GRADES)
    out = {
        "n": int(y.size),
        "task": "regression",
        "classes": list(GRADE_NAMES),
        "rmse": float(np.sqrt(mean_squared_error(y, s))),
        "mae": float(mean_absolute_error(y, s)),
        "qwk_rounded": quadratic_weighted_kappa(y, rounded),
        "accuracy_rounded": float(accuracy_score(y, rounded)),
        "confusion_matrix_rounded": confusion_matrix(y, rounded, labels=labels).tolist(),
        "qwk_tuned": quadratic_weighted_kappa(y, tuned),
        "accuracy_tuned": float(accuracy_score(y, tuned)),
        "confusion_matrix_tuned": confusion_matrix(y, tuned, labels=labels).tolist(),
        "cutoffs": list(used),
        "cutoffs_source": "default" if cutoffs is None else "given",
        "prediction_distribution": _distribution(tuned, GRADE_NAMES),
        "collapse_fraction": frac,
        "collapse_threshold": DEFAULT_COLLAPSE_THRESHOLD,
        "collapsed": bool(frac >= DEFAULT_COLLAPSE_THRESHOLD),
        "calibration": {
            "note": "regression outputs are continuous grades, not probabilities: no ECE/Brier"
        },
    }
    return json_safe(out)


# --------------------------------------------------------------------------- calibration


def reliability_bins(y_true, probs, n_bins: int = ECE_BINS) -> dict:
    """Top-label reliability table: confidence vs accuracy in equal-width confidence bins.

    Bin ``b`` holds the rows whose top probability lies in ``((b-1)/n_bins, b/n_bins]`` (the
    first bin includes 0). Source: Guo et al. 2017, "On Calibration of Modern Neural Networks".

    Args:
        y_true: int array [n] of class ids (or one-hot [n, k]).
        probs: float array [n, k] of class probabilities (rows in [0, 1] summing to 1).
        n_bins: int. number of equal-width bins over [0, 1]. Defaults to 15.

    Returns:
        Dict with ``edges`` (n_bins + 1 floats), ``count`` (ints), ``confidence`` and
        ``accuracy`` (mean top probability and accuracy per bin; ``None`` for an empty bin).

    Raises:
        ValueError: ``n_bins < 1``, or bad ``y_true``/``probs`` (naming the first bad row).
    """
    if int(n_bins) < 1:
        raise ValueError(f"n_bins={n_bins!r} must be a positive integer, e.g. {ECE_BINS}.")
    n_bins = int(n_bins)
    p = np.asarray(probs, dtype=np.float64)
    k = p.shape[1] if p.ndim == 2 else 0
    y = _as_labels(y_true, max(k, 2))
    p = _as_probs(p, k, y.size)
    conf = p.max(axis=1)
    correct = (np.argmax(p, axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    conf_sum = np.bincount(index, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(index, weights=correct, minlength=n_bins)
    nonzero = count > 0
    return {
        "edges": edges.tolist(),
        "count": count.astype(int).tolist(),
        "confidence": [
            float(c / n) if z else None for c, n, z in zip(conf_sum, count, nonzero, strict=True)
        ],
        "accuracy": [
            float(a / n) if z else None for a, n, z in zip(acc_sum, count, nonzero, strict=True)
        ],
    }


def expected_calibration_error(y_true, probs, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top label (Guo et al. 2017, 15 equal-width bins).

    ``ECE = sum_b |B_b| / n * |accuracy(B_b) - confidence(B_b)|``.

    Args:
        y_true: int array [n] of class ids (or one-hot [n, k]).
        probs: float array [n, k] of class probabilities.
        n_bins: int. equal-width confidence bins. Defaults to 15.

    Returns:
        A float in [0, 1]; 0 is perfectly calibrated.

    Raises:
        ValueError: as ``reliability_bins``.
    """
    table = reliability_bins(y_true, probs, n_bins)
    n = sum(table["count"])
    return float(
        sum(
            c / n * abs(a - f)
            for c, a, f in zip(table["count"], table["accuracy"], table["confidence"], strict=True)
            if c
        )
    )


def brier_score(y_true, probs) -> float:
    """Multi-class Brier score: mean over rows of ``sum_k (p_k - [y == k])^2`` (Brier 1950).

    Args:
        y_true: int array [n] of class ids (or one-hot [n, k]).
        probs: float array [n, k] of class probabilities.

    Returns:
        A float in [0, 2]; lower is better. (sklearn's ``brier_score_loss`` is the binary
        special case: for k = 2 this value is twice it.)

    Raises:
        ValueError: bad ``y_true``/``probs``, naming the first bad row.
    """
    p = np.asarray(probs, dtype=np.float64)
    k = p.shape[1] if p.ndim == 2 else 0
    y = _as_labels(y_true, max(k, 2))
    p = _as_probs(p, k, y.size)
    return float(np.mean(np.sum((p - np.eye(k)[y]) ** 2, axis=1)))


def _nll(y: np.ndarray, p: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(p[np.arange(y.size), y], 1e-12, 1.0))))


def calibration_metrics(y_true, probs, task: str, n_bins: int = ECE_BINS) -> dict:
    """ECE, Brier score and negative log-likelihood of one split's probabilities.

    Args:
        y_true: int array [n] of class ids.
        probs: float array [n, 5] (grade) or [n, 2] (binary).
        task: str. ``"grade"`` or ``"binary"``; grade adds the referable (grade >= 2) figures
            of ``p(2) + p(3) + p(4)`` as a two-class problem.
        n_bins: int. ECE bins. Defaults to 15.

    Returns:
        Dict with ``ece``, ``brier``, ``nll``, ``n_bins``, ``reliability`` (see
        ``reliability_bins``) and, for grade, ``referable_ece`` and ``referable_brier``.

    Raises:
        ValueError: bad inputs, naming the first bad row.
    """
    names = class_names(task)
    y = _as_labels(y_true, len(names))
    p = _as_probs(probs, len(names), y.size)
    out = {
        "n_bins": int(n_bins),
        "ece": expected_calibration_error(y, p, n_bins),
        "brier": brier_score(y, p),
        "nll": _nll(y, p),
        "reliability": reliability_bins(y, p, n_bins),
    }
    if task == "grade":
        ref = np.clip(p[:, REFERABLE_MIN_GRADE:].sum(axis=1), 0.0, 1.0)
        p_ref = np.stack([1.0 - ref, ref], axis=1)
        y_ref = (y >= REFERABLE_MIN_GRADE).astype(np.int64)
        out["referable_ece"] = expected_calibration_error(y_ref, p_ref, n_bins)
        out["referable_brier"] = brier_score(y_ref, p_ref)
    return out


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
    t = _as_threshold(temperature, "temperature")
    if t <= 0:
        raise ValueError(f"temperature={temperature!r} must be > 0.")
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs has shape {p.shape}; expected [n, k] probabilities.")
    p = _as_probs(p, p.shape[1], p.shape[0])
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
    y = _as_labels(y_true, max(k, 2))
    p = _as_probs(p, k, y.size)
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
    target = _as_threshold(target, "target")
    if not 0 < target <= 1:
        raise ValueError(f"target={target} must be a sensitivity in (0, 1], e.g. 0.9.")
    y = _as_labels(y_true_binary, 2, name="y_true_binary")
    score = _as_scores(y_score, y.size, name="y_score")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError(
            "threshold_for_sensitivity needs positives and negatives; this split has "
            f"{n_pos} positive(s) of {y.size}."
        )
    _, tpr, thresholds = roc_curve(y, score, drop_intermediate=False)
    i = int(np.flatnonzero(tpr >= target - 1e-12)[0])
    threshold = float(min(thresholds[i], 1.0) if np.isinf(thresholds[i]) else thresholds[i])
    sens, spec = sensitivity_specificity(y, score, threshold)
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
    y = _as_labels(y, int(np.max(y)) + 1 if y.size and np.isfinite(y).all() else 2)
    if y.size < 2:
        raise ValueError("calibration needs at least 2 validation rows (one per half).")
    fit = np.zeros(y.size, dtype=bool)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        fit[rows[0::2]] = True
    return np.flatnonzero(fit), np.flatnonzero(~fit)


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
        metrics and ``operating_point`` (sensitivity and specificity at the threshold).

    Raises:
        ValueError: bad inputs, or a fitting half without positives and negatives.
    """
    names = class_names(task)
    y = _as_labels(y_true, len(names))
    p = _as_probs(probs, len(names), y.size)
    fit_rows, report_rows = calibration_halves(y)
    temperature = fit_temperature(y[fit_rows], p[fit_rows])
    calibrated = apply_temperature(p, temperature)

    def positive(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if task == "binary":
            return y, q[:, 1]
        return (y >= REFERABLE_MIN_GRADE).astype(np.int64), q[:, REFERABLE_MIN_GRADE:].sum(1)

    y_pos, score = positive(calibrated)
    chosen = threshold_for_sensitivity(y_pos[fit_rows], score[fit_rows], target_sensitivity)
    sens, spec = sensitivity_specificity(
        y_pos[report_rows], score[report_rows], chosen["threshold"]
    )
    output = "p_dr" if task == "binary" else "referable_probability"
    return json_safe(
        {
            "temperature": temperature,
            "threshold": chosen["threshold"],
            "threshold_output": output,
            "target_sensitivity": float(target_sensitivity),
            "fit_rows": int(fit_rows.size),
            "report_rows": int(report_rows.size),
            "method": (
                "temperature scaling (Guo et al. 2017) and the operating threshold fitted on "
                "one half of validation (class-stratified alternate rows); before/after "
                "figures measured on the other half"
            ),
            "fit_half": {"operating_point": chosen},
            "report_half": {
                "before": _calibration_summary(y[report_rows], p[report_rows], task),
                "after": _calibration_summary(y[report_rows], calibrated[report_rows], task),
                "operating_point": {
                    "threshold": chosen["threshold"],
                    "sensitivity": sens,
                    "specificity": spec,
                },
            },
        }
    )


def _calibration_summary(y: np.ndarray, p: np.ndarray, task: str) -> dict:
    full = calibration_metrics(y, p, task)
    return {k: v for k, v in full.items() if k != "reliability"}
