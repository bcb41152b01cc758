"""`eyegazer app`: the Gradio page on tiny exports, over gradio_client and in a real browser."""

from __future__ import annotations

import os
import shutil

# No telemetry or version checks from Gradio or gradio_client: tests talk to 127.0.0.1 only.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gradio as gr  # noqa: E402
import httpx  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from PIL import Image  # noqa: E402

from eyegazer_keras import GRADE_NAMES, NOT_A_MEDICAL_DEVICE  # noqa: E402
from eyegazer_keras.evaluation import explain  # noqa: E402
from eyegazer_keras.serving import app, export, predict, signatures  # noqa: E402
from tests import bombs  # noqa: E402
from tests.serving.test_export import (  # noqa: E402
    IMAGE_SIZE,
    SOURCE_SIZE,
    encode,
    synthetic_fundus,
    tiny_vit_classifier,
)
from tests.serving.test_serve import free_port  # noqa: E402
from tests.test_case import export_tiny  # noqa: E402

CHROMEDRIVER = "/usr/bin/chromedriver"  # Debian's chromium-driver (.ci/run installs it)
CHROMIUM = "/usr/bin/chromium"


def tiny_regressor(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3)),
            keras.layers.Rescaling(1.0 / 255.0),
            keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(1),
        ]
    )


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("app_exports")
    kwargs = dict(image_size=IMAGE_SIZE, source_size=SOURCE_SIZE)
    return {
        "grade": export.export_saved_model(
            tiny_vit_classifier(5), root / "grade", task="grade", **kwargs
        ),
        "binary": export.export_saved_model(
            tiny_vit_classifier(2, seed=1), root / "binary", task="binary", **kwargs
        ),
        "regression": export.export_saved_model(
            tiny_regressor(), root / "regression", task="regression", **kwargs
        ),
    }


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photos") / "eye.jpg"
    path.write_bytes(encode(synthetic_fundus(480, 640, seed=3), "JPEG"))
    return str(path)


def _launch(model_dir, examples=False):
    return app.launch(model_dir, host="127.0.0.1", port=free_port(), block=False, examples=examples)


def _client(demo) -> Client:
    return Client(demo.local_url, verbose=False, analytics_enabled=False)


@pytest.mark.parametrize("task", ["grade", "binary", "regression"])
def test_client_gets_the_savedmodels_outputs(exports, photo, task):
    expected = predict.load_exported(exports[task]).predict_bytes([open(photo, "rb").read()])
    demo = _launch(exports[task])
    try:
        client = _client(demo)
        seen, label, summary, verdict, heat = client.predict(
            handle_file(photo), api_name=f"/{app.API_NAME}"
        )
    finally:
        demo.close()
    exported = predict.load_exported(exports[task])
    want_seen = app.model_input_image(exported, open(photo, "rb").read())
    assert want_seen.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_array_equal(np.asarray(Image.open(seen)), app._enlarged(want_seen))
    # Every export has the quality gate's outputs; these have no explain signature.
    assert verdict.startswith("**Gradable photo**") and heat is None
    assert "Quality score 0." in verdict or "Quality score 1.00" in verdict  # real exports
    want_name = expected["class_name"][0].decode()
    assert label["label"] == want_name
    if task == "regression":
        assert f"{expected['grade'][0]:.2f}" in summary and "cut-offs 0.50, 1.50" in summary
        return
    got = {c["label"]: c["confidence"] for c in label["confidences"]}
    names = GRADE_NAMES if task == "grade" else ("no_dr", "dr")
    np.testing.assert_allclose(
        [got[n] for n in names], expected["probabilities"][0], rtol=0, atol=1e-6
    )
    key = "referable_probability" if task == "grade" else "dr_probability"
    assert f"{expected[key][0]:.3f}" in summary
    assert "Decision** at threshold 0.50 (default" in summary


def test_bad_upload_is_a_readable_error_and_the_app_keeps_running(exports, photo, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("patient notes, not an image\n")
    png = encode(synthetic_fundus(200, 260, seed=4), "PNG")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(png[: len(png) // 2])
    demo = _launch(exports["grade"])
    try:
        client = _client(demo)
        for path, message in [
            (notes, "notes.png: not an image (unknown file format); expected a JPEG or PNG file."),
            (truncated, "truncated.png: corrupt or truncated image"),
        ]:
            with pytest.raises(Exception, match=r"\S") as info:
                client.predict(handle_file(str(path)), api_name=f"/{app.API_NAME}")
            assert message in str(info.value) and "\n" not in str(info.value).strip()
        label = client.predict(handle_file(photo), api_name=f"/{app.API_NAME}")[1]
        assert label["label"] in GRADE_NAMES
    finally:
        demo.close()


def _components(demo) -> dict:
    return {c["props"].get("elem_id"): c["props"] for c in demo.config["components"]}


def test_page_always_shows_the_notice_and_hides_what_the_export_lacks(exports):
    exported = predict.load_exported(exports["grade"])
    # Every export now has the quality gate's outputs; this one has no explain signature.
    assert app.has_gradability(exported) and app.explanation_signature(exported) is None
    demo = app.build_app(exported)
    props = _components(demo)
    assert props["gradability"]["visible"] is True
    assert props["explanation"]["visible"] is False
    texts = [c["props"].get("value") or "" for c in demo.config["components"]]
    assert any(NOT_A_MEDICAL_DEVICE in str(t) for t in texts)


def test_summary_gives_the_cutoff_grade_and_the_most_probable_one():
    meta = {"task": "grade", "class_names": list(GRADE_NAMES), "cutoffs": [0.3, 1.0, 2.0, 3.0]}
    row = {
        "predicted_class": 0,
        "class_name": "no_dr",
        "expected_grade": 1.2,
        "predicted_grade": 2,
        "referable_probability": 0.4,
    }
    text = app._summary(row, meta)
    assert (
        "**Predicted grade** (expected grade, cut-offs 0.30, 1.00, 2.00, 3.00): 2 moderate" in text
    )
    assert "**Most probable grade**: 0 no_dr" in text
    assert "rounded): 2 moderate" in app._summary(row, {**meta, "cutoffs": None})
    old_export = {k: v for k, v in row.items() if k != "predicted_grade"}
    assert "**Predicted grade**: 0 no_dr" in app._summary(old_export, meta)


def test_decision_threshold_comes_from_the_metadata():
    assert app.decision_threshold({}, "grade") == (0.5, "default: the export records no threshold")
    assert app.decision_threshold({"referable_threshold": 0.3}, "grade")[0] == 0.3
    assert app.decision_threshold({"threshold": {"threshold": 0.2}}, "binary")[0] == 0.2


def test_examples_are_real_photos_the_export_grades(exports, tmp_path):
    paths = app.write_examples(tmp_path / "examples")
    assert len(paths) == 4 and any("retina" in p for p in paths)
    results = predict.predict_paths(exports["grade"], paths)
    assert all("error" not in r for r in results), results


@pytest.mark.slow
@pytest.mark.skipif(
    not (os.path.exists(CHROMEDRIVER) and os.path.exists(CHROMIUM)),
    reason="needs Debian chromium + chromium-driver (apt-get install chromium chromium-driver)",
)
def test_real_browser_uploads_clicks_and_reads_the_grade(exports, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    # Upload a synthetic photo with lesions (the app's grade-2 example) from its own folder.
    photo = next(p for p in app.write_examples(tmp_path / "upload") if "grade2" in p)
    expected = predict.predict_paths(exports["grade"], [photo])[0]
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
        # nothing but 127.0.0.1: no update checks, sync, field trials or safe browsing
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--no-first-run",
        "--no-default-browser-check",
        "--no-proxy-server",
    ):
        options.add_argument(flag)
    demo = _launch(exports["grade"], examples=True)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(demo.local_url)
        wait = WebDriverWait(driver, 120)
        upload = wait.until(
            ec.presence_of_element_located((By.CSS_SELECTOR, "#photo input[type=file]"))
        )
        upload.send_keys(photo)
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#photo img")))
        driver.find_element(By.ID, "grade-button").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "grade-summary"), "Expected grade"))
        label = driver.find_element(By.ID, "grade-label").text
        summary = driver.find_element(By.ID, "grade-summary").text
        assert expected["class_name"] in label
        assert f"{expected['referable_probability']:.3f}" in summary
        assert "Not a medical device" in driver.find_element(By.TAG_NAME, "body").text
        shot = tmp_path / "app.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        target = os.environ.get("EYEGAZER_SCREENSHOT")  # e.g. docs/app_screenshot.png
        if target:
            shutil.copyfile(shot, target)
    finally:
        driver.quit()
        demo.close()


@pytest.fixture(scope="module")
def export_with_gate_and_map(tmp_path_factory):
    """An export whose `serving_default` also returns `gradable`/`ungradable_reason` and that
    has a `serving_explain` signature, as the quality-gate and explanation issues add them.

    Written with the same `keras.export.ExportArchive` calls as `export.export_saved_model`, so
    `predict.load_exported` loads it; the gate here is a plain brightness test.
    """
    import json

    import tensorflow as tf

    from eyegazer_keras import fundus

    model = tiny_vit_classifier(5, seed=2)
    path = str(tmp_path_factory.mktemp("gated") / "export")
    plain = export_tiny(model, path + "_plain")
    meta = json.dumps(predict.load_exported(plain).metadata)
    spec = tf.TensorSpec([IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32)

    def model_input(image_bytes):
        return tf.map_fn(
            lambda b: fundus.serving_transform(b, SOURCE_SIZE, IMAGE_SIZE),
            image_bytes,
            fn_output_signature=spec,
        )

    def serve_bytes(image_bytes):
        x = model_input(image_bytes)
        probs = model(x, training=False)
        dark = tf.reduce_max(x, axis=[1, 2, 3]) <= 10.0
        return {
            "probabilities": probs,
            "predicted_class": tf.argmax(probs, -1),
            "class_name": tf.gather(tf.constant(list(GRADE_NAMES)), tf.argmax(probs, -1)),
            "expected_grade": tf.reduce_sum(probs * tf.range(5, dtype=tf.float32), -1),
            "referable_probability": tf.reduce_sum(probs[:, 2:], -1),
            "gradable": tf.logical_not(dark),
            "ungradable_reason": tf.where(dark, "too_dark", ""),
        }

    def serve_explain(image_bytes):
        x = model_input(image_bytes)
        return {"saliency_map": tf.reduce_mean(x, axis=-1) / 255.0}  # found by its shape

    archive = keras.export.ExportArchive()
    archive.track(model)
    string_in = [tf.TensorSpec([None], tf.string, name=signatures.BYTES_INPUT)]
    archive.add_endpoint(signatures.BYTES_SIGNATURE, serve_bytes, input_signature=string_in)
    archive.add_endpoint("serving_explain", serve_explain, input_signature=string_in)
    archive.add_endpoint(
        signatures.METADATA_SIGNATURE,
        lambda: {signatures.METADATA_OUTPUT: tf.constant(meta)},
        input_signature=[],
    )
    archive.write_out(path, verbose=False)
    return path


def test_real_explain_export_gets_the_overlay(exports, photo, tmp_path):
    from eyegazer_keras.models import vit_lora
    from tests.test_case import TINY_VIT

    keras.utils.set_random_seed(0)
    model = vit_lora.build_vit_classifier(
        "config", num_classes=5, image_size=IMAGE_SIZE, backbone_config=TINY_VIT, lora_rank=2
    )
    path = export_tiny(model, tmp_path / "explain", explain_method="attention_rollout")
    exported = predict.load_exported(path)
    assert app.explanation_signature(exported) == signatures.EXPLAIN_SIGNATURE
    data = open(photo, "rb").read()
    want = exported.loaded.signatures[signatures.EXPLAIN_SIGNATURE](
        **{signatures.BYTES_INPUT: [data]}
    )[signatures.EXPLANATION_OUTPUT].numpy()[0]
    seen = app.model_input_image(exported, data)
    demo = _launch(path)
    try:
        heat = _client(demo).predict(handle_file(photo), api_name=f"/{app.API_NAME}")[4]
    finally:
        demo.close()
    np.testing.assert_array_equal(
        np.asarray(Image.open(heat)), app._enlarged(explain.overlay(seen, want))
    )


def test_gradability_and_overlay_show_when_the_export_has_them(
    export_with_gate_and_map, photo, tmp_path
):
    exported = predict.load_exported(export_with_gate_and_map)
    assert app.has_gradability(exported)
    assert app.explanation_signature(exported) == "serving_explain"
    props = _components(app.build_app(exported))
    assert props["gradability"]["visible"] is True and props["explanation"]["visible"] is True
    black = tmp_path / "lens_cap.png"
    black.write_bytes(encode(np.zeros((200, 260, 3), np.uint8), "PNG"))
    demo = _launch(export_with_gate_and_map)
    try:
        client = _client(demo)
        _, _, _, verdict, heat = client.predict(handle_file(photo), api_name=f"/{app.API_NAME}")
        assert verdict.startswith("**Gradable photo**")
        assert "Quality score" not in verdict  # this hand-made export's gate has no score
        assert np.asarray(Image.open(heat)).shape == (224, 224, 3)
        _, label, summary, verdict, _ = client.predict(
            handle_file(str(black)), api_name=f"/{app.API_NAME}"
        )
        assert "**Ungradable photo** (`too_dark`)" in verdict
        # Not graded: no probabilities, no decision (predict's rows hold nulls).
        assert not (label or {}).get("confidences")
        assert "No grade" in summary and "Decision" not in summary
    finally:
        demo.close()


def test_dicom_and_tiff_uploads_are_graded_like_their_png(exports, tmp_path):
    """Issue 23 item 8: the app reads a camera's DICOM (and TIFF) upload over its API."""
    from eyegazer_datasets.common import dummy_data

    image = synthetic_fundus(240, 320, seed=5)
    files = {
        "eye.png": encode(image, "PNG"),
        "eye.dcm": dummy_data.encode_dicom(image),
        "eye.tif": dummy_data.encode(image, "TIFF"),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    demo = _launch(exports["grade"])
    try:
        client = _client(demo)
        labels = {
            name: client.predict(handle_file(str(tmp_path / name)), api_name=f"/{app.API_NAME}")[1]
            for name in files
        }
    finally:
        demo.close()
    want = {c["label"]: c["confidence"] for c in labels["eye.png"]["confidences"]}
    for name in ("eye.dcm", "eye.tif"):
        got = {c["label"]: c["confidence"] for c in labels[name]["confidences"]}
        assert got.keys() == want.keys()
        np.testing.assert_allclose([got[k] for k in want], list(want.values()), atol=1e-6)


def test_image_bomb_and_oversized_upload_are_refused_in_one_line(exports, photo, tmp_path):
    """Issue 23 items 2 and 14: a 30000x30000 PNG header is refused by the pixel limit (not
    "corrupt or truncated") before decoding; an upload over the size limit is refused."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bombs.png_bomb(30000, 30000))
    big = tmp_path / "big.png"
    big.write_bytes(
        encode(np.random.default_rng(0).integers(0, 255, (300, 300, 3), np.uint8), "PNG")
    )
    assert big.stat().st_size > 200_000
    demo = app.launch(
        exports["grade"],
        host="127.0.0.1",
        port=free_port(),
        block=False,
        examples=False,
        max_upload_bytes=200_000,
    )
    try:
        client = _client(demo)
        with pytest.raises(Exception, match=r"\S") as info:
            client.predict(handle_file(str(bomb)), api_name=f"/{app.API_NAME}")
        message = str(info.value).strip()
        assert "bomb.png: image too large: its header says 30000x30000 pixels" in message
        assert "over the limit of 50 MP" in message and "\n" not in message
        assert "corrupt" not in message
        with pytest.raises(Exception, match=r"\S") as info:
            client.predict(handle_file(str(big)), api_name=f"/{app.API_NAME}")
        # gradio_client refuses by the limit the server advertises; the server's own upload
        # route refuses too (a client that ignores the advertised limit).
        assert "exceeds the maximum file size of 200000 bytes" in str(info.value), info.value
        with open(big, "rb") as f:
            reply = httpx.post(f"{demo.local_url}gradio_api/upload", files={"files": f})
        assert reply.status_code == 413, reply.text
        assert "File size exceeded maximum allowed size of 200000 bytes" in reply.text
        label = client.predict(handle_file(photo), api_name=f"/{app.API_NAME}")[1]
        assert label["label"] in GRADE_NAMES
    finally:
        demo.close()


def test_upload_limit_also_holds_for_files_given_by_path(exports, tmp_path):
    grade = app._grade_function(predict.load_exported(exports["grade"]), max_upload_bytes=1000)
    path = tmp_path / "eye.png"
    path.write_bytes(encode(synthetic_fundus(200, 260, seed=4), "PNG"))
    with pytest.raises(gr.Error, match=r"eye.png: .* MB, over the upload limit of 0.001 MB"):
        grade({"path": str(path), "orig_name": "eye.png"})


def test_filedata_with_url_only_is_a_clear_error(exports):
    """Issue 23 item 15: the API page advertises FileData's `url`; the app does not fetch it."""
    grade = app._grade_function(predict.load_exported(exports["grade"]), 10**8)
    payload = {
        "path": None,
        "url": "https://example.org/eye.jpg",
        "meta": {"_type": "gradio.FileData"},
    }
    with pytest.raises(gr.Error) as info:
        grade(payload)
    message = str(info.value.message)
    assert "no uploaded file" in message and "does not fetch URLs" in message, message
    assert "['meta', 'url']" in message and "\n" not in message
