"""EyePACS / Kaggle Diabetic Retinopathy Detection (2015): 35,126 graded training photos, 0-4.

The builder reads Kaggle's layout offline (no download is ever attempted, unlike the TFDS catalog
builder `diabetic_retinopathy_detection` 3.0.0, which fetches `retinopathy_solution.csv`
unconditionally): `trainLabels.csv` (`image,level`) with `train/*.jpeg`, optionally `test/*.jpeg`
with `retinopathy_solution.csv` (`image,level,Usage`), and optionally Kaggle's `sample/`. Each
part may be an extracted folder, a zip (`train.zip`), or the zip split into parts as Kaggle ships
it (`train.zip.001`, `train.zip.002`, ...), read in place. Every photo is decoded once, gated,
cropped and resized by `eyegazer_keras.fundus` and stored as a lossless PNG.

Both eyes of a patient (`10_left`, `10_right`) always land in the same split: the split is
grouped by patient (and by duplicate group), so validation never holds the other eye of a
training patient. The build report states the patients per split.

Example:

```python
from eyegazer_datasets.eyepacs2015 import eyepacs2015_dataset_builder as eyepacs

report = eyepacs.prepare(manual_dir="~/Downloads/diabetic-retinopathy-detection")
print(report["patients"])
```
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

# Shared with every eyegazer builder. Absolute: `tfds build datasets/eyepacs2015` imports this
# file as the top-level package `eyepacs2015`, where `from ..common` has no parent to climb to.
from eyegazer_datasets.common import build, duplicates, images, kaggle_source, layouts, splits

from eyegazer_keras import GRADE_NAMES

logger = logging.getLogger(__name__)

LABELS_CSV = "trainLabels.csv"
SOLUTION_CSV = "retinopathy_solution.csv"
TRAIN_DIR = "train"
TEST_DIR = "test"
SAMPLE_DIR = "sample"
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".tif", ".tiff")
HOMEPAGE = "https://www.kaggle.com/competitions/diabetic-retinopathy-detection"
DOWNLOAD_HINT = (
    f"trainLabels.csv(.zip) and train.zip.001-005 from {HOMEPAGE}/data "
    "(or `kaggle competitions download -c diabetic-retinopathy-detection`)"
)
_EYE_RE = re.compile(r"^(?P<patient>.+)_(?P<eye>left|right)$")
_ZIP_NAMES = re.compile(
    r"^(train|test|sample|trainLabels\.csv|retinopathy_solution\.csv"
    r"|diabetic-retinopathy-detection)\.zip$"
)

MANUAL_DOWNLOAD_INSTRUCTIONS = layouts.MANUAL_DOWNLOAD_INSTRUCTIONS["eyepacs2015"]


@dataclasses.dataclass(eq=False)
class EyePacs2015Config(build.FundusConfig):
    """What changes the bytes on disk; see `build.FundusConfig` for the fields."""


def make_config(
    size: int = 512,
    ben_graham: bool = False,
    conflict_policy: str = "keep",
    duplicate_max_distance: int = duplicates.DEFAULT_MAX_DISTANCE,
) -> EyePacs2015Config:
    """Returns a config named after its choices, e.g. `512_ben_graham`.

    Args:
        size: int. Stored image side. Defaults to 512.
        ben_graham: bool. Ben Graham variant. Defaults to False.
        conflict_policy: str. `keep`, `drop` or `majority`. Defaults to `keep`.
        duplicate_max_distance: int. Hamming threshold for duplicate candidates. Defaults to 8.
    """
    return build.make_config(
        size, ben_graham, conflict_policy, duplicate_max_distance, config_class=EyePacs2015Config
    )


def patient_and_eye(name: str) -> tuple[str, str]:
    """`"10_left"` -> `("10", "left")`; a name without an eye suffix is its own patient.

    Args:
        name: str. Kaggle's image name (file stem).

    Returns:
        `(patient id, "left" | "right" | "")`.
    """
    m = _EYE_RE.match(name)
    return (m.group("patient"), m.group("eye")) if m else (name, "")


def open_source(manual_dir: epath.PathLike) -> kaggle_source.Source:
    """The EyePACS download: a folder (with folders, zips or zip parts), or one zip.

    Raises:
        DatasetBuildError: no `trainLabels.csv` anywhere (one line naming what to download).
    """
    return kaggle_source.open_source(
        manual_dir,
        anchor=LABELS_CSV,
        extracted_names=["diabetic-retinopathy-detection"],
        accept_zip=lambda name: bool(_ZIP_NAMES.match(name)),
        subdirs=[TRAIN_DIR, TEST_DIR, SAMPLE_DIR],
        hint=DOWNLOAD_HINT,
        what=f"{LABELS_CSV} (or {LABELS_CSV}.zip) nor a zip holding it",
    )


def _images_in(files: list[str], folder: str) -> dict[str, str]:
    """`{stem: relpath}` of the photos directly in `folder/` (`""`: the layout root)."""
    out = {}
    for rel in sorted(files):
        parent, _, fname = rel.rpartition("/")
        stem, dot, ext = fname.rpartition(".")
        if parent == folder and dot and f".{ext.lower()}" in IMAGE_EXTENSIONS:
            if stem not in out or rel.lower().endswith(".jpeg"):
                out[stem] = rel
    return out


def _misplaced(files: list[str], names: Mapping[str, int], expected: str) -> str:
    """Where the photos named by a CSV are, when not in `expected/` (for the error)."""
    found: dict[str, int] = {}
    for rel in files:
        parent, _, fname = rel.rpartition("/")
        stem, dot, _ = fname.rpartition(".")
        if dot and stem in names and parent != expected:
            found[parent or "."] = found.get(parent or ".", 0) + 1
    if not found:
        return ""
    folder, count = max(found.items(), key=lambda kv: kv[1])
    return f"{count} of them are in {folder + '/' if folder != '.' else 'the top folder'}"


class Builder(build.FundusBuilder):
    """DatasetBuilder for EyePACS / Kaggle DR Detection 2015 (manual download, offline).

    Args: see `build.FundusBuilder` (`max_bad_fraction`, `max_megapixels`, `num_workers`,
        `keep_ungradable`, `manual_path`, and TFDS's `data_dir`, `config`, ...).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: patient-grouped splits, offline."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    DOWNLOAD_HINT = DOWNLOAD_HINT
    BUILDER_CONFIGS = [
        make_config(512),
        make_config(512, ben_graham=True),
        make_config(256),
        make_config(512, conflict_policy="drop"),
    ]
    DEFAULT_CONFIG_NAME = "512"

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.size
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                    "id_code": tfds.features.Text(doc="Kaggle image name, e.g. 10_left"),
                    "patient_id": tfds.features.Text(doc="e.g. 10 (both eyes share it)"),
                    "eye": tfds.features.Text(doc="left, right, or empty"),
                    "label": tfds.features.ClassLabel(names=list(GRADE_NAMES)),
                    "has_label": tfds.features.Scalar(dtype=np.bool_),
                    "usage": tfds.features.Text(doc="test: Kaggle's Public/Private; else empty"),
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

    # -- step 0/1: labels and the photos they name ----------------------------------------------

    def _read_labels(self, source: kaggle_source.Source):
        """`(train grades, test grades or None, test usage)`, checked before any image work."""
        files = source.files()
        if LABELS_CSV not in files:
            raise kaggle_source.DatasetBuildError(
                f"{source.description}: no {LABELS_CSV}. Put Kaggle's {LABELS_CSV} (or "
                f"{LABELS_CSV}.zip) next to {TRAIN_DIR}/."
            )
        train, _ = kaggle_source.read_id_grades(
            source.read(LABELS_CSV),
            LABELS_CSV,
            "image",
            "level",
            fix=f"Fix the row of {LABELS_CSV}.",
        )
        has_test_dir = any(f.startswith(f"{TEST_DIR}/") for f in files)
        if SOLUTION_CSV not in files:
            if has_test_dir:
                logger.warning(
                    "eyepacs2015: %s/ is there but %s is not: no test split (Kaggle's test "
                    "labels are in that file).",
                    TEST_DIR,
                    SOLUTION_CSV,
                )
            return train, None, {}
        if not has_test_dir:
            raise kaggle_source.DatasetBuildError(
                f"{source.description}: {SOLUTION_CSV} is there but {TEST_DIR}/ is not. Add the "
                f"test photos ({TEST_DIR}/ or test.zip.001...) or remove {SOLUTION_CSV}."
            )
        test, extra = kaggle_source.read_id_grades(
            source.read(SOLUTION_CSV),
            SOLUTION_CSV,
            "image",
            "level",
            fix=f"Fix the row of {SOLUTION_CSV}.",
            extra_columns=["usage"],
        )
        both = sorted(set(train) & set(test))
        if both:
            raise kaggle_source.DatasetBuildError(
                f"image {both[0]!r} (and {len(both) - 1} more) is in both {LABELS_CSV} and "
                f"{SOLUTION_CSV}; delete it from one of them."
            )
        return train, test, {i: e["usage"] for i, e in extra.items()}

    def _index_images(self, source, train, test) -> tuple[list[images.Job], list[str]]:
        files = source.files()
        train_files = _images_in(files, TRAIN_DIR)
        if not set(train) & set(train_files):
            where = _misplaced(files, train, TRAIN_DIR)
            raise kaggle_source.DatasetBuildError(
                f"{source.description}: {LABELS_CSV} names {len(train)} photos but {TRAIN_DIR}/ "
                f"holds none of them" + (f"; {where}" if where else "") + f". Put them in "
                f"{TRAIN_DIR}/ (Kaggle's train.zip extracts to {TRAIN_DIR}/)."
            )
        jobs = [images.Job(i, train_files.get(i), gate=True) for i in train]
        unlisted = sorted(rel for stem, rel in train_files.items() if stem not in train)
        if test:
            test_files = _images_in(files, TEST_DIR)
            if not set(test) & set(test_files):
                where = _misplaced(files, test, TEST_DIR)
                raise kaggle_source.DatasetBuildError(
                    f"{source.description}: {SOLUTION_CSV} names {len(test)} photos but "
                    f"{TEST_DIR}/ holds none of them" + (f"; {where}" if where else "") + "."
                )
            jobs += [images.Job(i, test_files.get(i)) for i in test]
            unlisted += sorted(rel for stem, rel in test_files.items() if stem not in test)
        for stem, rel in _images_in(files, SAMPLE_DIR).items():
            jobs.append(images.Job(f"sample__{stem}", rel))
        if unlisted:
            logger.warning(
                "eyepacs2015: %d photo(s) are named by no CSV row and are ignored, e.g. %s",
                len(unlisted),
                unlisted[0],
            )
        return jobs, unlisted

    # -- the plan ----------------------------------------------------------------------------------

    def _plan_build(self, source: kaggle_source.Source) -> tuple[dict[str, list[dict]], dict]:
        config = self.builder_config
        train, test, usage = self._read_labels(source)
        test = test or {}
        jobs, unlisted = self._index_images(source, train, test)
        decoded = self.decode(source, jobs)
        report = self.base_report(source, decoded)
        report["unlisted_images"] = unlisted
        fallback = {j.key: f"{TEST_DIR if j.key in test else TRAIN_DIR}/{j.key}.jpeg" for j in jobs}
        good = self.skip_report(decoded, jobs, report, fallback)
        good_train = {i: g for i, g in train.items() if i in good}
        dup_groups = build.duplicate_groups({i: good[i] for i in good_train}, config)
        patient_of = {i: patient_and_eye(i)[0] for i in [*train, *test]}
        by_patient: dict[str, list[str]] = {}
        for i in good_train:
            by_patient.setdefault(patient_of[i], []).append(i)
        together = duplicates.merge_groups(good_train, dup_groups, by_patient.values())
        validation = splits.assign_validation(good_train, together, salt="eyepacs2015")
        resolution = duplicates.resolve_conflicts(dup_groups, good_train, config.conflict_policy)

        def split_of(i: str) -> str:
            if i.startswith("sample__"):
                return "sample"
            if i in test:
                return "test"
            return "validation" if i in validation else "train"

        plan = self._plan_rows(good, train, test, usage, split_of, dup_groups, resolution)
        written = {row["id_code"]: s for s, rows in plan.items() if s != "sample" for row in rows}
        per_split, shared = splits.patients_per_split(written, patient_of)
        if shared:  # the rule groups patients; this is the check that it did
            raise kaggle_source.DatasetBuildError(
                f"patient {shared[0]!r} (and {len(shared) - 1} more) would be in two splits; "
                "this is a bug in the split rule, please report it.",
                report=report,
            )
        build.check_not_empty(
            {s: rows for s, rows in plan.items() if s in ("train", "validation")},
            report,
            f"{len(good)} photos decoded, {len(report['skipped'])} skipped",
        )
        report.update(
            {
                "counts": {
                    "train_csv_rows": len(train),
                    "solution_csv_rows": len(test),
                    "decoded": len(good),
                    "skipped": len(report["skipped"]),
                    "ungradable": len(report["ungradable"]),
                    "unlisted_images": len(unlisted),
                    "duplicate_groups": len(dup_groups),
                    "label_conflict_groups": len(resolution.conflicting),
                    "dropped_by_policy": len(resolution.dropped),
                    **{split: len(rows) for split, rows in plan.items()},
                },
                "patients": per_split,
                "patients_in_two_splits": shared,
                "duplicate_groups": [
                    {"group": g[0], "members": g, "action": resolution.actions[g[0]]}
                    for g in dup_groups
                ],
                "validation": {
                    "rule": splits.SPLIT_RULE,
                    "grouped_by": ["patient", "duplicate_group"],
                    "fraction": splits.VALIDATION_FRACTION,
                    "ids": sorted(validation),
                },
            }
        )
        logger.info(
            "eyepacs2015 [%s]: %s photos, patients %s",
            config.name,
            {s: len(r) for s, r in plan.items()},
            per_split,
        )
        return plan, report

    def _plan_rows(self, good, train, test, usage, split_of, groups, resolution):
        """Step 7: one row per example (train, validation, then test and sample when present)."""
        group_id = {i: g[0] for g in groups for i in g}
        plan: dict[str, list[dict]] = {"train": [], "validation": []}
        if test:
            plan["test"] = []
        if any(k.startswith("sample__") for k in good):
            plan["sample"] = []
        for key in sorted(good):
            r = good[key]
            if key in resolution.dropped:
                (self.scratch_dir / f"{key}.png").unlink()
                continue
            name = key.removeprefix("sample__")
            patient, eye = patient_and_eye(name)
            grade = test.get(name, train.get(name, -1))
            plan[split_of(key)].append(
                {
                    "key": key,
                    "id_code": name,
                    "patient_id": patient,
                    "eye": eye,
                    "label": resolution.labels.get(name, grade),
                    "has_label": grade >= 0,
                    "usage": usage.get(name, ""),
                    "original_diagnosis": grade,
                    "original_height": r.height,
                    "original_width": r.width,
                    "image_hash": f"{r.phash:016x}",
                    "duplicate_group": group_id.get(key, ""),
                    "label_conflict": group_id.get(key, "") in resolution.conflicting,
                }
            )
        return plan


load_build_report = build.load_build_report


def prepare(
    manual_dir: str | epath.PathLike,
    data_dir: str | epath.PathLike | None = None,
    config: str | EyePacs2015Config = "512",
    **options,
) -> dict:
    """Builds EyePACS 2015 from Kaggle's layout (offline) and returns the build report.

    This is what `eyegazer prepare eyepacs2015 --manual-dir DIR` calls.

    Args:
        manual_dir: path. The folder holding the layout (folders, zips or zip parts), or a zip
            holding the whole layout.
        data_dir: path. TFDS data dir. Defaults to `~/tensorflow_datasets`.
        config: str or `EyePacs2015Config`. Defaults to `"512"`.
        **options: `build.FundusBuilder` options (`max_bad_fraction`, `max_megapixels`,
            `num_workers`, `keep_ungradable`).

    Returns:
        The build report (dict), also written next to the data.

    Raises:
        DatasetBuildError: bad input (a `ValueError` with a one-line message naming the fix).
    """
    return build.prepare(Builder, manual_dir, data_dir, config, **options)
