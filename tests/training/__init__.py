"""Tests of `eyegazer_keras.training`: the trainer, tf.distribute, the runtime."""
