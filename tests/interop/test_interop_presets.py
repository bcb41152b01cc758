"""Every config's keras-hub preset exists and is the ViT flavour its docstring claims."""

import re

import keras_hub
import pytest

from eyegazer_keras.configs import settings as configs
from eyegazer_keras.models import hf_vit

PRESETS = keras_hub.models.ViTBackbone.presets
DINOV2_PRESETS = keras_hub.models.DINOV2Backbone.presets
PRESET_CONFIGS = [
    name
    for name, factory in configs.CONFIGS.items()
    if getattr(factory(), "backbone", None) not in (None, "config")  # None: a random ViT
    and not str(factory().backbone).startswith("dinov2")
]
DINOV2_CONFIGS = [
    name
    for name, factory in configs.CONFIGS.items()
    if str(getattr(factory(), "backbone", None)).startswith("dinov2")
]


@pytest.mark.parametrize("name", DINOV2_CONFIGS)
def test_dinov2_config_preset_exists_and_its_docstring_says_dinov2(name):
    backbone = configs.get_config(name).backbone
    assert backbone in DINOV2_PRESETS, f"{name}: {backbone} is not a keras-hub DINOv2 preset"
    assert "DINOv2" in configs.CONFIGS[name].__doc__.splitlines()[0]


def test_some_configs_use_presets():
    assert {"blog-run1", "blog-run2", "blog-run3"} <= set(PRESET_CONFIGS)


@pytest.mark.parametrize("name", PRESET_CONFIGS)
def test_config_preset_exists_and_matches_its_docstring(name):
    backbone = configs.get_config(name).backbone
    assert backbone in PRESETS, f"{name}: {backbone} is not a keras-hub ViT preset"
    summary = configs.CONFIGS[name].__doc__.splitlines()[0]
    size = re.search(r"ViT-(Base|Large|Huge)", summary)
    assert size, f"{name}: docstring names no ViT size: {summary!r}"
    description = PRESETS[backbone]["metadata"]["description"]
    assert description.startswith(f"ViT-{size.group(1)[0]}"), (name, description)
    in21k = "in21k" in summary
    assert ("ImageNet 21k" in description) == in21k, (name, summary, description)
    assert backbone.endswith("_imagenet21k") == in21k, (name, backbone)


def test_the_write_up_runs_start_from_in21k_backbones():
    for name in ("blog-run1", "blog-run2", "blog-run3"):
        assert configs.get_config(name).backbone.endswith("_imagenet21k"), name
    assert hf_vit.hf_origin(configs.get_config("blog-run3").backbone) == (
        "google/vit-large-patch16-224-in21k"
    )


def test_every_vit_and_dinov2_preset_has_its_hf_origin():
    assert set(hf_vit.HF_ORIGINS) == set(PRESETS) | set(DINOV2_PRESETS)
    for preset, origin in hf_vit.HF_ORIGINS.items():
        if preset in DINOV2_PRESETS:
            # keras-hub's tools/checkpoint_conversion/convert_dinov2_checkpoints.py PRESET_MAP
            size = preset.rsplit("_", 1)[-1]
            registers = "with-registers-" if "with_registers" in preset else ""
            assert origin == f"facebook/dinov2-{registers}{size}", preset
            handle = DINOV2_PRESETS[preset]["kaggle_handle"]
        else:
            assert origin.endswith("-in21k") == preset.endswith("_imagenet21k"), preset
            handle = PRESETS[preset]["kaggle_handle"]
        assert hf_vit.hf_origin(handle) == origin, handle
