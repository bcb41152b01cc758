"""TFDS split -> label mode -> (cache) -> shuffle -> batch -> augment -> prefetch.

One input pipeline for every model. Images are decoded and fundus-cropped ONCE, by the dataset
builders; this module only resizes the stored `uint8` images to the model size (the same
`fundus.to_model_input` that serving uses), caches them as `uint8`, and augments batches.

Example:

```python
from eyegazer_keras import data

data.prepare("synthetic_fundus", data_dir="tfds", config="tiny")  # 120 generated photos
split = data.load_split("synthetic_fundus", "train", data_dir="tfds", config="tiny")
train = data.make_dataset(split, label_mode="grade", image_size=64, batch_size=32, training=True)
```
"""

from __future__ import annotations

import importlib
import logging
import math
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from eyegazer_keras import fundus

logger = logging.getLogger(__name__)

DATASETS = ("synthetic_fundus", "aptos2019", "eyepacs2015", "fundus_folder")
LABEL_MODES = ("grade", "binary", "regression")


class DataNotPreparedError(RuntimeError):
    """The dataset has not been built in the data dir; the message says which command builds it."""


def default_data_dir(data_dir: str | None = None) -> str:
    """`data_dir`, else `$EYEGAZER_DATA_DIR`, else `$TFDS_DATA_DIR`, else ~/tensorflow_datasets."""
    if data_dir:
        return os.path.expanduser(data_dir)
    return os.path.expanduser(
        os.environ.get("EYEGAZER_DATA_DIR")
        or os.environ.get("TFDS_DATA_DIR")
        or os.path.join("~", "tensorflow_datasets")
    )


def builder_class(name: str) -> type:
    """Imports the TFDS builder class of `name` from the shipped `eyegazer_datasets` package."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASETS)}")
    module = importlib.import_module(f"eyegazer_datasets.{name}.{name}_dataset_builder")
    return module.Builder


def get_builder(
    name: str, data_dir: str | None = None, config: str | None = None, **kwargs
) -> tfds.core.DatasetBuilder:
    """Returns the TFDS builder of `name` (`synthetic_fundus` or `aptos2019`).

    Args:
        name: str. Dataset name.
        data_dir: str. Where prepared TFRecords live. Defaults to `default_data_dir()`.
        config: str. Builder config name. Defaults to the builder's default.
        **kwargs: passed to the builder constructor.
    """
    cls = builder_class(name)
    if config is not None:
        kwargs["config"] = config
    return cls(data_dir=default_data_dir(data_dir), **kwargs)


# Datasets read from a manual download (folder, zip or zip parts) -> what to pass as --manual-dir.
MANUAL_DOWNLOADS = {
    "aptos2019": "aptos2019-blindness-detection.zip from "
    "https://www.kaggle.com/competitions/aptos2019-blindness-detection/data",
    "eyepacs2015": "trainLabels.csv and train.zip.001-005 from "
    "https://www.kaggle.com/competitions/diabetic-retinopathy-detection/data",
    "fundus_folder": "graded photos in class folders (see `eyegazer prepare fundus_folder --help`)",
}


def prepare(
    name: str,
    data_dir: str | None = None,
    config: str | None = None,
    manual_dir: str | None = None,
    **builder_options,
) -> tfds.core.DatasetBuilder:
    """Builds a dataset into `data_dir` (decode + crop + resize once) and returns its builder.

    Args:
        name: str. A name of `DATASETS`.
        data_dir: str. TFDS data dir. Defaults to `default_data_dir()`.
        config: str. Builder config. Defaults to the builder's default.
        manual_dir: str. For manual downloads (`MANUAL_DOWNLOADS`): the extracted folder, the
            folder holding the zip(s), or the zip itself.
        **builder_options: builder options of the manual-download builders, e.g.
            `max_bad_fraction` (float, fraction of bad photos tolerated) or `keep_ungradable`
            (bool). None values are left at the builder's default.

    Returns:
        The prepared builder.

    Raises:
        DataNotPreparedError: a manual download without `manual_dir`.
        ValueError: bad input (the builders' one-line `DatasetBuildError`s).
    """
    options = {k: v for k, v in builder_options.items() if v is not None}
    if name in MANUAL_DOWNLOADS:
        return _prepare_manual(name, data_dir, config, manual_dir, options)
    if options:
        raise ValueError(f"{name} takes no build options (got {', '.join(sorted(options))})")
    builder = get_builder(name, data_dir, config)
    download_config = tfds.download.DownloadConfig(
        manual_dir=os.path.expanduser(manual_dir) if manual_dir else None
    )
    builder.download_and_prepare(download_config=download_config)
    return builder


def _prepare_manual(name, data_dir, config, manual_dir, options) -> tfds.core.DatasetBuilder:
    if not manual_dir:
        raise DataNotPreparedError(
            f"{name} is a manual download: get {MANUAL_DOWNLOADS[name]} and run "
            f"eyegazer prepare {name} --manual-dir DIR_OR_ZIP"
        )
    module = importlib.import_module(f"eyegazer_datasets.{name}.{name}_dataset_builder")
    builder_config = config or module.Builder.DEFAULT_CONFIG_NAME
    module.prepare(
        os.path.expanduser(manual_dir), default_data_dir(data_dir), builder_config, **options
    )
    return get_builder(name, data_dir, builder_config)


def prepared_builder(
    name: str, data_dir: str | None = None, config: str | None = None
) -> tfds.core.DatasetBuilder:
    """Returns the builder if `name` is prepared in `data_dir`, else raises `DataNotPreparedError`.

    For a mixture (`"aptos2019,eyepacs2015"`, see `parse_mixture`) this is the first member's
    builder, after checking that every member is prepared and stores the same pixels (size,
    Ben Graham), so stored size and preprocessing are those of every member.
    """
    members = parse_mixture(name)
    if len(members) > 1:
        return _mixture_builders(members, data_dir, config)[0]
    builder = get_builder(name, data_dir, config)
    if not tf.io.gfile.exists(os.path.join(builder.data_dir, "dataset_info.json")):
        manual = " --manual-dir DIR_OR_ZIP" if name in MANUAL_DOWNLOADS else ""
        cfg = f" --config {config}" if config else ""
        raise DataNotPreparedError(
            f"dataset '{name}' is not prepared in {default_data_dir(data_dir)}; run: "
            f"eyegazer prepare {name}{manual}{cfg} --data-dir {default_data_dir(data_dir)}"
        )
    return builder


def source_size(builder: tfds.core.DatasetBuilder) -> int:
    """The side, in pixels, of the images the builder stored."""
    return int(builder.info.features["image"].shape[0])


def preprocessing_spec(builder: tfds.core.DatasetBuilder) -> fundus.PreprocessingSpec:
    """The `fundus.PreprocessingSpec` of what `builder` stored: its size and Ben Graham flag.

    Every eyegazer builder config has a `ben_graham` field; the stored size is read from the
    prepared image feature, so it is the truth on disk.

    Args:
        builder: a TFDS builder of this project.

    Returns:
        `fundus.PreprocessingSpec` (fundus crop, normalisation inside the model).

    Raises:
        AttributeError: when the builder's config has no `ben_graham` field (not an eyegazer
            builder).
    """
    return fundus.PreprocessingSpec(
        stored_size=source_size(builder), ben_graham=bool(builder.builder_config.ben_graham)
    )


def load_split(
    name: str,
    split: str,
    data_dir: str | None = None,
    config: str | None = None,
    max_examples: int | None = None,
) -> tf.data.Dataset:
    """Loads a prepared split as a dataset of dicts (`image` uint8, `label` int64, `id_code`).

    `name` may be a mixture (`"aptos2019,eyepacs2015"` or `"aptos2019:0.3,eyepacs2015:0.7"`):
    see `load_mixture`.
    """
    if len(parse_mixture(name)) > 1:
        return load_mixture(name, split, data_dir, config, max_examples)
    builder = prepared_builder(name, data_dir, config)
    if split not in builder.info.splits:
        raise ValueError(
            f"dataset '{name}' has no split '{split}'; it has: {', '.join(builder.info.splits)}"
        )
    ds = builder.as_dataset(split=split, shuffle_files=False)
    if max_examples:
        ds = ds.take(max_examples)
    return ds


def split_labels(
    name: str,
    split: str,
    data_dir: str | None = None,
    config: str | None = None,
    max_examples: int | None = None,
) -> np.ndarray:
    """All labels of a split, read without decoding images (a mixture: in its sampled order)."""
    if len(parse_mixture(name)) > 1:
        return np.fromiter(
            load_mixture(name, split, data_dir, config, max_examples, labels_only=True)
            .map(lambda ex: ex["label"])
            .as_numpy_iterator(),
            dtype=np.int64,
        )
    builder = prepared_builder(name, data_dir, config)
    ds = builder.as_dataset(
        split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
    )
    if max_examples:
        ds = ds.take(max_examples)
    return np.fromiter(ds.map(lambda ex: ex["label"]).as_numpy_iterator(), dtype=np.int64)


# ---- Mixtures of datasets (training on several sets at once) --------------------------------

# The sampling of a mixture's train split is seeded by this: the same mixture gives the same
# sequence of examples in every run (labels-only reads draw the same sequence).
MIXTURE_SEED = 2015


def parse_mixture(spec: str) -> list[tuple[str, float | None]]:
    """`"aptos2019:0.3,eyepacs2015:0.7"` -> `[("aptos2019", 0.3), ("eyepacs2015", 0.7)]`.

    Args:
        spec: str. One dataset name, or comma-separated names, each optionally `:weight`.
            Either every member has a weight or none has (then weights follow the members'
            train sizes).

    Returns:
        `[(name, weight or None)]`; one element for a single dataset.

    Raises:
        ValueError: an unknown name, a repeated name, a bad or non-positive weight, or weights
            given for only some members.
    """
    members = []
    for part in str(spec).split(","):
        name, colon, weight = part.strip().partition(":")
        if name not in DATASETS:
            raise ValueError(
                f"unknown dataset '{name}' in '{spec}'; choose from: {', '.join(DATASETS)}"
            )
        value = None
        if colon:
            try:
                value = float(weight)
            except ValueError:
                raise ValueError(
                    f"weight '{weight}' of {name} in '{spec}' is not a number"
                ) from None
            if not value > 0:
                raise ValueError(f"weight of {name} in '{spec}' must be > 0, got {weight}")
        members.append((name, value))
    names = [n for n, _ in members]
    if len(set(names)) != len(names):
        raise ValueError(f"dataset mixture '{spec}' names a dataset twice")
    if len(members) > 1 and len({w is None for _, w in members}) > 1:
        raise ValueError(f"dataset mixture '{spec}': give a weight to every member or to none")
    return members


def stored_pixels(builder: tfds.core.DatasetBuilder) -> tuple[int, bool]:
    """`(stored side in px, Ben Graham applied)`: what a prepared builder's images are.

    Two datasets with equal `stored_pixels` hold photos a model can read alike (mixtures,
    external validation).
    """
    return source_size(builder), bool(getattr(builder.builder_config, "ben_graham", False))


def _mixture_builders(members, data_dir, config) -> list[tfds.core.DatasetBuilder]:
    builders = [prepared_builder(n, data_dir, config) for n, _ in members]
    stored = {stored_pixels(b) for b in builders}
    if len(stored) > 1:
        raise ValueError(
            "the datasets of a mixture must store the same pixels (size, Ben Graham): "
            + ", ".join(
                f"{n}/{b.builder_config.name}" for (n, _), b in zip(members, builders, strict=True)
            )
            + "; prepare them with one --config"
        )
    return builders


def mixture_weights(name: str, data_dir: str | None = None, config: str | None = None) -> dict:
    """The sampling weights of a mixture's train split, normalised to sum to 1.

    Stated weights are used as given; without them each member weighs its train size (one
    epoch then sees every photo about once, as a concatenation would).

    Returns:
        `{dataset: weight}`.
    """
    members = parse_mixture(name)
    builders = _mixture_builders(members, data_dir, config)
    raw = [
        w if w is not None else b.info.splits["train"].num_examples
        for (_, w), b in zip(members, builders, strict=True)
    ]
    total = float(sum(raw))
    return {n: r / total for (n, _), r in zip(members, raw, strict=True)}


def load_mixture(
    name: str,
    split: str,
    data_dir: str | None = None,
    config: str | None = None,
    max_examples: int | None = None,
    labels_only: bool = False,
) -> tf.data.Dataset:
    """A split of several datasets at once, as dicts (`image`, `label`, `id_code`).

    `train` is sampled with `tf.data.Dataset.sample_from_datasets` at `mixture_weights`
    (seeded by `MIXTURE_SEED`, members repeated so the weights hold for the whole epoch); its
    length is the sum of the members' train sizes. Other splits (`validation`, `test`) are the
    members one after another, each whole: evaluation never samples. `id_code`s are prefixed
    with the dataset name (`eyepacs2015/10_left`).

    Args:
        name: str. The mixture, see `parse_mixture`.
        split: str. A split every member has.
        data_dir: str. TFDS data dir. Defaults to `default_data_dir()`.
        config: str. The builder config of every member (they must store the same pixels).
        max_examples: int. Keep only the first this many examples. Defaults to all.
        labels_only: bool. Skip image decoding (for `split_labels`). Defaults to False.

    Returns:
        A `tf.data.Dataset`.

    Raises:
        ValueError: a member without the split, or members storing different pixels.
        DataNotPreparedError: a member is not prepared.
    """
    members = parse_mixture(name)
    builders = _mixture_builders(members, data_dir, config)
    parts = []
    for (member, _), builder in zip(members, builders, strict=True):
        if split not in builder.info.splits:
            raise ValueError(f"dataset '{member}' of the mixture '{name}' has no split '{split}'")
        decoders = {"image": tfds.decode.SkipDecoding()} if labels_only else None
        ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
        prefix = tf.constant(f"{member}/")

        def _common(ex, prefix=prefix):
            out = {"label": ex["label"], "id_code": prefix + ex["id_code"]}
            if not labels_only:
                out["image"] = ex["image"]
            return out

        parts.append(ds.map(_common, deterministic=True))
    if split == "train":
        sizes = [b.info.splits["train"].num_examples for b in builders]
        weights = list(mixture_weights(name, data_dir, config).values())
        ds = tf.data.Dataset.sample_from_datasets(
            [p.repeat() for p in parts], weights=weights, seed=MIXTURE_SEED
        ).take(sum(sizes))
    else:
        ds = parts[0]
        for p in parts[1:]:
            ds = ds.concatenate(p)
    if max_examples:
        ds = ds.take(max_examples)
    return ds


def has_labels(labels: np.ndarray) -> bool:
    """False for unlabeled splits (APTOS / synthetic `test`: label -1)."""
    return labels.size > 0 and bool(np.all(labels >= 0))


def transform_label(label: tf.Tensor, label_mode: str) -> tf.Tensor:
    """grade: int 0-4; binary: 0 (no DR) vs 1 (grades 1-4); regression: float32 grade."""
    if label_mode == "grade":
        return tf.cast(label, tf.int32)
    if label_mode == "binary":
        return tf.cast(label > 0, tf.int32)
    if label_mode == "regression":
        return tf.cast(label, tf.float32)
    raise ValueError(f"label_mode '{label_mode}' is not one of {', '.join(LABEL_MODES)}")


def transform_labels_np(labels: np.ndarray, label_mode: str) -> np.ndarray:
    """NumPy twin of `transform_label` for metrics."""
    if label_mode == "binary":
        return (labels > 0).astype(np.int64)
    if label_mode == "regression":
        return labels.astype(np.float32)
    return labels.astype(np.int64)


def class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """Balanced class weights (sklearn), `n / (k * count)`; absent classes get weight 0."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    out = {int(c): 0.0 for c in range(num_classes)}
    out.update({int(c): float(w) for c, w in zip(present, weights, strict=True)})
    return out


_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 weights, as `tf.image.rgb_to_grayscale`


def _augment_params(seed: tf.Tensor, batch: tf.Tensor) -> tuple[tf.Tensor, ...]:
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 6)
    theta = tf.random.stateless_uniform([batch], seeds[0], -math.pi, math.pi)
    scale = tf.random.stateless_uniform([batch], seeds[1], 0.9, 1.1)
    flip = tf.where(tf.random.stateless_uniform([batch], seeds[2]) < 0.5, -1.0, 1.0)
    brightness = tf.random.stateless_uniform([batch], seeds[3], -0.1 * 255.0, 0.1 * 255.0)
    contrast = tf.random.stateless_uniform([batch], seeds[4], 0.85, 1.15)
    saturation = tf.random.stateless_uniform([batch], seeds[5], 0.4, 0.6)
    return theta, scale, flip, brightness, contrast, saturation / (1.0 - saturation)


@tf.function(jit_compile=True)
def _source_pixels(theta, scale, flip, height, width):
    """Flat index of each output pixel's source pixel (nearest), and whether that exists."""
    hf, wf = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    cy, cx = (hf - 1.0) / 2.0, (wf - 1.0) / 2.0
    cos = (tf.cos(theta) * scale)[:, None, None]
    sin = (tf.sin(theta) * scale)[:, None, None]
    xs = flip[:, None, None] * (tf.range(wf) - cx)[None, None, :]
    ys = (tf.range(hf) - cy)[None, :, None]
    x_in = tf.round(cos * xs - sin * ys + cx)
    y_in = tf.round(sin * xs + cos * ys + cy)
    inside = (x_in >= 0.0) & (x_in <= wf - 1.0) & (y_in >= 0.0) & (y_in <= hf - 1.0)
    first = tf.range(tf.shape(theta)[0])[:, None, None] * (height * width)
    index = first + tf.cast(y_in, tf.int32) * width + tf.cast(x_in, tf.int32)
    return tf.where(inside, index, 0), inside


@tf.function(jit_compile=True)
def _channel_means(images):
    """Per-image channel means over every 4th row and column (cheap and close enough)."""
    return tf.reduce_mean(tf.cast(images[:, ::4, ::4, :], tf.float32), axis=[1, 2])


@tf.function(jit_compile=True)
def _warp_recolour(images, index, inside, matrix, offset):
    """Gathers the source pixels and applies `clip(rgb @ matrix + offset)`; black outside."""
    x = tf.cast(tf.gather(tf.reshape(images, [-1, 3]), index), tf.float32)
    m = matrix[:, None, None]  # [B, 1, 1, in, out]: three broadcast products fuse into one loop
    out = x[..., 0:1] * m[..., 0, :] + x[..., 1:2] * m[..., 1, :] + x[..., 2:3] * m[..., 2, :]
    out = tf.clip_by_value(out + offset[:, None, None, :], 0.0, 255.0)
    return tf.where(inside[..., None], out, 0.0)


@tf.function(
    input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.uint8),
        tf.TensorSpec([2], tf.int64),
    ],
    autograph=False,
)
def _augment_uint8(images, seed):
    # Traced once per process: a pipeline built every epoch only adds a call to it.
    shape = tf.shape(images)
    theta, scale, flip, brightness, contrast, saturation = _augment_params(seed, shape[0])
    index, inside = _source_pixels(theta, scale, flip, shape[1], shape[2])
    luma = tf.constant(_LUMA)
    sat = saturation[:, None, None] * tf.eye(3) + (1.0 - saturation)[:, None, None] * luma
    matrix = tf.transpose(contrast[:, None, None] * sat, [0, 2, 1])  # [B, in, out]
    shift = (1.0 - contrast)[:, None] * _channel_means(images) + brightness[:, None]
    offset = tf.einsum("bij,bj->bi", sat, shift)
    out = _warp_recolour(images, index, inside, matrix, offset)
    return tf.ensure_shape(out, images.shape)


def augment_batch(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Fundus-appropriate augmentation of a batch, deterministic in `seed`.

    Every image gets a random horizontal flip, a rotation by any angle and a zoom of +-10%
    (one fused nearest-neighbour warp: with the full rotation this covers vertical flips too;
    uncovered corners are black), then brightness +-10% of 255, contrast x0.85-1.15 around the
    image's channel means and saturation x0.67-1.5, folded into one 3x3 colour matrix plus
    offset: the ranges of the former `keras.layers.Random*` stack, ~30x cheaper on a CPU
    (XLA-compiled; the random draws stay outside XLA so they match eager mode).

    Args:
        images: `uint8 [B, S, S, 3]`; float 0..255 inputs are rounded to uint8 first.
        seed: int `[2]`. Stateless seed: equal seeds give equal outputs.

    Returns:
        `float32 [B, S, S, 3]` in 0..255.
    """
    images = tf.convert_to_tensor(images)
    if images.dtype != tf.uint8:
        images = tf.cast(tf.clip_by_value(tf.round(images), 0.0, 255.0), tf.uint8)
    out = _augment_uint8(images, tf.cast(seed, tf.int64))
    out.set_shape(images.shape)
    return out


def make_augmenter(seed: int = 0):
    """Returns `augment(images, index)`: `augment_batch` seeded with `[seed, index]`.

    `index` is the batch number within the epoch, so a pipeline built with the same `seed`
    augments identically (resumable), and `seed + epoch` gives every epoch new draws.

    Args:
        seed: int. Augmentation seed. Defaults to 0.
    """

    def augment(images: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
        pair = tf.stack([tf.constant(seed, tf.int64), tf.cast(index, tf.int64)])
        return augment_batch(images, pair)

    return augment


def _model_sized(ex: dict, image_size: int) -> dict:
    """The one stored -> model-input step: `fundus.to_model_input`, kept as exact uint8.

    `to_model_input` rounds to whole 0..255 values (normalisation is inside the models), so the
    uint8 cast loses nothing and `make_dataset` casts back to float32 per batch.
    """
    image = tf.cast(fundus.to_model_input(ex["image"], image_size), tf.uint8)
    return {"image": image, "label": ex["label"], "id_code": ex["id_code"]}


def cached_images(ds: tf.data.Dataset, image_size: int) -> tf.data.Dataset:
    """Resizes a split's stored images to `image_size` once and caches them in memory as uint8.

    Build per-epoch pipelines on top with `make_dataset(..., cache=False)`: every epoch then
    reads the cache instead of decoding the stored PNGs again.
    """
    return ds.map(
        lambda ex: _model_sized(ex, image_size),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    ).cache()


def make_dataset(
    ds: tf.data.Dataset,
    *,
    label_mode: str = "grade",
    image_size: int = 224,
    batch_size: int = 32,
    training: bool = False,
    augment: bool = True,
    seed: int = 0,
    class_weight: dict[int, float] | None = None,
    balanced_sampling: bool = False,
    num_classes: int = 5,
    cache: bool = True,
    drop_remainder: bool = False,
    with_ids: bool = False,
) -> tf.data.Dataset:
    """Turns a split (dicts from `load_split`) into batches of `(image, label[, weight])`.

    Images become `float32 [B, image_size, image_size, 3]` in 0..255 (models normalise inside).
    Resized images are cached as `uint8`, so each epoch costs a cache read, not a decode.

    Args:
        ds: dataset of dicts with `image` (uint8) and `label`.
        label_mode: str. `grade`, `binary` or `regression`. Defaults to `grade`.
        image_size: int. Model input side. Defaults to 224.
        batch_size: int. Global batch size. Defaults to 32.
        training: bool. Shuffle (seeded) and augment. Defaults to False.
        augment: bool. Apply `make_augmenter` when training. Defaults to True.
        seed: int. Shuffle/augmentation seed; pass `seed + epoch` for a per-epoch order that a
            resumed run reproduces. Defaults to 0.
        class_weight: dict. Per-class weights; adds a third element (sample weight).
        balanced_sampling: bool. Draw classes equally often (training only). Defaults to False.
        num_classes: int. Number of target classes (5 for grade, 2 for binary) for balanced
            sampling. Defaults to 5.
        cache: bool. Cache resized uint8 images in memory. Defaults to True.
        drop_remainder: bool. Drop the last partial batch. Defaults to False.
        with_ids: bool. Add `id_code` as the last element (evaluation). Defaults to False.
    """
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode '{label_mode}' is not one of {', '.join(LABEL_MODES)}")

    if cache:
        ds = cached_images(ds, image_size)
    elif not _is_uint8_at(ds.element_spec["image"], image_size):
        ds = ds.map(
            lambda ex: _model_sized(ex, image_size),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    if training and balanced_sampling:
        if label_mode == "regression":
            raise ValueError("balanced_sampling needs class targets (grade or binary label_mode)")

        def _target(ex):
            return tf.cast(transform_label(tf.cast(ex["label"], tf.int64), label_mode), tf.int64)

        # Classes are the TARGETS (binary: no DR vs DR), not the raw grades.
        per_class = [
            ds.filter(lambda ex, c=c: tf.equal(_target(ex), c)).repeat().shuffle(512, seed=seed + c)
            for c in range(num_classes)
        ]
        n = int(ds.reduce(0, lambda acc, _: acc + 1).numpy())
        present = [
            d
            for d, c in zip(per_class, range(num_classes), strict=True)
            if bool(
                ds.filter(lambda ex, c=c: tf.equal(_target(ex), c))
                .take(1)
                .reduce(0, lambda a, _: a + 1)
                > 0
            )
        ]
        ds = tf.data.Dataset.sample_from_datasets(present, seed=seed, stop_on_empty_dataset=False)
        ds = ds.take(n)
    elif training:
        ds = ds.shuffle(4096, seed=seed, reshuffle_each_iteration=False)

    weights_table = None
    if class_weight:
        keys = tf.constant(sorted(class_weight), dtype=tf.int64)
        values = tf.constant([class_weight[k] for k in sorted(class_weight)], dtype=tf.float32)
        weights_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(keys, values), default_value=1.0
        )

    augmenter = make_augmenter(seed) if training and augment else None

    def _to_tuple(index, ex):  # on whole batches: one map call per batch, not per image
        label = tf.cast(ex["label"], tf.int64)
        if augmenter is not None:
            image = augmenter(ex["image"], index)
        else:
            image = tf.cast(ex["image"], tf.float32)
        out = [image, transform_label(label, label_mode)]
        if weights_table is not None:
            # Weights are keyed by the TARGET class (binary: 0 = no DR, 1 = DR).
            target = tf.cast(transform_label(label, label_mode), tf.int64)
            out.append(weights_table.lookup(target))
        if with_ids:
            out.append(ex["id_code"])
        return tuple(out)

    ds = ds.batch(batch_size, drop_remainder=drop_remainder).enumerate()
    ds = ds.map(_to_tuple, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _is_uint8_at(spec: tf.TensorSpec, image_size: int) -> bool:
    return spec.dtype == tf.uint8 and tuple(spec.shape[-3:]) == (image_size, image_size, 3)


def load_numpy(
    name: str,
    split: str,
    image_size: int,
    data_dir: str | None = None,
    config: str | None = None,
    max_examples: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A split as NumPy: `uint8 [N, S, S, 3]` images, int64 labels, id strings.

    The image array is allocated once, as uint8, and filled in place: no float32 copy of the
    set ever exists (AutoKeras models normalise inside).
    """
    labels = split_labels(name, split, data_dir, config, max_examples)
    n = labels.size
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    ids = np.empty((n,), dtype=object)
    ds = load_split(name, split, data_dir, config, max_examples)
    ds = ds.map(
        lambda ex: _model_sized(ex, image_size),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    ).batch(256)
    i = 0
    for batch in ds.as_numpy_iterator():
        batch_images, batch_labels, batch_ids = batch["image"], batch["label"], batch["id_code"]
        k = batch_images.shape[0]
        images[i : i + k] = batch_images
        labels[i : i + k] = batch_labels
        ids[i : i + k] = [b.decode() for b in batch_ids]
        i += k
    return images[:i], labels[:i], ids[:i]
