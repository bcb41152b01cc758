"""The tf.data input pipeline: a split -> task labels -> model-size uint8 cache -> batches.

``make_dataset`` turns a split of ``data.load_split`` (dicts of stored ``uint8`` images) into
``(image, label[, weight][, id])`` batches: each image is resized once to the model input by
``fundus.to_model_input`` (the step serving uses too), cached as ``uint8``, shuffled or
class-balanced (seeded), batched, augmented per batch (``augment``) and prefetched. Labels
follow the task: ``grade`` (0..4), ``binary`` (no DR vs DR) or ``regression`` (float grade).
``load_numpy`` gives the same model inputs as NumPy arrays (AutoKeras takes only arrays).

Example:

```python
import numpy as np
import tensorflow as tf
from eyegazer_keras.data import pipeline

split = tf.data.Dataset.from_tensor_slices({
    "image": np.zeros((6, 48, 48, 3), np.uint8),
    "label": np.array([0, 1, 2, 3, 4, 2]),
    "id_code": np.array([f"photo{i}" for i in range(6)]),
})
batches = pipeline.make_dataset(split, task="binary", image_size=32, batch_size=4)
images, labels = next(iter(batches))  # float32 [4, 32, 32, 3] in 0..255, int32 [4] of 0/1
assert images.shape == (4, 32, 32, 3) and labels.numpy().tolist() == [0, 1, 1, 1]
```
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from eyegazer_keras import fundus
from eyegazer_keras.data import augment as augment_lib
from eyegazer_keras.data import datasets as data

TASKS = ("grade", "binary", "regression")

__all__ = [
    "TASKS",
    "cached_images",
    "class_weights",
    "load_numpy",
    "make_dataset",
    "model_sized",
    "transform_label",
    "transform_labels_np",
]


# --------------------------------------------------------------------------- stored -> model size


def _model_sized(ex: dict, image_size: int) -> dict:
    """The one stored -> model-input step: `fundus.to_model_input`, kept as exact uint8.

    `to_model_input` rounds to whole 0..255 values (normalisation is inside the models), so the
    uint8 cast loses nothing and `make_dataset` casts back to float32 per batch.
    """
    image = tf.cast(fundus.to_model_input(ex["image"], image_size), tf.uint8)
    return {"image": image, "label": ex["label"], "id_code": ex["id_code"]}


def model_sized(ds: tf.data.Dataset, image_size: int) -> tf.data.Dataset:
    """Maps a split's stored images to the model input, as exact uint8 (`fundus.to_model_input`).

    Args:
        ds: dataset of dicts with `image` (stored uint8 `[H, W, 3]`), `label` and `id_code`.
        image_size: int. Model input side S in pixels.

    Returns:
        Dataset of dicts `image` uint8 `[S, S, 3]`, `label`, `id_code`, in the input order.
    """
    return ds.map(
        lambda ex: _model_sized(ex, image_size),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def cached_images(ds: tf.data.Dataset, image_size: int) -> tf.data.Dataset:
    """Resizes a split's stored images to `image_size` once and caches them in memory as uint8.

    Build per-epoch pipelines on top with `make_dataset(..., cache=False)`: every epoch then
    reads the cache instead of decoding the stored PNGs again.

    Args:
        ds: dataset of dicts with `image` (stored uint8), `label` and `id_code`.
        image_size: int. Model input side S in pixels.

    Returns:
        The `model_sized` dataset, `.cache()`d in memory.
    """
    return model_sized(ds, image_size).cache()


def _is_uint8_at(spec: tf.TensorSpec, image_size: int) -> bool:
    return spec.dtype == tf.uint8 and tuple(spec.shape[-3:]) == (image_size, image_size, 3)


# --------------------------------------------------------------------------- make_dataset


def _balanced(ds: tf.data.Dataset, task: str, num_classes: int, seed: int):
    """Draws the target classes equally often (seeded); as many examples as ``ds`` has."""
    if task == "regression":
        raise ValueError("balanced_sampling needs class targets (grade or binary task)")

    def _target(ex):
        return tf.cast(transform_label(tf.cast(ex["label"], tf.int64), task), tf.int64)

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
    return ds.take(n)


def _weights_table(class_weight: dict[int, float]) -> tf.lookup.StaticHashTable:
    keys = tf.constant(sorted(class_weight), dtype=tf.int64)
    values = tf.constant([class_weight[k] for k in sorted(class_weight)], dtype=tf.float32)
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(keys, values), default_value=1.0
    )


def _batch_to_tuple(task: str, augmenter, weights_table, with_ids: bool):
    """``(batch index, batch dict) -> (image float32, target[, weight][, id_code])``."""

    def to_tuple(index, ex):  # on whole batches: one map call per batch, not per image
        label = tf.cast(ex["label"], tf.int64)
        if augmenter is not None:
            image = augmenter(ex["image"], index)
        else:
            image = tf.cast(ex["image"], tf.float32)
        out = [image, transform_label(label, task)]
        if weights_table is not None:
            # Weights are keyed by the TARGET class (binary: 0 = no DR, 1 = DR).
            target = tf.cast(transform_label(label, task), tf.int64)
            out.append(weights_table.lookup(target))
        if with_ids:
            out.append(ex["id_code"])
        return tuple(out)

    return to_tuple


def _deterministic_data_sharded(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def make_dataset(
    ds: tf.data.Dataset,
    *,
    task: str = "grade",
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
    """Turns a split (dicts from `data.load_split`) into batches of `(image, label[, weight])`.

    Images become `float32 [B, image_size, image_size, 3]` in 0..255 (models normalise inside).
    Resized images are cached as `uint8`, so each epoch costs a cache read, not a decode.

    Args:
        ds: dataset of dicts with `image` (uint8) and `label`.
        task: str. `grade`, `binary` or `regression`. Defaults to `grade`.
        image_size: int. Model input side. Defaults to 224.
        batch_size: int. Global batch size. Defaults to 32.
        training: bool. Shuffle (seeded) and augment. Defaults to False.
        augment: bool. Apply `augment.make_augmenter` when training. Defaults to True.
        seed: int. Shuffle/augmentation seed; pass `seed + epoch` for a per-epoch order that a
            resumed run reproduces. Defaults to 0.
        class_weight: dict. Per-class weights; adds a third element (sample weight).
        balanced_sampling: bool. Draw classes equally often (training only). Defaults to False.
        num_classes: int. Number of target classes (5 for grade, 2 for binary) for balanced
            sampling. Defaults to 5.
        cache: bool. Cache resized uint8 images in memory. Defaults to True.
        drop_remainder: bool. Drop the last partial batch. Defaults to False.
        with_ids: bool. Add `id_code` as the last element (evaluation). Defaults to False.

    Returns:
        A prefetched, deterministic `tf.data.Dataset` of tuples: image float32 `[B, S, S, 3]`,
        target (int32 `[B]` for grade/binary, float32 `[B]` for regression), then float32
        `[B]` sample weights with `class_weight` and string `[B]` ids with `with_ids`. Its
        auto-shard policy is `DATA`, for `tf.distribute`.

    Raises:
        ValueError: an unknown `task`, or `balanced_sampling` with `regression`.
    """
    if task not in TASKS:
        raise ValueError(f"task '{task}' is not one of {', '.join(TASKS)}")
    if cache:
        ds = cached_images(ds, image_size)
    elif not _is_uint8_at(ds.element_spec["image"], image_size):
        ds = model_sized(ds, image_size)
    if training and balanced_sampling:
        ds = _balanced(ds, task, num_classes, seed)
    elif training:
        ds = ds.shuffle(4096, seed=seed, reshuffle_each_iteration=False)
    to_tuple = _batch_to_tuple(
        task,
        augment_lib.make_augmenter(seed) if training and augment else None,
        _weights_table(class_weight) if class_weight else None,
        with_ids,
    )
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).enumerate()
    ds = ds.map(to_tuple, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _deterministic_data_sharded(ds)


# --------------------------------------------------------------------------- labels


def transform_label(label: tf.Tensor, task: str) -> tf.Tensor:
    """grade: int 0-4; binary: 0 (no DR) vs 1 (grades 1-4); regression: float32 grade."""
    if task == "grade":
        return tf.cast(label, tf.int32)
    if task == "binary":
        return tf.cast(label > 0, tf.int32)
    if task == "regression":
        return tf.cast(label, tf.float32)
    raise ValueError(f"task '{task}' is not one of {', '.join(TASKS)}")


def transform_labels_np(labels: np.ndarray, task: str) -> np.ndarray:
    """NumPy twin of `transform_label` for metrics."""
    if task == "binary":
        return (labels > 0).astype(np.int64)
    if task == "regression":
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


# --------------------------------------------------------------------------- NumPy


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
    labels = data.split_labels(name, split, data_dir, config, max_examples)
    n = labels.size
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    ids = np.empty((n,), dtype=object)
    ds = model_sized(data.load_split(name, split, data_dir, config, max_examples), image_size)
    ds = ds.batch(256)
    i = 0
    for batch in ds.as_numpy_iterator():
        batch_images, batch_labels, batch_ids = batch["image"], batch["label"], batch["id_code"]
        k = batch_images.shape[0]
        images[i : i + k] = batch_images
        labels[i : i + k] = batch_labels
        ids[i : i + k] = [b.decode() for b in batch_ids]
        i += k
    return images[:i], labels[:i], ids[:i]
