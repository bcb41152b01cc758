"""EyePACS 2015 build throughput on generated full-size photos, against a PIL peer in the same run.

Generates N synthetic fundus-like JPEGs at EyePACS camera sizes (3888x2592, 4752x3168,
2592x1944, 3456x2304, 1536x1152, 5184x3456), both eyes per patient, ships them the way Kaggle
does (`trainLabels.csv` + `train.zip` split into parts), then measures on the same files:

* ours: `eyepacs2015` builder, end to end (read from the zip parts, EXIF-aware TF decode,
  quality gate, disc crop, resize, pHash, PNG encode, duplicate grouping, patient split,
  TFRecord writing), all cores;
* peer: the plain PIL pipeline a script would run (`Image.open` from the zip parts, `convert`,
  bounding-box crop of the non-black area, `resize` to the stored size, PNG encode), on a
  thread pool of the same size; no gate, no hash, no TFRecords.

No patient data, no network.

    python benchmarks/eyepacs_build.py --images 48 --config 512
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import logging
import os
import pathlib
import tempfile
import time

EYEPACS_SIZES = [(3888, 2592), (4752, 3168), (2592, 1944), (3456, 2304), (1536, 1152), (5184, 3456)]


def _peer(source, relpaths, size: int, workers: int) -> float:
    """PIL decode + bbox crop + resize + PNG, threaded; returns images/s."""
    from PIL import Image, ImageOps

    def one(rel):
        with Image.open(io.BytesIO(source.read(rel, 1 << 30))) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            box = im.convert("L").point(lambda v: 255 if v > 12 else 0).getbbox() or (
                0,
                0,
                *im.size,
            )
            out = im.crop(box).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
            buffer = io.BytesIO()
            out.save(buffer, "PNG", compress_level=3)
            return len(buffer.getvalue())

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, relpaths))
    return len(relpaths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48, help="number of photos (default 48)")
    parser.add_argument("--config", default="512", help="builder config (default 512)")
    parser.add_argument("--workers", type=int, default=None, help="threads (default: CPUs)")
    args = parser.parse_args()

    from eyegazer_datasets.common.dummy_data import encode, fundus_like, split_file, zip_folder
    from eyegazer_datasets.eyepacs2015 import eyepacs2015_dataset_builder as eyepacs
    from eyegazer_datasets.eyepacs2015.dummy_data import make_dummy_data as dummy

    logging.getLogger().setLevel(logging.WARNING)
    workers = args.workers or os.cpu_count()
    size = int(args.config.split("_")[0])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        start = time.perf_counter()
        train, pixels, nbytes = {}, 0, 0
        (tmp / "layout" / "train").mkdir(parents=True)
        for n in range(args.images):
            name = f"{n // 2 + 10}_{'left' if n % 2 == 0 else 'right'}"
            w, h = EYEPACS_SIZES[n % len(EYEPACS_SIZES)]
            data = encode(fundus_like(seed=n, size=(w, h)), "JPEG", quality=90)
            (tmp / "layout" / "train" / f"{name}.jpeg").write_bytes(data)
            train[name] = n % 5
            pixels += w * h
            nbytes += len(data)
        (tmp / "layout" / "trainLabels.csv").write_text(dummy.labels_csv(train))
        manual = tmp / "kaggle"
        manual.mkdir()
        (manual / "trainLabels.csv").write_text(dummy.labels_csv(train))
        split_file(zip_folder(tmp / "layout" / "train", manual / "train.zip", "train/"), 3)
        print(
            f"generated {args.images} JPEGs ({pixels / args.images / 1e6:.1f} MP, "
            f"{nbytes / args.images / 1e6:.2f} MB on average) as train.zip.001-003 in "
            f"{time.perf_counter() - start:.0f} s"
        )
        # Warm-up: TF kernels, file cache (neither timed run pays for them).
        eyepacs.prepare(manual, tmp / "warm", config=args.config, num_workers=workers)
        start = time.perf_counter()
        report = eyepacs.prepare(manual, tmp / "data", config=args.config, num_workers=workers)
        ours = args.images / (time.perf_counter() - start)
        with eyepacs.open_source(manual) as source:
            rels = [f"train/{n}.jpeg" for n in train]
            peer = _peer(source, rels, size, workers)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(
            f"ours (eyepacs2015 build, {workers} threads): {ours:6.2f} img/s whole build; "
            f"decode phase {report['timing']['images_per_second']:.2f} img/s"
        )
        print(f"peer (PIL decode+crop+resize+PNG, {workers} threads): {peer:6.2f} img/s")
        print(
            f"ours / peer = {ours / peer:.2f}x on {os.cpu_count()} CPUs (load average {load:.1f}), "
            f"config {args.config}; 35,126 EyePACS train photos would take "
            f"~{35126 / ours / 60:.0f} min"
        )


if __name__ == "__main__":
    main()
