"""PEFT LoRA adapters in and out: Hugging Face ``peft`` <-> `eyegazer train` run folders.

A PEFT LoRA adapter (``PeftModel.save_pretrained``) is a folder with ``adapter_config.json``
(``r``, ``lora_alpha``, ``target_modules``, ``modules_to_save``, ...) and
``adapter_model.safetensors``. On a ViT image classifier its keys read, per transformers version:

* transformers >= 5 ("current"): ``base_model.model.vit.layers.{i}.attention.{q_proj,v_proj}
  .lora_{A,B}.weight``;
* transformers 4 ("legacy", e.g. the published ``monsoon-nlp/eyegazer-vit-binary``):
  ``base_model.model.vit.encoder.layer.{i}.attention.attention.{query,value}.lora_{A,B}.weight``;

plus ``base_model.model.classifier.{weight,bias}`` when ``modules_to_save=["classifier"]``.
How those keys and shapes map onto `vit_lora.build_vit_classifier` (``lora_layout="peft"``) is
`peft_layout`; the files besides the weights (adapter config, README, the run's
``dataset.json``) are `peft_files`.

What a keras-hub LoRA ViT cannot hold is refused with one line (`PeftFormatError`): DoRA,
rsLoRA, ``bias != "none"``, LoRA on anything but the attention projections, per-layer ranks or
alphas, LoRA on only some layers, a rank that disagrees with the weights.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from eyegazer_keras import files
from eyegazer_keras.interop import peft_files, peft_layout
from eyegazer_keras.models import hf_vit

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
_CLASSIFIER_BIAS = peft_layout.PEFT_PREFIX + "classifier.bias"


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
    known = set(peft_layout.HF_TO_KERAS) | {
        "dense"
    }  # legacy o-proj is "dense"; the keys decide which
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
        name = peft_layout.strip_prefix(key)
        if which := peft_layout.parse_head_key(name):
            head[which] = value.astype("float32")
            continue
        parsed = peft_layout.parse_lora_key(name)
        if parsed is None:
            what = "LoRA on a non-attention module" if ".lora_" in name else "an unknown tensor"
            raise PeftFormatError(
                f"{source}/{ADAPTER_WEIGHTS}: {key} is {what}; only LoRA on the attention "
                "projections and the classifier head can be imported"
            )
        layer, target, which, naming = parsed
        namings.add(naming)
        lora.setdefault((layer, target), {})[which] = value.astype("float32")
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
    targets = tuple(t for t in peft_layout.PROJECTIONS if any(t == k for _, k in lora))
    _check_targets(source, config, targets)
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


def _check_targets(source, config, targets: tuple[str, ...]) -> None:
    """Refuses an adapter whose weights cover other modules than its `target_modules` say.

    PEFT applies LoRA only to `target_modules`; weights for other modules in the file are a
    config and weights that disagree (an edited config, or files from two runs). Importing
    them would give logits PEFT never computes (issue 23: up to 2.9 apart).
    """
    declared = config.get("target_modules") or []
    if not declared:
        return
    wanted = {
        peft_layout.HF_TO_KERAS.get(t.rsplit(".", 1)[-1], "attention_output") for t in declared
    }
    if wanted == set(targets):
        return
    names = {k: v[0] for k, v in peft_layout.PROJECTIONS.items()}
    held = [names[t] for t in targets]
    extra = [names[t] for t in targets if t not in wanted]
    missing = [names[t] for t in peft_layout.PROJECTIONS if t in wanted and t not in targets]
    detail = "; ".join(
        part
        for part in (
            f"weights for {extra} that PEFT would not apply" if extra else "",
            f"no weights for {missing}" if missing else "",
        )
        if part
    )
    raise PeftFormatError(
        f"{source}: {ADAPTER_CONFIG} says target_modules {sorted(declared)} but "
        f"{ADAPTER_WEIGHTS} holds LoRA on {held} ({detail}); the config and weights come from "
        "different runs. Fix target_modules or re-save the adapter with "
        "PeftModel.save_pretrained."
    )


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
        ValueError: `crop` is neither "none" nor "fundus", or the base is not a ViT.
        PeftFormatError: the adapter cannot be represented, or does not fit the base.
        FileNotFoundError: a file is missing.
    """
    from eyegazer_keras.models import vit_lora

    if crop not in ("none", "fundus"):
        raise ValueError(f"crop={crop!r}: use 'none' (as ViTImageProcessor) or 'fundus'")
    base = hf_vit.normalise_source(base)
    peft = read_peft_adapter(adapter)
    base_info = hf_vit.describe_base(base)
    head = peft.head or hf_vit.classifier_head(base, base_info)
    if head is None:
        raise PeftFormatError(
            f"the adapter has no classifier (modules_to_save) and the base {base} has none "
            "either: pass the ViTForImageClassification checkpoint it was trained on"
        )
    data = {"dataset": dataset, "dataset_config": dataset_config, "data_dir": data_dir}
    config = _import_config(peft, base, base_info["image_size"], head, data)
    model = vit_lora.build_from_config(config)
    _assign(model, peft, head)
    _warn_other_base(peft, base)
    return _write_run(model, config, workdir, peft, base, base_info, crop)


def _import_config(peft: PeftAdapter, base: str, image_size: int, head: dict, data: dict):
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
        image_size=image_size,
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
    return config


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


def _assign(model, peft, head):
    """Sets the model's LoRA and head variables from the adapter; refuses any mismatch."""
    vit = model.get_layer("backbone")
    if peft.num_layers != vit.num_layers:
        raise PeftFormatError(
            f"{peft.source}: LoRA on {peft.num_layers} blocks but the base has {vit.num_layers}"
        )
    variables = {v.path: v for v in model.trainable_weights}
    values = {}
    for (i, target), (a, b) in peft.lora.items():
        ka, kb = peft_layout.keras_lora(a, b, target, vit.num_heads)
        values[peft_layout.keras_lora_path(i, target, "a")] = ka
        values[peft_layout.keras_lora_path(i, target, "b")] = kb
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
    config, arrays, metadata = peft_files.read_run(workdir)
    base = _hf_base_for(config, metadata)
    build = metadata.get("build", {})
    rank, alpha = int(build["lora_rank"]), float(build.get("lora_alpha") or build["lora_rank"])
    tensors, rank, alpha, targets = _peft_tensors(workdir, arrays, build, rank, alpha)
    output = os.path.abspath(os.path.expanduser(os.fspath(output)))
    os.makedirs(output, exist_ok=True)
    save_file(tensors, os.path.join(output, ADAPTER_WEIGHTS), metadata={"format": "pt"})
    adapter_config = peft_files.adapter_config(base, rank, alpha, targets)
    files.write_json_atomic(os.path.join(output, ADAPTER_CONFIG), adapter_config)
    record = {
        "run": workdir,
        "base_model_name_or_path": base,
        "num_labels": int(tensors[_CLASSIFIER_BIAS].shape[0]),
        "rank": rank,
        "lora_alpha": alpha,
        "target_modules": targets,
        "source_lora_layout": build.get("lora_layout"),
        "image_size": config.get("image_size"),
        "trained_preprocessing": peft_files.run_preprocessing(
            os.path.join(workdir, IMPORT_RECORD), config
        ),
    }
    files.write_json_atomic(os.path.join(output, EXPORT_RECORD), record)
    with open(os.path.join(output, "README.md"), "w") as f:
        f.write(peft_files.readme(record))
    return record


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
    tensors, targets, pairs = {}, set(), {}
    for path, value in arrays.items():
        if path.startswith("predictions/"):
            name = {"kernel": "weight", "bias": "bias"}[path.split("/")[-1]]
            key = peft_layout.PEFT_PREFIX + f"classifier.{name}"
            tensors[key] = (value.T if name == "weight" else value).copy()
            continue
        parsed = peft_layout.parse_keras_path(path)
        if parsed is None:
            raise PeftFormatError(
                f"{workdir}: trainable variable {path} is not LoRA on an attention projection "
                "or the head; PEFT's LoRA on ViT attention cannot hold it"
            )
        layer, target, which = parsed
        pairs.setdefault((layer, target), {})[which] = value
    heads = None
    for (i, target), ab in sorted(pairs.items()):
        a, b, heads = peft_layout.hf_lora(ab["a"], ab["b"], target, layout)
        targets.add(peft_layout.PROJECTIONS[target][0])
        tensors[peft_layout.hf_lora_key(i, target, "A")] = np.ascontiguousarray(a, "float32")
        tensors[peft_layout.hf_lora_key(i, target, "B")] = np.ascontiguousarray(b, "float32")
    if layout == "keras" and heads:  # rank heads*r, same alpha/r scale
        rank, alpha = rank * heads, alpha * heads
    return tensors, rank, alpha, sorted(targets)
