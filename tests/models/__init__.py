"""Tests of `eyegazer_keras.models`: backbones, the keras-hub task, LoRA layers, the AutoKeras regressor."""
