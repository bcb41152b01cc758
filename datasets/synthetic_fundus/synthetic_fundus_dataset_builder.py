"""synthetic_fundus: the embedded default dataset, generated on the spot (no download).

Fundus-like photos (orange-red disc on black, vessels, optic disc, darker macula; full circle, cut
circle and borderless framings; varied size, brightness and colour cast) whose lesions follow the
international DR scale, with APTOS 2019 grade frequencies. Features and splits match `aptos2019`:
`image`, `id_code`, `label` (5 named classes; -1 on the unlabeled `test` split), `train` /
`validation` / `test`. Deterministic from the config's seed.

Since 1.1.0 every example also carries `lesion_mask`: `uint8 [S, S, 1]`, the fraction (0..255)
of each stored pixel covered by a lesion the generator drew, in the stored image's frame (the
photo's crop box, padded to a square and resized exactly as the image). Explanation maps are
scored against it (`eyegazer_keras.evaluation.explain`). 1.1.0 images are bit-identical to 1.0.0; 1.2.0
changes the crop (a circle fitted to the disc) and adds Graham's 90 % clip to Ben Graham.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from eyegazer_keras import GRADE_NAMES, fundus

try:  # Package import (wheel / editable install) or TFDS import by path (`tfds build <folder>`).
    from eyegazer_datasets.synthetic_fundus import generator
except ImportError:  # pragma: no cover - exercised by `tfds build datasets/synthetic_fundus`
    import importlib.util

    _spec = importlib.util.spec_from_file_location(
        "synthetic_fundus_generator", os.path.join(os.path.dirname(__file__), "generator.py")
    )
    generator = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(generator)


@dataclasses.dataclass
class SyntheticFundusConfig(tfds.core.BuilderConfig):
    """What changes the bytes on disk: stored resolution, Ben Graham, counts and seed."""

    image_size: int = 128
    ben_graham: bool = False
    num_train: int = 2000
    num_validation: int = 400
    num_test: int = 200
    seed: int = 2019
    photo_size: int = 320


LESION_MASK_DOC = (
    "Fraction (0..255) of each stored pixel covered by a drawn lesion, in the stored image's "
    "frame; 0 everywhere for grade 0."
)


def stored_frame(array: tf.Tensor, photo: tf.Tensor, size: int) -> tf.Tensor:
    """Maps an `uint8 [H, W, C]` array in the photo's frame to the stored image's frame.

    Crops `array` with the photo's fundus box (`fundus.fundus_bbox`, padded with zeros where the
    box leaves the frame), pads it to a square and resizes it (antialiased bilinear) to `size`:
    the geometry of `fundus.preprocess_fundus` without its colour steps (and without blanking
    outside the fitted disc, where the generator draws no lesion), so for a generated photo
    `stored_frame(photo, photo, size) == preprocess_fundus(photo, size)`.

    Args:
        array: `uint8 [H, W, C]`, e.g. a lesion mask scaled to 0/255.
        photo: `uint8 [H, W, 3]`. the photo whose crop box is used.
        size: int. stored side in pixels.

    Returns:
        `uint8 [size, size, C]`.
    """
    return fundus.crop_like(array, photo, size)


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for synthetic_fundus."""

    VERSION = tfds.core.Version("1.2.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "1.1.0": "Adds the `lesion_mask` feature; images unchanged.",
        "1.2.0": "Crop by a circle fitted to the disc (cut discs stay centred, pixels outside "
        "the disc black); Ben Graham clipped to 90 % of the radius (Graham 2015).",
    }
    BUILDER_CONFIGS = [
        SyntheticFundusConfig(name="default", description="2,600 photos stored at 128 px."),
        SyntheticFundusConfig(
            name="ben_graham", description="As default, Ben Graham normalised.", ben_graham=True
        ),
        SyntheticFundusConfig(
            name="tiny",
            description="120 photos at 64 px, for tests.",
            image_size=64,
            num_train=80,
            num_validation=24,
            num_test=16,
            photo_size=160,
        ),
    ]
    DEFAULT_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                    "lesion_mask": tfds.features.Image(
                        shape=(size, size, 1), encoding_format="png", doc=LESION_MASK_DOC
                    ),
                    "id_code": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=list(GRADE_NAMES)),
                    "framing": tfds.features.ClassLabel(names=list(generator.FRAMINGS)),
                    "original_height": tf.int32,
                    "original_width": tf.int32,
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/eyegazer/eyegazer-keras",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        cfg = self.builder_config
        return {
            "train": self._generate_examples("train", cfg.num_train),
            "validation": self._generate_examples("validation", cfg.num_validation),
            "test": self._generate_examples("test", cfg.num_test),
        }

    def _generate_examples(self, split: str, count: int):
        cfg = self.builder_config
        split_offset = {"train": 0, "validation": 1, "test": 2}[split]
        preprocess = tf.function(
            lambda image: fundus.preprocess_fundus(image, cfg.image_size, cfg.ben_graham),
            input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)],
        )
        mask_frame = tf.function(
            lambda mask, photo: stored_frame(mask, photo, cfg.image_size),
            input_signature=[
                tf.TensorSpec([None, None, 1], tf.uint8),
                tf.TensorSpec([None, None, 3], tf.uint8),
            ],
        )

        def make(index: int):
            seed = np.random.SeedSequence([cfg.seed, split_offset, index])
            rng = np.random.default_rng(seed)
            grade = generator.sample_grade(rng)
            photo, framing, lesions = generator.render_with_mask(
                int(rng.integers(2**31)), grade, cfg.photo_size
            )
            stored = preprocess(tf.constant(photo)).numpy()
            mask = tf.constant(lesions[..., None].astype(np.uint8) * 255)
            stored_mask = mask_frame(mask, tf.constant(photo)).numpy()
            id_code = f"syn{split_offset}{index:06d}"
            return id_code, {
                "image": stored,
                "lesion_mask": stored_mask,
                "id_code": id_code,
                "label": -1 if split == "test" else grade,
                "framing": framing,
                "original_height": photo.shape[0],
                "original_width": photo.shape[1],
            }

        workers = os.cpu_count()
        if not isinstance(workers, int):  # tfds.testing mocks parts of `os`
            workers = 2
        with ThreadPoolExecutor(max_workers=workers) as pool:
            yield from pool.map(make, range(count))
