"""Serving latency: the exported bytes endpoint vs the in-process Keras call on ready tensors.

Measures, in one run and one process:

* `bytes`: `serving_default` of the exported SavedModel on 512-px JPEG bytes (decode + fundus
  crop/pad/resize + model), for a batch of 1 and a batch of 32;
* `keras`: the same Keras model called in-process on already-preprocessed float32 tensors
  (`tf.function`-compiled, the fair baseline; the eager call is printed too);
* the decode + fundus preprocessing alone (what the SavedModel adds on top of the model);
* the ratio bytes / keras (target <= 1.2x: the preprocessing inside the SavedModel should cost
  at most 20% on top of the model).

Rounds are interleaved and the best of each is kept, so other load on a shared CPU skews both
sides alike.

Usage:

    python benchmarks/serving.py            # ViT-S/16 at 224 px, random weights (minutes on 2 cores)
    python benchmarks/serving.py --tiny     # tiny ViT at 32 px, seconds

Weights are random: latency does not depend on them.
"""

from __future__ import annotations

import argparse
import io
import os
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


def interleaved_seconds(fns: dict, rounds: int, warmup: int = 1) -> dict[str, float]:
    """Best-of-`rounds` seconds per function, calling them in turn every round.

    The functions run interleaved so that load from other processes on a shared machine hits
    them alike; the minimum is the least disturbed run.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


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
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
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
    preprocess = tf.function(
        lambda b: tf.map_fn(
            lambda e: fundus.serving_transform(e, args.source_size, args.image_size),
            b,
            fn_output_signature=tf.TensorSpec([args.image_size, args.image_size, 3], tf.float32),
        )
    )

    with tempfile.TemporaryDirectory() as tmp:
        path = export.export_saved_model(
            model, tmp, task="grade", image_size=args.image_size, source_size=args.source_size
        )
        serve = tf.saved_model.load(path).signatures["serving_default"]

        print(
            f"model: ViT image={args.image_size} patch={args.patch_size} layers={args.num_layers} "
            f"hidden={args.hidden_dim}; JPEG {args.jpeg_px}x{args.jpeg_px * 3 // 4} "
            f"({len(jpeg) // 1024} KiB), source_size={args.source_size}; cpus={os.cpu_count()}; "
            f"best of {args.repeats} interleaved rounds"
        )
        header = ("batch", "bytes ms", "keras ms", "eager ms", "preproc ms", "ratio", "max|dp|")
        print("{:>5} {:>10} {:>10} {:>10} {:>11} {:>7} {:>9}".format(*header))
        for batch in (1, args.batch):
            blobs = tf.constant([jpeg] * batch)
            x = tf.stack([ready] * batch)
            served = serve(image_bytes=blobs)["probabilities"].numpy()
            delta = np.abs(served - compiled(x).numpy()).max()
            best = interleaved_seconds(
                {
                    "bytes": lambda b=blobs: serve(image_bytes=b)["probabilities"].numpy(),
                    "keras": lambda x=x: compiled(x).numpy(),
                    "eager": lambda x=x: model(x, training=False).numpy(),
                    "preproc": lambda b=blobs: preprocess(b).numpy(),
                },
                args.repeats,
            )
            print(
                f"{batch:>5} {1e3 * best['bytes']:>10.1f} {1e3 * best['keras']:>10.1f} "
                f"{1e3 * best['eager']:>10.1f} {1e3 * best['preproc']:>11.1f} "
                f"{best['bytes'] / best['keras']:>6.2f}x {delta:>9.1e}"
            )
        print(
            "bytes = SavedModel serving_default on JPEG bytes; keras = tf.function(model) on "
            "preprocessed float32; eager = model(x); preproc = decode+fundus transform alone; "
            "ratio = bytes / keras"
        )
        print("target: bytes / keras <= 1.20x")


if __name__ == "__main__":
    main()
