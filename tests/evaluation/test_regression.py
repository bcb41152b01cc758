"""Grades from regression outputs: cut-offs, QWK-tuned cut-offs, regression metrics (by hand)."""

import json
import math

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from eyegazer_keras.evaluation import metrics, regression


def test_fast_qwk_matches_sklearn():
    rng = np.random.default_rng(0)
    k = 5
    w = np.subtract.outer(np.arange(k), np.arange(k)) ** 2 / (k - 1) ** 2
    for _ in range(5):
        y, p = rng.integers(0, k, 200), rng.integers(0, k, 200)
        cm = np.bincount(y * k + p, minlength=k * k).reshape(k, k).astype(float)
        expected = cohen_kappa_score(y, p, weights="quadratic")
        assert regression._fast_qwk(cm, w) == pytest.approx(expected)


def test_apply_cutoffs_default_equals_rounding():
    rng = np.random.default_rng(0)
    pred = rng.uniform(-1, 5.5, 500)
    pred = pred[np.abs(pred - np.floor(pred) - 0.5) > 1e-6]  # no exact .5 ties
    expected = np.clip(np.rint(pred), 0, 4).astype(int)
    np.testing.assert_array_equal(regression.apply_cutoffs(pred), expected)
    np.testing.assert_array_equal(
        regression.apply_cutoffs([[0.2], [0.7], [3.2]], (0.6, 1, 2, 3)), [0, 1, 4]
    )
    with pytest.raises(ValueError, match="increasing"):
        regression.apply_cutoffs([1.0], (0.5, 2.5, 1.5, 3.5))
    with pytest.raises(ValueError, match="increasing"):
        regression.apply_cutoffs([1.0], (0.5, 1.5, 2.5))


def test_regression_metrics_by_hand():
    y = np.array([0, 1, 2, 3])
    pred = np.array([0.4, 1.0, 3.0, 3.0])
    # errors 0.4, 0, 1, 0 -> MAE 1.4/4 = 0.35, RMSE sqrt(1.16/4)
    m = regression.regression_metrics(y, pred)
    assert m["mae"] == pytest.approx(0.35)
    assert m["rmse"] == pytest.approx(math.sqrt(1.16 / 4))
    assert m["cutoffs"] == [0.5, 1.5, 2.5, 3.5]
    assert m["cutoffs_source"] == "default"
    assert m["confusion_matrix_rounded"] == m["confusion_matrix_tuned"]
    assert m["accuracy_rounded"] == 0.75
    assert m["qwk_rounded"] == m["qwk_tuned"] < 1.0
    m = regression.regression_metrics(y, pred[:, None], cutoffs=(0.5, 1.5, 3.5, 4.0))
    assert m["cutoffs_source"] == "given"
    # 3.0 now falls in grade 2 (2.5 <= x < 3.5 moved to 1.5 <= x < 3.5): row 3 predicted 2.
    assert m["confusion_matrix_tuned"][3] == [0, 0, 1, 0, 0]
    json.dumps(m, allow_nan=False)


def test_optimize_cutoffs_fixes_constant_shift():
    # Every grade predicted 0.6 too high: rounding lands one grade up; cut-offs at the
    # midpoints (1.1, 2.1, 3.1, 4.1) recover every grade exactly.
    y = np.repeat(np.arange(5), 6)
    pred = y + 0.6 + np.tile(np.linspace(-0.05, 0.05, 6), 5)
    rounded = regression.regression_metrics(y, pred)
    assert rounded["qwk_rounded"] < 1.0
    cut = regression.optimize_cutoffs(y, pred)
    assert len(cut) == 4 and all(isinstance(c, float) for c in cut)
    assert list(cut) == sorted(cut)
    for c, g in zip(cut, range(4), strict=True):
        assert g + 0.65 < c < g + 1.55  # between the grade-g and grade-(g+1) clusters
    tuned = regression.regression_metrics(y, pred, cut)
    assert tuned["qwk_tuned"] == 1.0
    assert tuned["accuracy_tuned"] == 1.0


def test_optimize_cutoffs_fixes_plus_0_4_with_spread():
    # +0.4 shift with spread: many predictions cross x.5 and round one grade up.
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(5), 20)
    pred = y + 0.4 + rng.uniform(-0.3, 0.3, y.size)
    init_q = regression.regression_metrics(y, pred)["qwk_rounded"]
    cut = regression.optimize_cutoffs(y, pred)
    assert init_q < 1.0
    assert regression.regression_metrics(y, pred, cut)["qwk_tuned"] == 1.0


def test_optimize_cutoffs_never_worse_and_deterministic():
    rng = np.random.default_rng(7)
    for trial in range(5):
        y = rng.integers(0, 5, 150)
        pred = y * rng.uniform(0.5, 1.2) + rng.normal(0, 1.0, y.size)
        init = (0.5, 1.5, 2.5, 3.5) if trial % 2 else (0.2, 1.0, 2.9, 3.3)
        cut = regression.optimize_cutoffs(y, pred, initial=init)
        assert cut == regression.optimize_cutoffs(y, pred, initial=init)
        assert all(a < b for a, b in zip(cut, cut[1:], strict=False))
        q0 = metrics.quadratic_weighted_kappa(y, regression.apply_cutoffs(pred, init))
        q1 = metrics.quadratic_weighted_kappa(y, regression.apply_cutoffs(pred, cut))
        assert q1 >= q0


def test_optimize_cutoffs_keeps_initial_when_already_perfect():
    y = np.array([0, 1, 2, 3, 4, 4])
    pred = y.astype(float)
    assert regression.optimize_cutoffs(y, pred) == (0.5, 1.5, 2.5, 3.5)


def test_expected_grade_and_grade_decision_by_hand():
    probs = np.array(
        [
            [0.9, 0.1, 0.0, 0.0, 0.0],  # E = 0.1
            [0.6, 0.1, 0.3, 0.0, 0.0],  # E = 0.7: argmax 0, graded 1 by rounding
            [0.5, 0.0, 0.2, 0.3, 0.0],  # E = 1.3
            [0.4, 0.0, 0.0, 0.0, 0.6],  # E = 2.4
        ]
    )
    np.testing.assert_allclose(regression.expected_grade(probs), [0.1, 0.7, 1.3, 2.4])
    y = np.array([0, 1, 2, 4])
    rounded = regression.grade_decision(y, probs, None)
    assert rounded["cutoffs_source"] == "default" and rounded["cutoffs"] == [0.5, 1.5, 2.5, 3.5]
    assert rounded["accuracy_argmax"] == 0.5  # rows 0 and 3
    assert rounded["accuracy_cutoffs"] == 0.5  # grades 0, 1, 1, 2: rows 0 and 1
    tuned = regression.grade_decision(y, probs, (0.5, 1.0, 2.0, 2.2))  # grades 0, 1, 2, 4
    assert tuned["cutoffs_source"] == "given"
    assert tuned["accuracy_cutoffs"] == 1.0 and tuned["qwk_cutoffs"] == pytest.approx(1.0)
    assert tuned["confusion_matrix_argmax"][1][0] == 1  # grade 1 called 0 by the argmax
    with pytest.raises(ValueError, match=r"\[n, 5\]"):
        regression.expected_grade(probs[:, :2])
    with pytest.raises(ValueError, match="rows"):
        regression.grade_decision(y[:3], probs, None)
