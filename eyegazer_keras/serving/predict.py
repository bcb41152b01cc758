"""Predictions from an exported SavedModel on image files: the engine of `eyegazer predict`.

Each input (a file path, or `"-"` for the bytes on stdin) gives one result dict: the outputs of
the model's `serving_default` signature (see `eyegazer_keras.serving.signatures.OUTPUTS`), including
`gradable` and `ungradable_reason` from the quality gate, or an `error` saying why that one
input could not be read (missing, a directory, empty, not an image, truncated). One bad file
never stops the others. A readable but ungradable photo is a result, not an error: its grade
outputs are `null` and `class_name` is `"ungradable"`.

Example:

```python
import keras
import numpy as np
import tensorflow as tf
from eyegazer_keras.serving import export, predict

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

import errno
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

from eyegazer_keras import files, fundus
from eyegazer_keras.fundus import formats, header
from eyegazer_keras.serving import signatures

logger = logging.getLogger(__name__)

STDIN_PATH = "-"
DEFAULT_BATCH_SIZE = 16
# The largest image file read (bytes): 8 bytes per pixel of `fundus.MAX_PIXELS`, what the
# dataset builders allow too; a larger file is refused before it is read.
MAX_FILE_BYTES = 8 * fundus.MAX_PIXELS


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
            Dict of numpy arrays, one row per image (see `signatures.OUTPUTS`).

        Raises:
            tf.errors.InvalidArgumentError: when any of the images cannot be decoded.
        """
        signature = self.loaded.signatures[signatures.BYTES_SIGNATURE]
        out = signature(**{signatures.BYTES_INPUT: tf.constant(list(images), dtype=tf.string)})
        return {name: value.numpy() for name, value in out.items()}


def load_exported(model_dir: str | os.PathLike) -> ExportedModel:
    """Loads a SavedModel written by `eyegazer_keras.serving.export.export_saved_model`.

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
    missing = {signatures.BYTES_SIGNATURE, signatures.METADATA_SIGNATURE} - set(loaded.signatures)
    if missing:
        raise ValueError(
            f"{model_dir}: SavedModel lacks the signature(s) {sorted(missing)}; it was not "
            "written by eyegazer_keras.serving.export. Re-export it with `eyegazer export`."
        )
    raw = loaded.signatures[signatures.METADATA_SIGNATURE]()[signatures.METADATA_OUTPUT]
    meta = json.loads(raw.numpy().decode("utf-8"))
    logger.info("Loaded %s export from %s", meta.get("task"), model_dir)
    _warn_emulated_bf16(meta, model_dir)
    return ExportedModel(model_dir, loaded, meta)


def _warn_emulated_bf16(meta: dict, model_dir: str) -> None:
    """Logs a warning when a bfloat16 export is loaded on a CPU without bf16 units."""
    from eyegazer_keras.serving import precision

    compute = (meta.get("precision") or {}).get("compute")
    if compute == "bfloat16" and not precision.cpu_bf16_flags():
        if not tf.config.list_physical_devices("GPU"):
            logger.warning(
                "%s computes in bfloat16 but this CPU (%s) has no bf16 units: oneDNN emulates "
                "them, slower than a float32 export. Re-export with --precision float32.",
                model_dir,
                precision.cpu_model(),
            )


def tf_error_text(error: tf.errors.OpError) -> str:
    """The decoder's own sentence out of a TF graph-execution error.

    Args:
        error: `tf.errors.OpError`, e.g. the `InvalidArgumentError` of a signature call on
            bytes that are not an image.

    Returns:
        str. One line: the op's message without TF's node, op and stack annotations (the
        error's class name when nothing is left).
    """
    lines = []
    for line in str(error.message).splitlines():
        line = re.sub(r"\[\[.*?\]\]|\[Op:[^\]]*\]|\{\{.*?\}\}", "", line).strip()
        if not line or line.startswith(("Graph execution error", "Detected at node", "<stack")):
            continue
        lines.append(line)
    return " ".join(lines) or type(error).__name__


def read_input(path: str, stdin: BinaryIO | None = None) -> tuple[bytes | None, str | None]:
    """Reads one input of `eyegazer predict` (or an upload), without raising.

    Args:
        path: str. An image file, or `STDIN_PATH` (`"-"`) for the bytes on `stdin`.
        stdin: binary stream read for `"-"`. Defaults to None (`sys.stdin.buffer`).

    TIFF and DICOM files (as fundus cameras write them) are converted to PNG bytes here
    (`fundus.formats.to_decodable`), so the export's TF decode reads them like any photo.

    Returns:
        `(bytes, None)`, or `(None, error)` with a one-line error naming the input and the fix:
        missing (or a broken link, or a symbolic link loop), a directory, unreadable, empty,
        over `MAX_FILE_BYTES`, stdin in text mode / empty, or a TIFF / DICOM file that cannot
        be read (or is over `fundus.MAX_PIXELS`).
    """
    data, error = _read_bytes(path, stdin)
    if error is not None:
        return None, error
    try:  # TIFF and DICOM (fundus cameras) -> PNG bytes for the export's TF decode
        return formats.to_decodable(data, "stdin" if path == STDIN_PATH else path), None
    except ValueError as e:
        return None, str(e)


def _read_bytes(path: str, stdin: BinaryIO | None) -> tuple[bytes | None, str | None]:
    if path == STDIN_PATH:
        stream = stdin if stdin is not None else sys.stdin.buffer
        data = stream.read(MAX_FILE_BYTES + 1)
        if isinstance(data, str):
            return None, "stdin: opened in text mode; pass a binary stream (sys.stdin.buffer)."
        if len(data) > MAX_FILE_BYTES:
            return None, f"stdin: over the limit of {MAX_FILE_BYTES / 1e6:.0f} MB for an image."
        if not data:
            return None, "stdin: no bytes received; pipe a JPEG or PNG file into `-`."
        return data, None
    if not os.path.exists(path):
        return None, _missing(path)
    if os.path.isdir(path):
        return None, f"{path}: is a directory, not an image file; pass the image files inside it."
    try:
        if os.path.getsize(path) > MAX_FILE_BYTES:
            return None, (
                f"{path}: {os.path.getsize(path)} bytes, over the limit of {MAX_FILE_BYTES} "
                f"bytes ({MAX_FILE_BYTES / 1e6:.0f} MB) for an image file; send a smaller photo."
            )
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        return None, f"{path}: cannot read the file ({e.strerror})."
    if len(data) > MAX_FILE_BYTES:
        return None, f"{path}: over the limit of {MAX_FILE_BYTES / 1e6:.0f} MB for an image file."
    if not data:
        return None, f"{path}: file is empty (0 bytes); expected a JPEG or PNG image."
    return data, None


def _missing(path: str) -> str:
    """Why `path` does not exist: not there, a broken link, or a symbolic link loop."""
    if os.path.islink(path):
        try:
            os.stat(path)
        except OSError as e:
            if e.errno == errno.ELOOP:
                return (
                    f"{path}: symbolic link loop (the link points back to itself through "
                    f"{os.readlink(path)!r}); point it at the photo."
                )
        return f"{path}: broken symbolic link (it points to {os.readlink(path)!r}, not there)."
    return f"{path}: file not found."


def pixel_limit_error(label: str, data: bytes) -> str | None:
    """The one-line refusal of an image whose header claims more than `fundus.MAX_PIXELS`.

    Reads the header only (`fundus.check_pixel_limit`), never decodes. Run before handing the
    bytes to an export, so exports written before the limit existed are protected too.

    Args:
        label: str. What names the input in the message (path, `instances[3]`, file name).
        data: bytes. The encoded image.

    Returns:
        None when within the limit (or not a recognised image format: the decoder says so),
        else "<label>: image too large: its header says WxH pixels (N MP), over the limit
        of 50 MP; ...".
    """
    try:
        fundus.check_pixel_limit(data)
    except tf.errors.InvalidArgumentError as e:
        return f"{'stdin' if label == STDIN_PATH else label}: {e.message}"
    return None


def decode_error(label: str, error: tf.errors.OpError) -> str:
    """The one-line error for an input the export could not decode.

    Args:
        label: str. What names the input in the message: a path, `"-"` (shown as "stdin"),
            `"instances[3]"` (serve) or an upload's file name (app).
        error: `tf.errors.OpError` raised by the signature call on that input alone.

    Returns:
        str. "<label>: image too large: ..." (the pixel limit, see `pixel_limit_error`),
        "<label>: not an image (unknown file format); ..." or "<label>: corrupt or
        truncated image (<decoder's reason>); re-save or re-copy the file."
    """
    label = "stdin" if label == STDIN_PATH else label
    detail = tf_error_text(error)
    refused = re.search(rf"((?:{header.TOO_LARGE}|{header.NO_SIZE}).*?)\]?$", detail.strip())
    if refused:  # the export's own pixel limit (`fundus.check_pixel_limit`)
        return f"{label}: {refused.group(1)}"
    if "Unknown image file format" in detail:
        return f"{label}: not an image (unknown file format); expected a JPEG or PNG file."
    return f"{label}: corrupt or truncated image ({detail}); re-save or re-copy the file."


def output_rows(outputs: dict[str, np.ndarray], n: int, task: str | None) -> list[dict]:
    """Signature outputs -> one JSON-safe dict per image (the rows of `eyegazer predict`).

    Args:
        outputs: dict of numpy arrays with `n` rows each (`ExportedModel.predict_bytes`).
        n: int. Number of images.
        task: str or None. The export's task: the outputs of `signatures.OUTPUTS[task]` come
            first, in that order, then any other output, sorted.

    Returns:
        List of `n` dicts: strings decoded, numpy scalars as Python values (NaN -> None, see
        `files.json_safe`); an ungradable photo's grade outputs are None, only the gate
        outputs and `class_name` ("ungradable") are kept.
    """
    documented = list(signatures.OUTPUTS.get(task, {}))
    names = [k for k in documented if k in outputs] + sorted(set(outputs) - set(documented))
    gate = set(signatures.GATE_OUTPUTS) | {"class_name"}
    rows = []
    for i in range(n):
        row = {}
        for name in names:
            item = outputs[name][i]
            row[name] = item.decode("utf-8") if isinstance(item, bytes) else item
        if "gradable" in row and not bool(row["gradable"]):
            # No grade for an ungradable photo: null, not the SavedModel's NaN / -1 fillers.
            row = {k: (v if k in gate else None) for k, v in row.items()}
        rows.append(files.json_safe(row))
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
        One dict per input, in order: `{"path", <outputs of signatures.OUTPUTS[task]>}` (e.g.
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
        data, error = read_input(path, stdin)
        error = error or pixel_limit_error(path, data)
        if error is not None:
            results[i] = {"path": path, "error": error}
        else:
            readable.append((i, data))
    batch_size = max(1, int(batch_size))
    bar = tqdm(
        total=len(readable), unit="image", desc="predict", file=sys.stderr, disable=not progress
    )
    for start in range(0, len(readable), batch_size):
        batch = readable[start : start + batch_size]
        for idx, row in _predict_items(model, batch, paths):
            results[idx] = {"path": paths[idx], **row}
        bar.update(len(batch))
    bar.close()
    return results


def _predict_items(model: ExportedModel, items: list[tuple[int, bytes]], paths: list[str]):
    """`[(index, row)]` for `(index, bytes)` items; an undecodable batch is retried one by one."""
    try:
        outputs = model.predict_bytes([data for _, data in items])
    except tf.errors.InvalidArgumentError as e:
        if len(items) == 1:
            idx = items[0][0]
            return [(idx, {"error": decode_error(paths[idx], e)})]
        return [pair for item in items for pair in _predict_items(model, [item], paths)]
    rows = output_rows(outputs, len(items), model.metadata.get("task"))
    return [(idx, row) for (idx, _), row in zip(items, rows, strict=True)]


def format_prediction_lines(results: Iterable[dict]) -> list[str]:
    """Formats results as JSON lines (one object per input, keys in output order).

    Args:
        results: iterable of dict. What `predict_paths` returns.

    Returns:
        List of JSON strings without trailing newlines.
    """
    return [json.dumps(files.json_safe(r), allow_nan=False) for r in results]
