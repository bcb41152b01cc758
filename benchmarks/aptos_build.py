"""APTOS 2019 build throughput: parallel decode vs a serial baseline, in the same run.

Generates N synthetic fundus-like PNGs at real APTOS sizes (2416x1736, 3216x2136, 640x480,
1050x1050, ...) in a temporary Kaggle layout, builds the `aptos2019` dataset twice (all cores,
then one thread) and prints images/s and the ratio. No patient data, no network.

    python benchmarks/aptos_build.py --images 48 --config 512

The serial baseline is one decode thread, but TensorFlow still spreads each resize over its
intra-op pool, so the ratio grows with the number of cores (little on 2 cores, more on 16).
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
APTOS_SIZES = [(2416, 1736), (3216, 2136), (640, 480), (1050, 1050), (2048, 1536), (1844, 1226)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48, help="number of photos (default 48)")
    parser.add_argument("--config", default="512", help="builder config (default 512)")
    parser.add_argument(
        "--workers", type=int, default=None, help="parallel threads (default: CPUs)"
    )
    args = parser.parse_args()

    from eyegazer_datasets.aptos2019 import aptos2019_dataset_builder as aptos
    from eyegazer_datasets.aptos2019.dummy_data import make_dummy_data as dummy
    from eyegazer_datasets.common import dummy_data

    logging.getLogger().setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        start = time.perf_counter()
        n_test = max(5, args.images // 5)
        train, test, images, pixels, nbytes = {}, [], {}, 0, 0
        for n in range(args.images):
            size = APTOS_SIZES[n % len(APTOS_SIZES)]
            data = dummy_data.encode(dummy_data.fundus_like(seed=n, size=size), compress_level=6)
            pixels += size[0] * size[1]
            nbytes += len(data)
            id_code = f"{n:012x}"
            if n < args.images - n_test:
                train[id_code] = n % 5
                images[f"train_images/{id_code}.png"] = data
            else:
                test.append(id_code)
                images[f"test_images/{id_code}.png"] = data
        manual = dummy.write_layout(tmp / "kaggle", train, test, images)
        print(
            f"generated {args.images} PNGs ({pixels / args.images / 1e6:.1f} MP, "
            f"{nbytes / args.images / 1e6:.1f} MB on average) in {time.perf_counter() - start:.0f} s"
        )
        # Warm-up (TF kernel initialisation, file cache) so neither timed run pays for it.
        warm_ids = list(train)[:10]  # two per grade: every split gets examples
        warm = dummy.write_layout(
            tmp / "warm",
            {i: train[i] for i in warm_ids},
            test[:1],
            {k: v for k, v in images.items() if k.split("/")[1][:-4] in warm_ids + test[:1]},
        )
        aptos.prepare(warm, tmp / "data_warm", config=args.config)
        rates = {}
        for label, workers in (("serial", 1), ("parallel", args.workers or os.cpu_count())):
            start = time.perf_counter()
            report = aptos.prepare(
                manual, tmp / f"data_{label}", config=args.config, num_workers=workers
            )
            wall = time.perf_counter() - start
            decode = report["timing"]["images_per_second"]
            rates[label] = decode
            print(
                f"{label:8s} ({workers:2d} threads): decode+preprocess+hash {decode:6.1f} img/s; "
                f"whole build {args.images / wall:6.1f} img/s ({wall:.1f} s)"
            )
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(
            f"parallel / serial = {rates['parallel'] / rates['serial']:.2f}x "
            f"on {os.cpu_count()} CPUs (load average {load:.1f}), config {args.config}; "
            f"the real set (5,590 photos) would take ~{5590 / rates['parallel'] / 60:.0f} min"
        )


if __name__ == "__main__":
    main()
