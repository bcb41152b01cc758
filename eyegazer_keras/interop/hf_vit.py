"""Hugging Face ViT checkpoints: loading them into keras-hub, and naming them.

keras-hub 0.32 converts HF ViT checkpoints (`keras_hub.src.utils.transformers.convert_vit`) from
``hf://org/name`` or a local directory (``config.json`` + ``model.safetensors``), with two gaps
handled here:

* a ``ViTModel`` checkpoint (the in21k backbones, e.g. ``google/vit-large-patch16-224-in21k``)
  stores its keys without the ``vit.`` prefix that the converter asks for (keras-hub #3007):
  `load_hf_vitmodel` retries each key without it;
* the converter drops ``layer_norm_eps`` (HF default 1e-12, keras-hub 1e-6): the caller passes
  it (`hf_backbone_kwargs`).

`HF_ORIGINS` maps each keras-hub ViT preset to the HF checkpoint keras-hub converted it from
(``tools/checkpoint_conversion/convert_vit_checkpoints.py`` in keras-hub): the ``*_imagenet``
presets are ImageNet-1k fine-tuned, the ``*_imagenet21k`` ones the in21k backbones.
"""

from __future__ import annotations

import os
import re

__all__ = [
    "HF_ORIGINS",
    "hf_backbone_kwargs",
    "hf_origin",
    "load_hf_vitmodel",
    "read_json",
    "resolve_file",
]

HF_SCHEME = "hf://"

# keras-hub ViT preset -> the HF checkpoint it was converted from (keras-hub's conversion script).
HF_ORIGINS = {
    "vit_base_patch16_224_imagenet": "google/vit-base-patch16-224",
    "vit_base_patch16_384_imagenet": "google/vit-base-patch16-384",
    "vit_base_patch32_384_imagenet": "google/vit-base-patch32-384",
    "vit_large_patch16_224_imagenet": "google/vit-large-patch16-224",
    "vit_large_patch16_384_imagenet": "google/vit-large-patch16-384",
    "vit_large_patch32_384_imagenet": "google/vit-large-patch32-384",
    "vit_base_patch16_224_imagenet21k": "google/vit-base-patch16-224-in21k",
    "vit_base_patch32_224_imagenet21k": "google/vit-base-patch32-224-in21k",
    "vit_large_patch16_224_imagenet21k": "google/vit-large-patch16-224-in21k",
    "vit_large_patch32_224_imagenet21k": "google/vit-large-patch32-224-in21k",
    "vit_huge_patch14_224_imagenet21k": "google/vit-huge-patch14-224-in21k",
}
_KAGGLE = re.compile(r"^kaggle://keras/vit/keras/([a-z0-9_]+)(?:/\d+)?$")


def hf_origin(preset: str) -> str | None:
    """The HF checkpoint id a keras-hub ViT preset was converted from, or None.

    Args:
        preset: str. A preset name (``"vit_large_patch16_224_imagenet21k"``) or its Kaggle
            handle (``"kaggle://keras/vit/keras/vit_large_patch16_224_imagenet21k/3"``).
    """
    match = _KAGGLE.match(preset)
    return HF_ORIGINS.get(match.group(1) if match else preset)


def resolve_file(source: str, filename: str) -> str:
    """Local path of `filename` in a local directory or an ``hf://org/name`` repository.

    ``hf://`` goes through ``huggingface_hub.hf_hub_download``, which honours ``HF_HOME``,
    ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` (with ``HF_HUB_OFFLINE=1`` only the local cache is
    read).

    Args:
        source: str. A directory or ``hf://org/name``.
        filename: str. File inside it, e.g. ``"adapter_config.json"``.

    Returns:
        str. A readable local file path.

    Raises:
        FileNotFoundError: the file is not there (or not in the cache when offline).
    """
    if source.startswith(HF_SCHEME):
        import huggingface_hub
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        repo = source[len(HF_SCHEME) :]
        try:
            return huggingface_hub.hf_hub_download(repo_id=repo, filename=filename)
        except (EntryNotFoundError, LocalEntryNotFoundError) as err:
            offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
            hint = " (HF_HUB_OFFLINE is set: only the local cache is read)" if offline else ""
            raise FileNotFoundError(f"{source}: no {filename}{hint}: {err}") from None
    path = os.path.join(source, filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{source}: no {filename}")
    return path


def read_json(source: str, filename: str) -> dict:
    """`resolve_file` + ``json.load``."""
    import json

    with open(resolve_file(source, filename)) as f:
        return json.load(f)


def hf_backbone_kwargs(config: dict) -> dict:
    """``ViTBackbone.from_preset`` kwargs that keras-hub's converter leaves out of an HF config."""
    return {"layer_norm_epsilon": config.get("layer_norm_eps", 1e-12)}


def load_hf_vitmodel(preset, config, kwargs):
    """Loads an HF `ViTModel` checkpoint, whose keys lack the `vit.` prefix (keras-hub #3007).

    Same keras-hub converter, with a weight loader that also tries the key without `vit.`.

    Args:
        preset: str. ``hf://org/name`` or a local HF checkpoint directory.
        config: dict. Its ``config.json``.
        kwargs: dict. Extra ``ViTBackbone.from_preset`` kwargs (``dtype``, ``layer_norm_epsilon``).

    Returns:
        A `keras_hub.models.ViTBackbone` holding the checkpoint's weights.
    """
    import keras_hub
    from keras_hub.src.utils.transformers import convert_vit
    from keras_hub.src.utils.transformers.safetensor_utils import SafetensorLoader

    class _Loader(SafetensorLoader):
        def get_tensor(self, hf_weight_key):
            try:
                return super().get_tensor(hf_weight_key)
            except Exception:
                if not hf_weight_key.startswith("vit."):
                    raise
                self.prefix = None
                return super().get_tensor(hf_weight_key[len("vit.") :])

    vit = keras_hub.models.ViTBackbone.from_preset(preset, load_weights=False, **kwargs)
    with _Loader(preset) as loader:
        convert_vit.convert_weights(vit, loader, config)
    return vit
