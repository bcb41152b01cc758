"""data.py over a real prepared synthetic_fundus split: label modes, weights, batches, numpy."""

import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from eyegazer_keras.data import augment, pipeline
from eyegazer_keras.data import datasets as data


def test_split_counts_and_unlabeled_test(tiny_data_dir):
    builder = data.prepared_builder("synthetic_fundus", tiny_data_dir, "tiny")
    counts = {k: v.num_examples for k, v in builder.info.splits.items()}
    assert counts == {"train": 80, "validation": 24, "test": 16}
    train = data.split_labels("synthetic_fundus", "train", tiny_data_dir, "tiny")
    assert data.has_labels(train) and set(np.unique(train)) <= set(range(5))
    # Grade frequencies roughly follow APTOS: grade 0 is the largest class.
    assert np.bincount(train, minlength=5).argmax() == 0
    test = data.split_labels("synthetic_fundus", "test", tiny_data_dir, "tiny")
    assert (test == -1).all() and not data.has_labels(test)
    assert data.source_size(builder) == 64


def test_not_prepared_names_the_command(tmp_path):
    with pytest.raises(data.DataNotPreparedError, match="eyegazer prepare aptos2019 --manual-dir"):
        data.load_split("aptos2019", "train", str(tmp_path))


@pytest.mark.parametrize(
    "mode,dtype,values",
    [
        ("grade", tf.int32, set(range(5))),
        ("binary", tf.int32, {0, 1}),
        ("regression", tf.float32, None),
    ],
)
def test_label_modes(tiny_data_dir, mode, dtype, values):
    split = data.load_split("synthetic_fundus", "validation", tiny_data_dir, "tiny")
    raw = data.split_labels("synthetic_fundus", "validation", tiny_data_dir, "tiny")
    ds = pipeline.make_dataset(split, task=mode, image_size=32, batch_size=8)
    images, labels = [], []
    for x, y in ds:
        assert x.dtype == tf.float32 and x.shape[1:] == (32, 32, 3)
        assert y.dtype == dtype
        images.append(x.numpy())
        labels.append(y.numpy())
    labels = np.concatenate(labels)
    np.testing.assert_array_equal(labels, pipeline.transform_labels_np(raw, mode))
    if mode == "binary":
        np.testing.assert_array_equal(labels, (raw > 0).astype(int))
    if values is not None:
        assert set(labels.tolist()) <= values
    x = np.concatenate(images)
    assert 0.0 <= x.min() and x.max() <= 255.0 and x.max() > 100


def test_class_weights_are_balanced():
    labels = np.array([0] * 6 + [1] * 2 + [2] * 4)
    w = pipeline.class_weights(labels, 5)
    assert w == pytest.approx({0: 12 / 18, 1: 12 / 6, 2: 12 / 12, 3: 0.0, 4: 0.0})
    # Weighted class totals are equal.
    assert 6 * w[0] == pytest.approx(2 * w[1]) == pytest.approx(4 * w[2])


def test_weights_and_training_pipeline(tiny_data_dir):
    split = data.load_split("synthetic_fundus", "train", tiny_data_dir, "tiny")
    weights = {0: 0.5, 1: 2.0, 2: 1.0, 3: 3.0, 4: 4.0}
    ds = pipeline.make_dataset(
        split,
        image_size=32,
        batch_size=16,
        training=True,
        seed=3,
        class_weight=weights,
        drop_remainder=True,
    )
    x, y, w = next(iter(ds))
    assert x.shape == (16, 32, 32, 3)
    np.testing.assert_allclose(w.numpy(), [weights[int(k)] for k in y.numpy()])

    # Same seed, same order (resumable epochs); another seed, another order.
    def first_batch(seed):
        return next(
            iter(
                pipeline.make_dataset(
                    split,
                    image_size=32,
                    batch_size=16,
                    training=True,
                    seed=seed,
                    class_weight=weights,
                    drop_remainder=True,
                    augment=False,
                )
            )
        )

    again, other = first_batch(3), first_batch(4)
    np.testing.assert_array_equal(again[1].numpy(), y.numpy())
    assert not np.array_equal(other[1].numpy(), y.numpy())


def test_augmentation_changes_images_but_not_labels(tiny_data_dir):
    split = data.load_split("synthetic_fundus", "train", tiny_data_dir, "tiny")
    plain = pipeline.make_dataset(
        split, image_size=32, batch_size=16, training=True, augment=False, seed=1
    )
    aug = pipeline.make_dataset(
        split, image_size=32, batch_size=16, training=True, augment=True, seed=1
    )
    (x0, y0), (x1, y1) = next(iter(plain)), next(iter(aug))
    np.testing.assert_array_equal(y0.numpy(), y1.numpy())
    assert np.abs(x0.numpy() - x1.numpy()).mean() > 1.0


def _balanced_labels(split, **kwargs) -> np.ndarray:
    """The targets of one epoch of balanced sampling (16 px, batches of 80, seed 0)."""
    ds = pipeline.make_dataset(
        split,
        image_size=16,
        batch_size=80,
        training=True,
        augment=False,
        balanced_sampling=True,
        seed=0,
        **kwargs,
    )
    return np.concatenate([batch[1].numpy() for batch in ds])


def test_balanced_sampling_evens_out_classes(tiny_data_dir):
    split = data.load_split("synthetic_fundus", "train", tiny_data_dir, "tiny")
    labels = _balanced_labels(split)
    assert labels.size == 80
    raw = data.split_labels("synthetic_fundus", "train", tiny_data_dir, "tiny")
    present = np.unique(raw)
    share = np.bincount(labels, minlength=5)[present] / labels.size
    assert share.max() < 0.5 * np.bincount(raw)[0] / raw.size + 0.2  # majority no longer dominates
    assert (share > 0).all()


def test_load_numpy_is_uint8(tiny_data_dir):
    images, labels, ids = pipeline.load_numpy(
        "synthetic_fundus", "validation", 32, tiny_data_dir, "tiny"
    )
    assert images.dtype == np.uint8 and images.shape == (24, 32, 32, 3)
    assert labels.shape == (24,) and len(set(ids)) == 24


def test_augment_batch_is_deterministic_in_seed_and_in_range():
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (4, 24, 24, 3), dtype=np.uint8))
    a = augment.augment_batch(images, tf.constant([1, 2], tf.int64)).numpy()
    b = augment.augment_batch(images, tf.constant([1, 2], tf.int64)).numpy()
    c = augment.augment_batch(images, tf.constant([1, 3], tf.int64)).numpy()
    assert a.dtype == np.float32 and a.shape == (4, 24, 24, 3)
    assert 0.0 <= a.min() and a.max() <= 255.0
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 1.0
    # float 0..255 input gives the same result as the uint8 it rounds to
    d = augment.augment_batch(tf.cast(images, tf.float32), tf.constant([1, 2], tf.int64)).numpy()
    np.testing.assert_array_equal(a, d)


def test_binary_weights_and_balanced_sampling_use_targets(tiny_data_dir):
    split = data.load_split("synthetic_fundus", "train", tiny_data_dir, "tiny")
    raw = data.split_labels("synthetic_fundus", "train", tiny_data_dir, "tiny")
    targets = pipeline.transform_labels_np(raw, "binary")
    weights = pipeline.class_weights(targets, 2)
    ds = pipeline.make_dataset(
        split, task="binary", image_size=16, batch_size=80, class_weight=weights
    )
    _, y, w = next(iter(ds))
    np.testing.assert_allclose(w.numpy(), [weights[int(k)] for k in y.numpy()])
    labels = _balanced_labels(split, task="binary", num_classes=2)
    assert abs(labels.mean() - 0.5) < 0.15  # no DR vs DR drawn equally, not by raw grade


@pytest.mark.parametrize(
    "dataset, expected",
    [
        ("eyepacs2015", ["trainLabels.csv", "train.zip.001", "retinopathy_solution.csv"]),
        ("fundus_folder", ["No_DR/", "Proliferate_DR/", "--label-map", "--groups"]),
        ("aptos2019", ["train_images/", "the zip file itself"]),
    ],
)
def test_prepare_help_explains_the_layout(dataset, expected, capsys):
    from eyegazer_keras import cli

    with pytest.raises(SystemExit) as info:
        cli.main(["prepare", dataset, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for text in expected:
        assert text in out, text


def test_prepare_eyepacs_and_fundus_folder_from_the_cli(tmp_path, capsys):
    from eyegazer_keras import cli

    repo = pathlib.Path(__file__).resolve().parents[2] / "datasets"
    data_dir = str(tmp_path / "tfds")
    argv = [
        "prepare",
        "eyepacs2015",
        "--manual-dir",
        str(repo / "eyepacs2015" / "dummy_data" / "zip_parts"),
    ]
    assert cli.main([*argv, "--data-dir", data_dir, "--config", "256"]) == 0
    out = capsys.readouterr().out
    assert "prepared eyepacs2015/256" in out and "sample: 2 examples" in out
    named = repo / "fundus_folder" / "dummy_data" / "named"
    argv = ["prepare", "fundus_folder", "--manual-dir", str(named), "--data-dir", data_dir]
    argv += ["--config", "256", "--groups", str(named / "groups.csv"), "--label-map", "Mild=1"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "prepared fundus_folder/256" in out and '"validation":' in out
    report = json.loads(
        (tmp_path / "tfds" / "fundus_folder" / "256" / "1.2.0" / "build_report.json").read_text()
    )
    assert report["patients_in_two_splits"] == [] and sum(report["patients"].values()) == 9


@pytest.fixture(scope="module")
def two_real_layouts(tmp_path_factory):
    """aptos2019/256 and eyepacs2015/256 built from their dummy Kaggle layouts (one data dir)."""
    from eyegazer_datasets.aptos2019 import aptos2019_dataset_builder as aptos
    from eyegazer_datasets.eyepacs2015 import eyepacs2015_dataset_builder as eyepacs

    repo = pathlib.Path(__file__).resolve().parents[2] / "datasets"
    data_dir = tmp_path_factory.mktemp("two")
    aptos.prepare(repo / "aptos2019" / "dummy_data" / "folder", data_dir, "256")
    eyepacs.prepare(repo / "eyepacs2015" / "dummy_data" / "folder", data_dir, "256")
    return str(data_dir)


def test_mixture_samples_at_the_stated_weights(two_real_layouts):
    name = "aptos2019:0.25,eyepacs2015:0.75"
    assert data.parse_mixture(name) == [("aptos2019", 0.25), ("eyepacs2015", 0.75)]
    assert data.mixture_weights(name, two_real_layouts, "256") == {
        "aptos2019": 0.25,
        "eyepacs2015": 0.75,
    }
    ds = data.load_split(name, "train", two_real_layouts, "256")
    ids = [ex["id_code"].decode() for ex in ds.as_numpy_iterator()]
    assert len(ids) == 9 + 12  # one epoch = the members' train sizes together
    share = sum(i.startswith("eyepacs2015/") for i in ids) / len(ids)
    assert 0.5 < share < 0.95  # 0.75 stated; 21 draws
    # split_labels draws the same sequence without decoding images.
    labels = [int(ex["label"]) for ex in data.load_split(name, "train", two_real_layouts, "256")]
    assert data.split_labels(name, "train", two_real_layouts, "256").tolist() == labels
    # Without weights, each member weighs its train size.
    weights = data.mixture_weights("aptos2019,eyepacs2015", two_real_layouts, "256")
    assert weights == pytest.approx({"aptos2019": 9 / 21, "eyepacs2015": 12 / 21})


def test_mixture_validation_is_every_member_whole(two_real_layouts):
    ds = data.load_split("aptos2019,eyepacs2015", "validation", two_real_layouts, "256")
    ids = [ex["id_code"].decode() for ex in ds.as_numpy_iterator()]
    assert len(ids) == 3 + 4 and len(set(ids)) == 7
    batches = pipeline.make_dataset(ds, image_size=32, batch_size=4)
    images, labels = next(iter(batches))
    assert images.shape == (4, 32, 32, 3) and labels.dtype == tf.int32


@pytest.mark.parametrize(
    "spec, message",
    [
        ("aptos2019,kaggle", "unknown dataset 'kaggle'"),
        ("aptos2019:0.5,eyepacs2015", "give a weight to every member or to none"),
        ("aptos2019:x,eyepacs2015:1", "weight 'x' of aptos2019"),
        ("aptos2019:0,eyepacs2015:1", "must be > 0"),
        ("aptos2019,aptos2019", "names a dataset twice"),
    ],
)
def test_bad_mixture_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        data.parse_mixture(spec)
