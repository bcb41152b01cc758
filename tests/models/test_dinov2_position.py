"""DINOv2 position tables resized as transformers does (`models.dinov2_position`).

The numpy bicubic against ``torch.nn.functional.interpolate`` itself, the table through keras-hub's
save/load paths (``.keras``, ``save_to_preset``/``from_preset``), and a tiny HF DINOv2 (with and
without registers, i.e. without and with antialiasing) at another size than its position grid
against transformers run live. torch/transformers tests skip where they are not installed.
"""

from __future__ import annotations

import os

import keras
import keras_hub
import numpy as np
import pytest

from eyegazer_keras.models import dinov2_backbone, dinov2_position
from eyegazer_keras.models.vit_lora import build_vit_classifier

HIDDEN, PATCH, GRID_SIZE, SIZE = 24, 14, 42, 28
FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "hf_dinov2")
# (in_h, in_w, out_h, out_w): down, up, non-square, to and from one cell, DINOv2's 518->224.
GRIDS = [(3, 3, 2, 2), (3, 3, 5, 5), (4, 6, 7, 3), (1, 5, 3, 2), (5, 5, 1, 1), (37, 37, 16, 16)]


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("shape", GRIDS)
def test_numpy_bicubic_matches_torch(shape, antialias):
    torch = pytest.importorskip("torch")
    h, w, out_h, out_w = shape
    grid = np.random.default_rng(h * 100 + w).normal(size=(h, w, 5)).astype("float32")
    theirs = (
        torch.nn.functional.interpolate(
            torch.from_numpy(grid.transpose(2, 0, 1)[None].copy()),
            size=(out_h, out_w),
            mode="bicubic",
            align_corners=False,
            antialias=antialias,
        )[0]
        .numpy()
        .transpose(1, 2, 0)
    )
    ours = dinov2_position.resize_grid(grid, (out_h, out_w), antialias)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=2e-6)
    # Not vacuous: TF's bicubic (keras-hub's) is another resampling.
    if not antialias and (h, w) != (out_h, out_w) and min(out_h, out_w) > 1:
        tf_resized = keras.ops.image.resize(grid[None], (out_h, out_w), interpolation="bicubic")
        assert np.abs(keras.ops.convert_to_numpy(tf_resized)[0] - theirs).max() > 1e-3


def test_matrix_rows_sum_to_one_and_same_size_is_identity():
    for antialias in (False, True):
        for in_size, out_size in ((37, 16), (3, 2), (2, 9)):
            matrix = dinov2_position.torch_bicubic_matrix(in_size, out_size, antialias)
            assert matrix.shape == (out_size, in_size)
            np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-12)
        np.testing.assert_allclose(dinov2_position.torch_bicubic_matrix(5, 5, antialias), np.eye(5))
    with pytest.raises(ValueError, match=">= 1"):
        dinov2_position.torch_bicubic_matrix(0, 3)


@pytest.fixture
def preset_dir(tmp_path):
    """A tiny keras-hub DINOV2Backbone preset with a 3x3 (42-px) position table of scale 1."""
    model = keras_hub.models.DINOV2Backbone(
        patch_size=PATCH,
        num_layers=1,
        hidden_dim=HIDDEN,
        num_heads=2,
        intermediate_dim=48,
        image_shape=(GRID_SIZE, GRID_SIZE, 3),
        position_embedding_shape=(GRID_SIZE, GRID_SIZE),
    )
    table = model.embeddings.position_embeddings
    table.assign(np.random.default_rng(1).normal(size=table.shape).astype("float32"))
    folder = tmp_path / "tiny-dinov2"
    model.save_to_preset(str(folder))
    return folder, np.asarray(table.numpy())


def _tables(backbone):
    e = backbone.embeddings
    return e.position_embeddings.numpy(), e.interpolated_position_embeddings.numpy()


def _expected_table(pretrained):
    grid = pretrained[0, 1:].reshape(3, 3, HIDDEN)
    small = dinov2_position.resize_grid(grid, (2, 2)).reshape(1, 4, HIDDEN)
    return np.concatenate([pretrained[:, :1], small], axis=1)


def test_table_survives_keras_file_and_preset_round_trips(preset_dir, tmp_path):
    folder, pretrained = preset_dir
    backbone, _, _ = dinov2_backbone.load_dinov2(str(folder), SIZE, None)
    assert isinstance(backbone, dinov2_position.TorchBicubicDINOV2Backbone)
    assert backbone.get_config()["position_interpolation"] == "torch_bicubic"
    table, used = _tables(backbone)
    np.testing.assert_array_equal(table, pretrained)
    np.testing.assert_allclose(used, _expected_table(pretrained), atol=1e-6)
    x = {"images": np.random.default_rng(2).normal(size=(2, SIZE, SIZE, 3)).astype("float32")}
    expected = keras.ops.convert_to_numpy(backbone(x))

    backbone.save(tmp_path / "b.keras")  # keras-hub's save_own_variables: no change seen
    np.testing.assert_array_equal(_tables(backbone)[0], pretrained)
    loaded = keras.models.load_model(tmp_path / "b.keras")
    assert isinstance(loaded, dinov2_position.TorchBicubicDINOV2Backbone)
    np.testing.assert_array_equal(_tables(loaded)[0], pretrained)
    np.testing.assert_array_equal(_tables(loaded)[1], used)
    assert not loaded.embeddings.interpolated_position_embeddings.trainable
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), expected, atol=1e-6)

    backbone.save_to_preset(str(tmp_path / "again"))
    assert dinov2_backbone.is_dinov2(str(tmp_path / "again"))
    again = keras_hub.models.DINOV2Backbone.from_preset(str(tmp_path / "again"))
    assert isinstance(again, dinov2_position.TorchBicubicDINOV2Backbone)
    np.testing.assert_array_equal(_tables(again)[0], pretrained)
    np.testing.assert_array_equal(_tables(again)[1], used)
    big, _, _ = dinov2_backbone.load_dinov2(str(tmp_path / "again"), GRID_SIZE, None)
    np.testing.assert_array_equal(_tables(big)[1], pretrained)  # the table's own size: itself
    np.testing.assert_array_equal(_tables(dinov2_backbone.resize_dinov2(big, SIZE))[1], used)


def test_keras_hub_interpolation_is_the_parent_class_bit_for_bit(preset_dir):
    folder, _ = preset_dir
    legacy, _, _ = dinov2_backbone.load_dinov2(
        str(folder), SIZE, None, position_interpolation="keras_hub"
    )
    parent = keras_hub.models.DINOV2Backbone.from_preset(str(folder), image_shape=(SIZE, SIZE, 3))
    np.testing.assert_array_equal(_tables(legacy)[1], _tables(parent)[1])
    torch_table = _tables(dinov2_backbone.resize_dinov2(legacy, SIZE, "torch_bicubic"))[1]
    assert np.abs(torch_table - _tables(parent)[1]).max() > 1e-3
    with pytest.raises(ValueError, match="position_interpolation"):
        dinov2_backbone.load_dinov2(str(folder), SIZE, None, position_interpolation="cubic")
    # What a run's config asks for (backbone_config), e.g. to reload a run made before.
    for mode in dinov2_position.POSITION_INTERPOLATIONS:
        classifier = build_vit_classifier(
            str(folder),
            num_classes=2,
            image_size=SIZE,
            lora_rank=2,
            backbone_config={"position_interpolation": mode},
        )
        assert classifier.get_layer("backbone").position_interpolation == mode


@pytest.mark.parametrize(
    ("name", "hf_class"),
    [("dinov2model", "Dinov2Model"), ("dinov2reg", "Dinov2WithRegistersModel")],
)
def test_hf_last_hidden_state_at_another_size_than_the_table(name, hf_class):
    """28 px on a 42-px table: transformers (torch bicubic; antialiased with registers) = ours.

    keras-hub's own table was 0.011 off for ``dinov2model``; with registers (antialiased) TF's
    and torch's resampling already agreed to 1e-6 here."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = getattr(transformers, hf_class).from_pretrained(os.path.join(FIXTURES, name)).eval()
    x = np.random.default_rng(3).normal(size=(2, SIZE, SIZE, 3)).astype("float32")
    with torch.no_grad():
        theirs = hf(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    backbone, _, _ = dinov2_backbone.load_dinov2(os.path.join(FIXTURES, name), SIZE, None)
    ours = keras.ops.convert_to_numpy(backbone({"images": x}))
    diff = np.abs(ours - theirs.last_hidden_state.numpy()).max()
    assert diff <= 1e-4, diff
