"""Calibration: ECE, Brier, temperature scaling, the sensitivity-targeted threshold."""

import json

import numpy as np
import pytest

from eyegazer_keras.evaluation import calibrate, metrics, regression, report


def test_ece_and_brier_by_hand():
    # Two rows at confidence 0.9 (one right, one wrong): bin (0.8667, 0.9333] has accuracy 0.5,
    # confidence 0.9 -> gap 0.4; one row at 0.6, right: gap 0.4. ECE = (2*0.4 + 1*0.4) / 3 = 0.4.
    y = np.array([0, 1, 0])
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4]])
    assert metrics.expected_calibration_error(y, p) == pytest.approx(0.4)
    # Brier: (0.01+0.01) + (0.81+0.81) + (0.16+0.16) = 1.96 -> / 3
    assert metrics.brier_score(y, p) == pytest.approx(1.96 / 3)
    table = metrics.reliability_bins(y, p)
    assert len(table["edges"]) == 16 and sum(table["count"]) == 3
    assert table["accuracy"][13] == 0.5 and table["confidence"][13] == pytest.approx(0.9)
    # A perfectly calibrated, perfectly confident model: ECE 0, Brier 0.
    assert metrics.expected_calibration_error([0, 1], np.eye(2)) == 0.0
    assert metrics.brier_score([0, 1], np.eye(2)) == 0.0
    with pytest.raises(ValueError, match="probs row 1"):
        metrics.expected_calibration_error([0, 1], [[0.5, 0.5], [0.9, 0.9]])


def test_temperature_is_a_softmax_of_scaled_logits():
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    t = 2.5
    expected = np.exp(logits / t) / np.exp(logits / t).sum(1, keepdims=True)
    np.testing.assert_allclose(calibrate.apply_temperature(p, t), expected, atol=1e-12)
    np.testing.assert_allclose(calibrate.apply_temperature(p, 1.0), p, atol=1e-12)
    with pytest.raises(ValueError, match="temperature"):
        calibrate.apply_temperature(p, 0.0)


def _overconfident_keras_model_probs(n=600, seed=0):
    """A real Keras softmax classifier made over-confident by scaling its logit layer by 6."""
    import keras

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, n)
    x = rng.normal(0, 1, (n, 8)).astype("float32")
    x[np.arange(n), y] += 1.2  # informative but noisy features
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(5, use_bias=False), keras.layers.Softmax()]
    )
    w = np.zeros((8, 5), "float32")
    w[:5, :5] = 6.0 * np.eye(5)  # the right direction, 6x too steep: over-confident
    model.layers[0].set_weights([w])
    return y, np.asarray(model.predict(x, verbose=0), dtype=np.float64)


def test_temperature_scaling_reduces_ece_of_an_overconfident_model():
    y, p = _overconfident_keras_model_probs()
    cal = calibrate.fit_calibration(y, p, "grade")
    assert cal["temperature"] > 2.0  # softens an over-confident model
    before = cal["report_half"]["before"]
    after = cal["report_half"]["after"]
    assert before["ece"] > 0.1
    assert after["ece"] < 0.5 * before["ece"]
    assert after["nll"] < before["nll"]
    assert cal["fit_rows"] + cal["report_rows"] == y.size
    assert "half of validation" in cal["method"]
    json.dumps(cal, allow_nan=False)
    # Temperature scaling keeps every argmax: accuracy does not move.
    q = calibrate.apply_temperature(p, cal["temperature"])
    np.testing.assert_array_equal(q.argmax(1), p.argmax(1))


def test_calibration_halves_are_disjoint_stratified_and_deterministic():
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 4])
    fit, rep = calibrate.calibration_halves(y)
    assert set(fit) | set(rep) == set(range(y.size)) and not set(fit) & set(rep)
    for c in (0, 1, 2):
        assert abs((y[fit] == c).sum() - (y[rep] == c).sum()) <= 1
    f2, r2 = calibrate.calibration_halves(y)
    np.testing.assert_array_equal(fit, f2)
    np.testing.assert_array_equal(rep, r2)


def test_threshold_for_sensitivity_by_hand():
    # Positive scores 0.9 0.8 0.7 0.3 (4 positives): sensitivity 0.75 needs t <= 0.7, 1.0 needs
    # t <= 0.3. Target 0.9 -> 0.3 (highest threshold reaching it); negatives 0.6 0.2 0.1 0.1 0.1
    # 0.1: at 0.3 only 0.6 is called positive -> specificity 5/6.
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.3, 0.6, 0.2, 0.1, 0.1, 0.1, 0.1])
    out = calibrate.threshold_for_sensitivity(y, s, 0.9)
    assert out["threshold"] == pytest.approx(0.3)
    assert out["sensitivity"] == 1.0 and out["specificity"] == pytest.approx(5 / 6)
    out = calibrate.threshold_for_sensitivity(y, s, 0.75)
    assert out["threshold"] == pytest.approx(0.7)
    assert (out["sensitivity"], out["specificity"]) == (0.75, 1.0)
    # Random scores: the chosen threshold always reaches the target; a higher one never does.
    rng = np.random.default_rng(1)
    for _ in range(5):
        y = rng.integers(0, 2, 200)
        s = rng.uniform(0, 1, 200) + 0.3 * y
        t = calibrate.threshold_for_sensitivity(y, s, 0.9)["threshold"]
        assert metrics.sensitivity_specificity(y, s, t)[0] >= 0.9
        above = s[s > t]
        if above.size:
            assert metrics.sensitivity_specificity(y, s, above.min())[0] < 0.9
    with pytest.raises(ValueError, match="positives and negatives"):
        calibrate.threshold_for_sensitivity([0, 0], [0.1, 0.2])


def test_metrics_files_report_calibration_and_draw_the_reliability_diagram(tmp_path):
    y, p = _overconfident_keras_model_probs(200)
    cal = calibrate.fit_calibration(y, p, "grade")
    m = report.write_report(tmp_path, y, p, "grade", calibration=cal)
    assert m["calibration"]["n_bins"] == 15
    assert {"ece", "brier", "nll", "referable_ece", "referable_brier"} <= set(m["calibration"])
    assert m["calibrated"]["calibration"]["ece"] < m["calibration"]["ece"]
    assert m["temperature_scaling"]["temperature"] == cal["temperature"]
    assert m["calibrated"]["referable"]["threshold"] == pytest.approx(cal["threshold"])
    png = tmp_path / "reliability_validation.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    written = json.loads((tmp_path / "metrics_validation.json").read_text())
    assert written["calibration"]["ece"] == pytest.approx(m["calibration"]["ece"])
    # Binary task: the threshold is on p(DR).
    yb = (y >= 2).astype(int)
    pb = np.stack([p[:, :2].sum(1), p[:, 2:].sum(1)], 1)
    calb = calibrate.fit_calibration(yb, pb, "binary")
    assert calb["threshold_output"] == "p_dr"
    assert calb["fit_half"]["operating_point"]["sensitivity"] >= 0.9


def test_grade_cutoffs_are_tuned_on_the_fitting_half_and_beat_a_collapsed_argmax(tmp_path):
    """A ranking-right model whose argmax is nearly always grade 0 (as on imbalanced EyePACS):
    the tuned cut-offs on its expected grade recover QWK on the half that did not tune them."""
    rng = np.random.default_rng(0)
    n = 400
    y = rng.choice(5, n, p=[0.7, 0.08, 0.14, 0.05, 0.03])
    severity = y + rng.normal(0, 0.8, n)  # ordered, noisy
    k = np.arange(5)
    prior = np.log([0.9, 0.04, 0.03, 0.02, 0.01])  # a strong pull towards grade 0
    logits = -((k[None] - severity[:, None]) ** 2) / 8 + prior
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert (p.argmax(1) == 0).mean() > 0.9  # the argmax collapses
    cal = calibrate.fit_calibration(y, p, "grade")
    cut = cal["grade_cutoffs"]
    assert len(cut) == 4 and list(cut) == sorted(cut)
    fit_rows, report_rows = calibrate.calibration_halves(y)
    calibrated = calibrate.apply_temperature(p, cal["temperature"])
    expected = regression.optimize_cutoffs(
        y[fit_rows], regression.expected_grade(calibrated[fit_rows])
    )
    np.testing.assert_allclose(cut, expected)  # tuned on the fitting half only
    decision = cal["report_half"]["grade_decision"]
    assert decision["qwk_cutoffs"] > decision["qwk_argmax"] + 0.2
    assert sum(map(sum, decision["confusion_matrix_cutoffs"])) == report_rows.size
    # The metrics file reports the same decision on the whole split, next to the argmax.
    m = report.write_report(tmp_path, y, p, "grade", calibration=cal)
    assert m["calibrated"]["grade_decision"]["cutoffs"] == list(cut)
    assert m["calibrated"]["grade_decision"]["qwk_argmax"] == pytest.approx(m["calibrated"]["qwk"])
    # Binary calibration has no grade decision.
    pb = np.stack([p[:, :2].sum(1), p[:, 2:].sum(1)], 1)
    assert "grade_cutoffs" not in calibrate.fit_calibration((y >= 2).astype(int), pb, "binary")


def test_model_card_carries_the_grade_decision():
    from eyegazer_keras.runs import evaluation

    y, p = _overconfident_keras_model_probs(200)
    cal = calibrate.fit_calibration(y, p, "grade")
    section = evaluation.card_sections({}, cal, "none")["grade_decision"]
    assert section["cutoffs"] == cal["grade_cutoffs"]
    assert (
        section["qwk_on_report_half"]["cutoffs"]
        == (cal["report_half"]["grade_decision"]["qwk_cutoffs"])
    )
    pb = np.stack([p[:, :2].sum(1), p[:, 2:].sum(1)], 1)
    binary = calibrate.fit_calibration((y >= 2).astype(int), pb, "binary")
    assert "grade_decision" not in evaluation.card_sections({}, binary, "none")
