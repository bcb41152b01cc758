"""Input pipeline throughput: `eyegazer_keras.data.datasets` vs decoding full-size PNGs every epoch.

Measures, in one run and one process, images per second at 224 px with augmentation on:

* `ours`: the training path of `eyegazer_keras.runs.train` — a synthetic_fundus split stored once
  (decoded, fundus-cropped and resized by the TFDS builder), `pipeline.cached_images` (resize to
  224 and cache as uint8; epoch 1 fills the cache and is reported on its own), then per epoch
  `pipeline.make_dataset(cached, training=True, augment=True, seed=epoch, cache=False)`;
* `naive`: what a first try looks like — full-size PNGs at real APTOS 2019 sizes (3216x2136,
  2416x1736, 1050x1050, 640x480) read and decoded again every epoch
  (`list_files -> read_file -> decode_png -> resize 224`), then the same
  `pipeline.make_dataset` shuffle/batch/augment stages, so only the decode-every-epoch differs.
  The naive resize is plain bilinear without antialiasing (the cheapest), so the ratio is not
  flattered.

It prints both figures, the ratio (targets: ours >= 1,500 img/s and >= 50x naive) and the
machine (CPUs, model name, load average: other processes on a shared CPU slow both sides).

Usage:

    python benchmarks/input_pipeline.py            # 1,024 stored images, 4 epochs (~2-3 min)
    python benchmarks/input_pipeline.py --quick    # 256 images, 3 epochs, 16 naive PNGs (~1 min)
    python benchmarks/input_pipeline.py --data-dir /tmp/bench_data   # keep the prepared set

The prepared set goes to a temporary folder (deleted afterwards) unless `--data-dir` is given.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

# Real APTOS 2019 photo sizes (width, height), from the largest to the smallest.
APTOS_SIZES = ((3216, 2136), (2416, 1736), (1050, 1050), (640, 480))


def machine() -> str:
    """CPUs available to this process, CPU model and load average, in one line."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return (
        f"{os.cpu_count()} CPUs ({usable} usable), {model}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


def fundus_like_photo(width: int, height: int, seed: int) -> np.ndarray:
    """An APTOS-like photo: textured orange-red disc cut by the frame, black border, vessels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[0:height, 0:width]
    cy, cx = height / 2.0, width / 2.0
    radius = 0.52 * min(width, height) if width != height else 0.48 * width
    dist = np.hypot(yy - cy, xx - cx, dtype=np.float32)
    shade = np.clip(1.0 - 0.55 * (dist / radius) ** 2, 0.0, 1.0)
    angle = np.arctan2(yy - cy, xx - cx).astype(np.float32)
    vessels = 1.0 - 0.25 * (np.sin(9.0 * angle + dist / (0.05 * radius)) > 0.93)
    base = np.array([205.0, 95.0, 35.0], np.float32) * rng.uniform(0.8, 1.1, 3).astype(np.float32)
    image = (shade * vessels)[..., None] * base
    image += rng.normal(0.0, 4.0, image.shape).astype(np.float32)  # sensor noise: real PNG sizes
    image[dist > radius] = 0.0
    return np.clip(image, 0, 255).astype(np.uint8)


def write_naive_pngs(folder: str, count: int) -> list[str]:
    """Writes `count` PNGs cycling through `APTOS_SIZES` (at most 8 distinct photos, copied)."""
    from PIL import Image

    paths, distinct = [], {}
    for i in range(count):
        key = i % min(count, 2 * len(APTOS_SIZES))
        path = os.path.join(folder, f"photo_{i:03d}.png")
        if key in distinct:
            shutil.copyfile(distinct[key], path)
        else:
            width, height = APTOS_SIZES[key % len(APTOS_SIZES)]
            Image.fromarray(fundus_like_photo(width, height, seed=key)).save(path)
            distinct[key] = path
        paths.append(path)
    return paths


def count_epoch(make_ds) -> tuple[int, float, float]:
    """Builds (`make_ds()`) and iterates one epoch; returns (images, wall s, process CPU s)."""
    start, cpu = time.perf_counter(), time.process_time()
    images = 0
    for batch in make_ds():
        images += int(batch[0].shape[0])
    return images, time.perf_counter() - start, time.process_time() - cpu


def rate(epochs: list[tuple[int, float, float]], column: int = 1) -> float:
    """Images per wall second (`column=1`) or per CPU second (`column=2`) over `epochs`."""
    seconds = sum(e[column] for e in epochs)
    return sum(e[0] for e in epochs) / seconds if seconds > 0 else float("nan")


def bench_ours(args, data_dir: str) -> dict:
    from eyegazer_datasets.synthetic_fundus.synthetic_fundus_dataset_builder import (
        SyntheticFundusConfig,
    )

    from eyegazer_keras.data import datasets as data
    from eyegazer_keras.data import pipeline

    config = SyntheticFundusConfig(
        name=f"bench{args.stored_size}n{args.num_train}",
        description="input-pipeline benchmark",
        image_size=args.stored_size,
        num_train=args.num_train,
        num_validation=8,
        num_test=8,
        photo_size=max(320, args.stored_size + 64),
    )
    start = time.perf_counter()
    data.prepare("synthetic_fundus", data_dir=data_dir, config=config)
    prepare_s = time.perf_counter() - start
    split = data.load_split("synthetic_fundus", "train", data_dir=data_dir, config=config)
    cached = pipeline.cached_images(split, args.image_size)
    epochs = [
        count_epoch(
            lambda epoch=epoch: pipeline.make_dataset(  # rebuilt every epoch, as train.py does
                cached,
                image_size=args.image_size,
                batch_size=args.batch_size,
                training=True,
                augment=True,
                seed=epoch,
                cache=False,
                drop_remainder=True,
            )
        )
        for epoch in range(args.epochs)
    ]
    steady = epochs[1:]
    return {
        "prepare_s": prepare_s,
        "first": rate(epochs[:1]),
        "steady": rate(steady),
        "best": max(rate([e]) for e in steady),
        "cpu": rate(steady, column=2),
        "images": steady[0][0],
    }


def bench_naive(args, folder: str) -> dict:
    import tensorflow as tf

    from eyegazer_keras.data import pipeline

    start = time.perf_counter()
    write_naive_pngs(folder, args.naive_images)
    write_s = time.perf_counter() - start
    size = args.image_size

    def _load(path):
        image = tf.io.decode_png(tf.io.read_file(path), channels=3)
        image = tf.image.resize(tf.cast(image, tf.float32), [size, size], method="bilinear")
        image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
        return {"image": image, "label": tf.constant(0, tf.int64), "id_code": path}

    def make_ds(epoch: int):
        files = tf.data.Dataset.list_files(os.path.join(folder, "*.png"), shuffle=True, seed=epoch)
        decoded = files.map(_load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return pipeline.make_dataset(
            decoded,
            image_size=size,
            batch_size=args.batch_size,
            training=True,
            augment=True,
            seed=epoch,
            cache=False,
        )

    epochs = [count_epoch(lambda e=e: make_ds(e)) for e in range(args.naive_epochs)]
    # No cache: every epoch decodes again; the first also traces, so skip it when there are more.
    steady = epochs[1:] or epochs
    return {
        "write_s": write_s,
        "steady": rate(steady),
        "cpu": rate(steady, column=2),
        "images": epochs[0][0],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller set, fewer epochs")
    parser.add_argument("--data-dir", help="where to prepare the synthetic set (kept)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--stored-size", type=int, default=256, help="side the builder stores")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-train", type=int, help="stored training images (1024; quick 256)")
    parser.add_argument("--epochs", type=int, help="epochs of ours, >= 2 (4; quick 3)")
    parser.add_argument("--naive-images", type=int, help="full-size PNGs (32; quick 16)")
    parser.add_argument("--naive-epochs", type=int, default=2)
    args = parser.parse_args(argv)
    args.num_train = args.num_train or (256 if args.quick else 1024)
    args.epochs = max(2, args.epochs or (3 if args.quick else 4))
    args.naive_images = args.naive_images or (16 if args.quick else 32)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)  # TFDS "custom data configuration" notices
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()

    print(f"machine: {machine()}")
    scratch = tempfile.mkdtemp(prefix="eyegazer_input_bench_")
    try:
        data_dir = args.data_dir or os.path.join(scratch, "data")
        naive_dir = os.path.join(scratch, "naive")
        os.makedirs(naive_dir)
        ours = bench_ours(args, data_dir)
        naive = bench_naive(args, naive_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    s = args.image_size
    print(
        f"ours : {ours['steady']:8.0f} img/s steady (epochs 2-{args.epochs}, best "
        f"{ours['best']:.0f}; {ours['cpu']:.0f} img per CPU-second); epoch 1 (fills the cache) "
        f"{ours['first']:.0f} img/s; {ours['images']} images/epoch, {s} px, batch "
        f"{args.batch_size}, augment on [prepared in {ours['prepare_s']:.0f} s, "
        f"stored at {args.stored_size} px]"
    )
    sizes = ", ".join(f"{w}x{h}" for w, h in APTOS_SIZES)
    print(
        f"naive: {naive['steady']:8.1f} img/s ({naive['cpu']:.1f} img per CPU-second; "
        f"decode full-size PNG every epoch: {naive['images']} PNGs at {sizes}; "
        f"same resize {s} + augment + batch) [wrote PNGs in {naive['write_s']:.0f} s]"
    )
    ratio = ours["steady"] / naive["steady"]
    cpu_ratio = ours["cpu"] / naive["cpu"]
    print(
        f"ratio: ours / naive = {ratio:.0f}x wall-clock, {cpu_ratio:.0f}x CPU time "
        f"(target >= 50x: {'met' if ratio >= 50 else 'MISSED'}); "
        f"ours >= 1500 img/s: {'met' if ours['steady'] >= 1500 else 'MISSED'}"
    )
    print(
        f"load : {machine().split('load average ')[1]} at the end (other processes share the CPU)"
    )


if __name__ == "__main__":
    main()
