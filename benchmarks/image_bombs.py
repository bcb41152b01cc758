"""Image bombs against a running `eyegazer serve`: status, time and server memory per format.

Starts `eyegazer serve` (127.0.0.1, a tiny export) in its own process and sends, one request
each, a PNG, JPEG, GIF and WebP under 2 MB on disk whose header claims >= 200 MP (the PNG is a
complete, valid 20000x20000 deflate stream), then a generated 12 MP JPEG photo. Prints, per
request, the HTTP status, the wall time and the growth of the server's resident memory (psutil
RSS, before -> after). With `--unguarded` it also decodes the PNG bomb with
`tf.io.decode_image` directly (no header check, what the server did before issue 23) in a
fresh process and prints its time and peak RSS.

    python benchmarks/image_bombs.py [--unguarded]

Expected: HTTP 400 for each bomb in well under a second, RSS growth of a few MB; the 12 MP
photo HTTP 200.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import bombs  # noqa: E402

UNGUARDED = r"""
import resource, sys, time
import tensorflow as tf
data = open(sys.argv[1], "rb").read()
start = time.perf_counter()
try:
    shape = tf.io.decode_image(data, channels=3, expand_animations=False).shape
    outcome = f"decoded {shape}"
except Exception as e:
    outcome = type(e).__name__
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
print(f"{outcome} in {time.perf_counter() - start:.2f} s, peak RSS {peak:.0f} MB")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, data: bytes) -> tuple[int, str, float]:
    body = json.dumps({"instances": [{"b64": base64.b64encode(data).decode()}]}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=600) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    return status, text, time.perf_counter() - start


def _export(folder: str) -> str:
    import keras

    from eyegazer_keras.serving import export

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Rescaling(1.0 / 255.0),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(5, activation="softmax"),
        ]
    )
    path = os.path.join(folder, "export")
    return export.export_saved_model(model, path, task="grade", image_size=32, source_size=64)


def _photo_12mp() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:3000, 0:4000]
    image = np.zeros((3000, 4000, 3), np.uint8)
    disc = (yy - 1500) ** 2 + (xx - 2000) ** 2 < 1400**2
    image[disc] = (200, 90, 40)
    out = io.BytesIO()
    Image.fromarray(image).save(out, "JPEG", quality=90)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unguarded", action="store_true", help="also decode without the check")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="eyegazer_bombs_")
    model_dir = _export(folder)
    port = _free_port()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [sys.executable, "-m", "eyegazer_keras.cli", "serve", "--model", model_dir]
    log = open(os.path.join(folder, "server.log"), "wb")
    proc = subprocess.Popen(cmd + ["--port", str(port)], stdout=log, stderr=log, env=env)
    url = f"http://127.0.0.1:{port}/v1/models/eyegazer:predict"
    try:
        photo = _photo_12mp()
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models/eyegazer", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        _post(url, photo)  # warm the graph
        server = psutil.Process(proc.pid)
        cases = {
            "png (full deflate stream)": bombs.png_bomb(full=True),
            "jpeg": bombs.jpeg_bomb(),
            "gif": bombs.gif_bomb(),
            "webp (VP8X)": bombs.webp_bomb(),
            "12 MP photo (jpeg)": photo,
        }
        print(f"{'input':28} {'bytes':>9} {'status':>6} {'time':>8} {'RSS before -> after':>22}")
        for name, data in cases.items():
            before = server.memory_info().rss / 1e6
            status, text, seconds = _post(url, data)
            after = server.memory_info().rss / 1e6
            print(
                f"{name:28} {len(data):9d} {status:6d} {seconds * 1e3:6.0f} ms "
                f"{before:8.0f} -> {after:5.0f} MB ({after - before:+.0f})"
            )
            if status != 200:
                print(f"    {json.loads(text)['error']}")
        if args.unguarded:
            path = os.path.join(folder, "bomb.png")
            with open(path, "wb") as f:
                f.write(cases["png (full deflate stream)"])
            out = subprocess.run(
                [sys.executable, "-c", UNGUARDED, path], capture_output=True, text=True, env=env
            )
            print("unguarded tf.io.decode_image on the PNG bomb:", out.stdout.strip())
    finally:
        proc.terminate()
        proc.wait(timeout=60)


if __name__ == "__main__":
    main()
