"""Tests of `eyegazer_keras.serving`: export, signatures, predict, serve, app."""
