"""JPEG DCT-scaled decoding (`fundus.jpeg_ratio`, `decode_image(ratio=)`) and the builders'
per-photo path that uses it (`images.process_image`): generated photos only."""

import io

import numpy as np
import pytest
import skimage.data
from etils import epath
from eyegazer_datasets.common import build, dummy_data, images
from eyegazer_datasets.eyepacs2015 import eyepacs2015_dataset_builder as eyepacs
from eyegazer_datasets.fundus_folder import fundus_folder_dataset_builder as folder
from PIL import Image

from eyegazer_keras import fundus
from tests.test_case import exif_tagged_photo


def _jpeg(width: int, height: int, seed: int = 3) -> bytes:
    return dummy_data.encode(dummy_data.fundus_like(seed, (width, height)), "JPEG", quality=92)


@pytest.mark.parametrize(
    "height, width, min_side, ratio",
    [
        (2592, 3888, 512, 4),  # 648 px short side at 1/4; 324 at 1/8 is too small
        (2592, 3888, 256, 8),
        (683, 1024, 512, 1),  # the real EyePACS copies at the 512 config: full size
        (683, 1024, 256, 2),
        (1023, 2000, 512, 2),  # ceil(1023 / 2) = 512 still holds 512
        (1021, 2000, 512, 1),  # ceil(1021 / 2) = 511 does not
        (100, 100, 8, 8),
        (10, 10, 512, 1),
    ],
)
def test_jpeg_ratio_keeps_the_short_side(height, width, min_side, ratio):
    assert fundus.jpeg_ratio(height, width, min_side) == ratio
    assert fundus.jpeg_ratio(width, height, min_side) == ratio


def test_decode_image_ratio_is_a_dct_scaled_copy_of_the_full_decode():
    data = _jpeg(1200, 800)
    full = fundus.decode_image(data).numpy().astype(np.float64)
    for ratio in (2, 4, 8):
        scaled = fundus.decode_image(data, ratio=ratio).numpy()
        assert scaled.shape == (800 // ratio, 1200 // ratio, 3) and scaled.dtype == np.uint8
        # libjpeg's scaled IDCT approximates the block mean of the full-size decode.
        blocks = full.reshape(800 // ratio, ratio, 1200 // ratio, ratio, 3).mean(axis=(1, 3))
        delta = np.abs(scaled - blocks)
        assert delta.mean() < 2.0, (ratio, delta.mean())
        assert np.quantile(delta, 0.99) < 16.0, (ratio, np.quantile(delta, 0.99))
    np.testing.assert_array_equal(fundus.decode_image(data, ratio=1).numpy(), full)


def test_decode_image_ratio_sides_round_up_and_follow_exif():
    upright = dummy_data.fundus_like(4, (301, 203))  # width 301, height 203
    data = exif_tagged_photo(upright, 6, "JPEG")  # stored turned: 203 wide, 301 high
    out = fundus.decode_image(data, ratio=2).numpy()
    assert out.shape == (102, 151, 3)  # upright, each side ceil(side / 2)


def test_decode_image_ratio_leaves_other_formats_at_full_size():
    png = dummy_data.encode(dummy_data.fundus_like(5, (120, 90)))
    np.testing.assert_array_equal(
        fundus.decode_image(png, ratio=4).numpy(), fundus.decode_image(png).numpy()
    )
    with pytest.raises(ValueError, match="ratio must be one of"):
        fundus.decode_image(png, ratio=3)


def test_composite_on_black_keeps_rgb_pixels_and_still_blends_alpha():
    rgb = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(fundus.composite_on_black(rgb).numpy(), rgb)
    rgba = np.concatenate([rgb, np.full((7, 9, 1), 128, np.uint8)], axis=-1)
    expected = np.round(rgb * (128 / 255.0)).astype(np.uint8)
    np.testing.assert_array_equal(fundus.composite_on_black(rgba).numpy(), expected)


class _Files:
    """The `read` of a `kaggle_source.Source` over a dict of files."""

    def __init__(self, files):
        self.files = files

    def read(self, relpath, max_bytes=None):
        return self.files[relpath]


def _process(data: bytes, size: int, tmp_path) -> tuple[images.Processed, np.ndarray]:
    scratch = epath.Path(tmp_path)
    scratch.mkdir(parents=True, exist_ok=True)
    job = images.Job("photo", "train/photo.jpeg", gate=True)
    spec = images.StoreSpec(size, False, fundus.MAX_PIXELS)
    result = images.process_image(
        _Files({job.relpath: data}), job, spec, scratch, build.quality_gate, keep_ungradable=True
    )
    return result, np.asarray(Image.open(io.BytesIO((scratch / "photo.png").read_bytes())))


def test_process_image_decodes_a_large_jpeg_at_dct_scale(tmp_path):
    data = _jpeg(2400, 1600)
    # 512 stored: decoded at 1/2 (1200x800), the copy the gate and the hash look at too.
    result, stored = _process(data, 512, tmp_path)
    assert result.ok and (result.height, result.width) == (1600, 2400)
    full = fundus.decode_image(data)
    reference = fundus.preprocess_fundus(full, 512).numpy().astype(np.int32)
    delta = np.abs(stored.astype(np.int32) - reference)
    assert stored.shape == (512, 512, 3)
    assert delta.mean() < 1.5, delta.mean()  # measured on real photos: see benchmarks/NOTES.md
    phash_full, _ = images.hash_image(full.numpy())
    assert bin(result.phash ^ phash_full).count("1") <= 6


def test_the_gate_on_the_dct_scaled_copy_agrees_on_a_real_retina(tmp_path):
    # skimage's retina (a real fundus photograph, 1411x1411) as a camera JPEG: the gate looks
    # at the 1/2 copy (706 px, strided to 353) instead of the full decode strided to 471 px.
    data = dummy_data.encode(skimage.data.retina(), "JPEG", quality=95)
    result, _ = _process(data, 256, tmp_path)
    gate_full = build.quality_gate(fundus.decode_image(data).numpy())
    assert gate_full[0] and (result.gradable, result.ungradable_reason) == gate_full[:2]
    assert abs(result.quality_score - gate_full[2]) < 0.05


def test_process_image_hash_and_gate_do_not_depend_on_the_config(tmp_path):
    data = _jpeg(2400, 1600)
    small, _ = _process(data, 128, tmp_path / "a")  # stored from the 1/8 copy, looked at 1/2
    large, _ = _process(data, 512, tmp_path / "b")  # stored from and looked at the 1/2 copy
    assert small.phash == large.phash and np.array_equal(small.thumb, large.thumb)
    assert small.quality_score == large.quality_score


def test_process_image_png_keeps_the_full_size_path(tmp_path):
    photo = dummy_data.fundus_like(6, (640, 480))
    result, stored = _process(dummy_data.encode(photo), 256, tmp_path)
    # A PNG has no DCT scales: the same pixels as `preprocess_fundus` (a traced graph here,
    # eager there: at most one grey level apart where a float rounds the other way).
    reference = fundus.preprocess_fundus(photo, 256).numpy().astype(np.int32)
    assert np.abs(stored.astype(np.int32) - reference).max() <= 1
    assert result.phash == images.hash_image(photo)[0]


@pytest.mark.parametrize("builder", [eyepacs.Builder, folder.Builder])
def test_builders_reading_jpegs_record_the_scaled_decode_in_their_version(builder):
    notes = builder.RELEASE_NOTES[str(builder.VERSION)]
    assert builder.VERSION >= "1.2.0" and "DCT" in notes
