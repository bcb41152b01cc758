"""An exported model on an external folder of graded photos, through its bytes endpoint.

Reads a folder in Kaggle's EyePACS layout (``trainLabels.csv`` + ``train/<image>.jpeg``), leaves
out every patient that also appears in the ``--exclude`` label CSVs (the training set's patients:
both eyes share the id prefix), sends each remaining photo's **file bytes** to the SavedModel's
``serving_default`` (EXIF, quality gate, crop, resize and normalisation all inside the graph, as
for any client) and prints, on the photos the gate grades: QWK of the argmax
(``predicted_class``) and of the exported grade decision (``predicted_grade``: the expected
grade at the metadata's cut-offs), accuracy of both, referable AUROC, sensitivity and
specificity at the exported operating threshold (the metadata's ``referable_threshold``), ECE;
plus how many photos the gate refused, by reason. ``--labels`` takes another labels CSV in the
same format (e.g. the held-out validation split's photos only); ``--save`` keeps the graded
photos' grades and probabilities as .npz (for ``benchmarks/grade_decision.py``).

    python benchmarks/external_check.py --model runs/dinov2-lora/export \
        --data ../shared/realdata/eyepacs-raw \
        --exclude ../shared/realdata/eyepacs-enhanced-256/trainLabels.csv

Real photos are read from the path given and never copied.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import pathlib
import sys
import time

import numpy as np


def patients(labels: pathlib.Path) -> set[str]:
    """Patient ids (the part before ``_left``/``_right``) of a Kaggle labels CSV."""
    with open(labels, newline="") as f:
        return {row["image"].rsplit("_", 1)[0] for row in csv.DictReader(f)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="SavedModel directory (eyegazer export)")
    parser.add_argument("--data", required=True, help="folder with trainLabels.csv and train/")
    parser.add_argument("--exclude", nargs="*", default=[], help="labels CSVs of seen patients")
    parser.add_argument("--labels", default=None, help="labels CSV (default DATA/trainLabels.csv)")
    parser.add_argument("--save", default=None, help="write y, probabilities as .npz here")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--output", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from eyegazer_keras.evaluation import metrics

    data = pathlib.Path(args.data)
    seen = (
        set().union(*(patients(pathlib.Path(p)) for p in args.exclude)) if args.exclude else set()
    )
    rows = []
    labels = pathlib.Path(args.labels) if args.labels else data / "trainLabels.csv"
    with open(labels, newline="") as f:
        for number, row in enumerate(csv.DictReader(f), start=2):
            if row["image"].rsplit("_", 1)[0] in seen:
                continue
            path = data / "train" / f"{row['image']}.jpeg"
            if not path.exists():
                raise SystemExit(f"{labels} row {number}: {path} is missing")
            rows.append((path, int(row["level"])))
    loaded = tf.saved_model.load(args.model)
    meta = json.loads(loaded.signatures["metadata"]()["metadata_json"].numpy())
    serve = loaded.signatures["serving_default"]
    probs, grades, decided, reasons = [], [], [], collections.Counter()
    start = time.perf_counter()
    for i in range(0, len(rows), args.batch):
        chunk = rows[i : i + args.batch]
        out = serve(image_bytes=tf.constant([p.read_bytes() for p, _ in chunk]))
        for j, (_, grade) in enumerate(chunk):
            if bool(out["gradable"][j]):
                probs.append(out["probabilities"][j].numpy())
                grades.append(grade)
                if "predicted_grade" in out:  # exports before the grade decision lack it
                    decided.append(int(out["predicted_grade"][j]))
            else:
                reasons[out["ungradable_reason"][j].numpy().decode()] += 1
    seconds = time.perf_counter() - start
    probs, grades = np.asarray(probs, "float64"), np.asarray(grades)
    probs = probs / probs.sum(axis=1, keepdims=True)  # float32 rounding
    threshold = float(meta["referable_threshold"])
    m = metrics.classification_metrics(
        grades, probs, "grade", referable_threshold=threshold, majority_class=0
    )
    decision = None
    if decided:
        decided = np.asarray(decided)
        decision = {
            "cutoffs": meta.get("cutoffs"),
            "qwk": metrics.quadratic_weighted_kappa(grades, decided),
            "accuracy": float((decided == grades).mean()),
        }
    if args.save:
        np.savez(args.save, y=grades, probs=probs)
    result = {
        "model": args.model,
        "data": str(data),
        "photos": len(rows),
        "patients_excluded": len(seen),
        "graded": int(len(grades)),
        "refused": dict(reasons),
        "grades": np.bincount(grades, minlength=5).tolist(),
        "qwk": m["qwk"],
        "accuracy": m["accuracy"],
        "predicted_grade": decision,
        "referable_auroc": m["referable"]["auroc"],
        "referable_threshold": threshold,
        "referable_sensitivity": m["referable"]["sensitivity"],
        "referable_specificity": m["referable"]["specificity"],
        "ece": m["calibration"]["ece"],
        "img_per_s": round(len(rows) / seconds, 2),
    }
    print(json.dumps(result))
    if args.output:
        pathlib.Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
