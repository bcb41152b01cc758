"""The quality gate's figures on a split: imageability, grades of gradable photos, agreement.

Screening trials report *imageability* (the share of photos graded; the IDx-DR pivotal trial:
96.1 %) next to sensitivity and specificity. Every metrics file carries a `quality_gate` section
built here from the gate's verdicts stored with the examples (`gradable`, `ungradable_reason`,
`quality_score`, written by the builders from the original photos):

* `imageability`, counts and reasons (photos refused at build time are counted from the build
  report when the build skipped them);
* `metrics_gradable`: the grade metrics on the gradable photos only, next to the file's
  figures on all photos;
* `agreement`: with human image-quality labels stored as `quality` (EyeQ: good, usable,
  reject; `eyegazer prepare eyepacs2015 --quality-labels`), the table label x (graded,
  refused), Reject recall, Good false-refusal rate and the AUROC of `1 - quality_score`.
"""

from __future__ import annotations

import collections

import numpy as np
from sklearn.metrics import roc_auc_score

from eyegazer_keras.evaluation import metrics

NOT_RECORDED = (
    "not recorded: the dataset stores no quality-gate verdict (synthetic_fundus stores none; "
    "aptos2019 >= 1.2.0, eyepacs2015 and fundus_folder >= 1.1.0 do)"
)
QUALITY_LEVELS = ("good", "usable", "reject", "unknown")


def gate_section(y_true, probs, task: str, gate: dict | None, refused_at_build: int = 0) -> dict:
    """The `quality_gate` section of a metrics file.

    Args:
        y_true: int array `[N]`. Class ids, in the split's order.
        probs: float array `[N, C]`. The model's probabilities, same order.
        task: str. `grade` or `binary`.
        gate: dict of arrays `[N]` from `data.split_gate` (`gradable` bool, `ungradable_reason`
            str, `quality_score` float32, optionally `quality` int: index of `QUALITY_LEVELS`),
            or None / empty when the dataset stores no verdict.
        refused_at_build: int. Photos of this split's source the build refused and did not
            store (`keep_ungradable` off). Defaults to 0.

    Returns:
        Dict (JSON-safe): `photos`, `gradable`, `ungradable`, `imageability`,
        `ungradable_by_reason`, `metrics_gradable`, and `agreement` when human labels exist;
        `{"status": NOT_RECORDED}` without a verdict.
    """
    if not gate or "gradable" not in gate:
        return {"status": NOT_RECORDED}
    gradable = np.asarray(gate["gradable"], bool)
    reasons = [str(r) for r, ok in zip(gate["ungradable_reason"], gradable, strict=True) if not ok]
    section = {
        "photos": int(gradable.size),
        "gradable": int(gradable.sum()),
        "ungradable": int((~gradable).sum()),
        "imageability": float(gradable.mean()) if gradable.size else None,
        "ungradable_by_reason": dict(sorted(collections.Counter(reasons).items())),
    }
    if refused_at_build:
        total = gradable.size + refused_at_build
        section["refused_at_build_not_stored"] = int(refused_at_build)
        section["imageability_with_build_refusals"] = float(gradable.sum() / total)
    y_true, probs = np.asarray(y_true), np.asarray(probs)
    if gradable.all():
        section["metrics_gradable"] = "same as the figures on all photos: every photo is gradable"
    elif gradable.any():
        section["metrics_gradable"] = metrics.classification_metrics(
            y_true[gradable], probs[gradable], task
        )
    else:
        section["metrics_gradable"] = "none: no photo of the split is gradable"
    if "quality" in gate:
        section["agreement"] = agreement(gate["quality"], gradable, gate["quality_score"])
    return section


def agreement(quality, gradable, quality_score) -> dict:
    """The gate against human quality labels (EyeQ levels); unlabelled photos are left out.

    Args:
        quality: int array `[N]`: 0 good, 1 usable, 2 reject, 3 unknown.
        gradable: bool array `[N]`. The gate's verdict.
        quality_score: float array `[N]`. The gate's score (1 good).

    Returns:
        Dict: `labelled`, `table` (`{level: {"graded", "refused"}}`), `reject_recall`,
        `good_false_refusal`, `auroc_reject_vs_rest` (None where a figure cannot be computed,
        e.g. no Reject photo), or `{"labelled": 0}`.
    """
    quality = np.asarray(quality, int)
    gradable = np.asarray(gradable, bool)
    score = np.asarray(quality_score, np.float64)
    known = quality < 3
    if not known.any():
        return {"labelled": 0}
    quality, gradable, score = quality[known], gradable[known], score[known]
    table = {
        QUALITY_LEVELS[level]: {
            "graded": int((gradable & (quality == level)).sum()),
            "refused": int((~gradable & (quality == level)).sum()),
        }
        for level in range(3)
    }
    reject, good = quality == 2, quality == 0
    both = 0 < reject.sum() < reject.size
    return {
        "labelled": int(known.sum()),
        "table": table,
        "reject_recall": float((~gradable[reject]).mean()) if reject.any() else None,
        "good_false_refusal": float((~gradable[good]).mean()) if good.any() else None,
        "auroc_reject_vs_rest": float(roc_auc_score(reject, 1.0 - score)) if both else None,
    }
