"""SavedModel export: parity with the training pipeline in a fresh process, signatures as
documented in docs/serving.md, metadata, model card, bad bytes, binary and regression heads."""

from __future__ import annotations

import io
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from eyegazer_keras import GRADE_NAMES, NOT_A_MEDICAL_DEVICE, fundus
from eyegazer_keras.evaluation import calibrate, metrics, regression
from eyegazer_keras.serving import export, model_card, signatures
from tests.test_case import (
    exif_tagged_photo,
    export_tiny,
    tiny_vit_classifier,  # noqa: F401  (test_serve/test_app import it here)
)

IMAGE_SIZE = 32
SOURCE_SIZE = 64
DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "serving.md"


def synthetic_fundus(height: int = 480, width: int = 640, seed: int = 0) -> np.ndarray:
    """A fundus-like 4:3 photo: textured orange disc with dark vessels on a black border."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx, r = height / 2 + 7, width / 2 - 11, 0.45 * height
    dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    shade = np.clip(1.0 - 0.5 * (dist / r) ** 2, 0.0, 1.0)
    image = np.zeros((height, width, 3), np.float32)
    image[..., 0] = 215 * shade
    image[..., 1] = 105 * shade
    image[..., 2] = 35 * shade
    scale = height / 480  # vessels keep their share of the disc at any size
    for k in range(6):  # vessels: dark sine curves
        curve = cy + scale * ((k - 2.5) * 30 + 20 * np.sin(xx / (scale * (40 + 9 * k)) + k))
        image[np.abs(yy - curve) < 2.5 * scale] *= 0.55
    image += rng.normal(0.0, 6.0, image.shape)
    image[dist > r] = 0.0
    return np.clip(image, 0, 255).astype(np.uint8)


def encode(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def training_pipeline_inputs(image_bytes: bytes) -> tf.Tensor:
    """What training feeds the model: decode -> preprocess_fundus (builder) -> to_model_input."""
    stored = fundus.preprocess_fundus(fundus.decode_image(image_bytes), SOURCE_SIZE)
    return fundus.to_model_input(stored, IMAGE_SIZE)


def training_pipeline_probs(model, image_bytes: bytes) -> np.ndarray:
    return model(training_pipeline_inputs(image_bytes)[tf.newaxis]).numpy()[0]


@pytest.fixture(scope="module")
def grade_export(tmp_path_factory):
    model = tiny_vit_classifier(5)
    out = tmp_path_factory.mktemp("grade") / "export"
    card = {  # partial, with the aliases train.py uses ("model", "training_config")
        "model": "tiny ViT",
        "data": {"dataset": "synthetic_fundus", "split": "train/validation 80/20"},
        "training_config": {"epochs": 1},
        "preprocessing": "as in training",
    }
    path = export_tiny(
        model, out, metadata={"config": {"name": "test", "lora_rank": 4}}, model_card=card
    )
    return model, path


@pytest.fixture(scope="module")
def grade_loaded(grade_export):
    return tf.saved_model.load(grade_export[1])


@pytest.fixture(scope="module")
def images():
    from skimage import data

    synth, retina = synthetic_fundus(), data.retina()
    return {
        f"{name}.{fmt.lower()}": encode(arr, fmt)
        for name, arr in [("synthetic", synth), ("retina", retina)]
        for fmt in ("PNG", "JPEG")
    }


_FRESH_PROCESS = textwrap.dedent(
    """
    import sys, numpy as np, tensorflow as tf
    model_dir, out_path, *files = sys.argv[1:]
    loaded = tf.saved_model.load(model_dir)
    by_bytes = loaded.signatures["serving_default"]
    by_images = loaded.signatures["serving_images"]
    blobs = [open(f, "rb").read() for f in files]
    result = {"batch": by_bytes(image_bytes=tf.constant(blobs))["probabilities"].numpy()}
    for i, blob in enumerate(blobs):
        result[f"bytes_{i}"] = by_bytes(image_bytes=tf.constant([blob]))["probabilities"].numpy()
        decoded = tf.io.decode_image(blob, channels=3, expand_animations=False)[tf.newaxis]
        result[f"images_{i}"] = by_images(images=decoded)["probabilities"].numpy()
    np.savez(out_path, **result)
    """
)


def test_fresh_process_parity_with_training_pipeline(grade_export, images, tmp_path):
    model, path = grade_export
    files = []
    for name, blob in images.items():
        files.append(tmp_path / name)
        files[-1].write_bytes(blob)
    out = tmp_path / "probs.npz"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, path, str(out), *map(str, files)],
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    served = np.load(out)
    for i, (name, blob) in enumerate(images.items()):
        expected = training_pipeline_probs(model, blob)
        for key in (f"bytes_{i}", f"images_{i}"):
            delta = np.abs(served[key][0] - expected).max()
            assert delta <= 1e-5, f"{name} via {key}: max |dprob| = {delta}"
        assert np.abs(served["batch"][i] - expected).max() <= 1e-5, name


def test_parity_check_is_sensitive_to_preprocessing(grade_export, images):
    """A pipeline without the fundus crop moves the output far more than the 1e-5 tolerance."""
    model, _ = grade_export
    blob = images["synthetic.png"]
    naive = tf.image.resize(tf.cast(fundus.decode_image(blob), tf.float32), [IMAGE_SIZE] * 2)
    naive_probs = model(naive[tf.newaxis]).numpy()[0]
    assert np.abs(naive_probs - training_pipeline_probs(model, blob)).max() > 1e-4


def _spec_shape(shape: tf.TensorShape, kind: str) -> str:
    dims = list(shape)
    if not dims:
        return "[]"
    names = iter(["B", "H", "W"] if kind == "input" else ["B"])
    return "[" + ", ".join(str(d) if d is not None else next(names) for d in dims) + "]"


def documented_signatures() -> set[tuple[str, str, str, str, str, str]]:
    """Rows `(task, signature, kind, name, dtype, shape)` of the table in docs/serving.md."""
    rows = set()
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) != 7 or cells[0] not in (*signatures.TASKS, "all"):
            continue
        task, names, kind, name, dtype, shape, _ = cells
        for task_ in signatures.TASKS if task == "all" else [task]:
            for signature in names.replace("`", "").split(","):
                rows.add((task_, signature.strip(), kind, name, dtype, shape))
    return rows


def actual_signatures(loaded, task: str) -> set[tuple[str, str, str, str, str, str]]:
    rows = set()
    for sig_name, fn in loaded.signatures.items():
        for name, spec in fn.structured_input_signature[1].items():
            rows.add(
                (task, sig_name, "input", name, spec.dtype.name, _spec_shape(spec.shape, "input"))
            )
        for name, spec in fn.structured_outputs.items():
            rows.add(
                (task, sig_name, "output", name, spec.dtype.name, _spec_shape(spec.shape, "output"))
            )
    return rows


def test_grade_signatures_match_docs(grade_loaded):
    documented = {r for r in documented_signatures() if r[0] == "grade"}
    assert actual_signatures(grade_loaded, "grade") == documented
    assert set(signatures.OUTPUTS["grade"]) == set(
        grade_loaded.signatures["serving_default"].structured_outputs
    )


def test_metadata_inside_savedmodel_and_model_card(grade_export, grade_loaded):
    _, path = grade_export
    raw = grade_loaded.signatures["metadata"]()["metadata_json"].numpy().decode()
    meta = json.loads(raw)
    assert meta["task"] == "grade" and meta["class_names"] == list(GRADE_NAMES)
    assert (meta["image_size"], meta["source_size"], meta["use_ben_graham"]) == (32, 64, False)
    assert meta["cutoffs"] is None and meta["config"] == {"name": "test", "lora_rank": 4}
    assert meta["versions"]["tensorflow"] == tf.__version__
    assert meta["versions"]["keras"] == keras.__version__
    assert {"keras_hub", "eyegazer_keras"} <= set(meta["versions"])
    assert meta["not_a_medical_device"] == NOT_A_MEDICAL_DEVICE
    on_disk = json.loads(
        (pathlib.Path(path) / "assets.extra" / export.METADATA_FILENAME).read_text()
    )
    assert on_disk == meta

    card = json.loads((pathlib.Path(path) / model_card.MODEL_CARD_JSON).read_text())
    assert card["data"]["dataset"] == "synthetic_fundus"
    assert card["model_name"] == "tiny ViT" and card["training"] == {"epochs": 1}
    assert card["validation_metrics"] == "not recorded"  # partial info still gives a full card
    assert card["preprocessing"]["source_size"] == 64
    assert card["preprocessing"]["description"] == "as in training"
    markdown = (pathlib.Path(path) / model_card.MODEL_CARD_MD).read_text()
    for heading in (
        "Data and split",
        "Training configuration",
        "Validation metrics",
        "Preprocessing",
        "Intended use",
        "Limitations",
    ):
        assert f"## {heading}" in markdown
    assert NOT_A_MEDICAL_DEVICE in markdown


def test_outputs_are_consistent(grade_loaded, images):
    out = grade_loaded.signatures["serving_default"](
        image_bytes=tf.constant([images["synthetic.png"], images["retina.jpeg"]])
    )
    probs = out["probabilities"].numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out["predicted_class"].numpy(), probs.argmax(axis=1))
    np.testing.assert_allclose(out["expected_grade"].numpy(), probs @ np.arange(5), atol=1e-5)
    # No calibration, no tuned cut-offs: predicted_grade is the rounded expected grade.
    expected = regression.apply_cutoffs(out["expected_grade"].numpy(), regression.DEFAULT_CUTOFFS)
    np.testing.assert_array_equal(out["predicted_grade"].numpy(), expected)
    np.testing.assert_allclose(out["referable_probability"].numpy(), probs[:, 2:].sum(1), atol=1e-5)
    names = [GRADE_NAMES[i] for i in probs.argmax(axis=1)]
    assert [n.decode() for n in out["class_name"].numpy()] == names


@pytest.mark.parametrize(
    "blob",
    [b"not an image at all", b"", b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "truncated"],
    ids=["garbage", "empty", "png-header-only", "truncated-png"],
)
def test_bad_bytes_raise_invalid_argument(grade_loaded, images, blob):
    if blob == "truncated":
        blob = images["synthetic.png"][: len(images["synthetic.png"]) // 2]
    with pytest.raises(tf.errors.InvalidArgumentError):
        grade_loaded.signatures["serving_default"](
            image_bytes=tf.constant([images["synthetic.png"], blob])
        )
    # The endpoint still works afterwards (an error, not a crash).
    ok = grade_loaded.signatures["serving_default"](
        image_bytes=tf.constant([images["synthetic.png"]])
    )
    assert ok["probabilities"].shape == (1, 5)


def test_binary_export(tmp_path, images):
    model = tiny_vit_classifier(2, seed=1)
    path = export_tiny(model, tmp_path / "binary", task="binary")
    loaded = tf.saved_model.load(path)
    assert actual_signatures(loaded, "binary") == {
        r for r in documented_signatures() if r[0] == "binary"
    }
    blob = images["retina.png"]
    out = loaded.signatures["serving_default"](image_bytes=tf.constant([blob]))
    probs = out["probabilities"].numpy()[0]
    assert np.abs(probs - training_pipeline_probs(model, blob)).max() <= 1e-5
    assert out["dr_probability"].numpy()[0] == pytest.approx(probs[1])
    assert out["class_name"].numpy()[0].decode() == metrics.BINARY_NAMES[int(probs.argmax())]
    meta = json.loads(loaded.signatures["metadata"]()["metadata_json"].numpy())
    assert meta["class_names"] == list(metrics.BINARY_NAMES)


def test_regression_export_bakes_in_cutoffs(tmp_path):
    """Model output = a * mean(red) + b, so photos of known brightness have a known grade."""
    gains = np.array([0.7, 0.8, 0.9, 1.0, 1.1])
    photos = []
    for gain in gains:  # one fundus at five exposures: all gradable
        photo = synthetic_fundus(96, 128, seed=1).astype(np.float32) * gain
        photos.append(np.clip(photo, 0, 255).astype(np.uint8))
    mean_red = np.array(
        [float(tf.reduce_mean(training_pipeline_inputs(encode(p, "PNG"))[..., 0])) for p in photos]
    )
    # Grades from 0.2 (darkest) to 4.0 (brightest), linear in the model input's mean red.
    a = 3.8 / (mean_red[-1] - mean_red[0])
    b = 0.2 - a * mean_red[0]
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    dense = keras.layers.Dense(1)
    model = keras.Model(inputs, dense(x))
    dense.set_weights([np.array([[a], [0.0], [0.0]], np.float32), np.array([b], np.float32)])
    cutoffs = (0.5, 1.0, 2.5, 2.9)
    path = export_tiny(model, tmp_path / "regression", task="regression", cutoffs=cutoffs)
    loaded = tf.saved_model.load(path)
    assert actual_signatures(loaded, "regression") == {
        r for r in documented_signatures() if r[0] == "regression"
    }

    expected_grade = a * mean_red + b
    expected_class = regression.apply_cutoffs(expected_grade, cutoffs)
    assert list(expected_class) != list(np.clip(np.round(expected_grade), 0, 4))  # not rounding
    assert expected_class[0] == 0 and expected_class[-1] == 4

    by_images = loaded.signatures["serving_images"](images=tf.constant(np.stack(photos)))
    by_bytes = loaded.signatures["serving_default"](
        image_bytes=tf.constant([encode(p, "PNG") for p in photos])
    )
    for out in (by_images, by_bytes):
        np.testing.assert_array_equal(out["gradable"].numpy(), [True] * len(gains))
        np.testing.assert_allclose(out["grade"].numpy(), expected_grade, atol=1e-3)
        np.testing.assert_array_equal(out["predicted_grade"].numpy(), expected_class)
        np.testing.assert_array_equal(out["referable"].numpy(), expected_class >= 2)
        assert [n.decode() for n in out["class_name"].numpy()] == [
            GRADE_NAMES[g] for g in expected_class
        ]
    # The black photo of the issue: no grade at all (it was graded `severe, referable`).
    black = loaded.signatures["serving_default"](
        image_bytes=tf.constant([encode(np.zeros((48, 48, 3), np.uint8), "PNG")])
    )
    assert black["gradable"].numpy().tolist() == [False]
    assert black["ungradable_reason"].numpy().tolist() == [b"too_dark"]
    assert np.isnan(black["grade"].numpy()[0]) and black["predicted_grade"].numpy()[0] == -1
    assert black["class_name"].numpy()[0] == b"ungradable" and not black["referable"].numpy()[0]
    meta = json.loads(loaded.signatures["metadata"]()["metadata_json"].numpy())
    assert meta["cutoffs"] == list(cutoffs)


def test_grade_export_serves_the_calibrations_grade_cutoffs(tmp_path, images):
    """`predicted_grade` = the calibrated expected grade at `grade_cutoffs`; argmax unchanged."""
    model = tiny_vit_classifier(5, seed=3)
    cut = [0.1, 0.2, 0.3, 3.9]  # far from rounding, so the test tells them apart
    calibration = {
        "temperature": 1.7,
        "threshold": 0.4,
        "threshold_output": "referable_probability",
        "grade_cutoffs": cut,
        "grade_cutoffs_method": "by hand",
        "report_half": {"grade_decision": {"qwk_argmax": 0.1, "qwk_cutoffs": 0.3}},
    }
    path = export_tiny(model, tmp_path / "cut", calibration=calibration)
    loaded = tf.saved_model.load(path)
    blobs = list(images.values())
    out = loaded.signatures["serving_default"](image_bytes=tf.constant(blobs))
    probs = out["probabilities"].numpy()
    raw = np.stack([training_pipeline_probs(model, b) for b in blobs])
    np.testing.assert_allclose(probs, calibrate.apply_temperature(raw, 1.7), atol=1e-5)
    expected = out["expected_grade"].numpy()
    graded = out["gradable"].numpy()
    want = np.where(graded, regression.apply_cutoffs(np.nan_to_num(expected), cut), -1)
    np.testing.assert_array_equal(out["predicted_grade"].numpy(), want)
    assert (want[graded] != regression.apply_cutoffs(expected[graded])).any()  # not rounding
    np.testing.assert_array_equal(
        out["predicted_class"].numpy()[graded], probs[graded].argmax(axis=1)
    )
    meta = json.loads(loaded.signatures["metadata"]()["metadata_json"].numpy())
    assert meta["cutoffs"] == cut and meta["grade_decision"]["cutoffs"] == cut
    assert meta["grade_decision"]["output"] == "predicted_grade"
    assert meta["grade_decision"]["report_half"]["qwk_cutoffs"] == 0.3
    # An explicit `cutoffs` argument wins over the calibration's.
    other = export_tiny(model, tmp_path / "explicit", calibration=calibration, cutoffs=(1, 2, 3, 4))
    meta = json.loads(tf.saved_model.load(other).signatures["metadata"]()["metadata_json"].numpy())
    assert meta["cutoffs"] == [1.0, 2.0, 3.0, 4.0]


def test_export_rejects_wrong_arguments(tmp_path):
    model = keras.Sequential(
        [
            keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3)),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(5, activation="softmax"),
        ]
    )
    common = {"image_size": IMAGE_SIZE, "source_size": SOURCE_SIZE}
    with pytest.raises(ValueError, match="task"):
        export.export_saved_model(model, tmp_path / "a", task="segmentation", **common)
    with pytest.raises(ValueError, match=r"\[batch, 2\]"):
        export.export_saved_model(model, tmp_path / "b", task="binary", **common)
    with pytest.raises(ValueError, match="cutoffs"):  # must increase
        export.export_saved_model(
            model, tmp_path / "c", task="grade", cutoffs=(0.5, 1.5, 1.5, 3.5), **common
        )
    binary = keras.Sequential([*model.layers[:-1], keras.layers.Dense(2, activation="softmax")])
    with pytest.raises(ValueError, match="not task='binary'"):
        export.export_saved_model(
            binary, tmp_path / "c2", task="binary", cutoffs=(0.5, 1.5, 2.5, 3.5), **common
        )
    with pytest.raises(ValueError, match="reserved"):
        export.export_saved_model(
            model, tmp_path / "d", task="grade", metadata={"task": "x"}, **common
        )
    assert not (tmp_path / "d").exists()


_FRESH_OUTPUTS = textwrap.dedent(
    """
    import json, sys, numpy as np, tensorflow as tf
    model_dir, out_path, *files = sys.argv[1:]
    serve = tf.saved_model.load(model_dir).signatures["serving_default"]
    rows = {}
    for f in files:
        out = serve(image_bytes=tf.constant([open(f, "rb").read()]))
        rows[f] = {
            "probabilities": out["probabilities"].numpy()[0].tolist(),
            "gradable": bool(out["gradable"].numpy()[0]),
            "ungradable_reason": out["ungradable_reason"].numpy()[0].decode(),
            "class_name": out["class_name"].numpy()[0].decode(),
            "predicted_class": int(out["predicted_class"].numpy()[0]),
        }
    json.dump(rows, open(out_path, "w"))
    """
)


def test_reloaded_savedmodel_fresh_process_exif_gate_and_border_marks(grade_export, tmp_path):
    """Done-when checks of the real-world-photo issue, through the reloaded SavedModel."""
    _, path = grade_export
    upright = synthetic_fundus(seed=3)
    files = {"upright.png": encode(upright, "PNG")}
    for o in range(2, 9):
        files[f"tagged{o}.png"] = exif_tagged_photo(upright, o, "PNG")
    jpeg6 = exif_tagged_photo(upright, 6, "JPEG", quality=90)
    files["tagged6.jpg"] = jpeg6
    # Reference for the JPEG: its own decoded pixels, turned upright by numpy, losslessly.
    files["jpeg6_upright_ref.png"] = encode(
        np.ascontiguousarray(np.rot90(tf.io.decode_jpeg(jpeg6).numpy(), -1)), "PNG"
    )
    marked = upright.copy()
    marked[4:24, 4:294] = 230  # the issue's 20x290 light strip in a border corner
    files["strip.png"] = encode(marked, "PNG")
    files["black.png"] = encode(np.zeros((480, 640, 3), np.uint8), "PNG")
    files["one_pixel.png"] = encode(np.full((1, 1, 3), 120, np.uint8), "PNG")
    files["strip_1x300.png"] = encode(np.full((1, 300, 3), 120, np.uint8), "PNG")
    for name, blob in files.items():
        (tmp_path / name).write_bytes(blob)
    out = tmp_path / "rows.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run(
        [sys.executable, "-c", _FRESH_OUTPUTS, path, str(out), *(str(tmp_path / f) for f in files)],
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    rows = {pathlib.Path(k).name: v for k, v in json.loads(out.read_text()).items()}
    ref = np.array(rows["upright.png"]["probabilities"])
    assert rows["upright.png"]["gradable"]
    for o in range(2, 9):
        delta = np.abs(np.array(rows[f"tagged{o}.png"]["probabilities"]) - ref).max()
        assert delta <= 1e-5, f"orientation {o}: max |dprob| = {delta}"
    jpeg_ref = np.array(rows["jpeg6_upright_ref.png"]["probabilities"])
    assert np.abs(np.array(rows["tagged6.jpg"]["probabilities"]) - jpeg_ref).max() <= 1e-5
    assert np.abs(np.array(rows["strip.png"]["probabilities"]) - ref).max() <= 2e-3
    black = rows["black.png"]
    assert (black["gradable"], black["ungradable_reason"]) == (False, "too_dark")
    assert black["class_name"] == "ungradable" and black["predicted_class"] == -1
    assert all(np.isnan(black["probabilities"]))
    for name in ("one_pixel.png", "strip_1x300.png"):
        assert (rows[name]["gradable"], rows[name]["ungradable_reason"]) == (False, "too_small")
        assert rows[name]["class_name"] == "ungradable"


def test_exif_check_is_sensitive(grade_export, grade_loaded):
    """Ignoring the tag (the stored, rotated pixels) moves the output far past 1e-5."""
    model, _ = grade_export
    upright = synthetic_fundus(seed=3)
    stored = np.ascontiguousarray(np.rot90(upright, 1))  # what an orientation-6 file holds
    serve = grade_loaded.signatures["serving_images"]
    a = serve(images=tf.constant(upright[None]))["probabilities"].numpy()[0]
    b = serve(images=tf.constant(stored[None]))["probabilities"].numpy()[0]
    assert np.abs(a - b).max() > 1e-4
    np.testing.assert_allclose(a, training_pipeline_probs(model, encode(upright, "PNG")), atol=1e-5)


def test_export_serves_the_spec_it_is_given(tmp_path):
    """crop="none" (an imported Hugging Face adapter's plain resize) is what serving runs."""
    model = tiny_vit_classifier(5, seed=2)
    spec = fundus.PreprocessingSpec(stored_size=IMAGE_SIZE, crop="none")
    path = export_tiny(model, tmp_path / "none", preprocessing=spec)
    loaded = tf.saved_model.load(path)
    photo = synthetic_fundus(seed=5)
    served = loaded.signatures["serving_images"](images=tf.constant(photo[None]))
    plain = fundus.to_model_input(fundus.resize_uint8(photo, IMAGE_SIZE), IMAGE_SIZE)
    expected = model(plain[tf.newaxis]).numpy()[0]
    assert np.abs(served["probabilities"].numpy()[0] - expected).max() <= 1e-5
    cropped = training_pipeline_probs(model, encode(photo, "PNG"))  # the fundus crop
    assert np.abs(expected - cropped).max() > 1e-4
    meta = json.loads(loaded.signatures["metadata"]()["metadata_json"].numpy())
    assert fundus.PreprocessingSpec.from_dict(meta["preprocessing_spec"]) == spec
    with pytest.raises(ValueError, match="contradicts"):
        export.export_saved_model(
            model,
            tmp_path / "x",
            task="grade",
            image_size=IMAGE_SIZE,
            preprocessing=spec,
            source_size=64,
        )


# ---- Transparency: composited onto black before anything else (issue: the invisible pixels
# under alpha 0 used to decide the grade) ---------------------------------------------------


def _png(array: np.ndarray) -> bytes:
    return tf.io.encode_png(tf.constant(array)).numpy()


def _rgba_cases():
    """(name, RGBA uint8/uint16 array, the opaque picture it shows on black, tolerance)."""
    photo = synthetic_fundus(240, 320, seed=3)
    disc = photo.max(axis=-1, keepdims=True) > 0
    rng = np.random.default_rng(7)
    under = {
        "black": np.zeros_like(photo),
        "white": np.full_like(photo, 255),
        "noise": rng.integers(0, 256, photo.shape, dtype=np.uint8),
    }
    cases = []
    for name, background in under.items():
        rgb = np.where(disc, photo, background)
        alpha = np.where(disc, 255, 0).astype(np.uint8)
        rgba = np.concatenate([rgb, alpha], axis=-1)
        tol = 1e-5 if name == "black" else 0.02
        cases.append((f"{name}-under-alpha0-8bit", rgba, photo, tol))
        cases.append((f"{name}-under-alpha0-16bit", rgba.astype(np.uint16) * 257, photo, 0.02))
    # Partial alpha: a soft edge and a half-transparent band over the disc.
    yy, xx = np.mgrid[0:240, 0:320]
    alpha = np.clip(255 - np.abs(xx - 160) * 2, 0, 255).astype(np.uint8)[..., np.newaxis]
    rgba = np.concatenate([np.where(disc, photo, under["noise"]), alpha], axis=-1)
    shown = np.round(np.where(disc, photo, under["noise"]) * (alpha / 255.0)).astype(np.uint8)
    cases.append(("partial-alpha-8bit", rgba, shown, 0.02))
    cases.append(("partial-alpha-16bit", rgba.astype(np.uint16) * 257, shown, 0.02))
    return cases


@pytest.mark.parametrize("case", _rgba_cases(), ids=lambda c: c[0])
def test_transparency_is_composited_onto_black(grade_loaded, case):
    """An RGBA PNG gives the probabilities of the opaque picture it shows (on black)."""
    _, rgba, shown, tol = case
    serve = grade_loaded.signatures["serving_default"]
    got = serve(image_bytes=tf.constant([_png(rgba)]))
    want = serve(image_bytes=tf.constant([_png(shown)]))
    assert bool(want["gradable"].numpy()[0]), "the opaque picture must be gradable"
    np.testing.assert_array_equal(got["gradable"].numpy(), want["gradable"].numpy())
    np.testing.assert_allclose(
        got["probabilities"].numpy(), want["probabilities"].numpy(), atol=tol, rtol=0
    )
    np.testing.assert_allclose(
        got["quality_score"].numpy(), want["quality_score"].numpy(), atol=0.02
    )


def test_grey_alpha_png_is_composited():
    """Grey + alpha (PNG colour type 4): grey tiled to RGB, then composited."""
    grey = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64, 1) % 256
    alpha = np.where(np.arange(64)[:, np.newaxis, np.newaxis] < 32, 0, 200)
    pair = np.concatenate([grey, np.broadcast_to(alpha, grey.shape)], -1).astype(np.uint8)
    got = fundus.decode_image(_png(pair)).numpy()
    want = np.round(grey * (alpha / 255.0)).astype(np.uint8)
    np.testing.assert_array_equal(got, np.repeat(want, 3, axis=-1))
