"""AutoKeras regressor: the shim is needed and sufficient, the uint8 path stays uint8."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from eyegazer_keras.configs import settings as configs
from eyegazer_keras.models import regressor

SHIM_SCRIPT = textwrap.dedent(
    """
    import os, sys, tempfile
    import numpy as np
    import autokeras as ak
    import keras

    def tiny_fit(directory):
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8)
        y = rng.integers(0, 5, 24).astype("float32")
        image = ak.ImageInput()
        head = ak.RegressionHead()(ak.ImageBlock(block_type="vanilla", normalize=True)(image))
        model = ak.AutoModel(image, head, directory=directory, max_trials=1, overwrite=True)
        model.fit(x, y, epochs=1, batch_size=8, validation_data=(x[:8], y[:8]), verbose=0)
        return model.export_model()

    with tempfile.TemporaryDirectory() as tmp:
        try:
            tiny_fit(os.path.join(tmp, "without"))
            print("WITHOUT_SHIM: ok")
        except Exception as err:
            print("WITHOUT_SHIM: failed:", type(err).__name__, str(err).replace("\\n", " "))
        from eyegazer_keras.models import regressor
        assert regressor.apply_autokeras_shim()
        best = tiny_fit(os.path.join(tmp, "with"))
        print("WITH_SHIM: ok", best.outputs[0].shape)
    """
)


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    return env


def test_shim_is_needed():
    """Without the shim a 1-trial fit dies on `Dense(np.int64(1))`; with it, it succeeds."""
    proc = subprocess.run(
        [sys.executable, "-c", SHIM_SCRIPT],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:]
    without = next(line for line in out.splitlines() if line.startswith("WITHOUT_SHIM"))
    assert "failed" in without, out
    assert "Received an invalid value for `units`" in without, without
    assert "units=1" in without, without
    assert "WITH_SHIM: ok (None, 1)" in out, out


def test_shim_is_idempotent_and_stores_python_ints():
    from autokeras import graph

    regressor.apply_autokeras_shim()
    assert regressor.apply_autokeras_shim() is False
    assert graph.Graph.set_io_shapes is regressor._set_io_shapes_as_ints

    class Node:
        shape = None

    class Head:
        in_blocks = [Node()]

    fake = type("FakeGraph", (), {"inputs": [Node()], "outputs": [Head()]})()
    regressor._set_io_shapes_as_ints(fake, (np.array([7, 16, 16, 3]), np.array([7, 1])))
    assert fake.inputs[0].shape == (16, 16, 3)
    head_shape = fake.outputs[0].in_blocks[0].shape
    assert head_shape == (1,) and type(head_shape[0]) is int


def test_array_batches_keep_uint8_and_cover_all_rows():
    x = np.arange(10 * 2 * 2 * 3, dtype=np.uint8).reshape(10, 2, 2, 3)
    y = np.arange(10, dtype=np.float32)
    batches = regressor.ArrayBatches(x, y, batch_size=4, shuffle=True, seed=1)
    assert len(batches) == 3
    seen = []
    for i in range(len(batches)):
        bx, by = batches[i]
        assert bx.dtype == np.uint8
        np.testing.assert_array_equal(bx, x[by.astype(int)])
        seen += by.tolist()
    assert sorted(seen) == list(range(10))


def test_batched_adapt_matches_whole_array_statistics():
    import keras

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (600, 4, 4, 3), dtype=np.uint8)
    inputs = keras.Input((4, 4, 3), dtype="uint8")
    from autokeras import keras_layers

    cast = keras_layers.CastToFloat32()(inputs)
    norm = keras.layers.Normalization(axis=-1)
    model = keras.Model(inputs, norm(cast))
    regressor.FrugalTunerMixin.adapt(model, x)
    as_float = x.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(np.ravel(norm.mean), as_float.mean(0), rtol=1e-5)
    np.testing.assert_allclose(np.ravel(norm.variance), as_float.var(0), rtol=1e-4)


def test_uint8_search_path(tmp_path):
    """A 1-trial search on uint8 arrays: inputs stay uint8, model takes uint8, twin takes float."""
    from eyegazer_keras.runs import search

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (48, 16, 16, 3), dtype=np.uint8)
    y = rng.integers(0, 5, 48)
    config = configs.SearchConfig(
        max_trials=1, epochs=1, image_size=16, batch_size=16, overwrite=True
    )
    auto_model = search.fit_search(config, tmp_path / "search", x[:32], y[:32], x[32:], y[32:])
    assert isinstance(auto_model.tuner, regressor.FrugalTunerMixin)
    assert x.dtype == np.uint8
    best = auto_model.export_model()
    assert best.inputs[0].dtype == "uint8"
    assert any(layer.__class__.__name__ == "Normalization" for layer in best.layers)
    pred_uint8 = np.asarray(best.predict(x[:4], verbose=0))
    twin = regressor.float_input_model(best, 16)
    assert twin.inputs[0].dtype == "float32"
    pred_float = np.asarray(twin.predict(x[:4].astype("float32"), verbose=0))
    assert pred_float.shape == (4, 1)
    np.testing.assert_allclose(pred_float, pred_uint8, atol=1e-5)


def test_bad_choices_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="tuner=greedy"):
        regressor.tuner_class("annealing")
    config = configs.SearchConfig(block_type="mlp")
    with pytest.raises(ValueError, match="block_type=vanilla"):
        regressor.build_regressor(config, str(tmp_path))


def test_keras_tuner_json_state_is_written_atomically(tmp_path, monkeypatch):
    """keras-tuner's `save_json` opens then writes: a kill in between left an empty
    oracle.json and the resumed search died (JSONDecodeError). The shim writes a temp file
    and renames it, so the old state survives a failed write whole."""
    import json

    from keras_tuner.src import utils as kt_utils

    from eyegazer_keras.models import regressor

    regressor.apply_keras_tuner_json_shim()
    path = tmp_path / "oracle.json"
    kt_utils.save_json(str(path), {"trials": 1})

    def dies(*args, **kwargs):
        raise KeyboardInterrupt  # stands in for a kill during the write

    monkeypatch.setattr(json, "dumps", lambda obj: '{"trials": 2, "half')
    real_replace = __import__("os").replace
    monkeypatch.setattr("os.replace", dies)
    try:
        kt_utils.save_json(str(path), {"trials": 2})
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr("os.replace", real_replace)
    assert json.loads(path.read_text()) == {"trials": 1}  # the previous state, whole
    assert regressor.apply_keras_tuner_json_shim() is False  # idempotent
