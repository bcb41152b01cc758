"""A `.keras` file loaded without `eyegazer_keras` imported (issue 23 item 13).

Keras looks custom objects up by their registered name (`eyegazer_keras>FundusImageClassifier`) and
imports a layer's module by itself only for Keras's own packages, so the file cannot load
until `eyegazer_keras.models` is imported (it registers every custom layer); the message comes from Keras and cannot be changed from
here. What it must do, and does: name the missing layer and the `eyegazer_keras` module it
lives in. docs/serving.md says to `import eyegazer_keras.models` first.
"""

from __future__ import annotations

import subprocess
import sys

import keras

from eyegazer_keras.models import vit_lora
from tests.test_case import TINY_VIT

LOAD = "import keras; keras.models.load_model({path!r}); print('loaded')"


def test_loading_without_the_package_names_it_and_loading_with_it_works(tmp_path):
    keras.utils.set_random_seed(0)
    model = vit_lora.build_vit_classifier(
        "config", num_classes=5, image_size=32, backbone_config=TINY_VIT, lora_rank=2
    )
    path = str(tmp_path / "m.keras")
    model.save(path)
    code = LOAD.format(path=path)
    without = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert without.returncode != 0 and "loaded" not in without.stdout
    error = without.stderr
    # The task (a keras-hub ImageClassifier subclass) is the file's top object.
    assert "Could not locate class 'FundusImageClassifier'" in error, error[-3000:]
    assert "'module': 'eyegazer_keras." in error, error[-3000:]
    with_package = subprocess.run(
        [sys.executable, "-c", "import eyegazer_keras.models; " + code],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert with_package.returncode == 0 and "loaded" in with_package.stdout, with_package.stderr[
        -3000:
    ]
