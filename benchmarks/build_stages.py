"""Per-stage cost of building one photo, as the builders run it, against PIL, in one run.

    python benchmarks/build_stages.py                       # a generated 3888x2592 JPEG
    python benchmarks/build_stages.py --size 512 PHOTO ...  # your own photos (e.g. real ones)

Prints the mean wall-clock ms of each stage `images.process_image` runs per photo (after one
warm-up call, so tracing is not counted): the header, the decode at the DCT scale the stored
size allows (`fundus.jpeg_ratio`), the decode of the copy the gate and the hash look at (when
it differs), the quality gate, the pHash, the stored PNG (crop, resize, encode); then the
peers: TF's full-size decode, PIL's full decode and PIL's `draft` decode; with the CPU model,
the load average and this process's CPU-ms per photo over the builder's stages.
"""

import argparse
import io
import pathlib
import time

import numpy as np
import tensorflow as tf
import timing
from eyegazer_datasets.common import build, images
from eyegazer_datasets.common.dummy_data import encode, fundus_like
from PIL import Image

from eyegazer_keras import fundus

MAX_PIXELS = fundus.MAX_PIXELS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", nargs="*", type=pathlib.Path, help="JPEG/PNG files")
    parser.add_argument("--size", type=int, default=512, help="stored side (default 512)")
    args = parser.parse_args()
    if args.photos:
        datas = [p.read_bytes() for p in args.photos]
    else:
        datas = [encode(fundus_like(seed=1, size=(3888, 2592)), "JPEG", quality=90)]
    print(f"machine: {timing.machine()}; load average {timing.load_average()}")
    total: dict[str, float] = {}

    def stage(name, f):
        start = time.perf_counter()
        out = f()
        total[name] = total.get(name, 0.0) + time.perf_counter() - start
        return out

    def builder(data):
        height, width, kind = stage("header (PIL)", lambda: images.header_size(data, MAX_PIXELS))
        jpeg = kind == "JPEG"
        store = fundus.jpeg_ratio(height, width, args.size) if jpeg else 1
        look = fundus.jpeg_ratio(height, width, images.ANALYSIS_MIN_SIDE) if jpeg else 1
        image, _ = stage(f"decode 1/{store}", lambda: images.decode_to_rgb(data, MAX_PIXELS, store))
        seen = image
        if look != store:
            seen, _ = stage(
                f"decode 1/{look}", lambda: images.decode_to_rgb(data, MAX_PIXELS, look)
            )
        stage("quality gate", lambda: build.quality_gate(seen))
        stage("pHash", lambda: images.hash_image(seen))
        stage(f"stored PNG {args.size}", lambda: images.stored_png(image, args.size))

    def peers(data):
        c = tf.constant(data)
        stage("peer: tf.io.decode_jpeg full", lambda: tf.io.decode_jpeg(c, channels=3))
        stage(
            "peer: PIL decode full", lambda: np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        )

        def draft():
            im = Image.open(io.BytesIO(data))
            im.draft("RGB", (args.size, args.size))
            return np.asarray(im.convert("RGB"))

        stage("peer: PIL draft decode", draft)

    for data in datas[:1]:  # warm-up: tracing and first calls
        builder(data)
        peers(data)
    total.clear()
    repeats = max(1, 3 // len(datas))
    cpu = time.process_time()
    for _ in range(repeats):
        for data in datas:
            builder(data)
    cpu = (time.process_time() - cpu) / (repeats * len(datas))
    for _ in range(repeats):
        for data in datas:
            peers(data)
    for name, seconds in total.items():
        print(f"{name:32s} {1000 * seconds / (repeats * len(datas)):8.1f} ms")
    print(
        f"builder stages: {1000 * cpu:.1f} CPU-ms per photo; load average {timing.load_average()}"
    )


if __name__ == "__main__":
    main()
