"""The models: ViT backbones, the LoRA classifier, the AutoKeras regressor, custom layers.

Importing this package registers every custom Keras layer of eyegazer_keras
(`keras.saving.register_keras_serializable(package="eyegazer")`), so a saved `.keras` file
loads after `import eyegazer_keras.models`. Without it, `keras.models.load_model` fails with
Keras's own "Could not locate class ..." message, whose config names the layer's
`eyegazer_keras.models...` module (issue 23).
"""

from eyegazer_keras.models import fast_layers, vit_layers, wrappers  # noqa: F401 (registers)
