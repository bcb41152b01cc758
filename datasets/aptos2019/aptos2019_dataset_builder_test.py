"""DatasetBuilderTestCase over the dummy Kaggle layout (folder and zip), plus split/duplicate tests.

The dummy data is synthetic (see `dummy_data/make_dummy_data.py`), never patient images.
"""

import json
import pathlib

import tensorflow_datasets as tfds

_HERE = pathlib.Path(__file__).resolve().parent


# Same module names as the installed package, so TFDS registers `aptos2019` exactly once.
from eyegazer_datasets.aptos2019 import aptos2019_dataset_builder as aptos  # noqa: E402
from eyegazer_datasets.aptos2019.dummy_data import make_dummy_data as dummy  # noqa: E402
from eyegazer_datasets.common import dummy_data, splits, testing  # noqa: E402

# Dummy set: 12 train rows (one re-encoded duplicate with a conflicting grade), 4 test rows.
# The split rule puts one group of each grade with 2+ groups (0, 1, 2) in validation.
_SPLITS = {"train": 9, "validation": 3, "test": 4}


Aptos2019FolderTest, Aptos2019ZipTest = testing.layout_test_cases(
    aptos.Builder,
    _SPLITS,
    testing.Layout(
        _HERE / "dummy_data" / "folder", ["512", "512_ben_graham"], "The extracted Kaggle folder."
    ),
    testing.Layout(_HERE / "dummy_data" / "zip", ["512"], "The Kaggle zip, read in place."),
)


def _build(tmp_path, manual_dir, config="512", **kwargs):
    builder = aptos.Builder(data_dir=str(tmp_path / "data"), config=config, **kwargs)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    return builder


def test_report_split_and_duplicate_group(tmp_path):
    config = aptos.make_config(32)
    builder = _build(tmp_path, _HERE / "dummy_data" / "folder", config=config)
    report = aptos.load_build_report(builder)
    assert report["counts"]["duplicate_groups"] == 1
    (group,) = report["duplicate_groups"]
    assert {m["id_code"] for m in group["members"]} == {"a1b2c3d40003", "dup0copy0001"}
    assert group["label_conflict"] is True
    assert len({m["split"] for m in group["members"]}) == 1  # one split for the whole group
    assert report["validation"]["rule"] == splits.SPLIT_RULE
    val = {e["id_code"].decode() for e in tfds.as_numpy(builder.as_dataset(split="validation"))}
    assert sorted(val) == report["validation"]["ids"]
    assert report["timing"]["images"] == 16
    assert not (pathlib.Path(builder.data_dir) / "_scratch").exists()
    json.dumps(report)


def _reencoded_layout(tmp_path, copies):
    """The dummy set plus re-encoded copies `{copy_id: (original_id, grade)}`."""
    train = dict(dummy.TRAIN)
    images = dummy.default_images()
    for n, (copy_id, (original, grade)) in enumerate(copies.items()):
        seed = list(dummy.TRAIN).index(original)
        jpeg = dummy_data.reencoded_copy(
            dummy_data.fundus_like(seed), scale=2.0 - 0.5 * n, quality=90
        )
        images[f"train_images/{copy_id}.jpg"] = jpeg  # a .jpg next to the .pngs
        train[copy_id] = grade
    return dummy.write_layout(tmp_path / "kaggle", train, dummy.TEST, images)


def test_split_rule_is_a_pure_function_of_ids():
    grades = {f"{n:012x}": n % 5 for n in range(2000)}
    groups = [[f"{n:012x}", f"{n + 1:012x}"] for n in range(0, 200, 10)]
    first = aptos.assign_validation(grades, groups)
    shuffled = dict(sorted(grades.items(), key=lambda kv: splits.split_key("aptos2019", kv[0])))
    assert aptos.assign_validation(shuffled, list(reversed(groups))) == first
    assert 190 <= len(first) <= 210  # ~10 %
    for grade in range(5):  # stratified: ~10 % of every grade
        n_val = sum(1 for i in first if grades[i] == grade)
        assert 38 <= n_val <= 42
    for a, b in groups:  # a duplicate group never straddles the split
        assert (a in first) == (b in first)


def test_same_split_for_every_config_and_run(tmp_path):
    folder = _HERE / "dummy_data" / "folder"
    b1 = _build(tmp_path / "a", folder, config=aptos.make_config(32))
    b2 = _build(tmp_path / "b", folder, config=aptos.make_config(32, ben_graham=True))
    b3 = _build(tmp_path / "c", folder, config=aptos.make_config(32), num_workers=1)
    ids = [aptos.load_build_report(b)["validation"]["ids"] for b in (b1, b2, b3)]
    assert ids[0] == ids[1] == ids[2] and ids[0]


def test_validation_is_the_rule_and_keeps_duplicates_together(tmp_path):
    # One source of truth: the split in the data is the rule's, applied to the decoded photos.
    folder = _HERE / "dummy_data" / "folder"
    builder = _build(tmp_path, folder, config=aptos.make_config(32))
    report = aptos.load_build_report(builder)
    groups = [[m["id_code"] for m in g["members"]] for g in report["duplicate_groups"]]
    expected = aptos.assign_validation(dummy.TRAIN, groups)
    assert report["validation"]["ids"] == sorted(expected)
    val = {e["id_code"].decode() for e in tfds.as_numpy(builder.as_dataset(split="validation"))}
    assert val == expected
    # The duplicate pair sits wholly on one side.
    assert ("a1b2c3d40003" in val) == ("dup0copy0001" in val)
    assert not (pathlib.Path(builder.data_dir) / "validation_ids.txt").exists()


def test_reencoded_jpeg_copy_joins_its_group_and_split(tmp_path):
    # A JPEG copy of a train photo with a conflicting grade (4 vs 0).
    root = _reencoded_layout(tmp_path, {"jpegcopy0001": ("a1b2c3d40001", 4)})
    builder = _build(tmp_path, root, config=aptos.make_config(32))
    report = aptos.load_build_report(builder)
    groups = {g["group"]: g for g in report["duplicate_groups"]}
    group = groups["a1b2c3d40001"]
    assert [m["id_code"] for m in group["members"]] == ["a1b2c3d40001", "jpegcopy0001"]
    assert group["label_conflict"] and group["action"] == "kept"
    assert len({m["split"] for m in group["members"]}) == 1
    assert report["counts"]["label_conflict_groups"] == 2  # plus the dummy set's own pair
    examples = {
        e["id_code"].decode(): e
        for split in ("train", "validation")
        for e in tfds.as_numpy(builder.as_dataset(split=split))
    }
    assert examples["jpegcopy0001"]["duplicate_group"].decode() == "a1b2c3d40001"
    assert examples["jpegcopy0001"]["label_conflict"]
    assert examples["jpegcopy0001"]["label"] == 4  # keep: every copy keeps its own grade
    assert examples["a1b2c3d4000b"]["duplicate_group"].decode() == ""


def test_conflict_policies(tmp_path):
    # Group A: a1b2c3d40001 (0) + two copies graded 0 and 4 -> majority 0.
    # Group B: a1b2c3d40003 (2) + dup0copy0001 (3) -> a tie.
    root = _reencoded_layout(
        tmp_path, {"jpegcopy0001": ("a1b2c3d40001", 4), "jpegcopy0002": ("a1b2c3d40001", 0)}
    )
    results = {}
    for policy in aptos.CONFLICT_POLICIES:
        config = aptos.make_config(32, conflict_policy=policy)
        builder = _build(tmp_path / policy, root, config=config)
        report = aptos.load_build_report(builder)
        labels = {
            e["id_code"].decode(): int(e["label"])
            for split in ("train", "validation")
            for e in tfds.as_numpy(builder.as_dataset(split=split))
        }
        actions = {g["group"]: g["action"] for g in report["duplicate_groups"]}
        results[policy] = (labels, actions, report["counts"]["dropped_by_policy"])
    labels, actions, dropped = results["keep"]
    assert len(labels) == 14 and dropped == 0 and labels["jpegcopy0001"] == 4
    labels, actions, dropped = results["drop"]
    assert dropped == 5 and len(labels) == 9
    assert actions == {"a1b2c3d40001": "dropped", "a1b2c3d40003": "dropped"}
    labels, actions, dropped = results["majority"]
    assert actions == {"a1b2c3d40001": "relabelled to 0", "a1b2c3d40003": "dropped (no majority)"}
    assert dropped == 2 and labels["jpegcopy0001"] == 0 and "dup0copy0001" not in labels


def test_test_split_has_no_labels(tmp_path):
    builder = _build(tmp_path, _HERE / "dummy_data" / "zip", config=aptos.make_config(32))
    test = list(tfds.as_numpy(builder.as_dataset(split="test")))
    assert len(test) == 4
    assert all(e["label"] == -1 and not e["has_label"] for e in test)
    assert all(e["original_diagnosis"] == -1 for e in test)
    train = list(tfds.as_numpy(builder.as_dataset(split="train")))
    assert all(e["has_label"] and 0 <= e["label"] <= 4 for e in train)
    assert all(e["original_height"] == 75 or e["id_code"] == b"dup0copy0001" for e in train)
