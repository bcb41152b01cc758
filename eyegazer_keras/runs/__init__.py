"""The run folder and its workflows: train, evaluate, export, search.

* `folder`: what a run folder stores (`RunData`, `config.json`, the best adapter), rebuilding
  its model (`load_run`, `build_model`), `evaluate_run`;
* `export`: `export_run`, the SavedModel and model card of a run (the public names of both are
  re-exported here, so ``from eyegazer_keras import runs; runs.load_run(...)`` reads as before);
* `train`: `run_training`, the `eyegazer train` workflow that writes the folder;
* `evaluation`: a split's metrics file and what evaluation adds to it (calibration, TTA,
  explanations, the model-card sections);
* `search`: `run_search`, the AutoKeras ImageRegressor workflow.

Floor 3: above training, evaluation and serving, below the CLI.
"""

from eyegazer_keras.runs.export import export_run
from eyegazer_keras.runs.folder import (
    BEST_ADAPTER,
    PRETRAINED_DIR,
    RUN_DATA,
    RunData,
    RunError,
    build_model,
    evaluate_run,
    find_backbone,
    load_run,
    predict_split,
    split_dataset,
)

__all__ = [
    "BEST_ADAPTER",
    "PRETRAINED_DIR",
    "RUN_DATA",
    "RunData",
    "RunError",
    "build_model",
    "evaluate_run",
    "export_run",
    "find_backbone",
    "load_run",
    "predict_split",
    "split_dataset",
]
