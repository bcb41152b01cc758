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

import numpy as np
from eyegazer_datasets.common.dummy_data import (
    encode,
    fresh_dir,
    fundus_like,
    reencoded_copy,
    zip_folder,
)
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
    here = fresh_dir(pathlib.Path(__file__).resolve().parent, "folder")
    write_layout(here / "folder", TRAIN, TEST, default_images())
    zip_folder(here / "folder", here / "zip" / "aptos2019-blindness-detection.zip")


if __name__ == "__main__":
    main()
