"""GPU training throughput: our ViT+LoRA model vs HF transformers + PEFT on one GPU.

Command (on a machine with one CUDA GPU, PyTorch + transformers + peft, JAX with CUDA, and this
repo's `keras`/`keras-hub` pins):

    python benchmarks/gpu_throughput.py --models vit-b16 --batch 128

What runs, each in its own subprocess, one after the other, on the same random images:

* ours: `eyegazer_keras.models.vit_lora.build_vit_classifier`, the model builder `eyegazer
  train` uses (LoRA on query/value with real alpha, frozen q/v biases, the factored LoRA and
  float32-GELU layers, class-token pooling, softmax head), under ``mixed_bfloat16``, trained by
  a jitted Keras stateless step (``model.stateless_call`` + ``optimizer.stateless_apply``,
  AdamW as `trainer.make_optimizer`) on the **JAX** backend. The project's default backend is
  TensorFlow, but a TensorFlow wheel cannot be installed on the lent GPU machine this was
  written for (no network, 64 MiB carried per call), so the same Keras model runs on JAX there;
  `runtime.resolve_auto` gives the TF path the same settings on a GPU (bf16 from compute
  capability 8.0, XLA).
* peer: transformers ``ViTForImageClassification`` + PEFT LoRA on ``q_proj``/``v_proj``
  (``query``/``value`` before transformers 5), ``torch.autocast(bfloat16)``, AdamW, SDPA
  attention; variant ``bf16-compile`` adds ``torch.compile``.

Prints img/s (median of timed blocks, warm-up and compilation excluded), the achieved TFLOP/s
from the per-image FLOP count in benchmarks/NOTES.md, and the ratio ours / best peer per model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import timing  # noqa: E402
from timing import train_flops_per_image  # noqa: E402, F401  (kept importable from here)
from train_throughput import _data, backbone_config, worker_peer  # noqa: E402

MODELS = {
    "vit-b16": dict(patch=16, layers=12, heads=12, hidden=768, mlp=3072),
    "vit-l16": dict(patch=16, layers=24, heads=16, hidden=1024, mlp=4096),
    "vit-tiny": dict(patch=16, layers=2, heads=2, hidden=64, mlp=128),  # smoke test only
}
COMMON = dict(image=224, classes=5, rank=16)


def worker_ours(shape: dict, args) -> dict:
    os.environ["KERAS_BACKEND"] = "jax"
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import jax
    import keras
    import numpy as np

    from eyegazer_keras.models.vit_lora import build_vit_classifier

    keras.utils.set_random_seed(0)
    model = build_vit_classifier(
        "config",
        num_classes=shape["classes"],
        image_size=shape["image"],
        lora_rank=shape["rank"],
        lora_alpha=shape["rank"],
        backbone_config=backbone_config(shape),
        dtype="mixed_bfloat16",
    )
    optimizer = keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=1e-4)
    optimizer.build(model.trainable_variables)

    def loss_fn(trainable, non_trainable, x, y):
        probs, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
        loss = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, probs))
        return loss, non_trainable

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    @jax.jit
    def step(trainable, non_trainable, opt_vars, x, y):
        (loss, non_trainable), grads = grad_fn(trainable, non_trainable, x, y)
        trainable, opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
        return trainable, non_trainable, opt_vars, loss

    images, labels = _data(args.batch, shape)
    x, y = jax.device_put(images), jax.device_put(labels)
    state = [
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in optimizer.variables],
    ]

    def one():
        state[0], state[1], state[2], loss = step(*state, x, y)
        loss.block_until_ready()

    result = timing.timed(one, args.warmup, args.steps, args.repeats, args.batch)
    result.update(
        side="ours",
        variant="bf16-jax",
        trainable=sum(int(np.prod(v.shape)) for v in model.trainable_variables),
        keras=keras.__version__,
        jax=jax.__version__,
        device=str(jax.devices()[0].device_kind),
    )
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="vit-b16", help=f"any of {','.join(MODELS)}")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--peer", default="bf16,bf16-compile")
    parser.add_argument("--ours", default="bf16-jax")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="H100 SXM dense bf16")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        side, name, variant = args.worker.split(":")
        shape = dict(COMMON, **MODELS[name])
        result = worker_ours(shape, args) if side == "ours" else worker_peer(variant, args, shape)
        timing.print_result(result)
        return 0

    results = []
    for name in args.models.split(","):
        shape = dict(COMMON, **MODELS[name])
        flops = train_flops_per_image(shape)
        jobs = [("ours", v) for v in args.ours.split(",") if v]
        jobs += [("peer", v) for v in args.peer.split(",") if v]
        for side, variant in jobs:
            worker_args = ["--worker", f"{side}:{name}:{variant}"]
            worker_args += ["--batch", str(args.batch), "--steps", str(args.steps)]
            worker_args += ["--repeats", str(args.repeats), "--warmup", str(args.warmup)]
            r = timing.run_worker(__file__, worker_args, tail=1500)
            if "error" in r:
                print(f"{name} {side} {variant} FAILED {r['error']}", flush=True)
                continue
            r.update(model=name, batch=args.batch, gflop_per_image=flops / 1e9)
            r["tflops"] = r["img_per_s"] * flops / 1e12
            results.append(r)
            print(
                f"{name} {side:4s} {variant:12s} {r['img_per_s']:8.1f} img/s  "
                f"{r['tflops']:6.1f} TFLOP/s ({100 * r['tflops'] / args.peak_tflops:4.1f}% of "
                f"{args.peak_tflops:.0f})  blocks={r['blocks']}  {r.get('device', '')}",
                flush=True,
            )
        mine = [r for r in results if r["model"] == name]
        o, p = timing.best(mine, "ours"), timing.best(mine, "peer")
        if o and p:
            print(
                f"{name}: best ours {o['variant']} {o['img_per_s']:.1f} / best peer "
                f"{p['variant']} {p['img_per_s']:.1f} img/s = ratio "
                f"{o['img_per_s'] / p['img_per_s']:.2f}x ({flops / 1e9:.1f} GFLOP per image)",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
