"""Tests of `eyegazer_keras.runs`: run-folder workflows: search, explain."""
