"""Peak RSS of the AutoKeras search versus the size of its uint8 image arrays.

Target (issue 6): peak RSS during the search <= 1.5x the uint8 array bytes (train + validation)
above the process's baseline (RSS after the imports, before the arrays exist).

Each measurement runs in a fresh subprocess: baseline RSS -> allocate random uint8 arrays ->
`search.fit_search` (the code `eyegazer search` runs) while a thread samples RSS every 10 ms.
`--variant stock` swaps in autokeras's own tuner class (its whole-array `Normalization` adapt,
float copies and whole-array trace) for comparison; the shim stays on in both.

Two sizes give the fixed overhead (TF runtime, model, per-batch buffers) and the slope
(extra bytes per uint8 byte), so the figure is readable at any dataset size.

Usage:

    python benchmarks/search_memory.py                       # frugal vs stock, 2 sizes
    python benchmarks/search_memory.py --num 3662 --size 224 --variants frugal   # APTOS scale
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time


def _measure(args) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import autokeras  # noqa: F401  (part of the baseline, like TF)
    import keras  # noqa: F401
    import numpy as np
    import psutil
    import tensorflow  # noqa: F401

    from eyegazer_keras.configs import settings as configs
    from eyegazer_keras.models import regressor
    from eyegazer_keras.runs import search

    proc = psutil.Process()
    baseline = proc.memory_info().rss
    peak = [baseline]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.01)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()

    if args.variant == "stock":
        from autokeras import auto_model

        regressor.tuner_class = lambda name: auto_model.TUNER_CLASSES[name]

    rng = np.random.default_rng(0)
    n_val = max(2, args.num // 5)
    x_train = rng.integers(0, 256, (args.num, args.size, args.size, 3), dtype=np.uint8)
    x_val = rng.integers(0, 256, (n_val, args.size, args.size, 3), dtype=np.uint8)
    y_train = rng.integers(0, 5, args.num)
    y_val = rng.integers(0, 5, n_val)
    nbytes = x_train.nbytes + x_val.nbytes
    after_alloc = proc.memory_info().rss
    alloc_peak, peak[0] = peak[0], after_alloc
    config = configs.SearchConfig(
        max_trials=args.trials, epochs=args.epochs, image_size=args.size, overwrite=True
    )
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        search.fit_search(config, tmp, x_train, y_train, x_val, y_val, emit=lambda line: None)
    wall = time.monotonic() - start
    time.sleep(0.05)
    stop.set()
    thread.join()
    above = max(peak[0], alloc_peak) - baseline
    return {
        "variant": args.variant,
        "num_images": args.num + n_val,
        "size": args.size,
        "uint8_mib": nbytes / 2**20,
        "baseline_mib": baseline / 2**20,
        "peak_above_baseline_mib": above / 2**20,
        "after_alloc_above_baseline_mib": (after_alloc - baseline) / 2**20,
        "alloc_peak_above_baseline_mib": (alloc_peak - baseline) / 2**20,
        "search_peak_above_baseline_mib": (peak[0] - baseline) / 2**20,
        "ratio": above / nbytes,
        "search_s": wall,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, nargs="+", default=[1000, 3000])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--trials", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=["frugal", "stock"])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="frugal", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.num = args.num[0]
        print(json.dumps(_measure(args)))
        sys.stdout.flush()
        return 0
    rows = []
    for variant in args.variants:
        for num in args.num:
            cmd = [sys.executable, __file__, "--child", "--variant", variant, "--num", str(num)]
            cmd += ["--size", str(args.size), "--trials", str(args.trials)]
            cmd += ["--epochs", str(args.epochs)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{variant:6s} {row['num_images']:6d} x {row['size']}px  "
                f"uint8 {row['uint8_mib']:8.1f} MiB  peak-baseline "
                f"{row['peak_above_baseline_mib']:8.1f} MiB  ratio {row['ratio']:.2f}  "
                f"(search {row['search_s']:.0f} s)",
                flush=True,
            )
    for variant in args.variants:
        mine = [r for r in rows if r["variant"] == variant]
        if len(mine) >= 2:
            a, b = mine[0], mine[-1]
            slope = (b["peak_above_baseline_mib"] - a["peak_above_baseline_mib"]) / (
                b["uint8_mib"] - a["uint8_mib"]
            )
            fixed = a["peak_above_baseline_mib"] - slope * a["uint8_mib"]
            print(f"{variant}: slope {slope:.2f} bytes per uint8 byte, fixed {fixed:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
