"""`PreprocessingSpec` and the one stored image -> model input step (`eyegazer_keras.fundus`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import tensorflow as tf

from eyegazer_keras.fundus.crop import ben_graham, preprocess_fundus, resize_uint8
from eyegazer_keras.fundus.decode import decode_image

CROPS = ("fundus", "none")


@dataclasses.dataclass(frozen=True)
class PreprocessingSpec:
    """How a photo becomes model input; stored with every run and every export.

    Args:
        stored_size: int. Side in pixels of the image the dataset builder stored (the
            builder config's resolution); the photo is cropped and resized to it first.
        ben_graham: bool. Ben Graham normalisation (with the 90 % clip) at the stored size.
            Defaults to False.
        crop: str. `"fundus"`: crop the fitted disc, pad to a square (`preprocess_fundus`);
            `"none"`: plain resize of the whole photo to a square (Hugging Face
            `ViTImageProcessor`). Defaults to `"fundus"`.
        mean: tuple of 3 floats or None. Per-channel mean on the 0..1 scale; with `std`, the
            model input is `(x / 255 - mean) / std`. None (the default): the model normalises
            inside and takes float32 0..255.
        std: tuple of 3 floats or None. Per-channel std on the 0..1 scale, with `mean`.

    Raises:
        ValueError: for a stored size under 1, an unknown crop, or only one of mean/std.
    """

    stored_size: int
    ben_graham: bool = False
    crop: str = "fundus"
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __post_init__(self):
        if int(self.stored_size) < 1:
            raise ValueError(f"stored_size must be a positive int, got {self.stored_size!r}.")
        object.__setattr__(self, "stored_size", int(self.stored_size))
        object.__setattr__(self, "ben_graham", bool(self.ben_graham))
        if self.crop not in CROPS:
            raise ValueError(f"crop={self.crop!r} is not one of {CROPS}.")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std (0..1 scale), or neither (model-inside).")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                value = tuple(float(v) for v in value)
                if len(value) != 3:
                    raise ValueError(f"{name} needs 3 per-channel values, got {value}.")
                if name == "std" and min(value) <= 0:
                    raise ValueError(f"std values must be > 0, got {value}.")
                object.__setattr__(self, name, value)

    @property
    def normalization(self) -> str:
        """`"inside_model"` (float32 0..255 in) or `"mean_std"` (see `mean`, `std`)."""
        return "inside_model" if self.mean is None else "mean_std"

    def to_dict(self) -> dict:
        """JSON-ready dict; `PreprocessingSpec.from_dict` reads it back."""
        return {
            "stored_size": self.stored_size,
            "ben_graham": self.ben_graham,
            "crop": self.crop,
            "normalization": self.normalization,
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> PreprocessingSpec:
        """Reads `to_dict` output.

        Raises:
            ValueError: for unknown keys or a `normalization` that contradicts mean/std.
        """
        d = dict(d)
        normalization = d.pop("normalization", None)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(
                f"unknown preprocessing keys {sorted(unknown)}; expected {sorted(fields)}."
            )
        spec = cls(**d)
        if normalization is not None and normalization != spec.normalization:
            raise ValueError(
                f"normalization={normalization!r} contradicts mean/std ({spec.normalization})."
            )
        return spec

    def describe(self, image_size: int) -> str:
        """One line naming every step, for metadata and model cards."""
        if self.crop == "fundus":
            steps = [
                "decode JPEG/PNG with EXIF orientation",
                "quality gate (fundus.assess_quality)",
                f"crop the fitted disc, pad to square, antialiased resize to {self.stored_size}",
            ]
        else:
            steps = [
                "decode JPEG/PNG with EXIF orientation",
                "quality gate (fundus.assess_quality)",
                f"antialiased resize of the whole photo to {self.stored_size}",
            ]
        if self.ben_graham:
            steps.append("Ben Graham with the 90% clip")
        steps.append(f"resize to {int(image_size)} (fundus.to_model_input)")
        if self.mean is None:
            steps.append("model (normalisation inside, input float32 0..255)")
        else:
            steps.append(f"(x/255 - mean {list(self.mean)}) / std {list(self.std)} -> model")
        return " -> ".join(steps)


def preprocess_photo(image: tf.Tensor, spec: PreprocessingSpec) -> tf.Tensor:
    """A decoded photo -> the stored image of `spec` (what the builders write).

    Args:
        image: `uint8 [H, W, 3]`.
        spec: `PreprocessingSpec`.

    Returns:
        `uint8 [spec.stored_size, spec.stored_size, 3]`.
    """
    if spec.crop == "fundus":
        return preprocess_fundus(image, spec.stored_size, spec.ben_graham)
    out = resize_uint8(tf.convert_to_tensor(image), spec.stored_size)
    if spec.ben_graham:
        out = ben_graham(out)
    out.set_shape([spec.stored_size, spec.stored_size, 3])
    return out


def to_model_input(
    stored: tf.Tensor, image_size: int, spec: PreprocessingSpec | None = None
) -> tf.Tensor:
    """A stored image (or batch) -> model input: the one "stored -> model" step.

    Resizes (antialiased bilinear, rounded to whole 0..255 values, so a uint8 cache of the
    result is exact) unless the stored side already equals `image_size`, then normalises as the
    spec says (nothing when the model normalises inside, the default).

    Args:
        stored: `uint8 [S, S, 3]` or `[B, S, S, 3]`.
        image_size: int. Model input side.
        spec: `PreprocessingSpec` or None. Only its normalisation is used here. Defaults to
            None (normalisation inside the model).

    Returns:
        `float32 [..., image_size, image_size, 3]`: 0..255, or `(x / 255 - mean) / std`.
    """
    stored = tf.convert_to_tensor(stored)
    static = stored.shape[-3:-1]
    if static[0] == image_size and static[1] == image_size:
        out = tf.cast(stored, tf.float32)
    else:
        resized = tf.image.resize(
            tf.cast(stored, tf.float32), [image_size, image_size], method="bilinear", antialias=True
        )
        out = tf.round(tf.clip_by_value(resized, 0.0, 255.0))
    if spec is not None and spec.mean is not None:
        mean = tf.constant(spec.mean, tf.float32)
        std = tf.constant(spec.std, tf.float32)
        out = (out / 255.0 - mean) / std
    return out


def photo_to_model_input(image: tf.Tensor, image_size: int, spec: PreprocessingSpec) -> tf.Tensor:
    """A decoded photo -> model input: `preprocess_photo` then `to_model_input`.

    Exactly the builder (stored image) + training path, so serving matches training.

    Args:
        image: `uint8 [H, W, 3]` decoded, upright photo (see `decode_image`).
        image_size: int. Model input side.
        spec: `PreprocessingSpec`.

    Returns:
        `float32 [image_size, image_size, 3]`.
    """
    return to_model_input(preprocess_photo(image, spec), image_size, spec)


def serving_transform(
    image_bytes: tf.Tensor, source_size: int, image_size: int, use_ben_graham: bool = False
) -> tf.Tensor:
    """Raw bytes to model input, identical to build (`preprocess_fundus`) + training path.

    Args:
        image_bytes: scalar `tf.string`, JPEG or PNG of any size.
        source_size: int. The size the dataset builder stored (its config's resolution).
        image_size: int. The model input size.
        use_ben_graham: bool. Whether the dataset config applied Ben Graham.

    Returns:
        `float32 [image_size, image_size, 3]` in 0..255.

    Raises:
        tf.errors.InvalidArgumentError: for bytes that are not a readable image.
    """
    spec = PreprocessingSpec(stored_size=source_size, ben_graham=use_ben_graham)
    return photo_to_model_input(decode_image(image_bytes), image_size, spec)
