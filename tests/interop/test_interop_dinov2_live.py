"""DINOv2 round trips through the real transformers + peft (skipped where they are not installed).

* train here on a tiny HF ``Dinov2Model`` -> `export-peft` -> ``PeftModel.from_pretrained`` on
  ``Dinov2ForImageClassification`` -> the same logits (both LoRA layouts; class-token+mean and
  class-token pooling);
* a PEFT adapter made now by `peft` on ``Dinov2WithRegistersForImageClassification`` (LoRA on
  q/k/v/o) -> `import-peft` -> the same logits.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft_lib = pytest.importorskip("peft")

from eyegazer_keras import runs  # noqa: E402
from eyegazer_keras.configs import settings as configs  # noqa: E402
from eyegazer_keras.interop import peft  # noqa: E402
from eyegazer_keras.runs import train  # noqa: E402
from tests.conftest import tiny_train_overrides  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "hf_dinov2")
DINOV2MODEL = os.path.join(FIXTURES, "dinov2model")
DINOV2REG = os.path.join(FIXTURES, "dinov2reg")
IMAGES = np.load(os.path.join(FIXTURES, "expected.npz"))["images"]
TOL = 1e-4


def hf_logits(model, images=IMAGES, base=DINOV2MODEL):
    with open(os.path.join(base, "preprocessor_config.json")) as f:
        processor = json.load(f)
    mean = np.asarray(processor["image_mean"], "float32")
    std = np.asarray(processor["image_std"], "float32")
    x = (images.astype("float32") / 255.0 - mean) / std
    model.eval()
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).logits.numpy()


def peft_model(adapter_dir):
    from transformers import Dinov2ForImageClassification

    hf = Dinov2ForImageClassification.from_pretrained(DINOV2MODEL, num_labels=2)
    return peft_lib.PeftModel.from_pretrained(hf, adapter_dir)


@pytest.mark.slow
@pytest.mark.parametrize(("pooling", "layout"), [("token_gap", "peft"), ("token", "keras")])
def test_train_here_export_peft_load_in_peft(pooling, layout, tiny_data_dir, tmp_path):
    config = configs.apply_overrides(
        configs.get_config("demo"),
        tiny_train_overrides(
            tiny_data_dir,
            backbone=DINOV2MODEL,
            image_size=42,  # the checkpoint's position grid: no interpolation on either side
            task="binary",
            lora_layout=layout,
            pooling=pooling,
            learning_rate=0.05,  # move LoRA B away from its zero init in one short epoch
        ),
    )
    workdir = str(tmp_path / "run")
    train.run_training(config, workdir)
    _, model = runs.load_run(workdir)
    ours = peft.classifier_logits(model, IMAGES.astype("float32"))

    out = tmp_path / "peft"
    record = peft.export_peft(workdir, out)
    assert record["base_model_class"] == "Dinov2ForImageClassification"
    assert record["rank"] == (4 * 2 if layout == "keras" else 4)  # the tiny model has 2 heads
    theirs = hf_logits(peft_model(str(out)))
    diff = np.abs(ours - theirs).max()
    assert diff <= TOL, (pooling, layout, diff)
    # The LoRA really trained (B starts at zero), so the comparison covers it.
    from safetensors.numpy import load_file

    tensors = load_file(str(out / peft.ADAPTER_WEIGHTS))
    assert max(float(np.abs(v).max()) for k, v in tensors.items() if "lora_B" in k) > 1e-3


@pytest.mark.slow
def test_peft_adapter_on_all_attention_projections_with_registers_imports_exactly(tmp_path):
    from transformers import Dinov2WithRegistersForImageClassification

    hf = Dinov2WithRegistersForImageClassification.from_pretrained(DINOV2REG)
    config = peft_lib.LoraConfig(
        r=3,
        lora_alpha=5,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        modules_to_save=["classifier"],
    )
    model = peft_lib.get_peft_model(hf, config)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                param.copy_(0.2 * torch.randn_like(param))
    adapter = tmp_path / "adapter"
    model.save_pretrained(str(adapter))
    expected = hf_logits(model, base=DINOV2REG)

    record = peft.import_peft(DINOV2REG, adapter, tmp_path / "run", dataset="synthetic_fundus")
    assert record["targets"] == ["query", "key", "value", "attention_output"]
    _, ours = runs.load_run(str(tmp_path / "run"))
    diff = np.abs(peft.classifier_logits(ours, IMAGES.astype("float32")) - expected).max()
    assert diff <= TOL, diff
    # And back: the exported adapter loads in PEFT onto the same base, same logits.
    peft.export_peft(tmp_path / "run", tmp_path / "out")
    back = peft_lib.PeftModel.from_pretrained(
        Dinov2WithRegistersForImageClassification.from_pretrained(DINOV2REG), tmp_path / "out"
    )
    assert np.abs(hf_logits(back, base=DINOV2REG) - expected).max() <= TOL
