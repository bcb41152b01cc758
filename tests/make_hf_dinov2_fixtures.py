"""Regenerates `tests/fixtures/hf_dinov2/` with the real Hugging Face libraries (no network).

    # current naming: transformers 5 + peft 0.21 (`pip install -e ".[hf]"`; torch CPU)
    python tests/make_hf_dinov2_fixtures.py
    # legacy naming: transformers 4.57 + peft 0.17, after the current run
    python3.11 -m venv /tmp/hf-legacy && /tmp/hf-legacy/bin/pip install torch==2.13.0 \
        transformers==4.57.6 peft==0.17.1 numpy safetensors pillow
    /tmp/hf-legacy/bin/python tests/make_hf_dinov2_fixtures.py

From fixed seeds it writes tiny DINOv2s (42 px, patch 14: a 3x3 position grid; hidden 24,
2 heads, 2 layers, MLP ratio 2), their weights moved off HF's near-zero init so that the logits
tell models apart:

* `dinov2model/`: a `Dinov2Model` checkpoint (no classifier, keys without `dinov2.`) +
  `preprocessor_config.json` (`BitImageProcessor`: ImageNet mean/std, crop 42);
* `dinov2cls/`: a `Dinov2ForImageClassification` (2 labels; its classifier reads
  concat(class token, mean of patch tokens): 2 * hidden features);
* `dinov2reg/`: a `Dinov2WithRegistersForImageClassification` (2 register tokens, 5 labels);
* PEFT LoRA adapters (r=4, alpha=8, target_modules q_proj/v_proj, random non-zero A/B) saved by
  `PeftModel.save_pretrained`: `current_dinov2model` (on `Dinov2ForImageClassification.
  from_pretrained(dinov2model, num_labels=2)`, head in `modules_to_save`), `current_dinov2cls`
  (head saved), `current_dinov2cls_nohead` (head from the base), `current_dinov2reg` (head saved);
* `expected.npz`: `images` (`uint8 [2, 42, 42, 3]`), HF's outputs on them (`dinov2model`
  `last_hidden_state`, base logits of `dinov2cls` and `dinov2reg`, and
  `PeftModel.from_pretrained` logits per adapter as `logits_<adapter>`), plus `images_28`
  (`uint8 [2, 28, 28, 3]`) and `logits_current_dinov2cls_28`: HF at 28 px, where torch's bicubic
  interpolates the 3x3 position grid to 2x2 (`models.dinov2_position` does the same in numpy).

The legacy run re-creates `current_dinov2cls`'s LoRA weights under transformers 4's module names
(``dinov2.encoder.layer.{i}.attention.attention.{query,value}``), saves them with PEFT 0.17 into
`legacy_dinov2cls/` and adds that adapter's logits, computed by the old libraries, to
`expected.npz` as `logits_legacy_dinov2cls`.

The images go in as `BitImageProcessor` would normalise them after its resize/crop (already at
size): ``(x / 255 - mean) / std`` with ImageNet mean/std.
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
from safetensors.numpy import load_file
from transformers import (
    BitImageProcessor,
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2Model,
)

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "hf_dinov2")
SIZE = 42
DINOV2 = dict(
    image_size=SIZE,
    patch_size=14,
    num_hidden_layers=2,
    num_attention_heads=2,
    hidden_size=24,
    mlp_ratio=2,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    drop_path_rate=0.0,
)
RANK, ALPHA = 4, 8
CURRENT = int(transformers.__version__.split(".")[0]) >= 5
TARGETS = ["q_proj", "v_proj"] if CURRENT else ["query", "value"]
MEAN = np.array([0.485, 0.456, 0.406], "float32")
STD = np.array([0.229, 0.224, 0.225], "float32")


def _path(*parts):
    return os.path.join(HERE, *parts)


def _fresh_dir(name):
    path = _path(name)
    shutil.rmtree(path, ignore_errors=True)
    return path


def _images(size, seed):
    """A fundus-like disc with dark 'vessels' and uniform noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    c = (size - 1) / 2
    inside = (yy - c) ** 2 + (xx - c) ** 2 <= c**2
    disc = np.where(inside[..., None], [[[210, 110, 50]]], 0)
    vessels = inside & (((xx + yy) % 7 == 0) | ((xx - yy) % 9 == 0))
    disc = np.where(vessels[..., None], [[[90, 30, 20]]], disc)
    noise = rng.integers(0, 256, (size, size, 3))
    return np.stack([disc, noise]).clip(0, 255).astype("uint8")


def _pixel_values(images):
    x = (images.astype("float32") / 255.0 - MEAN) / STD
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def _logits(model, images):
    model.eval()
    with torch.no_grad():
        return model(pixel_values=_pixel_values(images)).logits.numpy()


def _perturb(model, seed):
    """Moves every weight off HF's tiny init (std 0.02), the mask token aside."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "mask_token" in name:
                continue
            param.add_(0.15 * torch.randn(param.shape, generator=gen))


def _processor():
    return BitImageProcessor(
        size={"shortest_edge": SIZE},
        crop_size={"height": SIZE, "width": SIZE},
        image_mean=MEAN.tolist(),
        image_std=STD.tolist(),
    )


def _save_base(model, name):
    out = _fresh_dir(name)
    model.save_pretrained(out)
    _processor().save_pretrained(out)
    return out


def _load_base(name, num_labels):
    """The model `PeftModel.from_pretrained` goes onto (a seeded head for a headless base)."""
    if name == "dinov2reg":
        from transformers import Dinov2WithRegistersForImageClassification

        return Dinov2WithRegistersForImageClassification.from_pretrained(_path(name))
    torch.manual_seed(123)
    return Dinov2ForImageClassification.from_pretrained(_path(name), num_labels=num_labels)


def _save_adapter(name, base_name, num_labels, head, rng):
    model = get_peft_model(
        _load_base(base_name, num_labels),
        LoraConfig(
            r=RANK,
            lora_alpha=ALPHA,
            target_modules=TARGETS,
            modules_to_save=["classifier"] if head else None,
            bias="none",
        ),
    )
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if ".lora_A." in pname or ".lora_B." in pname:
                value = 0.3 * rng.standard_normal(tuple(param.shape))
            elif head and "classifier" in pname and "modules_to_save" in pname:
                value = 0.3 * rng.standard_normal(tuple(param.shape))
            else:
                continue
            param.copy_(torch.from_numpy(value.astype("float32")))
    out = _fresh_dir(name)
    model.save_pretrained(out)
    with open(os.path.join(out, "adapter_config.json")) as f:
        config = json.load(f)
    config["base_model_name_or_path"] = base_name  # not this machine's path
    with open(os.path.join(out, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    if os.path.exists(os.path.join(out, "README.md")):
        os.remove(os.path.join(out, "README.md"))
    return out


def _peft_logits(adapter_dir, base_name, num_labels, images):
    model = PeftModel.from_pretrained(_load_base(base_name, num_labels), adapter_dir)
    return _logits(model, images)


def make():
    os.makedirs(HERE, exist_ok=True)
    images, images_28 = _images(SIZE, 0), _images(28, 1)
    expected = {"images": images, "images_28": images_28}

    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(**DINOV2))
    _perturb(model, 0)
    _save_base(model, "dinov2model")
    model.eval()
    with torch.no_grad():
        hidden = model(pixel_values=_pixel_values(images)).last_hidden_state
    expected["dinov2model_last_hidden_state"] = hidden.numpy()

    torch.manual_seed(1)
    cls = Dinov2ForImageClassification(Dinov2Config(**DINOV2, num_labels=2))
    _perturb(cls, 1)
    _save_base(cls, "dinov2cls")
    expected["dinov2cls_base_logits"] = _logits(cls, images)

    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersForImageClassification

    torch.manual_seed(2)
    reg = Dinov2WithRegistersForImageClassification(
        Dinov2WithRegistersConfig(**DINOV2, num_register_tokens=2, num_labels=5)
    )
    _perturb(reg, 2)
    _save_base(reg, "dinov2reg")
    expected["dinov2reg_base_logits"] = _logits(reg, images)

    rng = np.random.default_rng(7)
    cases = [
        ("current_dinov2model", "dinov2model", 2, True),
        ("current_dinov2cls", "dinov2cls", 2, True),
        ("current_dinov2cls_nohead", "dinov2cls", 2, False),
        ("current_dinov2reg", "dinov2reg", 5, True),
    ]
    for name, base_name, labels, head in cases:
        adapter = _save_adapter(name, base_name, labels, head, rng)
        expected[f"logits_{name}"] = _peft_logits(adapter, base_name, labels, images)
    expected["logits_current_dinov2cls_28"] = _peft_logits(
        _path("current_dinov2cls"), "dinov2cls", 2, images_28
    )
    np.savez(_path("expected.npz"), **expected)
    _write_versions("current")


def _legacy_key(key):
    """Current adapter key -> the same parameter under transformers 4's module names."""
    key = key.replace(".attention.q_proj.", ".attention.attention.query.")
    return key.replace(".attention.v_proj.", ".attention.attention.value.")


def make_legacy():
    expected = dict(np.load(_path("expected.npz")))
    current = load_file(_path("current_dinov2cls", "adapter_model.safetensors"))
    by_legacy = {_legacy_key(k): v for k, v in current.items()}
    model = get_peft_model(
        _load_base("dinov2cls", 2),
        LoraConfig(
            r=RANK,
            lora_alpha=ALPHA,
            target_modules=TARGETS,
            modules_to_save=["classifier"],
            bias="none",
        ),
    )
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if ".lora_A." in pname or ".lora_B." in pname:
                value = by_legacy[pname.replace(".default.weight", ".weight")]
            elif "classifier" in pname and "modules_to_save" in pname:
                value = by_legacy["base_model.model.classifier." + pname.rsplit(".", 1)[-1]]
            else:
                continue
            assert tuple(value.shape) == tuple(param.shape), (pname, value.shape)
            param.copy_(torch.from_numpy(value))
    out = _fresh_dir("legacy_dinov2cls")
    model.save_pretrained(out)
    with open(os.path.join(out, "adapter_config.json")) as f:
        config = json.load(f)
    config["base_model_name_or_path"] = "dinov2cls"
    with open(os.path.join(out, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    if os.path.exists(os.path.join(out, "README.md")):
        os.remove(os.path.join(out, "README.md"))
    saved = load_file(os.path.join(out, "adapter_model.safetensors"))
    if sorted(saved) != sorted(by_legacy):
        sys.exit(f"legacy keys differ from the renamed current keys: {sorted(saved)}")
    expected["logits_legacy_dinov2cls"] = _peft_logits(out, "dinov2cls", 2, expected["images"])
    np.savez(_path("expected.npz"), **expected)
    _write_versions("legacy")


def _write_versions(kind):
    import peft

    path = _path("versions.json")
    versions = {}
    if os.path.exists(path) and kind != "current":
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
    make() if CURRENT else make_legacy()
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(HERE) for f in files)
    print(f"fixtures in {HERE}: {total / 1024:.0f} KiB")
