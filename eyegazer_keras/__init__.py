"""eyegazer-keras: diabetic-retinopathy grading with Keras. Not a medical device.

The public API, what a Keras user imports (``__all__``); everything else is reached through
the submodules listed here. Names load on first use, so ``import eyegazer_keras`` stays light
(no TensorFlow until a name needs it).

* the model: `FundusImageClassifier` (a keras-hub ``ImageClassifier`` with LoRA),
  `FundusImageClassifierPreprocessor`, `FundusImageConverter`, `build_vit_classifier`,
  parameter counts and the adapter file (`save_adapter`, `load_adapter`);
* the photo -> model input recipe: `fundus` (decode, quality gate, crop, Ben Graham),
  `PreprocessingSpec`;
* data: `prepare`, `get_builder`, `load_split`, `split_labels`, `preprocessing_spec`,
  `preview_grid` (`data`), `make_dataset` (`pipeline`);
* runs: `get_config` (`configs`), `run_training`, `load_run`, `evaluate_run`, `export_run`,
  `run_search`;
* results and serving: `metrics`, `export` (`export_saved_model`), `predict`
  (`load_exported`, `predict_paths`), `explain`, `TemperatureScaling`, `import_peft`,
  `export_peft`.

Example:

```python
import eyegazer_keras as eg

print(eg.GRADE_NAMES)  # ('no_dr', 'mild', 'moderate', 'severe', 'proliferative')
spec = eg.PreprocessingSpec(stored_size=64)
converter = eg.FundusImageConverter(image_size=32, spec=spec)
```
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

NOT_A_MEDICAL_DEVICE = (
    "Research software. Not a medical device: not cleared or approved for diagnosis, "
    "screening or treatment decisions."
)
GRADE_NAMES = ("no_dr", "mild", "moderate", "severe", "proliferative")

_MODULES = {  # public name -> module, below this package
    "configs": "configs",
    "data": "data",
    "explain": "evaluation.explain",
    "export": "serving.export",
    "fundus": "fundus",
    "metrics": "evaluation.metrics",
    "pipeline": "data.pipeline",
    "predict": "serving.predict",
    "regression": "evaluation.regression",
}
_NAMES = {
    # the model
    "FundusImageClassifier": "models.fundus_image_classifier",
    "FundusImageClassifierPreprocessor": "models.fundus_image_classifier_preprocessor",
    "FundusImageConverter": "models.fundus_image_converter",
    "build_vit_classifier": "models.vit_lora",
    "count_parameters": "models.vit_lora",
    "format_trainable_parameters": "models.vit_lora",
    "lora_parameter_count": "models.vit_lora",
    "save_adapter": "models.vit_lora",
    "load_adapter": "models.vit_lora",
    "TemperatureScaling": "models.wrappers",
    # photo -> model input
    "PreprocessingSpec": "fundus",
    # data
    "prepare": "data.datasets",
    "get_builder": "data.datasets",
    "load_split": "data.datasets",
    "split_labels": "data.datasets",
    "preprocessing_spec": "data.datasets",
    "preview_grid": "data.datasets",
    "make_dataset": "data.pipeline",
    # runs
    "get_config": "configs.settings",
    "run_training": "runs.train",
    "build_model": "runs.folder",
    "load_run": "runs.folder",
    "evaluate_run": "runs.folder",
    "export_run": "runs.export",
    "run_search": "runs.search",
    # results and serving
    "export_saved_model": "serving.export",
    "load_exported": "serving.predict",
    "predict_paths": "serving.predict",
    "import_peft": "interop.peft",
    "export_peft": "interop.peft",
}

__all__ = sorted(
    ["GRADE_NAMES", "NOT_A_MEDICAL_DEVICE", "__version__", *_MODULES, *_NAMES],
    key=str.lower,
)


def __getattr__(name: str):
    """Imports a public name (or submodule) on first use."""
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{_MODULES[name]}")
    if name in _NAMES:
        value = getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
