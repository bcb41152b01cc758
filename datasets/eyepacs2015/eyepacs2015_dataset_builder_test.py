"""EyePACS 2015 builder: DatasetBuilderTestCase over Kaggle's layouts, patients, layout errors.

The dummy data is synthetic (`dummy_data/make_dummy_data.py`), never patient photos.
"""

import pathlib

import pytest
import tensorflow_datasets as tfds
from eyegazer_datasets.common import dummy_data, inventory, testing
from eyegazer_datasets.eyepacs2015 import eyepacs2015_dataset_builder as eyepacs
from eyegazer_datasets.eyepacs2015.dummy_data import make_dummy_data as dummy

_HERE = pathlib.Path(__file__).resolve().parent
# 16 train photos of 8 patients (2 patients = 4 photos to validation), 6 test, 2 sample.
_SPLITS = {"train": 12, "validation": 4, "test": 6, "sample": 2}
# Kaggle's sample/ photos are copies of train photos (10_left, 10_right): a preview split.
_OVERLAPPING = ["sample"]


EyePacs2015FolderTest, EyePacs2015ZipPartsTest = testing.layout_test_cases(
    eyepacs.Builder,
    _SPLITS,
    testing.Layout(_HERE / "dummy_data" / "folder", ["256"], "The extracted Kaggle folders."),
    testing.Layout(
        _HERE / "dummy_data" / "zip_parts",
        ["256"],
        "Kaggle's shipped form: train.zip.001-003, test.zip, trainLabels.csv.zip, read in place.",
    ),
    overlapping_splits=_OVERLAPPING,
)


def _prepare(tmp_path, manual, **kwargs):
    return eyepacs.prepare(manual, tmp_path / "data", eyepacs.make_config(32), **kwargs)


def _examples(data_dir, split):
    builder = eyepacs.Builder(data_dir=str(data_dir), config=eyepacs.make_config(32))
    return list(tfds.as_numpy(builder.as_dataset(split=split)))


def test_no_patient_in_two_splits(tmp_path):
    report = _prepare(tmp_path, _HERE / "dummy_data" / "folder")
    seen = {}
    for split in ("train", "validation", "test"):
        for ex in _examples(tmp_path / "data", split):
            patient = ex["patient_id"].decode()
            assert seen.setdefault(patient, split) == split, (patient, seen[patient], split)
            name = ex["id_code"].decode()
            assert name.startswith(patient + "_") and ex["eye"].decode() in name
    assert report["patients"] == {"train": 6, "validation": 2, "test": 3}
    assert report["patients_in_two_splits"] == []
    # Both eyes of every train patient are in the data, on the same side.
    assert sum(1 for s in seen.values() if s in ("train", "validation")) == 8


def test_split_groups_patients_at_scale():
    # 2,000 patients, both eyes graded independently: no patient straddles the split.
    from eyegazer_datasets.common import duplicates, splits

    grades = {
        f"{p}_{eye}": (p * 7 + (eye == "right")) % 5
        for p in range(2000)
        for eye in ("left", "right")
    }
    patients = {}
    for name in grades:
        patients.setdefault(eyepacs.patient_and_eye(name)[0], []).append(name)
    groups = duplicates.merge_groups(grades, patients.values())
    val = splits.assign_validation(grades, groups, salt="eyepacs2015")
    assert 360 <= len(val) <= 440  # ~10 % of 4,000
    for p in range(2000):
        assert (f"{p}_left" in val) == (f"{p}_right" in val)


def test_test_split_keeps_usage_and_labels(tmp_path):
    _prepare(tmp_path, _HERE / "dummy_data" / "zip_parts")
    test = {e["id_code"].decode(): e for e in _examples(tmp_path / "data", "test")}
    assert {k: (int(e["label"]), e["usage"].decode()) for k, e in test.items()} == dummy.TEST
    sample = _examples(tmp_path / "data", "sample")
    assert sorted(e["id_code"].decode() for e in sample) == dummy.SAMPLE
    assert all(
        e["has_label"] and int(e["label"]) == dummy.TRAIN[e["id_code"].decode()] for e in sample
    )


def test_single_zip_and_zip_file_itself(tmp_path):
    folder = dummy.write_folder(tmp_path / "layout", test=None, sample=[])
    zip_path = tmp_path / "dl" / "diabetic-retinopathy-detection.zip"
    dummy_data.zip_folder(folder, zip_path, "diabetic-retinopathy-detection/")
    for n, manual in enumerate((zip_path, zip_path.parent)):
        report = eyepacs.prepare(manual, tmp_path / f"data{n}", eyepacs.make_config(32))
        assert report["source"].startswith("zip ")
        assert report["counts"]["train"] + report["counts"]["validation"] == 16
        assert "test" not in report["counts"]  # no solution file: no test split


def test_zip_parts_given_as_first_part(tmp_path):
    folder = dummy.write_folder(tmp_path / "layout", test=None, sample=[])
    parts = dummy_data.split_file(
        dummy_data.zip_folder(folder, tmp_path / "dl" / "all.zip", "layout/"), 4
    )
    report = eyepacs.prepare(parts[0], tmp_path / "data", eyepacs.make_config(32))
    assert "4 parts" in report["source"]
    assert report["counts"]["decoded"] == 16


def test_builds_offline(tmp_path):
    # The TFDS catalog builder fetches retinopathy_solution.csv; this one must not. The suite's
    # guard (conftest.py, `no_network`) fails the test on any non-loopback attempt.
    report = _prepare(tmp_path, _HERE / "dummy_data" / "folder")
    assert report["counts"]["test"] == 6


# ---------------------------------------------------------------------------- layout mistakes


def _one_line(info) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


def test_labels_file_missing(tmp_path):
    folder = dummy.write_folder(tmp_path / "layout", test=None, sample=[])
    (folder / "trainLabels.csv").unlink()
    with pytest.raises(eyepacs.kaggle_source.DatasetBuildError) as info:
        _prepare(tmp_path, folder)
    assert "found neither trainLabels.csv (or trainLabels.csv.zip)" in _one_line(info)


def test_images_in_the_wrong_folder(tmp_path):
    folder = dummy.write_folder(tmp_path / "layout", test=None, sample=[], train_dir="images")
    with pytest.raises(eyepacs.kaggle_source.DatasetBuildError) as info:
        _prepare(tmp_path, folder)
    message = _one_line(info)
    assert "trainLabels.csv names 16 photos but train/ holds none of them" in message
    # The photos are named where they are (the folder is not one the builder lists).
    folder = dummy.write_folder(tmp_path / "flat", test=None, sample=[], train_dir=".")
    with pytest.raises(eyepacs.kaggle_source.DatasetBuildError) as info:
        _prepare(tmp_path, folder)
    assert "16 of them are in the top folder. Put them in train/" in _one_line(info)


def test_solution_without_test_folder(tmp_path):
    folder = dummy.write_folder(tmp_path / "layout", sample=[])
    for path in (folder / "test").iterdir():
        path.unlink()
    (folder / "test").rmdir()
    with pytest.raises(eyepacs.kaggle_source.DatasetBuildError) as info:
        _prepare(tmp_path, folder)
    assert "retinopathy_solution.csv is there but test/ is not" in _one_line(info)


def test_bad_level_names_the_row(tmp_path):
    folder = dummy.write_folder(tmp_path / "layout", test=None, sample=[])
    (folder / "trainLabels.csv").write_text("image,level\n10_left,0\n10_right,5\n")
    with pytest.raises(eyepacs.kaggle_source.DatasetBuildError) as info:
        _prepare(tmp_path, folder)
    assert _one_line(info).startswith("trainLabels.csv row 2 (line 3): level '5' is not in 0-4")


def test_label_rows_with_the_extension(tmp_path):
    """Issue 23 item 12: `10_left.jpeg` rows (a CSV made from a file listing) are understood."""
    folder = dummy.write_folder(tmp_path / "layout", test=None, sample=[])
    rows = "".join(f"{name}.jpeg,{level}\n" for name, level in dummy.TRAIN.items())
    (folder / "trainLabels.csv").write_text("image,level\n" + rows)
    report = _prepare(tmp_path, folder)
    assert report["counts"]["decoded"] == 16 and report["skipped"] == []
    ids = {e["id_code"].decode() for e in _examples(tmp_path / "data", "train")}
    assert "10_left" in ids or "10_right" in ids
    # A name that is there both with and without its extension is one photo named twice.
    first = next(iter(dummy.TRAIN))
    (folder / "trainLabels.csv").write_text(f"image,level\n{first},0\n{first}.jpeg,0\n")
    with pytest.raises(eyepacs.kaggle_source.DatasetBuildError) as info:
        _prepare(tmp_path / "again", folder)
    assert f"image {first!r} appears twice once its extension is dropped" in _one_line(info)


def test_split_zip_with_a_missing_middle_part(tmp_path):
    """Issue 23 item 11: the missing `train.zip.002` is named, not "N images unreadable"."""
    folder = dummy.write_folder(tmp_path / "layout", test=None, sample=[])
    download = tmp_path / "dl"
    download.mkdir()
    (download / "trainLabels.csv").write_bytes((folder / "trainLabels.csv").read_bytes())
    parts = dummy_data.split_file(
        dummy_data.zip_folder(folder / "train", download / "train.zip", "train/"), 3
    )
    parts[1].unlink()
    with pytest.raises(eyepacs.kaggle_source.DatasetBuildError) as info:
        _prepare(tmp_path, download)
    message = _one_line(info)
    assert "train.zip.002 missing from the split zip train.zip" in message
    assert "Download train.zip.002 into" in message and "max_bad_fraction" not in message
    # Given as the first part, the same.
    with pytest.raises(eyepacs.kaggle_source.DatasetBuildError, match="train.zip.002 missing"):
        _prepare(tmp_path, parts[0])


def test_system_files_and_unused_files_are_listed(tmp_path):
    """Issue 23 item 9 (EyePACS side) and item 6: nothing unused goes unlisted."""
    folder = dummy.write_folder(tmp_path / "layout", test=None, sample=[])
    first = next(iter(dummy.TRAIN))
    (folder / "train" / f"._{first}.jpeg").write_bytes(b"\x00\x05\x16\x07")
    (folder / "train" / "extra").mkdir()
    (folder / "train" / "extra" / "99_left.jpeg").write_bytes(dummy.photo(first))
    (folder / "train" / "99_right.jpeg").write_bytes(dummy.photo(first))
    (folder / "train" / f"{first}.png").write_bytes(dummy.photo(first))
    (folder / "sampleSubmission.csv").write_text("image,level\n")
    report = _prepare(tmp_path, folder, max_bad_fraction=0)
    assert report["counts"]["decoded"] == 16
    unused = report["not_used"]
    assert unused[inventory.SYSTEM_FILE] == [f"train/._{first}.jpeg"]
    assert unused[inventory.UNLISTED] == ["train/99_right.jpeg"]
    assert unused[inventory.SAME_ID] == [f"train/{first}.png"]
    assert unused["in a subfolder of train/ (the photos sit directly in train/)"] == [
        "train/extra/99_left.jpeg"
    ]
    assert unused[inventory.NOT_PART_OF_LAYOUT] == ["sampleSubmission.csv"]
    assert report["counts"]["not_used"] == 5
