"""Tests of `eyegazer_keras.data`: stored -> model input: TFDS builders, Kaggle layouts, the tf.data pipeline."""
