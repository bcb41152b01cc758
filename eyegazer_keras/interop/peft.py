"""PEFT LoRA adapters in and out: Hugging Face ``peft`` <-> `eyegazer train` run folders.

Bases: ViT (``ViTModel``, ``ViTForImageClassification``) and DINOv2 (``Dinov2Model``,
``Dinov2ForImageClassification`` and their ``Dinov2WithRegisters`` forms), as a local HF
checkpoint directory, ``hf://org/name`` or a keras-hub preset converted from one.

* `import_peft` (``eyegazer import-peft``): a PEFT LoRA adapter (`peft_adapter.read_peft_adapter`;
  ``adapter_config.json`` + ``adapter_model.safetensors``) on its base -> an ordinary run folder;
* `export_peft` (``eyegazer export-peft``): a run's LoRA + head -> an adapter folder that
  ``PeftModel.from_pretrained`` loads onto the HF base, in the current (transformers 5) naming.

A DINOv2's HF classifier reads concat(class token, mean of the patch tokens), ``2 * hidden``
features (registers left out of the mean): imported DINOv2 runs pool with ``"token_gap"``;
export writes a DINOv2 run pooled with ``"token"`` or ``"gap"`` as that head with zeros on the
half it does not read (the same logits). A ViT's classifier reads the class token only.

The key names and LoRA layouts are `peft_layout`, reading and its one-line refusals
(`PeftFormatError`) `peft_adapter`, the files besides the weights (adapter config, README, the
run's ``dataset.json``) `peft_files`.

A DINOv2 whose input differs from the size of its position table (``image_size`` in its
``config.json``; e.g. 224 px on facebook/dinov2-*'s 518 px table) gets the table resized as
transformers does (torch's bicubic, `models.dinov2_position`): the logits match HF's to 2.1e-6 on
the tiny test model at 28 px from a 42 px table (keras-hub's own TF bicubic gave 0.012).
"""

from __future__ import annotations

import logging
import os

import numpy as np

from eyegazer_keras import files
from eyegazer_keras.interop import peft_files, peft_layout
from eyegazer_keras.interop.peft_adapter import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    PeftAdapter,
    PeftFormatError,
    read_peft_adapter,
)
from eyegazer_keras.models import hf_vit

logger = logging.getLogger(__name__)

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "PeftAdapter",
    "PeftFormatError",
    "classifier_logits",
    "export_peft",
    "import_peft",
    "read_peft_adapter",
]

IMPORT_RECORD = "peft_import.json"
RUN_DATA = "dataset.json"  # the run's dataset facts + preprocessing spec (runs.RunData)
EXPORT_RECORD = "eyegazer_export.json"
_CLASSIFIER_BIAS = peft_layout.PEFT_PREFIX + "classifier.bias"
_NAMES = {"vit": "ViT", "dinov2": "DINOv2"}


# --------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------
def import_peft(
    base,
    adapter,
    workdir,
    *,
    dataset: str = "aptos2019",
    dataset_config: str | None = None,
    data_dir: str | None = None,
    crop: str = "none",
) -> dict:
    """`eyegazer import-peft`: a PEFT adapter on a ViT or DINOv2 base -> a run folder.

    The folder holds ``config.json`` (a `configs.TrainConfig`: backbone = `base`, LoRA rank,
    alpha and targets from the adapter, the pooling HF's classifier reads: ``"token"`` for a
    ViT, ``"token_gap"`` for a DINOv2; the input size the base's processor feeds: a ViT's
    ``image_size``, a DINOv2's ``crop_size``), ``adapter.npz`` and
    ``checkpoints/best_adapter.npz`` (`vit_lora.save_adapter`), and ``peft_import.json`` (the
    adapter's config, naming and the preprocessing it was trained with), so that `eyegazer
    evaluate`, `eyegazer export` and `eyegazer predict` work on it unchanged.

    Args:
        base: str or PathLike. The model the adapter was trained on: a keras-hub ViT or DINOv2
            preset name, a local preset directory, a local HF ViT / DINOv2 checkpoint directory
            or ``hf://org/name``.
        adapter: str or PathLike. A PEFT adapter directory or ``hf://org/name``.
        workdir: str or PathLike. The run folder to write (created; files inside replaced).
        dataset: str. Dataset `eyegazer evaluate` uses by default. Defaults to ``"aptos2019"``.
        dataset_config: str or None. Its builder config. Defaults to None.
        data_dir: str or None. Where it is prepared. Defaults to None (TFDS default).
        crop: str. Preprocessing the run's export applies: ``"none"`` (a plain resize, as HF's
            ``ViTImageProcessor``; a DINOv2's ``BitImageProcessor`` also center-crops, which
            the record notes) or ``"fundus"`` (this project's border crop). Defaults to
            ``"none"``.

    Returns:
        dict. The import record (also written to ``peft_import.json``).

    Raises:
        ValueError: `crop` is neither "none" nor "fundus", or the base is neither a ViT nor a
            DINOv2.
        PeftFormatError: the adapter cannot be represented, or does not fit the base (another
            model family, block count or width).
        FileNotFoundError: a file is missing.
    """
    from eyegazer_keras.models import vit_lora

    if crop not in ("none", "fundus"):
        raise ValueError(f"crop={crop!r}: use 'none' (as ViTImageProcessor) or 'fundus'")
    base = hf_vit.normalise_source(base)
    peft = read_peft_adapter(adapter)
    base_info = hf_vit.describe_base(base)
    family = base_info["family"]
    if peft.family not in (None, family):
        raise PeftFormatError(
            f"{peft.source}: its keys are LoRA on a {_NAMES[peft.family]} but the base {base} "
            f"is a {_NAMES[family]}: pass the base the adapter was trained on"
        )
    head = peft.head or hf_vit.classifier_head(base, base_info)
    if head is None:
        model_type = base_info.get("model_type", family)
        raise PeftFormatError(
            f"the adapter has no classifier (modules_to_save) and the base {base} has none "
            f"either: pass the {peft_files.HF_CLASSES[model_type][0]} checkpoint it was "
            "trained on"
        )
    data = {"dataset": dataset, "dataset_config": dataset_config, "data_dir": data_dir}
    config = _import_config(peft, base, base_info, head, data)
    model = vit_lora.build_from_config(config)
    _assign(model, peft, head, family)
    _warn_other_base(peft, base)
    _warn_interpolation(base, base_info)
    return _write_run(model, config, workdir, peft, base, base_info, crop)


def _import_config(peft: PeftAdapter, base: str, base_info: dict, head: dict, data: dict):
    """The imported run's `configs.TrainConfig` (`data`: dataset, dataset_config, data_dir)."""
    from eyegazer_keras.configs import settings as configs_lib

    num_labels = int(head["weight"].shape[0])
    if num_labels not in (2, 5):
        raise PeftFormatError(
            f"{peft.source}: the classifier has {num_labels} labels; eyegazer models have 2 "
            "(binary: no DR / DR) or 5 (grades 0-4)"
        )
    config = configs_lib.TrainConfig(
        name="import-peft",
        **data,
        task="binary" if num_labels == 2 else "grade",
        image_size=base_info["image_size"],
        backbone=base,
        backbone_config={},
        # ViTForImageClassification classifies the class token; Dinov2ForImageClassification
        # concat(class token, mean of the patch tokens).
        pooling="token_gap" if base_info["family"] == "dinov2" else "token",
        lora_rank=peft.rank,
        lora_alpha=peft.alpha,
        lora_targets=peft.targets,
        lora_layout="peft",
        mixed_precision=None,
        jit_compile=False,
    )
    configs_lib.validate(config)
    return config


def _warn_other_base(peft, base):
    """Logs when the adapter names another base than the one given (shapes matched anyway)."""
    named = peft.config.get("base_model_name_or_path")
    given = base[len(hf_vit.HF_SCHEME) :] if base.startswith(hf_vit.HF_SCHEME) else base
    given = hf_vit.hf_origin(given) or given
    if named and os.path.basename(named.rstrip("/")) != os.path.basename(given.rstrip("/")):
        logger.warning(
            "%s was trained on %s, not %s: shapes match, but check that it is the same model",
            peft.source,
            named,
            base,
        )


def _warn_interpolation(base, base_info):
    """Logs when a DINOv2 runs at another size than its position table (resized as HF does)."""
    grid, size = base_info.get("grid_size"), base_info["image_size"]
    if base_info["family"] == "dinov2" and grid and grid != size:
        logger.info(
            "%s runs at %d px but its position table is for %d px: resized with torch's bicubic "
            "as transformers does",
            base,
            size,
            grid,
        )


def _assign(model, peft, head, family):
    """Sets the model's LoRA and head variables from the adapter; refuses any mismatch."""
    backbone = model.get_layer("backbone")
    if peft.num_layers != backbone.num_layers:
        raise PeftFormatError(
            f"{peft.source}: LoRA on {peft.num_layers} blocks but the base has "
            f"{backbone.num_layers}"
        )
    # By (block, projection, a|b): a DINOv2's variable paths carry its constructor name.
    variables = {peft_layout.parse_keras_path(v.path) or v.path: v for v in model.trainable_weights}
    values = {}
    for (i, target), (a, b) in peft.lora.items():
        ka, kb = peft_layout.keras_lora(a, b, target, backbone.num_heads)
        values[(i, target, "a")], values[(i, target, "b")] = ka, kb
    values["predictions/kernel"] = head["weight"].T
    values["predictions/bias"] = head["bias"]

    def name(key):
        return key if isinstance(key, str) else peft_layout.keras_lora_path(*key, family)

    if set(values) != set(variables):
        raise PeftFormatError(
            f"{peft.source}: adapter covers {sorted(map(name, set(values) - set(variables)))[:3]}"
            f" but the model trains {sorted(map(name, set(variables) - set(values)))[:3]}"
        )
    for key, value in values.items():
        if tuple(value.shape) != tuple(variables[key].shape):
            raise PeftFormatError(
                f"{peft.source}: {name(key)} has shape {value.shape} from the adapter but "
                f"{tuple(variables[key].shape)} in the base (wrong base for this adapter?)"
            )
        variables[key].assign(value)


def _write_run(model, config, workdir, peft, base, base_info, crop):
    from eyegazer_keras.configs import settings as configs_lib
    from eyegazer_keras.models import vit_lora

    workdir = os.path.abspath(os.path.expanduser(os.fspath(workdir)))
    os.makedirs(os.path.join(workdir, "checkpoints"), exist_ok=True)
    files.write_json_atomic(os.path.join(workdir, "config.json"), configs_lib.to_dict(config))
    vit_lora.save_adapter(model, os.path.join(workdir, "checkpoints", "best_adapter.npz"))
    vit_lora.save_adapter(model, os.path.join(workdir, "adapter.npz"))
    num_labels = int(model.output.shape[-1])
    record = peft_files.import_record(peft, base, base_info, num_labels, config.image_size, crop)
    files.write_json_atomic(os.path.join(workdir, IMPORT_RECORD), record)
    files.write_json_atomic(os.path.join(workdir, RUN_DATA), peft_files.run_data(config, crop))
    logger.info("imported %s (%s naming) onto %s into %s", peft.source, peft.naming, base, workdir)
    return record


# --------------------------------------------------------------------------------------------
# Logits
# --------------------------------------------------------------------------------------------
def classifier_logits(model, images) -> np.ndarray:
    """Pre-softmax logits of a `vit_lora.build_vit_classifier` model (HF's ``.logits``).

    Args:
        model: keras.Model. Its head is the Dense layer ``"predictions"`` (softmax).
        images: ``float32 [B, S, S, 3]`` in 0..255 (the model normalises).

    Returns:
        ``float32 [B, num_classes]``.
    """
    import keras

    head = model.get_layer("predictions")
    features = keras.Model(model.input, head.input)(np.asarray(images, "float32"))
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in (head.kernel, head.bias))
    return keras.ops.convert_to_numpy(features).astype("float32") @ kernel + bias


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------
def export_peft(workdir, output) -> dict:
    """`eyegazer export-peft`: a run's LoRA + head -> a PEFT adapter folder (current naming).

    Reads the run's ``config.json`` and ``adapter.npz`` (else ``checkpoints/best_adapter.npz``)
    without building the model, and writes ``adapter_model.safetensors`` (keys
    ``base_model.model.vit.layers.{i}.attention.{q_proj,...}.lora_{A,B}.weight`` on a ViT,
    ``base_model.model.dinov2.encoder.layer.{i}.attention.{q_proj,...}.lora_{A,B}.weight`` on a
    DINOv2 (``dinov2_with_registers.`` with registers), and
    ``base_model.model.classifier.{weight,bias}``), ``adapter_config.json`` (with
    ``base_model_name_or_path``), ``eyegazer_export.json`` and a ``README.md`` saying how to load
    it and which preprocessing the model was trained with.

    The Keras-core layout (``lora_layout="keras"``: ``A`` per head) is written exactly as a
    rank ``heads * r`` PEFT LoRA with ``lora_alpha = heads * alpha`` (block-diagonal ``B``). A
    DINOv2 head on ``"token"`` or ``"gap"`` features is written as HF's ``2 * hidden`` head with
    zeros on the other half.

    Args:
        workdir: str or PathLike. A finished `eyegazer train` (or `import-peft`) run folder.
        output: str or PathLike. The adapter folder to write.

    Returns:
        dict. What was written (also in ``eyegazer_export.json``).

    Raises:
        PeftFormatError: the run's backbone has no HF ViT/DINOv2 checkpoint, or its adapter is
            not LoRA on attention projections with a head HF's classifier can hold (a ViT's
            must pool the class token).
        FileNotFoundError: the run folder lacks its config or adapter.
    """
    from safetensors.numpy import save_file

    workdir = os.path.abspath(os.path.expanduser(os.fspath(workdir)))
    config, arrays, metadata = peft_files.read_run(workdir)
    base, model_type = _hf_base_for(config, metadata)
    build = metadata.get("build", {})
    rank, alpha = int(build["lora_rank"]), float(build.get("lora_alpha") or build["lora_rank"])
    tensors, rank, alpha, targets = _peft_tensors(workdir, arrays, build, rank, alpha, model_type)
    output = os.path.abspath(os.path.expanduser(os.fspath(output)))
    os.makedirs(output, exist_ok=True)
    save_file(tensors, os.path.join(output, ADAPTER_WEIGHTS), metadata={"format": "pt"})
    adapter_config = peft_files.adapter_config(base, rank, alpha, targets, model_type)
    files.write_json_atomic(os.path.join(output, ADAPTER_CONFIG), adapter_config)
    record = {
        "run": workdir,
        "base_model_name_or_path": base,
        "base_model_class": peft_files.HF_CLASSES[model_type][0],
        "num_labels": int(tensors[_CLASSIFIER_BIAS].shape[0]),
        "rank": rank,
        "lora_alpha": alpha,
        "target_modules": targets,
        "source_lora_layout": build.get("lora_layout"),
        "source_pooling": build.get("pooling", "token"),
        "image_size": config.get("image_size"),
        "trained_preprocessing": peft_files.run_preprocessing(
            os.path.join(workdir, IMPORT_RECORD), config, build.get("normalization")
        ),
    }
    files.write_json_atomic(os.path.join(output, EXPORT_RECORD), record)
    with open(os.path.join(output, "README.md"), "w") as f:
        f.write(peft_files.readme(record))
    return record


def _hf_base_for(config, metadata) -> tuple[str, str]:
    """``(HF checkpoint, its model_type)`` a run's backbone came from; refuses other backbones."""
    source = metadata.get("build", {}).get("backbone") or {}
    kind, preset = source.get("type"), source.get("preset")
    dinov2 = source.get("architecture") == "dinov2"
    if config.get("pretrain_epochs"):
        kind = "pretrained here"
    if kind == "hf_checkpoint":
        base = preset[len(hf_vit.HF_SCHEME) :] if preset.startswith(hf_vit.HF_SCHEME) else preset
        return base, _dinov2_model_type(preset) if dinov2 else "vit"
    if kind == "keras_preset" and (origin := hf_vit.hf_origin(preset)):
        if not dinov2:
            return origin, "vit"
        return origin, "dinov2_with_registers" if "with-registers" in origin else "dinov2"
    what = {
        "config": "a randomly initialised ViT (backbone=config)",
        "pretrained here": "a backbone pretrained in this run (pretrain_epochs)",
        "keras_preset": f"the keras-hub preset {preset}, which has no Hugging Face original",
    }.get(kind, f"an unknown source {source}")
    raise PeftFormatError(
        f"the run's backbone is {what}; PEFT adapters load onto Hugging Face checkpoints: train "
        "from hf://org/name, a local HF ViT or DINOv2 directory or a keras-hub preset converted "
        f"from one ({', '.join(sorted(hf_vit.HF_ORIGINS))})"
    )


def _dinov2_model_type(preset: str) -> str:
    """``"dinov2"`` or ``"dinov2_with_registers"``, from the checkpoint's ``config.json``."""
    try:
        return hf_vit.describe_base(preset)["model_type"]
    except (OSError, ValueError) as err:
        raise PeftFormatError(
            f"{preset}: cannot read its config.json to name the DINOv2 class ({err})"
        ) from None


def _hf_head(workdir, kernel: np.ndarray, pooling: str, model_type: str) -> np.ndarray:
    """The run's head kernel ``(features, labels)`` -> HF's classifier ``weight``."""
    if model_type == "vit":
        if pooling != "token":
            raise PeftFormatError(
                f"{workdir}: pooling={pooling!r}; ViTForImageClassification classifies the class "
                "token (pooling='token')"
            )
        return kernel.T
    # Dinov2ForImageClassification reads [class token, mean of patch tokens].
    if pooling == "token_gap":
        return kernel.T
    zeros = np.zeros_like(kernel.T)
    return np.concatenate([kernel.T, zeros] if pooling == "token" else [zeros, kernel.T], axis=1)


def _peft_tensors(workdir, arrays, build, rank, alpha, model_type):
    """Run adapter arrays -> PEFT tensors (current naming), rank, alpha, target_modules."""
    if not rank:
        raise PeftFormatError(f"{workdir}: lora_rank=0 is full fine-tuning, not an adapter")
    layout = build.get("lora_layout") or "keras"
    pooling = build.get("pooling", "token")
    tensors, targets, pairs = {}, set(), {}
    for path, value in arrays.items():
        if path.startswith("predictions/"):
            which = path.split("/")[-1]
            value = _hf_head(workdir, value, pooling, model_type) if which == "kernel" else value
            name = {"kernel": "weight", "bias": "bias"}[which]
            tensors[peft_layout.PEFT_PREFIX + f"classifier.{name}"] = np.ascontiguousarray(
                value, "float32"
            )
            continue
        parsed = peft_layout.parse_keras_path(path)
        if parsed is None:
            raise PeftFormatError(
                f"{workdir}: trainable variable {path} is not LoRA on an attention projection "
                "or the head; PEFT's LoRA on the attention projections cannot hold it"
            )
        layer, target, which = parsed
        pairs.setdefault((layer, target), {})[which] = value
    heads = None
    for (i, target), ab in sorted(pairs.items()):
        a, b, heads = peft_layout.hf_lora(ab["a"], ab["b"], target, layout)
        targets.add(peft_layout.PROJECTIONS[target][0])
        for which, value in (("A", a), ("B", b)):
            key = peft_layout.hf_lora_key(i, target, which, model_type)
            tensors[key] = np.ascontiguousarray(value, "float32")
    if layout == "keras" and heads:  # rank heads*r, same alpha/r scale
        rank, alpha = rank * heads, alpha * heads
    return tensors, rank, alpha, sorted(targets)
