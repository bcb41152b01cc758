"""DINOv2 position tables resized as Hugging Face transformers does: torch's bicubic, in numpy.

keras-hub 0.32's `DINOV2Embedding` resizes the pretrained position table (e.g. 37x37 for a
518-px checkpoint) to the input's patch grid with TF's bicubic (cubic-convolution coefficient
A=-0.5, TF's edge handling). transformers' ``Dinov2Embeddings.interpolate_pos_encoding`` calls
``torch.nn.functional.interpolate(table, size=(H // patch, W // patch), mode="bicubic",
align_corners=False)`` in float32 (``antialias=True`` for ``dinov2_with_registers``). Without
antialiasing the two differ: 0.006 on the table and 0.05 on the last hidden state of a 224-px
DINOv2 ViT-S/14 (1.8e-5 with this module's table). With antialiasing (registers) TF's and torch's
resampling already agree to ~1e-5 (PIL's filter both); this module then changes nothing visible.

`torch_bicubic_matrix` is torch's resampling along one axis as an ``[out, in]`` matrix, so that
``resize_grid`` = two matrix products; no torch is needed:

* ``antialias=False`` (``upsample_bicubic2d``): source coordinate ``scale * (o + 0.5) - 0.5`` with
  ``scale = in / out`` (the scale torch derives when given ``size``), cubic convolution with
  A=-0.75 on the 4 neighbours, indices clamped to the border.
* ``antialias=True`` (``_upsample_bicubic2d_aa``, PIL's filter): centre ``scale * (o + 0.5)``,
  support ``2 * max(scale, 1)``, cubic with A=-0.5 stretched by ``max(scale, 1)``, taps outside
  the grid dropped and the weights renormalised.

`TorchBicubicDINOV2Backbone` is keras-hub's `DINOV2Backbone` whose embedding layer resizes its
table this way (``position_interpolation="torch_bicubic"``) or keras-hub's way
(``"keras_hub"``, what every DINOv2 of this project used before; old ``.keras`` files hold the
keras-hub class and keep it). keras-hub's own paths all go through the embedding's
``_interpolate_position_embeddings``: the table filled at build, the one rebuilt by
``load_own_variables`` (``.keras`` files, ``from_preset``, HF conversion) and the change check of
``save_own_variables`` (which then sees no change and keeps the pretrained table). At the table's
own size both ways return the table itself.

Example:

```python
import numpy as np
from eyegazer_keras.models import dinov2_position

grid = np.random.default_rng(0).normal(size=(3, 3, 8)).astype("float32")
small = dinov2_position.resize_grid(grid, (2, 2))
print(small.shape)  # (2, 2, 8)
```
"""

from __future__ import annotations

import keras
import keras_hub
import numpy as np

__all__ = [
    "POSITION_INTERPOLATIONS",
    "TorchBicubicDINOV2Backbone",
    "interpolate_position_embeddings",
    "resize_grid",
    "torch_bicubic_matrix",
]

POSITION_INTERPOLATIONS = ("torch_bicubic", "keras_hub")


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with coefficient `a`, zero beyond |x| >= 2."""
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def torch_bicubic_matrix(in_size: int, out_size: int, antialias: bool = False) -> np.ndarray:
    """The ``[out_size, in_size]`` float64 matrix of torch's 1-D bicubic resampling.

    Same weights as ``torch.nn.functional.interpolate(x, size=out_size, mode="bicubic",
    align_corners=False, antialias=antialias)`` along one axis (no ``scale_factor``: the scale
    is ``in_size / out_size``).

    Args:
        in_size: int >= 1. Source length.
        out_size: int >= 1. Target length.
        antialias: bool. torch's antialiased (PIL-like) bicubic instead of the plain one.

    Returns:
        float64 array ``[out_size, in_size]``; each row sums to 1.

    Raises:
        ValueError: a size below 1.
    """
    in_size, out_size = int(in_size), int(out_size)
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be >= 1, got in_size={in_size}, out_size={out_size}")
    matrix = np.zeros((out_size, in_size), "float64")
    rows = np.arange(out_size)
    if not antialias:
        # torch computes the source coordinate in float32 (opmath of float).
        scale = np.float32(in_size) / np.float32(out_size)
        real = scale * (rows.astype("float32") + np.float32(0.5)) - np.float32(0.5)
        index = np.minimum(np.floor(real).astype("int64"), in_size - 1)  # guard_index_and_lambda
        t = np.clip(real.astype("float64") - index, 0.0, 1.0)
        weights = _cubic(np.stack([t + 1.0, t, 1.0 - t, 2.0 - t], axis=1), -0.75)
        for k in range(4):
            np.add.at(matrix, (rows, np.clip(index - 1 + k, 0, in_size - 1)), weights[:, k])
        return matrix
    scale = in_size / out_size
    stretch = max(scale, 1.0)
    support = 2.0 * stretch
    for o in rows:
        center = scale * (o + 0.5)
        low = max(int(center - support + 0.5), 0)  # C++ casts truncate toward zero
        high = min(int(center + support + 0.5), in_size)
        taps = np.arange(low, high)
        w = _cubic((taps - center + 0.5) / stretch, -0.5)
        total = w.sum()
        matrix[o, taps] = w / total if total != 0.0 else w
    return matrix


def resize_grid(grid, size, antialias: bool = False) -> np.ndarray:
    """Resizes a ``[H, W, C]`` grid to ``size`` as torch's bicubic does (float32 result).

    Args:
        grid: array-like ``[H, W, C]``, any float dtype (resampled in float64).
        size: ``(out_h, out_w)`` ints.
        antialias: bool. torch's ``antialias=True``.

    Returns:
        float32 ``[out_h, out_w, C]``.
    """
    grid = np.asarray(grid, "float64")
    rows = torch_bicubic_matrix(grid.shape[0], size[0], antialias)
    cols = torch_bicubic_matrix(grid.shape[1], size[1], antialias)
    return np.einsum("oh,hwc,pw->opc", rows, grid, cols).astype("float32")


def interpolate_position_embeddings(
    position_embeddings, patch_size, source_shape, target_shape, antialias=False
):
    """transformers' ``interpolate_pos_encoding`` with keras-hub's signature.

    A drop-in for ``DINOV2Embedding._interpolate_position_embeddings``.

    Args:
        position_embeddings: tensor or variable ``[1, 1 + n*n, D]`` (class token first).
        patch_size: int. Pixels per patch side.
        source_shape: ``(h, w)`` pixels the table is for (``n = h // patch_size``).
        target_shape: ``(h, w)`` pixels of the input.
        antialias: bool. torch's ``antialias=True`` (``dinov2_with_registers``).

    Returns:
        tensor ``[1, 1 + (H // patch) * (W // patch), D]`` in the input's dtype (resampled in
        float64, rounded to float32 as torch's float32 pass); the table itself at the same size.

    Raises:
        ValueError: the table is not a square grid plus one class token.
    """
    dtype = keras.backend.standardize_dtype(position_embeddings.dtype)
    if tuple(map(int, source_shape[:2])) == tuple(map(int, target_shape[:2])):
        return keras.ops.copy(keras.ops.convert_to_tensor(position_embeddings))
    table = np.asarray(keras.ops.convert_to_numpy(position_embeddings), "float64")
    dim = table.shape[-1]
    side = int(round((table.shape[1] - 1) ** 0.5))
    if side * side != table.shape[1] - 1:
        raise ValueError(f"position table of {table.shape[1] - 1} patches is not a square grid")
    size = (int(target_shape[0]) // int(patch_size), int(target_shape[1]) // int(patch_size))
    grid = resize_grid(table[0, 1:].reshape(side, side, dim), size, antialias)
    out = np.concatenate([table[0, :1].astype("float32"), grid.reshape(-1, dim)])[None]
    return keras.ops.cast(keras.ops.convert_to_tensor(out), dtype)


@keras.saving.register_keras_serializable(package="eyegazer_keras")
class TorchBicubicDINOV2Backbone(keras_hub.models.DINOV2Backbone):
    """keras-hub's `DINOV2Backbone` with the position table resized as transformers does.

    Args:
        position_interpolation: ``"torch_bicubic"`` (default; transformers' table, see the module
            docstring) or ``"keras_hub"`` (keras-hub's TF bicubic, bit for bit the parent class).
        **kwargs: `keras_hub.models.DINOV2Backbone` arguments.

    Raises:
        ValueError: an unknown `position_interpolation`.

    The used table (``interpolated_position_embeddings``) is not trainable, also after a
    ``.keras`` round trip. Outputs, weights and ``save_to_preset`` files are the parent's; the
    config adds
    ``position_interpolation`` (its ``registered_name`` is
    ``eyegazer_keras>TorchBicubicDINOV2Backbone``: import this module before loading one).
    """

    def __init__(self, *args, position_interpolation="torch_bicubic", **kwargs):
        if position_interpolation not in POSITION_INTERPOLATIONS:
            raise ValueError(
                f"position_interpolation={position_interpolation!r}: use one of "
                f"{POSITION_INTERPOLATIONS}"
            )
        super().__init__(*args, **kwargs)
        self.position_interpolation = position_interpolation
        embeddings = self.embeddings
        # Never trained: keras-hub saves a trained table only approximately.
        embeddings.interpolated_position_embeddings.trainable = False
        if position_interpolation == "torch_bicubic":
            # An instance attribute shadows the staticmethod for every caller in keras-hub.
            embeddings._interpolate_position_embeddings = interpolate_position_embeddings
            embeddings.interpolated_position_embeddings.assign(
                interpolate_position_embeddings(
                    embeddings.position_embeddings,
                    patch_size=embeddings.patch_size,
                    source_shape=embeddings.position_embedding_shape,
                    target_shape=embeddings.image_shape,
                    antialias=embeddings.antialias_in_interpolation,
                )
            )

    def get_config(self):
        config = super().get_config()
        config["position_interpolation"] = self.position_interpolation
        return config
