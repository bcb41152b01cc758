"""Atomic file writing and JSON-safe values: the one copy the whole package uses.

A file is written to a unique temporary sibling, flushed, fsynced and renamed over the target
(``os.replace``), so a kill at any moment leaves either the old file or the new one, never half
of one. Importable without TensorFlow, keras or sklearn (numpy only).

Example:

```python
import json
from eyegazer_keras import files

files.write_json_atomic("run.json", {"qwk": float("nan"), "n": 24})
assert json.load(open("run.json")) == {"n": 24, "qwk": None}
```
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["json_safe", "write_atomic", "write_json_atomic"]


def json_safe(obj):
    """Converts numpy scalars/arrays, tuples and non-finite floats to plain JSON values.

    Args:
        obj: any nesting of dicts, lists, tuples, numpy arrays and scalars.

    Returns:
        The same structure with numpy types replaced by Python types, tuples by lists and
        NaN/inf floats by ``None``.
    """
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj


def write_atomic(path: str | os.PathLike, write_fn: Callable, mode: str = "w") -> Path:
    """Calls ``write_fn(file)`` on a temporary file next to ``path``, then renames it over ``path``.

    Args:
        path: str or PathLike. The target; missing parent folders are created.
        write_fn: callable(file). Writes the content into the open file object.
        mode: str. ``"w"`` (text, UTF-8) or ``"wb"``. Defaults to ``"w"``.

    Returns:
        The path written, as a ``pathlib.Path``.

    Raises:
        OSError: the folder cannot be created or written. The temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique sibling opened with "x": same filesystem for os.replace, normal umask permissions,
    # and two writers (or a stale temporary file of a killed one) never share a name.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(
            tmp, mode.replace("w", "x"), **({"encoding": "utf-8"} if "b" not in mode else {})
        ) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, obj, *, indent: int | None = 2) -> Path:
    """Writes ``obj`` as JSON atomically: sorted keys, numpy values converted, NaN/inf as null.

    Args:
        path: str or PathLike. The target ``.json`` file; missing parent folders are created.
        obj: any JSON-like nesting (see `json_safe`).
        indent: int or None. JSON indent. Defaults to 2.

    Returns:
        The path written, as a ``pathlib.Path``.

    Raises:
        TypeError: ``obj`` holds a value JSON cannot represent (e.g. an arbitrary object).
        OSError: the file cannot be written.
    """
    text = json.dumps(json_safe(obj), indent=indent, sort_keys=True, allow_nan=False)
    return write_atomic(path, lambda f: f.write(text + "\n"))
