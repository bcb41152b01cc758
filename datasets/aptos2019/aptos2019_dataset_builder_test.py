"""DatasetBuilderTestCase over the dummy Kaggle layout (folder and zip), plus split/duplicate tests.

The dummy data is synthetic (see `dummy_data/make_dummy_data.py`), never patient images.
"""

import importlib
import importlib.util
import json
import pathlib
import sys

import tensorflow_datasets as tfds
import tensorflow_datasets.testing as tfds_test

_HERE = pathlib.Path(__file__).resolve().parent


def _load(name: str, path: pathlib.Path):
    if name in sys.modules:
        return sys.modules[name]
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module


# Same module name as the installed wheel, so TFDS registers `aptos2019` exactly once.
aptos = _load(
    "eyegazer_datasets.aptos2019.aptos2019_dataset_builder",
    _HERE / "aptos2019_dataset_builder.py",
)
dummy = _load("aptos2019_make_dummy_data", _HERE / "dummy_data" / "make_dummy_data.py")

# Dummy set: 12 train rows (one re-encoded duplicate with a conflicting grade), 4 test rows.
# The split rule puts one group of each grade with 2+ groups (0, 1, 2) in validation.
_SPLITS = {"train": 9, "validation": 3, "test": 4}


class Aptos2019FolderTest(tfds_test.DatasetBuilderTestCase):
    """The extracted Kaggle folder."""

    DATASET_CLASS = aptos.Builder
    EXAMPLE_DIR = str(_HERE / "dummy_data" / "folder")
    SPLITS = _SPLITS
    BUILDER_CONFIG_NAMES_TO_TEST = ["512", "512_ben_graham", "256"]
    SKIP_CHECKSUMS = True


class Aptos2019ZipTest(tfds_test.DatasetBuilderTestCase):
    """The Kaggle zip, read in place."""

    DATASET_CLASS = aptos.Builder
    EXAMPLE_DIR = str(_HERE / "dummy_data" / "zip")
    SPLITS = _SPLITS
    BUILDER_CONFIG_NAMES_TO_TEST = ["512"]
    SKIP_CHECKSUMS = True


def _build(tmp_path, manual_dir, config="512", **kwargs):
    builder = aptos.Builder(data_dir=str(tmp_path / "data"), config=config, **kwargs)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    return builder


def _ids(builder, split):
    ds = builder.as_data_source(split=split)
    return sorted(ds[i]["id_code"].decode() if isinstance(ds[i]["id_code"], bytes)
                  else ds[i]["id_code"] for i in range(len(ds)))


def test_report_split_and_duplicate_group(tmp_path):
    config = aptos.make_config(32)
    builder = _build(tmp_path, EXAMPLE_DIR_FOLDER, config=config)
    report = aptos.load_build_report(builder)
    assert report["counts"]["duplicate_groups"] == 1
    (group,) = report["duplicate_groups"]
    assert {m["id_code"] for m in group["members"]} == {"a1b2c3d40003", "dup0copy0001"}
    assert group["label_conflict"] is True
    assert len({m["split"] for m in group["members"]}) == 1  # one split for the whole group
    assert report["validation"]["source"].startswith("rule")
    # The rule's list is written next to the data, ready to commit.
    text = (pathlib.Path(builder.data_dir) / "validation_ids.txt").read_text()
    listed = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert listed == report["validation"]["ids"]
    assert report["timing"]["images"] == 16
    assert not (pathlib.Path(builder.data_dir) / "_scratch").exists()
    json.dumps(report)


EXAMPLE_DIR_FOLDER = _HERE / "dummy_data" / "folder"
