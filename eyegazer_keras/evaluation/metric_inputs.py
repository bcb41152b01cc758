"""The checked inputs every metric takes: class ids, probabilities, scores and thresholds.

Each check returns a clean numpy array (or float) or raises a one-line ``ValueError`` that names
the first bad row and the fix, so no metric silently drops or misreads a row (sklearn's fixed
``labels`` would drop an out-of-range class id). ``metrics``, ``calibrate``, ``regression`` and
``report`` all check their inputs here.

Example:

```python
import numpy as np
from eyegazer_keras.evaluation import metric_inputs

y = metric_inputs.as_labels([[0, 1], [1, 0]], n_classes=2)  # one-hot rows -> class ids
assert y.tolist() == [1, 0]
p = metric_inputs.as_probs([[0.2, 0.8], [0.6, 0.4]], n_classes=2, n=2)
try:
    metric_inputs.as_labels([0, 1, 7], n_classes=5)
except ValueError as err:
    assert "row 2" in str(err)
```
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "PROBS_RANGE_TOLERANCE",
    "PROBS_SUM_TOLERANCE",
    "as_labels",
    "as_probs",
    "as_scores",
    "as_threshold",
    "check_lengths",
]

# Softmax rows of a float32 (or mixed-precision) model sum to 1 within ~1e-3, and float32
# rounding puts single entries up to ~1e-7 outside [0, 1]; both are accepted (and clipped).
PROBS_SUM_TOLERANCE = 1e-2
PROBS_RANGE_TOLERANCE = 1e-5


def _first_bad_row(bad: np.ndarray) -> int | None:
    return int(np.flatnonzero(bad)[0]) if bad.any() else None


def _from_one_hot(y: np.ndarray, n_classes: int, name: str) -> np.ndarray:
    if not np.issubdtype(y.dtype, np.number) and y.dtype != np.bool_:
        raise ValueError(f"{name} has dtype {y.dtype}; expected one-hot rows of 0/1.")
    yf = y.astype(np.float64)
    row = _first_bad_row(~(((yf == 0) | (yf == 1)).all(axis=1) & (yf.sum(axis=1) == 1)))
    if row is not None:
        raise ValueError(
            f"{name} row {row}: {y[row].tolist()} is not a one-hot row of {n_classes} "
            "classes; pass class ids [n] or one-hot rows [n, k]."
        )
    return np.argmax(yf, axis=1)


def as_labels(y_true, n_classes: int, name: str = "y_true") -> np.ndarray:
    """Validates integer class labels (or one-hot rows) and returns an int64 vector.

    Args:
        y_true: array [n] of class ids (int, or float holding whole numbers, or bool), [n, 1],
            or one-hot rows [n, n_classes].
        n_classes: int. number of classes; valid ids are ``0..n_classes-1``.
        name: str. the argument's name in error messages. Defaults to ``"y_true"``.

    Returns:
        int64 array [n] of class ids.

    Raises:
        ValueError: naming the first bad row: not a class id in ``0..n_classes-1`` (out of
            range, fractional, NaN/inf), a one-hot row that is not one-hot, a wrong shape or an
            empty array.
    """
    y = np.asarray(y_true)
    if y.ndim == 2 and y.shape[1] == n_classes and n_classes > 1:
        y = _from_one_hot(y, n_classes, name)
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
    row = _first_bad_row(bad)
    if row is not None:
        raise ValueError(
            f"{name} row {row}: label {y[row].item()!r} is not a class id in 0..{n_classes - 1}; "
            "check the label mode (grade vs binary) of the split."
        )
    return yf.astype(np.int64)


def check_lengths(n_true: int, n_pred: int, name: str = "y_pred") -> None:
    """Raises unless there is one prediction per example.

    Args:
        n_true: int. rows of ``y_true``.
        n_pred: int. rows of the predictions.
        name: str. the predictions' name in the message. Defaults to ``"y_pred"``.

    Raises:
        ValueError: the counts differ.
    """
    if n_true != n_pred:
        raise ValueError(
            f"{name} has {n_pred} rows but y_true has {n_true}; pass matching arrays "
            "(one prediction per example, in the same order)."
        )


def as_threshold(value, name: str = "threshold") -> float:
    """A finite float (a threshold, temperature or target), or a one-line error.

    Args:
        value: anything ``float()`` accepts.
        name: str. the argument's name in the message. Defaults to ``"threshold"``.

    Returns:
        The float.

    Raises:
        ValueError: not a number, or NaN/inf.
    """
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is not a number; pass a float.") from None
    if not math.isfinite(t):
        raise ValueError(f"{name}={value!r} is not finite; pass a finite float.")
    return t


def as_probs(probs, n_classes: int, n: int) -> np.ndarray:
    """Validates class probabilities [n, k]: finite, in [0, 1], rows summing to 1.

    Args:
        probs: float array [n, n_classes] of softmax outputs.
        n_classes: int. expected number of columns.
        n: int. expected number of rows (that of ``y_true``).

    Returns:
        float64 array [n, n_classes], clipped to [0, 1] (float32 rounding may leave ~1e-7
        outside).

    Raises:
        ValueError: wrong shape or row count, or naming the first row that is not finite,
            leaves [0, 1] or does not sum to 1 (within ``PROBS_SUM_TOLERANCE``).
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != n_classes:
        raise ValueError(
            f"probs has shape {p.shape}; expected [n, {n_classes}] class probabilities for this "
            "task (grade: 5 columns, binary: 2 columns)."
        )
    check_lengths(n, p.shape[0], "probs")
    row = _first_bad_row(~np.isfinite(p).all(axis=1))
    if row is not None:
        raise ValueError(f"probs row {row} is not finite ({p[row].tolist()}); the model diverged?")
    out_of_range = ((p < -PROBS_RANGE_TOLERANCE) | (p > 1 + PROBS_RANGE_TOLERANCE)).any(axis=1)
    row = _first_bad_row(out_of_range | (np.abs(p.sum(axis=1) - 1) > PROBS_SUM_TOLERANCE))
    if row is not None:
        raise ValueError(
            f"probs row {row} ({p[row].tolist()}) is not a probability vector (each in [0, 1], "
            "summing to 1); pass softmax outputs, not logits."
        )
    return np.clip(p, 0.0, 1.0)


def as_scores(y_pred, n: int, name: str = "y_pred") -> np.ndarray:
    """Validates one finite score per example (a regression output or a positive-class score).

    Args:
        y_pred: float array [n] or [n, 1].
        n: int. expected number of rows (that of ``y_true``).
        name: str. the argument's name in error messages. Defaults to ``"y_pred"``.

    Returns:
        float64 array [n].

    Raises:
        ValueError: wrong shape or row count, or naming the first row that is not finite.
    """
    s = np.asarray(y_pred, dtype=np.float64)
    if s.ndim == 2 and s.shape[1] == 1:
        s = s[:, 0]
    if s.ndim != 1:
        raise ValueError(f"{name} has shape {s.shape}; expected [n] or [n, 1] scores.")
    check_lengths(n, s.shape[0], name)
    row = _first_bad_row(~np.isfinite(s))
    if row is not None:
        raise ValueError(f"{name} row {row} is {s[row]}; predictions must be finite.")
    return s
