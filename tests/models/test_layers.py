"""The custom Keras layers (models/vit_layers.py, models/fast_layers.py) through keras-hub's
layer checks, and a built ViT+LoRA classifier through a save/load round trip."""

import keras
import numpy as np
from keras import ops

from eyegazer_keras.models import fast_layers, vit_layers, vit_lora
from tests.test_case import TINY_IMAGE_SIZE, TestCase, random_images, tiny_vit


def _normal(*shape):
    # Tensors, not numpy arrays: Keras's compute_output_spec (used by keras-hub's precision
    # checks) does not take numpy arrays for tensor arguments.
    return ops.convert_to_tensor(np.random.default_rng(0).normal(size=shape).astype("float32"))


class CustomLayerTest(TestCase):
    def _assert_dtypes_as_keras(self, cls, keras_cls, kwargs, shape):
        """Under each dtype policy, output and weight dtypes are those of the Keras base layer.

        keras-hub's precision check wants every weight in the policy's variable dtype, but Keras
        itself keeps LoRA A/B in float32 under a "bfloat16" policy (`keras.layers.Dense` too).
        """
        x = _normal(*shape)
        for policy in ("float32", "mixed_float16", "mixed_bfloat16", "bfloat16"):
            ours, ref = cls(**kwargs, dtype=policy), keras_cls(**kwargs, dtype=policy)
            self.assertEqual(ours(x).dtype, ref(x).dtype)
            self.assertEqual(
                [(w.name, w.dtype) for w in ours.weights], [(w.name, w.dtype) for w in ref.weights]
            )

    def test_pixel_normalization(self):
        self.run_layer_test(
            cls=vit_layers.PixelNormalization,
            init_kwargs={"scale": [1 / 127.5] * 3, "offset": -1.0},
            input_data=ops.convert_to_tensor(np.array([[[0.0, 127.5, 255.0]]], "float32")),
            expected_output_shape=(1, 1, 3),
            expected_output_data=np.array([[[-1.0, 0.0, 1.0]]], "float32"),
            run_training_check=False,  # no weights
            run_precision_checks=False,  # float32 by design: pixels keep full precision
        )

    def test_vit_pooling(self):
        tokens = np.arange(2 * 5 * 4, dtype="float32").reshape(2, 5, 4)
        for mode, expected in (("token", tokens[:, 0]), ("gap", tokens[:, 1:].mean(axis=1))):
            self.run_layer_test(
                cls=vit_layers.ViTPooling,
                init_kwargs={"mode": mode, "num_prefix_tokens": 1},
                input_data=ops.convert_to_tensor(tokens),
                expected_output_shape=(2, 4),
                expected_output_data=expected,
                run_training_check=False,
            )

    def test_factored_lora_dense(self):
        self.run_layer_test(
            cls=fast_layers.FactoredLoRADense,
            init_kwargs={"units": 6, "lora_rank": 2},
            input_data=_normal(2, 3, 5),
            expected_output_shape=(2, 3, 6),
            expected_num_trainable_weights=3,  # bias, lora_kernel_a, lora_kernel_b
            expected_num_non_trainable_weights=1,  # the frozen kernel
            expected_num_non_trainable_variables=1,
            run_precision_checks=False,  # see _assert_dtypes_as_keras
        )
        self._assert_dtypes_as_keras(
            fast_layers.FactoredLoRADense,
            keras.layers.Dense,
            {"units": 6, "lora_rank": 2},
            (2, 3, 5),
        )

    def test_factored_and_rank_r_lora_einsum_dense(self):
        kwargs = {"equation": "abc,cde->abde", "output_shape": (3, 2, 4), "bias_axes": "de"}
        kwargs["lora_rank"] = 2
        for cls in (fast_layers.FactoredLoRAEinsumDense, fast_layers.RankRLoRAEinsumDense):
            self.run_layer_test(
                cls=cls,
                init_kwargs=kwargs,
                input_data=_normal(2, 3, 8),
                expected_output_shape=(2, 3, 2, 4),
                expected_num_trainable_weights=3,
                expected_num_non_trainable_weights=1,
                expected_num_non_trainable_variables=1,
                run_precision_checks=False,  # see _assert_dtypes_as_keras
            )
            self._assert_dtypes_as_keras(cls, keras.layers.EinsumDense, kwargs, (2, 3, 8))

    def test_batch_matmul_attention(self):
        x = _normal(2, 5, 8)
        self.run_layer_test(
            cls=fast_layers.BatchMatMulAttention,
            init_kwargs={"num_heads": 2, "key_dim": 4},
            input_data={"query": x, "value": x},
            expected_output_shape=(2, 5, 8),
            expected_num_trainable_weights=8,  # q, k, v, output: kernel + bias each
        )


class ViTLoRAModelTest(TestCase):
    def test_lora_classifier_round_trips_through_keras_file(self):
        model = vit_lora.build_vit_classifier(
            None,
            backbone_config=tiny_vit(),
            num_classes=5,
            image_size=TINY_IMAGE_SIZE,
            lora_rank=2,
        )
        rng = np.random.default_rng(1)
        for v in model.trainable_weights:  # B starts at zero: make LoRA change the output
            if v.path.endswith("lora_kernel_b"):
                v.assign(rng.normal(0, 0.5, v.shape).astype("float32"))
        reloaded = self.run_model_round_trip(model, random_images())
        self.assertEqual(vit_lora.count_parameters(model), vit_lora.count_parameters(reloaded))
        self._assert_same_trainable(model, reloaded)
        self.assertEqual(vit_lora.build_info(reloaded), vit_lora.build_info(model))

    def _assert_same_trainable(self, model, reloaded):
        """Same trainable variables (paths, values), LoRA still separate, and it trains."""
        self.assertEqual(
            [v.path for v in model.trainable_weights], [v.path for v in reloaded.trainable_weights]
        )
        for a, b in zip(model.trainable_weights, reloaded.trainable_weights, strict=True):
            self.assertAllClose(a, b, atol=0, rtol=0)
        lora = [v for v in reloaded.trainable_weights if "lora_kernel" in v.path]
        self.assertLen(lora, 8)  # 2 blocks x (query, value) x (A, B)
        before = [keras.ops.convert_to_numpy(v) for v in lora]
        reloaded.compile(optimizer=keras.optimizers.SGD(0.1))
        reloaded.fit(random_images(4), np.array([0, 1, 2, 3]), batch_size=4, verbose=0)
        for old, v in zip(before, lora, strict=True):
            self.assertFalse(np.allclose(old, keras.ops.convert_to_numpy(v)), v.path)

    def test_keras_layout_and_full_fine_tune_round_trip(self):
        for kwargs in ({"lora_layout": "keras", "lora_rank": 2}, {"lora_rank": 0}):
            model = vit_lora.build_vit_classifier(
                None,
                backbone_config=tiny_vit(),
                num_classes=2,
                image_size=TINY_IMAGE_SIZE,
                **kwargs,
            )
            reloaded = self.run_model_round_trip(model, random_images())
            self.assertEqual(
                [v.path for v in model.trainable_weights],
                [v.path for v in reloaded.trainable_weights],
            )
            self.assertEqual(vit_lora.build_info(reloaded), vit_lora.build_info(model))

    def test_merged_lora_file_is_refused_not_read_as_zero_lora(self):
        """A weights file with LoRA merged into the kernel (2 entries) does not load silently."""
        layer = keras.layers.EinsumDense("abc,cde->abde", (3, 2, 4), bias_axes="de", lora_rank=2)
        layer.build((2, 3, 8))
        store = {}
        layer.save_own_variables(store)
        self.assertLen(store, 2)  # Keras core: kernel (merged) + bias
        ours = fast_layers.FactoredLoRAEinsumDense(
            "abc,cde->abde", (3, 2, 4), bias_axes="de", lora_rank=2
        )
        ours.build((2, 3, 8))
        with self.assertRaisesRegex(ValueError, "merged into the kernel"):
            ours.load_own_variables(store)
        saved = {}
        ours.save_own_variables(saved)
        self.assertLen(saved, 4)  # kernel, bias, A, B
