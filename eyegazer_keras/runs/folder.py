"""A run folder: what it stores, rebuilding its model, evaluating it (`runs.export`: exporting it).

`eyegazer train` (`train.run_training`) writes the folder; this module reads it back. The folder
is self-contained: `config.json` (absolute paths) and `dataset.json` (`RunData`: dataset
version, splits, task, class names, majority class, preprocessing) hold what `export_run`
needs, so a run copied without its dataset exports; `evaluate_run` works from any working
directory (it reads the prepared dataset from the stored absolute `data_dir`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import keras
import numpy as np
import tensorflow as tf

from eyegazer_keras import GRADE_NAMES, fundus
from eyegazer_keras.configs import settings as configs_lib
from eyegazer_keras.data import datasets as data
from eyegazer_keras.data import pipeline
from eyegazer_keras.evaluation import metrics
from eyegazer_keras.models import run_model, vit_lora
from eyegazer_keras.models.fundus_image_classifier import FundusImageClassifier
from eyegazer_keras.runs import evaluation
from eyegazer_keras.training.runtime import resolve_auto, xla_fusion
from eyegazer_keras.training.trainer import Trainer

logger = logging.getLogger(__name__)

__all__ = [
    "BEST_ADAPTER",
    "PRETRAINED_DIR",
    "RUN_DATA",
    "RunData",
    "RunError",
    "build_model",
    "evaluate_run",
    "find_backbone",
    "load_run",
    "predict_split",
    "split_dataset",
]

# The files that rebuild the model belong to the models layer (`models.run_model`).
BEST_ADAPTER = run_model.BEST_ADAPTER
PRETRAINED_DIR = run_model.PRETRAINED_DIR
RUN_DATA = run_model.RUN_DATA


class RunError(RuntimeError):
    """A run cannot start or continue; the message says why and how to fix it."""


# --------------------------------------------------------------------------------------------
# What a run knows about its data, resolved once
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class RunData:
    """The dataset facts of a run, read once from the prepared builder and kept in the run.

    Written to `<workdir>/dataset.json`, so export needs no dataset and evaluation no train
    split.

    Attributes:
        dataset: str. TFDS dataset name (`synthetic_fundus`, `aptos2019`, ...).
        builder_config: str. The builder config name (e.g. `"256"`, `"tiny"`).
        version: str. The prepared dataset version.
        splits: dict. Examples per split, e.g. `{"train": 80, "validation": 24, "test": 16}`.
        data_dir: str. Absolute TFDS data dir the run read.
        task: str. `"grade"` (5 classes, APTOS 0..4) or `"binary"` (no_dr vs dr).
        class_names: list of str. Name per class id.
        majority_class: int. Most frequent training class (the majority baseline, collapse).
        preprocessing: dict. `fundus.PreprocessingSpec.to_dict()`: `stored_size` (stored side,
            px), `ben_graham`, `crop`, `normalization` (+ `mean`/`std`); see `spec()`.
        train_targets: int array `[N_train]` or None. Training class ids (not stored).
        val_targets: int array `[N_val]` or None. Validation class ids (not stored).
    """

    dataset: str
    builder_config: str | None
    version: str
    splits: dict
    data_dir: str
    task: str
    class_names: list
    majority_class: int
    preprocessing: dict
    train_targets: np.ndarray | None = dataclasses.field(default=None, repr=False)
    val_targets: np.ndarray | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def from_config(cls, config: configs_lib.TrainConfig) -> RunData:
        """Reads the builder and the train/validation labels once.

        Raises:
            data.DataNotPreparedError: the dataset is not prepared in `config.data_dir`.
            RunError: the validation split has no labels.
        """
        builder = data.prepared_builder(config.dataset, config.data_dir, config.dataset_config)
        train = pipeline.transform_labels_np(
            data.split_labels(*split_args(config, "train")), config.task
        )
        val_labels = data.split_labels(*split_args(config, "validation"))
        if not data.has_labels(val_labels):
            raise RunError("the validation split has no labels; cannot select checkpoints")
        task = config.task
        return cls(
            dataset=config.dataset,
            builder_config=builder.builder_config.name if builder.builder_config else None,
            version=str(builder.version),
            splits={k: v.num_examples for k, v in builder.info.splits.items()},
            data_dir=os.path.abspath(data.default_data_dir(config.data_dir)),
            task=task,
            class_names=list(metrics.BINARY_NAMES if task == "binary" else GRADE_NAMES),
            majority_class=int(np.bincount(train, minlength=config.num_classes).argmax()),
            preprocessing=data.preprocessing_spec(builder).to_dict(),
            train_targets=train,
            val_targets=pipeline.transform_labels_np(val_labels, config.task),
        )

    def spec(self) -> fundus.PreprocessingSpec:
        """The photo -> stored image -> model input recipe of the run."""
        return fundus.PreprocessingSpec.from_dict(self.preprocessing)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        del out["train_targets"], out["val_targets"]
        return out

    @classmethod
    def from_dict(cls, stored: dict) -> RunData:
        names = {f.name for f in dataclasses.fields(cls)} - {"train_targets", "val_targets"}
        return cls(**{k: v for k, v in stored.items() if k in names})

    @classmethod
    def of_run(cls, workdir: str, config: configs_lib.TrainConfig) -> RunData:
        """The run's `dataset.json`; for runs from before it existed, read from the dataset."""
        path = os.path.join(workdir, RUN_DATA)
        if os.path.exists(path):
            with open(path) as f:
                return cls.from_dict(json.load(f))
        return cls.from_config(config)


def split_args(config, split: str) -> tuple:
    """(dataset, split, data_dir, dataset_config, max_examples) for `data.load_split` & co."""
    limit = config.max_train_examples if split == "train" else config.max_eval_examples
    return config.dataset, split, config.data_dir, config.dataset_config, limit


def split_gate(config, split: str) -> dict:
    """The split's stored quality-gate verdicts and the build's refusals (`data.split_gate`)."""
    gate = data.split_gate(*split_args(config, split))
    if gate:
        gate["refused_at_build"] = data.refused_at_build(
            config.dataset, config.data_dir, config.dataset_config
        )
    return gate


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
def build_model(
    config: configs_lib.TrainConfig,
    backbone: str | None = None,
    spec: fundus.PreprocessingSpec | None = None,
) -> FundusImageClassifier:
    """Builds the configured keras-hub ViT(+LoRA) classifier in the current strategy scope.

    Args:
        config: TrainConfig. Image size, LoRA rank/alpha/targets/layout, pooling, head
            dropout, mixed precision and `backbone_config` are read from it.
        backbone: str or None. Overrides `config.backbone`: a keras-hub preset name, a local
            preset dir, `hf://` id / local Hugging Face dir, or "config" (random ViT from
            `backbone_config`). Defaults to None (`config.backbone`).
        spec: `fundus.PreprocessingSpec` or None. The run's preprocessing (`RunData.spec`),
            carried by the model's preprocessor. Defaults to None.

    Returns:
        A `FundusImageClassifier` taking `float32 [B, image_size, image_size, 3]` RGB in 0..255
        and returning float32 softmax probabilities `[B, num_classes]` (5 grades or 2); its
        preprocessor takes the stored images of the run's dataset.

    Raises:
        RunError: a preset / hf:// backbone that is not on disk cannot be loaded (no network,
            unknown name); the message says how to pass a local directory.
    """
    source = backbone or config.backbone
    try:
        return vit_lora.build_from_config(config, source, run_model.dtype_policy(config), spec=spec)
    except (OSError, ValueError) as err:  # requests' ConnectionError is an OSError
        if source in (None, "config") or os.path.isdir(os.path.expanduser(str(source))):
            raise
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise RunError(
            f"backbone '{source}' could not be loaded ({type(err).__name__}: {reason}); "
            "download the preset on a machine with network access and pass its local directory "
            "with --set backbone=/path/to/preset"
        ) from err


def find_backbone(model: keras.Model):
    """The keras-hub `ViTBackbone` (or `DINOV2Backbone`) inside a classifier."""
    import keras_hub

    for layer in model.layers:
        if isinstance(layer, keras_hub.models.ViTBackbone | keras_hub.models.DINOV2Backbone):
            return layer
    raise RunError("no keras_hub ViTBackbone or DINOV2Backbone inside the model")


# --------------------------------------------------------------------------------------------
# Metrics of one split
# --------------------------------------------------------------------------------------------
def split_dataset(config: configs_lib.TrainConfig, split: str) -> tf.data.Dataset:
    """A labeled split as batched `(float32 [B, S, S, 3], label, weight)`, in order.

    Raises:
        RunError: the split has no labels (Kaggle test images are unlabeled).
    """
    labels = data.split_labels(*split_args(config, split))
    if not data.has_labels(labels):
        raise RunError(
            f"split '{split}' of {config.dataset} has no labels (Kaggle test images are "
            "unlabeled); evaluate on 'validation' or 'train'"
        )
    return pipeline.make_dataset(
        data.load_split(*split_args(config, split)),
        task=config.task,
        image_size=config.image_size,
        batch_size=config.batch_size,
        cache=False,
    )


def predict_split(
    trainer: Trainer, config: configs_lib.TrainConfig, split: str, progress_bar: bool | None = False
) -> np.ndarray:
    """Probabilities `float32 [N, num_classes]` for every example of a labeled split, in order.

    Raises:
        RunError: the split has no labels.
    """
    ds = split_dataset(config, split)
    return trainer.predict(ds, progress_bar=progress_bar, desc=f"evaluate {split}")


# --------------------------------------------------------------------------------------------
# A finished run: reload, evaluate, export
# --------------------------------------------------------------------------------------------
def _read_config(workdir: str) -> configs_lib.TrainConfig:
    try:
        return run_model.read_run_config(workdir)
    except FileNotFoundError as err:
        raise RunError(str(err)) from None


def load_run(workdir: str, strategy=None):
    """Rebuilds a finished run's model (best weights) and config from its workdir.

    Needs only the run folder (and, for a keras-hub preset / hf:// backbone, that backbone);
    not the dataset.

    Args:
        workdir: str. An `eyegazer train` run directory (any working directory; copied runs
            work too).
        strategy: tf.distribute.Strategy or None. Scope to build in. Defaults to the current.

    Returns:
        `(config, model)`: the run's TrainConfig (`"auto"` resolved for this machine) and the
        `FundusImageClassifier` with the best epoch's adapter, `float32 [B, S, S, 3]` 0..255 in,
        softmax out; its preprocessor carries the run's `PreprocessingSpec` (from
        `dataset.json`; None for a run from before it existed).

    Raises:
        RunError: `config.json` or the best adapter is missing (not a run, or no finished epoch),
            or the backbone cannot be loaded.
    """
    workdir = os.path.abspath(os.path.expanduser(workdir))
    config = _read_config(workdir)
    best = os.path.join(workdir, BEST_ADAPTER)
    if not os.path.exists(best):
        raise RunError(f"{best} not found: the run has not finished an epoch yet")
    resolve_auto(config)
    has_data = os.path.exists(os.path.join(workdir, RUN_DATA))
    spec = RunData.of_run(workdir, config).spec() if has_data else None
    model = run_model.load_run_model(workdir, config, spec, strategy, build=build_model)
    return config, model


def evaluate_run(
    workdir: str,
    split: str = "validation",
    explain_maps: bool = False,
    tta: str | None = None,
    progress_bar: bool | None = None,
    dataset: str | None = None,
    dataset_config: str | None = None,
    data_dir: str | None = None,
) -> dict:
    """`eyegazer evaluate`: recomputes metrics and plots of a run for a labeled split.

    Keeps what training recorded for the validation split (`collapse_events`) and applies the
    run's `calibration.json`.

    Args:
        workdir: str. The run directory (from any working directory).
        split: str. A labeled split of the run's dataset. Defaults to "validation".
        explain_maps: bool. Also write `explanations_<split>.json` (pointing game and pixel
            AUROC against the lesion masks, with baselines; `explain_scores.explanations_report`) and
            `explanations_<split>.png`. Defaults to False.
        tta: str or None. "none", "flip" or "flip4": adds a `tta` section (QWK, AUROC, ECE
            without and with test-time augmentation). Defaults to the config's `tta`.
        progress_bar: bool or None. tqdm bar on stderr while predicting; None: only when stderr
            is a terminal. Defaults to None.
        dataset: str or None. External validation: score the run on another prepared dataset
            (e.g. trained on `aptos2019`, scored on `eyepacs2015`); see `external_config`.
            Defaults to the run's own dataset.
        dataset_config: str or None. That dataset's builder config. Defaults to the run's.
        data_dir: str or None. Where that dataset is prepared. Defaults to the run's.

    Returns:
        The metrics dict written to `metrics_<split>.json` (see
        `evaluation.write_split_metrics`), plus `explanations` with `explain_maps`. With `dataset`: `metrics_<dataset>_<split>.json`,
        naming both datasets (`trained_on`, `evaluated_on`).

    Raises:
        RunError: not a finished run, or the split has no labels.
        data.DataNotPreparedError: the run's dataset is not prepared in its `data_dir`.
    """
    workdir = os.path.abspath(os.path.expanduser(workdir))
    config, model = load_run(workdir)
    run_data = RunData.of_run(workdir, config)
    tta = tta or getattr(config, "tta", None) or "none"
    name, extras = split, evaluation.recorded_extras(workdir, split)
    if dataset is not None:
        config, extras = external_config(config, run_data, dataset, dataset_config, data_dir, split)
        name = f"{dataset}_{split}"
    with xla_fusion(config):  # predict as during training
        y_true, probs, tta_section = _predict_labeled(model, config, split, tta, progress_bar)
        extras.update(tta_section)
        calibration = evaluation.run_calibration(workdir, None, None, run_data.task, fit=False)
        result = evaluation.write_split_metrics(
            workdir,
            name,
            y_true,
            probs,
            run_data,
            config,
            extras=extras,
            calibration=calibration,
            gate=split_gate(config, split),
        )
        if explain_maps:
            split_data = data.load_split(*split_args(config, split))
            result["explanations"] = evaluation.explain_split(
                model, split_data, config.image_size, workdir, name, config.name
            )
    return result


def _predict_labeled(model, config, split: str, tta: str, progress_bar) -> tuple:
    """`(y_true [N], probs [N, C], {"tta": comparison} or {})` for a labeled split."""
    y_true = pipeline.transform_labels_np(
        data.split_labels(*split_args(config, split)), config.task
    )
    trainer = Trainer(model, None, tf.distribute.get_strategy(), config.batch_size)
    ds = split_dataset(config, split)
    probs = trainer.predict(ds, progress_bar=progress_bar, desc=f"evaluate {split}")
    if tta == "none":
        return y_true, probs, {}
    tta_probs = evaluation.tta_probabilities(model, ds, tta)
    return (
        y_true,
        probs,
        {"tta": evaluation.tta_comparison(y_true, probs, tta_probs, config.task, tta)},
    )


def external_config(
    config: configs_lib.TrainConfig,
    run_data: RunData,
    dataset: str,
    dataset_config: str | None,
    data_dir: str | None,
    split: str,
) -> tuple[configs_lib.TrainConfig, dict]:
    """The run's config pointed at another dataset, and the metrics keys that say so.

    External validation (a model trained on APTOS 2019 scored on EyePACS 2015) reads the other
    dataset through the run's own input pipeline; its photos must be stored the way the run's
    were (Ben Graham or not; the stored size may differ, every photo is resized to the model
    input). The majority baseline stays the run's training majority class.

    Returns:
        `(config, extras)`: `extras` has `trained_on` and `evaluated_on` (`dataset`, `config`,
        and the split).

    Raises:
        RunError: the other dataset stores Ben Graham photos and the run did not, or vice versa.
        data.DataNotPreparedError: the dataset is not prepared.
    """
    external = dataclasses.replace(
        config,
        dataset=dataset,
        dataset_config=dataset_config or config.dataset_config,
        data_dir=os.path.abspath(os.path.expanduser(data_dir)) if data_dir else config.data_dir,
    )
    builder = data.prepared_builder(external.dataset, external.data_dir, external.dataset_config)
    _, ben_graham = data.stored_pixels(builder)
    if ben_graham != bool(run_data.preprocessing.get("ben_graham", False)):
        raise RunError(
            f"{dataset}/{builder.builder_config.name} stores "
            f"{'Ben Graham' if ben_graham else 'plain'} photos but the run was trained on "
            f"{'Ben Graham' if not ben_graham else 'plain'} ones; prepare {dataset} with the "
            "matching --config"
        )
    extras = {
        "trained_on": {"dataset": run_data.dataset, "config": run_data.builder_config},
        "evaluated_on": {
            "dataset": dataset,
            "config": builder.builder_config.name,
            "split": split,
        },
    }
    return external, extras
