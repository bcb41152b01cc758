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
import pytest
from kserve.errors import InvalidInput

from eyegazer_keras import predict, serve, signatures
from eyegazer_keras.fundus import formats
from tests.test_case import export_tiny
from tests.test_export import IMAGE_SIZE, encode, synthetic_fundus, tiny_vit_classifier

NAME = "eyegazer"
STARTUP_S = 240


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
def server(model_dir, tmp_path_factory):
    """`eyegazer serve` in its own process; stopped (SIGTERM) at the end of the module."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve_log") / "server.log"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [sys.executable, "-m", "eyegazer_keras.cli", "serve", "--model", model_dir]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd + ["--name", NAME, "--port", str(port)],
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
    yield base
    proc.terminate()
    try:
        assert proc.wait(timeout=60) is not None
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("server did not stop within 60 s of SIGTERM")


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
