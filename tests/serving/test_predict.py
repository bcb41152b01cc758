"""`eyegazer predict` engine: one JSON line per input, a clear error per bad input."""

from __future__ import annotations

import io
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from eyegazer_keras import GRADE_NAMES
from eyegazer_keras.serving import export, predict
from tests import bombs

IMAGE_SIZE = 32


def _fundus_like(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    disc = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 <= (0.45 * height) ** 2
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    image[..., 0] = np.maximum(image[..., 0], 120)
    return np.where(disc[..., None], image, 0).astype(np.uint8)


def _encode(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3)),
            keras.layers.Rescaling(1.0 / 255.0),
            keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(5, activation="softmax"),
        ]
    )
    path = export.export_saved_model(
        model,
        tmp_path_factory.mktemp("predict") / "export",
        task="grade",
        image_size=IMAGE_SIZE,
        source_size=48,
    )
    return predict.load_exported(path)


@pytest.fixture
def files(tmp_path):
    png = _encode(_fundus_like(60, 80, 0), "PNG")
    paths = {
        "good_png": tmp_path / "eye.png",
        "good_jpg": tmp_path / "eye.jpg",
        "text": tmp_path / "notes.png",
        "truncated": tmp_path / "truncated.png",
        "empty": tmp_path / "empty.png",
        "directory": tmp_path / "a_folder",
        "missing": tmp_path / "missing.png",
    }
    paths["good_png"].write_bytes(png)
    paths["good_jpg"].write_bytes(_encode(_fundus_like(90, 120, 1), "JPEG"))
    paths["text"].write_text("patient notes, not an image\n")
    paths["truncated"].write_bytes(png[: len(png) // 2])
    paths["empty"].write_bytes(b"")
    paths["directory"].mkdir()
    return {k: str(v) for k, v in paths.items()}


def _check_good(result: dict, path: str) -> None:
    assert "error" not in result, result
    assert result["path"] == path
    assert list(result)[:4] == ["path", "probabilities", "predicted_class", "class_name"]
    assert len(result["probabilities"]) == 5
    assert sum(result["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    assert result["class_name"] == GRADE_NAMES[result["predicted_class"]]
    assert 0.0 <= result["referable_probability"] <= 1.0
    assert 0.0 <= result["expected_grade"] <= 4.0
    assert result["gradable"] is True and 0.0 <= result["quality_score"] <= 1.0


def test_every_bad_input_gets_its_own_error(exported, files):
    order = ["good_png", "text", "truncated", "empty", "good_jpg", "directory", "missing"]
    results = predict.predict_paths(exported, [files[k] for k in order])
    assert [r["path"] for r in results] == [files[k] for k in order]
    got = dict(zip(order, results, strict=True))
    _check_good(got["good_png"], files["good_png"])
    _check_good(got["good_jpg"], files["good_jpg"])
    expected_words = {
        "text": "not an image",
        "truncated": "truncated",
        "empty": "empty",
        "directory": "directory",
        "missing": "not found",
    }
    for key, words in expected_words.items():
        assert set(got[key]) == {"path", "error"}, got[key]
        assert words in got[key]["error"] and files[key] in got[key]["error"]


def test_batched_results_match_one_at_a_time(exported, files):
    paths = [files["good_png"], files["text"], files["good_jpg"], files["good_png"]]
    batched = predict.predict_paths(exported, paths, batch_size=16)  # falls back per file
    single = predict.predict_paths(exported, paths, batch_size=1)
    for a, b in zip(batched, single, strict=True):
        assert a.keys() == b.keys()
        if "error" in a:
            assert a == b
        else:
            np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=1e-6)
            assert a["predicted_class"] == b["predicted_class"]
    assert batched[0]["probabilities"] == pytest.approx(batched[3]["probabilities"], abs=1e-6)


def test_stdin(exported, files):
    with open(files["good_png"], "rb") as f:
        png = f.read()
    (good,) = predict.predict_paths(exported.path, ["-"], stdin=io.BytesIO(png))  # loads by path
    _check_good(good, "-")
    (empty,) = predict.predict_paths(exported, ["-"], stdin=io.BytesIO(b""))
    assert empty["path"] == "-" and "stdin" in empty["error"] and "no bytes" in empty["error"]
    (garbage,) = predict.predict_paths(exported, ["-"], stdin=io.BytesIO(b"GIF? no."))
    assert "stdin" in garbage["error"] and "not an image" in garbage["error"]
    (text,) = predict.predict_paths(exported, ["-"], stdin=io.StringIO("text"))
    assert "binary" in text["error"]


def test_format_prediction_lines(exported, files):
    results = predict.predict_paths(exported, [files["good_png"], files["missing"]])
    lines = predict.format_prediction_lines(results)
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    parsed = [json.loads(line) for line in lines]
    assert parsed == results
    assert list(parsed[0]) == list(results[0])


def test_load_exported_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="saved_model.pb"):
        predict.load_exported(tmp_path)
    with pytest.raises(FileNotFoundError, match="eyegazer export"):
        predict.predict_paths(tmp_path / "nowhere", ["x.png"])


def test_ungradable_photos_are_results_not_errors(exported, tmp_path, capsys):
    from eyegazer_keras import cli

    black = tmp_path / "lens_cap.png"
    black.write_bytes(_encode(np.zeros((60, 80, 3), np.uint8), "PNG"))
    dot = tmp_path / "one_pixel.png"
    dot.write_bytes(_encode(np.full((1, 1, 3), 120, np.uint8), "PNG"))
    good = tmp_path / "eye.png"
    good.write_bytes(_encode(_fundus_like(60, 80, 0), "PNG"))
    results = predict.predict_paths(exported, [str(black), str(dot), str(good)])
    for r, reason in zip(results[:2], ["too_dark", "too_small"], strict=True):
        assert "error" not in r
        assert r["gradable"] is False and r["ungradable_reason"] == reason
        assert r["class_name"] == "ungradable"
        assert r["probabilities"] is None and r["predicted_class"] is None
        assert r["referable_probability"] is None and r["expected_grade"] is None
    _check_good(results[2], str(good))
    assert results[2]["gradable"] is True and results[2]["ungradable_reason"] == ""
    # JSON lines are strict JSON (no NaN) and the CLI exits 0 for readable ungradable photos.
    for line in predict.format_prediction_lines(results):
        json.loads(line)
    code = cli.main(["predict", "--model", exported.path, str(black), str(good)])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(out) == 2
    assert json.loads(out[0])["ungradable_reason"] == "too_dark"
    code = cli.main(["predict", "--model", exported.path, str(black), str(tmp_path / "gone.png")])
    assert code == 1  # an unreadable file is still an error


def test_progress_bar_on_stderr_only_when_asked(exported, files, capsys):
    paths = [files["good_png"]] * 5
    predict.predict_paths(exported, paths, batch_size=2, progress=True)
    err = capsys.readouterr().err
    assert "5/5" in err and "image" in err
    predict.predict_paths(exported, paths, batch_size=2)
    assert capsys.readouterr().err == ""


def test_dicom_and_tiff_from_fundus_cameras(exported, tmp_path):
    """Issue 23 item 8: `predict` (and the app, through `read_input`) reads DICOM and TIFF.

    Lossless DICOM and TIFF give the prediction of the PNG of the same pixels; a camera's
    JPEG-baseline DICOM that of its JPEG frame. Broken or unusable DICOM files get one line.
    """
    from eyegazer_datasets.common import dummy_data

    image = _fundus_like(60, 80, 4)
    inputs = {
        "eye.png": _encode(image, "PNG"),
        "eye.tif": _encode(image, "TIFF"),
        "eye.dcm": dummy_data.encode_dicom(image),
        "IM000001": dummy_data.encode_dicom(image),  # no extension: found by its DICM magic
        "raw.dcm": dummy_data.encode_dicom(image, preamble=False),
        "camera.dcm": dummy_data.encode_dicom(image, jpeg=True),
        "camera.jpg": _encode(image, "JPEG"),
        "broken.dcm": dummy_data.encode_dicom(image)[:200],
        "stereo.dcm": dummy_data.encode_dicom(np.stack([image, image])),
    }
    for name, data in inputs.items():
        (tmp_path / name).write_bytes(data)
    results = predict.predict_paths(exported, [str(tmp_path / n) for n in inputs])
    got = dict(zip(inputs, results, strict=True))
    for name in ("eye.tif", "eye.dcm", "IM000001", "raw.dcm"):
        _check_good(got[name], str(tmp_path / name))
        np.testing.assert_allclose(
            got[name]["probabilities"], got["eye.png"]["probabilities"], atol=1e-6
        )
    _check_good(got["camera.dcm"], str(tmp_path / "camera.dcm"))
    assert got["camera.dcm"]["predicted_class"] in range(5)
    broken, stereo = got["broken.dcm"]["error"], got["stereo.dcm"]["error"]
    assert broken.startswith(f"{tmp_path / 'broken.dcm'}: ") and "DICOM" in broken
    assert "2 frames" in stereo and "export each photo as its own file" in stereo


def test_a_30000_square_png_is_refused_by_the_pixel_limit(exported, files, tmp_path):
    """Issue 23 item 14: said "corrupt or truncated ... re-copy the file"; now the size and
    the limit, read from the header before decoding, next to a good photo that still works."""
    bomb = tmp_path / "huge.png"
    bomb.write_bytes(bombs.png_bomb(30000, 30000))
    results = predict.predict_paths(exported, [str(bomb), files["good_png"]])
    assert results[0]["error"] == (
        f"{bomb}: image too large: its header says 30000x30000 pixels (900.0 MP), over the "
        "limit of 50 MP; refused before decoding. Send a photo of at most 50 MP (resize it)."
    )
    _check_good(results[1], files["good_png"])
    # From stdin too, and from the export's own check (an export call without predict's).
    stdin = io.BytesIO(bombs.jpeg_bomb())
    assert predict.predict_paths(exported, ["-"], stdin=stdin)[0]["error"].startswith(
        "stdin: image too large: its header says 20000x20000 pixels (400.0 MP)"
    )
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        exported.predict_bytes([bombs.gif_bomb()])
    assert predict.decode_error("eye.gif", info.value).startswith(
        "eye.gif: image too large: its header says 20000x20000 pixels"
    )


def test_symlink_loop_and_broken_link_say_so(exported, tmp_path):
    """Issue 23 item 14: a symbolic link loop said "file not found"."""
    loop_a, loop_b, broken = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "gone.png"
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    broken.symlink_to(tmp_path / "nowhere.png")
    results = predict.predict_paths(exported, [str(loop_a), str(broken)])
    assert results[0]["error"].startswith(f"{loop_a}: symbolic link loop"), results[0]
    assert results[1]["error"] == (
        f"{broken}: broken symbolic link (it points to {str(tmp_path / 'nowhere.png')!r}, "
        "not there)."
    )


def test_a_file_over_the_byte_limit_is_not_read(exported, tmp_path):
    big = tmp_path / "big.jpg"
    with open(big, "wb") as f:
        f.truncate(predict.MAX_FILE_BYTES + 1)  # sparse: nothing is written
    error = predict.predict_paths(exported, [str(big)])[0]["error"]
    assert error == (
        f"{big}: {predict.MAX_FILE_BYTES + 1} bytes, over the limit of {predict.MAX_FILE_BYTES} "
        "bytes (400 MB) for an image file; send a smaller photo."
    )
