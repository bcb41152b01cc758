"""Graded fundus photos in class folders (`No_DR/ Mild/ ... Proliferate_DR/` or `0/ ... 4/`).

Many copies of the public sets circulate as one folder per grade: the resized Kaggle
derivatives ship `No_DR/`, `Mild/`, `Moderate/`, `Severe/`, `Proliferate_DR/`; others use
`0/` ... `4/`. This builder reads such a tree (a folder, the folder holding its zip, or the zip),
maps every folder name to a 0-4 grade (the usual spellings, numbers, or a `label_map` for
anything else; an unknown folder is refused, never guessed), and builds `train` / `validation`
with the same decode, quality gate, crop, duplicate grouping and build report as APTOS 2019. An
optional groups CSV (`image,patient`) keeps a patient's photos in one split.

Example:

```python
from eyegazer_datasets.fundus_folder import fundus_folder_dataset_builder as folder

report = folder.prepare("~/Downloads/gaussian_filtered_images", label_map={"Blurry": 0})
```
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping

import tensorflow_datasets as tfds
from etils import epath

# Shared with every eyegazer builder. Absolute: `tfds build datasets/fundus_folder` imports this
# file as the top-level package `fundus_folder`, where `from ..common` has no parent to climb to.
from eyegazer_datasets.common import build, images, kaggle_source, label_csv, layouts, plan

from eyegazer_keras import GRADE_NAMES

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# Folder names (lower case, without spaces, '-' and '_') -> grade.
KNOWN_NAMES = {
    **{str(g): g for g in range(5)},
    **{f"grade{g}": g for g in range(5)},
    **{f"class{g}": g for g in range(5)},
    "nodr": 0,
    "normal": 0,
    "nodiabeticretinopathy": 0,
    "mild": 1,
    "mildnpdr": 1,
    "moderate": 2,
    "moderatenpdr": 2,
    "severe": 3,
    "severenpdr": 3,
    "proliferatedr": 4,
    "proliferate": 4,
    "proliferative": 4,
    "proliferativedr": 4,
    "pdr": 4,
    **{name.replace("_", ""): g for g, name in enumerate(GRADE_NAMES)},
}
# Folders that are never classes (macOS zips, hidden folders).
IGNORED_FOLDERS = re.compile(r"^(__MACOSX|\..*)$")
DOWNLOAD_HINT = (
    "a folder of graded photos in class folders (No_DR/, Mild/, Moderate/, Severe/, "
    "Proliferate_DR/ or 0/ ... 4/), or its zip"
)


@dataclasses.dataclass(eq=False)
class FundusFolderConfig(build.FundusConfig):
    """What changes the bytes on disk; see `build.FundusConfig` for the fields."""


make_config = FundusFolderConfig.make


def normalise_name(name: str) -> str:
    """`"Proliferate_DR"` -> `"proliferatedr"`: lower case without spaces, `-` and `_`."""
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


def grade_of_folder(name: str, label_map: Mapping[str, int] | None = None) -> int:
    """The 0-4 grade a class folder stands for.

    Args:
        name: str. The folder name.
        label_map: `{folder name: grade}` for names the usual spellings do not cover; matched
            after `normalise_name`, and consulted first.

    Returns:
        The grade.

    Raises:
        DatasetBuildError: an unknown name (the message lists the known spellings).
    """
    key = normalise_name(name)
    mapped = {normalise_name(k): int(v) for k, v in (label_map or {}).items()}
    grade = mapped.get(key, KNOWN_NAMES.get(key))
    if grade is None:
        raise kaggle_source.DatasetBuildError(
            f"folder {name!r} is not a grade: name it No_DR, Mild, Moderate, Severe, "
            f"Proliferate_DR or 0-4, or map it with --label-map '{name}=GRADE' (GRADE in 0-4)."
        )
    if not 0 <= grade <= 4:
        raise kaggle_source.DatasetBuildError(
            f"label_map maps {name!r} to {grade}, not a grade 0-4; fix the --label-map entry."
        )
    return grade


def parse_label_map(text: str | Mapping[str, int] | None) -> dict[str, int]:
    """`"Blurry=0,Very mild=1"` (or a dict) -> `{"Blurry": 0, "Very mild": 1}`.

    Raises:
        DatasetBuildError: an entry that is not `NAME=GRADE` with an integer grade.
    """
    if not text:
        return {}
    if isinstance(text, Mapping):
        return {str(k): int(v) for k, v in text.items()}
    out = {}
    for entry in text.split(","):
        name, eq, grade = entry.partition("=")
        if not eq or not name.strip() or not grade.strip().lstrip("-").isdigit():
            raise kaggle_source.DatasetBuildError(
                f"--label-map entry {entry!r} is not NAME=GRADE (e.g. Blurry=0)."
            )
        out[name.strip()] = int(grade)
    return out


def read_groups_csv(path: epath.PathLike) -> dict[str, str]:
    """Reads a groups CSV (`image,patient`): `{image stem: patient}`.

    Raises:
        DatasetBuildError: missing file, header or value (naming the row).
    """
    path = epath.Path(path).expanduser()
    if not path.is_file():
        raise kaggle_source.DatasetBuildError(f"{path}: groups file not found.")
    out = {}
    for row in label_csv.read_csv(path.read_bytes(), path.name, ["image", "patient"]):
        image, patient = row.fields["image"], row.fields["patient"]
        if not image or not patient:
            raise kaggle_source.DatasetBuildError(
                f"{row.where(path.name)}: empty image or patient. Fill it in or delete the row."
            )
        out[image.rsplit(".", 1)[0] if "." in image else image] = patient
    return out


def open_source(manual_dir: epath.PathLike) -> kaggle_source.Source:
    """The class-folder tree: a folder, a folder holding one zip, or the zip.

    Raises:
        DatasetBuildError: an empty or missing manual dir.
    """
    root = epath.Path(manual_dir).expanduser()
    if root.is_dir():
        # A folder holding just one folder (the tree's top folder, as extracted zips often are).
        entries = [p for p in root.iterdir() if not IGNORED_FOLDERS.match(p.name)]
        if len(entries) == 1 and entries[0].is_dir():
            inner = entries[0]
            if any(p.is_dir() for p in inner.iterdir()):
                root = inner
    return kaggle_source.open_source(root, anchor=None, hint=DOWNLOAD_HINT)


def index_class_folders(
    files: list[str], label_map: Mapping[str, int] | None
) -> tuple[dict[str, int], dict[str, str], dict[str, str]]:
    """Step 1: `({key: grade}, {key: relpath}, {class folder: grade})` of every photo.

    A single top folder above the class folders is looked through. Keys are the file stems.

    Raises:
        DatasetBuildError: no class folder, an unknown folder, one stem in two folders.
    """
    entries = [(rel, rel.split("/")) for rel in files]
    entries = [(r, p) for r, p in entries if not any(IGNORED_FOLDERS.match(x) for x in p[:-1])]
    tops = {p[0] for _, p in entries if len(p) > 1}
    if len(tops) == 1:
        top = next(iter(tops))
        if all(len(p) == 3 for _, p in entries if p[0] == top):
            entries = [(r, p[1:]) if p[0] == top else (r, p) for r, p in entries]
    grades: dict[str, int] = {}
    paths: dict[str, str] = {}
    folders: dict[str, int] = {}
    for rel, p in entries:
        if len(p) != 2:
            continue
        folder, fname = p
        stem, dot, ext = fname.rpartition(".")
        if not dot or f".{ext.lower()}" not in IMAGE_EXTENSIONS:
            continue
        if folder not in folders:
            folders[folder] = grade_of_folder(folder, label_map)
        key = label_csv.check_image_id(stem, rel, "file name")
        if key in paths:
            raise kaggle_source.DatasetBuildError(
                f"photo name {key!r} is in both {paths[key]} and {rel}; rename or remove one "
                "(names identify photos in the split and the report)."
            )
        grades[key] = folders[folder]
        paths[key] = rel
    if not grades:
        raise kaggle_source.DatasetBuildError(
            f"no photos in class folders found; expected {DOWNLOAD_HINT}."
        )
    return grades, paths, folders


class Builder(build.FundusBuilder):
    """DatasetBuilder for graded photos in class folders (manual, offline).

    Args:
        label_map: dict or `"NAME=GRADE,..."`. Folder names beyond the usual spellings.
        groups: path. A CSV `image,patient`: photos of one patient stay in one split.
        **kwargs: see `build.FundusBuilder`.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = layouts.MANUAL_DOWNLOAD_INSTRUCTIONS["fundus_folder"]
    DOWNLOAD_HINT = DOWNLOAD_HINT
    BUILDER_CONFIGS = FundusFolderConfig.variants()
    DEFAULT_CONFIG_NAME = "512"

    def __init__(
        self,
        *,
        label_map: str | Mapping[str, int] | None = None,
        groups: epath.PathLike | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.label_map = parse_label_map(label_map)
        self.groups_file = None if groups is None else epath.Path(groups)
        self._original_state.update(label_map=label_map, groups=groups)

    def _features(self, size: int) -> tfds.features.FeaturesDict:
        where = build.text_features(
            class_folder="the folder the photo was in",
            patient_id="from the groups CSV, else the id",
        )
        return build.fundus_features(size, "the file stem", before_label=where)

    def _open_source(self, manual_dir: epath.Path) -> kaggle_source.Source:
        return open_source(manual_dir)

    def _plan_build(self, source: kaggle_source.Source) -> tuple[dict[str, list[dict]], dict]:
        patient_of = read_groups_csv(self.groups_file) if self.groups_file else {}
        grades, paths, folders = index_class_folders(source.files(), self.label_map)
        jobs = [images.Job(k, paths[k], gate=True) for k in grades]
        good, report = self.decode_photos(source, jobs, paths, class_folders=folders)
        good_grades = {k: g for k, g in grades.items() if k in good}
        patients = {k: patient_of.get(k, k) for k in grades}
        split = plan.plan_split(self.name, good, good_grades, self.builder_config, patients)
        rows: dict[str, list[dict]] = {"train": [], "validation": []}
        for k in self.kept(sorted(good_grades), split):
            rows["validation" if k in split.validation else "train"].append(
                {
                    "key": k,
                    "id_code": k,
                    "class_folder": paths[k].rsplit("/", 2)[-2],
                    "patient_id": patients[k],
                    "label": split.resolution.labels[k],
                    **split.example_fields(k, good[k]),
                }
            )
        per_split, shared = plan.patients_per_split(rows, patients, rows)
        plan.check_not_empty(rows, report, f"{len(good)} photos decoded")
        groups_file = None if self.groups_file is None else str(self.groups_file)
        return rows, plan.finish_report(
            report,
            {"photos": len(grades)},
            good,
            split,
            rows,
            patients=per_split,
            patients_in_two_splits=shared,
            groups_file=groups_file,
            groups_not_found=sorted(set(patient_of) - set(grades)),
        )


load_build_report = build.load_build_report
prepare = Builder.prepare
