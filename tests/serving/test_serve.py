"""`eyegazer serve`: KServe's ModelServer on a tiny ViT export, hit over HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import psutil
import pytest
import tensorflow as tf
from kserve.errors import InvalidInput

from eyegazer_keras.fundus import formats
from eyegazer_keras.serving import predict, serve, signatures
from tests import bombs
from tests.serving.test_export import IMAGE_SIZE, encode, synthetic_fundus, tiny_vit_classifier
from tests.test_case import export_tiny

NAME = "eyegazer"
STARTUP_S = 240
MAX_BODY_MB = 16  # the test server's limits (the defaults are 32 MiB and 16)
MAX_INSTANCES = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, body=None, content_type: str = "application/json", timeout: float = 120):
    """(status, parsed JSON) of a GET (body None) or POST; HTTP errors are returned, not raised."""
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return export_tiny(tiny_vit_classifier(5), tmp_path_factory.mktemp("serve") / "export")


@pytest.fixture(scope="module")
def photos():
    return [
        encode(synthetic_fundus(480, 640, seed=0), "JPEG"),
        encode(synthetic_fundus(300, 300, seed=1), "PNG"),
        encode(synthetic_fundus(200, 360, seed=2), "JPEG"),
    ]


@pytest.fixture(scope="module")
def server_process(model_dir, tmp_path_factory):
    """`(base URL, process)` of `eyegazer serve` in its own process; stopped (SIGTERM) at the
    end of the module. Default host; limits `MAX_BODY_MB`, `MAX_INSTANCES`."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve_log") / "server.log"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [sys.executable, "-m", "eyegazer_keras.cli", "serve", "--model", model_dir]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd
            + ["--name", NAME, "--port", str(port), "--max-body-mb", str(MAX_BODY_MB)]
            + ["--max-instances", str(MAX_INSTANCES)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if http(f"{base}/v1/models/{NAME}", timeout=5)[0] == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server not ready after {STARTUP_S} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    yield base, proc
    proc.terminate()
    try:
        assert proc.wait(timeout=60) is not None
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("server did not stop within 60 s of SIGTERM")


@pytest.fixture(scope="module")
def server(server_process):
    return server_process[0]


def test_health_and_readiness(server):
    assert http(f"{server}/") == (200, {"status": "alive"})
    assert http(f"{server}/v1/models/{NAME}") == (200, {"name": NAME, "ready": True})
    assert http(f"{server}/v2/health/ready") == (200, {"ready": True})
    assert http(f"{server}/v1/models")[1] == {"models": [NAME]}
    status, body = http(f"{server}/v1/models/other:predict", {"instances": []})
    assert status == 404, body


def test_same_outputs_as_the_savedmodel(server, model_dir, photos):
    expected = predict.load_exported(model_dir).predict_bytes(photos)
    body = {"instances": [{"b64": b64(photos[0])}, {"image_bytes": {"b64": b64(photos[1])}}]}
    body["instances"].append({"b64": b64(photos[2])})
    status, out = http(f"{server}/v1/models/{NAME}:predict", body)
    assert status == 200, out
    rows = out["predictions"]
    assert len(rows) == 3
    assert set(rows[0]) == set(signatures.OUTPUTS["grade"])
    got = np.array([r["probabilities"] for r in rows])
    np.testing.assert_allclose(got, expected["probabilities"], atol=1e-6)
    assert [r["class_name"] for r in rows] == [c.decode() for c in expected["class_name"]]
    assert [r["predicted_class"] for r in rows] == expected["predicted_class"].tolist()
    np.testing.assert_allclose(
        [r["referable_probability"] for r in rows], expected["referable_probability"], atol=1e-6
    )
    # One instance per request gives the same numbers as in a batch.
    status, single = http(
        f"{server}/v1/models/{NAME}:predict", {"instances": body["instances"][1:2]}
    )
    assert status == 200
    np.testing.assert_allclose(single["predictions"][0]["probabilities"], got[1], atol=1e-5)


GARBAGE = {
    "not an image": ({"instances": [{"b64": b64(b"patient notes, not an image")}]}, "not an image"),
    "not base64": ({"instances": [{"b64": "*** not base64 ***"}]}, "not valid base64"),
    "wrong field": ({"instances": [{"image": "abc"}]}, 'expected {"b64"'),
    "no instances": ({"inputs": [1, 2]}, '"instances" list'),
    "empty instances": ({"instances": []}, "is empty"),
    "b64 not a string": ({"instances": [{"b64": 12}]}, "must be a string"),
    "other signature": (
        {"signature_name": "serving_images", "instances": [{"b64": "AA=="}]},
        "not served",
    ),
    "not JSON": (b"\x89PNG garbage", "Unrecognized request format"),
}


@pytest.mark.parametrize("case", sorted(GARBAGE))
def test_garbage_gets_400_and_the_server_keeps_serving(server, photos, case):
    body, fragment = GARBAGE[case]
    status, out = http(f"{server}/v1/models/{NAME}:predict", body)
    assert status == 400, out
    assert fragment in out["error"] and "\n" not in out["error"], out
    ok, rows = http(f"{server}/v1/models/{NAME}:predict", {"instances": [{"b64": b64(photos[1])}]})
    assert ok == 200 and len(rows["predictions"]) == 1


def test_one_bad_instance_is_named(server, photos):
    png = photos[1]
    truncated = png[: len(png) // 2]
    body = {"instances": [{"b64": b64(png)}, {"b64": b64(truncated)}]}
    status, out = http(f"{server}/v1/models/{NAME}:predict", body)
    assert status == 400 and out["error"].startswith("instances[1]: "), out


def test_bounded_load(server, photos, capsys):
    """8 concurrent clients x 25 requests (one photo each): no errors; latency printed."""
    clients, per_client = 8, 25
    url = f"{server}/v1/models/{NAME}:predict"
    body = json.dumps({"instances": [{"b64": b64(photos[2])}]}).encode()

    def client(_):
        out = []
        for _ in range(per_client):
            t = time.perf_counter()
            status, reply = http(url, body)
            out.append((status, len(reply.get("predictions", [])), time.perf_counter() - t))
        return out

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(client, range(clients)) for r in rs]
    wall = time.perf_counter() - start
    assert len(results) == clients * per_client
    errors = [r for r in results if r[:2] != (200, 1)]
    assert not errors, errors[:3]
    latency = np.array([r[2] for r in results]) * 1e3
    with capsys.disabled():
        print(
            f"\nload test: {clients} clients x {per_client} requests, 0 errors, "
            f"p50 {np.percentile(latency, 50):.0f} ms, p95 {np.percentile(latency, 95):.0f} ms, "
            f"{len(results) / wall:.1f} requests/s (tiny ViT {IMAGE_SIZE} px, shared CPU)"
        )


@pytest.mark.parametrize(
    "payload",
    [None, [], "x", {"instances": "abc"}, {"instances": [None]}, {"instances": [{"b64": ""}]}],
)
def test_decode_instances_rejects_in_one_line(payload):
    with pytest.raises(InvalidInput) as info:
        serve.decode_instances(payload)
    assert "\n" not in str(info.value)


def test_decode_instances_takes_both_forms():
    data = b"\x89PNG\r\n"
    forms = [{"b64": b64(data)}, {"image_bytes": {"b64": b64(data)}}]
    assert serve.decode_instances({"instances": forms}) == [data, data]


def test_cli_serve_help_and_bad_model(tmp_path):
    run = [sys.executable, "-m", "eyegazer_keras.cli", "serve"]
    out = subprocess.run(run + ["--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--name" in out.stdout and "--port" in out.stdout
    help_text = " ".join(out.stdout.split())
    for flag in ("--host", "--max-body-mb", "--max-instances", "/v2/models/NAME/infer"):
        assert flag in help_text, help_text
    # The defaults --help shows are serve's own (the CLI does not import kserve for --help).
    assert "(default: 127.0.0.1" in help_text and serve.DEFAULT_HOST == "127.0.0.1"
    assert f"(default: {serve.DEFAULT_MAX_BODY_BYTES / 1e6:.1f})" in help_text
    assert f"(default: {serve.DEFAULT_MAX_INSTANCES})" in help_text
    assert "50 MP" in help_text
    out = subprocess.run(
        run + ["--model", str(tmp_path / "missing"), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "no saved_model.pb" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("kind", ["TIFF", "DICOM"])
def test_camera_formats_are_refused_with_what_to_send(kind):
    """Issue 23 item 8: the served model reads no TIFF / DICOM; the 400 says to send JPEG/PNG."""
    from eyegazer_datasets.common import dummy_data

    image = dummy_data.fundus_like(3)
    data = dummy_data.encode(image, "TIFF") if kind == "TIFF" else dummy_data.encode_dicom(image)
    good = {"b64": b64(dummy_data.encode(image))}
    with pytest.raises(InvalidInput) as info:
        serve.decode_instances({"instances": [good, {"b64": b64(data)}]})
    message = str(info.value)
    assert message.startswith(f"instances[1]: a {kind} file") and "send JPEG or PNG" in message
    assert "\n" not in message
    assert formats.serving_refusal(dummy_data.encode(image), "x") is None


def test_listens_on_loopback_only_by_default(server_process):
    """Issue 23: `serve` listened on 0.0.0.0; by default it is reachable from this machine only."""
    _, proc = server_process
    process = psutil.Process(proc.pid)
    sockets = getattr(process, "net_connections", None) or process.connections  # psutil < 6
    listening = [c.laddr for c in sockets("inet") if c.status == "LISTEN"]
    assert listening and {a.ip for a in listening} == {"127.0.0.1"}, listening


def _rss(proc) -> int:
    return psutil.Process(proc.pid).memory_info().rss


def test_image_bombs_get_400_from_the_header(server_process, photos):
    """Issue 23 item 1: a small file whose header claims >= 200 MP gets HTTP 400 with a one-line
    error naming the size and the limit, and the server's memory does not grow by the image."""
    base, proc = server_process
    url = f"{base}/v1/models/{NAME}:predict"
    assert http(url, {"instances": [{"b64": b64(photos[1])}]})[0] == 200  # warm
    before = _rss(proc)
    for kind, make in sorted(bombs.BOMBS.items()):
        data = make()
        assert len(data) < 2_000_000
        status, out = http(url, {"instances": [{"b64": b64(photos[1])}, {"b64": b64(data)}]})
        assert status == 400, (kind, out)
        error = out["error"]
        assert error.startswith("instances[1]: image too large: its header says "), error
        assert "over the limit of 50 MP" in error and "\n" not in error, error
    grown = (_rss(proc) - before) / 1e6
    assert grown < 300, f"server RSS grew by {grown:.0f} MB"
    ok, rows = http(url, {"instances": [{"b64": b64(photos[1])}]})
    assert ok == 200 and len(rows["predictions"]) == 1


def test_a_12_megapixel_photo_still_works(server):
    photo = encode(synthetic_fundus(3000, 4000, seed=3), "JPEG")
    status, out = http(f"{server}/v1/models/{NAME}:predict", {"instances": [{"b64": b64(photo)}]})
    assert status == 200, out
    assert len(out["predictions"][0]["probabilities"]) == 5


def test_body_over_the_limit_gets_413(server, photos):
    body = {"instances": [{"b64": "A" * (MAX_BODY_MB * 1_000_000)}]}
    status, out = http(f"{server}/v1/models/{NAME}:predict", body)
    assert status == 413, out
    assert f"over the limit of {MAX_BODY_MB} MB" in out["error"] and "\n" not in out["error"]
    ok, _ = http(f"{server}/v1/models/{NAME}:predict", {"instances": [{"b64": b64(photos[1])}]})
    assert ok == 200


def test_too_many_instances_get_400(server, photos):
    body = {"instances": [{"b64": b64(photos[1])}] * (MAX_INSTANCES + 1)}
    status, out = http(f"{server}/v1/models/{NAME}:predict", body)
    assert status == 400, out
    assert (
        f"{MAX_INSTANCES + 1} instances in one request, over the limit of {MAX_INSTANCES}"
        in (out["error"])
    )
    status, out = http(f"{server}/v1/models/{NAME}:predict", {"instances": body["instances"][1:]})
    assert status == 200 and len(out["predictions"]) == MAX_INSTANCES


def v2_body(photos) -> dict:
    data = [b64(p) for p in photos]
    return {
        "inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [len(data)], "data": data}]
    }


def test_v2_infer_matches_v1(server, photos):
    """Issue 23 item 8: the V2 Open Inference Protocol, as KServe's image examples send it."""
    status, v1 = http(
        f"{server}/v1/models/{NAME}:predict", {"instances": [{"b64": b64(p)} for p in photos]}
    )
    assert status == 200, v1
    status, v2 = http(f"{server}/v2/models/{NAME}/infer", v2_body(photos))
    assert status == 200, v2
    outputs = {o["name"]: o for o in v2["outputs"]}
    assert set(outputs) == set(signatures.OUTPUTS["grade"])
    rows = v1["predictions"]
    for name, out in outputs.items():
        expected = [r[name] for r in rows]
        got = np.reshape(out["data"], out["shape"]).tolist()
        if out["datatype"] == "FP32":
            np.testing.assert_allclose(got, expected, atol=1e-6, err_msg=name)
        else:
            assert got == expected, name
    assert outputs["probabilities"]["shape"] == [3, 5]
    assert outputs["probabilities"]["datatype"] == "FP32"
    assert outputs["gradable"]["datatype"] == "BOOL"
    assert outputs["class_name"]["datatype"] == "BYTES"
    # The quality gate's continuous score travels in both protocols (issue 22).
    assert outputs["quality_score"]["datatype"] == "FP32"
    assert all(0.0 <= r["quality_score"] <= 1.0 for r in rows)


def test_v2_metadata_describes_the_real_inputs_and_outputs(server):
    status, meta = http(f"{server}/v2/models/{NAME}")
    assert status == 200, meta
    assert meta["inputs"] == [{"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}]
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}
    assert set(outputs) == set(signatures.OUTPUTS["grade"])
    assert outputs["probabilities"] == ("FP32", [-1, 5])
    assert outputs["predicted_class"] == ("INT64", [-1])


V2_GARBAGE = {
    "wrong input name": (
        {"inputs": [{"name": "input-0", "datatype": "BYTES", "shape": [1], "data": ["AA=="]}]},
        "expected one input named 'image_bytes'",
    ),
    "wrong datatype": (
        {"inputs": [{"name": "image_bytes", "datatype": "FP32", "shape": [1], "data": [1.0]}]},
        "expected 'BYTES'",
    ),
    "not base64": (
        {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": ["*"]}]},
        "image_bytes[0]: is not valid base64",
    ),
    "bomb": (v2_body([bombs.png_bomb()]), "image_bytes[0]: image too large"),
}


@pytest.mark.parametrize("case", sorted(V2_GARBAGE))
def test_v2_bad_requests_get_400_naming_the_fix(server, case):
    body, fragment = V2_GARBAGE[case]
    status, out = http(f"{server}/v2/models/{NAME}/infer", body)
    assert status == 400, out
    assert fragment in out["error"] and "\n" not in out["error"], out
    assert "Content-Type" not in out["error"]


def test_v2_too_many_photos(server, photos):
    status, out = http(
        f"{server}/v2/models/{NAME}/infer", v2_body(photos[:1] * (MAX_INSTANCES + 1))
    )
    assert status == 400 and "over the limit of" in out["error"], out


def test_the_export_itself_refuses_bombs(model_dir):
    """The limit is inside the SavedModel (TF Serving has no Python): its own call refuses."""
    exported = predict.load_exported(model_dir)
    for kind, make in sorted(bombs.BOMBS.items()):
        with pytest.raises(tf.errors.InvalidArgumentError) as info:
            exported.predict_bytes([make()])
        message = predict.decode_error(f"{kind}.bin", info.value)
        assert message.startswith(f"{kind}.bin: image too large: its header says "), message
        assert "\n" not in message
