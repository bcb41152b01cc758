"""The export's compute precision (`serving.precision`, `export_saved_model(precision=)`).

Parity of the bfloat16 export with the float32 one on generated fundus photos, through the
bytes endpoint: max |delta probability| <= 0.01 and the same predicted class on >= 99 %.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from eyegazer_keras import fundus
from eyegazer_keras.models import vit_lora
from eyegazer_keras.serving import export, precision, predict
from tests.serving.test_export import encode, synthetic_fundus

IMAGE_SIZE, SOURCE_SIZE = 32, 64
AMD_ZEN4 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
INTEL_SPR = "model name\t: Intel Xeon\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
AVX2_ONLY = "model name\t: AMD EPYC\nflags\t\t: fpu sse avx2 fma\n"


def test_resolve_from_cpu_flags():
    assert precision.cpu_bf16_flags(AMD_ZEN4) == ["avx512_bf16"]
    assert precision.cpu_bf16_flags(INTEL_SPR) == ["avx512_bf16", "amx_bf16", "amx_tile"]
    assert precision.cpu_bf16_flags(AVX2_ONLY) == []
    assert precision.cpu_bf16_flags("") == []
    assert precision.resolve("auto", AMD_ZEN4) == "bfloat16"
    assert precision.resolve("auto", INTEL_SPR) == "bfloat16"
    assert precision.resolve("auto", AVX2_ONLY) == "float32"
    assert precision.resolve("bfloat16", AVX2_ONLY) == "bfloat16"  # asked for: given
    assert precision.resolve("float32", INTEL_SPR) == "float32"
    with pytest.raises(ValueError, match="not one of"):
        precision.resolve("float16")


def lora_vit(seed: int = 0) -> keras.Model:
    """The project's classifier (fast layers, PEFT-layout LoRA) on a tiny random ViT, with a
    non-zero LoRA update (merging it would change the kernels)."""
    keras.utils.set_random_seed(seed)
    model = vit_lora.build_vit_classifier(
        None,
        backbone_config=dict(patch_size=8, num_layers=2, num_heads=2, hidden_dim=48, mlp_dim=96),
        num_classes=5,
        image_size=IMAGE_SIZE,
        lora_rank=4,
    )
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers():
        if getattr(layer, "lora_enabled", False):
            b = layer.lora_kernel_b
            b.assign(rng.normal(0, 0.05, b.shape).astype("float32"))
    return model


def photos(n: int) -> list[bytes]:
    """`n` generated fundus JPEGs: sizes, tints and brightness vary."""
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        height = int(rng.integers(90, 200))
        image = synthetic_fundus(height, height * 4 // 3, seed=i).astype(np.float32)
        image *= rng.uniform(0.6, 1.3, 3) * rng.uniform(0.7, 1.2)
        out.append(encode(np.clip(image, 0, 255).astype(np.uint8), "JPEG"))
    return out


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    model = lora_vit()
    x = tf.random.uniform([2, IMAGE_SIZE, IMAGE_SIZE, 3], 0, 255, seed=0)
    before = model(x).numpy()
    paths = {}
    for name in ("float32", "bfloat16"):
        out = tmp_path_factory.mktemp(name) / "export"
        paths[name] = export.export_saved_model(
            model,
            out,
            task="grade",
            image_size=IMAGE_SIZE,
            preprocessing=fundus.PreprocessingSpec(SOURCE_SIZE),
            precision=name,
        )
    return model, x, before, {k: predict.load_exported(v) for k, v in paths.items()}


def test_bfloat16_export_parity_with_float32(exports):
    loaded = exports[3]
    blobs = photos(120)
    outs = {k: loaded[k].predict_bytes(blobs) for k in ("float32", "bfloat16")}
    p32, p16 = outs["float32"]["probabilities"], outs["bfloat16"]["probabilities"]
    assert p16.dtype == np.float32 and p16.shape == (120, 5)
    gradable = outs["float32"]["gradable"]
    assert gradable.all() and (outs["bfloat16"]["gradable"] == gradable).all()
    classes = np.bincount(p32.argmax(1), minlength=5)
    assert (classes > 0).sum() >= 2, f"the check needs varied predictions, got {classes}"
    delta = np.abs(p16 - p32).max()
    assert delta <= 0.01, delta
    assert delta > 0, "the bf16 export computes exactly what float32 does: not bf16"
    assert (p16.argmax(1) == p32.argmax(1)).mean() >= 0.99
    np.testing.assert_allclose(p16.sum(1), 1.0, atol=1e-5)


def matmul_dtypes(signature) -> set:
    """The dtypes of every matmul in a concrete function's graph and its library."""
    graph = signature.graph.as_graph_def()
    nodes = [*graph.node, *(n for f in graph.library.function for n in f.node_def)]
    kinds = ("MatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum")
    return {tf.as_dtype(n.attr["T"].type) for n in nodes if n.op in kinds}


def test_bfloat16_graph_and_metadata(exports):
    model, x, before, loaded = exports
    meta = {k: v.metadata["precision"] for k, v in loaded.items()}
    assert meta["bfloat16"]["compute"] == "bfloat16"
    assert meta["bfloat16"]["requested"] == "bfloat16"
    assert meta["bfloat16"]["outputs"] == "float32"
    assert meta["float32"]["compute"] == "float32"
    assert isinstance(meta["bfloat16"]["export_cpu_bf16"], list)
    dtypes = {k: matmul_dtypes(v.loaded.signatures["serving_images"]) for k, v in loaded.items()}
    assert tf.bfloat16 in dtypes["bfloat16"], dtypes
    assert tf.bfloat16 not in dtypes["float32"], dtypes  # (the quality gate has float64 ones)
    # The caller's model is float32 again after the export, with the same outputs.
    assert model.get_layer("backbone").compute_dtype == "float32"
    np.testing.assert_array_equal(model(x).numpy(), before)


def test_model_card_records_precision(exports):
    path = exports[3]["bfloat16"].path
    with open(f"{path}/model_card.json") as f:
        card = json.load(f)
    assert card["precision"]["compute"] == "bfloat16"
    with open(f"{path}/MODEL_CARD.md") as f:
        assert "## Compute precision" in f.read()


def test_bfloat16_needs_a_backbone(tmp_path):
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    plain = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(x))
    kwargs = dict(task="grade", image_size=IMAGE_SIZE, source_size=SOURCE_SIZE)
    with pytest.raises(ValueError, match="keras-hub backbone"):
        export.export_saved_model(plain, tmp_path / "a", precision="bfloat16", **kwargs)
    with pytest.raises(ValueError, match="not one of"):
        export.export_saved_model(plain, tmp_path / "b", precision="half", **kwargs)


def test_loading_a_bfloat16_export_without_bf16_units_warns(exports, monkeypatch, caplog):
    path = exports[3]["bfloat16"].path
    monkeypatch.setattr(precision, "_cpuinfo", lambda: AVX2_ONLY)
    with caplog.at_level("WARNING", logger="eyegazer_keras.serving.predict"):
        predict.load_exported(path)
    assert "no bf16 units" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="eyegazer_keras.serving.predict"):
        predict.load_exported(exports[3]["float32"].path)
    assert "bf16" not in caplog.text
