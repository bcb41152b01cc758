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

from eyegazer_keras import train
from eyegazer_keras.interop import peft
from eyegazer_keras.models import vit_lora

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "hf")
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
    config, model = train.load_run(str(tmp_path / "run"))
    assert (config.label_mode, config.image_size, config.lora_layout) == ("binary", 32, "peft")
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
