"""Regenerates `tests/fixtures/hf/` with the real Hugging Face libraries (no network).

(The DINOv2 fixtures, `tests/fixtures/hf_dinov2/`, come from `tests/make_hf_dinov2_fixtures.py`.)

Two runs, one per key naming, each in an environment with that naming's libraries:

    # current naming: transformers 5 + peft 0.21 (`pip install -e ".[hf]"`)
    python tests/make_hf_fixtures.py
    # legacy naming (the published eyegazer-vit-binary adapter's): transformers 4.57 + peft 0.17
    python3.11 -m venv /tmp/hf-legacy && /tmp/hf-legacy/bin/pip install torch==2.13.0 \
        transformers==4.57.6 peft==0.17.1 numpy safetensors pillow
    /tmp/hf-legacy/bin/python tests/make_hf_fixtures.py

The current run writes, from a fixed seed:

* `vitmodel/`: a tiny `ViTModel` checkpoint (32 px, patch 8, 2 layers, hidden 48, 4 heads; the
  in21k layout: no `vit.` prefix, no classifier) + `preprocessor_config.json`
  (`ViTImageProcessor`, size 32, mean = std = 0.5);
* `vitcls/`: a tiny `ViTForImageClassification` checkpoint (2 labels);
* `current_vitmodel/`, `current_vitcls/`: PEFT LoRA adapters (r=4, alpha=8, q_proj/v_proj,
  `modules_to_save=["classifier"]`) with random non-zero A/B and head, saved by
  `PeftModel.save_pretrained`; `current_vitcls_nohead/`: the same without `modules_to_save`
  (the head comes from the base);
* `expected.npz`: the input images (`uint8 [2, 32, 32, 3]`), HF's outputs on them (base
  `last_hidden_state`, base logits, and `PeftModel.from_pretrained` logits per adapter), and
  `ViTImageProcessor`'s `pixel_values` for `photo.png` (64x48, not square).

The legacy run re-creates the same LoRA weights (read from `current_*`) under transformers 4's
module names (`...encoder.layer.{i}.attention.attention.{query,value}`), saves them with PEFT
0.17 into `legacy_vitmodel/` and `legacy_vitcls/`, and adds those adapters' logits, computed by
the old libraries, to `expected.npz` as `logits_legacy_*`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from PIL import Image
from safetensors.numpy import load_file
from transformers import (
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
    ViTModel,
)

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "hf")
SIZE = 32
VIT = dict(
    image_size=SIZE,
    patch_size=8,
    num_hidden_layers=2,
    num_attention_heads=4,
    hidden_size=48,
    intermediate_size=96,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
RANK, ALPHA = 4, 8
CURRENT = int(transformers.__version__.split(".")[0]) >= 5
TARGETS = ["q_proj", "v_proj"] if CURRENT else ["query", "value"]


def _path(*parts):
    return os.path.join(HERE, *parts)


def _images():
    """A fundus-like disc (orange, with dark 'vessels') and uniform noise, both sharp enough
    to pass the export's quality gate (`fundus.assess_quality`)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    inside = (yy - 15.5) ** 2 + (xx - 15.5) ** 2 <= 15.5**2
    disc = np.where(inside[..., None], [[[210, 110, 50]]], 0)
    vessels = inside & (((xx + yy) % 7 == 0) | ((xx - yy) % 9 == 0))
    disc = np.where(vessels[..., None], [[[90, 30, 20]]], disc)
    noise = rng.integers(0, 256, (SIZE, SIZE, 3))
    return np.stack([disc, noise]).clip(0, 255).astype("uint8")


def _pixel_values(images):
    """ViTImageProcessor's rescale + normalise (mean = std = 0.5) on already-sized images."""
    x = images.astype("float32") / 255.0
    return torch.from_numpy(((x - 0.5) / 0.5).transpose(0, 3, 1, 2).copy())


def _logits(model, images):
    model.eval()
    with torch.no_grad():
        return model(pixel_values=_pixel_values(images)).logits.numpy()


def _fresh_dir(name):
    path = _path(name)
    shutil.rmtree(path, ignore_errors=True)
    return path


def _cls_from(base_dir):
    torch.manual_seed(123)  # the random head of a ViTModel base, before PEFT replaces it
    return ViTForImageClassification.from_pretrained(base_dir, num_labels=2)


def _save_adapter(model, name, lora_values, head):
    """Sets LoRA A/B (and the head) of a PeftModel and saves it."""
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if ".lora_A." in pname or ".lora_B." in pname:
                param.copy_(torch.from_numpy(lora_values(pname, tuple(param.shape))))
            elif head is not None and "classifier" in pname and "modules_to_save" in pname:
                param.copy_(torch.from_numpy(head[pname.rsplit(".", 1)[-1]]))
    out = _fresh_dir(name)
    model.save_pretrained(out)
    with open(os.path.join(out, "adapter_config.json")) as f:
        config = json.load(f)
    config["base_model_name_or_path"] = "vitmodel" if "vitmodel" in name else "vitcls"
    with open(os.path.join(out, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    for extra in ("README.md",):
        if os.path.exists(os.path.join(out, extra)):
            os.remove(os.path.join(out, extra))
    return out


def _peft_logits(base_name, adapter_dir, images):
    base = _cls_from(_path(base_name)) if base_name == "vitmodel" else _load_cls(base_name)
    return _logits(PeftModel.from_pretrained(base, adapter_dir), images)


def _load_cls(name):
    return ViTForImageClassification.from_pretrained(_path(name))


def make_current():
    os.makedirs(HERE, exist_ok=True)
    images = _images()
    expected = {"images": images}

    torch.manual_seed(0)
    vitmodel = ViTModel(ViTConfig(**VIT), add_pooling_layer=False)
    vitmodel.save_pretrained(_fresh_dir("vitmodel"))
    processor = ViTImageProcessor(size={"height": SIZE, "width": SIZE})
    processor.save_pretrained(_path("vitmodel"))
    vitmodel.eval()
    with torch.no_grad():
        out = vitmodel(pixel_values=_pixel_values(images))
    expected["vitmodel_last_hidden_state"] = out.last_hidden_state.numpy()

    torch.manual_seed(1)
    vitcls = ViTForImageClassification(ViTConfig(**VIT, num_labels=2))
    vitcls.save_pretrained(_fresh_dir("vitcls"))
    processor.save_pretrained(_path("vitcls"))
    expected["vitcls_base_logits"] = _logits(vitcls, images)

    rng = np.random.default_rng(7)

    def lora_values(_name, shape):
        return (0.2 * rng.standard_normal(shape)).astype("float32")

    for base_name, load in (("vitmodel", _cls_from), ("vitcls", _load_cls)):
        for head in (True, False):
            if base_name == "vitmodel" and not head:
                continue  # a ViTModel base has no head of its own
            base = load(_path(base_name)) if base_name == "vitmodel" else load(base_name)
            config = LoraConfig(
                r=RANK,
                lora_alpha=ALPHA,
                target_modules=TARGETS,
                modules_to_save=["classifier"] if head else None,
                bias="none",
            )
            model = get_peft_model(base, config)
            head_values = {
                "weight": (0.3 * rng.standard_normal((2, VIT["hidden_size"]))).astype("float32"),
                "bias": np.array([0.1, -0.2], "float32"),
            }
            name = f"current_{base_name}" + ("" if head else "_nohead")
            adapter = _save_adapter(model, name, lora_values, head_values if head else None)
            expected[f"logits_{name}"] = _peft_logits(base_name, adapter, images)

    photo = np.zeros((48, 64, 3), "uint8")
    photo[8:40, 16:48] = [200, 90, 40]
    photo[20:28, 28:36] = [255, 255, 255]
    Image.fromarray(photo).save(_path("photo.png"))
    pixels = processor(Image.open(_path("photo.png")), return_tensors="np")["pixel_values"]
    expected["photo_pixel_values"] = pixels.astype("float32")
    np.savez(_path("expected.npz"), **expected)
    _write_versions("current")


def _legacy_key(key):
    """Current adapter key -> the same parameter under transformers 4's module names."""
    key = key.replace(".vit.layers.", ".vit.encoder.layer.")
    key = key.replace(".attention.q_proj.", ".attention.attention.query.")
    return key.replace(".attention.v_proj.", ".attention.attention.value.")


def make_legacy():
    expected = dict(np.load(_path("expected.npz")))
    images = expected["images"]
    for base_name in ("vitmodel", "vitcls"):
        current = load_file(_path(f"current_{base_name}", "adapter_model.safetensors"))
        by_legacy = {_legacy_key(k): v for k, v in current.items()}
        base = _cls_from(_path(base_name)) if base_name == "vitmodel" else _load_cls(base_name)
        config = LoraConfig(
            r=RANK,
            lora_alpha=ALPHA,
            target_modules=TARGETS,
            modules_to_save=["classifier"],
            bias="none",
        )
        model = get_peft_model(base, config)

        def lora_values(pname, shape, by_legacy=by_legacy):
            key = pname.replace(".default.weight", ".weight")
            value = by_legacy[key]
            assert value.shape == shape, (pname, value.shape, shape)
            return value

        head = {
            "weight": by_legacy["base_model.model.classifier.weight"],
            "bias": by_legacy["base_model.model.classifier.bias"],
        }
        adapter = _save_adapter(model, f"legacy_{base_name}", lora_values, head)
        saved = load_file(os.path.join(adapter, "adapter_model.safetensors"))
        if sorted(saved) != sorted(by_legacy):
            sys.exit(f"legacy keys differ from the renamed current keys: {sorted(saved)}")
        expected[f"logits_legacy_{base_name}"] = _peft_logits(base_name, adapter, images)
    np.savez(_path("expected.npz"), **expected)
    _write_versions("legacy")


def _write_versions(kind):
    import peft

    path = _path("versions.json")
    versions = {}
    if os.path.exists(path):
        with open(path) as f:
            versions = json.load(f)
    versions[kind] = {
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "torch": torch.__version__.split("+")[0],
    }
    with open(path, "w") as f:
        json.dump(versions, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    make_current() if CURRENT else make_legacy()
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(HERE) for f in files)
    print(f"fixtures in {HERE}: {total / 1024:.0f} KiB")
