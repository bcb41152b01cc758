"""APTOS 2019 Blindness Detection: fundus photographs graded 0-4 for diabetic retinopathy.

The builder reads the Kaggle download (the zip, read in place, or the extracted folder), checks
both CSVs before touching an image, decodes every photo ONCE in parallel, crops and resizes it
with `eyegazer_keras.fundus.preprocess_fundus` (the code serving runs) and stores it as a
lossless PNG. It hashes every photo (perceptual hash), groups duplicates, keeps each group in
one split, applies the configured policy to groups with conflicting grades and writes a build
report (`build_report.json`) next to the prepared data.

Example:

```python
from eyegazer_datasets.aptos2019 import aptos2019_dataset_builder as aptos

report = aptos.prepare(manual_dir="~/Downloads", data_dir="~/tensorflow_datasets")
print(report["counts"])
```
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

# Shared with every eyegazer builder. Absolute: `tfds build datasets/aptos2019` imports this file
# as the top-level package `aptos2019`, where `from ..common` has no parent to climb to.
from eyegazer_datasets.common import (
    build,
    duplicates,
    images,
    inventory,
    kaggle_source,
    label_csv,
    layouts,
    plan,
    splits,
)

from eyegazer_keras.fundus import formats

logger = logging.getLogger(__name__)

ZIP_NAME = "aptos2019-blindness-detection.zip"
EXTRACTED_NAME = "aptos2019-blindness-detection"
TRAIN_CSV = "train.csv"
TEST_CSV = "test.csv"
TRAIN_DIR = "train_images"
TEST_DIR = "test_images"
# One set of formats for builders, predict, the app (and, without TIFF/DICOM, serving).
IMAGE_EXTENSIONS = tuple(formats.IMAGE_EXTENSIONS)
CONFLICT_POLICIES = duplicates.CONFLICT_POLICIES
HOMEPAGE = "https://www.kaggle.com/competitions/aptos2019-blindness-detection"
DOWNLOAD_HINT = (
    f"{ZIP_NAME} from {HOMEPAGE}/data "
    "(or `kaggle competitions download -c aptos2019-blindness-detection`)"
)

# The one-line errors of this builder are `DatasetBuildError`s (a `ValueError`).
Aptos2019BuildError = kaggle_source.DatasetBuildError


@dataclasses.dataclass(eq=False)
class Aptos2019Config(build.FundusConfig):
    """What changes the bytes on disk; see `build.FundusConfig` for the fields."""


make_config = Aptos2019Config.make


def parse_labels_csv(
    data: bytes, filename: str = TRAIN_CSV, require_diagnosis: bool = True
) -> dict[str, int]:
    """Parses and checks `train.csv` (`id_code,diagnosis`) or `test.csv` (`id_code`).

    Read with the `csv` module: BOM, CRLF, quoted fields, extra columns and whitespace are fine.
    Ids written with a photo extension (`abc123.png`) are read as the stem (`abc123`).

    Args:
        data: bytes. The file content.
        filename: str. Name used in error messages. Defaults to `train.csv`.
        require_diagnosis: bool. Whether a `diagnosis` column (grade 0-4) is required. When
            False (`test.csv`) every id maps to -1. Defaults to True.

    Returns:
        `{id_code: grade}` in file order (grade -1 without a diagnosis column).

    Raises:
        DatasetBuildError: naming the file, the row and the fix.
    """
    grades, _ = label_csv.read_id_grades(
        data,
        filename,
        "id_code",
        "diagnosis" if require_diagnosis else None,
        fix="Fix the row or re-download train.csv from Kaggle.",
    )
    return label_csv.strip_image_extension(grades, filename, "id_code", IMAGE_EXTENSIONS)[0]


def open_source(manual_dir: epath.PathLike) -> kaggle_source.Source:
    """Finds the Kaggle data: the extracted folder, the folder holding the zip, or the zip.

    Args:
        manual_dir: path. The manual dir, the extracted folder, or the zip itself.

    Returns:
        A `kaggle_source.Source` (close it, or use it as a context manager).

    Raises:
        DatasetBuildError: no zip and no folder with `train.csv`.
    """
    return kaggle_source.open_source(
        manual_dir,
        anchor=TRAIN_CSV,
        extracted_names=[EXTRACTED_NAME],
        accept_zip=lambda name: name == ZIP_NAME or "aptos" in name,
        subdirs=[TRAIN_DIR, TEST_DIR],
        hint=DOWNLOAD_HINT,
        what=f"{ZIP_NAME} nor an extracted folder with {TRAIN_CSV}",
    )


def index_images(
    files: list[str], train: Mapping[str, int], test: Mapping[str, int]
) -> tuple[list[images.Job], list[str]]:
    """Step 1: maps CSV ids to their image files; lists image files no row names.

    A `.png` wins over a `.jpg`/`.jpeg` of the same id. Train photos are quality-gated.

    Returns:
        `(jobs, unlisted files)`: train jobs first, in CSV order, then test jobs.
    """
    by_folder: dict[str, dict[str, str]] = {TRAIN_DIR: {}, TEST_DIR: {}}
    unlisted = []
    for rel in sorted(files):
        folder, _, fname = rel.partition("/")
        if folder not in by_folder or not fname or "/" in fname or formats.is_system_file(rel):
            continue
        stem, dot, ext = fname.rpartition(".")
        known = train if folder == TRAIN_DIR else test
        if not dot or f".{ext.lower()}" not in IMAGE_EXTENSIONS or stem not in known:
            unlisted.append(rel)
            continue
        if by_folder[folder].get(stem) is None or rel.lower().endswith(".png"):
            by_folder[folder][stem] = rel
    if unlisted:
        logger.warning(
            "aptos2019: %d image file(s) are named by no CSV row and are ignored, e.g. %s",
            len(unlisted),
            unlisted[0],
        )
    jobs = [images.Job(i, by_folder[TRAIN_DIR].get(i), gate=True) for i in train]
    jobs += [images.Job(i, by_folder[TEST_DIR].get(i)) for i in test]
    return jobs, unlisted


def not_used(files: list[str], jobs, unlisted: list[str]) -> dict[str, list[str]]:
    """Every file the build does not read, by reason (see `inventory.not_used`)."""
    used = {j.relpath for j in jobs if j.relpath} | {TRAIN_CSV, TEST_CSV}
    unlisted = set(unlisted)

    def reason(rel: str) -> str:
        top, _, rest = rel.partition("/")
        if top not in (TRAIN_DIR, TEST_DIR) or not rest:
            return inventory.NOT_PART_OF_LAYOUT
        if "/" in rest:
            return f"in a subfolder of {top}/ (the photos sit directly in {top}/)"
        if formats.extension_format(rest) is None:
            return inventory.not_a_photo(rel)
        return inventory.UNLISTED if rel in unlisted else inventory.SAME_ID

    return inventory.not_used(files, used, reason)


def assign_validation(
    grades: Mapping[str, int],
    groups=(),
    fraction: float = splits.VALIDATION_FRACTION,
) -> set[str]:
    """The APTOS split rule: `splits.assign_validation` with salt `aptos2019`.

    Args:
        grades: `{id_code: grade}` of the labelled photos.
        groups: duplicate groups (moved together).
        fraction: float. Target validation fraction per grade. Defaults to 0.1.

    Returns:
        The validation ids.
    """
    return splits.assign_validation(grades, groups, fraction, salt="aptos2019")


class Builder(build.FundusBuilder):
    """DatasetBuilder for APTOS 2019 (manual download from Kaggle).

    Args: see `build.FundusBuilder` (`max_bad_fraction`, `max_megapixels`, `num_workers`,
        `keep_ungradable`, and TFDS's `data_dir`, `config`, ...).
    """

    VERSION = tfds.core.Version("1.2.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "1.1.0": "EXIF-aware decode, disc crop (fitted circle), Ben Graham with Graham's 90 % "
        "boundary clip, fundus quality gate on train photos (skipped, counted by reason).",
        "1.2.0": "Quality gate fitted to human graders (EyeQ); every example carries the gate's "
        "verdict: gradable, ungradable_reason, quality_score.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = layouts.MANUAL_DOWNLOAD_INSTRUCTIONS["aptos2019"]
    DOWNLOAD_HINT = DOWNLOAD_HINT
    HOMEPAGE = HOMEPAGE
    BUILDER_CONFIGS = Aptos2019Config.variants("drop", "majority")
    DEFAULT_CONFIG_NAME = "512"

    def _features(self, size: int) -> tfds.features.FeaturesDict:
        after_label = {
            "has_label": tfds.features.Scalar(dtype=np.bool_),
            "original_diagnosis": tfds.features.Scalar(dtype=np.int32),
        }
        return build.fundus_features(size, after_label=after_label)

    def _open_source(self, manual_dir: epath.Path) -> kaggle_source.Source:
        return open_source(manual_dir)

    def _read_csvs(self, source: kaggle_source.Source) -> tuple[dict[str, int], dict[str, int]]:
        """Step 0: both CSVs, checked before any image is touched."""
        present = set(source.files())
        for name in (TRAIN_CSV, TEST_CSV):
            if name not in present:
                raise Aptos2019BuildError(
                    f"{source.description}: no {name}. Expected the Kaggle layout ({TRAIN_CSV}, "
                    f"{TEST_CSV}, {TRAIN_DIR}/, {TEST_DIR}/); re-download the competition data."
                )
        train = parse_labels_csv(source.read(TRAIN_CSV), TRAIN_CSV, require_diagnosis=True)
        test = parse_labels_csv(source.read(TEST_CSV), TEST_CSV, require_diagnosis=False)
        both = sorted(set(train) & set(test))
        if both:
            raise Aptos2019BuildError(
                f"id_code {both[0]!r} (and {len(both) - 1} more) is in both {TRAIN_CSV} and "
                f"{TEST_CSV}; delete it from one of them."
            )
        return train, test

    def _plan_build(self, source: kaggle_source.Source) -> tuple[dict[str, list[dict]], dict]:
        config = self.builder_config
        train, test = self._read_csvs(source)
        jobs, unlisted = index_images(source.files(), train, test)
        fallback = {j.key: f"{TRAIN_DIR if j.key in train else TEST_DIR}/{j.key}.png" for j in jobs}
        unused = not_used(source.files(), jobs, unlisted)
        good, report = self.decode_photos(
            source, jobs, fallback, unlisted_images=unlisted, not_used=unused
        )
        good_train = {i: g for i, g in train.items() if i in good}
        split = plan.plan_split(self.name, good, good_train, config)

        def split_of(i: str) -> str:
            if i in test:
                return "test"
            return "validation" if i in split.validation else "train"

        rows = self._plan_rows(good, train, split_of, split)
        dropped = split.resolution.dropped
        plan.check_not_empty(
            rows,
            report,
            f"{len(good)} images decoded, {len(report['skipped'])} skipped, "
            f"{len(report['ungradable'])} ungradable, {len(dropped)} dropped by conflict_policy="
            f"{config.conflict_policy}",
        )
        counts = {"train_csv_rows": len(train), "test_csv_rows": len(test)}
        group_report = self._group_reports(split, train, test, good, split_of)
        plan.finish_report(report, counts, good, split, rows, group_report)
        logger.info(
            "aptos2019 [%s]: train %d, validation %d, test %d; %d skipped, %d duplicate groups "
            "(%d with conflicting grades, policy %s)",
            config.name,
            len(rows["train"]),
            len(rows["validation"]),
            len(rows["test"]),
            len(report["skipped"]),
            len(split.groups),
            len(split.resolution.conflicting),
            config.conflict_policy,
        )
        return rows, report

    def _plan_rows(self, good, train, split_of, split: plan.SplitPlan) -> dict[str, list[dict]]:
        """Step 7: one row per example, by split (dropped photos leave the scratch folder)."""
        rows: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
        for i in self.kept(sorted(good), split):
            rows[split_of(i)].append(
                {
                    "key": i,
                    "id_code": i,
                    "label": split.resolution.labels.get(i, -1),
                    "has_label": i in train,
                    "original_diagnosis": train.get(i, -1),
                    **split.example_fields(i, good[i]),
                }
            )
        return rows

    @staticmethod
    def _group_reports(split: plan.SplitPlan, train, test, good, split_of) -> list[dict]:
        """Each duplicate group with its members' splits, grades and hashes, and the action."""
        return [
            {
                "group": g[0],
                "members": [
                    {
                        "id_code": i,
                        "split": split_of(i),
                        "diagnosis": train.get(i) if i in train else None,
                        "image_hash": f"{good[i].phash:016x}",
                    }
                    for i in g
                ],
                "label_conflict": g[0] in split.resolution.conflicting,
                "crosses_train_test": bool(set(g) & set(test)) and bool(set(g) & set(train)),
                "action": split.resolution.actions[g[0]],
            }
            for g in split.groups
        ]


load_build_report = build.load_build_report
prepare = Builder.prepare
