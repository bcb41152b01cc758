"""Fundus photos as TensorFlow ops: the one copy used by builders, training and serving.

Every path that turns a photo into model input goes through this module:

* `decode_image`: JPEG/PNG/GIF/BMP/WebP bytes -> upright RGB `uint8`, honouring the EXIF
  orientation tag (JPEG APP1 `Exif`, PNG `eXIf`), parsed with string ops so a SavedModel
  (and TF Serving, which has no Python) applies it too; it first refuses a header claiming
  more than `MAX_PIXELS` (`check_pixel_limit`, `image_header_size`: the one pixel limit), and
  composites transparency onto black; a JPEG much larger than needed can be decoded at 1/2,
  1/4 or 1/8 scale in the DCT domain (`ratio`, chosen by `jpeg_ratio`);
* `assess_quality`: the gradable / ungradable gate, with a reason (see `REASONS`) and a
  `quality_score` in [0, 1] fitted to human graders' labels;
* `fundus_circle` / `fundus_bbox` / `crop_fundus`: the crop that finds the disc (a circle fitted
  to its rim), not the box of everything bright;
* `preprocess_fundus`: crop -> square -> resize to the stored size -> optional Ben Graham. The
  TFDS builders store its output once; serving recomputes it from bytes;
* `to_model_input`: stored image -> model input (the one "stored -> model" step);
* `PreprocessingSpec` + `photo_to_model_input`: the whole photo -> model input recipe of a run.

All functions work eagerly, inside `tf.data.Dataset.map` and inside a `tf.function`. The rooms:
`header` (the size a header claims, the pixel limit), `decode` (EXIF-aware decoding), `crop`
(disc fit, crop, resize, Ben Graham), `quality` (the gate), `spec` (`PreprocessingSpec`, stored
-> model input); import them all from here.

Example:

```python
import numpy as np
import tensorflow as tf
from eyegazer_keras import fundus

yy, xx = np.mgrid[0:300, 0:400]
photo = np.zeros((300, 400, 3), np.uint8)
photo[(yy - 150) ** 2 + (xx - 200) ** 2 < 140**2] = (200, 90, 40)
raw = tf.io.encode_png(photo)
image = fundus.decode_image(raw)                      # uint8 [300, 400, 3], upright
quality = fundus.assess_quality(image)                # {"gradable": False, ...}: no vessels
spec = fundus.PreprocessingSpec(stored_size=128)
x = fundus.photo_to_model_input(image, 64, spec)      # float32 [64, 64, 3] in 0..255
```
"""

from eyegazer_keras.fundus.crop import (
    BEN_GRAHAM_CLIP_FRACTION,
    BEN_GRAHAM_SIGMA_FRACTION,
    DEFAULT_MIN_FRACTION,
    DEFAULT_THRESHOLD,
    ben_graham,
    circle_mask,
    crop_fundus,
    crop_like,
    crop_to_box,
    fundus_bbox,
    fundus_circle,
    gaussian_blur,
    pad_to_square,
    preprocess_fundus,
    resize_uint8,
)
from eyegazer_keras.fundus.decode import (
    EXIF_ORIENTATION_TAG,
    JPEG_RATIOS,
    apply_orientation,
    composite_on_black,
    decode_image,
    exif_orientation,
    jpeg_ratio,
)
from eyegazer_keras.fundus.header import MAX_PIXELS, check_pixel_limit, image_header_size
from eyegazer_keras.fundus.quality import (
    DARK_MEAN_LUMA,
    DARK_PEAK,
    MAX_MEAN_LUMA,
    MAX_SATURATED_FRACTION,
    MAX_SHARPNESS,
    MEASURES,
    MIN_DETAIL_RATIO,
    MIN_FUNDUS_FRACTION,
    MIN_ILLUMINATION_CV,
    MIN_IMAGE_SIZE,
    MIN_SHARPNESS,
    QUALITY_SIZE,
    QUALITY_THRESHOLD,
    REASONS,
    SATURATED_LUMA,
    SCORE_CLIP,
    SCORE_MIN_SIZE,
    assess_quality,
    quality_measures,
    quality_score,
)
from eyegazer_keras.fundus.spec import (
    CROPS,
    PreprocessingSpec,
    photo_to_model_input,
    preprocess_photo,
    serving_transform,
    to_model_input,
)

__all__ = [
    "BEN_GRAHAM_CLIP_FRACTION",
    "BEN_GRAHAM_SIGMA_FRACTION",
    "CROPS",
    "DARK_MEAN_LUMA",
    "DARK_PEAK",
    "DEFAULT_MIN_FRACTION",
    "DEFAULT_THRESHOLD",
    "EXIF_ORIENTATION_TAG",
    "JPEG_RATIOS",
    "MAX_MEAN_LUMA",
    "MAX_PIXELS",
    "MAX_SATURATED_FRACTION",
    "MAX_SHARPNESS",
    "MEASURES",
    "MIN_DETAIL_RATIO",
    "MIN_FUNDUS_FRACTION",
    "MIN_ILLUMINATION_CV",
    "MIN_IMAGE_SIZE",
    "MIN_SHARPNESS",
    "PreprocessingSpec",
    "QUALITY_SIZE",
    "QUALITY_THRESHOLD",
    "REASONS",
    "SATURATED_LUMA",
    "SCORE_CLIP",
    "SCORE_MIN_SIZE",
    "apply_orientation",
    "assess_quality",
    "ben_graham",
    "check_pixel_limit",
    "circle_mask",
    "composite_on_black",
    "crop_fundus",
    "crop_like",
    "crop_to_box",
    "decode_image",
    "exif_orientation",
    "fundus_bbox",
    "fundus_circle",
    "gaussian_blur",
    "image_header_size",
    "jpeg_ratio",
    "pad_to_square",
    "photo_to_model_input",
    "preprocess_fundus",
    "preprocess_photo",
    "quality_measures",
    "quality_score",
    "resize_uint8",
    "serving_transform",
    "to_model_input",
]
