"""`eyegazer export` of a run folder: the SavedModel and its model card.

Reads only the run folder (`folder.RunData`, `config.json`, the adapter, metrics,
`calibration.json`), so a run copied without its dataset exports.
"""

from __future__ import annotations

import json
import os

import keras

from eyegazer_keras.configs import settings as configs_lib
from eyegazer_keras.data import datasets as data
from eyegazer_keras.data import pipeline
from eyegazer_keras.evaluation import explain
from eyegazer_keras.runs import evaluation
from eyegazer_keras.runs.folder import (
    RunData,
    _read_config,
    load_run,
    split_args,
    split_dataset,
)
from eyegazer_keras.serving import export, model_card
from eyegazer_keras.training.runtime import xla_fusion

__all__ = ["export_run"]


def export_run(
    workdir: str,
    output: str,
    model: keras.Model | None = None,
    tta: str | None = None,
    precision: str = "float32",
) -> str:
    """`eyegazer export`: SavedModel (bytes + tensor endpoints) and model card from a run.

    Reads only the run folder (`config.json`, `dataset.json`, the adapter, metrics,
    `calibration.json`): a run copied to another machine without its dataset exports. The
    calibration (temperature and operating threshold, fitted at the end of `train`) is applied
    inside the export; `tta` averages flips inside it; the `serving_explain` signature returns
    `explain.default_method` maps.

    Args:
        workdir: str. The run directory.
        output: str. SavedModel directory to write (see `export.export_saved_model`).
        model: keras.Model or None. The trained model, to skip rebuilding it. Defaults to None.
        tta: str or None. "none", "flip" or "flip4". Defaults to the config's `tta`.
        precision: str. "float32", "bfloat16" or "auto" (bf16 on a CPU with bf16 units):
            the backbone's compute precision in the export (`serving.precision`). Defaults to
            "float32".

    Returns:
        The SavedModel directory, as a string.

    Raises:
        RunError: not a finished run (see `load_run`).
    """
    workdir = os.path.abspath(os.path.expanduser(workdir))
    if model is None:
        config, model = load_run(workdir)
    else:
        config = _read_config(workdir)
    run_data = RunData.of_run(workdir, config)
    calibration = evaluation.run_calibration(workdir, None, None, run_data.task, fit=False)
    tta = tta or getattr(config, "tta", None) or "none"
    if tta != "none" and calibration is not None:
        calibration = evaluation.tta_calibration(
            workdir, calibration, run_data.task, tta, _tta_validation_outputs(config, model, tta)
        )
    served_calibration = None if calibration and calibration.get("not_carried") else calibration
    # The spec the model's preprocessor carries (the run's, from dataset.json at build time).
    spec = getattr(model, "spec", None) or run_data.spec()
    return str(
        export.export_saved_model(
            model,
            output,
            calibration=served_calibration,
            tta=tta,
            explain_method=explain.default_method(model),
            task=run_data.task,
            image_size=getattr(model, "image_size", config.image_size),
            preprocessing=spec,  # the whole spec: crop ("none" for HF), normalisation
            class_names=run_data.class_names,
            metadata={"config": configs_lib.to_dict(config)},
            model_card=_run_card(workdir, config, run_data, calibration, tta),
            precision=precision,
        )
    )


def _tta_validation_outputs(config, model, tta: str):
    """`() -> (y_true [N], TTA probabilities [N, k])` of the run's validation split."""

    def outputs():
        y_true = pipeline.transform_labels_np(
            data.split_labels(*split_args(config, "validation")), config.task
        )
        with xla_fusion(config):
            return y_true, evaluation.tta_probabilities(
                model, split_dataset(config, "validation"), tta
            )

    return outputs


def _run_card(workdir: str, config, run_data: RunData, calibration: dict | None, tta: str) -> dict:
    """The model card of a run: data, config, validation metrics, calibration and TTA."""
    validation = {}
    metrics_path = os.path.join(workdir, "metrics_validation.json")
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            validation = json.load(f)
    card = model_card.training_run_card(
        model_name=f"keras-hub ViT + LoRA (rank {config.lora_rank}) {run_data.task} classifier",
        run_data=run_data.to_dict(),
        training_config=configs_lib.to_dict(config),
        validation_metrics=validation,
    )
    card.update(evaluation.card_sections(validation, calibration, tta))
    return card
