"""Max |keras - transformers| of a DINOv2 checkpoint: keras-hub's position table vs this project's.

For each ``--sizes`` (pixels, multiples of 14) and 2 random ImageNet-normalised images, prints
the largest absolute difference from transformers' ``Dinov2Model`` (float32, CPU) of the last
hidden state and of the pooled output (the layer-normed class token), for keras-hub's
``DINOV2Backbone.from_preset`` (TF-bicubic position table) and for
`dinov2_backbone.load_dinov2` (torch-bicubic table, `models.dinov2_position`), and the largest
difference between the two tables. Needs torch and transformers (peer requirements); no network
when the checkpoint is a local directory, e.g. the one `benchmarks/offline_dinov2.py` writes:

    python benchmarks/dinov2_hf_parity.py --checkpoint /tmp/dinov2-s --sizes 224 518
"""

from __future__ import annotations

import argparse

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], "float32")
IMAGENET_STD = np.array([0.229, 0.224, 0.225], "float32")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="/tmp/dinov2-s", help="HF Dinov2 directory")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 518])
    args = parser.parse_args(argv)
    import keras_hub
    import torch
    from transformers import Dinov2Model

    from eyegazer_keras.models import dinov2_backbone

    hf = Dinov2Model.from_pretrained(args.checkpoint).eval()
    rng = np.random.default_rng(0)
    for size in args.sizes:
        pixels = rng.uniform(0, 255, (2, size, size, 3)).astype("float32")
        x = ((pixels / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype("float32")
        with torch.no_grad():
            ref = hf(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
        seq, pooled = ref.last_hidden_state.numpy(), ref.pooler_output.numpy()
        shape = {"image_shape": (size, size, 3)}
        before = keras_hub.models.DINOV2Backbone.from_preset(args.checkpoint, **shape)
        after, _, _ = dinov2_backbone.load_dinov2(args.checkpoint, size, None)
        for name, model in (("keras-hub (TF bicubic)", before), ("load_dinov2 (torch)", after)):
            out = np.asarray(model.predict({"images": x}, verbose=0))
            print(
                f"{size} px {name:24s} last_hidden_state {np.abs(out - seq).max():.2e}  "
                f"pooled {np.abs(out[:, 0] - pooled).max():.2e}  (|HF| <= {np.abs(seq).max():.1f})"
            )
        tables = [
            np.asarray(m.embeddings.interpolated_position_embeddings) for m in (before, after)
        ]
        print(
            f"{size} px position tables: max |TF - torch bicubic| {np.abs(np.subtract(*tables)).max():.2e}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
