"""Evaluation metrics for diabetic-retinopathy grading (sklearn underneath).

QWK (the APTOS 2019 competition's metric), accuracy, AUROC, sensitivity/specificity, the
collapse check and the calibration measures (ECE, Brier, NLL, reliability bins) of one split.
Fitting calibration (temperature, operating threshold) is ``calibrate``; grades from a
regressor's output (cut-offs, ``regression_metrics``) are ``regression``; the input checks every
metric shares are ``metric_inputs``.

Every public function takes numpy arrays (or anything ``np.asarray`` accepts) and returns plain,
JSON-serialisable Python: ``int``, ``float``, ``bool``, ``str``, ``None``, lists and dicts. A
metric that is undefined on the given data (for example AUROC when ``y_true`` holds one class
only) is ``None``, never NaN, so ``json.dumps(..., allow_nan=False)`` always works.

Example:

```python
import numpy as np
from eyegazer_keras.evaluation import metrics

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
from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, roc_auc_score

from eyegazer_keras import GRADE_NAMES
from eyegazer_keras.evaluation.metric_inputs import (
    as_labels,
    as_probs,
    as_scores,
    as_threshold,
    check_lengths,
)
from eyegazer_keras.files import json_safe

logger = logging.getLogger(__name__)

BINARY_NAMES = ("no_dr", "dr")
NUM_GRADES = len(GRADE_NAMES)
REFERABLE_MIN_GRADE = 2
DEFAULT_COLLAPSE_THRESHOLD = 0.95
TASKS = {"grade": GRADE_NAMES, "binary": BINARY_NAMES}
# Guo et al. 2017 ("On Calibration of Modern Neural Networks", ICML) report ECE with 15 bins.
ECE_BINS = 15

__all__ = [
    "BINARY_NAMES",
    "ECE_BINS",
    "brier_score",
    "calibration_metrics",
    "class_names",
    "classification_metrics",
    "collapse_fraction",
    "expected_calibration_error",
    "prediction_distribution",
    "quadratic_weighted_kappa",
    "reliability_bins",
    "sensitivity_specificity",
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

    Raises:
        ValueError: an unknown task.
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not one of {sorted(TASKS)}; pass 'grade' or 'binary'.")
    return TASKS[task]


def quadratic_weighted_kappa(y_true, y_pred, n_classes: int = NUM_GRADES) -> float | None:
    """Quadratic weighted Cohen's kappa (``sklearn.metrics.cohen_kappa_score``).

    The metric of the APTOS 2019 Blindness Detection competition (Kaggle).

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
    y_true = as_labels(y_true, n_classes)
    y_pred = as_labels(y_pred, n_classes, name="y_pred")
    check_lengths(y_true.size, y_pred.size)
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
    threshold = as_threshold(threshold)
    y = as_labels(y_true_binary, 2, name="y_true_binary").astype(bool)
    score = as_scores(y_score, y.size, name="y_score")
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
        p = as_labels(p, max(top, 1), name="preds")
    else:
        p = as_labels(p, int(n_classes), name="preds")
    counts = np.bincount(p, minlength=n_classes or 0)
    return float(counts.max() / p.size)


def prediction_distribution(preds: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """The fraction of predictions in each class.

    Args:
        preds: int64 array [n] of class ids (checked, e.g. by ``metric_inputs.as_labels``).
        names: the k class names, index = class id.

    Returns:
        ``{name: fraction}`` over every class (0.0 for a class never predicted).
    """
    counts = np.bincount(preds, minlength=len(names))
    return {name: float(c / preds.size) for name, c in zip(names, counts, strict=True)}


# --------------------------------------------------------------------------- classification
def _majority(support: np.ndarray, majority_class: int | None) -> tuple[int, str]:
    """``(majority class, "y_true" or "given")``; ties in ``y_true``: the lowest class id."""
    if majority_class is None:
        return int(np.argmax(support)), "y_true"
    majority, k = int(majority_class), support.size
    if not 0 <= majority < k:
        raise ValueError(f"majority_class={majority_class!r} is not a class id in 0..{k - 1}.")
    return majority, "given"


def _prediction_figures(
    y: np.ndarray,
    preds: np.ndarray,
    names: Sequence[str],
    majority_class: int | None,
    collapse_threshold: float,
) -> dict:
    """Accuracy, majority baseline, QWK, recall, confusion matrix and the collapse check."""
    k = len(names)
    support = np.bincount(y, minlength=k)
    majority, source = _majority(support, majority_class)
    cm = confusion_matrix(y, preds, labels=list(range(k)))
    frac = collapse_fraction(preds, k)
    return {
        "accuracy": float(accuracy_score(y, preds)),
        "majority_class": majority,
        "majority_class_name": names[majority],
        "majority_class_source": source,
        "majority_baseline": float(np.mean(y == majority)),
        "qwk": quadratic_weighted_kappa(y, preds, k),
        "per_class_recall": {
            name: (float(cm[i, i] / support[i]) if support[i] else None)
            for i, name in enumerate(names)
        },
        "class_support": {name: int(c) for name, c in zip(names, support, strict=True)},
        "confusion_matrix": cm.tolist(),
        "prediction_distribution": prediction_distribution(preds, names),
        "collapse_fraction": frac,
        "collapse_threshold": float(collapse_threshold),
        "collapsed": bool(frac >= collapse_threshold),
    }


def _binary_figures(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    """AUROC of ``p(DR)`` and sensitivity/specificity at ``threshold``."""
    sens, spec = sensitivity_specificity(y, p[:, 1], threshold)
    return {
        "auroc": _binary_auroc(y, p[:, 1]),
        "sensitivity": sens,
        "specificity": spec,
        "threshold": float(threshold),
    }


def _grade_figures(
    y: np.ndarray, p: np.ndarray, names: Sequence[str], referable_threshold: float
) -> dict:
    """One-vs-rest AUROC per grade (and their mean), and the referable (grade >= 2) figures."""
    per_class = {name: _binary_auroc(y == i, p[:, i]) for i, name in enumerate(names)}
    defined = [v for v in per_class.values() if v is not None]
    y_ref = (y >= REFERABLE_MIN_GRADE).astype(np.int64)
    score_ref = p[:, REFERABLE_MIN_GRADE:].sum(axis=1)
    sens, spec = sensitivity_specificity(y_ref, score_ref, referable_threshold)
    return {
        "auroc": float(np.mean(defined)) if defined else None,
        "auroc_per_class": per_class,
        "referable": {
            "definition": f"grade >= {REFERABLE_MIN_GRADE}",
            "threshold": float(referable_threshold),
            "sensitivity": sens,
            "specificity": spec,
            "auroc": _binary_auroc(y_ref, score_ref),
            "n_positive": int(y_ref.sum()),
            "n_negative": int(y_ref.size - y_ref.sum()),
        },
    }


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
        ``collapse_fraction``, ``collapse_threshold``, ``collapsed`` and ``calibration`` (see
        ``calibration_metrics``). Undefined values are ``None``.

    Raises:
        ValueError: unknown ``task``; ``y_true``/``probs`` of the wrong shape or length; naming
            the first row whose label is not a class id or whose probabilities are not finite,
            leave [0, 1] or do not sum to 1; a threshold that is not finite.
    """
    names = class_names(task)
    threshold = as_threshold(threshold)
    referable_threshold = as_threshold(referable_threshold, "referable_threshold")
    y = as_labels(y_true, len(names))
    p = as_probs(probs, len(names), y.size)
    preds = (p[:, 1] >= threshold).astype(np.int64) if task == "binary" else np.argmax(p, axis=1)
    out = {
        "n": int(y.size),
        "task": task,
        "classes": list(names),
        **_prediction_figures(y, preds, names, majority_class, collapse_threshold),
    }
    if task == "binary":
        out.update(_binary_figures(y, p, threshold))
    else:
        out.update(_grade_figures(y, p, names, referable_threshold))
    out["calibration"] = calibration_metrics(y, p, task)
    if out["collapsed"]:
        logger.warning(
            "Predictions collapsed: %.1f%% of %d predictions are one class (%s).",
            100 * out["collapse_fraction"],
            y.size,
            out["prediction_distribution"],
        )
    return json_safe(out)


# --------------------------------------------------------------------------- calibration measures
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
    y = as_labels(y_true, max(k, 2))
    p = as_probs(p, k, y.size)
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
    y = as_labels(y_true, max(k, 2))
    p = as_probs(p, k, y.size)
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
    y = as_labels(y_true, len(names))
    p = as_probs(probs, len(names), y.size)
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
