"""`FundusImageClassifier`: the DR grader as a keras-hub ``ImageClassifier`` task with LoRA.

A keras-hub `ViTBackbone`, wrapped as keras-hub wraps it in ``ViTImageClassifier``, with what the
project adds on top, all of it in ``get_config``, so ``model.save("m.keras")`` /
``keras.models.load_model``, ``save_to_preset`` / ``from_preset`` and export rebuild the same model:

* input ``float32 [B, S, S, 3]`` RGB pixels in 0..255; the pixel normalisation is a layer
  (``"normalization"``) inside the model, so serving needs no extra step;
* ``"pooling"`` (class token, mean of patch tokens, or both concatenated), optional
  ``"head_dropout"``, a float32 softmax head ``"predictions"`` (``[B, num_classes]``, float32
  also under mixed precision);
* LoRA on the layers named in ``lora_targets`` (rank, alpha, targets and layout are config
  fields; the layers save ``A``/``B`` unmerged, see `fast_layers`): everything in the backbone is
  frozen but ``A``/``B`` (also the q/v biases, PEFT's ``bias="none"``), the head trains;
  ``lora_rank=0`` is full fine-tuning;
* a `FundusImageClassifierPreprocessor` whose `FundusImageConverter` carries the run's
  `fundus.PreprocessingSpec`: ``fit``/``predict``/``evaluate`` take the stored images of a
  dataset (``uint8 [B, stored, stored, 3]``) and resize them to the model input as training did.

``lora_layout="peft"`` (default) gives the attention ``EinsumDense`` kernel ``(hidden, heads,
head_dim)`` a true rank-r LoRA, ``A: (hidden, rank)``, ``B: (rank, heads, head_dim)`` (PEFT's
parameter count); ``"keras"`` keeps Keras core's ``A: (hidden, heads, rank)``, ``B: (rank,
head_dim)`` (see `vit_lora` for the counts).

`from_preset` takes a run folder written by ``eyegazer train`` (the best epoch's weights), a
directory written by `save_to_preset`, or a backbone source (a keras-hub ViT preset name or
directory, ``hf://`` id, local HF checkpoint) plus the build arguments of
`vit_lora.build_vit_classifier`.

Example:

```python
import keras_hub
import numpy as np
from eyegazer_keras.models.fundus_image_classifier import FundusImageClassifier

backbone = keras_hub.models.ViTBackbone(
    image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=2, hidden_dim=48, mlp_dim=96
)
model = FundusImageClassifier(backbone, num_classes=5, lora_rank=2)
probs = model.predict(np.zeros((2, 32, 32, 3), "uint8"), verbose=0)  # float32 [2, 5]
```
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import keras
import keras_hub

from eyegazer_keras.models import dinov2_backbone, run_model
from eyegazer_keras.models import fast_layers as fast_layers_lib
from eyegazer_keras.models.fundus_image_classifier_preprocessor import (
    FundusImageClassifierPreprocessor,
)
from eyegazer_keras.models.fundus_image_converter import FundusImageConverter
from eyegazer_keras.models.vit_backbone import resolve_normalization
from eyegazer_keras.models.vit_layers import PixelNormalization, ViTPooling, serializable

__all__ = ["LORA_LAYOUTS", "FundusImageClassifier", "enable_lora"]

LORA_LAYOUTS = ("peft", "keras")


def _checked_alpha(num_classes: int, lora_rank: int, lora_alpha, lora_layout: str):
    """Refuses a wrong class count, rank or layout; returns alpha (default: the rank)."""
    if num_classes not in (2, 5):
        raise ValueError(f"num_classes={num_classes}: use 2 (binary) or 5 (grades 0-4).")
    if lora_rank < 0:
        raise ValueError(f"lora_rank={lora_rank} must be >= 0 (0 = full fine-tuning).")
    if lora_layout not in LORA_LAYOUTS:
        raise ValueError(f"lora_layout={lora_layout!r}: use one of {LORA_LAYOUTS}.")
    if lora_rank > 0 and lora_alpha is None:
        return float(lora_rank)
    return None if lora_alpha is None else float(lora_alpha)


def enable_lora(vit, rank: int, alpha: float, targets: Sequence[str], layout: str = "peft"):
    """Freezes `vit` and adds LoRA ``A``/``B`` (trainable, saved unmerged) to the target layers.

    Args:
        vit: a built `keras_hub.models.ViTBackbone`.
        rank: int > 0. LoRA rank.
        alpha: float. The update is scaled by alpha / rank.
        targets: sequence of str. Names of the Dense/EinsumDense layers that get LoRA.
        layout: str. ``"peft"`` or ``"keras"`` (see the module docstring).

    Raises:
        ValueError: a target names no Dense/EinsumDense layer, or an equation the PEFT layout
            cannot factor.
    """
    layers = [
        layer
        for layer in vit._flatten_layers(include_self=False)
        if layer.name in targets and hasattr(layer, "enable_lora")
    ]
    found = {layer.name for layer in layers}
    if missing := sorted(set(targets) - found):
        names = sorted(
            {la.name for la in vit._flatten_layers(include_self=False) if hasattr(la, "kernel")}
        )
        raise ValueError(f"lora_targets {missing} match no Dense/EinsumDense layer; have {names}.")
    # Freeze every backbone variable (kernels, q/v biases, norms, embeddings) ...
    for variable in vit.weights:
        variable.trainable = False
    # ... then add the LoRA matrices, which are created trainable.
    for layer in layers:
        old = type(layer)
        if layout == "peft" and old is keras.layers.EinsumDense:
            layer.__class__ = fast_layers_lib.RankRLoRAEinsumDense
        else:
            layer.__class__ = fast_layers_lib.UNMERGED.get(old, old)
        try:
            layer.enable_lora(rank, lora_alpha=alpha)
        except ValueError:
            layer.__class__ = old
            raise


@serializable
class FundusImageClassifier(keras_hub.models.ImageClassifier):
    """Diabetic-retinopathy grader: keras-hub ViT + LoRA + softmax head, with its preprocessing.

    Args:
        backbone: `keras_hub.models.ViTBackbone`, built; its ``image_shape`` is the model input.
        num_classes: int. 2 (binary: no DR / DR) or 5 (grades 0-4).
        preprocessor: `FundusImageClassifierPreprocessor` or None. None: a converter that only
            resizes to the backbone's input (no spec). Defaults to None.
        pooling: str. ``"token"`` (class token), ``"gap"`` (mean of patch tokens) or
            ``"token_gap"`` (both concatenated, as HF ``Dinov2ForImageClassification``).
            Defaults to ``"token"``.
        head_dropout: float. Dropout before the head. Defaults to 0.
        normalization: dict or None. ``{"scale", "offset"}`` on 0..255 or ``{"mean", "std"}`` on
            0..1 pixels, applied inside the model. Defaults to None (mean = std = 0.5, the
            keras-hub and HF ViT convention).
        lora_rank: int. LoRA rank; 0 means full fine-tuning. Defaults to 8.
        lora_alpha: float or None. Scale alpha / rank of the update. Defaults to the rank.
        lora_targets: sequence of str. Dense/EinsumDense layer names that get LoRA. Defaults to
            ``("query", "value")``.
        lora_layout: str. ``"peft"`` or ``"keras"``. Defaults to ``"peft"``.
        fast_layers: bool. Factored LoRA and float32 GELU (`fast_layers.use_fast_layers`): same
            math and variables, faster. Defaults to True.
        backbone_source: dict or None. Where the backbone came from (`vit_backbone.load_backbone`'s
            ``source``), recorded for adapters and model cards. Defaults to None.
        **kwargs: passed to `keras_hub.models.Task` (``name``, ``compile``).

    Call:
        ``float32 [B, S, S, 3]`` 0..255 -> float32 softmax ``[B, num_classes]``. ``fit``,
        ``predict`` and ``evaluate`` first run the preprocessor (stored images of any side).

    Raises:
        ValueError: a wrong class count, rank, layout, pooling or LoRA target, or a converter
            whose image size is not the backbone's.
    """

    backbone_cls = None  # see FundusImageConverter.backbone_cls
    preprocessor_cls = FundusImageClassifierPreprocessor

    def __init__(
        self,
        backbone,
        num_classes: int,
        preprocessor=None,
        pooling: str = "token",
        head_dropout: float = 0.0,
        normalization=None,
        lora_rank: int = 8,
        lora_alpha: float | None = None,
        lora_targets: Sequence[str] = ("query", "value"),
        lora_layout: str = "peft",
        fast_layers: bool = True,
        backbone_source=None,
        **kwargs,
    ):
        lora_alpha = _checked_alpha(num_classes, lora_rank, lora_alpha, lora_layout)
        lora_targets = tuple(lora_targets)
        scale, offset = resolve_normalization(normalization, None)
        image_size = int(backbone.image_shape[0])
        if preprocessor is None:
            preprocessor = FundusImageClassifierPreprocessor(FundusImageConverter(image_size))
        converter_size = getattr(preprocessor.image_converter, "image_size", None)
        if converter_size is not None and tuple(converter_size) != (image_size, image_size):
            raise ValueError(
                f"the image converter resizes to {tuple(converter_size)} but the backbone takes "
                f"{image_size}x{image_size}: build the converter with image_size={image_size}"
            )
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.normalization = PixelNormalization(scale, offset, name="normalization")
        self.pooling_layer = ViTPooling(
            pooling,
            num_prefix_tokens=dinov2_backbone.num_prefix_tokens(backbone),
            dtype=backbone.dtype_policy,
            name="pooling",
        )
        self.head_dropout_layer = (
            keras.layers.Dropout(head_dropout, name="head_dropout") if head_dropout else None
        )
        self.output_dense = keras.layers.Dense(
            num_classes, activation="softmax", dtype="float32", name="predictions"
        )
        # === Functional model ===
        inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="images")
        x = self.normalization(inputs)
        x = self.backbone({"images": x} if dinov2_backbone.is_dinov2_backbone(backbone) else x)
        x = self.pooling_layer(x)
        if self.head_dropout_layer is not None:
            x = self.head_dropout_layer(x)
        outputs = self.output_dense(x)
        kwargs.setdefault("name", "fundus_image_classifier")
        self.activation = "softmax"  # before Task.__init__ compiles: a probability loss
        # Skip ImageClassifier.__init__ (its own head), as keras-hub's ViTImageClassifier does.
        keras_hub.models.Task.__init__(self, inputs=inputs, outputs=outputs, **kwargs)
        # === LoRA (after the head, so seeded builds draw the same initial weights) ===
        if lora_rank > 0:
            enable_lora(backbone, lora_rank, lora_alpha, lora_targets, lora_layout)
        if fast_layers:
            fast_layers_lib.use_fast_layers(backbone)
        # === Config ===
        self.num_classes = int(num_classes)
        self.pooling = pooling
        self.head_dropout = float(head_dropout)
        self.scale, self.offset = scale, offset
        self.lora_rank = int(lora_rank)
        self.lora_alpha = lora_alpha
        self.lora_targets = lora_targets
        self.lora_layout = lora_layout
        self.fast_layers = bool(fast_layers)
        self.backbone_source = json.loads(json.dumps(backbone_source))

    @property
    def image_size(self) -> int:
        """The model input side in pixels."""
        return int(self.backbone.image_shape[0])

    @property
    def spec(self):
        """The preprocessor's `fundus.PreprocessingSpec`, or None."""
        return getattr(self.preprocessor, "spec", None)

    def build_info(self) -> dict:
        """The JSON-able build arguments adapters and model cards record.

        Returns:
            dict: ``backbone`` (source), ``num_classes``, ``image_size``, ``pooling``,
            ``lora_rank``, ``lora_alpha``, ``lora_targets``, ``lora_layout``, ``bias``,
            ``head_dropout``, ``normalization`` ``{"scale", "offset"}``.
        """
        on = self.lora_rank > 0
        return {
            "backbone": self.backbone_source,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "pooling": self.pooling,
            "lora_rank": self.lora_rank,
            "lora_alpha": self.lora_alpha if on else None,
            "lora_targets": list(self.lora_targets) if on else [],
            "lora_layout": self.lora_layout if on else None,
            "bias": "none",
            "head_dropout": self.head_dropout,
            "normalization": {"scale": self.scale, "offset": self.offset},
        }

    def get_config(self):
        config = keras_hub.models.Task.get_config(self)  # backbone, preprocessor, name
        config.update(
            {
                "num_classes": self.num_classes,
                "pooling": self.pooling,
                "head_dropout": self.head_dropout,
                "normalization": {"scale": self.scale, "offset": self.offset},
                "lora_rank": self.lora_rank,
                "lora_alpha": self.lora_alpha,
                "lora_targets": list(self.lora_targets),
                "lora_layout": self.lora_layout,
                "fast_layers": self.fast_layers,
                "backbone_source": self.backbone_source,
            }
        )
        return config

    @classmethod
    def from_preset(cls, preset, load_weights: bool = True, **kwargs):
        """Loads a trained run, a saved task preset, or a backbone source with a new head.

        Args:
            preset: str or PathLike. One of: a run folder written by ``eyegazer train`` (the
                best epoch's adapter on its backbone; `run_model.load_run_model`); a directory
                written by `save_to_preset`; a keras-hub ViT or DINOv2 preset name or directory,
                ``hf://org/name`` or a local Hugging Face checkpoint (then ``num_classes`` and
                ``image_size`` are required, see `vit_lora.build_vit_classifier` for the other
                arguments).
            load_weights: bool. Load the saved weights (a `save_to_preset` directory only).
                Defaults to True.
            **kwargs: build arguments for a backbone source; ``dtype`` for a saved preset; none
                for a run folder.

        Returns:
            `FundusImageClassifier`.

        Raises:
            ValueError: arguments a run folder does not take; a backbone source without
                ``num_classes``/``image_size``; bad build arguments.
            FileNotFoundError: a run folder that has no finished epoch.
        """
        path = os.fspath(preset)
        if run_model.is_run_folder(path):
            if kwargs or not load_weights:
                raise ValueError(
                    f"{path} is an `eyegazer train` run folder: it takes no build arguments "
                    f"(got {sorted(kwargs) or ['load_weights=False']})"
                )
            return run_model.load_run_model(path)
        if _is_task_preset(path, cls):
            from keras_hub.src.utils.preset_utils import get_preset_loader

            loader = get_preset_loader(path)
            return loader.load_task(cls, load_weights, True, **kwargs)
        from eyegazer_keras.models import vit_lora  # vit_lora builds on this module

        missing = [k for k in ("num_classes", "image_size") if k not in kwargs]
        if missing:
            raise ValueError(
                f"{path} is a backbone source, not a trained model: pass {', '.join(missing)} "
                "(and the LoRA settings) to build a new classifier on it"
            )
        return vit_lora.build_vit_classifier(path, **kwargs)


def _is_task_preset(path: str, cls) -> bool:
    """A `save_to_preset` directory whose task.json is this class (or a subclass)."""
    task_json = os.path.join(path, "task.json")
    if not os.path.isfile(task_json):
        return False
    with open(task_json) as f:
        name = json.load(f).get("registered_name", "")
    return keras.saving.get_registered_object(name) is not None and issubclass(
        keras.saving.get_registered_object(name), cls
    )
