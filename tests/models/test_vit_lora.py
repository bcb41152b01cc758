"""Tests for eyegazer_keras.models.vit_lora on tiny random ViTs (no network)."""

import json
import re

import keras
import keras_hub
import numpy as np
import pytest

from eyegazer_keras.models import vit_layers
from eyegazer_keras.models.vit_lora import (
    adapter_size_report,
    build_info,
    build_vit_classifier,
    count_parameters,
    format_trainable_parameters,
    load_adapter,
    lora_parameter_count,
    merge_lora,
    save_adapter,
)
from tests.test_case import tiny_vit

SIZE = 28  # keras-hub's test image size
TINY = tiny_vit(SIZE)  # the shared tiny ViT (tests/test_case.py), patch 7 at 28 px
PATCH, LAYERS, HEADS, HIDDEN, MLP = (
    TINY[k] for k in ("patch_size", "num_layers", "num_heads", "hidden_dim", "mlp_dim")
)


def _images(n=2, size=SIZE, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def _randomize_lora_b(model, seed=1):
    rng = np.random.default_rng(seed)
    for v in model.trainable_weights:
        if v.path.endswith("lora_kernel_b"):
            v.assign(rng.normal(0, 0.5, v.shape).astype("float32"))


@pytest.fixture(scope="module")
def preset_dir(tmp_path_factory):
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ViTBackbone(image_shape=(SIZE, SIZE, 3), **TINY)
    path = tmp_path_factory.mktemp("vit_preset")
    backbone.save_to_preset(str(path))
    return str(path)


def _hf_checkpoint(path, *, preprocessor=None, seed=0):
    """Writes a tiny HF `ViTForImageClassification` checkpoint (config + safetensors)."""
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(seed)

    def w(*shape):
        return rng.normal(0, 0.05, shape).astype("float32")

    n = (SIZE // PATCH) ** 2 + 1
    t = {
        "vit.embeddings.cls_token": w(1, 1, HIDDEN),
        "vit.embeddings.position_embeddings": w(1, n, HIDDEN),
        "vit.embeddings.patch_embeddings.projection.weight": w(HIDDEN, 3, PATCH, PATCH),
        "vit.embeddings.patch_embeddings.projection.bias": w(HIDDEN),
        "vit.layernorm.weight": 1 + w(HIDDEN),
        "vit.layernorm.bias": w(HIDDEN),
        "classifier.weight": w(5, HIDDEN),
        "classifier.bias": w(5),
    }
    for i in range(LAYERS):
        p = f"vit.encoder.layer.{i}."
        for name in ("query", "key", "value"):
            t[p + f"attention.attention.{name}.weight"] = w(HIDDEN, HIDDEN)
            t[p + f"attention.attention.{name}.bias"] = w(HIDDEN)
        t[p + "attention.output.dense.weight"] = w(HIDDEN, HIDDEN)
        t[p + "attention.output.dense.bias"] = w(HIDDEN)
        for ln in ("layernorm_before", "layernorm_after"):
            t[p + f"{ln}.weight"] = 1 + w(HIDDEN)
            t[p + f"{ln}.bias"] = w(HIDDEN)
        t[p + "intermediate.dense.weight"] = w(MLP, HIDDEN)
        t[p + "intermediate.dense.bias"] = w(MLP)
        t[p + "output.dense.weight"] = w(HIDDEN, MLP)
        t[p + "output.dense.bias"] = w(HIDDEN)
    config = {
        "model_type": "vit",
        "architectures": ["ViTForImageClassification"],
        "image_size": SIZE,
        "patch_size": PATCH,
        "num_channels": 3,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "hidden_size": HIDDEN,
        "intermediate_size": MLP,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "qkv_bias": True,
        "id2label": {str(i): str(i) for i in range(5)},
    }
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    if preprocessor is not None:
        (path / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    safetensors_numpy.save_file(t, str(path / "model.safetensors"))
    return t


def _var(model, suffix):
    matches = [v for v in model.weights if v.path.endswith(suffix)]
    assert len(matches) == 1, (suffix, [v.path for v in matches])
    return matches[0]


def test_config_source_outputs_probabilities():
    for pooling, num_classes in (("token", 5), ("gap", 2)):
        model = build_vit_classifier(
            "config",
            backbone_config=TINY,
            num_classes=num_classes,
            image_size=SIZE,
            pooling=pooling,
            lora_rank=2,
            head_dropout=0.1,
        )
        probs = keras.ops.convert_to_numpy(model(_images()))
        assert probs.shape == (2, num_classes) and probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
        assert model.get_layer("predictions").units == num_classes
        assert build_info(model)["backbone"]["type"] == "config"


def test_lora_parameter_counts_exact():
    r = 4
    model = build_vit_classifier(
        "config", backbone_config=TINY, num_classes=5, image_size=SIZE, lora_rank=r
    )
    head = HIDDEN * 5 + 5
    lora = lora_parameter_count(num_layers=LAYERS, hidden_dim=HIDDEN, num_heads=HEADS, rank=r)
    # Keras EinsumDense LoRA: A (h, heads, r) + B (r, h/heads), on query and value of L blocks.
    assert lora["keras"] == LAYERS * 2 * (HIDDEN * HEADS * r + r * HIDDEN // HEADS)
    assert lora["peft"] == LAYERS * 2 * (HIDDEN * r + r * HIDDEN)
    counts = count_parameters(model)
    assert counts["trainable"] == lora["peft"] + head  # default lora_layout="peft"
    keras_layout = build_vit_classifier(
        "config",
        backbone_config=TINY,
        num_classes=5,
        image_size=SIZE,
        lora_rank=r,
        lora_layout="keras",
    )
    assert count_parameters(keras_layout)["trainable"] == lora["keras"] + head
    trainable = {v.path for v in model.trainable_weights}
    assert all(
        p.endswith(("lora_kernel_a", "lora_kernel_b")) or "predictions" in p for p in trainable
    )
    assert len(trainable) == LAYERS * 2 * 2 + 2
    # q/v biases are frozen (PEFT bias="none").
    assert not _var(model, "transformer_block_1/mha/query/bias").trainable
    text = format_trainable_parameters(model)
    assert re.fullmatch(
        r"trainable params: [\d,]+ \|\| all params: [\d,]+ \|\| trainable%: \d+\.\d{4}", text
    )
    assert f"{counts['trainable']:,d}" in text

    full = build_vit_classifier(
        "config", backbone_config=TINY, num_classes=5, image_size=SIZE, lora_rank=0
    )
    c = count_parameters(full)
    assert c["trainable"] == c["total"] == counts["total"] - lora["peft"]
    assert c["percent"] == 100.0


def test_alpha_scales_the_lora_update(preset_dir):
    r = 2
    models = {
        alpha: build_vit_classifier(
            preset_dir, num_classes=5, image_size=SIZE, lora_rank=r, lora_alpha=alpha
        )
        for alpha in (r, 2 * r)
    }
    _randomize_lora_b(models[r])
    for src, dst in zip(models[r].trainable_weights, models[2 * r].trainable_weights, strict=True):
        dst.assign(src.value)  # same A, B and head: only alpha differs
    base = keras.ops.convert_to_numpy(_var(models[r], "block_1/mha/query/kernel").value)
    deltas = {}
    for alpha, model in models.items():
        layer = next(
            la
            for la in model._flatten_layers()
            if la.name == "query" and la._kernel.path.endswith("block_1/mha/query/kernel")
        )
        assert layer.lora_alpha == alpha
        deltas[alpha] = keras.ops.convert_to_numpy(layer.kernel) - base
    np.testing.assert_allclose(deltas[2 * r], 2 * deltas[r], rtol=1e-4, atol=1e-6)
    x = _images()
    out = {a: keras.ops.convert_to_numpy(m(x)) for a, m in models.items()}
    assert np.abs(out[r] - out[2 * r]).max() > 1e-4


def test_preset_dir_source_and_resize(preset_dir):
    backbone = keras_hub.models.Backbone.from_preset(preset_dir)
    model = build_vit_classifier(preset_dir, num_classes=5, image_size=SIZE, lora_rank=0)
    for v in backbone.weights:
        np.testing.assert_array_equal(v.numpy(), _var(model, v.path).numpy())
    assert build_info(model)["backbone"] == {"type": "keras_preset", "preset": preset_dir}
    # No converter in the preset -> mean = std = 0.5 (0..255 -> -1..1).
    norm = model.get_layer("normalization")
    np.testing.assert_allclose(norm.scale, [1 / 127.5] * 3)
    np.testing.assert_allclose(norm.offset, [-1.0] * 3)

    big = build_vit_classifier(preset_dir, num_classes=5, image_size=2 * SIZE, lora_rank=2)
    assert big(_images(size=2 * SIZE)).shape == (2, 5)
    old = backbone.get_layer("vit_patching_and_embedding").position_embedding.embeddings.numpy()
    new = _var(big, "position_embedding/embeddings").numpy()
    assert new.shape == ((2 * SIZE // PATCH) ** 2 + 1, HIDDEN)
    np.testing.assert_array_equal(new[0], old[0])  # class-token position kept
    with pytest.raises(ValueError, match="multiple of the patch size"):
        build_vit_classifier(preset_dir, num_classes=5, image_size=30)


def test_hf_checkpoint_source(tmp_path):
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    t = _hf_checkpoint(
        tmp_path / "hf", preprocessor={"image_mean": mean, "image_std": std, "do_rescale": True}
    )
    model = build_vit_classifier(str(tmp_path / "hf"), num_classes=2, image_size=SIZE)
    assert build_info(model)["backbone"]["type"] == "hf_checkpoint"
    q = t["vit.encoder.layer.1.attention.attention.query.weight"]
    np.testing.assert_allclose(
        _var(model, "transformer_block_2/mha/query/kernel").numpy(),
        q.T.reshape(HIDDEN, HEADS, HIDDEN // HEADS),
    )
    norm = model.get_layer("normalization")
    np.testing.assert_allclose(norm.scale, 1 / (255 * np.array(std)), rtol=1e-6)
    np.testing.assert_allclose(norm.offset, -np.array(mean) / np.array(std), rtol=1e-6)
    assert model(_images()).shape == (2, 2)

    assert model.get_layer("backbone").layer_norm_epsilon == 1e-12  # HF default

    # `ViTModel` checkpoint (keys without "vit.", keras-hub #3007) and no
    # preprocessor_config.json: same weights, HF ViT default mean = std = 0.5.
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    plain_dir = tmp_path / "hf_vitmodel"
    _hf_checkpoint(plain_dir)
    config = json.loads((plain_dir / "config.json").read_text())
    config["architectures"] = ["ViTModel"]
    (plain_dir / "config.json").write_text(json.dumps(config))
    tensors = {k[len("vit.") :]: v for k, v in t.items() if k.startswith("vit.")}
    safetensors_numpy.save_file(tensors, str(plain_dir / "model.safetensors"))
    plain = build_vit_classifier(str(plain_dir), num_classes=5, image_size=SIZE)
    np.testing.assert_allclose(plain.get_layer("normalization").scale, [1 / 127.5] * 3)
    for v in plain.non_trainable_weights:
        np.testing.assert_array_equal(v.numpy(), _var(model, v.path).numpy())


def test_adapter_round_trip_after_training(preset_dir, tmp_path):
    kwargs = dict(num_classes=5, image_size=SIZE, lora_rank=4, lora_alpha=8)
    model = build_vit_classifier(preset_dir, **kwargs)
    bias_before = _var(model, "block_1/mha/value/bias").numpy().copy()
    _randomize_lora_b(model)  # so that LoRA A gets gradients too
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    x, y = _images(8), np.arange(8) % 5
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)

    path = tmp_path / "run.adapter.npz"
    size = save_adapter(model, path)
    with np.load(path) as data:
        assert set(data.files) == {v.path for v in model.trainable_weights} | {"__metadata__"}
    report = adapter_size_report(model, path)
    assert report["adapter_bytes"] == size < report["full_model_bytes"]

    fresh = build_vit_classifier(preset_dir, **kwargs)
    before = keras.ops.convert_to_numpy(fresh(x))
    meta = load_adapter(fresh, path)
    assert meta["build"]["lora_alpha"] == 8
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(fresh(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-6
    )
    assert np.abs(before - keras.ops.convert_to_numpy(model(x))).max() > 1e-4
    # Frozen q/v biases: untouched by training, identical in the fresh model.
    for m in (model, fresh):
        np.testing.assert_array_equal(_var(m, "block_1/mha/value/bias").numpy(), bias_before)

    wrong_rank = build_vit_classifier(preset_dir, **{**kwargs, "lora_rank": 2})
    with pytest.raises(ValueError, match="lora_rank=4"):
        load_adapter(wrong_rank, path)
    wrong_alpha = build_vit_classifier(preset_dir, **{**kwargs, "lora_alpha": 4})
    with pytest.raises(ValueError, match="lora_alpha"):
        load_adapter(wrong_alpha, path)
    other_base = build_vit_classifier("config", backbone_config=TINY, **kwargs)
    with pytest.raises(ValueError, match="frozen backbone weights differ"):
        load_adapter(other_base, path)


def test_adapter_key_errors(preset_dir, tmp_path):
    model = build_vit_classifier(preset_dir, num_classes=5, image_size=SIZE, lora_rank=2)
    path = tmp_path / "a.npz"
    save_adapter(model, path)
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays["__metadata__"]))
    meta["build"] = {}  # skip the metadata checks to reach the key checks
    arrays["__metadata__"] = np.array(json.dumps(meta))
    key = "predictions/kernel"
    bad = dict(arrays, **{key: np.zeros((HIDDEN, 3), "float32")})
    np.savez(tmp_path / "shape.npz", **bad)
    with pytest.raises(ValueError, match=re.escape(key) + ".*shape"):
        load_adapter(model, tmp_path / "shape.npz")
    np.savez(tmp_path / "missing.npz", **{k: v for k, v in arrays.items() if k != key})
    with pytest.raises(ValueError, match="missing from file: \\['predictions/kernel'\\]"):
        load_adapter(model, tmp_path / "missing.npz")
    np.savez(tmp_path / "extra.npz", **arrays, **{"foo/bar": np.zeros(1)})
    with pytest.raises(ValueError, match="not in model: \\['foo/bar'\\]"):
        load_adapter(model, tmp_path / "extra.npz")


def test_keras_save_and_load_model(preset_dir, tmp_path):
    model = build_vit_classifier(
        preset_dir, num_classes=5, image_size=SIZE, lora_rank=2, pooling="gap", head_dropout=0.1
    )
    _randomize_lora_b(model)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    x = _images()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-5
    )
    assert isinstance(loaded.get_layer("normalization"), vit_layers.PixelNormalization)


def test_keras_file_from_when_the_layers_lived_in_vit_lora_loads(preset_dir, tmp_path):
    """PixelNormalization/ViTPooling moved to vit_layers and are now saved as
    `eyegazer_keras>Name`; files naming the old module and the old `eyegazer>Name` load."""
    import zipfile

    task = build_vit_classifier(preset_dir, num_classes=2, image_size=SIZE, lora_rank=0)
    # What build_vit_classifier returned before the task class: a plain functional model.
    model = keras.Model(task.inputs, task.outputs)
    new, old = tmp_path / "new.keras", tmp_path / "old.keras"
    model.save(new)
    with zipfile.ZipFile(new) as src, zipfile.ZipFile(old, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                config = data.decode()
                for name in ("PixelNormalization", "ViTPooling"):
                    assert f'"registered_name": "eyegazer_keras>{name}"' in config
                    config = config.replace(f'"eyegazer_keras>{name}"', f'"eyegazer>{name}"')
                    assert f'"registered_name": "eyegazer>{name}"' in config
                assert config.count('"module": "eyegazer_keras.models.vit_layers"') == 2
                data = config.replace(
                    '"module": "eyegazer_keras.models.vit_layers"',
                    '"module": "eyegazer_keras.models.vit_lora"',
                ).encode()
            dst.writestr(item, data)
    loaded = keras.models.load_model(old)
    assert isinstance(loaded.get_layer("pooling"), vit_layers.ViTPooling)
    x = _images()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-5
    )


def test_builds_and_fits_in_mirrored_strategy(preset_dir):
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = build_vit_classifier(preset_dir, num_classes=2, image_size=SIZE, lora_rank=2)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    lora_a = next(v for v in model.trainable_weights if v.path.endswith("lora_kernel_a"))
    assert isinstance(lora_a.value, tf.distribute.DistributedValues)
    history = model.fit(_images(4), np.array([0, 1, 0, 1]), batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_mixed_precision_outputs_float32():
    model = build_vit_classifier(
        "config",
        backbone_config=TINY,
        num_classes=5,
        image_size=SIZE,
        lora_rank=2,
        dtype="mixed_bfloat16",
    )
    probs = model(_images())
    assert keras.backend.standardize_dtype(probs.dtype) == "float32"


def test_save_weights_keeps_lora_and_adapter_guard_catches_merged(preset_dir, tmp_path):
    """Keras core's trap (save/load_weights merged LoRA into the kernels and zeroed A and B) is
    gone: A and B come back as saved. A model whose LoRA was merged into its kernels (as Keras
    core did) gives an adapter relative to the merged kernels: `load_adapter` refuses it.
    """
    kwargs = dict(num_classes=5, image_size=SIZE, lora_rank=2)
    model = build_vit_classifier(preset_dir, **kwargs)
    _randomize_lora_b(model)
    model.save_weights(str(tmp_path / "w.weights.h5"))
    reloaded = build_vit_classifier(preset_dir, **kwargs)
    reloaded.load_weights(str(tmp_path / "w.weights.h5"))
    x = _images()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(reloaded(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-5
    )
    for a, b in zip(model.trainable_weights, reloaded.trainable_weights, strict=True):
        assert a.path == b.path
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert any(np.any(v.numpy()) for v in reloaded.trainable_weights if "lora_kernel_b" in v.path)
    # What Keras core's load_weights did: W + s A @ B in the kernel, A and B zero.
    for layer in reloaded._flatten_layers():
        if getattr(layer, "lora_enabled", False):
            layer._kernel.assign(layer.kernel)
            layer.lora_kernel_a.assign(np.zeros(layer.lora_kernel_a.shape, "float32"))
            layer.lora_kernel_b.assign(np.zeros(layer.lora_kernel_b.shape, "float32"))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(reloaded(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-5
    )
    assert all(not np.any(v.numpy()) for v in reloaded.trainable_weights if "lora_kernel" in v.path)
    save_adapter(reloaded, tmp_path / "merged.npz")
    with pytest.raises(ValueError, match="frozen backbone weights differ"):
        load_adapter(build_vit_classifier(preset_dir, **kwargs), tmp_path / "merged.npz")


def _grads(model, x, y):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        probs = model(x, training=True)
        loss = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, probs))
    return [g.numpy() for g in tape.gradient(loss, model.trainable_variables)], loss.numpy()


def test_fast_layers_match_keras_lora(preset_dir):
    """Factored LoRA (x@W + s*(x@A)@B) and float32 GELU: same outputs and gradients as Keras LoRA."""
    from eyegazer_keras.models import fast_layers

    kwargs = dict(num_classes=5, image_size=SIZE, lora_rank=4, lora_alpha=8, lora_layout="keras")
    fast = build_vit_classifier(preset_dir, **kwargs)
    ref = build_vit_classifier(preset_dir, fast_layers=False, **kwargs)
    classes = {type(la) for la in fast._flatten_layers() if getattr(la, "lora_enabled", False)}
    assert classes == {fast_layers.FactoredLoRAEinsumDense}
    attention = [la for la in fast._flatten_layers() if la.name == "mha"]
    assert attention and {type(la) for la in attention} == {fast_layers.BatchMatMulAttention}
    assert not any(
        isinstance(la, fast_layers.FactoredLoRAEinsumDense) for la in ref._flatten_layers()
    )
    _randomize_lora_b(ref)
    assert [v.path for v in fast.weights] == [v.path for v in ref.weights]
    for src, dst in zip(ref.weights, fast.weights, strict=True):
        dst.assign(src.value)
    x, y = _images(4), np.arange(4) % 5
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(fast(x)), keras.ops.convert_to_numpy(ref(x)), atol=1e-5
    )
    g_fast, l_fast = _grads(fast, x, y)
    g_ref, l_ref = _grads(ref, x, y)
    np.testing.assert_allclose(l_fast, l_ref, rtol=1e-5)
    for a, b in zip(g_fast, g_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    # The merged kernel (what save_weights / .keras store) is unchanged.
    layer = next(la for la in fast._flatten_layers() if la.name == "query")
    assert layer.kernel.shape == layer._kernel.shape


def test_fast_layers_under_mixed_bfloat16_and_gelu():
    from eyegazer_keras.models import fast_layers

    x = np.linspace(-6, 6, 101).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(fast_layers.gelu_float32(x)),
        keras.ops.convert_to_numpy(keras.activations.gelu(x)),
        atol=1e-6,
    )
    kwargs = dict(
        backbone_config=TINY, num_classes=5, image_size=SIZE, lora_rank=2, dtype="mixed_bfloat16"
    )
    keras.utils.set_random_seed(3)
    fast = build_vit_classifier("config", **kwargs)
    ref = build_vit_classifier("config", fast_layers=False, **kwargs)
    dense_1 = [la for la in fast._flatten_layers() if la.name == "dense_1"]
    assert dense_1 and all(la.activation is fast_layers.gelu_float32 for la in dense_1)
    for src, dst in zip(ref.weights, fast.weights, strict=True):
        dst.assign(src.value)
    out_fast = keras.ops.convert_to_numpy(fast(_images()))
    out_ref = keras.ops.convert_to_numpy(ref(_images()))
    assert out_fast.dtype == np.float32
    np.testing.assert_allclose(out_fast, out_ref, atol=3e-2)  # bfloat16 rounding


def test_fast_layers_export_saved_model(preset_dir, tmp_path):
    import tensorflow as tf

    model = build_vit_classifier(
        preset_dir, num_classes=5, image_size=SIZE, lora_rank=2, dtype="mixed_bfloat16"
    )
    _randomize_lora_b(model)
    out = str(tmp_path / "saved")
    model.export(out, format="tf_saved_model", verbose=False)
    x = _images()
    loaded = tf.saved_model.load(out)
    served = loaded.serve(tf.constant(x)).numpy()
    np.testing.assert_allclose(served, keras.ops.convert_to_numpy(model(x)), atol=1e-5)


def _lora_layers(model):
    return [la for la in model._flatten_layers() if getattr(la, "lora_enabled", False)]


def test_peft_layout_is_rank_r_and_equals_its_merged_kernel(tmp_path):
    """lora_layout="peft" (default): A (in, r), B (r, out...) as PEFT; the factored call equals
    the merged kernel `W + s A B` that saving stores, and that update has rank <= r."""
    from eyegazer_keras.models import fast_layers

    r = 2
    keras.utils.set_random_seed(0)
    kwargs = dict(backbone_config=TINY, num_classes=5, image_size=SIZE, lora_rank=r, lora_alpha=4)
    targets = ("query", "value", "attention_output")
    model = build_vit_classifier("config", lora_targets=targets, **kwargs)
    layers = _lora_layers(model)
    assert {type(la) for la in layers} == {fast_layers.RankRLoRAEinsumDense}
    assert len(layers) == LAYERS * len(targets)
    query = next(la for la in layers if la.name == "query")
    out = next(la for la in layers if la.name == "attention_output")
    assert tuple(query.lora_kernel_a.shape) == (HIDDEN, r)
    assert tuple(query.lora_kernel_b.shape) == (r, HEADS, HIDDEN // HEADS)
    assert tuple(out.lora_kernel_a.shape) == (HEADS, HIDDEN // HEADS, r)
    assert tuple(out.lora_kernel_b.shape) == (r, HIDDEN)
    _randomize_lora_b(model)
    rng = np.random.default_rng(0)
    for layer, shape in ((query, (2, 5, HIDDEN)), (out, (2, 5, HEADS, HIDDEN // HEADS))):
        x = rng.normal(size=shape).astype("float32")
        merged = keras.ops.convert_to_numpy(layer.kernel)
        expected = np.einsum(layer.equation, x, merged) + keras.ops.convert_to_numpy(layer.bias)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(layer(x)), expected, rtol=1e-4, atol=1e-5
        )
        delta = merged - keras.ops.convert_to_numpy(layer._kernel)
        flat = delta.reshape(HIDDEN, -1) if layer is query else delta.reshape(-1, HIDDEN)
        assert np.abs(delta).max() > 0 and np.linalg.matrix_rank(flat, tol=1e-5) == r
    # The Keras layout's per-head A gives the same rank setting a higher-rank update.
    keras_model = build_vit_classifier("config", lora_layout="keras", **kwargs)
    _randomize_lora_b(keras_model)
    k_query = next(la for la in _lora_layers(keras_model) if la.name == "query")
    k_delta = keras.ops.convert_to_numpy(k_query.kernel) - keras.ops.convert_to_numpy(
        k_query._kernel
    )
    assert np.linalg.matrix_rank(k_delta.reshape(HIDDEN, -1), tol=1e-5) == HEADS * r
    # merge_lora puts the merged kernels into a plain (no LoRA) model: same outputs. (Weight
    # files keep A/B apart: a plain model refuses them rather than reading zero LoRA.)
    path = str(tmp_path / "m.weights.h5")
    model.save_weights(path)
    again = build_vit_classifier("config", **dict(kwargs, lora_rank=0))
    with pytest.raises(ValueError, match="could not be loaded"):
        again.load_weights(path)
    merge_lora(model, again)
    x = _images()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(again(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-5
    )


def test_adapter_refuses_the_other_lora_layout(tmp_path):
    kwargs = dict(backbone_config=TINY, num_classes=5, image_size=SIZE, lora_rank=2)
    path = tmp_path / "a.npz"
    save_adapter(build_vit_classifier("config", **kwargs), path)
    with pytest.raises(ValueError, match="lora_layout"):
        load_adapter(build_vit_classifier("config", lora_layout="keras", **kwargs), path)


def test_adapter_without_layout_metadata_is_keras_layout(tmp_path):
    """Adapters written before `lora_layout` existed hold Keras core's layout."""
    kwargs = dict(backbone_config=TINY, num_classes=5, image_size=SIZE, lora_rank=2)
    path = tmp_path / "old.npz"
    save_adapter(build_vit_classifier("config", lora_layout="keras", **kwargs), path)
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays["__metadata__"]))
    del meta["build"]["lora_layout"]
    arrays["__metadata__"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    model = build_vit_classifier("config", lora_layout="keras", **kwargs)
    load_adapter(model, path, check_base=False)  # a fresh random backbone: skip its fingerprint
    with pytest.raises(ValueError, match="lora_layout='keras'"):
        load_adapter(build_vit_classifier("config", **kwargs), path)
