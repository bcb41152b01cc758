"""`eyegazer search`: AutoKeras ImageRegressor search -> cut-offs tuned on QWK -> report -> export.

config -> numpy uint8 arrays (`pipeline.load_numpy`) -> `models.regressor.build_regressor` search in
`workdir/search/` -> continuous grades on validation -> `regression.optimize_cutoffs` (starting from
plain rounding) -> `report.write_regression_report` -> `export.export_saved_model` with the
cut-offs baked in.

Resumable: the search state (keras-tuner oracle + trials) lives in `workdir/search/regressor/`;
re-running the same command after an interruption keeps the finished trials and continues.
`overwrite=True` starts afresh.

Files in `workdir`: `config.json`, `metrics_validation.json`, `confusion_matrix_validation.png`,
`predictions_validation.png`, `model.keras` (best model, float32 input), `search_summary.json`,
`export/` (SavedModel + model card), `search/` (AutoKeras / keras-tuner state).

Example:

```python
from eyegazer_keras import configs, data
from eyegazer_keras.runs import search

data.prepare("synthetic_fundus", data_dir="tfds", config="tiny")
config = configs.apply_overrides(configs.get_config("search-demo:runlocal"), ["data_dir=tfds"])
summary = search.run_search(config, "runs/search-demo-runlocal", progress=print)
print(summary["metrics"]["qwk_tuned"])
```
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from eyegazer_keras import files
from eyegazer_keras.configs import settings as configs
from eyegazer_keras.data import datasets as data
from eyegazer_keras.data import pipeline

logger = logging.getLogger(__name__)

SEARCH_DIR = "search"
PROJECT_NAME = "regressor"
EXPORT_DIR = "export"
MODEL_FILE = "model.keras"
SUMMARY_FILE = "search_summary.json"
PREDICT_BATCH = 256


def _progress_callback(tuner, max_trials: int, epochs: int, objective: str, emit):
    """A Keras callback that reports "trial n of N" and the best score so far.

    keras-tuner deep-copies callbacks for every trial; `__deepcopy__` keeps the shared tuner.
    """
    import keras

    class SearchProgress(keras.callbacks.Callback):
        def __deepcopy__(self, memo):
            return SearchProgress()

        def _state(self):
            oracle = tuner.oracle
            done = [t for t in oracle.trials.values() if t.status == "COMPLETED"]
            best = oracle.get_best_trials(1)
            score = best[0].score if best and best[0].score is not None else None
            best_text = "n/a" if score is None else f"{score:.4f}"
            return len(oracle.trials), len(done), best_text

        def on_train_begin(self, logs=None):
            n, done, best = self._state()
            emit(
                f"trial {n} of {max_trials} started ({done} finished, "
                f"best {objective} so far: {best})"
            )

        def on_epoch_end(self, epoch, logs=None):
            n, _, best = self._state()
            value = (logs or {}).get(objective)
            now = "n/a" if value is None else f"{value:.4f}"
            emit(
                f"trial {n} of {max_trials}, epoch {epoch + 1}/{epochs}: {objective}={now} "
                f"(best so far: {best})"
            )

    return SearchProgress()


def _predict(model, images, batch_size: int = PREDICT_BATCH):
    """Continuous grades `[N]` for uint8 images, converting one batch at a time to float32."""
    import numpy as np

    out = [
        np.asarray(model.predict_on_batch(images[i : i + batch_size].astype("float32")))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out).reshape(-1).astype("float64")


def search_strategy(name: str):
    """The `tf.distribute` strategy keras-tuner builds and fits each trial in, or None.

    `default`/`auto` (one device), `onedevice`, `mirrored` and `tpu` work: keras-tuner enters the
    strategy's scope for every trial and Keras `fit` distributes the batches (`batch_size` is the
    global batch). `multiworker` is refused: AutoKeras trains with Keras 3 `Model.fit`, which
    fails under MultiWorkerMirroredStrategy at the pinned versions (keras-team/keras#20585);
    `eyegazer train` has its own multi-worker loop, the search does not.

    Args:
        name: str. A `distribute.STRATEGIES` name.
    """
    from eyegazer_keras.training import distribute

    if name == "multiworker":
        raise ValueError(
            "strategy=multiworker is not supported by `eyegazer search`: AutoKeras trains with "
            "Keras 3 Model.fit, which fails under MultiWorkerMirroredStrategy "
            "(keras-team/keras#20585); use strategy=mirrored on one host"
        )
    import tensorflow as tf

    if name in ("default", "auto") and len(tf.config.list_physical_devices("GPU")) < 2:
        return None
    return distribute.get_strategy(name)


def fit_search(config, search_dir, x_train, y_train, x_val, y_val, emit=None):
    """Builds the AutoKeras search in `search_dir` and runs (or resumes) it on uint8 arrays.

    Args:
        config: `configs.SearchConfig`.
        search_dir: str or path. Search state folder (`workdir/search`).
        x_train: uint8 array `[N, S, S, 3]`. Training images; never copied to float.
        y_train: int array `[N]`. Training grades 0..4.
        x_val: uint8 array `[M, S, S, 3]`. Validation images (the search objective).
        y_val: int array `[M]`. Validation grades.
        emit: callable taking one line of progress text. Defaults to `logger.info`.

    Returns:
        The fitted `ak.AutoModel`.
    """
    import keras

    from eyegazer_keras.models import regressor

    emit = emit or logger.info
    strategy = search_strategy(config.strategy)
    if strategy is not None:
        emit(
            f"search trials run under {type(strategy).__name__} ({strategy.num_replicas_in_sync} replicas)"
        )
    keras.utils.set_random_seed(config.seed)
    auto_model = regressor.build_regressor(
        config, str(search_dir), PROJECT_NAME, distribution_strategy=strategy
    )
    tuner = auto_model.tuner
    finished = sum(t.status == "COMPLETED" for t in tuner.oracle.trials.values())
    if finished and not config.overwrite:
        emit(f"resuming search in {search_dir}: {finished} of {config.max_trials} trials done")
    callbacks = [
        # An EarlyStopping of our own (the one AutoKeras would insert, same settings) also stops
        # AutoKeras from re-training the best model from scratch after the search: the best
        # trial's checkpoint is the result.
        keras.callbacks.EarlyStopping(monitor=config.objective, patience=10, min_delta=1e-4),
        _progress_callback(tuner, config.max_trials, config.epochs, config.objective, emit),
    ]
    auto_model.fit(
        x_train,
        y_train.astype("float32"),
        batch_size=config.batch_size,
        epochs=config.epochs,
        validation_data=(x_val, y_val.astype("float32")),
        callbacks=callbacks,
        verbose=0,
    )
    return auto_model


def run_search(config, workdir, progress: Callable[[str], None] | None = None) -> dict:
    """Runs (or resumes) the AutoKeras grade-regression search and evaluates/exports the best model.

    Args:
        config: `configs.SearchConfig`.
        workdir: str or path. Run folder; the search state goes to `workdir/search/`.
        progress: callable taking one line of text (e.g. `print`). Lines are also logged at
            INFO. Defaults to None.

    Returns:
        Summary dict: `workdir`, `trials` (finished), `max_trials`, `best_trial_id`,
        `best_score`, `objective`, `cutoffs`, `metrics` (rmse, mae, qwk_rounded, qwk_tuned, ...),
        `num_train`, `num_validation`, `train_bytes_uint8`, `wall_time_s`, `export_dir`.

    Raises:
        TypeError: `config` is not a `configs.SearchConfig`.
        ValueError: `strategy=multiworker` (AutoKeras cannot train under it).
        data.DataNotPreparedError: the dataset is not prepared (message names the command).
    """
    start = time.monotonic()

    def emit(line: str) -> None:
        logger.info(line)
        if progress is not None:
            progress(line)

    builder, workdir = _start_run(config, workdir)
    emit(f"loading {config.dataset} train/validation as uint8 at {config.image_size} px")
    x_train, y_train = _load_uint8(config, "train")
    x_val, y_val = _load_uint8(config, "validation")
    emit(
        f"train {x_train.shape} {x_train.dtype} ({x_train.nbytes / 2**20:.1f} MiB), "
        f"validation {x_val.shape} {x_val.dtype} ({x_val.nbytes / 2**20:.1f} MiB)"
    )
    auto_model = fit_search(config, workdir / SEARCH_DIR, x_train, y_train, x_val, y_val, emit)
    best_trial, done = _best_trial(auto_model, config, emit)
    model, cutoffs, result = _evaluate_best(auto_model, config, workdir, x_val, y_val, emit)
    export_dir = None
    if config.export:
        export_dir = _export(model, config, builder, cutoffs, result, workdir, done)
        emit(f"exported SavedModel to {export_dir}")
    summary = {
        "workdir": str(workdir),
        "trials": done,
        "max_trials": config.max_trials,
        "best_trial_id": best_trial.trial_id,
        "best_score": float(best_trial.score),
        "objective": config.objective,
        "cutoffs": [float(c) for c in cutoffs],
        "metrics": result,
        "num_train": int(len(x_train)),
        "num_validation": int(len(x_val)),
        "train_bytes_uint8": int(x_train.nbytes),
        "validation_bytes_uint8": int(x_val.nbytes),
        "wall_time_s": round(time.monotonic() - start, 1),
        "export_dir": export_dir,
    }
    files.write_json_atomic(workdir / SUMMARY_FILE, summary)
    return summary


def _start_run(config, workdir) -> tuple:
    """Checks the config, finds the prepared builder, writes `config.json`: `(builder, workdir)`."""
    if not isinstance(config, configs.SearchConfig):
        raise TypeError(
            f"run_search needs a SearchConfig, got {type(config).__name__}; "
            "use a search config such as `--config search-demo`"
        )
    # Fail fast, before any heavy import or data loading.
    if config.strategy == "multiworker":
        search_strategy(config.strategy)  # raises the one-line reason before any work
    builder = data.prepared_builder(config.dataset, config.data_dir, config.dataset_config)
    # config.json holds the absolute data dir: the run works from any working directory.
    config.data_dir = os.path.abspath(data.default_data_dir(config.data_dir))
    workdir = Path(workdir).expanduser().absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    files.write_json_atomic(workdir / "config.json", configs.to_dict(config))
    return builder, workdir


def _load_uint8(config, split: str) -> tuple:
    """`(uint8 [N, S, S, 3], int grades [N])` of a split (`pipeline.load_numpy`, the config's limit)."""
    limit = config.max_train_examples if split == "train" else config.max_eval_examples
    x, y, _ = pipeline.load_numpy(
        config.dataset, split, config.image_size, config.data_dir, config.dataset_config, limit
    )
    return x, y


def _best_trial(auto_model, config, emit) -> tuple:
    """`(best keras-tuner trial, finished trials)`, and a line saying so."""
    tuner = auto_model.tuner
    best_trial = tuner.oracle.get_best_trials(1)[0]
    done = sum(t.status == "COMPLETED" for t in tuner.oracle.trials.values())
    emit(
        f"search finished: {done} of {config.max_trials} trials, best trial "
        f"{best_trial.trial_id} {config.objective}={best_trial.score:.4f}"
    )
    return best_trial, done


def _evaluate_best(auto_model, config, workdir: Path, x_val, y_val, emit) -> tuple:
    """Saves the best model (float32 input), tunes cut-offs on validation QWK, writes the report.

    Returns:
        `(model, cutoffs, metrics)`.
    """
    from eyegazer_keras.evaluation import regression, report
    from eyegazer_keras.models import regressor

    model = regressor.float_input_model(auto_model.export_model(), config.image_size)
    model.save(workdir / MODEL_FILE)
    y_pred = _predict(model, x_val)
    cutoffs = regression.optimize_cutoffs(y_val, y_pred)
    result = report.write_regression_report(workdir, y_val, y_pred, cutoffs, split="validation")
    emit(
        f"validation: rmse={result['rmse']:.4f} mae={result['mae']:.4f} "
        f"qwk_rounded={result['qwk_rounded']:.4f} qwk_tuned={result['qwk_tuned']:.4f} "
        f"cut-offs={[round(c, 3) for c in cutoffs]}"
    )
    return model, cutoffs, result


def _export(model, config, builder, cutoffs, result, workdir: Path, trials: int) -> str | None:
    """Exports the best model through `eyegazer_keras.serving.export` (cut-offs baked in, model card)."""
    try:
        from eyegazer_keras.serving import export
    except ImportError:  # pragma: no cover - the export module ships with the package
        logger.warning(
            "eyegazer_keras.serving.export is not available; skipping the SavedModel export"
        )
        return None
    card = {
        "model_name": f"eyegazer AutoKeras grade regressor ({config.name})",
        "data": {
            "dataset": config.dataset,
            "dataset_config": config.dataset_config,
            "image_size": config.image_size,
        },
        "training": {
            "method": "AutoKeras 3 AutoModel search: ImageInput -> ImageBlock -> RegressionHead "
            "(MSE on the grade), cut-offs tuned on validation QWK",
            "tuner": config.tuner,
            "max_trials": config.max_trials,
            "trials_finished": trials,
            "epochs_per_trial": config.epochs,
            "block_type": config.block_type or "searched",
            "objective": config.objective,
        },
        "validation_metrics": {
            key: result[key]
            for key in ("rmse", "mae", "qwk_rounded", "qwk_tuned", "cutoffs")
            if key in result
        },
        "cutoffs_note": "Cut-offs were tuned on the validation split, so qwk_tuned on that "
        "split is optimistic; judge them on a held-out split.",
    }
    return export.export_saved_model(
        model,
        os.fspath(workdir / EXPORT_DIR),
        task="regression",
        image_size=config.image_size,
        preprocessing=data.preprocessing_spec(builder),
        cutoffs=cutoffs,
        metadata={"config": configs.to_dict(config), "run": str(workdir)},
        model_card=card,
        explain_method=_explain_method(model),
    )


def _explain_method(model) -> str | None:
    """Grad-CAM for the `serving_explain` signature when the searched CNN allows it."""
    from eyegazer_keras.evaluation import explain

    return explain.supported_method(model)


def main(argv: list[str] | None = None) -> int:
    """`python -m eyegazer_keras.runs.search --config NAME [--workdir W] [--set k=v ...]`.

    The `eyegazer search` verb (`eyegazer_keras/cli/commands/training.py`) does the same; this entry point exists so that tests
    can run (and kill) a search in a subprocess.

    Args:
        argv: command-line arguments without the program name. Defaults to `sys.argv[1:]`.

    Returns:
        Exit code.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m eyegazer_keras.runs.search")
    parser.add_argument("--config", default="search-demo")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    # force: importing the `runs` package (keras-hub, TF) may already have given the root
    # logger a WARNING handler (absl's "Failed to load jax profiler"), which would hide INFO.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)
    config = configs.apply_overrides(configs.get_config(args.config), args.sets)
    workdir = args.workdir or os.path.join("runs", config.name)
    run_search(config, workdir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
