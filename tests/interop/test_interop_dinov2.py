"""PEFT adapters on DINOv2 bases, both ways, against fixtures made by the real libraries.

`tests/fixtures/hf_dinov2/` comes from `tests/make_hf_dinov2_fixtures.py` (transformers 5.24 +
peft 0.21.2, torch CPU; transformers 4.57.6 + peft 0.17.1 for the legacy key names): tiny
`Dinov2Model`, `Dinov2ForImageClassification` and `Dinov2WithRegistersForImageClassification`
checkpoints (42 px, patch 14), LoRA adapters on q_proj/v_proj (query/value in transformers 4)
saved by `PeftModel.save_pretrained`, and HF's logits. These tests need neither library;
`test_interop_dinov2_live.py` runs the round trips through them where they are installed.
"""

from __future__ import annotations

import json
import os
import shutil

import keras
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from eyegazer_keras import cli, runs
from eyegazer_keras.interop import peft, peft_layout
from eyegazer_keras.models import vit_lora

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "hf_dinov2")
VIT_FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "hf")
EXPECTED = np.load(os.path.join(FIXTURES, "expected.npz"))
TOL = 1e-4
SIZE, HIDDEN = 42, 24
TARGETS = ["q_proj", "v_proj"]
# (base, adapter, labels): a headless base (head from the adapter), a classifier base with and
# without a saved head, the registers variant (5 labels), and transformers 4's key names.
CASES = [
    ("dinov2model", "current_dinov2model", 2),
    ("dinov2cls", "current_dinov2cls", 2),
    ("dinov2cls", "current_dinov2cls_nohead", 2),
    ("dinov2reg", "current_dinov2reg", 5),
    ("dinov2cls", "legacy_dinov2cls", 2),
]


def fixture(name):
    return os.path.join(FIXTURES, name)


def images(key="images"):
    return EXPECTED[key].astype("float32")


def import_case(base, adapter, workdir, **kwargs):
    kwargs.setdefault("dataset", "synthetic_fundus")
    return peft.import_peft(base, adapter, workdir, **kwargs)


@pytest.mark.parametrize(("name", "labels"), [("dinov2cls", 2), ("dinov2reg", 5)])
def test_hf_dinov2_classifier_reads_class_token_and_patch_mean(name, labels):
    """keras-hub's DINOv2 + `pooling="token_gap"` + HF's head = HF's base logits."""
    model = vit_lora.build_vit_classifier(
        fixture(name), num_classes=labels, image_size=SIZE, lora_rank=0, pooling="token_gap"
    )
    hf = load_file(fixture(f"{name}/model.safetensors"))
    head = model.get_layer("predictions")
    assert tuple(head.kernel.shape) == (2 * HIDDEN, labels)
    head.kernel.assign(hf["classifier.weight"].T)
    head.bias.assign(hf["classifier.bias"])
    diff = np.abs(peft.classifier_logits(model, images()) - EXPECTED[f"{name}_base_logits"])
    assert diff.max() <= TOL, diff.max()
    # Not vacuous: the class token alone (ViT's head) gives other logits.
    token = np.concatenate([hf["classifier.weight"][:, :HIDDEN].T, np.zeros((HIDDEN, labels))])
    head.kernel.assign(token)
    assert (
        np.abs(peft.classifier_logits(model, images()) - EXPECTED[f"{name}_base_logits"]).max()
        > 0.01
    )


def test_token_gap_pooling_survives_the_keras_file(tmp_path):
    model = vit_lora.build_vit_classifier(
        fixture("dinov2reg"), num_classes=5, image_size=SIZE, lora_rank=2, pooling="token_gap"
    )
    for v in model.trainable_weights:
        v.assign(np.random.default_rng(0).normal(0, 0.3, v.shape).astype("float32"))
    assert model.get_config()["pooling"] == "token_gap"
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.get_layer("pooling").mode == "token_gap"
    assert loaded.get_layer("pooling").num_prefix_tokens == 3  # class + 2 registers
    x = images()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-6
    )
    assert len(loaded.trainable_weights) == len(model.trainable_weights)


@pytest.mark.parametrize(("base", "adapter", "labels"), CASES)
def test_import_matches_peft_logits(base, adapter, labels, tmp_path):
    record = import_case(fixture(base), fixture(adapter), tmp_path / "run")
    assert record["naming"] == adapter.split("_")[0] and record["base_family"] == "dinov2"
    assert record["head_from"] == ("base" if adapter.endswith("nohead") else "adapter")
    assert (record["rank"], record["lora_alpha"], record["targets"]) == (4, 8.0, ["query", "value"])
    pre = record["trained_preprocessing"]
    assert (pre["resize_shortest_edge"], pre["center_crop"]) == (SIZE, [SIZE, SIZE])
    config, model = runs.load_run(str(tmp_path / "run"))
    assert (config.pooling, config.image_size, config.num_classes) == ("token_gap", SIZE, labels)
    diff = np.abs(peft.classifier_logits(model, images()) - EXPECTED[f"logits_{adapter}"])
    assert diff.max() <= TOL, (adapter, diff.max())


@pytest.mark.parametrize(("base", "adapter", "labels"), [CASES[1], CASES[3]])
def test_export_after_import_gives_back_the_peft_file(base, adapter, labels, tmp_path):
    """import -> export-peft writes the tensors PEFT itself wrote, bit for bit, and the config
    names the HF class PEFT loads them onto."""
    import_case(fixture(base), fixture(adapter), tmp_path / "run")
    record = peft.export_peft(tmp_path / "run", tmp_path / "out")
    exported = load_file(str(tmp_path / "out" / peft.ADAPTER_WEIGHTS))
    original = load_file(fixture(f"{adapter}/{peft.ADAPTER_WEIGHTS}"))
    assert sorted(exported) == sorted(original)
    for key, value in original.items():
        np.testing.assert_array_equal(exported[key], value)
    with open(tmp_path / "out" / peft.ADAPTER_CONFIG) as f:
        config = json.load(f)
    with open(fixture(f"{adapter}/{peft.ADAPTER_CONFIG}")) as f:
        theirs = json.load(f)
    assert config["auto_mapping"] == theirs["auto_mapping"]
    assert (config["r"], config["lora_alpha"], config["target_modules"]) == (4, 8, TARGETS)
    assert record["num_labels"] == labels and record["source_pooling"] == "token_gap"
    readme = (tmp_path / "out" / "README.md").read_text()
    assert theirs["auto_mapping"]["base_model_class"] in readme
    assert "center crop [42, 42]" in readme


def _fake_run(tmp_path, **build):
    """A run folder (config.json + adapter.npz) of a DINOv2 classifier with random LoRA/head."""
    from eyegazer_keras.configs import settings as configs

    model = vit_lora.build_vit_classifier(
        fixture("dinov2model"), num_classes=2, image_size=SIZE, lora_rank=4, **build
    )
    rng = np.random.default_rng(5)
    for v in model.trainable_weights:
        v.assign(rng.normal(0, 0.3, v.shape).astype("float32"))
    run = tmp_path / "fake_run"
    run.mkdir()
    config = configs.TrainConfig(task="binary", image_size=SIZE, backbone=fixture("dinov2model"))
    (run / "config.json").write_text(json.dumps(configs.to_dict(config)))
    vit_lora.save_adapter(model, run / "adapter.npz")
    return run, model


@pytest.mark.parametrize(
    ("pooling", "layout"), [("token", "peft"), ("gap", "peft"), ("token_gap", "keras")]
)
def test_any_pooling_and_layout_exports_exactly(pooling, layout, tmp_path):
    """A run pooled with "token" or "gap" is written as HF's 2*hidden head with zeros on the
    half it does not read; the Keras-core layout as a rank heads*r LoRA. Re-imported (token_gap,
    rank-R PEFT layout), it computes the trained model's logits."""
    run, model = _fake_run(tmp_path, pooling=pooling, lora_layout=layout)
    record = peft.export_peft(run, tmp_path / "out")
    assert record["rank"] == (4 * 2 if layout == "keras" else 4)  # 2 heads
    weight = load_file(str(tmp_path / "out" / peft.ADAPTER_WEIGHTS))[
        peft_layout.PEFT_PREFIX + "classifier.weight"
    ]
    assert weight.shape == (2, 2 * HIDDEN)
    if pooling != "token_gap":
        unused = weight[:, HIDDEN:] if pooling == "token" else weight[:, :HIDDEN]
        assert not unused.any() and weight.any()
    import_case(fixture("dinov2model"), tmp_path / "out", tmp_path / "back")
    _, back = runs.load_run(str(tmp_path / "back"))
    ours = peft.classifier_logits(model, images())
    assert np.abs(peft.classifier_logits(back, images()) - ours).max() <= 1e-5


def test_tolerance_at_another_size_than_the_position_table(tmp_path):
    """At 28 px (the 42-px table interpolated to 2x2 as transformers does, torch's bicubic) the
    logits agree with HF's to 1e-4 too (keras-hub's TF bicubic was 0.0117 off); the record
    names both sizes. Not vacuous: the same model with keras-hub's table is > 1e-3 off."""
    base = tmp_path / "dinov2cls_28"
    shutil.copytree(fixture("dinov2cls"), base)
    with open(base / "preprocessor_config.json") as f:
        processor = json.load(f)
    processor["crop_size"] = {"height": 28, "width": 28}
    (base / "preprocessor_config.json").write_text(json.dumps(processor))
    record = import_case(base, fixture("current_dinov2cls"), tmp_path / "run")
    assert (record["image_size"], record["base_grid_size"]) == (28, SIZE)
    _, model = runs.load_run(str(tmp_path / "run"))
    expected = EXPECTED["logits_current_dinov2cls_28"]
    diff = np.abs(peft.classifier_logits(model, images("images_28")) - expected).max()
    assert diff <= TOL, diff
    embeddings = model.get_layer("backbone").embeddings
    keras_hub_table = type(embeddings)._interpolate_position_embeddings(  # the staticmethod
        embeddings.position_embeddings, 14, (SIZE, SIZE), (28, 28)
    )
    embeddings.interpolated_position_embeddings.assign(keras_hub_table)
    off = np.abs(peft.classifier_logits(model, images("images_28")) - expected).max()
    assert off > 1e-3, off


def test_refuses_a_model_family_it_was_not_made_on(tmp_path):
    with pytest.raises(peft.PeftFormatError) as err:
        import_case(os.path.join(VIT_FIXTURES, "vitcls"), fixture("current_dinov2cls"), tmp_path)
    message = str(err.value)
    assert "keys are LoRA on a DINOv2 but the base" in message and "is a ViT" in message
    assert "\n" not in message
    with pytest.raises(peft.PeftFormatError, match="keys are LoRA on a ViT but the base"):
        import_case(fixture("dinov2cls"), os.path.join(VIT_FIXTURES, "current_vitcls"), tmp_path)


def test_refuses_an_unsupported_base_in_one_line(tmp_path):
    base = tmp_path / "clip"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    with pytest.raises(ValueError, match="not a ViT or DINOv2") as err:
        import_case(base, fixture("current_dinov2cls"), tmp_path / "run")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("targets", "tensor", "needle"),
    [
        (["q_proj", "fc1"], None, "target_modules ['fc1']"),
        (None, "mlp.fc1", "LoRA on a non-attention module"),
        (["q_proj", "v_proj", "k_proj"], None, "(no weights for ['k_proj'])"),
    ],
)
def test_refuses_unsupported_target_modules_in_one_line(targets, tensor, needle, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(fixture("current_dinov2cls"), adapter)
    if targets:
        with open(adapter / peft.ADAPTER_CONFIG) as f:
            config = json.load(f)
        config["target_modules"] = targets
        (adapter / peft.ADAPTER_CONFIG).write_text(json.dumps(config))
    if tensor:
        tensors = load_file(str(adapter / peft.ADAPTER_WEIGHTS))
        prefix = f"base_model.model.dinov2.encoder.layer.0.{tensor}."
        tensors[prefix + "lora_A.weight"] = np.zeros((4, HIDDEN), "float32")
        tensors[prefix + "lora_B.weight"] = np.zeros((2 * HIDDEN, 4), "float32")
        save_file(tensors, str(adapter / peft.ADAPTER_WEIGHTS))
    with pytest.raises(peft.PeftFormatError) as err:
        import_case(fixture("dinov2cls"), adapter, tmp_path / "run")
    assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_cli_import_and_export(tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "out"
    argv = ["import-peft", "--base", fixture("dinov2reg"), "--adapter"]
    argv += [fixture("current_dinov2reg"), "--workdir", str(run), "--dataset", "synthetic_fundus"]
    assert cli.main(argv) == 0
    said = capsys.readouterr().out
    assert "resize the shortest edge to 42, center crop [42, 42] (no fundus crop)" in said
    assert cli.main(["export-peft", "--workdir", str(run), "--output", str(out)]) == 0
    assert "targets q_proj,v_proj" in capsys.readouterr().out
    exported = load_file(str(out / peft.ADAPTER_WEIGHTS))
    assert any(k.startswith("base_model.model.dinov2_with_registers.encoder.") for k in exported)
    # A base without a config.json: exit code 2, one line.
    bad = ["import-peft", "--base", str(tmp_path), "--adapter", str(out)]
    assert cli.main([*bad, "--workdir", str(tmp_path / "run2")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("eyegazer import-peft: error:") and "no config.json" in last, last


def test_import_onto_a_local_keras_preset_dir(tmp_path):
    """The same DINOv2 saved as a keras-hub preset (`save_to_preset`) is a base too; it has no
    HF original to export onto."""
    model = vit_lora.build_vit_classifier(
        fixture("dinov2cls"), num_classes=2, image_size=SIZE, lora_rank=0
    )
    model.get_layer("backbone").save_to_preset(str(tmp_path / "preset"))
    record = import_case(tmp_path / "preset", fixture("current_dinov2cls"), tmp_path / "run")
    assert (record["base_kind"], record["base_family"]) == ("keras_preset", "dinov2")
    _, imported = runs.load_run(str(tmp_path / "run"))
    diff = np.abs(peft.classifier_logits(imported, images()) - EXPECTED["logits_current_dinov2cls"])
    assert diff.max() <= TOL, diff.max()
    with pytest.raises(peft.PeftFormatError, match="has no Hugging Face original"):
        peft.export_peft(tmp_path / "run", tmp_path / "out")


@pytest.mark.slow
def test_hf_ids_through_an_offline_cache(tmp_path):
    """`hf://` base and adapter from a local Hugging Face cache (HF_HUB_OFFLINE=1), in a fresh
    process: import, then export names the HF id and the registers class."""
    from tests.interop.test_interop import hf_cache, run_python

    env = hf_cache(
        tmp_path / "hf",
        {
            "facebook/dinov2-tiny-registers": fixture("dinov2reg"),
            "someone/dinov2-tiny-lora": fixture("current_dinov2reg"),
        },
    )
    run, out = tmp_path / "run", tmp_path / "out"
    cli_args = ["-m", "eyegazer_keras.cli"]
    result = run_python(
        cli_args
        + ["import-peft", "--base", "hf://facebook/dinov2-tiny-registers"]
        + ["--adapter", "hf://someone/dinov2-tiny-lora", "--workdir", str(run)]
        + ["--dataset", "synthetic_fundus"],
        env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_python(
        cli_args + ["export-peft", "--workdir", str(run), "--output", str(out)], env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with open(out / peft.ADAPTER_CONFIG) as f:
        config = json.load(f)
    assert config["base_model_name_or_path"] == "facebook/dinov2-tiny-registers"
    assert config["auto_mapping"]["base_model_class"] == "Dinov2WithRegistersForImageClassification"
    exported = load_file(str(out / peft.ADAPTER_WEIGHTS))
    original = load_file(fixture(f"current_dinov2reg/{peft.ADAPTER_WEIGHTS}"))
    assert sorted(exported) == sorted(original)
    for key, value in original.items():
        np.testing.assert_array_equal(exported[key], value)


def test_explain_maps_read_both_halves_of_token_gap():
    """Attention rollout on a token_gap model: the average of the class-token row and the mean
    of the patch rows, a [0, 1] map per image."""
    import tensorflow as tf

    from eyegazer_keras.evaluation import explain

    matrix = tf.constant(np.random.default_rng(0).uniform(size=(2, 12, 12)), tf.float32)
    both = explain._pooled_rows(matrix, 3, "token_gap").numpy()
    token = explain._pooled_rows(matrix, 3, "token").numpy()
    gap = explain._pooled_rows(matrix, 3, "gap").numpy()
    np.testing.assert_allclose(both, 0.5 * (token + gap), rtol=1e-6)
    model = vit_lora.build_vit_classifier(
        fixture("dinov2reg"), num_classes=5, image_size=SIZE, lora_rank=2, pooling="token_gap"
    )
    maps = explain.attention_rollout(model, images()).numpy()
    assert maps.shape == (2, SIZE, SIZE) and maps.min() >= 0 and maps.max() <= 1


def test_keras_dinov2_preset_names_export_with_their_hf_origin(tmp_path):
    """A run on `dinov2_with_registers_small` names facebook/dinov2-with-registers-small and
    writes the registers model's keys (keras-hub's conversion map; no download here)."""
    import_case(fixture("dinov2reg"), fixture("current_dinov2reg"), tmp_path / "run")
    path = tmp_path / "run" / "adapter.npz"
    with np.load(path) as data:
        arrays = dict(data)
    metadata = json.loads(str(arrays.pop("__metadata__")))
    metadata["build"]["backbone"] = {
        "type": "keras_preset",
        "preset": "dinov2_with_registers_small",
        "architecture": "dinov2",
    }
    arrays["__metadata__"] = np.array(json.dumps(metadata))
    np.savez(path, **arrays)
    record = peft.export_peft(tmp_path / "run", tmp_path / "out")
    assert record["base_model_name_or_path"] == "facebook/dinov2-with-registers-small"
    assert record["base_model_class"] == "Dinov2WithRegistersForImageClassification"
    exported = load_file(str(tmp_path / "out" / peft.ADAPTER_WEIGHTS))
    original = load_file(fixture(f"current_dinov2reg/{peft.ADAPTER_WEIGHTS}"))
    assert sorted(exported) == sorted(original)
