"""Generates the fundus_folder dummy data: synthetic fundus-like photos, never patient photos.

Two layouts, the two spellings graded-folder copies use:

* `named/`: `No_DR/ Mild/ Moderate/ Severe/ Proliferate_DR/`, PNGs (as the resized Kaggle
  derivatives ship), plus `groups.csv` (`image,patient`: two photos per patient);
* `numeric_zip/graded.zip`: the same photos in `0/ ... 4/` under one top folder, as JPEGs.

Run from the repository root:

    python datasets/fundus_folder/dummy_data/make_dummy_data.py
"""

from __future__ import annotations

import pathlib
import shutil

from eyegazer_datasets.common.dummy_data import encode, fresh_dir, fundus_like, zip_folder

CLASS_FOLDERS = ("No_DR", "Mild", "Moderate", "Severe", "Proliferate_DR")
PER_CLASS = {0: 6, 1: 4, 2: 4, 3: 2, 4: 2}
SIZE = (96, 72)


def photos() -> dict[str, tuple[int, int]]:
    """`{name: (grade, seed)}`: e.g. `p03_a` is patient p03's first photo."""
    out = {}
    n = 0
    for grade, count in PER_CLASS.items():
        for k in range(count):
            patient = f"p{grade}{k // 2}"
            out[f"{patient}_{'ab'[k % 2]}"] = (grade, 500 + n)
            n += 1
    return out


def write_named(root: pathlib.Path, folders=CLASS_FOLDERS, fmt: str = "PNG") -> pathlib.Path:
    """Writes `root/<class folder>/<name>.png` and `root/groups.csv`."""
    root = pathlib.Path(root)
    ext = {"PNG": "png", "JPEG": "jpeg"}[fmt]
    for name, (grade, seed) in photos().items():
        folder = root / folders[grade]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.{ext}").write_bytes(encode(fundus_like(seed, SIZE), fmt))
    return root


def groups_csv(path: pathlib.Path) -> pathlib.Path:
    """Writes `image,patient` rows (file names with extension, as users have them)."""
    path = pathlib.Path(path)
    path.write_text(
        "image,patient\n" + "".join(f"{n}.png,{n.rsplit('_', 1)[0]}\n" for n in photos())
    )
    return path


def write_numeric_zip(zip_path: pathlib.Path, scratch: pathlib.Path) -> pathlib.Path:
    """Zips the photos as `graded/0/ ... graded/4/` JPEGs."""
    tree = write_named(scratch / "graded", folders=tuple(str(g) for g in range(5)), fmt="JPEG")
    zip_folder(tree, zip_path, "graded/")
    shutil.rmtree(tree)
    return pathlib.Path(zip_path)


def main() -> None:
    here = fresh_dir(pathlib.Path(__file__).resolve().parent, "named", "numeric_zip")
    write_named(here / "named")
    groups_csv(here / "named" / "groups.csv")
    write_numeric_zip(here / "numeric_zip" / "graded.zip", here)


if __name__ == "__main__":
    main()
