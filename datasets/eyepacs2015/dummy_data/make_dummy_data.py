"""Generates the EyePACS 2015 dummy data: synthetic fundus-like JPEGs, never patient photos.

Writes Kaggle's exact layout twice, with two eyes per patient (`10_left`, `10_right`):

* `folder/`: `trainLabels.csv` (`image,level`), `train/<image>.jpeg`, `test/<image>.jpeg`,
  `retinopathy_solution.csv` (`image,level,Usage`), `sample/<image>.jpeg` (two train photos,
  as in Kaggle's `sample.zip`);
* `zip_parts/`: the same, with `train.zip` split into `train.zip.001`, `.002`, `.003` (byte
  pieces of one zip, the way Kaggle ships it), `test.zip` and `sample.zip` as single zips and
  `trainLabels.csv` zipped as `trainLabels.csv.zip`.

Run from the repository root:

    python datasets/eyepacs2015/dummy_data/make_dummy_data.py

The functions are also used by the tests to build other layouts.
"""

from __future__ import annotations

import pathlib
import shutil
import zipfile

from eyegazer_datasets.common.dummy_data import (
    encode,
    fresh_dir,
    fundus_like,
    split_file,
    zip_folder,
)

# image -> level. 8 patients, both eyes each; the eyes of a patient may differ in grade.
TRAIN = {
    "10_left": 0,
    "10_right": 0,
    "13_left": 0,
    "13_right": 0,
    "15_left": 1,
    "15_right": 2,
    "16_left": 4,
    "16_right": 4,
    "17_left": 0,
    "17_right": 1,
    "19_left": 0,
    "19_right": 0,
    "20_left": 2,
    "20_right": 3,
    "21_left": 1,
    "21_right": 1,
}
# image -> (level, Usage). 3 patients.
TEST = {
    "1_left": (0, "Public"),
    "1_right": (0, "Public"),
    "2_left": (2, "Private"),
    "2_right": (1, "Private"),
    "3_left": (4, "Private"),
    "3_right": (3, "Public"),
}
SAMPLE = ["10_left", "10_right"]
SIZE = (120, 90)  # width, height


def photo(name: str) -> bytes:
    """The JPEG of a dummy photo; a seed per name, so every photo differs."""
    seed = 1000 + sum(ord(c) * (k + 1) for k, c in enumerate(name))
    return encode(fundus_like(seed, SIZE), "JPEG", quality=92)


def labels_csv(train: dict[str, int]) -> str:
    return "image,level\n" + "".join(f"{i},{g}\n" for i, g in train.items())


def solution_csv(test: dict[str, tuple[int, str]]) -> str:
    return "image,level,Usage\n" + "".join(f"{i},{g},{u}\n" for i, (g, u) in test.items())


def write_folder(
    root: pathlib.Path,
    train: dict[str, int] = TRAIN,
    test: dict[str, tuple[int, str]] | None = TEST,
    sample: list[str] = SAMPLE,
    train_dir: str = "train",
) -> pathlib.Path:
    """Writes the extracted Kaggle layout.

    Args:
        root: folder to create.
        train: `{image: level}`.
        test: `{image: (level, Usage)}`, or None for no test photos and no solution file.
        sample: names of train photos copied to `sample/`.
        train_dir: folder of the train photos (a wrong name makes a layout mistake).

    Returns:
        `root`.
    """
    root = pathlib.Path(root)
    (root / train_dir).mkdir(parents=True, exist_ok=True)
    (root / "trainLabels.csv").write_text(labels_csv(train))
    for name in train:
        (root / train_dir / f"{name}.jpeg").write_bytes(photo(name))
    if test is not None:
        (root / "test").mkdir(exist_ok=True)
        (root / "retinopathy_solution.csv").write_text(solution_csv(test))
        for name in test:
            (root / "test" / f"{name}.jpeg").write_bytes(photo(name))
    if sample:
        (root / "sample").mkdir(exist_ok=True)
        for name in sample:
            (root / "sample" / f"{name}.jpeg").write_bytes(photo(name))
    return root


def write_zip_parts(root: pathlib.Path, folder: pathlib.Path, parts: int = 3) -> pathlib.Path:
    """Kaggle's shipped form of an extracted layout `folder`: zips, split train zip."""
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    split_file(zip_folder(folder / "train", root / "train.zip", "train/"), parts)
    if (folder / "test").exists():
        zip_folder(folder / "test", root / "test.zip", "test/")
        shutil.copy(folder / "retinopathy_solution.csv", root / "retinopathy_solution.csv")
    if (folder / "sample").exists():
        zip_folder(folder / "sample", root / "sample.zip", "sample/")
    with zipfile.ZipFile(root / "trainLabels.csv.zip", "w") as zf:
        zf.write(folder / "trainLabels.csv", "trainLabels.csv")
    return root


def main() -> None:
    here = fresh_dir(pathlib.Path(__file__).resolve().parent, "folder", "zip_parts")
    write_folder(here / "folder")
    write_zip_parts(here / "zip_parts", here / "folder")


if __name__ == "__main__":
    main()
