"""Tests of `eyegazer_keras.cli`: the CLI contract and its TFDS commands."""
