"""Metrics against small cases worked out by hand (values in the comments)."""

import json

import numpy as np
import pytest

from eyegazer_keras import GRADE_NAMES, files
from eyegazer_keras.evaluation import metrics, regression

# Binary case, threshold 0.5:
#   y    = 1    1    1    1    0    0    0    0    0    0
#   p1   = 0.9  0.8  0.7  0.3  0.6  0.2  0.1  0.1  0.1  0.1
#   call = 1    1    1    0    1    0    0    0    0    0
# TP=3 FN=1 FP=1 TN=5 -> sensitivity 3/4, specificity 5/6, accuracy 8/10.
# AUROC: of the 4*6=24 (pos, neg) pairs only (0.3, 0.6) is mis-ordered -> 23/24.
# Kappa (2 classes, quadratic = unweighted): po=0.8, pe=0.6*0.6+0.4*0.4=0.52 -> 0.28/0.48 = 7/12.
Y_BIN = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
P1 = np.array([0.9, 0.8, 0.7, 0.3, 0.6, 0.2, 0.1, 0.1, 0.1, 0.1])
PROBS_BIN = np.stack([1 - P1, P1], axis=1)


def one_hot_probs(preds, k=5, on=0.8):
    """Probabilities whose argmax is `preds`."""
    p = np.full((len(preds), k), (1 - on) / (k - 1))
    p[np.arange(len(preds)), preds] = on
    return p


def test_sensitivity_specificity_by_hand():
    sens, spec = metrics.sensitivity_specificity(Y_BIN, P1, 0.5)
    assert sens == pytest.approx(3 / 4)
    assert spec == pytest.approx(5 / 6)
    # Threshold 0.65 drops the false positive at 0.6: TP=3 FN=1 FP=0 TN=6.
    sens, spec = metrics.sensitivity_specificity(Y_BIN, P1, 0.65)
    assert (sens, spec) == (pytest.approx(0.75), 1.0)
    # No positives -> sensitivity undefined (None), not NaN or a crash.
    assert metrics.sensitivity_specificity([0, 0], [0.1, 0.9], 0.5) == (None, 0.5)


def test_binary_metrics_by_hand():
    m = metrics.classification_metrics(Y_BIN, PROBS_BIN, task="binary")
    assert m["n"] == 10
    assert m["classes"] == ["no_dr", "dr"]
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["sensitivity"] == pytest.approx(0.75)
    assert m["specificity"] == pytest.approx(5 / 6)
    assert m["auroc"] == pytest.approx(23 / 24)
    assert m["qwk"] == pytest.approx(7 / 12)
    assert m["confusion_matrix"] == [[5, 1], [1, 3]]
    assert m["per_class_recall"] == {"no_dr": pytest.approx(5 / 6), "dr": pytest.approx(0.75)}
    assert m["prediction_distribution"] == {"no_dr": pytest.approx(0.6), "dr": pytest.approx(0.4)}
    # Majority class of y_true is 0 (6 of 10).
    assert (m["majority_class"], m["majority_class_name"]) == (0, "no_dr")
    assert m["majority_class_source"] == "y_true"
    assert m["majority_baseline"] == pytest.approx(0.6)
    assert m["collapsed"] is False
    assert "referable" not in m


def test_binary_threshold_moves_predictions():
    m = metrics.classification_metrics(Y_BIN, PROBS_BIN, task="binary", threshold=0.65)
    assert m["threshold"] == 0.65
    assert m["specificity"] == 1.0
    assert m["confusion_matrix"] == [[6, 0], [1, 3]]
    assert m["auroc"] == pytest.approx(23 / 24)  # threshold-free


def test_qwk_known_values():
    assert metrics.quadratic_weighted_kappa([0, 1, 2, 3, 4], [0, 1, 2, 3, 4]) == 1.0
    # Fully reversed extremes: observed weighted disagreement 2, expected 1 -> 1 - 2/1 = -1.
    assert metrics.quadratic_weighted_kappa([0, 4], [4, 0]) == pytest.approx(-1.0)
    # y=[0..4], pred=[0,1,2,3,3]: sum(W*O) = 1/16; column sums [1,1,1,2,0], column weight sums
    # [30,15,10,15,30]/16 -> sum(W*E) = (30+15+10+30)/(16*5) = 85/80 -> 1 - (1/16)/(85/80) = 16/17.
    assert metrics.quadratic_weighted_kappa([0, 1, 2, 3, 4], [0, 1, 2, 3, 3]) == pytest.approx(
        16 / 17
    )
    # One class everywhere: undefined -> None, never NaN.
    assert metrics.quadratic_weighted_kappa([2, 2, 2], [2, 2, 2]) is None


def test_grade_metrics_perfect_with_absent_class():
    y = np.array([0, 0, 1, 2, 2, 4])  # grade 3 absent
    m = metrics.classification_metrics(y, one_hot_probs(y), task="grade")
    assert m["accuracy"] == 1.0
    assert m["qwk"] == 1.0
    assert m["auroc"] == 1.0
    assert m["auroc_per_class"]["severe"] is None
    assert m["auroc_per_class"]["no_dr"] == 1.0
    assert m["per_class_recall"]["severe"] is None
    assert m["class_support"] == {
        "no_dr": 2,
        "mild": 1,
        "moderate": 2,
        "severe": 0,
        "proliferative": 1,
    }
    assert np.array(m["confusion_matrix"]).shape == (5, 5)
    assert list(m["per_class_recall"]) == list(GRADE_NAMES)
    ref = m["referable"]
    assert (ref["sensitivity"], ref["specificity"], ref["auroc"]) == (1.0, 1.0, 1.0)
    assert (ref["n_positive"], ref["n_negative"]) == (3, 3)
    json.dumps(m, allow_nan=False)


def test_referable_uses_summed_probabilities():
    # Row 0 is grade 2 but argmax says no_dr (0.4); p(2)+p(3)+p(4) = 0.2+0.2+0.1 = 0.5 >= 0.5,
    # so it IS called referable. Row 1 (grade 0): referable score 0.1 -> not referable.
    probs = np.array([[0.4, 0.1, 0.2, 0.2, 0.1], [0.8, 0.1, 0.05, 0.03, 0.02]])
    y = np.array([2, 0])
    m = metrics.classification_metrics(y, probs, task="grade")
    assert m["accuracy"] == 0.5
    assert m["referable"]["sensitivity"] == 1.0
    assert m["referable"]["specificity"] == 1.0
    m = metrics.classification_metrics(y, probs, task="grade", referable_threshold=0.6)
    assert m["referable"]["sensitivity"] == 0.0
    assert m["referable"]["threshold"] == 0.6


def test_majority_baseline_given_class():
    y = np.array([0, 0, 0, 2, 2, 1])
    probs = one_hot_probs(y)
    m = metrics.classification_metrics(y, probs, task="grade")
    assert (m["majority_class"], m["majority_baseline"]) == (0, 0.5)
    m = metrics.classification_metrics(y, probs, task="grade", majority_class=2)
    assert m["majority_class"] == 2 and m["majority_class_name"] == "moderate"
    assert m["majority_class_source"] == "given"
    assert m["majority_baseline"] == pytest.approx(2 / 6)


def test_collapse_detection():
    preds = np.array([0] * 19 + [1])
    assert metrics.collapse_fraction(preds) == 0.95
    assert metrics.collapse_fraction([0] * 18 + [1, 2]) == 0.9
    y = np.arange(20) % 5
    collapsed = metrics.classification_metrics(y, one_hot_probs(preds), task="grade")
    assert collapsed["collapsed"] is True
    assert collapsed["prediction_distribution"]["no_dr"] == 0.95
    not_collapsed = metrics.classification_metrics(y, one_hot_probs([0] * 18 + [1, 2]), "grade")
    assert not_collapsed["collapsed"] is False
    lower = metrics.classification_metrics(
        y, one_hot_probs([0] * 18 + [1, 2]), "grade", collapse_threshold=0.9
    )
    assert lower["collapsed"] is True


def test_single_class_split_gives_none_not_nan():
    y = np.zeros(6, dtype=int)
    probs = np.random.default_rng(1).dirichlet(np.ones(5), size=6)
    m = metrics.classification_metrics(y, probs, task="grade")
    assert m["auroc"] is None
    assert all(v is None for v in m["auroc_per_class"].values())
    assert m["referable"]["auroc"] is None and m["referable"]["sensitivity"] is None
    text = json.dumps(m, allow_nan=False)
    assert "NaN" not in text
    mb = metrics.classification_metrics([1, 1], [[0.3, 0.7], [0.6, 0.4]], task="binary")
    assert mb["auroc"] is None and mb["specificity"] is None
    json.dumps(mb, allow_nan=False)


def test_one_hot_labels_accepted():
    y = np.array([0, 3, 4])
    m1 = metrics.classification_metrics(y, one_hot_probs(y), "grade")
    m2 = metrics.classification_metrics(np.eye(5)[y], one_hot_probs(y), "grade")
    assert m1 == m2


@pytest.mark.parametrize(
    "y, probs, task, match",
    [
        ([0, 1], np.ones((2, 2)) / 2, "grade", r"\[n, 5\]"),
        ([0, 7], np.ones((2, 5)) / 5, "grade", "row 1"),
        ([0, 1, 1], np.ones((2, 2)) / 2, "binary", "rows"),
        ([0, 1], [[0.5, np.nan], [0.5, 0.5]], "binary", "row 0"),
        ([0, 1], np.ones((2, 2)) / 2, "multi", "grade"),
    ],
)
def test_bad_inputs_raise_clear_errors(y, probs, task, match):
    with pytest.raises(ValueError, match=match):
        metrics.classification_metrics(y, probs, task)


# --------------------------------------------------------------------------- regression


def test_json_safe():
    out = files.json_safe(
        {"a": np.float32(0.5), "b": np.nan, "c": (np.int64(2), np.inf), "d": np.bool_(True)}
    )
    assert out == {"a": 0.5, "b": None, "c": [2, None], "d": True}
    assert type(out["c"][0]) is int and type(out["d"]) is bool


# --------------------------------------------------------------------------- input validation


def test_qwk_out_of_range_prediction_raises_not_one():
    # sklearn's fixed labels=0..4 drops rows 1 (5) and 6 (-1) and returns 1.0 (issue 13, item 5).
    with pytest.raises(ValueError, match=r"y_pred row 1: label 5 is not a class id in 0\.\.4"):
        metrics.quadratic_weighted_kappa([0, 0, 1, 2, 3, 4, 4, 0], [0, 5, 1, 2, 3, 4, -1, 0])


@pytest.mark.parametrize(
    "y_true, y_pred, match",
    [
        ([0, 1, 7], [0, 1, 2], "y_true row 2"),
        ([0, 1, 2], [0, 1.5, 2], "y_pred row 1"),
        ([0, 1, 2], [0, np.nan, 2], "y_pred row 1"),
        ([0, np.inf, 2], [0, 1, 2], "y_true row 1"),
        ([0, 1, 2], [0, 1], "2 rows but y_true has 3"),
        ([], [], "empty"),
        (["a", "b"], [0, 1], "dtype"),
    ],
)
def test_qwk_validates_inputs(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        metrics.quadratic_weighted_kappa(y_true, y_pred)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: metrics.sensitivity_specificity([0, 1, 2], [0.1, 0.2, 0.3]), "row 2"),
        (lambda: metrics.sensitivity_specificity([0, 1], [0.1, np.inf]), "y_score row 1"),
        (lambda: metrics.sensitivity_specificity([0, 1], [0.1]), "1 rows but y_true has 2"),
        (lambda: metrics.sensitivity_specificity([0, 1], [0.1, 0.2], np.nan), "threshold"),
        (lambda: metrics.collapse_fraction([0, 1, -1]), "preds row 2"),
        (lambda: metrics.collapse_fraction([0, 1, 0.5]), "preds row 2"),
        (lambda: metrics.collapse_fraction([0, 1, 5], n_classes=5), "preds row 2"),
        (lambda: metrics.collapse_fraction([0, np.nan]), "preds row 1"),
        (lambda: regression.apply_cutoffs([0.1, np.nan]), "pred row 1"),
        (lambda: regression.regression_metrics([0, 1, 5], [0.0, 1.0, 2.0]), "y_true row 2"),
        (lambda: regression.regression_metrics([0, 1], [0.0, np.nan]), "y_pred row 1"),
        (lambda: regression.regression_metrics([0, 1], [0.0]), "1 rows but y_true has 2"),
        (lambda: regression.optimize_cutoffs([0, -1], [0.0, 1.0]), "y_true row 1"),
        (lambda: regression.optimize_cutoffs([0, 1], [0.0, np.inf]), "y_pred row 1"),
        # Probabilities: out of [0, 1], rows not summing to 1 (logits), one-hot rows not one-hot.
        (
            lambda: metrics.classification_metrics([0, 1], [[0.5, 0.5], [1.5, -0.5]], "binary"),
            "probs row 1",
        ),
        (
            lambda: metrics.classification_metrics([0, 1], [[0.5, 0.5], [2.0, 3.0]], "binary"),
            "not a probability vector",
        ),
        (
            lambda: metrics.classification_metrics(
                [[1, 0], [0.5, 0.5]], [[0.5, 0.5], [0.5, 0.5]], "binary"
            ),
            "y_true row 1",
        ),
        (
            lambda: metrics.classification_metrics(
                [0, 1], [[0.5, 0.5], [0.5, 0.5]], "binary", threshold=float("nan")
            ),
            "threshold",
        ),
    ],
)
def test_every_public_metric_names_the_bad_row(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_valid_inputs_still_accepted():
    assert metrics.quadratic_weighted_kappa(np.array([0.0, 1.0, 4.0]), [0, 1, 4]) == 1.0
    assert metrics.collapse_fraction(np.array([2, 2, 3])) == pytest.approx(2 / 3)
    # float32 softmax rows (sum off by ~1e-7) are accepted.
    p = np.array([[0.1, 0.2, 0.3, 0.2, 0.2]], np.float32)
    assert metrics.classification_metrics([2], p, "grade")["n"] == 1
