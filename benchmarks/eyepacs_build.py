"""EyePACS 2015 build throughput against a PIL peer on the same files, in the same run.

Two sources of photos:

* generated (default): N synthetic fundus-like JPEGs at EyePACS camera sizes (3888x2592,
  4752x3168, 2592x1944, 3456x2304, 1536x1152, 5184x3456), both eyes per patient, shipped the way
  Kaggle does (`trainLabels.csv` + `train.zip` split into parts); no patient data;
* `--data DIR`: a folder in Kaggle's layout (`trainLabels.csv`, `train/*.jpeg`), e.g. the real
  photos of `../shared/realdata/eyepacs-raw` (read in place, nothing derived from them is kept:
  the built data goes to a temporary folder that is deleted).

Measured on the same files:

* ours: the `eyepacs2015` builder end to end (`eyepacs2015.prepare`, what `eyegazer prepare`
  runs: read, EXIF-aware TF decode (JPEG DCT scaling where the photo is much larger than
  stored), quality gate, disc crop, resize, pHash, PNG encode, duplicate grouping, patient
  split, TFRecord writing), all cores, `keep_ungradable` (every photo stored, as the peer
  does); after one warm-up build of the first photos, so the one-time tracing is not timed;
  the build report's decode-phase rate is printed too;
* peer: the plain PIL pipeline a script would run (`Image.open`, EXIF transpose, `convert`,
  bounding-box crop of the non-black area, `resize` to the stored size, PNG at zlib level 3),
  on a thread pool of the same size; no gate, no hash, no TFRecords;
* peer+draft: the same with `Image.draft` (PIL's JPEG DCT scaling) before `convert`.

Prints the CPU model and its bf16/AMX flags, the load average before and after, wall-clock
img/s and CPU-seconds per photo of each side, and ours / peer.

    python benchmarks/eyepacs_build.py --images 48 --config 512
    python benchmarks/eyepacs_build.py --data ../shared/realdata/eyepacs-raw --config 512
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import io
import logging
import os
import pathlib
import tempfile
import time

import timing

EYEPACS_SIZES = [(3888, 2592), (4752, 3168), (2592, 1944), (3456, 2304), (1536, 1152), (5184, 3456)]


def _peer(paths: list[pathlib.Path], size: int, workers: int, draft: bool) -> tuple[float, float]:
    """PIL decode + bbox crop + resize + PNG, threaded; returns (images/s, CPU s per image)."""
    from PIL import Image, ImageOps

    def one(path):
        with Image.open(path) as im:
            if draft:
                im.draft("RGB", (size, size))
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

    start, cpu = time.perf_counter(), time.process_time()
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, paths))
    return len(paths) / (time.perf_counter() - start), (time.process_time() - cpu) / len(paths)


def _generate(tmp: pathlib.Path, count: int) -> tuple[pathlib.Path, list[pathlib.Path]]:
    """Synthetic JPEGs as Kaggle ships them; returns (manual dir, the photos' paths)."""
    from eyegazer_datasets.common.dummy_data import encode, fundus_like, split_file, zip_folder
    from eyegazer_datasets.eyepacs2015.dummy_data import make_dummy_data as dummy

    start = time.perf_counter()
    train, pixels, nbytes = {}, 0, 0
    folder = tmp / "layout" / "train"
    folder.mkdir(parents=True)
    for n in range(count):
        name = f"{n // 2 + 10}_{'left' if n % 2 == 0 else 'right'}"
        w, h = EYEPACS_SIZES[n % len(EYEPACS_SIZES)]
        data = encode(fundus_like(seed=n, size=(w, h)), "JPEG", quality=90)
        (folder / f"{name}.jpeg").write_bytes(data)
        train[name] = n % 5
        pixels += w * h
        nbytes += len(data)
    manual = tmp / "kaggle"
    manual.mkdir()
    (manual / "trainLabels.csv").write_text(dummy.labels_csv(train))
    split_file(zip_folder(folder, manual / "train.zip", "train/"), 3)
    print(
        f"generated {count} JPEGs ({pixels / count / 1e6:.1f} MP, {nbytes / count / 1e6:.2f} MB "
        f"on average) as train.zip.001-003 in {time.perf_counter() - start:.0f} s"
    )
    return manual, [folder / f"{name}.jpeg" for name in train]


def _subset(data: pathlib.Path, tmp: pathlib.Path, limit: int) -> tuple[pathlib.Path, list]:
    """The first `limit` rows of a Kaggle-layout folder, linked (not copied) into `tmp`."""
    with open(data / "trainLabels.csv", newline="") as handle:
        rows = [
            r for r in csv.DictReader(handle) if (data / "train" / f"{r['image']}.jpeg").exists()
        ]
    rows = rows[:limit] if limit else rows
    manual = tmp / "kaggle"
    (manual / "train").mkdir(parents=True)
    with open(manual / "trainLabels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "level"])
        for r in rows:
            writer.writerow([r["image"], r["level"]])
            (manual / "train" / f"{r['image']}.jpeg").symlink_to(
                (data / "train" / f"{r['image']}.jpeg").resolve()
            )
    paths = [manual / "train" / f"{r['image']}.jpeg" for r in rows]
    print(f"{len(paths)} photos of {data} (linked, read in place)")
    return manual, paths


def _warm_copy(manual: pathlib.Path, tmp: pathlib.Path, photos: int) -> pathlib.Path:
    """A Kaggle-layout folder holding the first `photos` photos of `manual` (for the warm-up)."""
    from eyegazer_datasets.eyepacs2015 import eyepacs2015_dataset_builder as eyepacs

    warm = tmp / "warm_layout"
    (warm / "train").mkdir(parents=True)
    names = []
    with eyepacs.open_source(manual) as source:
        for rel in sorted(f for f in source.files() if f.startswith("train/"))[:photos]:
            (warm / rel).write_bytes(source.read(rel, 1 << 30))
            names.append(rel.split("/")[1].rsplit(".", 1)[0])
    (warm / "trainLabels.csv").write_text("image,level\n" + "".join(f"{n},0\n" for n in names))
    return warm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48, help="generated photos (default 48)")
    parser.add_argument("--data", type=pathlib.Path, help="a Kaggle-layout folder instead")
    parser.add_argument("--limit", type=int, default=0, help="--data: first N rows (0: all)")
    parser.add_argument("--config", default="512", help="builder config (default 512)")
    parser.add_argument("--workers", type=int, default=None, help="threads (default: CPUs)")
    args = parser.parse_args()

    from eyegazer_datasets.common import kaggle_source
    from eyegazer_datasets.eyepacs2015 import eyepacs2015_dataset_builder as eyepacs

    logging.getLogger().setLevel(logging.WARNING)
    workers = args.workers or os.cpu_count()
    size = int(args.config.split("_")[0])
    print(f"machine: {timing.machine()}; load average {timing.load_average()}")
    with tempfile.TemporaryDirectory(prefix="eyepacs_build_") as tmp:
        tmp = pathlib.Path(tmp)
        if args.data:
            manual, paths = _subset(args.data.expanduser(), tmp, args.limit)
        else:
            manual, paths = _generate(tmp, args.images)
        # Warm-up: TF's first calls trace the graphs (seconds); the timed build does not pay.
        # Its split may come out empty on 4 photos: only the decode phase matters here.
        try:
            eyepacs.prepare(_warm_copy(manual, tmp, 4), tmp / "warm", config=args.config)
        except kaggle_source.DatasetBuildError:
            pass
        # keep_ungradable: every photo is cropped, resized and stored, as the peer does
        # (synthetic photos are too smooth for the gate; refused ones would skip that work).
        start, cpu = time.perf_counter(), time.process_time()
        report = eyepacs.prepare(
            manual, tmp / "data", config=args.config, num_workers=workers, keep_ungradable=True
        )
        ours = len(paths) / (time.perf_counter() - start)
        ours_cpu = (time.process_time() - cpu) / len(paths)
        peer, peer_cpu = _peer(paths, size, workers, draft=False)
        draft, draft_cpu = _peer(paths, size, workers, draft=True)
    rows = [
        (f"ours (eyepacs2015 build, {workers} threads)", ours, ours_cpu),
        (f"peer (PIL decode+bbox crop+resize+PNG, {workers} threads)", peer, peer_cpu),
        ("peer+draft (the same with Image.draft)", draft, draft_cpu),
    ]
    for name, rate, per in rows:
        print(f"{name:60s} {rate:7.2f} img/s  {per * 1000:6.1f} CPU-ms/photo")
    phase = report["timing"]
    print(
        f"ours decode phase (build report): {phase['images_per_second']:.2f} img/s, "
        f"{1000 * phase.get('cpu_seconds', float('nan')) / phase['images']:.1f} CPU-ms/photo; "
        f"gate: {report['quality']['gradable']} of {report['quality']['judged']} gradable"
    )
    print(
        f"ours / peer = {ours / peer:.2f}x wall, {peer_cpu / ours_cpu:.2f}x per CPU-second; "
        f"ours / peer+draft = {ours / draft:.2f}x wall, {draft_cpu / ours_cpu:.2f}x per CPU-s; "
        f"config {args.config}, {len(paths)} photos, load average {timing.load_average()}"
    )


if __name__ == "__main__":
    main()
