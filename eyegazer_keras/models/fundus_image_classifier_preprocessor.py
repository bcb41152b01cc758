"""`FundusImageClassifierPreprocessor`: the keras-hub preprocessor of `FundusImageClassifier`.

It holds a `FundusImageConverter` (which carries the run's `fundus.PreprocessingSpec`) and, as
every keras-hub ``ImageClassifierPreprocessor``, maps ``x``, ``(x, y)`` or ``(x, y,
sample_weight)``: images through the converter, labels and weights unchanged. The task applies
it in ``fit``, ``evaluate`` and ``predict``.

Example:

```python
import numpy as np
from eyegazer_keras import fundus
from eyegazer_keras.models.fundus_image_classifier_preprocessor import (
    FundusImageClassifierPreprocessor,
)
from eyegazer_keras.models.fundus_image_converter import FundusImageConverter

spec = fundus.PreprocessingSpec(stored_size=64)
preprocessor = FundusImageClassifierPreprocessor(FundusImageConverter(32, spec=spec))
x, y = preprocessor(np.zeros((2, 64, 64, 3), "uint8"), np.array([0, 3]))  # x: [2, 32, 32, 3]
```
"""

from __future__ import annotations

import keras_hub

from eyegazer_keras.models.fundus_image_converter import FundusImageConverter
from eyegazer_keras.models.vit_layers import serializable

__all__ = ["FundusImageClassifierPreprocessor"]


@serializable
class FundusImageClassifierPreprocessor(keras_hub.models.ImageClassifierPreprocessor):
    """Stored fundus images (and labels) -> model input (and labels).

    Args:
        image_converter: `FundusImageConverter` or None. None passes images through.
        **kwargs: passed to `keras_hub.models.ImageClassifierPreprocessor`.
    """

    backbone_cls = None  # see FundusImageConverter.backbone_cls
    image_converter_cls = FundusImageConverter

    @property
    def spec(self):
        """The converter's `fundus.PreprocessingSpec` (None without converter or spec)."""
        return getattr(self.image_converter, "spec", None)
