"""Predictions from an exported SavedModel on image files: the engine of `eyegazer predict`.

Each input (a file path, or `"-"` for the bytes on stdin) gives one result dict: the outputs of
the model's `serving_default` signature (see `eyegazer_keras.export.OUTPUTS`), including
`gradable` and `ungradable_reason` from the quality gate, or an `error` saying why that one
input could not be read (missing, a directory, empty, not an image, truncated). One bad file
never stops the others. A readable but ungradable photo is a result, not an error: its grade
outputs are `null` and `class_name` is `"ungradable"`.

Example:

```python
import keras
import numpy as np
import tensorflow as tf
from eyegazer_keras import export, predict

# A tiny export and a fundus-like photo to predict on (use your own export and photos).
inputs = keras.Input((32, 32, 3))
x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255.0)(inputs))
model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(x))
export.export_saved_model(model, "exports/demo", task="grade", image_size=32, source_size=64)
yy, xx = np.mgrid[0:300, 0:400]
photo = np.zeros((300, 400, 3), np.uint8)
photo[(yy - 150) ** 2 + (xx - 200) ** 2 < 140**2] = (200, 90, 40)
tf.io.write_file("eye1.png", tf.io.encode_png(photo))

results = predict.predict_paths("exports/demo", ["eye1.png", "missing.jpg"])
for line in predict.format_prediction_lines(results):
    print(line)
failed = any("error" in r for r in results)  # True: missing.jpg is not there
```
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from eyegazer_keras import export, metrics

logger = logging.getLogger(__name__)

STDIN_PATH = "-"
DEFAULT_BATCH_SIZE = 16


@dataclass
class ExportedModel:
    """A loaded eyegazer SavedModel.

    Args:
        path: str. The SavedModel directory.
        loaded: the object returned by `tf.saved_model.load`.
        metadata: dict. The JSON of the `metadata` signature (task, class names, sizes, ...).
    """

    path: str
    loaded: object
    metadata: dict

    def predict_bytes(self, images: Sequence[bytes]) -> dict[str, np.ndarray]:
        """Runs `serving_default` on encoded images.

        Args:
            images: sequence of bytes. JPEG/PNG files.

        Returns:
            Dict of numpy arrays, one row per image (see `export.OUTPUTS`).

        Raises:
            tf.errors.InvalidArgumentError: when any of the images cannot be decoded.
        """
        signature = self.loaded.signatures[export.BYTES_SIGNATURE]
        out = signature(**{export.BYTES_INPUT: tf.constant(list(images), dtype=tf.string)})
        return {name: value.numpy() for name, value in out.items()}


def load_exported(model_dir: str | os.PathLike) -> ExportedModel:
    """Loads a SavedModel written by `eyegazer_keras.export.export_saved_model`.

    Args:
        model_dir: str or path. The export directory (holding `saved_model.pb`).

    Returns:
        An `ExportedModel`.

    Raises:
        FileNotFoundError: when `model_dir` holds no `saved_model.pb`.
        ValueError: when the SavedModel lacks the eyegazer signatures.
    """
    model_dir = os.fspath(model_dir)
    if not os.path.isfile(os.path.join(model_dir, "saved_model.pb")):
        raise FileNotFoundError(
            f"{model_dir}: no saved_model.pb there. Pass the directory written by "
            "`eyegazer export --workdir W --output DIR` (or by `eyegazer train`)."
        )
    loaded = tf.saved_model.load(model_dir)
    missing = {export.BYTES_SIGNATURE, export.METADATA_SIGNATURE} - set(loaded.signatures)
    if missing:
        raise ValueError(
            f"{model_dir}: SavedModel lacks the signature(s) {sorted(missing)}; it was not "
            "written by eyegazer_keras.export. Re-export it with `eyegazer export`."
        )
    raw = loaded.signatures[export.METADATA_SIGNATURE]()[export.METADATA_OUTPUT]
    meta = json.loads(raw.numpy().decode("utf-8"))
    logger.info("Loaded %s export from %s", meta.get("task"), model_dir)
    return ExportedModel(model_dir, loaded, meta)


def _clean_tf_error(error: tf.errors.OpError) -> str:
    """The decoder's own sentence out of a TF graph-execution error."""
    lines = []
    for line in str(error.message).splitlines():
        line = re.sub(r"\[\[.*?\]\]|\[Op:[^\]]*\]|\{\{.*?\}\}", "", line).strip()
        if not line or line.startswith(("Graph execution error", "Detected at node", "<stack")):
            continue
        lines.append(line)
    return " ".join(lines) or type(error).__name__


def _read_input(path: str, stdin: BinaryIO | None) -> tuple[bytes | None, str | None]:
    """Returns `(bytes, None)` or `(None, error text)` for one input."""
    if path == STDIN_PATH:
        stream = stdin if stdin is not None else sys.stdin.buffer
        data = stream.read()
        if isinstance(data, str):
            return None, "stdin: opened in text mode; pass a binary stream (sys.stdin.buffer)."
        if not data:
            return None, "stdin: no bytes received; pipe a JPEG or PNG file into `-`."
        return data, None
    if not os.path.exists(path):
        return None, f"{path}: file not found."
    if os.path.isdir(path):
        return None, f"{path}: is a directory, not an image file; pass the image files inside it."
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return None, f"{path}: cannot read the file ({e.strerror})."
    if not data:
        return None, f"{path}: file is empty (0 bytes); expected a JPEG or PNG image."
    return data, None


def _decode_error(path: str, error: tf.errors.OpError) -> str:
    label = "stdin" if path == STDIN_PATH else path
    detail = _clean_tf_error(error)
    if "Unknown image file format" in detail:
        return f"{label}: not an image (unknown file format); expected a JPEG or PNG file."
    return f"{label}: corrupt or truncated image ({detail}); re-save or re-copy the file."


def _rows(outputs: dict[str, np.ndarray], n: int, task: str) -> list[dict]:
    documented = list(export.OUTPUTS.get(task, {}))
    names = [k for k in documented if k in outputs] + sorted(set(outputs) - set(documented))
    gate = set(export.GATE_OUTPUTS) | {"class_name"}
    rows = []
    for i in range(n):
        row = {}
        for name in names:
            value = outputs[name]
            item = value[i]
            row[name] = item.decode("utf-8") if isinstance(item, bytes) else item
        if "gradable" in row and not bool(row["gradable"]):
            # No grade for an ungradable photo: null, not the SavedModel's NaN / -1 fillers.
            row = {k: (v if k in gate else None) for k, v in row.items()}
        rows.append(metrics.json_safe(row))
    return rows


def predict_paths(
    model_dir: str | os.PathLike | ExportedModel,
    paths: Iterable[str],
    stdin: BinaryIO | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> list[dict]:
    """Predicts every input; bad inputs get an `error` entry and the rest still run.

    Readable files are sent to `serving_default` in batches of `batch_size`; when a batch holds
    an undecodable image it is retried one file at a time so only that file fails.

    Args:
        model_dir: str, path or `ExportedModel`. The export (see `load_exported`).
        paths: iterable of str. Image files; `"-"` reads the image bytes from stdin.
        stdin: binary stream used for `"-"`. Defaults to `sys.stdin.buffer`.
        batch_size: int. Images per signature call. Defaults to 16.
        progress: bool. Show a tqdm progress bar (images) on stderr. Defaults to False.

    Returns:
        One dict per input, in order: `{"path", <outputs of export.OUTPUTS[task]>}` (e.g.
        `probabilities`, `predicted_class`, `class_name`, `gradable`, `ungradable_reason`) or
        `{"path", "error"}`.

    Raises:
        FileNotFoundError, ValueError: from `load_exported` when `model_dir` is not an export.
    """
    model = model_dir if isinstance(model_dir, ExportedModel) else load_exported(model_dir)
    paths = [os.fspath(p) for p in paths]
    results: list[dict | None] = [None] * len(paths)
    readable: list[tuple[int, bytes]] = []
    for i, path in enumerate(paths):
        data, error = _read_input(path, stdin)
        if error is not None:
            results[i] = {"path": path, "error": error}
        else:
            readable.append((i, data))

    def run(items: list[tuple[int, bytes]]) -> None:
        try:
            outputs = model.predict_bytes([data for _, data in items])
        except tf.errors.InvalidArgumentError as e:
            if len(items) > 1:
                for item in items:
                    run([item])
                return
            idx = items[0][0]
            results[idx] = {"path": paths[idx], "error": _decode_error(paths[idx], e)}
            return
        for (idx, _), row in zip(
            items, _rows(outputs, len(items), model.metadata.get("task")), strict=True
        ):
            results[idx] = {"path": paths[idx], **row}

    batch_size = max(1, int(batch_size))
    bar = None
    if progress:
        bar = tqdm(total=len(readable), unit="image", desc="predict", file=sys.stderr)
    for start in range(0, len(readable), batch_size):
        batch = readable[start : start + batch_size]
        run(batch)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return results


def format_prediction_lines(results: Iterable[dict]) -> list[str]:
    """Formats results as JSON lines (one object per input, keys in output order).

    Args:
        results: iterable of dict. What `predict_paths` returns.

    Returns:
        List of JSON strings without trailing newlines.
    """
    return [json.dumps(metrics.json_safe(r), allow_nan=False) for r in results]
