"""Serving latency: the exported bytes endpoint vs the in-process Keras call on ready tensors.

Measures, in one run and one process:

* `bytes`: `serving_default` of the exported SavedModel on 512-px JPEG bytes (decode + fundus
  crop/pad/resize + model), for a batch of 1 and a batch of 32;
* `keras`: the same Keras model called in-process on already-preprocessed float32 tensors
  (`tf.function`-compiled, the fair baseline; the eager call is printed too);
* the ratio bytes / keras (target <= 1.2x: the preprocessing inside the SavedModel should cost
  at most 20% on top of the model).

Usage:

    python benchmarks/serving.py            # ViT-S/16 at 224 px, random weights (minutes on 2 cores)
    python benchmarks/serving.py --tiny     # tiny ViT at 32 px, seconds

Weights are random: latency does not depend on them.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time

import numpy as np


def fundus_like_jpeg(width: int, seed: int = 0) -> bytes:
    """A 4:3 fundus-like photo (textured orange disc on black), JPEG quality 90."""
    from PIL import Image

    height = width * 3 // 4
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    dist = np.hypot(yy - height / 2, xx - width / 2)
    shade = np.clip(1.0 - 0.5 * (dist / (0.45 * height)) ** 2, 0.0, 1.0)
    image = np.stack([215 * shade, 105 * shade, 35 * shade], axis=-1)
    image += rng.normal(0.0, 6.0, image.shape)
    image[dist > 0.45 * height] = 0.0
    buf = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def build_model(args):
    import keras
    import keras_hub

    size = args.image_size
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)
    x = keras_hub.models.ViTBackbone(
        image_shape=(size, size, 3),
        patch_size=args.patch_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        hidden_dim=args.hidden_dim,
        mlp_dim=args.mlp_dim,
    )(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(x))


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny ViT at 32 px (quick check)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--source-size", type=int, default=512, help="builder's stored size")
    parser.add_argument("--jpeg-px", type=int, default=512, help="width of the test JPEG")
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--num-layers", type=int, default=12)
    parser.add_argument("--num-heads", type=int, default=6)
    parser.add_argument("--hidden-dim", type=int, default=384)
    parser.add_argument("--mlp-dim", type=int, default=1536)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.tiny:
        args.image_size, args.patch_size, args.num_layers = 32, 8, 2
        args.num_heads, args.hidden_dim, args.mlp_dim = 2, 48, 96

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from eyegazer_keras import export, fundus

    model = build_model(args)
    jpeg = fundus_like_jpeg(args.jpeg_px)
    ready = fundus.serving_transform(tf.constant(jpeg), args.source_size, args.image_size)
    compiled = tf.function(lambda x: model(x, training=False))

    with tempfile.TemporaryDirectory() as tmp:
        path = export.export_saved_model(
            model, tmp, task="grade", image_size=args.image_size, source_size=args.source_size
        )
        serve = tf.saved_model.load(path).signatures["serving_default"]

        print(
            f"model: ViT image={args.image_size} patch={args.patch_size} layers={args.num_layers} "
            f"hidden={args.hidden_dim}; JPEG {args.jpeg_px}x{args.jpeg_px * 3 // 4} "
            f"({len(jpeg) // 1024} KiB), source_size={args.source_size}; "
            f"TF threads intra={tf.config.threading.get_intra_op_parallelism_threads()} "
            f"cpus={os.cpu_count()}"
        )
        print(
            f"{'batch':>5} {'bytes ms':>10} {'keras tf.fn ms':>15} {'keras eager ms':>15} "
            f"{'ratio (vs tf.fn)':>17} {'ratio (vs eager)':>17}"
        )
        for batch in (1, args.batch):
            blobs = tf.constant([jpeg] * batch)
            x = tf.stack([ready] * batch)
            probs_served = serve(image_bytes=blobs)["probabilities"].numpy()
            delta = np.abs(probs_served - compiled(x).numpy()).max()
            t_bytes = median_seconds(lambda b=blobs: serve(image_bytes=b), args.repeats)
            t_fn = median_seconds(lambda x=x: compiled(x).numpy(), args.repeats)
            t_eager = median_seconds(lambda x=x: model(x, training=False).numpy(), args.repeats)
            print(
                f"{batch:>5} {1e3 * t_bytes:>10.1f} {1e3 * t_fn:>15.1f} {1e3 * t_eager:>15.1f} "
                f"{t_bytes / t_fn:>16.2f}x {t_bytes / t_eager:>16.2f}x   (max |dprob| {delta:.1e})"
            )
        print("target: bytes / keras <= 1.20x")


if __name__ == "__main__":
    main()
