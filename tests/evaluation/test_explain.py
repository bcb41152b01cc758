"""Explanation maps: shape and frame, response to a planted lesion, scores against masks."""

import numpy as np
import pytest

S = 32
LESION = (40.0, 200.0, 60.0)  # a colour no healthy pixel has: learnable in a few epochs


def _disc():
    r = np.arange(S) - (S - 1) / 2
    return (r[:, None] ** 2 + r[None, :] ** 2) <= (S / 2 - 1) ** 2


def _photos(n, seed, lesion_p=0.5):
    """Orange discs on black; with probability `lesion_p` one lesion (radius 3.5 px)."""
    rng = np.random.default_rng(seed)
    disc = _disc()
    yy, xx = np.ogrid[:S, :S]
    x = np.zeros((n, S, S, 3), np.float32)
    y = np.zeros(n, int)
    centres = []
    for i in range(n):
        img = (np.array([190, 80, 40]) + rng.normal(0, 4, (S, S, 3))) * disc[..., None]
        centre = None
        if rng.random() < lesion_p:
            while True:
                cy, cx = rng.integers(5, S - 5, 2)
                if disc[cy, cx] and abs(cy - S / 2) > 4 and abs(cx - S / 2) > 4:
                    break
            img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 12] = LESION
            y[i], centre = 1, (int(cy), int(cx))
        x[i] = np.clip(img, 0, 255)
        centres.append(centre)
    return x, y, centres


def _quadrant(y, x):
    return int(y >= S / 2) * 2 + int(x >= S / 2)


def _tiny_vit(pooling="token"):
    from eyegazer_keras.models.vit_lora import build_vit_classifier

    return build_vit_classifier(
        "config",
        num_classes=2,
        image_size=S,
        lora_rank=0,
        pooling=pooling,
        backbone_config=dict(patch_size=4, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64),
    )


def _tiny_cnn():
    import keras

    return keras.Sequential(
        [
            keras.Input((S, S, 3)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="last_conv"),
            keras.layers.GlobalMaxPooling2D(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )


@pytest.fixture(scope="module")
def trained():
    """A tiny ViT and a tiny CNN trained to detect the planted lesion (about 30 s together)."""
    import keras

    x, y, _ = _photos(256, seed=0)
    keras.utils.set_random_seed(0)
    vit = _tiny_vit()
    vit.compile(
        keras.optimizers.Adam(2e-3), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    vit.fit(x, y, epochs=8, batch_size=32, verbose=0)
    cnn = _tiny_cnn()
    cnn.compile(
        keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    cnn.fit(x, y, epochs=15, batch_size=16, verbose=0)
    return {"vit": vit, "cnn": cnn}


@pytest.mark.parametrize("pooling", ["token", "gap"])
def test_vit_maps_shape_frame_and_forward_parity(pooling):
    import tensorflow as tf

    from eyegazer_keras.evaluation import explain

    model = _tiny_vit(pooling)
    x, _, _ = _photos(3, seed=1)
    # The block-by-block forward pass that keeps the attention IS the model.
    logits, prefix, attentions = explain._vit_forward(model, tf.constant(x))
    np.testing.assert_allclose(tf.nn.softmax(logits).numpy(), model(x).numpy(), atol=1e-5)
    assert prefix == 1 and len(attentions) == 2
    assert tuple(attentions[0].shape) == (3, 2, 1 + (S // 4) ** 2, 1 + (S // 4) ** 2)
    outside = ~_disc()
    for method in explain.VIT_METHODS:
        maps = explain.explain(model, x, method)
        assert maps.shape == (3, S, S) and maps.dtype == np.float32  # the model input's frame
        assert maps.min() >= 0.0 and maps.max() == pytest.approx(1.0)
        assert np.all(maps[:, outside] == 0.0)  # nothing outside the fundus
        assert explain.explain(model, x[0], method).shape == (S, S)
    assert explain.default_method(model) == "gradient_rollout"
    with pytest.raises(ValueError, match="grad_cam"):
        explain.explain(_tiny_cnn(), x, "attention_rollout")
    with pytest.raises(ValueError, match="method"):
        explain.explain(model, x, "lime")


def test_grad_cam_shape_and_frame():
    from eyegazer_keras.evaluation import explain

    model = _tiny_cnn()
    x, _, _ = _photos(2, seed=2, lesion_p=1.0)
    maps = explain.explain(model, x)
    assert explain.default_method(model) == "grad_cam"
    assert maps.shape == (2, S, S) and np.all(maps[:, ~_disc()] == 0.0)
    vit = _tiny_vit()
    with pytest.raises(ValueError, match="Conv2D"):
        explain.grad_cam(vit, x)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, method",
    [("vit", "attention_rollout"), ("vit", "gradient_rollout"), ("cnn", "grad_cam")],
)
def test_map_maximum_falls_in_the_planted_lesions_quadrant(trained, name, method):
    from eyegazer_keras.evaluation import explain, explain_scores

    x, _, centres = _photos(24, seed=5, lesion_p=1.0)
    maps = explain.explain(trained[name], x, method)
    in_quadrant = [
        _quadrant(*np.unravel_index(np.argmax(m), m.shape)) == _quadrant(*c)
        for m, c in zip(maps, centres, strict=True)
    ]
    assert np.mean(in_quadrant) >= 0.8, (method, np.mean(in_quadrant))
    # The map peaks on the lesion itself (pointing game, 2 px tolerance) for most photos.
    masks = np.zeros((24, S, S), bool)
    yy, xx = np.ogrid[:S, :S]
    for i, (cy, cx) in enumerate(centres):
        masks[i] = (yy - cy) ** 2 + (xx - cx) ** 2 <= 12
    scores = explain_scores.score_maps({method: maps}, masks, x, tolerance=2)
    assert scores["maps"][method]["pointing_game"] >= 0.6
    assert scores["maps"][method]["pointing_game"] > 2 * scores["maps"]["random"]["pointing_game"]
    # A blank photo (nothing above the border threshold) gives a flat, all-zero map.
    blank = explain.explain(trained[name], np.zeros((1, S, S, 3), np.float32), method)
    assert blank.shape == (1, S, S) and np.all(blank == 0.0)


def test_scores_by_hand():
    from eyegazer_keras.evaluation import explain_scores

    disc = np.broadcast_to(_disc()[..., None], (S, S, 3)).astype(np.float32) * 150
    mask = np.zeros((S, S), bool)
    mask[6:10, 20:24] = True
    perfect = mask.astype(np.float32)
    assert explain_scores.pointing_game_hit(perfect, mask)
    assert explain_scores.pixel_auroc(perfect, mask) == 1.0
    assert explain_scores.pixel_auroc(1.0 - perfect, mask) == 0.0
    # A peak 3 px away from the lesion: miss at tolerance 0 and 2, hit at 3.
    off = np.zeros((S, S), np.float32)
    off[13, 21] = 1.0
    assert not explain_scores.pointing_game_hit(off, mask, tolerance=2)
    assert explain_scores.pointing_game_hit(off, mask, tolerance=4)
    assert explain_scores.pixel_auroc(np.zeros((S, S)), np.zeros((S, S))) is None
    out = explain_scores.score_maps(
        {"oracle": perfect[None].repeat(2, 0)},
        np.stack([mask, np.zeros_like(mask)]),
        np.stack([disc, disc]),
    )
    assert out["n_scored"] == 1 and out["n_skipped_no_lesion"] == 1
    assert out["tolerance_px"] == round(15 / 224 * S)
    oracle = out["maps"]["oracle"]
    assert (oracle["pointing_game"], oracle["pixel_auroc"], oracle["n"]) == (1.0, 1.0, 1)
    assert oracle["pointing_game_at_tolerance"] == {"0": 1.0, "1": 1.0, "2": 1.0}
    assert set(out["maps"]) == {"oracle", "random", "centre_prior"}
    assert out["maps"]["centre_prior"]["pointing_game"] == 0.0  # lesion far from the centre
    with pytest.raises(ValueError, match="shape"):
        explain_scores.pointing_game_hit(np.zeros((4, 4)), np.zeros((5, 5)))


def test_overlay_is_an_image_of_the_photo():
    from eyegazer_keras.evaluation import explain

    photo = np.full((S, S, 3), 100, np.uint8)
    heat = np.zeros((8, 8), np.float32)
    heat[0, 0] = 1.0
    out = explain.overlay(photo, heat)
    assert out.shape == (S, S, 3) and out.dtype == np.uint8
    assert np.array_equal(out[-1, -1], photo[-1, -1])  # map 0: the photo unchanged
    assert not np.array_equal(out[0, 0], photo[0, 0])


def test_supported_method_per_model_kind():
    import keras

    from eyegazer_keras.evaluation import explain

    assert explain.supported_method(_tiny_vit()) == "gradient_rollout"
    assert (
        explain.supported_method(_tiny_cnn()) == "grad_cam"
    )  # top-level Conv2D (AutoKeras vanilla)
    inner = _tiny_cnn()
    nested = keras.Sequential([keras.Input((S, S, 3)), inner])  # convolutions inside a sub-model
    assert explain.supported_method(nested) is None
