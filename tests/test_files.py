"""files.write_json_atomic: the package's one atomic JSON writer."""

import json

import numpy as np
import pytest

from eyegazer_keras import files


def test_writes_plain_json_with_numpy_and_nan(tmp_path):
    path = tmp_path / "sub" / "m.json"
    files.write_json_atomic(path, {"b": np.float32(0.5), "a": np.arange(3), "c": float("nan")})
    assert (
        path.read_text()
        == '{\n  "a": [\n    0,\n    1,\n    2\n  ],\n  "b": 0.5,\n  "c": null\n}\n'
    )


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "run.json"
    files.write_json_atomic(path, {"ok": 1})

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        files.write_json_atomic(path, {"bad": Unserialisable()})
    assert json.loads(path.read_text()) == {"ok": 1}

    def half_then_fail(f):
        f.write('{"trunc')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        files.write_atomic(path, half_then_fail)
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
