"""Round trips through the real transformers + peft (skipped where they are not installed).

* train here -> `export-peft` -> `PeftModel.from_pretrained` -> the same logits (both LoRA
  layouts: the PEFT one, and the Keras-core one written exactly as a rank heads*r LoRA);
* a PEFT adapter made now by `peft` (LoRA on q/k/v/o) -> `import-peft` -> the same logits.
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

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "hf")
VITMODEL = os.path.join(FIXTURES, "vitmodel")
IMAGES = np.load(os.path.join(FIXTURES, "expected.npz"))["images"]
TOL = 1e-4


def hf_logits(model, images=IMAGES):
    x = (images.astype("float32") / 255.0 - 0.5) / 0.5
    model.eval()
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).logits.numpy()


def peft_model(adapter_dir, base=VITMODEL):
    from transformers import ViTForImageClassification

    hf = ViTForImageClassification.from_pretrained(base, num_labels=2)
    return peft_lib.PeftModel.from_pretrained(hf, adapter_dir)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["peft", "keras"])
def test_train_here_export_peft_load_in_peft(layout, tiny_data_dir, tmp_path):
    config = configs.apply_overrides(
        configs.get_config("demo"),
        tiny_train_overrides(
            tiny_data_dir,
            backbone=VITMODEL,
            task="binary",
            lora_layout=layout,
            pooling="token",
            learning_rate=0.05,  # move LoRA B away from its zero init in one short epoch
        ),
    )
    workdir = str(tmp_path / "run")
    train.run_training(config, workdir)
    _, model = runs.load_run(workdir)
    ours = peft.classifier_logits(model, IMAGES.astype("float32"))

    out = tmp_path / "peft"
    record = peft.export_peft(workdir, out)
    with open(out / peft.ADAPTER_CONFIG) as f:
        adapter_config = json.load(f)
    assert adapter_config["base_model_name_or_path"] == VITMODEL
    heads = 4 if layout == "keras" else 1
    assert (record["rank"], adapter_config["r"]) == (4 * heads, 4 * heads)
    theirs = hf_logits(peft_model(str(out)))
    diff = np.abs(ours - theirs).max()
    assert diff <= TOL, (layout, diff)
    # The LoRA really trained (B starts at zero), so the comparison covers it.
    lora_b = [v for k, v in _tensors(out).items() if "lora_B" in k]
    assert max(float(np.abs(b).max()) for b in lora_b) > 1e-3


def _tensors(path):
    from safetensors.numpy import load_file

    return load_file(str(path / peft.ADAPTER_WEIGHTS))


@pytest.mark.slow
def test_peft_adapter_on_all_attention_projections_imports_exactly(tmp_path):
    from transformers import ViTForImageClassification

    torch.manual_seed(3)
    hf = ViTForImageClassification.from_pretrained(VITMODEL, num_labels=2)
    config = peft_lib.LoraConfig(
        r=3,
        lora_alpha=5,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        modules_to_save=["classifier"],
    )
    model = peft_lib.get_peft_model(hf, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                param.copy_(0.2 * torch.randn_like(param))
    adapter = tmp_path / "adapter"
    model.save_pretrained(str(adapter))
    expected = hf_logits(model)

    record = peft.import_peft(VITMODEL, adapter, tmp_path / "run", dataset="synthetic_fundus")
    assert record["targets"] == ["query", "key", "value", "attention_output"]
    _, ours = runs.load_run(str(tmp_path / "run"))
    diff = np.abs(peft.classifier_logits(ours, IMAGES.astype("float32")) - expected).max()
    assert diff <= TOL, diff
