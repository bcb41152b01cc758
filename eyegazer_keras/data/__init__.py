"""Stored -> model input: the prepared TFDS splits and mixtures, the tf.data pipeline,
augmentation and preview grids.

* `datasets`: which builders exist, `prepare`, `load_split`, labels, the build's quality-gate
  verdicts, mixtures, `preview_grid` (its public names are re-exported here, so
  ``from eyegazer_keras import data; data.load_split(...)`` reads as before);
* `pipeline`: `make_dataset`, the batched `float32 [B, S, S, 3]` input of a model;
* `augment`: the training augmentations (flips, rotation, colour), TF ops.

Floor 1 (above `fundus` and `configs`, below training, evaluation and serving).
"""

from eyegazer_keras.data.datasets import (
    DATASETS,
    GATE_FEATURES,
    MANUAL_DOWNLOADS,
    MIXTURE_SEED,
    DataNotPreparedError,
    builder_class,
    default_data_dir,
    get_builder,
    has_labels,
    load_split,
    mixture_weights,
    parse_mixture,
    prepare,
    prepared_builder,
    preprocessing_spec,
    preview_grid,
    refused_at_build,
    source_size,
    split_gate,
    split_labels,
    stored_pixels,
)

__all__ = [
    "DATASETS",
    "GATE_FEATURES",
    "MANUAL_DOWNLOADS",
    "MIXTURE_SEED",
    "DataNotPreparedError",
    "builder_class",
    "default_data_dir",
    "get_builder",
    "has_labels",
    "load_split",
    "mixture_weights",
    "parse_mixture",
    "prepare",
    "prepared_builder",
    "preprocessing_spec",
    "preview_grid",
    "refused_at_build",
    "source_size",
    "split_gate",
    "split_labels",
    "stored_pixels",
]
