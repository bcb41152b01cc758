"""Tests of `eyegazer_keras.interop`: Hugging Face / PEFT both ways."""
