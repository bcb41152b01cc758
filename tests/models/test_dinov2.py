"""DINOv2 backbones in the classifier: sources, patch-14 sizes, LoRA counts, saving, export.

Tiny random DINOv2s only (no network): a Hugging Face ``Dinov2Model`` directory written here
(``config.json`` + ``model.safetensors``, as ``benchmarks/offline_dinov2.py`` writes one) and a
keras-hub ``save_to_preset`` directory with register tokens.
"""

from __future__ import annotations

import json

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from safetensors.numpy import save_file

from eyegazer_keras import fundus
from eyegazer_keras.models import dinov2_backbone, vit_backbone
from eyegazer_keras.models.vit_lora import (
    build_info,
    build_vit_classifier,
    count_parameters,
    lora_parameter_count,
)
from tests.test_case import export_tiny

HIDDEN, HEADS, LAYERS, MLP, PATCH = 24, 2, 2, 48, 14
GRID_SIZE = 42  # the checkpoint's position table: 3x3 patches
SIZE = 28  # the classifier's input: 2x2 patches, position table interpolated
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def _hf_state(rng) -> dict:
    """Random weights under HF ``Dinov2Model`` names."""

    def w(*shape, scale=0.2):
        return rng.normal(0, scale, shape).astype("float32")

    state = {
        "embeddings.cls_token": w(1, 1, HIDDEN),
        "embeddings.mask_token": np.zeros((1, HIDDEN), "float32"),
        "embeddings.position_embeddings": w(1, (GRID_SIZE // PATCH) ** 2 + 1, HIDDEN),
        "embeddings.patch_embeddings.projection.weight": w(HIDDEN, 3, PATCH, PATCH, scale=0.02),
        "embeddings.patch_embeddings.projection.bias": w(HIDDEN),
        "layernorm.weight": 1 + w(HIDDEN),
        "layernorm.bias": w(HIDDEN),
    }
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            state[f"{p}attention.attention.{name}.weight"] = w(HIDDEN, HIDDEN)
            state[f"{p}attention.attention.{name}.bias"] = w(HIDDEN)
        state[f"{p}attention.output.dense.weight"] = w(HIDDEN, HIDDEN)
        state[f"{p}attention.output.dense.bias"] = w(HIDDEN)
        for norm in ("norm1", "norm2"):
            state[f"{p}{norm}.weight"] = 1 + w(HIDDEN)
            state[f"{p}{norm}.bias"] = w(HIDDEN)
        state[f"{p}layer_scale1.lambda1"] = 1 + w(HIDDEN)
        state[f"{p}layer_scale2.lambda1"] = 1 + w(HIDDEN)
        state[f"{p}mlp.fc1.weight"] = w(MLP, HIDDEN)
        state[f"{p}mlp.fc1.bias"] = w(MLP)
        state[f"{p}mlp.fc2.weight"] = w(HIDDEN, MLP)
        state[f"{p}mlp.fc2.bias"] = w(HIDDEN)
    return state


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf-dinov2")
    config = {
        "architectures": ["Dinov2Model"],
        "model_type": "dinov2",
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "mlp_ratio": MLP / HIDDEN,
        "patch_size": PATCH,
        "image_size": GRID_SIZE,
        "layerscale_value": 1.0,
        "layer_norm_eps": 1e-6,
        "hidden_act": "gelu",
        "use_swiglu_ffn": False,
        "hidden_dropout_prob": 0.0,
        "drop_path_rate": 0.0,
    }
    (folder / "config.json").write_text(json.dumps(config))
    save_file(_hf_state(np.random.default_rng(0)), str(folder / "model.safetensors"))
    return str(folder)


@pytest.fixture(scope="module")
def registers_dir(tmp_path_factory):
    """A keras-hub preset directory of a DINOv2 with 2 register tokens."""
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.DINOV2Backbone(
        patch_size=PATCH,
        num_layers=LAYERS,
        hidden_dim=HIDDEN,
        num_heads=HEADS,
        intermediate_dim=MLP,
        num_register_tokens=2,
        image_shape=(GRID_SIZE, GRID_SIZE, 3),
        position_embedding_shape=(GRID_SIZE, GRID_SIZE, 3),
    )
    folder = tmp_path_factory.mktemp("keras-dinov2") / "preset"
    backbone.save_to_preset(str(folder))
    return str(folder)


def _images(n=2, size=SIZE, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def _randomize_lora_b(model, seed=1):
    rng = np.random.default_rng(seed)
    changed = 0
    for v in model.trainable_weights:
        if v.path.endswith("lora_kernel_b"):
            v.assign(rng.normal(0, 0.5, v.shape).astype("float32"))
            changed += 1
    assert changed


def test_sources_are_recognised(hf_dir, registers_dir, tmp_path):
    assert dinov2_backbone.is_dinov2(hf_dir)
    assert dinov2_backbone.is_dinov2(registers_dir)
    assert dinov2_backbone.is_dinov2("dinov2_small")  # a keras-hub preset name (no download)
    assert dinov2_backbone.is_dinov2("dinov2_with_registers_base")
    for other in (None, "config", "vit_base_patch16_224_imagenet21k", str(tmp_path)):
        assert not dinov2_backbone.is_dinov2(other)
    vit_dir = tmp_path / "vit"
    vit_dir.mkdir()
    (vit_dir / "config.json").write_text(json.dumps({"model_type": "vit"}))
    assert not dinov2_backbone.is_dinov2(str(vit_dir))


def test_hf_dir_loads_the_checkpoint_and_imagenet_normalisation(hf_dir):
    """The table is interpolated 3x3 -> 2x2; weights are the checkpoint's; ImageNet stats."""
    backbone, source, norm = vit_backbone.load_backbone(hf_dir, None, SIZE, None)
    assert isinstance(backbone, keras_hub.models.DINOV2Backbone)
    assert backbone.image_shape[:2] == (SIZE, SIZE)
    assert source == {"type": "hf_checkpoint", "preset": hf_dir, "architecture": "dinov2"}
    assert norm == dinov2_backbone.IMAGENET_NORMALIZATION
    state = _hf_state(np.random.default_rng(0))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(backbone.embeddings.position_embeddings),
        state["embeddings.position_embeddings"],
    )
    assert tuple(backbone.embeddings.interpolated_position_embeddings.shape) == (1, 5, HIDDEN)
    model = build_vit_classifier(hf_dir, num_classes=5, image_size=SIZE)
    scale, offset = (build_info(model)["normalization"][k] for k in ("scale", "offset"))
    np.testing.assert_allclose(scale, 1 / (255 * IMAGENET_STD))
    np.testing.assert_allclose(offset, -IMAGENET_MEAN / IMAGENET_STD)
    assert build_info(model)["backbone"]["architecture"] == "dinov2"


def test_image_size_must_be_a_multiple_of_14(hf_dir):
    with pytest.raises(ValueError, match="multiple of the DINOv2 patch size 14: use e.g. 28 or 42"):
        build_vit_classifier(hf_dir, num_classes=5, image_size=32)


@pytest.mark.parametrize("layout", ["peft", "keras"])
def test_lora_trainable_counts(hf_dir, layout):
    model = build_vit_classifier(
        hf_dir, num_classes=5, image_size=SIZE, lora_rank=4, lora_layout=layout
    )
    head = HIDDEN * 5 + 5
    lora = lora_parameter_count(num_layers=LAYERS, hidden_dim=HIDDEN, num_heads=HEADS, rank=4)
    assert count_parameters(model)["trainable"] == lora[layout] + head
    paths = {v.path.rsplit("/", 2)[-2] for v in model.trainable_weights if "lora" in v.path}
    assert paths == {"query", "value"}
    # Nothing else in the backbone trains: not the q/v biases, nor the position table.
    backbone = model.get_layer("backbone")
    assert all(not v.trainable for v in backbone.weights if "lora" not in v.path)


def test_lora_targets_and_full_fine_tuning(hf_dir):
    model = build_vit_classifier(
        hf_dir, num_classes=2, image_size=SIZE, lora_rank=2, lora_targets=("query", "fc1")
    )
    names = {v.path.rsplit("/", 2)[-2] for v in model.trainable_weights if "lora" in v.path}
    assert names == {"query", "fc1"}
    with pytest.raises(ValueError, match=r"lora_targets \['nope'\] match no"):
        build_vit_classifier(hf_dir, num_classes=2, image_size=SIZE, lora_targets=("nope",))
    full = build_vit_classifier(hf_dir, num_classes=2, image_size=SIZE, lora_rank=0)
    # Everything trains but the two position tables: pretrained 3x3 and interpolated 2x2.
    tables = ((GRID_SIZE // PATCH) ** 2 + 1 + (SIZE // PATCH) ** 2 + 1) * HIDDEN
    assert count_parameters(full)["trainable"] == count_parameters(full)["total"] - tables


def test_full_fine_tuning_survives_the_keras_file(hf_dir, tmp_path):
    """Every trainable variable moved: the reloaded model is the trained one."""
    model = build_vit_classifier(hf_dir, num_classes=5, image_size=SIZE, lora_rank=0)
    rng = np.random.default_rng(2)
    for v in model.trainable_weights:
        v.assign(v.value + rng.normal(0, 0.05, v.shape).astype("float32"))
    model.save(tmp_path / "full.keras")
    loaded = keras.models.load_model(tmp_path / "full.keras")
    x = _images()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-5
    )


def test_registers_are_prefix_tokens_for_gap_pooling(registers_dir):
    model = build_vit_classifier(registers_dir, num_classes=5, image_size=SIZE, pooling="gap")
    assert model.get_layer("pooling").num_prefix_tokens == 3  # class + 2 registers
    backbone = model.get_layer("backbone")
    tokens = backbone({"images": model.get_layer("normalization")(_images())})
    expected = keras.ops.mean(tokens[:, 3:, :], axis=1)
    features = keras.Model(model.input, model.get_layer("pooling").output)(_images())
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(features), keras.ops.convert_to_numpy(expected), atol=1e-6
    )


def test_resize_keeps_the_pretrained_table(hf_dir):
    small, _, _ = vit_backbone.load_backbone(hf_dir, None, SIZE, None)
    direct, _, _ = vit_backbone.load_backbone(hf_dir, None, GRID_SIZE, None)
    resized = vit_backbone.resize_backbone(small, GRID_SIZE)
    x = {"images": _images(size=GRID_SIZE)}
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(resized(x)),
        keras.ops.convert_to_numpy(direct(x)),
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="multiple of the DINOv2 patch size"):
        vit_backbone.resize_backbone(small, 50)


def test_keras_file_round_trip(hf_dir, tmp_path):
    model = build_vit_classifier(hf_dir, num_classes=5, image_size=SIZE, lora_rank=2)
    _randomize_lora_b(model)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    x = _images()
    before = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), before, atol=1e-5)
    # The round trip is not vacuous: LoRA moved the output away from the base model's.
    base = build_vit_classifier(hf_dir, num_classes=5, image_size=SIZE, lora_rank=2)
    base.get_layer("predictions").set_weights(model.get_layer("predictions").get_weights())
    assert np.abs(keras.ops.convert_to_numpy(base(x)) - before).max() > 1e-3


def test_export_bytes_endpoint_matches_the_model(hf_dir, tmp_path):
    model = build_vit_classifier(hf_dir, num_classes=5, image_size=SIZE, lora_rank=2)
    _randomize_lora_b(model)
    path = export_tiny(model, tmp_path / "export", image_size=SIZE)
    loaded = tf.saved_model.load(path)
    from tests.serving.test_export import encode, synthetic_fundus

    blob = encode(synthetic_fundus(seed=3), "PNG")
    served = loaded.signatures["serving_default"](image_bytes=tf.constant([blob]))
    stored = fundus.preprocess_fundus(fundus.decode_image(blob), 64)
    expected = model(fundus.to_model_input(stored, SIZE)[tf.newaxis]).numpy()[0]
    assert np.abs(served["probabilities"].numpy()[0] - expected).max() <= 1e-5


def test_dinov2_lora_recipe(tmp_path, capsys):
    from eyegazer_keras import cli, configs

    full = configs.get_config("dinov2-lora")
    assert (full.backbone, full.image_size % 14, full.lora_targets) == (
        "dinov2_small",
        0,
        ("query", "value"),
    )
    assert dinov2_backbone.is_dinov2(full.backbone)
    configs.validate(configs.get_config("dinov2-lora:runlocal"))
    argv = ["train", "--config", "dinov2-lora", "--workdir", str(tmp_path / "w")]
    assert cli.main([*argv, "--data-dir", str(tmp_path)]) == 2
    assert "eyegazer prepare eyepacs2015 --manual-dir" in capsys.readouterr().err


def test_explain_maps_follow_the_dinov2_attention(registers_dir):
    """The block-by-block pass used by the maps reproduces the model; maps are [0, 1]."""
    from eyegazer_keras.evaluation import explain

    model = build_vit_classifier(registers_dir, num_classes=5, image_size=SIZE, lora_rank=2)
    _randomize_lora_b(model)
    x = _images()
    logits, prefix, attentions = explain._vit_forward(model, tf.constant(x))
    assert prefix == 3 and len(attentions) == LAYERS
    assert tuple(attentions[0].shape) == (2, HEADS, 3 + 4, 3 + 4)
    np.testing.assert_allclose(
        tf.nn.softmax(logits).numpy(), keras.ops.convert_to_numpy(model(x)), atol=1e-5
    )
    assert explain.patch_grid(model) == SIZE // PATCH
    for method in (explain.attention_rollout, explain.gradient_rollout):
        maps = method(model, x).numpy()
        assert maps.shape == (2, SIZE, SIZE) and maps.min() >= 0 and maps.max() <= 1


def test_adapter_round_trip_and_mirrored_strategy_bf16(hf_dir, tmp_path):
    """save_adapter/load_adapter restore LoRA + head exactly; the build works in a strategy
    scope and under mixed bfloat16 (outputs stay float32)."""
    from eyegazer_keras.models.vit_lora import load_adapter, save_adapter

    model = build_vit_classifier(hf_dir, num_classes=5, image_size=SIZE, lora_rank=2)
    _randomize_lora_b(model)
    save_adapter(model, tmp_path / "adapter.npz")
    fresh = build_vit_classifier(hf_dir, num_classes=5, image_size=SIZE, lora_rank=2)
    load_adapter(fresh, tmp_path / "adapter.npz")
    x = _images()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(fresh(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-6
    )
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        mixed = build_vit_classifier(
            hf_dir, num_classes=2, image_size=SIZE, lora_rank=2, dtype="mixed_bfloat16"
        )
        mixed.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    history = mixed.fit(_images(4), np.array([0, 1, 0, 1]), batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert keras.backend.standardize_dtype(mixed(x).dtype) == "float32"
