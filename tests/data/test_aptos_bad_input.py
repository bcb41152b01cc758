"""APTOS 2019 builder: every bad-input case ends in a named outcome (error text or skip count).

All images are synthetic (`datasets/aptos2019/dummy_data/make_dummy_data.py`).
"""

import io
import pathlib
import struct
import zipfile
import zlib

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

_FOLDER = pathlib.Path(__file__).resolve().parents[2] / "datasets" / "aptos2019"


# Same module names as the installed package, so TFDS registers `aptos2019` exactly once.
from eyegazer_datasets.aptos2019 import aptos2019_dataset_builder as aptos  # noqa: E402
from eyegazer_datasets.aptos2019.dummy_data import make_dummy_data as dummy  # noqa: E402
from eyegazer_datasets.common import dummy_data, images, inventory  # noqa: E402

from eyegazer_keras import fundus  # noqa: E402

# The 100 MP header below is refused by our own check; PIL merely warns when it opens it.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

TRAIN = {f"aa{n:010x}": n % 5 for n in range(10)}
TEST = ["bb0000000001", "bb0000000002"]


def _images(train=TRAIN, test=TEST):
    images = {
        f"train_images/{i}.png": dummy_data.encode(dummy_data.fundus_like(seed=n))
        for n, i in enumerate(train)
    }
    images.update(
        {
            f"test_images/{i}.png": dummy_data.encode(dummy_data.fundus_like(seed=50 + n))
            for n, i in enumerate(test)
        }
    )
    return images


def _build(tmp_path, manual_dir, config=None, **kwargs):
    builder = aptos.Builder(
        data_dir=str(tmp_path / "data"), config=config or aptos.make_config(32), **kwargs
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    return builder, aptos.load_build_report(builder)


def _huge_png_header(width: int, height: int) -> bytes:
    """A tiny file whose PNG header claims `width x height` (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------- malformed CSVs


@pytest.mark.parametrize(
    "text, message",
    [
        ("id_code,grade\nx1,0\n", "train.csv: missing column 'diagnosis'"),
        ("diagnosis\n0\n", "train.csv: missing column 'id_code'"),
        (
            "id_code,diagnosis\nx1,0\nx2,two\n",
            "train.csv row 2 (line 3): diagnosis 'two' is not an integer",
        ),
        (
            "id_code,diagnosis\nx1,0\nx2,2.5\n",
            "train.csv row 2 (line 3): diagnosis '2.5' is not an integer",
        ),
        ("id_code,diagnosis\nx1,7\n", "train.csv row 1 (line 2): diagnosis '7' is not in 0-4"),
        ("id_code,diagnosis\nx1,-1\n", "train.csv row 1 (line 2): diagnosis '-1' is not in 0-4"),
        (
            "id_code,diagnosis\nx1,0\nx2,1\nx1,2\n",
            "train.csv row 3 (line 4): id_code 'x1' already appears on row 1",
        ),
        ("id_code,diagnosis\n,0\n", "train.csv row 1 (line 2): empty id_code"),
        ("id_code,diagnosis\n../etc,0\n", "is not a plain file name"),
        ("id_code,diagnosis\nx1\n", "train.csv row 1 (line 2): 1 field(s) but the header has 2"),
        ("", "train.csv: empty file"),
    ],
)
def test_malformed_train_csv_names_row_and_fix(text, message):
    with pytest.raises(aptos.Aptos2019BuildError, match=None) as info:
        aptos.parse_labels_csv(text.encode(), "train.csv")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_bom_and_crlf_are_accepted():
    clean = aptos.parse_labels_csv(b"id_code,diagnosis\nx1,0\nx2,4\n")
    bom_crlf = aptos.parse_labels_csv(b"\xef\xbb\xbfid_code,diagnosis\r\nx1,0\r\nx2,4\r\n")
    assert bom_crlf == clean == {"x1": 0, "x2": 4}
    assert aptos.parse_labels_csv(b"\xef\xbb\xbfid_code\r\nt1\r\n", "test.csv", False) == {"t1": -1}


def test_bad_csv_fails_before_any_image_work(tmp_path):
    # No image exists at all: had images been read first, the error would be about them.
    root = dummy.write_layout(
        tmp_path / "kaggle", TRAIN, TEST, {}, train_csv="id_code,diagnosis\naa0000000000,9\n"
    )
    with pytest.raises(
        aptos.Aptos2019BuildError, match=r"train.csv row 1 \(line 2\): diagnosis '9' is not in 0-4"
    ):
        _build(tmp_path, root)


def test_bom_crlf_build_succeeds(tmp_path):
    csv = "\ufeffid_code,diagnosis\r\n" + "".join(f"{i},{g}\r\n" for i, g in TRAIN.items())
    root = dummy.write_layout(tmp_path / "kaggle", TRAIN, TEST, _images(), train_csv=csv)
    _, report = _build(tmp_path, root)
    assert report["counts"]["decoded"] == 12
    assert report["counts"]["skipped"] == 0


def test_id_in_both_csvs(tmp_path):
    root = dummy.write_layout(tmp_path / "kaggle", TRAIN, [*TEST, "aa0000000000"], _images())
    with pytest.raises(
        aptos.Aptos2019BuildError, match="'aa0000000000' .* is in both train.csv and test.csv"
    ):
        _build(tmp_path, root)


def test_missing_csv(tmp_path):
    root = dummy.write_layout(tmp_path / "kaggle", TRAIN, TEST, _images())
    (root / "test.csv").unlink()
    with pytest.raises(aptos.Aptos2019BuildError, match="no test.csv"):
        _build(tmp_path, root)


def test_no_data_in_manual_dir(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("not the data")
    with pytest.raises(
        aptos.Aptos2019BuildError, match="found neither aptos2019-blindness-detection.zip"
    ):
        _build(tmp_path, tmp_path / "other")
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        aptos.Aptos2019BuildError, match="the manual dir does not exist or is empty"
    ):
        aptos.prepare(tmp_path / "empty", tmp_path / "data", config=aptos.make_config(32))


# ---------------------------------------------------------------------------- image formats


def _rgb(seed=3):
    return dummy_data.fundus_like(seed, (64, 48))


def _pil_bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["RGBA", "L", "LA", "P", "I;16", "CMYK"])
def test_decodes_every_mode_to_rgb(mode):
    rgb = _rgb()
    if mode == "I;16":
        grey = np.asarray(Image.fromarray(rgb).convert("L"), np.uint16) * 257
        data = _pil_bytes(Image.fromarray(grey), "PNG")
        expected = np.repeat((grey // 257).astype(np.uint8)[..., None], 3, axis=-1)
    elif mode == "CMYK":
        data = _pil_bytes(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=98)
        expected = rgb
    else:
        converted = Image.fromarray(rgb).convert(mode)
        data = _pil_bytes(converted, "PNG")
        expected = np.asarray(converted.convert("RGB"))
    image, _ = images.decode_to_rgb(data, max_pixels=10**6)
    assert image.dtype == np.uint8 and image.shape == (48, 64, 3)
    tolerance = 12 if mode == "CMYK" else 0  # JPEG is lossy
    assert np.abs(image.astype(int) - expected.astype(int)).mean() <= max(tolerance / 4, 0)
    assert np.abs(image.astype(int) - expected.astype(int)).max() <= max(tolerance, 1)


def test_odd_formats_build_without_skips(tmp_path):
    rgb = _rgb()
    ids = list(TRAIN)
    images = _images()
    images[f"train_images/{ids[0]}.png"] = _pil_bytes(Image.fromarray(rgb).convert("RGBA"), "PNG")
    images[f"train_images/{ids[1]}.png"] = _pil_bytes(Image.fromarray(rgb).convert("L"), "PNG")
    images[f"train_images/{ids[2]}.png"] = _pil_bytes(Image.fromarray(rgb).convert("P"), "PNG")
    grey16 = np.asarray(Image.fromarray(rgb).convert("L"), np.uint16) * 257
    images[f"train_images/{ids[3]}.png"] = _pil_bytes(Image.fromarray(grey16), "PNG")
    images[f"train_images/{ids[4]}.png"] = _pil_bytes(
        Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95
    )
    root = dummy.write_layout(tmp_path / "kaggle", TRAIN, TEST, images)
    builder, report = _build(tmp_path, root, max_bad_fraction=0.0)
    assert report["counts"]["skipped"] == 0
    # Every file is read and stored: these 64x48 thumbnails are below `fundus.SCORE_MIN_SIZE`,
    # so only the hard limits judge them (grey photos of camera size are refused as
    # `poor_quality`: the fitted score knows colour photos only; see README).
    assert report["ungradable"] == [] and fundus.SCORE_MIN_SIZE > 64
    assert report["counts"]["decoded"] == 12
    example = next(iter(tfds.as_numpy(builder.as_dataset(split="test"))))
    assert example["image"].shape == (32, 32, 3)
    assert example["label"] == -1 and not example["has_label"]


# ---------------------------------------------------------------------------- bad files


def _bad_layout(tmp_path):
    ids = list(TRAIN)
    images = _images()
    png = images[f"train_images/{ids[0]}.png"]
    images[f"train_images/{ids[0]}.png"] = png[: len(png) // 2]  # truncated
    images[f"train_images/{ids[1]}.png"] = b""  # zero bytes
    images[f"train_images/{ids[2]}.png"] = b"this is not an image" * 20  # unreadable
    del images[f"train_images/{ids[3]}.png"]  # missing
    images[f"test_images/{TEST[0]}.png"] = _huge_png_header(10000, 10000)  # 100 MP
    images["train_images/nobody.png"] = dummy_data.encode(_rgb(9))  # named by no CSV row
    images["test_images/notes.txt"] = b"stray file"
    images[f"train_images/._{ids[4]}.png"] = b"\x00\x05\x16\x07"  # macOS AppleDouble
    return dummy.write_layout(tmp_path / "kaggle", TRAIN, TEST, images), ids


def test_bad_files_are_skipped_named_and_counted(tmp_path):
    root, ids = _bad_layout(tmp_path)
    builder, report = _build(tmp_path, root, max_bad_fraction=0.5)
    reasons = {s["file"]: s["reason"] for s in report["skipped"]}
    assert report["counts"]["skipped"] == 5 == len(reasons)
    assert "truncated or corrupt" in reasons[f"train_images/{ids[0]}.png"]
    assert reasons[f"train_images/{ids[1]}.png"] == "empty file (0 bytes)"
    assert "not a readable image" in reasons[f"train_images/{ids[2]}.png"]
    assert reasons[f"train_images/{ids[3]}.png"] == "missing file"
    assert (
        "refused undecoded: 10000x10000 (100 MP) exceeds the 50 MP limit"
        in reasons[f"test_images/{TEST[0]}.png"]
    )
    assert report["unlisted_images"] == ["test_images/notes.txt", "train_images/nobody.png"]
    # Issue 23 items 6 and 9: every unused file is listed by reason; AppleDouble is ignored.
    unused = report["not_used"]
    assert unused[inventory.SYSTEM_FILE] == [f"train_images/._{ids[4]}.png"]
    assert unused[inventory.UNLISTED] == ["train_images/nobody.png"]
    assert unused[inventory.not_a_photo("notes.txt")] == ["test_images/notes.txt"]
    assert unused[inventory.NOT_PART_OF_LAYOUT] == ["sample_submission.csv"]
    assert report["counts"]["not_used"] == 4
    assert report["counts"]["decoded"] == 7
    splits = builder.info.splits
    assert splits["train"].num_examples + splits["validation"].num_examples == 6
    assert splits["test"].num_examples == 1


def test_too_many_bad_files_fail_with_one_line(tmp_path):
    root, ids = _bad_layout(tmp_path)
    with pytest.raises(aptos.Aptos2019BuildError) as info:
        _build(tmp_path, root)  # default max_bad_fraction = 1%
    message = str(info.value)
    assert message.startswith("5 of 12 images (41.67%) are missing, unreadable or refused")
    assert "max_bad_fraction=1.00%" in message and f"train_images/{ids[0]}.png" in message
    assert "\n" not in message
    assert isinstance(info.value, ValueError)
    assert len(info.value.report["skipped"]) == 5


def test_huge_image_is_refused_before_decoding():
    with pytest.raises(
        ValueError, match=r"refused undecoded: 10000x10000 \(100 MP\) exceeds the 50 MP"
    ):
        images.decode_to_rgb(_huge_png_header(10000, 10000), max_pixels=50_000_000)
    # PIL's own bomb guard (> 179 MP) is reported the same way, never decoded.
    with pytest.raises(ValueError, match=r"refused undecoded: header size \(3.6e\+03 MP\)"):
        images.decode_to_rgb(_huge_png_header(60000, 60000), max_pixels=10**12)


def test_max_megapixels_is_configurable(tmp_path):
    images = _images()
    ids = list(TRAIN)
    for i in ids[:2]:
        images[f"train_images/{i}.png"] = dummy_data.encode(dummy_data.fundus_like(7, (200, 150)))
    root = dummy.write_layout(tmp_path / "kaggle", TRAIN, TEST, images)
    _, report = _build(tmp_path, root, max_megapixels=0.01, max_bad_fraction=0.5)
    assert report["counts"]["skipped"] == 2  # 200x150 = 0.03 MP; the 100x75 photos pass
    assert "200x150 (0.03 MP) exceeds the 0.01 MP limit" in report["skipped"][0]["reason"]


def test_nothing_decodable_is_one_clear_error(tmp_path):
    root = dummy.write_layout(tmp_path / "kaggle", TRAIN, TEST, _images())
    with pytest.raises(aptos.Aptos2019BuildError, match="split 'train' would be empty"):
        _build(tmp_path, root, max_megapixels=0.001, max_bad_fraction=1.0)


# ---------------------------------------------------------------------------- zip input


def test_zip_with_traversal_members_is_refused(tmp_path):
    folder = dummy.write_layout(tmp_path / "kaggle", TRAIN, TEST, _images())
    manual = tmp_path / "manual"
    zip_path = dummy_data.zip_folder(folder, manual / "aptos2019-blindness-detection.zip")
    with zipfile.ZipFile(zip_path, "a") as zf:
        zf.writestr("../../evil.png", b"x")
        zf.writestr("/etc/evil.png", b"x")
    with pytest.raises(
        aptos.Aptos2019BuildError, match="member '../../evil.png' .* points outside the archive"
    ):
        _build(tmp_path, manual)
    assert not (tmp_path.parent / "evil.png").exists()
    assert not list(tmp_path.rglob("evil.png"))


def test_zip_with_top_folder_and_bad_members(tmp_path):
    root, ids = _bad_layout(tmp_path)
    manual = tmp_path / "manual"
    manual.mkdir()
    with zipfile.ZipFile(manual / "aptos2019-blindness-detection.zip", "w") as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, "aptos2019-blindness-detection/" + path.relative_to(root).as_posix())
    _, report = _build(tmp_path, manual, max_bad_fraction=0.5)
    assert report["source"].startswith("zip ")
    assert report["counts"]["skipped"] == 5
    assert report["counts"]["decoded"] == 7


def test_corrupt_zip(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "aptos2019-blindness-detection.zip").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(aptos.Aptos2019BuildError, match="not a readable zip"):
        _build(tmp_path, manual)


# ---------------------------------------------------------------------------- CSV module


def test_quoted_field_with_comma_and_extra_columns():
    # The failing input of issue 13 item 6: the comma inside the quotes is not a separator.
    text = 'id_code,notes,diagnosis\nimg001,clear,0\nimg003,"blurry, dark",3\n'
    assert aptos.parse_labels_csv(text.encode()) == {"img001": 0, "img003": 3}
    # Extra columns in any order, header case and whitespace, spaces around values.
    text = ' Notes , DIAGNOSIS ,id_code,site\r\n"a, b", 2 , img010 ,"x"\r\n\r\n'
    assert aptos.parse_labels_csv(text.encode()) == {"img010": 2}
    # A quoted newline inside a field stays one row.
    text = 'id_code,notes,diagnosis\nimg004,"line one\nline two",1\nimg005,,4\n'
    assert aptos.parse_labels_csv(text.encode()) == {"img004": 1, "img005": 4}


def test_malformed_quote_names_the_line():
    with pytest.raises(aptos.Aptos2019BuildError, match=r"train.csv line \d: not valid CSV"):
        aptos.parse_labels_csv(b'id_code,diagnosis\nimg001,"0\n')


def test_quoted_csv_builds(tmp_path):
    csv = "id_code,notes,diagnosis\n" + "".join(
        f'{i},"blurry, dark, {n}",{g}\n' for n, (i, g) in enumerate(TRAIN.items())
    )
    root = dummy.write_layout(tmp_path / "kaggle", TRAIN, TEST, _images(), train_csv=csv)
    builder, report = _build(tmp_path, root)
    assert report["counts"]["decoded"] == 12
    labels = {
        e["id_code"].decode(): int(e["label"])
        for split in ("train", "validation")
        for e in tfds.as_numpy(builder.as_dataset(split=split))
    }
    assert labels == TRAIN


# ---------------------------------------------------------------------------- --manual-dir


@pytest.mark.parametrize("given", ["extracted folder", "folder holding the zip", "zip file"])
def test_manual_dir_accepts_folder_zip_holder_and_zip(tmp_path, given):
    folder = dummy.write_layout(tmp_path / "kaggle", TRAIN, TEST, _images())
    zip_path = dummy_data.zip_folder(
        folder, tmp_path / "downloads" / "aptos2019-blindness-detection.zip"
    )
    manual = {
        "extracted folder": folder,
        "folder holding the zip": zip_path.parent,
        "zip file": zip_path,
    }[given]
    report = aptos.prepare(manual, tmp_path / "data", config=aptos.make_config(32))
    assert report["counts"]["decoded"] == 12
    assert report["source"].startswith("zip " if given != "extracted folder" else "folder ")
    assert not list((tmp_path / "downloads").glob("*.png"))  # read in place, nothing extracted


def test_manual_dir_that_is_not_a_zip(tmp_path):
    stray = tmp_path / "notes.txt"
    stray.write_text("hello")
    with pytest.raises(aptos.Aptos2019BuildError, match="notes.txt: not a zip and not a folder"):
        aptos.prepare(stray, tmp_path / "data", config=aptos.make_config(32))


def test_max_bad_fraction_reaches_the_builder(tmp_path):
    root, _ = _bad_layout(tmp_path)
    with pytest.raises(aptos.Aptos2019BuildError, match="max_bad_fraction=1.00%"):
        aptos.prepare(root, tmp_path / "data", config=aptos.make_config(32))
    report = aptos.prepare(
        root, tmp_path / "data", config=aptos.make_config(32), max_bad_fraction=0.5
    )
    assert report["max_bad_fraction"] == 0.5 and report["counts"]["skipped"] == 5


def test_cli_prepare_max_bad_fraction(tmp_path, capsys):
    from eyegazer_keras import cli

    root, _ = _bad_layout(tmp_path)
    argv = ["prepare", "aptos2019", "--manual-dir", str(root), "--data-dir", str(tmp_path / "d")]
    assert cli.main([*argv, "--config", "256"]) == 2
    err_text = capsys.readouterr().err
    assert "aptos2019: decoding photos: 100%" in err_text and "12/12" in err_text  # tqdm bar
    err = err_text.strip().splitlines()[-1]  # after the progress bar
    assert err.startswith("eyegazer prepare: error: 5 of 12 images (41.67%)")
    assert "--max-bad-fraction" in err
    assert cli.main([*argv, "--config", "256", "--max-bad-fraction", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "prepared aptos2019/256" in out and '"skipped": 5' in out


# ---------------------------------------------------------------------------- quality gate


def _ungradable_layout(tmp_path):
    ids = list(TRAIN)
    images = _images()
    images[f"train_images/{ids[0]}.png"] = dummy_data.encode(np.zeros((75, 100, 3), np.uint8))
    images[f"train_images/{ids[1]}.png"] = dummy_data.encode(np.full((75, 100, 3), 6, np.uint8))
    images[f"train_images/{ids[2]}.png"] = dummy_data.encode(np.full((20, 24, 3), 120, np.uint8))
    images[f"train_images/{ids[3]}.png"] = dummy_data.encode(np.full((75, 100, 3), 255, np.uint8))
    return dummy.write_layout(tmp_path / "kaggle", TRAIN, TEST, images), ids


def test_ungradable_train_photos_are_skipped_and_counted_by_reason(tmp_path):
    root, ids = _ungradable_layout(tmp_path)
    builder, report = _build(tmp_path, root, max_bad_fraction=0.0)
    assert report["counts"]["skipped"] == 0  # readable photos are not bad files
    assert report["counts"]["ungradable"] == 4
    by_file = {u["file"]: u["reason"] for u in report["ungradable"]}
    assert by_file[f"train_images/{ids[0]}.png"] == "too_dark"
    assert by_file[f"train_images/{ids[1]}.png"] == "too_dark"
    assert by_file[f"train_images/{ids[2]}.png"] == "too_small"
    assert by_file[f"train_images/{ids[3]}.png"] == "overexposed"
    assert report["ungradable_by_reason"] == {"overexposed": 1, "too_dark": 2, "too_small": 1}
    written = {
        e["id_code"].decode()
        for split in ("train", "validation")
        for e in tfds.as_numpy(builder.as_dataset(split=split))
    }
    assert written == set(ids[4:])


def test_keep_ungradable_keeps_them(tmp_path):
    root, ids = _ungradable_layout(tmp_path)
    builder, report = _build(tmp_path, root, keep_ungradable=True)
    assert report["counts"]["ungradable"] == 0  # none refused ...
    assert report["quality_gate"] == "fundus.assess_quality"  # ... but every one judged
    splits = builder.info.splits
    assert splits["train"].num_examples + splits["validation"].num_examples == 10
    kept = [
        e
        for split in ("train", "validation")
        for e in tfds.as_numpy(builder.as_dataset(split=split))
    ]
    ungradable = {
        e["id_code"].decode(): e["ungradable_reason"].decode() for e in kept if not e["gradable"]
    }
    assert len(ungradable) == 4 and all(r in fundus.REASONS for r in ungradable.values())
    assert report["quality"]["ungradable"] == 4  # the 4 kept, of every photo judged (test too)
    assert report["quality"]["judged"] == report["counts"]["decoded"]
    assert all(0.0 <= float(e["quality_score"]) <= 1.0 for e in kept)


def test_the_gate_passes_every_dummy_photo(tmp_path):
    # The gate must not reject good photos: none of the generated fundus photos is refused.
    _, report = _build(tmp_path, _FOLDER / "dummy_data" / "folder", max_bad_fraction=0.0)
    assert report["ungradable"] == [] and report["quality_gate"] == "fundus.assess_quality"
