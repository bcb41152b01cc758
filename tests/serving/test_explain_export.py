"""The `serving_explain` signature, temperature and TTA inside the SavedModel, in a fresh process."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from eyegazer_keras import fundus
from eyegazer_keras.evaluation import calibrate, explain
from eyegazer_keras.models import wrappers
from eyegazer_keras.serving import signatures
from tests.test_case import export_tiny

IMAGE_SIZE = 32
SOURCE_SIZE = 64
CALIBRATION = {
    "temperature": 1.7,
    "threshold": 0.31,
    "threshold_output": "referable_probability",
    "target_sensitivity": 0.9,
    "method": "test",
    "report_half": {"operating_point": {"threshold": 0.31, "sensitivity": 0.9}},
}


def _tiny_vit():
    import keras

    from eyegazer_keras.models.vit_lora import build_vit_classifier

    keras.utils.set_random_seed(3)
    return build_vit_classifier(
        "config",
        num_classes=5,
        image_size=IMAGE_SIZE,
        lora_rank=2,
        pooling="gap",
        backbone_config=dict(patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64),
    )


def _photo(seed):
    from eyegazer_datasets.synthetic_fundus import generator

    image, _ = generator.render(seed, 3, 200)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def test_tta_wrapper_equals_mean_of_transformed_inputs():
    model = _tiny_vit()
    x = np.random.default_rng(0).uniform(0, 255, (3, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("f4")
    flips = {"none": [(1, 1)], "flip": [(1, 1), (1, -1)], "flip4": [(1, 1), (1, -1), (-1, 1)]}
    flips["flip4"].append((-1, -1))
    for mode, views in flips.items():
        want = np.mean([model(x[:, ::a, ::b].copy()).numpy() for a, b in views], axis=0)
        got = wrappers.serving_model(model, None, mode)(x).numpy()
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert wrappers.serving_model(model) is model
    with pytest.raises(ValueError, match="tta"):
        wrappers.serving_model(model, None, "rotate")


@pytest.mark.slow
def test_explain_signature_temperature_and_tta_in_a_fresh_process(tmp_path):
    model = _tiny_vit()
    out = export_tiny(
        model,
        tmp_path / "export",
        calibration=CALIBRATION,
        tta="flip4",
        explain_method="gradient_rollout",
    )
    blobs = [_photo(1), _photo(2)]
    np.save(tmp_path / "blobs.npy", np.array(blobs, dtype=object), allow_pickle=True)
    script = textwrap.dedent(
        f"""
        import json, numpy as np, tensorflow as tf
        loaded = tf.saved_model.load({str(out)!r})
        blobs = list(np.load({str(tmp_path / "blobs.npy")!r}, allow_pickle=True))
        sig = loaded.signatures["serving_explain"]
        res = sig(image_bytes=tf.constant(blobs))
        plain = loaded.signatures["serving_default"](image_bytes=tf.constant(blobs))
        meta = json.loads(loaded.signatures["metadata"]()["metadata_json"].numpy())
        np.savez({str(tmp_path / "out.npz")!r},
                 explanation=res["explanation"].numpy(),
                 probabilities=res["probabilities"].numpy(),
                 plain=plain["probabilities"].numpy(),
                 keys=np.array(sorted(res)), meta=np.array(json.dumps(meta)))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    assert set(got["keys"]) == set(signatures.OUTPUTS["grade"]) | {"explanation"}
    meta = json.loads(str(got["meta"]))
    assert meta["calibrated"] is True and meta["temperature"] == 1.7
    assert meta["operating_threshold"]["threshold"] == 0.31
    assert meta["referable_threshold"] == 0.31  # what `eyegazer app` reads
    assert meta["tta"] == {"mode": "flip4", "views": 4}
    assert "serving_explain" in meta["signatures"]
    # In this process: the model input the export computes, then the same math by hand.
    x = np.stack(
        [fundus.serving_transform(tf.constant(b), SOURCE_SIZE, IMAGE_SIZE).numpy() for b in blobs]
    )
    views = [x, x[:, :, ::-1], x[:, ::-1], x[:, ::-1, ::-1]]
    mean = np.mean([model(v.copy()).numpy() for v in views], axis=0)
    want = calibrate.apply_temperature(mean, 1.7)
    np.testing.assert_allclose(got["probabilities"], want, atol=1e-5)  # TTA + temperature parity
    np.testing.assert_allclose(got["plain"], want, atol=1e-5)
    maps = explain.explain(model, x, "gradient_rollout")
    assert got["explanation"].shape == (2, IMAGE_SIZE, IMAGE_SIZE)
    np.testing.assert_allclose(got["explanation"], maps, atol=1e-4)
    assert got["explanation"].max() == pytest.approx(1.0)
