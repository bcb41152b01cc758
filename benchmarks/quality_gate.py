"""The quality gate against human image-quality labels (EyeQ: 0 Good, 1 Usable, 2 Reject).

Reads a folder in Kaggle's EyePACS layout (`train/<image>.jpeg`, or `test/`) and an
`image,quality` CSV (EyeQ's `Label_EyeQ_*.csv` columns; default `DIR/eyeq_quality.csv`), runs
the gate that every SavedModel runs (`fundus.decode_image` -> `fundus.assess_quality`, one
`tf.function`), and prints:

* the table EyeQ label x (graded, refused), the refusal reasons, Reject recall (the share of
  Reject photos refused), Good false-refusal rate, imageability (share graded);
* the AUROC of `1 - quality_score` for Reject vs the rest (Good + Usable).

`--cv K` scores the fitted part honestly: patient-grouped K-fold cross-validation (both eyes of
a patient in one fold) that refits the logistic score on the other folds (plus `--extra`
folders, minus the held-out patients) and picks its threshold there (the `--good-refusal`
quantile of the training folds' Good photos), then applies the hard limits and the refitted
score to the held-out fold. `--fit FILE` fits on everything given and writes the coefficients
module (`eyegazer_keras/fundus/quality_model.py`) with its provenance. Real photos are read from
the path given and never copied.

    python benchmarks/quality_gate.py --data ../shared/realdata/eyepacs-raw
    python benchmarks/quality_gate.py --data ../shared/realdata/eyepacs-raw --cv 5 \
        --extra ../shared/realdata/eyepacs-enhanced-256
    python benchmarks/quality_gate.py --data ../shared/realdata/eyepacs-raw \
        --extra ../shared/realdata/eyepacs-enhanced-256 --fit eyegazer_keras/fundus/quality_model.py
"""

from __future__ import annotations

import argparse
import csv
import datetime
import logging
import os
import pathlib
import subprocess
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import timing  # noqa: E402

LEVELS = ("Good", "Usable", "Reject")
# Logistic regression strength (sklearn's C) and the share of training Good photos the fitted
# threshold may refuse.
DEFAULT_C = 0.03
DEFAULT_GOOD_REFUSAL = 0.03


def read_labelled(folder: pathlib.Path, labels: pathlib.Path | None = None):
    """`[(image id, path, EyeQ level)]` for every CSV row; one-line errors for bad rows."""
    labels = labels or folder / "eyeq_quality.csv"
    rows = []
    with open(labels, newline="") as handle:
        for number, row in enumerate(csv.DictReader(handle), start=2):
            name, level = row.get("image", ""), row.get("quality", "")
            if level not in ("0", "1", "2"):
                raise SystemExit(f"{labels} row {number}: quality {level!r} is not 0, 1 or 2")
            stem = name.removesuffix(".jpeg").removesuffix(".jpg")
            found = [
                folder / part / f"{stem}{ext}"
                for part in ("train", "test")
                for ext in (".jpeg", ".jpg", ".png")
                if (folder / part / f"{stem}{ext}").is_file()
            ]
            if not found:
                raise SystemExit(
                    f"{labels} row {number}: no photo {stem}.jpeg in {folder}/train or test; "
                    "point --data at the Kaggle folder that holds it"
                )
            rows.append((stem, found[0], int(level)))
    return rows


def measure(rows):
    """Runs the serving gate on every photo: `(measures [N, M], score [N], reason [N])`."""
    import tensorflow as tf

    from eyegazer_keras import fundus

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def gate(data):
        return fundus.assess_quality(fundus.decode_image(data))

    measures, scores, reasons = [], [], []
    for _, path, _ in rows:
        out = gate(tf.io.read_file(str(path)))
        measures.append([float(out[name]) for name in fundus.MEASURES])
        scores.append(float(out["quality_score"]))
        reasons.append(out["ungradable_reason"].numpy().decode())
    return np.array(measures), np.array(scores), np.array(reasons)


def _features(measures):
    return np.log(np.abs(measures) + 1e-3)


def fit_score(measures, reject, good, c=DEFAULT_C, good_refusal=DEFAULT_GOOD_REFUSAL):
    """Logistic regression on standardised log measures; threshold on the Good photos' scores.

    Returns `(mu, sigma, weights, intercept, threshold)`: `score = 1 - sigmoid(intercept +
    weights . (log(|m| + 1e-3) - mu) / sigma)`, and the threshold refuses `good_refusal` of the
    photos marked `good`.
    """
    from sklearn.linear_model import LogisticRegression

    finite = np.isfinite(measures).all(axis=1)  # unmeasurable photos are refused anyway
    measures, reject, good = measures[finite], reject[finite], good[finite]
    z = _features(measures)
    mu, sigma = z.mean(0), z.std(0) + 1e-6
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=10000)
    model.fit((z - mu) / sigma, reject.astype(int))
    weights, intercept = model.coef_[0], float(model.intercept_[0])
    score = apply_score(measures, mu, sigma, weights, intercept)
    threshold = float(np.quantile(score[good], good_refusal))
    return mu, sigma, weights, intercept, threshold


def apply_score(measures, mu, sigma, weights, intercept):
    from eyegazer_keras.fundus.quality import SCORE_CLIP

    z = np.clip((_features(measures) - mu) / sigma, -SCORE_CLIP, SCORE_CLIP)
    logit = intercept + z @ weights
    return 1.0 / (1.0 + np.exp(logit))


def hard_refused(reasons):
    """Refused before the fitted score (any reason but `poor_quality`)."""
    return (reasons != "") & (reasons != "poor_quality")


def report(title, levels, refused, score, reasons):
    """Prints the table and the figures; returns them as a dict."""
    from sklearn.metrics import roc_auc_score

    print(f"\n== {title}: {len(levels)} photos")
    print(f"{'EyeQ label':<12}{'photos':>8}{'graded':>8}{'refused':>9}")
    for value, name in enumerate(LEVELS):
        mask = levels == value
        print(f"{name:<12}{mask.sum():>8}{(~refused & mask).sum():>8}{(refused & mask).sum():>9}")
    counts = {str(r): int((reasons == r).sum()) for r in sorted(set(reasons[refused]))}
    print("refused by reason:", counts or "none")
    reject, good = levels == 2, levels == 0
    figures = {
        "reject_recall": float(refused[reject].mean()) if reject.any() else float("nan"),
        "good_false_refusal": float(refused[good].mean()) if good.any() else float("nan"),
        "imageability": float(1.0 - refused.mean()),
        "auroc_reject_vs_rest": (
            float(roc_auc_score(reject, 1.0 - score)) if 0 < reject.sum() < len(levels) else None
        ),
    }
    print(
        f"Reject recall {figures['reject_recall']:.3f} | Good false-refusal "
        f"{figures['good_false_refusal']:.3f} | imageability {figures['imageability']:.3f} | "
        f"AUROC (1 - quality_score, Reject vs rest) {figures['auroc_reject_vs_rest']:.3f}"
    )
    return figures


def _patients(rows):
    return np.array([stem.split("_")[0] for stem, _, _ in rows])


def cross_validate(data, extra, folds, seed, c, good_refusal):
    """Patient-grouped K-fold: fit on the other folds (+ extra), score the held-out fold."""
    rows, measures, _, reasons = data
    levels = np.array([level for *_, level in rows])
    patients = _patients(rows)
    unique = np.unique(patients)
    fold_of = dict(
        zip(unique, np.random.default_rng(seed).permutation(len(unique)) % folds, strict=True)
    )
    fold = np.array([fold_of[p] for p in patients])
    score = np.zeros(len(rows))
    refused = hard_refused(reasons)
    for k in range(folds):
        train, test = fold != k, fold == k
        x, y, good = measures[train], levels[train] == 2, levels[train] == 0
        held_out = set(patients[test])
        for e_rows, e_measures, _, _ in extra:
            keep = np.array([p not in held_out for p in _patients(e_rows)])
            e_levels = np.array([level for *_, level in e_rows])[keep]
            x = np.vstack([x, e_measures[keep]])
            y = np.concatenate([y, e_levels == 2])
            good = np.concatenate([good, np.zeros(keep.sum(), bool)])
        mu, sigma, w, b, threshold = fit_score(x, y, good, c, good_refusal)
        score[test] = apply_score(measures[test], mu, sigma, w, b)
        refused[test] |= score[test] < threshold
    # As the gate does: a photo a hard limit refuses (or an unmeasurable one) scores 0.
    score = np.where(hard_refused(reasons) | ~np.isfinite(score), 0.0, score)
    cv_reasons = np.where(hard_refused(reasons), reasons, np.where(refused, "poor_quality", ""))
    return levels, refused, score, cv_reasons


def write_model(path, mu, sigma, weights, intercept, threshold, provenance):
    from eyegazer_keras import fundus

    lines = [
        '"""The fitted quality score of `fundus.quality_score` (written by benchmarks/quality_gate.py).',
        "",
        *provenance,
        '"""',
        "",
        "# score = 1 - sigmoid(INTERCEPT + sum(w * clip((log(|m| + 1e-3) - mu) / sigma, -5, 5)))",
        "# name: (mu, sigma, w)",
        f"INTERCEPT = {intercept!r}",
        "COEFFICIENTS = {",
        *(
            f"    {name!r}: ({float(m)!r}, {float(s)!r}, {float(w)!r}),"
            for name, m, s, w in zip(fundus.MEASURES, mu, sigma, weights, strict=True)
        ),
        "}",
        "# gradable when quality_score >= THRESHOLD",
        f"THRESHOLD = {threshold!r}",
        "",
    ]
    pathlib.Path(path).write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=pathlib.Path, help="Kaggle EyePACS folder")
    parser.add_argument("--labels", type=pathlib.Path, help="image,quality CSV")
    parser.add_argument("--extra", type=pathlib.Path, nargs="*", default=[], help="more folders")
    parser.add_argument("--cv", type=int, default=0, help="patient-grouped folds (0: off)")
    parser.add_argument("--seeds", type=int, default=1, help="CV repeats with other fold draws")
    parser.add_argument("--fit", type=pathlib.Path, help="write the fitted coefficients here")
    parser.add_argument("--c", type=float, default=DEFAULT_C, help="inverse L2 strength")
    parser.add_argument("--good-refusal", type=float, default=DEFAULT_GOOD_REFUSAL)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    print(f"CPU: {timing.machine()}")

    def load(folder, labels=None):
        rows = read_labelled(folder, labels)
        return (rows, *measure(rows))

    data = load(args.data, args.labels)
    extra = [load(folder) for folder in args.extra]
    rows, measures, score, reasons = data
    levels = np.array([level for *_, level in rows])
    report(f"{args.data} (the shipped gate)", levels, reasons != "", score, reasons)
    for folder, (e_rows, _, e_score, e_reasons) in zip(args.extra, extra, strict=True):
        e_levels = np.array([level for *_, level in e_rows])
        report(f"{folder} (the shipped gate)", e_levels, e_reasons != "", e_score, e_reasons)
    for seed in range(args.seeds if args.cv else 0):
        title = f"{args.data}, held-out folds ({args.cv}-fold by patient, seed {seed})"
        report(title, *cross_validate(data, extra, args.cv, seed, args.c, args.good_refusal))
    if args.fit:
        x = np.vstack([measures] + [e[1] for e in extra])
        all_levels = np.concatenate([levels] + [np.array([r[2] for r in e[0]]) for e in extra])
        good = np.concatenate([levels == 0] + [np.zeros(len(e[0]), bool) for e in extra])
        mu, sigma, w, b, threshold = fit_score(x, all_levels == 2, good, args.c, args.good_refusal)
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        provenance = [
            f"Fitted {datetime.date.today()} on the measures of commit {commit or '?'} by",
            f"`python benchmarks/quality_gate.py --data {args.data} --extra "
            f"{' '.join(map(str, args.extra))} --fit {args.fit}`:",
            "logistic regression (sklearn, class_weight='balanced', "
            f"C={args.c}) of EyeQ Reject vs Good+Usable on {len(x)} real EyePACS-2015 photos",
            "with EyeQ's human labels (H. Fu et al., MICCAI 2019); the threshold refuses "
            f"{args.good_refusal:.0%} of the {good.sum()} Good photos of --data.",
            "Held-out figures (patient-grouped CV): benchmarks/NOTES.md, 'Quality gate'.",
        ]
        write_model(args.fit, mu, sigma, w, b, threshold, provenance)
        print(f"\nwrote {args.fit} (threshold {threshold:.4f})")


if __name__ == "__main__":
    main()
