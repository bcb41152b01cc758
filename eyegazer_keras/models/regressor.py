"""AutoKeras ImageRegressor search for the 0-4 grade, at the pinned versions.

The search space is `ImageInput -> ImageBlock(block_type, normalize, augment) -> RegressionHead`
(an `ak.AutoModel`), trained with mean squared error on the grade as a float. Two things make
autokeras 3.0.0 usable here:

1. `apply_autokeras_shim()`: autokeras 3.0.0 stores data shapes as numpy ints
   (`Graph.set_io_shapes` gets `np.array(x.shape)`), so `RegressionHead.build` calls
   `keras.layers.Dense(np.int64(1))`, which keras >= 3.13 rejects. The shim makes
   `Graph.set_io_shapes` store Python ints.
2. `FrugalTunerMixin`: autokeras adapts the `Normalization` layer with `np.var` on the whole
   training array (a float64 copy, 8x the uint8 bytes) and then calls the layer on the whole
   array (a float32 copy, 4x), and traces the model on the whole array (a graph constant).
   And `model.fit` on numpy arrays copies them into a tensor. The mixin adapts in batches,
   traces on one example and feeds `fit` batch by batch (`ArrayBatches`), so the uint8 arrays
   are the only full-size copy of the data during the search.

The model takes `[batch, S, S, 3]` images with values 0..255; autokeras casts them to float32
inside (`CastToFloat32`) and normalises inside (`Normalization`). `float_input_model` turns
the searched model (uint8 input) into a float32-input twin for export.

Example:

```python
from eyegazer_keras import configs
from eyegazer_keras.models import regressor

config = configs.get_config("search-demo")
auto_model = regressor.build_regressor(config, directory="runs/search-demo/search")
```
"""

from __future__ import annotations

import logging

import keras
import numpy as np

logger = logging.getLogger(__name__)

TUNERS = ("greedy", "bayesian", "random", "hyperband")
BLOCK_TYPES = ("vanilla", "resnet", "xception", "efficient")
_SHIM_FLAG = "_eyegazer_int_shapes"
ADAPT_BATCH_SIZE = 256


def _set_io_shapes_as_ints(self, shapes):
    """`autokeras.graph.Graph.set_io_shapes`, storing tuples of Python ints."""
    import tree

    for node, shape in zip(self.inputs, tree.flatten(shapes[0]), strict=False):
        node.shape = tuple(int(d) for d in shape[1:])
    for node, shape in zip(self.outputs, tree.flatten(shapes[1]), strict=False):
        node.in_blocks[0].shape = tuple(int(d) for d in shape[1:])


def apply_autokeras_shim() -> bool:
    """Makes autokeras 3.0.0 build heads with Python-int shapes (keras >= 3.13). Idempotent.

    Failure fixed: `AutoModel.fit` -> `AutoTuner._prepare_model_build` ->
    `Graph.set_io_shapes(data_utils.dataset_shape(...))` stores `np.array(x.shape)[1:]`, i.e.
    numpy ints, as the head's `shape`; `RegressionHead.build` then calls
    `layers.Dense(self.shape[-1])`, i.e. `Dense(np.int64(1))`, and keras >= 3.13 raises
    `ValueError: Received an invalid value for argument `units`. Expected a strictly positive
    integer`. Every trial fails, keras-tuner carries on, and the search ends with no model.
    Seen with autokeras 3.0.0, keras 3.15.1, TF 2.21.

    Fix: `autokeras.graph.Graph.set_io_shapes` (five lines, the only place the shapes are
    stored) is replaced by the same code with `int(d)` around each dimension. Nothing else
    changes. Remove once autokeras casts the shapes itself.

    Returns:
        True if the shim was applied by this call, False if it was already in place.
    """
    from autokeras import graph

    if getattr(graph.Graph.set_io_shapes, _SHIM_FLAG, False):
        return False
    setattr(_set_io_shapes_as_ints, _SHIM_FLAG, True)
    graph.Graph.set_io_shapes = _set_io_shapes_as_ints
    logger.debug("autokeras shim applied: Graph.set_io_shapes stores Python ints")
    return True


def apply_keras_tuner_json_shim() -> bool:
    """Makes keras-tuner 1.4.8 write its JSON state atomically, so a kill cannot empty it.

    Failure fixed: `keras_tuner.src.utils.save_json` opens `oracle.json` / `trial.json` for
    writing and then writes; a search killed between the two (`kill -9`, an OOM kill, a
    preempted machine) leaves an empty `oracle.json`, and the resumed search dies in
    `Oracle.reload` with `json.decoder.JSONDecodeError: Expecting value: line 1 column 1`
    (seen in tests/runs/test_search.py's resume-after-kill test on a fresh clone, 2026-12-07).

    Fix: the same function writing to `<path>.tmp` then `os.replace` (atomic on one file
    system) for local paths; other paths (gs://) keep keras-tuner's own write. Remove once
    keras-tuner writes atomically. Idempotent.

    Returns:
        True if the shim was applied by this call, False if it was already in place.
    """
    import json
    import os

    from keras_tuner.src import utils as kt_utils

    if getattr(kt_utils.save_json, _SHIM_FLAG, False):
        return False
    original = kt_utils.save_json

    def save_json(path, obj):
        if "://" in str(path):
            return original(path, obj)
        text = json.dumps(obj)
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        return text

    setattr(save_json, _SHIM_FLAG, True)
    kt_utils.save_json = save_json
    return True


def _batches(array: np.ndarray, batch_size: int = ADAPT_BATCH_SIZE):
    """Yields float32 batches of a (uint8) array; only one batch is ever float."""
    for start in range(0, len(array), batch_size):
        yield array[start : start + batch_size].astype("float32")


class FrugalTunerMixin:
    """Overrides two `AutoTuner` steps that copy the whole training array.

    - `adapt`: preprocessing layers right after the input (the `Normalization` of
      `ImageBlock(normalize=True)`) are adapted from float32 batches of `ADAPT_BATCH_SIZE`, and
      following adaptable layers from the previous layer's outputs, batch by batch.
    - `_build_and_fit_model`: as in autokeras 3.0.0, but the output-spec trace runs on one
      example instead of the whole array (which would become a graph constant), and
      `model.fit` gets `ArrayBatches` instead of the arrays (which it would copy into a tensor).
      autokeras's OOM retry with halved batch sizes (`fit_with_adaptive_batch_size`) is not
      kept: set `batch_size` instead.
    """

    @staticmethod
    def adapt(model, dataset):
        """Adapts the model's preprocessing layers in batches (see the class docstring).

        Args:
            model: keras.Model. The trial model.
            dataset: numpy array (or a one-element nest of one) of training images.

        Returns:
            The model.
        """
        import keras
        import tree
        from autokeras import keras_layers

        arrays = tree.flatten(dataset)

        def next_layers(tensor):
            tensor = tree.flatten(tensor)[0]
            found = []
            for layer in model.layers:
                if isinstance(layer, keras.layers.InputLayer):
                    continue
                if tree.flatten(layer.input)[0] is tensor and (
                    isinstance(layer, keras_layers.PreprocessingLayer) or hasattr(layer, "adapt")
                ):
                    found.append(layer)
            return found

        queue = []
        for index, input_node in enumerate(tree.flatten(model.input)):
            array = arrays[index]
            queue += [(layer, [], array) for layer in next_layers(input_node)]
        while queue:
            layer, upstream, array = queue.pop(0)

            def batches(upstream=upstream, array=array):
                for batch in _batches(array):
                    for previous in upstream:
                        batch = previous(batch)
                    yield batch

            layer.adapt(batches())
            queue += [(nxt, upstream + [layer], array) for nxt in next_layers(layer.output)]
        return model

    def _build_and_fit_model(self, trial, *args, **kwargs):
        import tree

        model = self._try_build(trial.hyperparameters)
        pipeline, (kwargs["x"], kwargs["y"]), kwargs["validation_data"] = self._prepare_model_build(
            trial.hyperparameters, **kwargs
        )
        pipeline.save(self._pipeline_path(trial.trial_id))
        one = tree.map_structure(lambda a: a[:1], kwargs["x"])
        keras.src.backend.compute_output_spec(model, one if isinstance(one, list) else [one])
        self.adapt(model, kwargs["x"])
        batch_size = kwargs.pop("batch_size", None) or 32
        seed = (self.oracle.seed or 0) + len(self.oracle.trials)
        train = ArrayBatches(kwargs.pop("x"), kwargs.pop("y"), batch_size, shuffle=True, seed=seed)
        validation = kwargs.pop("validation_data", None)
        if validation is not None:
            validation = ArrayBatches(*validation, batch_size=batch_size)
        return model.fit(train, validation_data=validation, **kwargs)


class ArrayBatches(keras.utils.PyDataset):
    """Batches of in-memory arrays, sliced on demand: `model.fit` never sees the whole array.

    `model.fit(numpy_array)` turns the array into a tensor inside a `tf.data` graph, which
    copies it (measured: about 2x the array's bytes extra). This `PyDataset` hands out one
    batch at a time (gathered in a per-epoch shuffled order when `shuffle`), in the array's
    dtype (uint8 stays uint8).

    Args:
        x: array `[N, ...]`. Inputs.
        y: array `[N, ...]`. Targets.
        batch_size: int. Batch size.
        shuffle: bool. New seeded order every epoch. Defaults to False.
        seed: int. Seed of the order. Defaults to 0.
    """

    def __init__(self, x, y, batch_size: int, shuffle: bool = False, seed: int = 0):
        super().__init__()
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}; pass matching arrays")
        self.x, self.y, self.batch_size = x, y, int(batch_size)
        self.shuffle = shuffle
        self._rng = np.random.default_rng(seed)
        self._order = self._rng.permutation(len(x)) if shuffle else None

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index: int):
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        if self._order is None:
            return self.x[rows], self.y[rows]
        take = np.sort(self._order[rows])
        return self.x[take], self.y[take]

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self._order = self._rng.permutation(len(self.x))


def tuner_class(name: str) -> type:
    """The autokeras tuner class `name`, with `FrugalTunerMixin` in front.

    Args:
        name: str. One of `TUNERS` (greedy, bayesian, random, hyperband).
    """
    from autokeras import auto_model

    if name not in TUNERS:
        raise ValueError(
            f"tuner '{name}' is not one of {', '.join(TUNERS)}; set e.g. `--set tuner=greedy`"
        )
    base = auto_model.TUNER_CLASSES[name]
    return type(f"Frugal{base.__name__}", (FrugalTunerMixin, base), {})


def build_regressor(
    config, directory: str, project_name: str = "regressor", distribution_strategy=None
):
    """Builds the AutoKeras search (`ak.AutoModel`) for the 0-4 grade from a `SearchConfig`.

    Applies `apply_autokeras_shim()` first. The search state lives in
    `directory/project_name`; with `config.overwrite=False` an existing search there is
    reloaded and continued (finished trials are kept).

    Args:
        config: `configs.SearchConfig`. Uses `max_trials`, `tuner`, `objective`, `seed`,
            `overwrite`, `block_type` (None: searched), `normalize`, `augment`.
        directory: str. Folder for the search state.
        project_name: str. Sub-folder name. Defaults to "regressor".
        distribution_strategy: `tf.distribute.Strategy` for keras-tuner to build and fit every
            trial in (its `distribution_strategy` argument). Defaults to None (default strategy).

    Returns:
        An `ak.AutoModel` with `ImageInput -> ImageBlock -> RegressionHead`.
    """
    import autokeras as ak

    apply_autokeras_shim()
    apply_keras_tuner_json_shim()
    if config.block_type is not None and config.block_type not in BLOCK_TYPES:
        raise ValueError(
            f"block_type '{config.block_type}' is not one of {', '.join(BLOCK_TYPES)} or none; "
            "set e.g. `--set block_type=vanilla`"
        )
    image_input = ak.ImageInput(name="image")
    features = ak.ImageBlock(
        block_type=config.block_type, normalize=config.normalize, augment=config.augment
    )(image_input)
    grade = ak.RegressionHead(output_dim=1, name="grade")(features)
    return ak.AutoModel(
        inputs=image_input,
        outputs=grade,
        project_name=project_name,
        directory=directory,
        max_trials=config.max_trials,
        objective=config.objective,
        tuner=tuner_class(config.tuner),
        overwrite=config.overwrite,
        seed=config.seed,
        distribution_strategy=distribution_strategy,
    )


def float_input_model(model, image_size: int):
    """A twin of the searched model that takes float32 `[B, S, S, 3]` (0..255) images.

    The searched model's input has the dtype of the training array (uint8); export feeds
    float32. The twin shares the architecture and copies the weights, so both give the same
    outputs on integral pixel values.

    Args:
        model: keras.Model. The best model (`AutoModel.export_model()`).
        image_size: int. Image side S.

    Returns:
        keras.Model with a float32 input.
    """
    import keras

    inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="image")
    twin = keras.models.clone_model(model, input_tensors=[inputs])
    twin.set_weights(model.get_weights())
    for layer in twin.layers:
        if hasattr(layer, "finalize_state"):  # Normalization: mean/variance from adapt_* weights
            layer.finalize_state()
    return twin
