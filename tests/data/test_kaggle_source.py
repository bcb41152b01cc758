"""datasets/common/kaggle_source: split zip parts, sources, CSV reading (no TensorFlow work)."""

from __future__ import annotations

import zipfile

import pytest
from eyegazer_datasets.common import dummy_data, kaggle_source, label_csv


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_zip_parts_read_as_one_archive(tmp_path):
    members = {f"train/{n}_left.jpeg": bytes(range(256)) * (40 + n) for n in range(7)}
    parts = dummy_data.split_file(
        _zip(tmp_path / "train.zip", members), 5
    )  # members straddle the cuts
    with kaggle_source.ZipSource(parts) as source:
        assert sorted(source.files()) == sorted(members)
        for name, data in members.items():
            assert source.read(name) == data
    # The folder holding the parts, and the first part itself, open the same archive.
    for manual in (tmp_path, parts[0]):
        with kaggle_source.open_source(manual, anchor=None) as source:
            assert sorted(source.files()) == sorted(members)


def test_missing_part_is_one_clear_error(tmp_path):
    parts = dummy_data.split_file(_zip(tmp_path / "train.zip", {"train/a.jpeg": b"x" * 5000}), 3)
    parts[-1].unlink()
    with pytest.raises(kaggle_source.DatasetBuildError, match="a part may be missing"):
        kaggle_source.ZipSource(parts[:-1])


def test_folder_files_win_over_zip_members(tmp_path):
    _zip(tmp_path / "train.zip", {"train/a.jpeg": b"zip", "train/b.jpeg": b"zip"})
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.jpeg").write_bytes(b"folder")
    with kaggle_source.open_source(tmp_path, anchor=None) as source:
        assert source.read("train/a.jpeg") == b"folder"
        assert source.read("train/b.jpeg") == b"zip"


def test_read_csv_handles_what_spreadsheets_write():
    text = '\ufeffImage , Level,Notes\r\n10_left, 0 ,"dark, blurry"\r\n\r\n10_right,1,\r\n'
    rows = label_csv.read_csv(text.encode(), "trainLabels.csv", ["image", "level"])
    assert [(r.row, r.line, r.fields["image"], r.fields["level"]) for r in rows] == [
        (1, 2, "10_left", "0"),
        (2, 4, "10_right", "1"),
    ]
    assert rows[0].fields["notes"] == "dark, blurry"
    with pytest.raises(kaggle_source.DatasetBuildError, match="not UTF-8 text"):
        label_csv.read_csv(b"image,level\n\xff\xfe,1\n", "x.csv", ["image"])
