"""Tests of `eyegazer_keras.fundus`: the photo -> stored path: decoding, EXIF, headers, the quality gate, the crop, the spec."""
