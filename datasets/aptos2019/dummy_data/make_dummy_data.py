"""Generates the APTOS 2019 dummy data: synthetic fundus-like images, never patient photos.

Writes the exact Kaggle layout twice:

* `folder/`: `train.csv`, `test.csv`, `sample_submission.csv`, `train_images/<id>.png`,
  `test_images/<id>.png` (the extracted download);
* `zip/aptos2019-blindness-detection.zip`: the same files, as Kaggle ships them.

The 12 train images include one duplicate: `dup0copy0001` is a JPEG re-encode, upscaled 2x, of
`a1b2c3d40003` with a conflicting grade. Run from the repository root:

    python datasets/aptos2019/dummy_data/make_dummy_data.py

The functions are also used by the tests to build bad-input layouts.
"""

from __future__ import annotations

import io
import pathlib
import shutil
import zipfile

import numpy as np
from PIL import Image

# id_code -> grade. Ids look like Kaggle's (hex), grades cover 0-4.
TRAIN = {
    "a1b2c3d40001": 0,
    "a1b2c3d40002": 0,
    "a1b2c3d40003": 2,
    "a1b2c3d40004": 0,
    "a1b2c3d40005": 0,
    "a1b2c3d40006": 1,
    "a1b2c3d40007": 1,
    "a1b2c3d40008": 2,
    "a1b2c3d40009": 3,
    "a1b2c3d4000a": 4,
    "a1b2c3d4000b": 0,
    "dup0copy0001": 3,  # re-encoded copy of a1b2c3d40003 (grade 2): a label conflict
}
TEST = ["f0e1d2c30001", "f0e1d2c30002", "f0e1d2c30003", "f0e1d2c30004"]
DUPLICATE_OF = {"dup0copy0001": "a1b2c3d40003"}
SIZE = (100, 75)  # width, height: the 4:3 aspect of most APTOS photos


def fundus_like(seed: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    """A synthetic fundus-like RGB image: orange disc on black, vessels, optic disc, blotches.

    Args:
        seed: int. Different seeds give images with different perceptual hashes.
        size: (width, height). Defaults to (100, 75).

    Returns:
        `uint8 [height, width, 3]`.
    """
    rng = np.random.default_rng(seed)
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    radius = 0.48 * height
    r = np.hypot(yy - cy, xx - cx) / radius
    disc = r <= 1.0
    # Low-frequency illumination: a few broad random blobs make each photo's hash distinct.
    light = 0.55 + 0.25 * (1 - r**2)
    for _ in range(4):
        by, bx = rng.uniform(-0.8, 0.8, 2) * radius + (cy, cx)
        s = rng.uniform(0.25, 0.6) * radius
        light += rng.uniform(-0.35, 0.35) * np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / (2 * s * s))
    # Optic disc: a bright spot left or right of centre.
    side = rng.choice([-1, 1])
    oy, ox = cy + rng.uniform(-0.2, 0.2) * radius, cx + side * rng.uniform(0.35, 0.6) * radius
    light += 0.6 * np.exp(-((yy - oy) ** 2 + (xx - ox) ** 2) / (2 * (0.09 * radius) ** 2))
    # Vessels: dark random arcs leaving the optic disc.
    vessels = np.zeros_like(light)
    for _ in range(6):
        angle = rng.uniform(0, 2 * np.pi)
        curve = rng.uniform(-1.5, 1.5)
        t = np.linspace(0, 1.3 * radius, 200)
        vy = oy + t * np.sin(angle + curve * t / radius)
        vx = ox + t * np.cos(angle + curve * t / radius)
        for y, x in zip(vy.astype(int), vx.astype(int), strict=True):
            if 0 <= y < height and 0 <= x < width:
                vessels[y, x] = 1.0
    light -= 0.25 * vessels
    colour = np.stack([210 * light, 95 * light, 35 * light], axis=-1)
    colour += rng.normal(0, 3, colour.shape)
    image = np.where(disc[..., None], colour, 0.0)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def encode(image: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    """Encodes an RGB array with PIL (`fmt` is a PIL format name, e.g. PNG or JPEG)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def reencoded_copy(image: np.ndarray, scale: float = 2.0, quality: int = 90) -> bytes:
    """A duplicate the way APTOS has them: resized and JPEG re-encoded, returned as JPEG bytes."""
    height, width = image.shape[:2]
    pil = Image.fromarray(image).resize(
        (round(width * scale), round(height * scale)), Image.Resampling.BICUBIC
    )
    buffer = io.BytesIO()
    pil.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def write_layout(
    root: pathlib.Path,
    train: dict[str, int],
    test: list[str],
    images: dict[str, bytes],
    train_csv: str | None = None,
    test_csv: str | None = None,
) -> pathlib.Path:
    """Writes a Kaggle-layout folder.

    Args:
        root: folder to create.
        train: `{id_code: grade}` for `train.csv`.
        test: test ids for `test.csv`.
        images: `{relative path: bytes}` (e.g. `train_images/x.png`). Ids without an entry get
            no file (a missing image).
        train_csv: str. Overrides the `train.csv` text. Defaults to one built from `train`.
        test_csv: str. Overrides the `test.csv` text. Defaults to one built from `test`.

    Returns:
        `root`.
    """
    root = pathlib.Path(root)
    for sub in ("train_images", "test_images"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    if train_csv is None:
        train_csv = "id_code,diagnosis\n" + "".join(f"{i},{g}\n" for i, g in train.items())
    if test_csv is None:
        test_csv = "id_code\n" + "".join(f"{i}\n" for i in test)
    (root / "train.csv").write_bytes(train_csv.encode("utf-8"))
    (root / "test.csv").write_bytes(test_csv.encode("utf-8"))
    (root / "sample_submission.csv").write_text(
        "id_code,diagnosis\n" + "".join(f"{i},0\n" for i in test)
    )
    for rel, data in images.items():
        (root / rel).write_bytes(data)
    return root


def zip_layout(folder: pathlib.Path, zip_path: pathlib.Path) -> pathlib.Path:
    """Zips a Kaggle-layout folder with members at the archive root, like the Kaggle download."""
    zip_path = pathlib.Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(pathlib.Path(folder).rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return zip_path


def default_images() -> dict[str, bytes]:
    """The dummy set's image files: `{relative path: bytes}`."""
    images = {}
    arrays = {}
    for n, id_code in enumerate(TRAIN):
        if id_code in DUPLICATE_OF:
            continue
        arrays[id_code] = fundus_like(seed=n)
        images[f"train_images/{id_code}.png"] = encode(arrays[id_code], optimize=True)
    for copy_id, original in DUPLICATE_OF.items():
        # Kaggle names every file .png; the copy's bytes went through JPEG and a resize.
        jpeg = reencoded_copy(arrays[original])
        rgb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
        images[f"train_images/{copy_id}.png"] = encode(rgb, optimize=True)
    for n, id_code in enumerate(TEST):
        images[f"test_images/{id_code}.png"] = encode(fundus_like(seed=100 + n), optimize=True)
    return images


def main() -> None:
    here = pathlib.Path(__file__).resolve().parent
    folder = here / "folder"
    if folder.exists():
        shutil.rmtree(folder)
    write_layout(folder, TRAIN, TEST, default_images())
    zip_layout(folder, here / "zip" / "aptos2019-blindness-detection.zip")


if __name__ == "__main__":
    main()
