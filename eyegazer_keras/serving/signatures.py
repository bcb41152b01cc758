"""The serving contract of an eyegazer SavedModel: signature names, outputs, and their graphs.

`export.export_saved_model` writes these endpoints; `predict`, `serve` and `app` read them by
the names defined here. Each photo endpoint runs the run's `fundus.PreprocessingSpec` in the
graph, as pure TF ops (TF Serving, which has no Python, runs the same steps):

* `serving_default` (`BYTES_SIGNATURE`): `image_bytes` (`tf.string [batch]`, JPEG or PNG of any
  size) -> `fundus.decode_image` (EXIF orientation applied) -> `fundus.assess_quality` (the
  gate) -> `fundus.photo_to_model_input` -> model -> the named outputs of `OUTPUTS[task]`, with
  `gradable` and `ungradable_reason` per image;
* `serving_images` (`IMAGES_SIGNATURE`): `images` (`uint8 [batch, H, W, 3]`, decoded and
  upright) -> gate -> `fundus.photo_to_model_input` -> model -> the same outputs;
* `metadata` (`METADATA_SIGNATURE`): no input -> `metadata_json` (`tf.string` scalar);
* `serving_explain` (`EXPLAIN_SIGNATURE`, optional): `image_bytes` -> the same outputs plus
  `explanation` (`float32 [B, S, S]` in [0, 1], S = the model input side).

An ungradable photo gets no grade: its float outputs are NaN, its class ids -1, its
`class_name` `"ungradable"` (and `referable` false for regression). The tables here are the
ones `docs/serving.md` shows and `tests/serving/test_export.py` checks.

Example:

```python
import keras
from eyegazer_keras import fundus
from eyegazer_keras.serving import signatures

served = signatures.ServedTask.create(
    "grade", image_size=32, preprocessing=fundus.PreprocessingSpec(stored_size=64)
)
inputs = keras.Input((32, 32, 3))
x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255.0)(inputs))
model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(x))
served.check_model(model)  # a wrong head fails here, not in a server
endpoints = signatures.serving_endpoints(model, served, meta_json="{}")
print(sorted(endpoints))  # ['metadata', 'serving_default', 'serving_images']
```
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import tensorflow as tf

from eyegazer_keras import GRADE_NAMES, fundus
from eyegazer_keras.evaluation import metrics, regression

__all__ = [
    "BYTES_INPUT",
    "BYTES_SIGNATURE",
    "EXPLAIN_SIGNATURE",
    "EXPLANATION_OUTPUT",
    "GATE_OUTPUTS",
    "IMAGES_INPUT",
    "IMAGES_SIGNATURE",
    "METADATA_OUTPUT",
    "METADATA_SIGNATURE",
    "OUTPUTS",
    "TASKS",
    "UNGRADABLE_CLASS_NAME",
    "ServedTask",
    "serving_endpoints",
]

TASKS = ("grade", "binary", "regression")
BYTES_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "serving_images"
METADATA_SIGNATURE = "metadata"
EXPLAIN_SIGNATURE = "serving_explain"
EXPLANATION_OUTPUT = "explanation"
BYTES_INPUT = "image_bytes"
IMAGES_INPUT = "images"
METADATA_OUTPUT = "metadata_json"

# Outputs of `serving_default` and `serving_images`, per task: name -> (dtype, shape, meaning).
OUTPUTS: dict[str, dict[str, tuple[str, str, str]]] = {
    "grade": {
        "probabilities": ("float32", "[B, 5]", "softmax over grades 0..4"),
        "predicted_class": ("int64", "[B]", "argmax grade 0..4"),
        "class_name": ("string", "[B]", "name of predicted_class"),
        "expected_grade": ("float32", "[B]", "sum_k p_k * k"),
        "predicted_grade": (
            "int64",
            "[B]",
            "grade 0..4: expected_grade cut at the metadata's cutoffs (QWK-tuned at calibration; "
            "rounding when the metadata's cutoffs are null)",
        ),
        "referable_probability": ("float32", "[B]", "p_2 + p_3 + p_4 (grade >= 2)"),
    },
    "binary": {
        "probabilities": ("float32", "[B, 2]", "softmax over (no_dr, dr)"),
        "predicted_class": ("int64", "[B]", "argmax 0 = no_dr, 1 = dr"),
        "class_name": ("string", "[B]", "name of predicted_class"),
        "dr_probability": ("float32", "[B]", "p_1"),
    },
    "regression": {
        "grade": ("float32", "[B]", "continuous grade from the model"),
        "predicted_grade": ("int64", "[B]", "grade 0..4 from the baked-in cut-offs"),
        "class_name": ("string", "[B]", "name of predicted_grade"),
        "referable": ("bool", "[B]", "predicted_grade >= 2 (false when ungradable)"),
    },
}
# Outputs of the quality gate, added to every task's outputs (`fundus.assess_quality`).
GATE_OUTPUTS: dict[str, tuple[str, str, str]] = {
    "gradable": ("bool", "[B]", "the photo passed the quality gate"),
    "ungradable_reason": ("string", "[B]", '"" or one of fundus.REASONS'),
    "quality_score": (
        "float32",
        "[B]",
        "image quality in [0, 1] (1 good); gradable needs >= the metadata's quality_threshold",
    ),
}
for _task_outputs in OUTPUTS.values():
    _task_outputs.update(GATE_OUTPUTS)
UNGRADABLE_CLASS_NAME = "ungradable"

_NUM_OUTPUTS = {"grade": len(GRADE_NAMES), "binary": len(metrics.BINARY_NAMES), "regression": 1}


@dataclasses.dataclass(frozen=True)
class ServedTask:
    """What an export serves: the task, its class names and cut-offs, sizes and preprocessing.

    Build it with `create`, which checks the combination.

    Attributes:
        task: str. One of `TASKS`.
        class_names: tuple of str. Name per class id (5 grades, or 2 for binary).
        image_size: int. Model input side in pixels.
        preprocessing: `fundus.PreprocessingSpec`. Photo -> stored image -> model input.
        cutoffs: list of 4 increasing floats or None: on the regression output, or on the
            grade task's expected grade (`predicted_grade`; None there means rounding).
    """

    task: str
    class_names: tuple
    image_size: int
    preprocessing: fundus.PreprocessingSpec
    cutoffs: list | None = None

    @classmethod
    def create(
        cls,
        task: str,
        image_size: int,
        preprocessing: fundus.PreprocessingSpec,
        class_names: Sequence[str] | None = None,
        cutoffs: Sequence[float] | None = None,
    ) -> ServedTask:
        """Checks and normalises the export's task, class names and cut-offs.

        Args:
            task: str. `"grade"`, `"binary"` or `"regression"`.
            image_size: int. Model input side in pixels.
            preprocessing: `fundus.PreprocessingSpec`.
            class_names: sequence of str or None. Defaults to `GRADE_NAMES` (grade, regression)
                or `metrics.BINARY_NAMES` (binary).
            cutoffs: 4 increasing floats or None. Regression: on the output, defaults to
                `regression.DEFAULT_CUTOFFS`. Grade: on the expected grade (e.g. the
                calibration's `grade_cutoffs`), None meaning rounding. Not for binary.

        Returns:
            A `ServedTask`.

        Raises:
            ValueError: an unknown task, the wrong number of class names, invalid cut-offs, or
                cut-offs for the binary task.
        """
        if task not in TASKS:
            raise ValueError(f"task={task!r} is not one of {TASKS}.")
        defaults = metrics.BINARY_NAMES if task == "binary" else GRADE_NAMES
        names = tuple(str(n) for n in (defaults if class_names is None else class_names))
        expected = len(defaults)
        if len(names) != expected:
            raise ValueError(f"task={task!r} needs {expected} class_names, got {list(names)}.")
        if task == "regression" and cutoffs is None:
            cutoffs = regression.DEFAULT_CUTOFFS
        if task == "binary" and cutoffs is not None:
            raise ValueError(
                "cutoffs apply to task='regression' (its output) or task='grade' (its expected "
                "grade), not task='binary'."
            )
        if cutoffs is not None:
            cutoffs = list(regression.check_cutoffs(cutoffs))  # a ValueError naming the fix
        return cls(task, names, int(image_size), preprocessing, cutoffs)

    def check_model(self, model) -> None:
        """Runs the model once on a black batch so a wrong head fails here, not in a server.

        Args:
            model: callable on `float32 [1, image_size, image_size, 3]`.

        Raises:
            ValueError: the output is not `[batch, 5]` (grade), `[batch, 2]` (binary) or
                `[batch, 1]` (regression).
        """
        size = self.image_size
        out = model(tf.zeros([1, size, size, 3], tf.float32), training=False)
        shape, want = tuple(out.shape), _NUM_OUTPUTS[self.task]
        if len(shape) != 2 or shape[1] != want:
            raise ValueError(
                f"task={self.task!r} needs a model output of shape [batch, {want}], but the "
                f"model returns {list(shape)}. Pass the task the model was trained for (grade: "
                "5-way softmax, binary: 2-way softmax, regression: one float)."
            )

    def signature_table(self) -> dict:
        """The photo and metadata signatures as `{name: {"inputs": ..., "outputs": ...}}`."""
        return {
            BYTES_SIGNATURE: {"inputs": {BYTES_INPUT: "string [B]"}, "outputs": OUTPUTS[self.task]},
            IMAGES_SIGNATURE: {
                "inputs": {IMAGES_INPUT: "uint8 [B, H, W, 3]"},
                "outputs": OUTPUTS[self.task],
            },
            METADATA_SIGNATURE: {"inputs": {}, "outputs": {METADATA_OUTPUT: "string []"}},
        }


def serving_endpoints(
    model, served: ServedTask, meta_json: str, explain_maps: Callable | None = None
) -> dict:
    """The SavedModel's endpoints: `{name: (fn, input_signature)}`.

    Every photo endpoint shares the photo step (gate + spec) and the predict step (model ->
    named outputs + gate outputs); a new endpoint (an explanation map, test-time
    augmentation) is one more entry built from the same two pieces.

    Args:
        model: the model to serve (calibration and TTA wrapped in; see
            `export.export_saved_model`), `float32 [B, S, S, 3]` -> `[B, classes]`.
        served: `ServedTask`. Task, class names, cut-offs, sizes and preprocessing.
        meta_json: str. The metadata JSON served by `metadata`.
        explain_maps: callable or None. `maps(x) -> float32 [B, S, S]` on model inputs; adds
            `serving_explain`. Defaults to None.

    Returns:
        Dict of endpoint name -> `(callable, list of tf.TensorSpec)`.
    """
    photo_inputs = _photo_inputs_fn(served)
    predict = _predict_fn(model, served)

    def serve_bytes(image_bytes):
        return predict(*photo_inputs(image_bytes, decode=True))

    def serve_images(images):
        return predict(*photo_inputs(images, decode=False))

    def serve_metadata():
        return {METADATA_OUTPUT: tf.constant(meta_json)}

    bytes_input = [tf.TensorSpec([None], tf.string, name=BYTES_INPUT)]
    images_input = [tf.TensorSpec([None, None, None, 3], tf.uint8, name=IMAGES_INPUT)]
    endpoints = {
        BYTES_SIGNATURE: (serve_bytes, bytes_input),
        IMAGES_SIGNATURE: (serve_images, images_input),
        METADATA_SIGNATURE: (serve_metadata, []),
    }
    if explain_maps is not None:

        def serve_explain(image_bytes):
            x, gate = photo_inputs(image_bytes, decode=True)
            return {**predict(x, gate), EXPLANATION_OUTPUT: explain_maps(x)}

        endpoints[EXPLAIN_SIGNATURE] = (serve_explain, bytes_input)
    return endpoints


def _photo_inputs_fn(served: ServedTask):
    """`fn(images, decode) -> (model inputs, gate outputs)` per photo, via `tf.map_fn`.

    The gate outputs are a dict keyed by `GATE_OUTPUTS` (`gradable`, `ungradable_reason`,
    `quality_score`).
    """
    size, spec = served.image_size, served.preprocessing
    signature = (
        tf.TensorSpec([size, size, 3], tf.float32),
        {
            "gradable": tf.TensorSpec([], tf.bool),
            "ungradable_reason": tf.TensorSpec([], tf.string),
            "quality_score": tf.TensorSpec([], tf.float32),
        },
    )

    def photo_inputs(images, decode: bool):
        def one(item):
            image = fundus.decode_image(item) if decode else item
            quality = fundus.assess_quality(image)
            x = fundus.photo_to_model_input(image, size, spec)
            return x, {name: quality[name] for name in GATE_OUTPUTS}

        return tf.map_fn(one, images, fn_output_signature=signature)

    return photo_inputs


def _predict_fn(model, served: ServedTask):
    """`fn(x, gate) -> outputs`: the model, named outputs, no grade if ungradable."""
    outputs = _outputs_fn(served)

    def predict(x, gate):
        result = _mask_ungradable(outputs(model(x, training=False)), gate["gradable"])
        return {**result, **gate}

    return predict


def _outputs_fn(served: ServedTask):
    """`fn(model_output) -> dict` building the named outputs of `OUTPUTS[task]`."""
    names = tf.constant(list(served.class_names), tf.string)

    cut = tf.constant(served.cutoffs or regression.DEFAULT_CUTOFFS, tf.float32)

    def digitize(grade):
        # np.digitize(grade, cutoffs), as `regression.apply_cutoffs`.
        return tf.reduce_sum(tf.cast(grade[:, tf.newaxis] >= cut[tf.newaxis, :], tf.int64), axis=1)

    if served.task == "regression":

        def regression_outputs(out):
            grade = tf.reshape(tf.cast(out, tf.float32), [-1])
            predicted = digitize(grade)
            return {
                "grade": grade,
                "predicted_grade": predicted,
                "class_name": tf.gather(names, predicted),
                "referable": predicted >= metrics.REFERABLE_MIN_GRADE,
            }

        return regression_outputs

    def classification(out):
        probs = tf.cast(out, tf.float32)
        predicted = tf.argmax(probs, axis=-1, output_type=tf.int64)
        result = {
            "probabilities": probs,
            "predicted_class": predicted,
            "class_name": tf.gather(names, predicted),
        }
        if served.task == "grade":
            grades = tf.range(len(served.class_names), dtype=tf.float32)
            result["expected_grade"] = tf.reduce_sum(probs * grades, axis=-1)
            result["predicted_grade"] = digitize(result["expected_grade"])
            result["referable_probability"] = tf.reduce_sum(
                probs[:, metrics.REFERABLE_MIN_GRADE :], axis=-1
            )
        else:
            result["dr_probability"] = probs[:, 1]
        return result

    return classification


def _mask_ungradable(result: dict, gradable: tf.Tensor) -> dict:
    """No grade for an ungradable photo: floats NaN, ids -1, names "ungradable", bools false."""
    out = {}
    for name, value in result.items():
        keep = tf.reshape(gradable, [-1] + [1] * (len(value.shape) - 1))
        if value.dtype == tf.string:
            fill = tf.constant(UNGRADABLE_CLASS_NAME)
        elif value.dtype.is_floating:
            fill = tf.constant(float("nan"), value.dtype)
        elif value.dtype == tf.bool:
            fill = tf.constant(False)
        else:
            fill = tf.constant(-1, value.dtype)
        out[name] = tf.where(keep, value, fill)
    return out
