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
from eyegazer_datasets.common import build, duplicates, images, kaggle_source, layouts, splits

from eyegazer_keras import GRADE_NAMES

logger = logging.getLogger(__name__)

ZIP_NAME = "aptos2019-blindness-detection.zip"
EXTRACTED_NAME = "aptos2019-blindness-detection"
TRAIN_CSV = "train.csv"
TEST_CSV = "test.csv"
TRAIN_DIR = "train_images"
TEST_DIR = "test_images"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
CONFLICT_POLICIES = duplicates.CONFLICT_POLICIES
SPLIT_RULE = splits.SPLIT_RULE
REPORT_NAME = build.REPORT_NAME
DEFAULT_MAX_BAD_FRACTION = build.DEFAULT_MAX_BAD_FRACTION
DEFAULT_MAX_MEGAPIXELS = images.DEFAULT_MAX_MEGAPIXELS
HOMEPAGE = "https://www.kaggle.com/competitions/aptos2019-blindness-detection"
DOWNLOAD_HINT = (
    f"{ZIP_NAME} from {HOMEPAGE}/data "
    "(or `kaggle competitions download -c aptos2019-blindness-detection`)"
)

# The one-line errors of this builder are `DatasetBuildError`s (a `ValueError`).
Aptos2019BuildError = kaggle_source.DatasetBuildError

MANUAL_DOWNLOAD_INSTRUCTIONS = layouts.MANUAL_DOWNLOAD_INSTRUCTIONS["aptos2019"]


@dataclasses.dataclass(eq=False)
class Aptos2019Config(build.FundusConfig):
    """What changes the bytes on disk; see `build.FundusConfig` for the fields."""


def make_config(
    size: int = 512,
    ben_graham: bool = False,
    conflict_policy: str = "keep",
    duplicate_max_distance: int = duplicates.DEFAULT_MAX_DISTANCE,
) -> Aptos2019Config:
    """Returns a config named after its choices, e.g. `384_ben_graham_drop`.

    Args:
        size: int. Stored image side. Defaults to 512.
        ben_graham: bool. Ben Graham variant. Defaults to False.
        conflict_policy: str. `keep`, `drop` or `majority`. Defaults to `keep`.
        duplicate_max_distance: int. Hamming threshold for duplicate candidates. Defaults to 8.
    """
    return build.make_config(
        size, ben_graham, conflict_policy, duplicate_max_distance, config_class=Aptos2019Config
    )


def parse_labels_csv(
    data: bytes, filename: str = TRAIN_CSV, require_diagnosis: bool = True
) -> dict[str, int]:
    """Parses and checks `train.csv` (`id_code,diagnosis`) or `test.csv` (`id_code`).

    Read with the `csv` module: BOM, CRLF, quoted fields, extra columns and whitespace are fine.

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
    grades, _ = kaggle_source.read_id_grades(
        data,
        filename,
        "id_code",
        "diagnosis" if require_diagnosis else None,
        fix="Fix the row or re-download train.csv from Kaggle.",
    )
    return grades


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
        if folder not in by_folder or not fname or "/" in fname:
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

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "1.1.0": "EXIF-aware decode, disc crop (fitted circle), Ben Graham with Graham's 90 % "
        "boundary clip, fundus quality gate on train photos (skipped, counted by reason).",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    DOWNLOAD_HINT = DOWNLOAD_HINT
    BUILDER_CONFIGS = [
        make_config(512),
        make_config(512, ben_graham=True),
        make_config(256),
        make_config(512, conflict_policy="drop"),
        make_config(512, conflict_policy="majority"),
    ]
    DEFAULT_CONFIG_NAME = "512"

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.size
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                    "id_code": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=list(GRADE_NAMES)),
                    "has_label": tfds.features.Scalar(dtype=np.bool_),
                    "original_diagnosis": tfds.features.Scalar(dtype=np.int32),
                    "original_height": tfds.features.Scalar(dtype=np.int32),
                    "original_width": tfds.features.Scalar(dtype=np.int32),
                    "image_hash": tfds.features.Text(),
                    "duplicate_group": tfds.features.Text(),
                    "label_conflict": tfds.features.Scalar(dtype=np.bool_),
                }
            ),
            supervised_keys=("image", "label"),
            homepage=HOMEPAGE,
        )

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
        decoded = self.decode(source, jobs)
        report = self.base_report(source, decoded)
        report["unlisted_images"] = unlisted
        fallback = {j.key: f"{TRAIN_DIR if j.key in train else TEST_DIR}/{j.key}.png" for j in jobs}
        good = self.skip_report(decoded, jobs, report, fallback)
        groups = build.duplicate_groups(good, config)
        good_train = {i: g for i, g in train.items() if i in good}
        validation = assign_validation(good_train, groups)
        resolution = duplicates.resolve_conflicts(groups, good_train, config.conflict_policy)

        def split_of(i: str) -> str:
            if i in test:
                return "test"
            return "validation" if i in validation else "train"

        plan = self._plan_rows(good, train, split_of, groups, resolution)
        group_reports = self._group_reports(groups, train, test, good, split_of, resolution)
        n_bad = len(report["skipped"])
        build.check_not_empty(
            plan,
            report,
            f"{len(good)} images decoded, {n_bad} skipped, {len(report['ungradable'])} "
            f"ungradable, {len(resolution.dropped)} dropped by conflict_policy="
            f"{config.conflict_policy}",
        )
        report.update(
            {
                "counts": {
                    "train_csv_rows": len(train),
                    "test_csv_rows": len(test),
                    "decoded": len(good),
                    "skipped": n_bad,
                    "ungradable": len(report["ungradable"]),
                    "unlisted_images": len(unlisted),
                    "duplicate_groups": len(groups),
                    "label_conflict_groups": len(resolution.conflicting),
                    "dropped_by_policy": len(resolution.dropped),
                    **{split: len(rows) for split, rows in plan.items()},
                },
                "duplicate_groups": group_reports,
                "validation": {
                    "rule": SPLIT_RULE,
                    "fraction": splits.VALIDATION_FRACTION,
                    "ids": sorted(validation),
                },
            }
        )
        logger.info(
            "aptos2019 [%s]: train %d, validation %d, test %d; %d skipped, %d duplicate groups "
            "(%d with conflicting grades, policy %s)",
            config.name,
            len(plan["train"]),
            len(plan["validation"]),
            len(plan["test"]),
            n_bad,
            len(groups),
            len(resolution.conflicting),
            config.conflict_policy,
        )
        return plan, report

    def _plan_rows(self, good, train, split_of, groups, resolution) -> dict[str, list[dict]]:
        """Step 7: one row per example, by split (dropped photos leave the scratch folder)."""
        group_id = {i: g[0] for g in groups for i in g}
        plan: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
        for i in sorted(good):
            r = good[i]
            if i in resolution.dropped:
                (self.scratch_dir / f"{i}.png").unlink()
                continue
            plan[split_of(i)].append(
                {
                    "key": i,
                    "id_code": i,
                    "label": resolution.labels.get(i, -1),
                    "has_label": i in train,
                    "original_diagnosis": train.get(i, -1),
                    "original_height": r.height,
                    "original_width": r.width,
                    "image_hash": f"{r.phash:016x}",
                    "duplicate_group": group_id.get(i, ""),
                    "label_conflict": group_id.get(i, "") in resolution.conflicting,
                }
            )
        return plan

    @staticmethod
    def _group_reports(groups, train, test, good, split_of, resolution) -> list[dict]:
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
                "label_conflict": g[0] in resolution.conflicting,
                "crosses_train_test": bool(set(g) & set(test)) and bool(set(g) & set(train)),
                "action": resolution.actions[g[0]],
            }
            for g in groups
        ]


load_build_report = build.load_build_report


def prepare(
    manual_dir: str | epath.PathLike,
    data_dir: str | epath.PathLike | None = None,
    config: str | Aptos2019Config = "512",
    *,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    num_workers: int | None = None,
    keep_ungradable: bool = False,
) -> dict:
    """Builds APTOS 2019 from the Kaggle zip or folder and returns the build report.

    This is what `eyegazer prepare aptos2019 --manual-dir DIR` calls.

    Args:
        manual_dir: path. The folder holding `aptos2019-blindness-detection.zip`, the zip
            itself, or the extracted folder.
        data_dir: path. TFDS data dir. Defaults to TFDS's default (`~/tensorflow_datasets`).
        config: str or `Aptos2019Config`. Defaults to `"512"`.
        max_bad_fraction: float. See `build.FundusBuilder`. Defaults to 0.01.
        max_megapixels: float. See `build.FundusBuilder`. Defaults to 50.
        num_workers: int. Decoding threads. Defaults to the CPU count.
        keep_ungradable: bool. Keep photos the quality gate refuses. Defaults to False.

    Returns:
        The build report (dict), also written to `<data_dir>/aptos2019/<config>/<version>/`.

    Raises:
        DatasetBuildError: bad input (a `ValueError` with a one-line message naming the fix).
    """
    return build.prepare(
        Builder,
        manual_dir,
        data_dir,
        config,
        max_bad_fraction=max_bad_fraction,
        max_megapixels=max_megapixels,
        num_workers=num_workers,
        keep_ungradable=keep_ungradable,
    )
