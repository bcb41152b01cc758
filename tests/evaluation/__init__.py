"""Tests of `eyegazer_keras.evaluation`: metrics, calibration, cut-offs, reports, explanation maps."""
