"""fundus_folder builder: class-folder spellings, label map, refusals, patient groups.

The dummy data is synthetic (`dummy_data/make_dummy_data.py`), never patient photos.
"""

import os
import pathlib

import pytest
import tensorflow_datasets as tfds
from eyegazer_datasets.common import dummy_data, inventory, kaggle_source, testing
from eyegazer_datasets.fundus_folder import fundus_folder_dataset_builder as folder
from eyegazer_datasets.fundus_folder.dummy_data import make_dummy_data as dummy

from eyegazer_keras.cli.commands import prepare as prepare_command

_HERE = pathlib.Path(__file__).resolve().parent
_SPLITS = {"train": 13, "validation": 5}


FundusFolderNamedTest, FundusFolderNumericZipTest = testing.layout_test_cases(
    folder.Builder,
    _SPLITS,
    testing.Layout(
        _HERE / "dummy_data" / "named",
        ["256"],
        "`No_DR/ Mild/ Moderate/ Severe/ Proliferate_DR/` PNGs.",
    ),
    testing.Layout(
        _HERE / "dummy_data" / "numeric_zip",
        ["256"],
        "`graded/0/ ... graded/4/` JPEGs in a zip, read in place.",
    ),
)


def _labels(data_dir, **kwargs):
    builder = folder.Builder(data_dir=str(data_dir), config=folder.make_config(32), **kwargs)
    return {
        e["id_code"].decode(): (int(e["label"]), e["patient_id"].decode(), split)
        for split in ("train", "validation")
        for e in tfds.as_numpy(builder.as_dataset(split=split))
    }


@pytest.mark.parametrize(
    "name, grade",
    [
        ("No_DR", 0),
        ("no dr", 0),
        ("Normal", 0),
        ("0", 0),
        ("grade_1", 1),
        ("Mild", 1),
        ("Moderate", 2),
        ("moderate-npdr", 2),
        ("SEVERE", 3),
        ("Proliferate_DR", 4),
        ("proliferative", 4),
        ("PDR", 4),
        ("4", 4),
    ],
)
def test_usual_spellings(name, grade):
    assert folder.grade_of_folder(name) == grade


def test_unknown_folder_is_refused_and_label_map_covers_it(tmp_path):
    tree = dummy.write_named(tmp_path / "tree")
    (tree / "Mild").rename(tree / "Very mild")
    with pytest.raises(kaggle_source.DatasetBuildError) as info:
        folder.prepare(tree, tmp_path / "d1", folder.make_config(32))
    message = str(info.value)
    assert message.startswith("folder 'Very mild' is not a grade") and "--label-map" in message
    assert "\n" not in message
    report = folder.prepare(tree, tmp_path / "d2", folder.make_config(32), label_map="Very mild=1")
    assert report["class_folders"]["Very mild"] == 1
    labels = _labels(tmp_path / "d2")
    assert all(g == dummy.photos()[k][0] for k, (g, _, _) in labels.items())
    with pytest.raises(kaggle_source.DatasetBuildError, match="not NAME=GRADE"):
        folder.parse_label_map("Very mild")
    with pytest.raises(kaggle_source.DatasetBuildError, match="not a grade 0-4"):
        folder.grade_of_folder("x", {"x": 7})


def test_groups_keep_patients_together(tmp_path):
    tree = _HERE / "dummy_data" / "named"
    report = folder.prepare(
        tree, tmp_path / "data", folder.make_config(32), groups=tree / "groups.csv"
    )
    labels = _labels(tmp_path / "data")
    split_of_patient = {}
    for _, patient, split in labels.values():
        assert split_of_patient.setdefault(patient, split) == split
    assert report["patients_in_two_splits"] == []
    assert sum(report["patients"].values()) == 9 == len(split_of_patient)
    assert report["not_used"] == {}  # the groups CSV in the tree was read
    # Without groups every photo is its own patient.
    report = folder.prepare(tree, tmp_path / "nogroups", folder.make_config(32))
    assert sum(report["patients"].values()) == 18
    assert report["not_used"] == {inventory.not_a_photo("groups.csv"): ["groups.csv"]}


def test_same_name_in_two_folders(tmp_path):
    tree = dummy.write_named(tmp_path / "tree")
    (tree / "Severe" / "p00_a.png").write_bytes((tree / "No_DR" / "p00_a.png").read_bytes())
    with pytest.raises(kaggle_source.DatasetBuildError, match="'p00_a' is in both No_DR/p00_a.png"):
        folder.prepare(tree, tmp_path / "d", folder.make_config(32))


def test_folder_holding_the_tree_and_zip_file(tmp_path):
    tree = dummy.write_named(tmp_path / "outer" / "gaussian_filtered_images")
    assert (
        folder.prepare(tmp_path / "outer", tmp_path / "d1", folder.make_config(32))["counts"][
            "decoded"
        ]
        == 18
    )
    zip_path = _HERE / "dummy_data" / "numeric_zip" / "graded.zip"
    report = folder.prepare(zip_path, tmp_path / "d2", folder.make_config(32))
    assert report["source"].startswith("zip ") and report["class_folders"] == {
        str(g): g for g in range(5)
    }
    del tree


def _rename(path: pathlib.Path, name) -> pathlib.Path:
    """Renames `path` within its folder (`name` may be bytes: a name that is not UTF-8)."""
    target = path.parent / (os.fsdecode(name) if isinstance(name, bytes) else name)
    path.rename(target)
    return target


def test_nothing_dropped_silently(tmp_path):
    """Issue 23 items 6, 9, 10 and 8 (DICOM/TIFF): the tree a new user had, plus camera files.

    Nested subfolders, WebP and GIF photos, macOS `._*` / `.DS_Store` / `Thumbs.db`, names
    with spaces, `Müller` and non-UTF-8 bytes, TIFF and DICOM photos: every photo is read and
    every other file is listed, by reason, in the report and its counts.
    """
    tree = dummy.write_named(tmp_path / "tree")
    names = dummy.photos()
    mild = tree / "Mild"
    nested = tree / "Moderate" / "session 2"
    nested.mkdir()
    # Six of the 18 photos move or change format; the grade follows the class folder.
    (tree / "Moderate" / "p20_a.png").rename(nested / "p20_a.png")
    webp = dummy_data.encode(dummy_data.fundus_like(names["p00_a"][1], dummy.SIZE), "WEBP")
    (tree / "No_DR" / "p00_a.png").unlink()
    (tree / "No_DR" / "p00_a.webp").write_bytes(webp)
    gif = dummy_data.encode(dummy_data.fundus_like(names["p00_b"][1], dummy.SIZE), "GIF")
    (tree / "No_DR" / "p00_b.png").unlink()
    (tree / "No_DR" / "p00_b.gif").write_bytes(gif)
    _rename(mild / "p10_a.png", "p10_a Müller.png")
    _rename(mild / "p10_b.png", b"p10_b M\xfcller.png")  # Latin-1, not UTF-8
    image = dummy_data.fundus_like(names["p21_a"][1], dummy.SIZE)
    (tree / "Moderate" / "p21_a.png").unlink()
    (tree / "Moderate" / "p21_a.dcm").write_bytes(dummy_data.encode_dicom(image, jpeg=True))
    (tree / "Severe" / "p30_a.png").unlink()
    (tree / "Severe" / "p30_a.tif").write_bytes(
        dummy_data.encode(dummy_data.fundus_like(names["p30_a"][1], dummy.SIZE), "TIFF")
    )
    # What operating systems and people leave in such a tree.
    (mild / "._p11_a.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (tree / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tree / "No_DR" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (tree / "notes.txt").write_text("graded by two readers\n")
    (tree / "stray.png").write_bytes(webp)
    (tree / "Severe" / "grading.xlsx").write_bytes(b"PK\x03\x04")

    report = folder.prepare(tree, tmp_path / "data", folder.make_config(32), max_bad_fraction=0)

    assert report["counts"]["decoded"] == 18 and report["skipped"] == []
    assert report["nested_folders"] == {"Moderate/session 2": 1}
    labels = _labels(tmp_path / "data")
    assert labels["p20_a"][0] == 2 and labels["p00_a"][0] == 0 and labels["p00_b"][0] == 0
    assert labels["p21_a"][0] == 2 and labels["p30_a"][0] == 3
    assert labels["p10_a Müller"][0] == 1 and labels["p10_b M\\xfcller"][0] == 1
    unused = report["not_used"]
    system = [".DS_Store", "Mild/._p11_a.png", "No_DR/Thumbs.db"]
    assert unused[inventory.SYSTEM_FILE] == system
    assert unused[inventory.not_a_photo("Severe/grading.xlsx")] == ["Severe/grading.xlsx"]
    assert unused[inventory.not_a_photo("notes.txt")] == ["notes.txt"]
    assert [r for r, f in unused.items() if f == ["stray.png"]][0].startswith(
        "not in a class folder"
    )
    assert report["counts"]["not_used"] == 6 == sum(report["counts"]["not_used_by_reason"].values())
    assert report["counts"]["not_used_by_reason"][inventory.SYSTEM_FILE] == 3
    # ... and in the summary `eyegazer prepare` prints.
    line = prepare_command.not_used_line(report)
    assert line.startswith("not used: 6 file(s): ") and f"{inventory.SYSTEM_FILE}: 3" in line


def test_a_tree_of_only_system_files_names_them(tmp_path):
    tree = tmp_path / "tree"
    (tree / "Mild").mkdir(parents=True)
    (tree / "Mild" / "._p.png").write_bytes(b"\x00\x05\x16\x07")
    (tree / "Mild" / "p.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    with pytest.raises(kaggle_source.DatasetBuildError) as info:
        folder.prepare(tree, tmp_path / "d", folder.make_config(32))
    message = str(info.value)
    assert message.startswith("no photos in class folders found (2 file(s) not used")
    assert "system file" in message and "(.heic;" in message and "\n" not in message
