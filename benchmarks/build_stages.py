"""Per-stage cost of building one full-size photo (3888x2592 JPEG), against PIL, in one run.

    python benchmarks/build_stages.py

Prints the mean of 3 timed calls (after one warm-up) of each stage the builders run per photo:
decode (`images.decode_to_rgb` = PIL header check + `fundus.decode_image`), the quality gate,
`fundus.preprocess_fundus` to 512 px, the pHash, the PNG encode; and the peers
`tf.io.decode_jpeg`, PIL decode, PIL decode + resize. Generated photo, no patient data.
"""

import io
import time

import tensorflow as tf
from eyegazer_datasets.common import build, images
from eyegazer_datasets.common.dummy_data import encode, fundus_like
from PIL import Image

from eyegazer_keras import fundus

data = encode(fundus_like(seed=1, size=(3888, 2592)), "JPEG", quality=90)


def t(f, n=3):
    f()
    s = time.perf_counter()
    for _ in range(n):
        out = f()
    return (time.perf_counter() - s) / n * 1000, out


ms, img = t(lambda: images.decode_to_rgb(data, 50_000_000)[0])
print(f"decode_to_rgb {ms:.0f} ms")
ms, _ = t(lambda: build.quality_gate(img))
print(f"quality gate {ms:.0f} ms")
ms, st = t(lambda: fundus.preprocess_fundus(img, 512))
print(f"preprocess_fundus 512 {ms:.0f} ms")
ms, _ = t(lambda: images.hash_image(img))
print(f"hash_image {ms:.0f} ms")
ms, _ = t(lambda: tf.io.encode_png(st, compression=3))
print(f"encode_png {ms:.0f} ms")


def pil():
    im = Image.open(io.BytesIO(data)).convert("RGB")
    return im.resize((512, 512), Image.Resampling.BILINEAR, reducing_gap=2.0)


ms, _ = t(pil)
print(f"PIL decode+resize {ms:.0f} ms")
c = tf.constant(data)
ms, _ = t(lambda: tf.io.decode_jpeg(c, channels=3))
print(f"tf.io.decode_jpeg alone {ms:.0f} ms")
ms, _ = t(lambda: fundus.decode_image(c))
print(f"fundus.decode_image {ms:.0f} ms")
ms, _ = t(lambda: Image.open(io.BytesIO(data)).convert("RGB"))
print(f"PIL decode alone {ms:.0f} ms")
