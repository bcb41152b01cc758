"""The models: ViT backbones, the LoRA classifier, the AutoKeras regressor, custom layers.

Importing this package registers every custom Keras layer of eyegazer_keras
and the task (`FundusImageClassifier`, its preprocessor and image converter;
`keras.saving.register_keras_serializable(package="eyegazer_keras")`), so a saved `.keras` file
loads after `import eyegazer_keras.models`. Without it, `keras.models.load_model` fails with
Keras's own "Could not locate class ..." message, whose config names the layer's
`eyegazer_keras.models...` module (issue 23).
"""

from eyegazer_keras.models import (  # noqa: F401 (importing registers them)
    fast_layers,
    fundus_image_classifier,
    fundus_image_classifier_preprocessor,
    fundus_image_converter,
    vit_layers,
    wrappers,
)
