"""What the quality gate adds to the serving latency of a camera photo, measured in one run.

Times, on the same photos and in the same process, the bytes -> model path that
`serving_default` runs, with and without `fundus.assess_quality` (the gate: its 17 measures
and the fitted score), batch 1:

* `no gate`: decode (EXIF, alpha, pixel limit) -> `photo_to_model_input` -> a ViT-S/16 at
  224 px (keras-hub `ViTBackbone`, random weights: the time does not depend on them);
* `with gate`: the same plus the gate, as the export runs it.

Photos: the JPEGs of `--data` (e.g. real ~1 MP EyePACS camera photos, read from that path and
never copied), or generated 1024x683 fundus-like JPEGs without it.

    python benchmarks/gate_latency.py --data ../shared/realdata/eyepacs-raw --photos 24
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import timing  # noqa: E402


def _photos(folder: pathlib.Path | None, count: int) -> list[bytes]:
    if folder is not None:
        paths = sorted((folder / "train").glob("*.jpeg"))[:count]
        return [p.read_bytes() for p in paths]
    from eyegazer_datasets.common import dummy_data
    from PIL import Image

    out = []
    for seed in range(count):
        buffer = io.BytesIO()
        Image.fromarray(dummy_data.fundus_like(seed, (1024, 683))).save(buffer, "JPEG")
        out.append(buffer.getvalue())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=pathlib.Path, help="Kaggle EyePACS folder (train/*.jpeg)")
    parser.add_argument("--photos", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    import keras_hub
    import tensorflow as tf

    from eyegazer_keras import fundus

    print(f"CPU: {timing.machine()}; load {timing.load_average()}")
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(224, 224, 3),
        patch_size=16,
        num_layers=12,
        num_heads=6,
        hidden_dim=384,
        mlp_dim=1536,
    )
    spec = fundus.PreprocessingSpec(stored_size=512)

    def path(with_gate: bool):
        @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
        def serve(data):
            image = fundus.decode_image(data)
            x = fundus.photo_to_model_input(image, 224, spec)
            out = backbone(x[tf.newaxis] / 255.0)
            if with_gate:
                return out, fundus.assess_quality(image)["quality_score"]
            return out, tf.constant(0.0)

        return serve

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def gate_only(data):
        return fundus.assess_quality(fundus.decode_image(data))["quality_score"]

    photos = _photos(args.data, args.photos)
    variants = {"no gate": path(False), "with gate": path(True), "gate alone": gate_only}
    for fn in variants.values():
        fn(tf.constant(photos[0]))  # trace
    results = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():  # interleaved: the load hits every variant alike
            start = time.perf_counter()
            for photo in photos:
                fn(tf.constant(photo))
            results[name].append(1000 * (time.perf_counter() - start) / len(photos))
    ms = {name: statistics.median(v) for name, v in results.items()}
    for name, value in ms.items():
        print(f"{name:>12}: {value:7.1f} ms per photo (median of {args.repeats} passes)")
    print(f"the gate adds {ms['with gate'] / ms['no gate'] - 1:+.1%} to bytes -> ViT-S/16 output")


if __name__ == "__main__":
    main()
