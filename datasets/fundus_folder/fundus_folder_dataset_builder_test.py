"""fundus_folder builder: class-folder spellings, label map, refusals, patient groups.

The dummy data is synthetic (`dummy_data/make_dummy_data.py`), never patient photos.
"""

import pathlib

import pytest
import tensorflow_datasets as tfds
from eyegazer_datasets.common import kaggle_source, testing
from eyegazer_datasets.fundus_folder import fundus_folder_dataset_builder as folder
from eyegazer_datasets.fundus_folder.dummy_data import make_dummy_data as dummy

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
    # Without groups every photo is its own patient.
    report = folder.prepare(tree, tmp_path / "nogroups", folder.make_config(32))
    assert sum(report["patients"].values()) == 18


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
