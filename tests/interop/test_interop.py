"""PEFT adapters and HF ViT checkpoints made by the real libraries (tests/fixtures/hf) -> Keras.

The fixtures and the expected HF outputs come from `tests/make_hf_fixtures.py` (transformers
5.24 + peft 0.21.2 for the current key naming, transformers 4.57.6 + peft 0.17.1 for the legacy
naming of the published adapter); these tests need neither library.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from eyegazer_keras import runs
from eyegazer_keras.interop import peft
from eyegazer_keras.models import vit_lora

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "hf")
EXPECTED = np.load(os.path.join(FIXTURES, "expected.npz"))
TOL = 1e-4
# (base, adapter): both key namings on both base kinds, and a head taken from the base.
CASES = [
    ("vitmodel", "current_vitmodel"),
    ("vitmodel", "legacy_vitmodel"),
    ("vitcls", "current_vitcls"),
    ("vitcls", "legacy_vitcls"),
    ("vitcls", "current_vitcls_nohead"),
]


def fixture(name):
    return os.path.join(FIXTURES, name)


def images():
    return EXPECTED["images"].astype("float32")


def import_case(base, adapter, workdir, **kwargs):
    kwargs.setdefault("dataset", "synthetic_fundus")
    return peft.import_peft(fixture(base), fixture(adapter), workdir, **kwargs)


def test_transformers_vitmodel_checkpoint_matches_hf_hidden_states():
    """A `ViTModel` saved by transformers itself (no `vit.` prefix), through keras-hub."""
    model = vit_lora.build_vit_classifier(
        fixture("vitmodel"), num_classes=2, image_size=32, lora_rank=0
    )
    import keras

    pixels = model.get_layer("normalization")(images())
    tokens = model.get_layer("backbone")(pixels)
    diff = np.abs(keras.ops.convert_to_numpy(tokens) - EXPECTED["vitmodel_last_hidden_state"])
    assert diff.max() <= TOL, diff.max()


def test_transformers_vitcls_checkpoint_matches_hf_logits():
    model = vit_lora.build_vit_classifier(
        fixture("vitcls"), num_classes=2, image_size=32, lora_rank=0
    )
    # The head is new here; only the backbone comes from the checkpoint: put HF's head in.
    from safetensors.numpy import load_file

    hf = load_file(fixture("vitcls/model.safetensors"))
    head = model.get_layer("predictions")
    head.kernel.assign(hf["classifier.weight"].T)
    head.bias.assign(hf["classifier.bias"])
    diff = np.abs(peft.classifier_logits(model, images()) - EXPECTED["vitcls_base_logits"])
    assert diff.max() <= TOL, diff.max()


@pytest.mark.parametrize(("base", "adapter"), CASES)
def test_import_matches_peft_logits(base, adapter, tmp_path):
    record = import_case(base, adapter, tmp_path / "run")
    assert record["naming"] == adapter.split("_")[0]
    assert record["head_from"] == ("base" if adapter.endswith("nohead") else "adapter")
    assert (record["rank"], record["lora_alpha"], record["targets"]) == (4, 8.0, ["query", "value"])
    # An ordinary run folder: the trainer's own loader rebuilds the model from it.
    config, model = runs.load_run(str(tmp_path / "run"))
    assert (config.task, config.image_size, config.lora_layout) == ("binary", 32, "peft")
    diff = np.abs(peft.classifier_logits(model, images()) - EXPECTED[f"logits_{adapter}"])
    assert diff.max() <= TOL, (adapter, diff.max())


def test_import_records_the_hf_preprocessing(tmp_path):
    record = import_case("vitmodel", "legacy_vitmodel", tmp_path / "run")
    with open(tmp_path / "run" / peft.IMPORT_RECORD) as f:
        assert json.load(f) == json.loads(json.dumps(record))
    pre = record["trained_preprocessing"]
    assert pre["crop"] == "none" and pre["resize"] == [32, 32]
    assert pre["image_mean"] == pre["image_std"] == [0.5, 0.5, 0.5]
    assert pre["source"] == "preprocessor_config.json"
    # The spec the export serves with: HF's plain resize, normalisation inside the model.
    with open(tmp_path / "run" / peft.RUN_DATA) as f:
        run_data = json.load(f)
    assert run_data["preprocessing"]["crop"] == "none"
    assert run_data["preprocessing"]["stored_size"] == 32
    assert (run_data["task"], run_data["class_names"]) == ("binary", ["no_dr", "dr"])
    assert run_data["majority_class"] is None  # an imported adapter's training set is unknown

    config = runs.load_run(str(tmp_path / "run"))[0]
    assert runs.RunData.of_run(str(tmp_path / "run"), config).spec().crop == "none"
    import_case("vitmodel", "legacy_vitmodel", tmp_path / "run2", crop="fundus")
    with open(tmp_path / "run2" / peft.RUN_DATA) as f:
        assert json.load(f)["preprocessing"]["crop"] == "fundus"


def edited_adapter(tmp_path, edit_config=None, edit_tensors=None, source="current_vitmodel"):
    """A copy of a fixture adapter with its config and/or tensors changed."""
    from safetensors.numpy import load_file, save_file

    out = tmp_path / "edited"
    shutil.copytree(fixture(source), out)
    if edit_config:
        with open(out / peft.ADAPTER_CONFIG) as f:
            config = json.load(f)
        edit_config(config)
        with open(out / peft.ADAPTER_CONFIG, "w") as f:
            json.dump(config, f)
    if edit_tensors:
        tensors = load_file(str(out / peft.ADAPTER_WEIGHTS))
        edit_tensors(tensors)
        save_file(tensors, str(out / peft.ADAPTER_WEIGHTS))
    return out


def _drop_layer1_query(tensors):
    for key in [k for k in tensors if ".layers.1.attention.q_proj." in k]:
        del tensors[key]


def _add_mlp_lora(tensors):
    prefix = "base_model.model.vit.layers.0.mlp.fc1."
    tensors[prefix + "lora_A.weight"] = np.zeros((4, 48), "float32")
    tensors[prefix + "lora_B.weight"] = np.zeros((96, 4), "float32")


REFUSALS = {
    "dora": (lambda c: c.update(use_dora=True), None, "DoRA"),
    "rslora": (lambda c: c.update(use_rslora=True), None, "rsLoRA"),
    "bias_all": (lambda c: c.update(bias="all"), None, "bias='all'"),
    "bias_lora_only": (lambda c: c.update(bias="lora_only"), None, "bias='lora_only'"),
    "mlp_target": (lambda c: c.update(target_modules=["q_proj", "fc1"]), None, "fc1"),
    "regex_target": (lambda c: c.update(target_modules=".*proj"), None, "regex"),
    "mlp_tensor": (None, _add_mlp_lora, "non-attention"),
    "rank_mismatch": (lambda c: c.update(r=8), None, "rank mismatch"),
    "rank_pattern": (lambda c: c.update(rank_pattern={"q_proj": 8}), None, "per-layer"),
    "some_layers": (None, _drop_layer1_query, "every transformer block"),
    "extra_module": (lambda c: c.update(modules_to_save=["classifier", "ln"]), None, "ln"),
    "not_lora": (lambda c: c.update(peft_type="IA3"), None, "only LoRA"),
    # Issue 23 item 4: config and weights disagree (q and v weights, target_modules q only).
    "weights_beyond_targets": (
        lambda c: c.update(target_modules=["q_proj"]),
        None,
        "target_modules ['q_proj'] but adapter_model.safetensors holds LoRA on ['q_proj', "
        "'v_proj'] (weights for ['v_proj'] that PEFT would not apply)",
    ),
    "targets_without_weights": (
        lambda c: c.update(target_modules=["q_proj", "k_proj", "v_proj"]),
        None,
        "(no weights for ['k_proj'])",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refuses_what_it_cannot_represent_in_one_line(case, tmp_path):
    edit_config, edit_tensors, needle = REFUSALS[case]
    adapter = edited_adapter(tmp_path, edit_config, edit_tensors)
    with pytest.raises(peft.PeftFormatError) as err:
        peft.read_peft_adapter(adapter)
    message = str(err.value)
    assert needle in message and "\n" not in message, message
    assert str(adapter) in message


def test_refuses_an_adapter_for_another_base(tmp_path):
    """Layer count differs: a 2-block adapter cannot go onto a 3-block base."""
    from safetensors.numpy import load_file, save_file

    base = tmp_path / "base3"
    shutil.copytree(fixture("vitmodel"), base)
    with open(base / "config.json") as f:
        config = json.load(f)
    config["num_hidden_layers"] = 3
    with open(base / "config.json", "w") as f:
        json.dump(config, f)
    tensors = load_file(str(base / "model.safetensors"))
    for key in [k for k in tensors if k.startswith("encoder.layer.1.")]:
        tensors[key.replace("layer.1.", "layer.2.")] = tensors[key]
    save_file(tensors, str(base / "model.safetensors"))
    with pytest.raises(peft.PeftFormatError, match="LoRA on 2 blocks but the base has 3"):
        peft.import_peft(base, fixture("current_vitmodel"), tmp_path / "run")


def test_refuses_no_head_on_a_headless_base(tmp_path):
    with pytest.raises(peft.PeftFormatError, match="no classifier"):
        import_case("vitmodel", "current_vitcls_nohead", tmp_path / "run")


def test_refuses_pickled_weights(tmp_path):
    adapter = tmp_path / "bin"
    shutil.copytree(fixture("current_vitmodel"), adapter)
    os.rename(adapter / peft.ADAPTER_WEIGHTS, adapter / "adapter_model.bin")
    with pytest.raises(peft.PeftFormatError, match="pickle"):
        peft.read_peft_adapter(adapter)
    os.remove(adapter / "adapter_model.bin")
    with pytest.raises(FileNotFoundError, match="adapter_model.bin"):
        peft.read_peft_adapter(adapter)


# --------------------------------------------------------------------------------------------
# hf:// through a local Hugging Face cache, the CLI, a fresh process
# --------------------------------------------------------------------------------------------
def hf_cache(root, repos: dict) -> dict:
    """A directory laid out as huggingface_hub's cache, and the env that points at it offline.

    `repos` maps "org/name" -> a local folder whose files become the repo's `main` snapshot
    (`hub/models--org--name/{refs/main, blobs/<sha256>, snapshots/<commit>/<file> -> blob}`).
    """
    import hashlib

    hub = root / "hub"
    for repo, folder in repos.items():
        base = hub / ("models--" + repo.replace("/", "--"))
        commit = hashlib.sha1(repo.encode()).hexdigest()
        (base / "refs").mkdir(parents=True)
        (base / "refs" / "main").write_text(commit)
        (base / "blobs").mkdir()
        snapshot = base / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for name in os.listdir(folder):
            data = open(os.path.join(folder, name), "rb").read()
            blob = base / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            os.symlink(os.path.relpath(blob, snapshot), snapshot / name)
    return {
        "HF_HOME": str(root),
        "HF_HUB_CACHE": str(hub),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


FRESH_LOGITS = """
import json, sys
import numpy as np
from eyegazer_keras import runs
from eyegazer_keras.interop import peft
_, model = runs.load_run(sys.argv[1])
images = np.load(sys.argv[2])["images"].astype("float32")
print("LOGITS", json.dumps(peft.classifier_logits(model, images).tolist()))
"""


def run_python(args, env_extra, **kwargs):
    import subprocess
    import sys

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **env_extra)
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=300, **kwargs
    )


@pytest.mark.slow
def test_cli_import_from_hf_ids_offline_then_fresh_process_logits(tmp_path):
    env = hf_cache(
        tmp_path / "hf",
        {
            "google/vit-tiny-in21k": fixture("vitmodel"),
            "monsoon-nlp/eyegazer-vit-tiny": fixture("legacy_vitmodel"),
        },
    )
    workdir = tmp_path / "run"
    cli = ["-m", "eyegazer_keras.cli", "import-peft", "--workdir", str(workdir)]
    out = run_python(
        cli
        + [
            "--base",
            "hf://google/vit-tiny-in21k",
            "--adapter",
            "hf://monsoon-nlp/eyegazer-vit-tiny",
        ]
        + ["--dataset", "synthetic_fundus"],
        env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "legacy transformers naming" in out.stdout and "no fundus crop" in out.stdout
    with open(workdir / "config.json") as f:
        assert json.load(f)["backbone"] == "hf://google/vit-tiny-in21k"
    # A fresh process rebuilds the run from the (offline) cache and gives HF's logits.
    script = tmp_path / "logits.py"
    script.write_text(FRESH_LOGITS)
    out = run_python([str(script), str(workdir), os.path.join(FIXTURES, "expected.npz")], env)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("LOGITS "))
    logits = np.asarray(json.loads(line[len("LOGITS ") :]))
    diff = np.abs(logits - EXPECTED["logits_legacy_vitmodel"]).max()
    assert diff <= TOL, diff
    # A repo missing from the cache: one line, no traceback, no network.
    out = run_python(cli + ["--base", "hf://google/vit-tiny-in21k", "--adapter", "hf://a/b"], env)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("eyegazer import-peft: error: hf://a/b: no adapter_config.json"), last
    assert "HF_HUB_OFFLINE" in last


# --------------------------------------------------------------------------------------------
# export-peft without torch: file layout, round trip through our own import, refusals
# --------------------------------------------------------------------------------------------
def test_export_peft_writes_current_naming_and_reimports_exactly(tmp_path):
    from safetensors.numpy import load_file

    import_case("vitmodel", "legacy_vitmodel", tmp_path / "run")
    record = peft.export_peft(tmp_path / "run", tmp_path / "out")
    with open(tmp_path / "out" / peft.ADAPTER_CONFIG) as f:
        config = json.load(f)
    assert config["base_model_name_or_path"] == fixture("vitmodel")
    assert (config["r"], config["lora_alpha"], config["target_modules"]) == (
        4,
        8,
        ["q_proj", "v_proj"],
    )
    assert config["modules_to_save"] == ["classifier"] and config["bias"] == "none"
    assert record["trained_preprocessing"]["crop"] == "none"
    exported = load_file(str(tmp_path / "out" / peft.ADAPTER_WEIGHTS))
    current = load_file(fixture("current_vitmodel/adapter_model.safetensors"))
    assert sorted(exported) == sorted(current)  # the names current PEFT itself writes
    for key, value in current.items():
        np.testing.assert_allclose(exported[key], value, rtol=0, atol=0)
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "PeftModel.from_pretrained" in readme and "NOT a medical device" in readme


def _fake_run(tmp_path, backbone, **build):
    """A run folder (config.json + adapter.npz) for a model built from `backbone`."""
    from eyegazer_keras.configs import settings as configs

    build.setdefault("lora_rank", 4)
    model = vit_lora.build_vit_classifier(
        backbone,
        num_classes=2,
        image_size=32,
        backbone_config=dict(patch_size=8, num_layers=2, num_heads=4, hidden_dim=48, mlp_dim=96),
        **build,
    )
    run = tmp_path / "fake_run"
    run.mkdir()
    config = configs.TrainConfig(task="binary", image_size=32, backbone=str(backbone))
    (run / "config.json").write_text(json.dumps(configs.to_dict(config)))
    vit_lora.save_adapter(model, run / "adapter.npz")
    return run, model


@pytest.mark.parametrize(
    ("make_backbone", "build", "needle"),
    [
        (lambda p: "config", {}, "randomly initialised ViT"),
        (lambda p: _saved_preset(p), {}, "has no Hugging Face original"),
        (lambda p: fixture("vitmodel"), {"pooling": "gap"}, "pooling='gap'"),
        (lambda p: fixture("vitmodel"), {"lora_rank": 0}, "full fine-tuning"),
        (lambda p: fixture("vitmodel"), {"lora_targets": ("query", "dense_1")}, "dense_1"),
    ],
)
def test_export_peft_refuses_runs_it_cannot_write(make_backbone, build, needle, tmp_path):
    run, _ = _fake_run(tmp_path, make_backbone(tmp_path), **build)
    with pytest.raises(peft.PeftFormatError, match=needle) as err:
        peft.export_peft(run, tmp_path / "out")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def _saved_preset(tmp_path):
    import keras_hub

    backbone = keras_hub.models.ViTBackbone(
        image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=4, hidden_dim=48, mlp_dim=96
    )
    backbone.save_to_preset(str(tmp_path / "preset"))
    return str(tmp_path / "preset")


def test_keras_preset_names_export_with_their_hf_origin(tmp_path):
    """A run on `vit_large_patch16_224_imagenet21k` names google/vit-large-patch16-224-in21k."""
    run, _ = _fake_run(tmp_path, fixture("vitmodel"))
    with np.load(run / "adapter.npz") as data:
        arrays = dict(data)
    metadata = json.loads(str(arrays.pop("__metadata__")))
    metadata["build"]["backbone"] = {
        "type": "keras_preset",
        "preset": "vit_large_patch16_224_imagenet21k",
    }
    arrays["__metadata__"] = np.array(json.dumps(metadata))
    np.savez(run / "adapter.npz", **arrays)
    record = peft.export_peft(run, tmp_path / "out")
    assert record["base_model_name_or_path"] == "google/vit-large-patch16-224-in21k"


def test_keras_layout_exports_exactly_as_a_larger_rank(tmp_path):
    """Keras-core LoRA (A per head) = rank heads*r PEFT LoRA: same merged update, exactly."""
    from safetensors.numpy import load_file

    run, model = _fake_run(tmp_path, fixture("vitmodel"), lora_layout="keras", lora_alpha=6)
    rng = np.random.default_rng(0)
    for v in model.trainable_weights:
        v.assign(rng.standard_normal(v.shape).astype("float32"))
    vit_lora.save_adapter(model, run / "adapter.npz")
    record = peft.export_peft(run, tmp_path / "out")
    assert (record["rank"], record["lora_alpha"]) == (16, 24.0)  # 4 heads x (r=4, alpha=6)
    tensors = load_file(str(tmp_path / "out" / peft.ADAPTER_WEIGHTS))
    prefix = "base_model.model.vit.layers.1.attention.q_proj."
    delta = (24 / 16) * tensors[prefix + "lora_B.weight"] @ tensors[prefix + "lora_A.weight"]
    import keras

    query = next(
        layer
        for layer in model.get_layer("backbone")._flatten_layers()
        if layer.name == "query" and "transformer_block_2/" in layer.lora_kernel_a.path
    )

    merged = keras.ops.convert_to_numpy(query.kernel) - keras.ops.convert_to_numpy(query._kernel)
    np.testing.assert_allclose(delta.T, merged.reshape(48, 48), atol=1e-5)


def test_crop_none_reproduces_vitimageprocessor():
    """`PreprocessingSpec(crop="none")` vs transformers' ViTImageProcessor on a 64x48 PNG."""
    import tensorflow as tf

    from eyegazer_keras import fundus

    raw = tf.io.read_file(fixture("photo.png"))
    spec = fundus.PreprocessingSpec(stored_size=32, crop="none")
    ours = fundus.photo_to_model_input(fundus.decode_image(raw), 32, spec).numpy()
    hf = EXPECTED["photo_pixel_values"][0].transpose(1, 2, 0) * 127.5 + 127.5  # back to 0..255
    diff = np.abs(ours - hf)
    assert diff.max() <= 1.0 + 1e-4, diff.max()  # at most one grey level (rounding)
    assert diff.mean() <= 0.05, diff.mean()
    # The fundus crop is a different input: the check can tell them apart.
    cropped = fundus.photo_to_model_input(
        fundus.decode_image(raw), 32, fundus.PreprocessingSpec(stored_size=32, crop="fundus")
    ).numpy()
    assert np.abs(cropped - hf).mean() > 1.0


def test_import_onto_a_local_keras_preset_dir(tmp_path):
    """The same HF ViT saved as a keras-hub preset (`save_to_preset`) is a valid base too."""
    model = vit_lora.build_vit_classifier(
        fixture("vitmodel"), num_classes=2, image_size=32, lora_rank=0
    )
    model.get_layer("backbone").save_to_preset(str(tmp_path / "preset"))
    record = peft.import_peft(
        tmp_path / "preset", fixture("legacy_vitmodel"), tmp_path / "run", dataset="x"
    )
    assert record["base_kind"] == "keras_preset"
    _, imported = runs.load_run(str(tmp_path / "run"))
    diff = np.abs(peft.classifier_logits(imported, images()) - EXPECTED["logits_legacy_vitmodel"])
    assert diff.max() <= TOL, diff.max()
    with pytest.raises(peft.PeftFormatError, match="has no Hugging Face original"):
        peft.export_peft(tmp_path / "run", tmp_path / "out")


def test_evaluate_an_imported_run(tiny_data_dir, tmp_path):
    """`eyegazer evaluate` works on an imported run, unchanged (here on the tiny synthetic set)."""
    import_case(
        "vitmodel",
        "legacy_vitmodel",
        tmp_path / "run",
        dataset="synthetic_fundus",
        dataset_config="tiny",
        data_dir=tiny_data_dir,
    )
    m = runs.evaluate_run(str(tmp_path / "run"), "validation")
    assert m["n"] == 24 and m["task"] == "binary"
    assert (tmp_path / "run" / "metrics_validation.json").exists()


SAVEDMODEL_LOGPROBS = """
import io, json, sys
import numpy as np
import tensorflow as tf
from PIL import Image
loaded = tf.saved_model.load(sys.argv[1])
images = np.load(sys.argv[2])["images"]
out = {}
tensor = loaded.signatures["serving_images"](images=tf.constant(images))
out["images"] = np.log(tensor["probabilities"].numpy()).tolist()
pngs = []
for image in images:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    pngs.append(buf.getvalue())
raw = loaded.signatures["serving_default"](image_bytes=tf.constant(pngs))
out["bytes"] = np.log(raw["probabilities"].numpy()).tolist()
meta = json.loads(loaded.signatures["metadata"]()["metadata_json"].numpy().decode())
out["crop"] = json.dumps(meta, sort_keys=True).count('"crop": "none"')
out["gradable"] = [bool(x) for x in raw["gradable"].numpy().ravel()]
print("OUT", json.dumps(out))
"""


@pytest.mark.slow
def test_imported_run_exports_a_savedmodel_with_hf_preprocessing(tmp_path):
    """`eyegazer export` of an imported run, reloaded in a fresh process: HF's log-softmax."""
    import_case(
        "vitcls", "legacy_vitcls", tmp_path / "run", dataset="aptos2019"
    )  # not prepared: export needs no data
    out = run_python(
        [
            "-m",
            "eyegazer_keras.cli",
            "export",
            "--workdir",
            str(tmp_path / "run"),
            "--output",
            str(tmp_path / "export"),
        ],
        {},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    script = tmp_path / "sm.py"
    script.write_text(SAVEDMODEL_LOGPROBS)
    out = run_python(
        [str(script), str(tmp_path / "export"), os.path.join(FIXTURES, "expected.npz")], {}
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(next(x for x in out.stdout.splitlines() if x.startswith("OUT "))[4:])
    logits = EXPECTED["logits_legacy_vitcls"]
    expected = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))  # log-softmax
    for endpoint in ("images", "bytes"):
        diff = np.abs(np.asarray(result[endpoint]) - expected).max()
        assert diff <= TOL, (endpoint, diff)
    assert result["crop"] >= 1  # the metadata says which preprocessing the export applies
    assert all(result["gradable"]), result["gradable"]  # graded, not refused by the gate
