"""synthetic_fundus: TFDS builder test, determinism, grade-dependent lesions."""

import hashlib

import numpy as np
import tensorflow_datasets as tfds
from eyegazer_datasets.synthetic_fundus import generator
from eyegazer_datasets.synthetic_fundus import synthetic_fundus_dataset_builder as builder_lib


class SyntheticFundusTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = builder_lib.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["tiny"]
    SPLITS = {"train": 80, "validation": 24, "test": 16}
    SKIP_CHECKSUMS = True
    DL_EXTRACT_RESULT = {}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.dummy_data = "/nonexistent"  # nothing to download


def _digest(data_dir):
    b = builder_lib.Builder(data_dir=data_dir, config="tiny")
    b.download_and_prepare()
    out = {}
    for split in ("train", "validation", "test"):
        for ex in b.as_dataset(split=split, shuffle_files=False).as_numpy_iterator():
            out[ex["id_code"].decode()] = (
                hashlib.sha256(ex["image"].tobytes()).hexdigest(),
                int(ex["label"]),
            )
    return out


def test_two_builds_are_identical(tmp_path):
    a = _digest(str(tmp_path / "a"))
    b = _digest(str(tmp_path / "b"))
    assert len(a) == 120 and a == b


def test_framings_and_grades_follow_the_seed():
    img1, framing1 = generator.render(7, 2, 160)
    img2, framing2 = generator.render(7, 2, 160)
    np.testing.assert_array_equal(img1, img2)
    assert framing1 == framing2
    framings = {generator.render(s, 0, 120)[1] for s in range(40)}
    assert framings == set(generator.FRAMINGS)


def test_lesion_load_grows_with_grade():
    """Dark lesion pixels increase from grade 0 to grade 3 (averaged over seeds)."""

    def dark_fraction(grade):
        fracs = []
        for s in range(12):
            img, framing = generator.render(1000 + s, grade, 240)
            if framing != "full":
                continue
            r = img[..., 0].astype(int)
            g = img[..., 1].astype(int)
            inside = img.max(-1) > 30
            lesion = inside & (r < 0.6 * np.median(r[inside])) & (g < np.median(g[inside]))
            fracs.append(lesion.sum() / inside.sum())
        return np.mean(fracs)

    d0, d1, d3 = dark_fraction(0), dark_fraction(1), dark_fraction(3)
    assert d0 < d1 < d3


def test_grade_frequencies_follow_aptos():
    rng = np.random.default_rng(0)
    grades = np.array([generator.sample_grade(rng) for _ in range(4000)])
    freq = np.bincount(grades, minlength=5) / grades.size
    np.testing.assert_allclose(freq, [0.49, 0.10, 0.27, 0.05, 0.09], atol=0.03)


def test_render_with_mask_keeps_the_photo_and_marks_lesions():
    for seed, grade in [(3, 0), (4, 1), (5, 2), (6, 3), (7, 4)]:
        photo, framing = generator.render(seed, grade, 200)
        photo2, framing2, mask = generator.render_with_mask(seed, grade, 200)
        np.testing.assert_array_equal(photo, photo2)  # the mask draws no random numbers
        assert framing == framing2 and mask.shape == photo.shape[:2] and mask.dtype == bool
        assert (mask.sum() == 0) == (grade == 0)
        if grade >= 2:  # haemorrhages (dark red) dominate: lesion pixels are redder-darker
            inside = photo.max(-1) > 30
            g = photo[..., 1].astype(float)
            assert g[mask & inside].mean() < g[~mask & inside].mean()


def test_lesion_mask_is_in_the_stored_frame():
    import tensorflow as tf

    from eyegazer_keras import fundus

    framings = set()
    for seed in range(11, 23):  # every framing: full and cut discs (circle fit), rect (fallback)
        photo, framing, _ = generator.render_with_mask(seed, 3, 200)
        framings.add(framing)
        t_photo = tf.constant(photo)
        # The mask's geometry IS the image's: the same chain on the photo gives the stored image.
        np.testing.assert_array_equal(
            builder_lib.stored_frame(t_photo, t_photo, 64).numpy(),
            fundus.preprocess_fundus(t_photo, 64).numpy(),
        )
    assert framings == set(generator.FRAMINGS)
    photo, _, mask = generator.render_with_mask(11, 3, 200)
    t_photo = tf.constant(photo)
    stored = builder_lib.stored_frame(
        tf.constant(mask[..., None].astype(np.uint8) * 255), t_photo, 64
    )
    assert stored.shape == (64, 64, 1) and stored.dtype == tf.uint8
    assert 0 < int(tf.reduce_sum(tf.cast(stored > 0, tf.int32))) < 64 * 64 // 2


def test_built_examples_carry_the_lesion_mask(tmp_path):
    b = builder_lib.Builder(data_dir=str(tmp_path), config="tiny")
    b.download_and_prepare()
    assert str(b.version) == "1.2.0"
    for ex in b.as_dataset(split="validation", shuffle_files=False).as_numpy_iterator():
        assert ex["lesion_mask"].shape == (64, 64, 1)
        assert (ex["lesion_mask"].max() == 0) == (ex["label"] == 0)
