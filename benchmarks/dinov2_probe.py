"""Frozen-feature linear probe of a DINOv2 backbone on a prepared dataset: the LoRA run's baseline.

Extracts pooled features of the frozen backbone (class token and the mean of the patch tokens,
the classifier's ``token``/``gap`` pooling, same preprocessing and input size as training: the
prepared split resized by `pipeline.make_dataset`, ImageNet normalisation) for the ``train`` and
``validation`` splits, fits a multinomial logistic regression on train (standardised features,
balanced class weights, C chosen by patient-free 3-fold CV on train only), and prints the
project's metrics on validation (`metrics.classification_metrics`: QWK, accuracy, referable
AUROC, sensitivity/specificity at p(referable) >= 0.5, ECE). `--random` uses the same network
with random weights (the "is it the weights?" control). It also grades by the expected grade
at QWK-tuned cut-offs (`regression.optimize_cutoffs`) tuned on 5-fold out-of-fold predictions
of *train* (`qwk_cutoffs_train_oof`; validation tunes nothing), and `--save` keeps the
validation probabilities for `benchmarks/grade_decision.py` (the calibration-half decision that
`eyegazer train` stores).

    python benchmarks/dinov2_probe.py --backbone /tmp/dinov2-s --data-dir /tmp/h4tfds \
        --dataset eyepacs2015 --config 256 --cache /tmp/h4probe

Features are cached under ``--cache`` (outside the repository: they are derived from real
photos; never commit them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def features(args, split: str, model) -> tuple[np.ndarray, np.ndarray]:
    """``(features [n, 2 * hidden] float32, labels [n])`` of `split`, cached as .npz."""
    from eyegazer_keras.data import datasets as data
    from eyegazer_keras.data import pipeline

    tag = "random" if args.random else "pretrained"
    path = os.path.join(args.cache, f"{args.dataset}-{args.config}-{split}-{tag}-{args.size}.npz")
    if os.path.exists(path):
        cached = np.load(path)
        return cached["x"], cached["y"]
    ds = pipeline.make_dataset(
        data.load_split(args.dataset, split, args.data_dir, args.config),
        image_size=args.size,
        batch_size=32,
        cache=False,
    )
    xs, ys = [], []
    start, n = time.perf_counter(), 0
    for images, labels, *_ in ds:
        xs.append(np.asarray(model(images, training=False), "float32"))
        ys.append(np.asarray(labels))
        n += len(ys[-1])
    seconds = time.perf_counter() - start
    print(f"{split}: {n} photos, {seconds:.0f} s ({n / seconds:.1f} img/s)", flush=True)
    x, y = np.concatenate(xs), np.concatenate(ys)
    y = y.argmax(-1) if y.ndim == 2 else y
    os.makedirs(args.cache, exist_ok=True)
    np.savez(path, x=x, y=y)
    return x, y


def feature_model(args):
    """Pixels 0..255 ``[B, S, S, 3]`` -> concat(class token, mean patch token) ``[B, 2 * hidden]``."""
    import keras

    from eyegazer_keras.models import dinov2_backbone, vit_backbone

    backbone, _, norm = vit_backbone.load_backbone(args.backbone, None, args.size, None)
    if args.random:
        config = backbone.get_config()
        backbone = type(backbone).from_config(config)
    scale, offset = vit_backbone.resolve_normalization(None, norm)
    prefix = dinov2_backbone.num_prefix_tokens(backbone)
    scale = keras.ops.convert_to_tensor(np.asarray(scale, "float32"))
    offset = keras.ops.convert_to_tensor(np.asarray(offset, "float32"))

    def run(images, training=False):
        tokens = backbone({"images": images * scale + offset}, training=training)
        mean = keras.ops.mean(tokens[:, prefix:, :], axis=1)
        return keras.ops.concatenate([tokens[:, 0, :], mean], axis=-1)

    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--dataset", default="eyepacs2015")
    parser.add_argument("--config", default="256")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--cache", default="/tmp/dinov2-probe")
    parser.add_argument("--random", action="store_true", help="random weights, same network")
    parser.add_argument("--output", default=None, help="write the metrics as JSON here")
    parser.add_argument("--c", type=float, default=None, help="fixed C (skips the CV grid)")
    parser.add_argument("--save", default=None, help="write validation y, probs as .npz here")
    args = parser.parse_args(argv)

    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from eyegazer_keras.evaluation import metrics, regression

    start = time.perf_counter()
    model = feature_model(args)
    x_train, y_train = features(args, "train", model)
    x_val, y_val = features(args, "validation", model)
    probe = GridSearchCV(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced")),
        {"logisticregression__C": [args.c] if args.c else [1e-3, 3e-3, 1e-2, 3e-2, 0.1]},
        scoring="neg_log_loss",
        cv=3,
        refit=True,
    )
    if args.c:  # no grid: fit once on all of train
        probe = probe.estimator.set_params(logisticregression__C=args.c)
        probe.best_params_ = {"logisticregression__C": args.c}
    probe.fit(x_train, y_train)
    probs = probe.predict_proba(x_val)
    full = np.zeros((len(probs), 5), "float64")
    full[:, probe.classes_] = probs
    m = metrics.classification_metrics(y_val, full, "grade", majority_class=0)
    ref = m["referable"]
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    oof = cross_val_predict(probe, x_train, y_train, cv=folds, method="predict_proba")
    cut = regression.optimize_cutoffs(y_train, regression.expected_grade(oof))
    decision = regression.grade_decision(y_val, full, cut)
    if args.save:
        np.savez(args.save, y=y_val, probs=full)
    result = {
        "backbone": args.backbone,
        "random_weights": args.random,
        "C": probe.best_params_["logisticregression__C"],
        "n_train": int(len(y_train)),
        "n_validation": int(len(y_val)),
        "qwk": m["qwk"],
        "accuracy": m["accuracy"],
        "qwk_cutoffs_train_oof": decision["qwk_cutoffs"],
        "accuracy_cutoffs_train_oof": decision["accuracy_cutoffs"],
        "cutoffs_train_oof": list(cut),
        "referable_auroc": ref["auroc"],
        "referable_sensitivity@0.5": ref["sensitivity"],
        "referable_specificity@0.5": ref["specificity"],
        "ece": m["calibration"]["ece"],
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
