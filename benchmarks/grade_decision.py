"""Argmax vs the QWK-tuned grade decision, on saved validation probabilities of several models.

Each ``NAME=FILE.npz`` holds ``y`` (int grades ``[n]``) and ``probs`` (float ``[n, 5]``) of one
model on the same held-out photos (``benchmarks/external_check.py --save``,
``benchmarks/dinov2_probe.py --save``). For each model it prints, with the project's code
(``calibrate.fit_calibration``, ``regression.grade_decision``, ``metrics``):

* ``argmax``: QWK and accuracy of the most probable grade, referable AUROC, ECE, on all rows;
* ``report_half``: what ``eyegazer train`` stores: temperature, operating threshold and grade
  cut-offs fitted on the calibration's fitting half, QWK (argmax / cut-offs) and sensitivity /
  specificity measured on the other half;
* ``cross_fitted``: the same fit done on each half and applied to the other, so that every row
  is graded by cut-offs (and a threshold) that did not see it: QWK and accuracy of the
  cut-off grade, sensitivity / specificity at the threshold, on all rows, with a 95 % row
  bootstrap interval (1,000 resamples) for the QWK and the referable AUROC.

    python benchmarks/grade_decision.py A=/tmp/a.npz probe=/tmp/probe.npz --output out.json

Nothing here reads photos; the .npz files stay outside the repository (they derive from real
photos).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def _fit_apply(y, probs, fit_rows, apply_rows):
    """Calibration + cut-offs fitted on ``fit_rows``; grades and positive scores of ``apply_rows``."""
    from eyegazer_keras.evaluation import calibrate, regression

    t = calibrate.fit_temperature(y[fit_rows], probs[fit_rows])
    cal = calibrate.apply_temperature(probs, t)
    ref = cal[:, 2:].sum(1)
    op = calibrate.threshold_for_sensitivity((y[fit_rows] >= 2).astype(int), ref[fit_rows], 0.9)
    cut = regression.optimize_cutoffs(y[fit_rows], regression.expected_grade(cal[fit_rows]))
    grades = regression.apply_cutoffs(regression.expected_grade(cal[apply_rows]), cut)
    return grades, ref[apply_rows], op["threshold"], cut


def _bootstrap(y, grades, score, n=1000, seed=0):
    from sklearn.metrics import roc_auc_score

    from eyegazer_keras.evaluation import metrics

    rng = np.random.default_rng(seed)
    qwks, aurocs = [], []
    for _ in range(n):
        i = rng.integers(0, y.size, y.size)
        ref = y[i] >= 2
        if ref.all() or not ref.any():
            continue
        qwks.append(metrics.quadratic_weighted_kappa(y[i], grades[i]))
        aurocs.append(roc_auc_score(ref, score[i]))
    return {
        "qwk_95": [float(np.percentile(qwks, 2.5)), float(np.percentile(qwks, 97.5))],
        "auroc_95": [float(np.percentile(aurocs, 2.5)), float(np.percentile(aurocs, 97.5))],
    }


def evaluate(y: np.ndarray, probs: np.ndarray) -> dict:
    """The three views above for one model. y: int [n]; probs: float [n, 5]."""
    from eyegazer_keras.evaluation import calibrate, metrics

    probs = probs / probs.sum(axis=1, keepdims=True)
    m = metrics.classification_metrics(y, probs, "grade", majority_class=0)
    cal = calibrate.fit_calibration(y, probs, "grade")
    half = cal["report_half"]
    a, b = calibrate.calibration_halves(y)
    grades = np.zeros_like(y)
    score = np.zeros(y.size)
    above = np.zeros(y.size, bool)
    for fit, apply in ((a, b), (b, a)):
        g, s, threshold, _ = _fit_apply(y, probs, fit, apply)
        grades[apply], score[apply], above[apply] = g, s, s >= threshold
    ref = y >= 2
    return {
        "n": int(y.size),
        "argmax": {
            "qwk": m["qwk"],
            "accuracy": m["accuracy"],
            "referable_auroc": m["referable"]["auroc"],
            "ece": m["calibration"]["ece"],
        },
        "report_half": {
            "rows": cal["report_rows"],
            "grade_cutoffs": cal["grade_cutoffs"],
            "qwk_argmax": half["grade_decision"]["qwk_argmax"],
            "qwk_cutoffs": half["grade_decision"]["qwk_cutoffs"],
            "accuracy_cutoffs": half["grade_decision"]["accuracy_cutoffs"],
            "threshold": cal["threshold"],
            "sensitivity": half["operating_point"]["sensitivity"],
            "specificity": half["operating_point"]["specificity"],
            "ece_after": half["after"]["ece"],
        },
        "cross_fitted": {
            "qwk_cutoffs": metrics.quadratic_weighted_kappa(y, grades),
            "accuracy_cutoffs": float((grades == y).mean()),
            "sensitivity": float(above[ref].mean()),
            "specificity": float((~above[~ref]).mean()),
            "prediction_counts": np.bincount(grades, minlength=5).tolist(),
            **_bootstrap(y, grades, score),
        },
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="NAME=FILE.npz (y, probs)")
    parser.add_argument("--output", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    results = {}
    for item in args.models:
        name, _, path = item.partition("=")
        data = np.load(path)
        results[name] = evaluate(np.asarray(data["y"]).astype(int), np.asarray(data["probs"]))
        print(name, json.dumps(results[name]), flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
