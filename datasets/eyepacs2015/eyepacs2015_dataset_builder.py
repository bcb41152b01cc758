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

import csv
import dataclasses
import logging
import re
from collections.abc import Mapping

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

# Shared with every eyegazer builder. Absolute: `tfds build datasets/eyepacs2015` imports this
# file as the top-level package `eyepacs2015`, where `from ..common` has no parent to climb to.
from eyegazer_datasets.common import (
    build,
    images,
    inventory,
    kaggle_source,
    label_csv,
    layouts,
    plan,
)

from eyegazer_keras.fundus import formats

logger = logging.getLogger(__name__)

LABELS_CSV = "trainLabels.csv"
SOLUTION_CSV = "retinopathy_solution.csv"
TRAIN_DIR = "train"
TEST_DIR = "test"
SAMPLE_DIR = "sample"
# One set of formats for builders, predict, the app (and, without TIFF/DICOM, serving).
IMAGE_EXTENSIONS = tuple(formats.IMAGE_EXTENSIONS)
# The `quality` feature: EyeQ's levels 0, 1, 2 (Fu et al., MICCAI 2019), then "not labelled".
QUALITY_LEVELS = ("good", "usable", "reject", "unknown")
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


@dataclasses.dataclass(eq=False)
class EyePacs2015Config(build.FundusConfig):
    """What changes the bytes on disk; see `build.FundusConfig` for the fields."""


make_config = EyePacs2015Config.make


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
        photo = dot and f".{ext.lower()}" in IMAGE_EXTENSIONS and not formats.is_system_file(rel)
        if parent == folder and photo:
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

    Args:
        quality_labels: path or None. A CSV of human image-quality labels, columns
            `image,quality` with EyeQ's levels 0 Good, 1 Usable, 2 Reject (H. Fu et al., MICCAI
            2019, `Label_EyeQ_train.csv` / `Label_EyeQ_test.csv`); stored as the `quality`
            feature (`unknown` for photos it does not list). Defaults to None (all `unknown`).
        **kwargs: see `build.FundusBuilder` (`max_bad_fraction`, `max_megapixels`,
            `num_workers`, `keep_ungradable`, `manual_path`, and TFDS's `data_dir`, `config`).
    """

    def __init__(self, *, quality_labels: epath.PathLike | None = None, **kwargs):
        super().__init__(**kwargs)
        self.quality_labels = None if quality_labels is None else epath.Path(quality_labels)
        self._original_state.update(quality_labels=quality_labels)

    VERSION = tfds.core.Version("1.2.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: patient-grouped splits, offline.",
        "1.1.0": "Quality gate fitted to human graders (EyeQ); every example carries the gate's "
        "verdict (gradable, ungradable_reason, quality_score) and, with quality_labels, human "
        "image-quality labels (quality: good, usable, reject, unknown).",
        "1.2.0": "Build speed: a JPEG much larger than the stored size is decoded at 1/2, 1/4 or "
        "1/8 scale in the DCT domain (short side still >= the stored size); the quality gate and "
        "the pHash look at a copy with a short side >= 512 px (the same for every config); PNGs "
        "at zlib level 1. Stored pixels, gate verdicts and hashes differ slightly from 1.1.0 "
        "(measured in benchmarks/NOTES.md, issue 26).",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = layouts.MANUAL_DOWNLOAD_INSTRUCTIONS["eyepacs2015"]
    DOWNLOAD_HINT = DOWNLOAD_HINT
    HOMEPAGE = HOMEPAGE
    BUILDER_CONFIGS = EyePacs2015Config.variants("drop")
    DEFAULT_CONFIG_NAME = "512"

    def _features(self, size: int) -> tfds.features.FeaturesDict:
        patient = build.text_features(
            patient_id="e.g. 10 (both eyes share it)", eye="left, right, or empty"
        )
        graded = {
            "has_label": tfds.features.Scalar(dtype=np.bool_),
            **build.text_features(usage="test: Kaggle's Public/Private; else empty"),
            "original_diagnosis": tfds.features.Scalar(dtype=np.int32),
            "quality": tfds.features.ClassLabel(names=list(QUALITY_LEVELS)),
        }
        return build.fundus_features(size, "Kaggle image name, e.g. 10_left", patient, graded)

    def _open_source(self, manual_dir: epath.Path) -> kaggle_source.Source:
        return open_source(manual_dir)

    # -- step 0/1: labels and the photos they name ----------------------------------------------

    @staticmethod
    def _read_grades(source: kaggle_source.Source, name: str, extra_columns=()):
        """`({image: level}, {image: extras})` of one of Kaggle's CSVs (`image,level,...`).

        Names written with their extension (`10_left.jpeg`, as a CSV made from a file listing
        has them) are read as Kaggle's stems (`10_left`).
        """
        fix = f"Fix the row of {name}."
        grades, extras = label_csv.read_id_grades(
            source.read(name), name, "image", "level", fix=fix, extra_columns=extra_columns
        )
        grades, stripped = label_csv.strip_image_extension(grades, name, "image", IMAGE_EXTENSIONS)
        if stripped:
            logger.info(
                "eyepacs2015: %d %s row(s) name the photo with its extension; read as the stem",
                stripped,
                name,
            )
            extras = {k.rpartition(".")[0] if k not in grades else k: v for k, v in extras.items()}
        return grades, extras

    def _read_labels(self, source: kaggle_source.Source):
        """`(train grades, test grades or None, test usage)`, checked before any image work."""
        files = source.files()
        if LABELS_CSV not in files:
            raise kaggle_source.DatasetBuildError(
                f"{source.description}: no {LABELS_CSV}. Put Kaggle's {LABELS_CSV} (or "
                f"{LABELS_CSV}.zip) next to {TRAIN_DIR}/."
            )
        train, _ = self._read_grades(source, LABELS_CSV)
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
        test, extra = self._read_grades(source, SOLUTION_CSV, extra_columns=["usage"])
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
            if not where and train_files:
                where = (
                    f"{TRAIN_DIR}/ holds {len(train_files)} other photo(s): e.g. the CSV names "
                    f"{next(iter(train))!r}, {TRAIN_DIR}/ holds {next(iter(train_files.values()))!r}"
                )
            raise kaggle_source.DatasetBuildError(
                f"{source.description}: {LABELS_CSV} names {len(train)} photos but {TRAIN_DIR}/ "
                f"holds none of them" + (f"; {where}" if where else "") + f". Put them in "
                f"{TRAIN_DIR}/ (Kaggle's train.zip extracts to {TRAIN_DIR}/), named as in "
                f"{LABELS_CSV}."
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

    @staticmethod
    def _not_used(files: list[str], jobs, unlisted: list[str], test) -> dict[str, list[str]]:
        """Every file the build does not read, by reason (see `inventory.not_used`)."""
        used = {j.relpath for j in jobs if j.relpath} | {LABELS_CSV}
        if test:
            used.add(SOLUTION_CSV)
        unlisted = set(unlisted)

        def reason(rel: str) -> str:
            top, _, rest = rel.partition("/")
            if top not in (TRAIN_DIR, TEST_DIR, SAMPLE_DIR) or not rest:
                return inventory.NOT_PART_OF_LAYOUT
            if "/" in rest:
                return f"in a subfolder of {top}/ (the photos sit directly in {top}/)"
            if formats.extension_format(rest) is None:
                return inventory.not_a_photo(rel)
            if top == TEST_DIR and not test:
                return f"{TEST_DIR}/ without {SOLUTION_CSV}: no test split"
            return inventory.UNLISTED if rel in unlisted else inventory.SAME_ID

        return inventory.not_used(files, used, reason)

    # -- the plan ----------------------------------------------------------------------------------

    def _plan_build(self, source: kaggle_source.Source) -> tuple[dict[str, list[dict]], dict]:
        config = self.builder_config
        train, test, usage = self._read_labels(source)
        test = test or {}
        jobs, unlisted = self._index_images(source, train, test)
        fallback = {j.key: f"{TEST_DIR if j.key in test else TRAIN_DIR}/{j.key}.jpeg" for j in jobs}
        unused = self._not_used(source.files(), jobs, unlisted, test)
        good, report = self.decode_photos(
            source, jobs, fallback, unlisted_images=unlisted, not_used=unused
        )
        good_train = {i: g for i, g in train.items() if i in good}
        patient_of = {i: patient_and_eye(i)[0] for i in [*train, *test]}
        hashed = {i: good[i] for i in good_train}
        split = plan.plan_split(self.name, hashed, good_train, config, patient_of)

        def split_of(i: str) -> str:
            if i.startswith("sample__"):
                return "sample"
            if i in test:
                return "test"
            return "validation" if i in split.validation else "train"

        quality = self._read_quality_labels(report)
        rows = self._plan_rows(good, train, test, usage, split_of, split, quality)
        per_split, shared = plan.patients_per_split(
            rows, patient_of, ("train", "validation", "test")
        )
        if shared:  # the rule groups patients; this is the check that it did
            raise kaggle_source.DatasetBuildError(
                f"patient {shared[0]!r} (and {len(shared) - 1} more) would be in two splits; "
                "this is a bug in the split rule, please report it.",
                report=report,
            )
        plan.check_not_empty(
            {s: r for s, r in rows.items() if s in ("train", "validation")},
            report,
            f"{len(good)} photos decoded, {len(report['skipped'])} skipped",
        )
        counts = {"train_csv_rows": len(train), "solution_csv_rows": len(test)}
        fields = {"patients": per_split, "patients_in_two_splits": shared}
        plan.finish_report(report, counts, good, split, rows, **fields)
        logger.info(
            "eyepacs2015 [%s]: %s photos, patients %s",
            config.name,
            {s: len(r) for s, r in rows.items()},
            per_split,
        )
        return rows, report

    def _read_quality_labels(self, report: dict) -> dict[str, str]:
        """`{image: good|usable|reject}` from `quality_labels` (EyeQ's CSV), or `{}`."""
        if self.quality_labels is None:
            return {}
        path = self.quality_labels
        if not path.exists():
            raise kaggle_source.DatasetBuildError(
                f"quality_labels {path} not found: give the path of EyeQ's Label_EyeQ_*.csv "
                "(columns image,quality)."
            )
        levels = {}
        with path.open() as handle:
            reader = csv.DictReader(handle)
            if not {"image", "quality"} <= set(reader.fieldnames or ()):
                raise kaggle_source.DatasetBuildError(
                    f"{path}: needs the columns image,quality (EyeQ's Label_EyeQ_*.csv), has "
                    f"{reader.fieldnames}."
                )
            for number, row in enumerate(reader, start=2):
                value = (row["quality"] or "").strip()
                if value not in ("0", "1", "2"):
                    raise kaggle_source.DatasetBuildError(
                        f"{path} row {number}: quality {value!r} is not 0 (Good), 1 (Usable) "
                        "or 2 (Reject). Fix or delete the row."
                    )
                name = (row["image"] or "").strip()
                stem = name.rpartition(".")[0] if name.endswith(IMAGE_EXTENSIONS) else name
                levels[stem] = QUALITY_LEVELS[int(value)]
        report["quality_labels"] = {"file": str(path), "rows": len(levels)}
        return levels

    def _plan_rows(self, good, train, test, usage, split_of, split: plan.SplitPlan, quality=None):
        """Step 7: one row per example (train, validation, then test and sample when present)."""
        quality = quality or {}
        rows: dict[str, list[dict]] = {"train": [], "validation": []}
        if test:
            rows["test"] = []
        if any(k.startswith("sample__") for k in good):
            rows["sample"] = []
        for key in self.kept(sorted(good), split):
            name = key.removeprefix("sample__")
            patient, eye = patient_and_eye(name)
            grade = test.get(name, train.get(name, -1))
            rows[split_of(key)].append(
                {
                    "key": key,
                    "id_code": name,
                    "patient_id": patient,
                    "eye": eye,
                    "label": split.resolution.labels.get(name, grade),
                    "has_label": grade >= 0,
                    "usage": usage.get(name, ""),
                    "original_diagnosis": grade,
                    "quality": quality.get(name, "unknown"),
                    **split.example_fields(key, good[key]),
                }
            )
        return rows


load_build_report = build.load_build_report
prepare = Builder.prepare
