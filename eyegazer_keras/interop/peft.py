"""PEFT LoRA adapters in and out: Hugging Face ``peft`` <-> `eyegazer train` run folders.

A PEFT LoRA adapter (``PeftModel.save_pretrained``) is a folder with ``adapter_config.json``
(``r``, ``lora_alpha``, ``target_modules``, ``modules_to_save``, ...) and
``adapter_model.safetensors``. On a ViT image classifier its keys read, per transformers version:

* transformers >= 5 ("current"): ``base_model.model.vit.layers.{i}.attention.{q_proj,v_proj}
  .lora_{A,B}.weight``;
* transformers 4 ("legacy", e.g. the published ``monsoon-nlp/eyegazer-vit-binary``):
  ``base_model.model.vit.encoder.layer.{i}.attention.attention.{query,value}.lora_{A,B}.weight``;

plus ``base_model.model.classifier.{weight,bias}`` when ``modules_to_save=["classifier"]``.
``lora_A`` is ``(r, in)``, ``lora_B`` ``(out, r)``; the update is ``(alpha / r) * B @ A``.

Mapping onto `vit_lora.build_vit_classifier` (``lora_layout="peft"``): HF layer ``i`` is keras-hub
``transformer_block_{i+1}``; ``lora_kernel_a = A.T`` and ``lora_kernel_b = B.T`` reshaped to
``(r, heads, head_dim)`` (query/key/value) or ``A.T`` reshaped to ``(heads, head_dim, r)`` and
``B.T`` (attention output); the head kernel is ``classifier.weight.T``.

What a keras-hub LoRA ViT cannot hold is refused with one line (`PeftFormatError`): DoRA,
rsLoRA, ``bias != "none"``, LoRA on anything but the attention projections, per-layer ranks or
alphas, LoRA on only some layers, a rank that disagrees with the weights.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from typing import Any

import numpy as np

from eyegazer_keras import files
from eyegazer_keras.interop import hf_vit

logger = logging.getLogger(__name__)

__all__ = [
    "PeftAdapter",
    "PeftFormatError",
    "classifier_logits",
    "export_peft",
    "import_peft",
    "read_peft_adapter",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
IMPORT_RECORD = "peft_import.json"
RUN_DATA = "dataset.json"  # the run's dataset facts + preprocessing spec (runs.RunData)
EXPORT_RECORD = "eyegazer_export.json"
PREFIX = "base_model.model."

# keras-hub attention layer <- (current name, legacy name) of the same HF projection.
_PROJECTIONS = {
    "query": ("q_proj", "query"),
    "key": ("k_proj", "key"),
    "value": ("v_proj", "value"),
    "attention_output": ("o_proj", "output.dense"),
}
_HF_TO_KERAS = {hf: k for k, names in _PROJECTIONS.items() for hf in names}
_CURRENT_KEY = re.compile(
    r"^(?:vit\.)?layers\.(\d+)\.attention\.(q_proj|k_proj|v_proj|o_proj)\.lora_([AB])\.weight$"
)
_LEGACY_KEY = re.compile(
    r"^(?:vit\.)?encoder\.layer\.(\d+)\.attention\."
    r"(attention\.query|attention\.key|attention\.value|output\.dense)\.lora_([AB])\.weight$"
)
_HEAD_KEY = re.compile(r"^classifier\.(?:modules_to_save\.default\.)?(weight|bias)$")


class PeftFormatError(ValueError):
    """An adapter (or a run, for export) that this project cannot represent; says why."""


@dataclasses.dataclass
class PeftAdapter:
    """A PEFT LoRA adapter read into numpy, in HF's layout.

    Attributes:
        source: str. Where it was read from (directory or ``hf://org/name``).
        naming: str. ``"current"`` (transformers >= 5) or ``"legacy"`` (transformers 4).
        rank: int. ``r``.
        alpha: float. ``lora_alpha``.
        targets: tuple of str. keras-hub layer names (``"query"``, ``"value"``, ...).
        num_layers: int. Transformer blocks with LoRA (all of them, from 0).
        lora: dict. ``(layer, keras_target) -> (A (r, in), B (out, r))`` float32 arrays.
        head: dict or None. ``{"weight": (num_labels, hidden), "bias": (num_labels,)}``.
        config: dict. The ``adapter_config.json`` as read.
    """

    source: str
    naming: str
    rank: int
    alpha: float
    targets: tuple
    num_layers: int
    lora: dict
    head: dict | None
    config: dict


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def read_peft_adapter(source) -> PeftAdapter:
    """Reads and checks a PEFT LoRA adapter folder (local or ``hf://org/name``).

    Args:
        source: str or PathLike. A folder with ``adapter_config.json`` and
            ``adapter_model.safetensors``, or ``hf://org/name``.

    Returns:
        A `PeftAdapter`.

    Raises:
        FileNotFoundError: a file is missing.
        PeftFormatError: the adapter uses something a keras-hub LoRA ViT cannot hold (DoRA,
            rsLoRA, biases, non-attention targets, per-layer ranks, a rank mismatch, ...).
    """
    from safetensors.numpy import load_file

    source = os.fspath(source)
    if not source.startswith(hf_vit.HF_SCHEME):
        source = os.path.abspath(os.path.expanduser(source))
    config = hf_vit.read_json(source, ADAPTER_CONFIG)
    _check_config(source, config)
    try:
        weights_path = hf_vit.resolve_file(source, ADAPTER_WEIGHTS)
    except FileNotFoundError:
        hf_vit.resolve_file(source, "adapter_model.bin")  # FileNotFoundError if neither exists
        raise PeftFormatError(
            f"{source}: adapter_model.bin (a pickle) is not read; re-save the adapter with "
            "PeftModel.save_pretrained(..., safe_serialization=True)"
        ) from None
    tensors = load_file(weights_path)
    lora, head, naming = _split_tensors(source, tensors, config)
    return _check_lora(source, config, lora, head, naming)


def _check_config(source, config):
    def refuse(what):
        raise PeftFormatError(f"{source}/{ADAPTER_CONFIG}: {what}")

    if config.get("peft_type", "LORA") != "LORA":
        refuse(f"peft_type={config.get('peft_type')!r}: only LoRA adapters can be imported")
    if config.get("use_dora"):
        refuse("use_dora=true: DoRA (magnitude-scaled LoRA) has no keras-hub equivalent")
    if config.get("use_rslora"):
        refuse("use_rslora=true: rsLoRA scales by alpha/sqrt(r); eyegazer LoRA uses alpha/r")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        refuse(f"bias={config.get('bias')!r}: only bias='none' (frozen biases) is supported")
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            refuse(f"{key}={config[key]}: per-layer ranks/alphas are not supported")
    if config.get("layers_to_transform") is not None:
        refuse("layers_to_transform is set: eyegazer LoRA covers every transformer block")
    targets = config.get("target_modules") or []
    if isinstance(targets, str):
        refuse(f"target_modules={targets!r} is a regex: list the modules (e.g. [query, value])")
    known = set(_HF_TO_KERAS) | {"dense"}  # legacy o-proj is "dense"; the keys decide which
    bad = sorted(t for t in targets if t not in known and t.rsplit(".", 1)[-1] not in known)
    if bad:
        refuse(
            f"target_modules {bad}: only attention projections (query/key/value, q_proj/k_proj/"
            "v_proj/o_proj) can be imported"
        )
    extra = sorted(set(config.get("modules_to_save") or []) - {"classifier"})
    if extra:
        refuse(f"modules_to_save {extra}: only the classifier head can be imported")


def _split_tensors(source, tensors, config):
    lora, head, namings = {}, {}, set()
    for key, value in tensors.items():
        name = key[len(PREFIX) :] if key.startswith(PREFIX) else key
        if m := _HEAD_KEY.match(name):
            head[m.group(1)] = value.astype("float32")
            continue
        current, legacy = _CURRENT_KEY.match(name), _LEGACY_KEY.match(name)
        m = current or legacy
        if m is None:
            what = "LoRA on a non-attention module" if ".lora_" in name else "an unknown tensor"
            raise PeftFormatError(
                f"{source}/{ADAPTER_WEIGHTS}: {key} is {what}; only LoRA on the attention "
                "projections and the classifier head can be imported"
            )
        namings.add("current" if current else "legacy")
        target = _HF_TO_KERAS[m.group(2).removeprefix("attention.")]
        lora.setdefault((int(m.group(1)), target), {})[m.group(3)] = value.astype("float32")
    if len(namings) > 1:
        raise PeftFormatError(f"{source}: mixes current and legacy transformers key names")
    if not lora:
        raise PeftFormatError(f"{source}/{ADAPTER_WEIGHTS}: no LoRA weights found")
    if head and set(head) != {"weight", "bias"}:
        raise PeftFormatError(f"{source}: classifier has {sorted(head)}; expected weight + bias")
    if "classifier" in (config.get("modules_to_save") or []) and not head:
        raise PeftFormatError(f"{source}: modules_to_save names classifier but no weights for it")
    return lora, head or None, namings.pop()


def _check_lora(source, config, lora, head, naming):
    rank = int(config.get("r", 8))
    alpha = float(config.get("lora_alpha", 8))
    layers = sorted({i for i, _ in lora})
    targets = tuple(t for t in _PROJECTIONS if any(t == k for _, k in lora))
    out = {}
    for i in range(max(layers) + 1):
        for t in targets:
            pair = lora.get((i, t), {})
            if set(pair) != {"A", "B"}:
                raise PeftFormatError(
                    f"{source}: layer {i} {t} has LoRA {sorted(pair) or 'missing'}; eyegazer "
                    "LoRA needs A and B on every transformer block for each target"
                )
            a, b = pair["A"], pair["B"]
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != rank or b.shape[1] != rank:
                raise PeftFormatError(
                    f"{source}: layer {i} {t} lora_A {a.shape} / lora_B {b.shape} disagree with "
                    f"r={rank} in {ADAPTER_CONFIG} (rank mismatch)"
                )
            out[(i, t)] = (a, b)
    return PeftAdapter(source, naming, rank, alpha, targets, len(layers), out, head, config)


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
    """`eyegazer import-peft`: a PEFT adapter on a ViT base -> an `eyegazer train` run folder.

    The folder holds ``config.json`` (a `configs.TrainConfig`: backbone = `base`, LoRA rank,
    alpha and targets from the adapter, token pooling), ``adapter.npz`` and
    ``checkpoints/best_adapter.npz`` (`vit_lora.save_adapter`), and ``peft_import.json`` (the
    adapter's config, naming and the preprocessing it was trained with), so that `eyegazer
    evaluate`, `eyegazer export` and `eyegazer predict` work on it unchanged.

    Args:
        base: str or PathLike. The ViT the adapter was trained on: a keras-hub preset name, a
            local preset directory, a local HF ViT checkpoint directory or ``hf://org/name``.
        adapter: str or PathLike. A PEFT adapter directory or ``hf://org/name``.
        workdir: str or PathLike. The run folder to write (created; files inside replaced).
        dataset: str. Dataset `eyegazer evaluate` uses by default. Defaults to ``"aptos2019"``.
        dataset_config: str or None. Its builder config. Defaults to None.
        data_dir: str or None. Where it is prepared. Defaults to None (TFDS default).
        crop: str. Preprocessing the run's export applies: ``"none"`` (as HF's
            ``ViTImageProcessor``: plain resize, the adapter's training input) or ``"fundus"``
            (this project's border crop). Defaults to ``"none"``.

    Returns:
        dict. The import record (also written to ``peft_import.json``).

    Raises:
        PeftFormatError: the adapter cannot be represented, or does not fit the base.
        FileNotFoundError: a file is missing.
    """
    from eyegazer_keras import configs as configs_lib
    from eyegazer_keras.models import vit_lora

    if crop not in ("none", "fundus"):
        raise ValueError(f"crop={crop!r}: use 'none' (as ViTImageProcessor) or 'fundus'")
    base = _normalise_source(base)
    peft = read_peft_adapter(adapter)
    base_info = _base_info(base)
    head = peft.head or _base_head(base, base_info)
    num_labels = int(head["weight"].shape[0])
    if num_labels not in (2, 5):
        raise PeftFormatError(
            f"{peft.source}: the classifier has {num_labels} labels; eyegazer models have 2 "
            "(binary: no DR / DR) or 5 (grades 0-4)"
        )
    config = configs_lib.TrainConfig(
        name="import-peft",
        dataset=dataset,
        dataset_config=dataset_config,
        data_dir=data_dir,
        task="binary" if num_labels == 2 else "grade",
        image_size=base_info["image_size"],
        backbone=base,
        backbone_config={},
        pooling="token",  # ViTForImageClassification classifies the class token
        lora_rank=peft.rank,
        lora_alpha=peft.alpha,
        lora_targets=peft.targets,
        lora_layout="peft",
        mixed_precision=None,
        jit_compile=False,
    )
    configs_lib.validate(config)
    model = vit_lora.build_vit_classifier(
        base,
        num_classes=num_labels,
        image_size=config.image_size,
        pooling=config.pooling,
        lora_rank=peft.rank,
        lora_alpha=peft.alpha,
        lora_targets=peft.targets,
        lora_layout="peft",
    )
    _assign(model, peft, head)
    _warn_other_base(peft, base)
    return _write_run(model, config, workdir, peft, base, base_info, crop)


def _warn_other_base(peft, base):
    """Logs when the adapter names another base than the one given (shapes matched anyway)."""
    named = peft.config.get("base_model_name_or_path")
    given = base[len(hf_vit.HF_SCHEME) :] if base.startswith(hf_vit.HF_SCHEME) else base
    given = hf_vit.hf_origin(given) or given
    if named and os.path.basename(named.rstrip("/")) != os.path.basename(given.rstrip("/")):
        logger.warning(
            "%s was trained on %s, not %s: shapes match, but check that it is the same ViT",
            peft.source,
            named,
            base,
        )


def _normalise_source(source):
    source = os.fspath(source)
    if source.startswith(hf_vit.HF_SCHEME) or not os.path.exists(source):
        return source  # hf:// id or a keras-hub preset name
    return os.path.abspath(os.path.expanduser(source))


def _base_info(base) -> dict:
    """Image size, kind, and the HF preprocessing of a base (read from its config files)."""
    config = hf_vit.read_json(base, "config.json") if _is_hf_like(base) else None
    if config is None or "registered_name" in config:  # keras-hub preset (name or dir)
        backbone_config = (config or {}).get("config") or _keras_preset_config(base)
        size = int(backbone_config["image_shape"][0])
        return {"kind": "keras_preset", "image_size": size, "preprocessor": None}
    if config.get("model_type") != "vit":
        raise PeftFormatError(f"{base}: config.json is not a ViT ({config.get('model_type')})")
    try:
        preprocessor = hf_vit.read_json(base, "preprocessor_config.json")
    except FileNotFoundError:
        preprocessor = None
    return {
        "kind": "hf_checkpoint",
        "image_size": int(config.get("image_size", 224)),
        "architecture": (config.get("architectures") or ["ViTModel"])[0],
        "num_labels": len(config["id2label"]) if config.get("id2label") else None,
        "preprocessor": preprocessor,
    }


def _is_hf_like(base):
    return base.startswith(hf_vit.HF_SCHEME) or os.path.isdir(base)


def _keras_preset_config(base):
    from keras_hub.src.utils import preset_utils

    return preset_utils.load_json(base, preset_utils.CONFIG_FILE)["config"]


def _base_head(base, base_info):
    """The classifier of a `ViTForImageClassification` base, for adapters without a head."""
    if base_info.get("architecture") != "ViTForImageClassification":
        raise PeftFormatError(
            f"the adapter has no classifier (modules_to_save) and the base {base} has none "
            "either: pass the ViTForImageClassification checkpoint it was trained on"
        )
    from safetensors import safe_open

    with safe_open(hf_vit.resolve_file(base, "model.safetensors"), framework="np") as f:
        return {k: f.get_tensor(f"classifier.{k}").astype("float32") for k in ("weight", "bias")}


def _keras_lora(a, b, target, heads):
    """HF ``lora_A (r, in)``, ``lora_B (out, r)`` -> keras-hub ``lora_kernel_a/b``."""
    rank = a.shape[0]
    if target == "attention_output":
        return a.T.reshape(heads, -1, rank), b.T
    return a.T, b.T.reshape(rank, heads, -1)


def _assign(model, peft, head):
    vit = model.get_layer("backbone")
    if peft.num_layers != vit.num_layers:
        raise PeftFormatError(
            f"{peft.source}: LoRA on {peft.num_layers} blocks but the base has {vit.num_layers}"
        )
    variables = {v.path: v for v in model.trainable_weights}
    values = {}
    for (i, target), (a, b) in peft.lora.items():
        ka, kb = _keras_lora(a, b, target, vit.num_heads)
        prefix = f"vit_encoder/transformer_block_{i + 1}/mha/{target}/lora_kernel_"
        values[prefix + "a"], values[prefix + "b"] = ka, kb
    values["predictions/kernel"] = head["weight"].T
    values["predictions/bias"] = head["bias"]
    if set(values) != set(variables):
        raise PeftFormatError(
            f"{peft.source}: adapter covers {sorted(set(values) - set(variables))[:3]} but the "
            f"model trains {sorted(set(variables) - set(values))[:3]}"
        )
    for path, value in values.items():
        if tuple(value.shape) != tuple(variables[path].shape):
            raise PeftFormatError(
                f"{peft.source}: {path} has shape {value.shape} from the adapter but "
                f"{tuple(variables[path].shape)} in the base (wrong base for this adapter?)"
            )
        variables[path].assign(value)


def _hf_preprocessing(base_info, image_size):
    """The preprocessing an HF-trained adapter saw (``ViTImageProcessor`` defaults if unknown)."""
    p = base_info.get("preprocessor") or {}
    size = p.get("size") or {}
    return {
        "crop": "none",
        "resize": [int(size.get("height", image_size)), int(size.get("width", image_size))],
        "resample": {2: "bilinear", 3: "bicubic"}.get(p.get("resample", 2), "bilinear"),
        "rescale_factor": p.get("rescale_factor", 1 / 255),
        "image_mean": p.get("image_mean", [0.5, 0.5, 0.5]),
        "image_std": p.get("image_std", [0.5, 0.5, 0.5]),
        "source": "preprocessor_config.json" if p else "ViTImageProcessor defaults",
    }


def _write_run(model, config, workdir, peft, base, base_info, crop):
    from eyegazer_keras import configs as configs_lib
    from eyegazer_keras.models import vit_lora

    workdir = os.path.abspath(os.path.expanduser(os.fspath(workdir)))
    os.makedirs(os.path.join(workdir, "checkpoints"), exist_ok=True)
    files.write_json_atomic(os.path.join(workdir, "config.json"), configs_lib.to_dict(config))
    vit_lora.save_adapter(model, os.path.join(workdir, "checkpoints", "best_adapter.npz"))
    vit_lora.save_adapter(model, os.path.join(workdir, "adapter.npz"))
    record = {
        "base": base,
        "base_kind": base_info["kind"],
        "adapter": peft.source,
        "naming": peft.naming,
        "rank": peft.rank,
        "lora_alpha": peft.alpha,
        "targets": list(peft.targets),
        "num_labels": int(model.output.shape[-1]),
        "head_from": "adapter" if peft.head is not None else "base",
        "adapter_config": peft.config,
        "adapter_base_model_name_or_path": peft.config.get("base_model_name_or_path"),
        "trained_preprocessing": _hf_preprocessing(base_info, config.image_size),
        "export_crop": crop,
    }
    files.write_json_atomic(os.path.join(workdir, IMPORT_RECORD), record)
    files.write_json_atomic(os.path.join(workdir, RUN_DATA), _run_data(config, crop))
    logger.info("imported %s (%s naming) onto %s into %s", peft.source, peft.naming, base, workdir)
    return record


def _run_data(config, crop) -> dict:
    """The run's ``dataset.json``: what `eyegazer export` serves with, no dataset needed.

    The preprocessing spec is the adapter's (`crop="none"`: ViTImageProcessor's plain resize)
    or, on request, this project's fundus crop; the model normalises inside. The training set
    of an imported adapter is unknown: no split sizes, and no majority class (metrics then take
    the majority baseline from the evaluated split and say so).
    """
    from eyegazer_keras import GRADE_NAMES, data, fundus, metrics

    spec = fundus.PreprocessingSpec(stored_size=config.image_size, crop=crop)
    binary = config.task == "binary"
    return {
        "dataset": config.dataset,
        "builder_config": config.dataset_config,
        "version": "unknown (imported PEFT adapter)",
        "splits": {},
        "data_dir": os.path.abspath(data.default_data_dir(config.data_dir)),
        "task": "binary" if binary else "grade",
        "class_names": list(metrics.BINARY_NAMES if binary else GRADE_NAMES),
        "majority_class": None,
        "preprocessing": spec.to_dict(),
    }


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
    ``base_model.model.vit.layers.{i}.attention.{q_proj,...}.lora_{A,B}.weight`` and
    ``base_model.model.classifier.{weight,bias}``), ``adapter_config.json`` (with
    ``base_model_name_or_path``), ``eyegazer_export.json`` and a ``README.md`` saying how to load
    it and which preprocessing the model was trained with.

    The Keras-core layout (``lora_layout="keras"``: ``A`` per head) is written exactly as a
    rank ``heads * r`` PEFT LoRA with ``lora_alpha = heads * alpha`` (block-diagonal ``B``).

    Args:
        workdir: str or PathLike. A finished `eyegazer train` (or `import-peft`) run folder.
        output: str or PathLike. The adapter folder to write.

    Returns:
        dict. What was written (also in ``eyegazer_export.json``).

    Raises:
        PeftFormatError: the run's backbone has no HF ViT checkpoint, or its adapter is not LoRA
            on attention projections with a token-pooled head.
        FileNotFoundError: the run folder lacks its config or adapter.
    """
    from safetensors.numpy import save_file

    workdir = os.path.abspath(os.path.expanduser(os.fspath(workdir)))
    config, arrays, metadata = _read_run(workdir)
    base = _hf_base_for(config, metadata)
    build = metadata.get("build", {})
    rank, alpha = int(build["lora_rank"]), float(build.get("lora_alpha") or build["lora_rank"])
    tensors, rank, alpha, targets = _peft_tensors(workdir, arrays, build, rank, alpha)
    output = os.path.abspath(os.path.expanduser(os.fspath(output)))
    os.makedirs(output, exist_ok=True)
    save_file(tensors, os.path.join(output, ADAPTER_WEIGHTS), metadata={"format": "pt"})
    adapter_config = _adapter_config(base, rank, alpha, targets)
    files.write_json_atomic(os.path.join(output, ADAPTER_CONFIG), adapter_config)
    record = {
        "run": workdir,
        "base_model_name_or_path": base,
        "num_labels": int(tensors[PREFIX + "classifier.bias"].shape[0]),
        "rank": rank,
        "lora_alpha": alpha,
        "target_modules": targets,
        "source_lora_layout": build.get("lora_layout"),
        "image_size": config.get("image_size"),
        "trained_preprocessing": _run_preprocessing(workdir, config),
    }
    files.write_json_atomic(os.path.join(output, EXPORT_RECORD), record)
    with open(os.path.join(output, "README.md"), "w") as f:
        f.write(_readme(record))
    return record


def _read_run(workdir):
    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path} not found: is {workdir} an eyegazer run folder?")
    with open(config_path) as f:
        config = json.load(f)
    for name in ("adapter.npz", os.path.join("checkpoints", "best_adapter.npz")):
        path = os.path.join(workdir, name)
        if os.path.exists(path):
            break
    else:
        raise FileNotFoundError(f"{workdir}: no adapter.npz or checkpoints/best_adapter.npz")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if k != "__metadata__"}
        metadata = json.loads(str(data["__metadata__"])) if "__metadata__" in data.files else {}
    return config, arrays, metadata


def _hf_base_for(config, metadata) -> str:
    """The HF checkpoint a run's backbone came from; refuses backbones that have none."""
    source = metadata.get("build", {}).get("backbone") or {}
    kind, preset = source.get("type"), source.get("preset")
    if config.get("pretrain_epochs"):
        kind = "pretrained here"
    if kind == "hf_checkpoint":
        return preset[len(hf_vit.HF_SCHEME) :] if preset.startswith(hf_vit.HF_SCHEME) else preset
    if kind == "keras_preset" and (origin := hf_vit.hf_origin(preset)):
        return origin
    what = {
        "config": "a randomly initialised ViT (backbone=config)",
        "pretrained here": "a backbone pretrained in this run (pretrain_epochs)",
        "keras_preset": f"the keras-hub preset {preset}, which has no Hugging Face original",
    }.get(kind, f"an unknown source {source}")
    raise PeftFormatError(
        f"the run's backbone is {what}; PEFT adapters load onto Hugging Face checkpoints: train "
        "from hf://org/name, a local HF ViT directory or a keras-hub preset converted from one "
        f"({', '.join(sorted(hf_vit.HF_ORIGINS))})"
    )


_KERAS_PATH = re.compile(r"^vit_encoder/transformer_block_(\d+)/mha/(\w+)/lora_kernel_([ab])$")
_HF_NAME = {k: names[0] for k, names in _PROJECTIONS.items()}


def _peft_tensors(workdir, arrays, build, rank, alpha):
    """Run adapter arrays -> PEFT tensors (current naming), rank, alpha, target_modules."""
    if build.get("pooling", "token") != "token":
        raise PeftFormatError(
            f"{workdir}: pooling={build.get('pooling')!r}; ViTForImageClassification "
            "classifies the class token (pooling='token')"
        )
    if not rank:
        raise PeftFormatError(f"{workdir}: lora_rank=0 is full fine-tuning, not an adapter")
    layout = build.get("lora_layout") or "keras"
    tensors, targets = {}, set()
    pairs = {}
    for path, value in arrays.items():
        if path.startswith("predictions/"):
            name = {"kernel": "weight", "bias": "bias"}[path.split("/")[-1]]
            tensors[PREFIX + f"classifier.{name}"] = (value.T if name == "weight" else value).copy()
            continue
        m = _KERAS_PATH.match(path)
        if m is None or m.group(2) not in _HF_NAME:
            raise PeftFormatError(
                f"{workdir}: trainable variable {path} is not LoRA on an attention projection "
                "or the head; PEFT's LoRA on ViT attention cannot hold it"
            )
        pairs.setdefault((int(m.group(1)) - 1, m.group(2)), {})[m.group(3)] = value
    heads = None
    for (i, target), ab in sorted(pairs.items()):
        a, b, heads = _hf_lora(ab["a"], ab["b"], target, layout)
        hf = _HF_NAME[target]
        targets.add(hf)
        key = PREFIX + f"vit.layers.{i}.attention.{hf}"
        tensors[key + ".lora_A.weight"] = np.ascontiguousarray(a, "float32")
        tensors[key + ".lora_B.weight"] = np.ascontiguousarray(b, "float32")
    if layout == "keras" and heads:  # rank heads*r, same alpha/r scale
        rank, alpha = rank * heads, alpha * heads
    return tensors, rank, alpha, sorted(targets)


def _hf_lora(a, b, target, layout):
    """keras-hub ``lora_kernel_a/b`` -> HF ``(lora_A (R, in), lora_B (out, R), heads)``."""
    if layout == "peft" or target == "attention_output":  # true rank-r either way
        rank = a.shape[-1]
        heads = b.shape[1] if b.ndim == 3 else a.shape[0]
        return a.reshape(-1, rank).T, b.reshape(rank, -1).T, heads
    # Keras-core layout on q/k/v: A (hidden, heads, r), B (r, head_dim); the update
    # dW[h, n, d] = sum_j A[h, n, j] B[j, d] is, exactly, a rank heads*r LoRA with
    # A' = A reshaped to (hidden, heads*r) and a block-diagonal B'.
    hidden, heads, rank = a.shape
    head_dim = b.shape[1]
    big_b = np.zeros((heads * rank, heads * head_dim), a.dtype)
    for n in range(heads):
        big_b[n * rank : (n + 1) * rank, n * head_dim : (n + 1) * head_dim] = b
    return a.reshape(hidden, heads * rank).T, big_b.T, heads


def _adapter_config(base, rank, alpha, targets) -> dict[str, Any]:
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base,
        "revision": None,
        "inference_mode": True,
        "r": rank,
        "lora_alpha": alpha if alpha != int(alpha) else int(alpha),
        "lora_dropout": 0.0,
        "target_modules": targets,
        "modules_to_save": ["classifier"],
        "bias": "none",
        "use_dora": False,
        "use_rslora": False,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "auto_mapping": {
            "base_model_class": "ViTForImageClassification",
            "parent_library": "transformers.models.vit.modeling_vit",
        },
    }


def _run_preprocessing(workdir, config) -> dict:
    """What the run's model was trained on: an imported adapter's HF pipeline, else fundus."""
    record = os.path.join(workdir, IMPORT_RECORD)
    if os.path.exists(record):
        with open(record) as f:
            return json.load(f)["trained_preprocessing"]
    return {
        "crop": "fundus",
        "description": (
            "eyegazer_keras.fundus.preprocess_fundus (crop the black border, pad to square, "
            f"resize; dataset {config.get('dataset')}/{config.get('dataset_config')}) then "
            f"resize to {config.get('image_size')} px; 0..255 mapped to -1..1 (mean = std = 0.5)"
        ),
    }


def _readme(record) -> str:
    labels = record["num_labels"]
    classes = "no_dr, dr" if labels == 2 else "grades 0-4"
    pre = record["trained_preprocessing"]
    how = (
        "this project's fundus crop: " + pre.get("description", "")
        if pre.get("crop") == "fundus"
        else f"ViTImageProcessor (plain resize to {pre.get('resize')}, mean "
        f"{pre.get('image_mean')}, std {pre.get('image_std')})"
    )
    return f"""---
library_name: peft
base_model: {record["base_model_name_or_path"]}
---
# LoRA adapter exported by `eyegazer export-peft`

Research software, NOT a medical device. Classes: {classes} ({labels} labels).
LoRA r={record["rank"]}, alpha={record["lora_alpha"]} on {record["target_modules"]}, head saved
as `modules_to_save=["classifier"]`.

```python
from transformers import ViTForImageClassification
from peft import PeftModel

base = ViTForImageClassification.from_pretrained("{record["base_model_name_or_path"]}", num_labels={labels})
model = PeftModel.from_pretrained(base, "path/to/this/folder").eval()
```

Trained on input preprocessed with {how}. Feed it the same, at {record["image_size"]} px.
"""
