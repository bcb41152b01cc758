"""Training throughput: our `eyegazer train` step vs HF transformers + PEFT, same shape, same CPU.

Command (from a fresh clone, in the project's venv):

    pip install -r benchmarks/requirements-peer.txt && python benchmarks/train_throughput.py

`--quick` takes fewer timed steps (noisier). Each measurement runs in its own subprocess, one
after the other (TF and torch never share a process or compete for the cores), on the same
random images (numpy seed 0; the peer gets them as NCHW). Shape: ViT-S/16 at 224 px (12 layers,
6 heads, hidden 384, MLP 1536), LoRA rank 16 / alpha 16 on query+value, batch 16, 5 classes.

* ours: `runs.build_model(config)` + `trainer.make_optimizer(config)` +
  `trainer.Trainer(...).train_step` under the default strategy, exactly what `eyegazer train`
  runs (`runtime.configure_runtime`, `runtime.resolve_auto`, `runtime.xla_fusion` included); variants:
  fp32 and `mixed_precision="bfloat16"`, each with `jit_compile="auto"` (no suffix; on CPU
  that is "fusible" -- XLA for element-wise ops only -- in bf16 and off in fp32), `-fuse`
  ("fusible"), `-nofuse` (False) and `-xla` (True).
* peer: transformers `ViTForImageClassification` + PEFT LoRA (`q_proj`/`v_proj` in
  transformers 5, `query`/`value` before), AdamW, fp32 and `torch.autocast(bfloat16)`.

Warm-up steps are excluded; the result per variant is the median of `--repeats` timed blocks of
`--steps` steps. Prints img/s per variant and the ratio best-ours / best-peer. Also:
`--only ours|peer`, `--ours fp32,bf16,bf16-nofuse,bf16-xla,...`, `--peer fp32,bf16`, `--batch`,
`--lora-layout peft|keras`, `--inter-op N` (ours: inter-op threads after
`runtime.configure_runtime()`, which sets 1 on <= 4 cores as `eyegazer train` does; 0 = leave it).

Each line also prints images per CPU-second of the worker process times the core count: on a
machine shared with other jobs the wall-clock figures swing by 2x between blocks; the CPU-time
figure is steadier for TF, but penalises torch, whose OpenMP threads spin while waiting.

What it ran on: the CPU model and its bf16/AMX units (`timing.machine`), and this machine's TF
fp32/bf16 2048x2048 matmul rate measured before and after the variants (`timing.matmul_rates`);
each variant's matmul GFLOP/s (`timing.train_flops_per_image`: 19.3 GFLOP per ViT-S/16 LoRA
training image) is printed as a fraction of the better bf16 rate, next to its ratio to the
peer's best precision.
"""

from __future__ import annotations

import argparse
import os
import sys

import timing

SHAPE = dict(image=224, patch=16, layers=12, heads=6, hidden=384, mlp=1536, classes=5, rank=16)
OURS_VARIANTS = tuple(
    f"{p}{s}" for p in ("fp32", "bf16", "bf16mm") for s in ("", "-fuse", "-nofuse", "-xla")
)
# ours variants: precision + jit_compile. No suffix: jit_compile="auto" (what `eyegazer train`
# runs; on CPU: "fusible" (XLA for the element-wise ops only) in bf16, off in fp32); "-fuse":
# "fusible"; "-nofuse": False; "-xla": True (whole step in XLA). "bf16mm": bf16 in the matmul
# layers only (`serving.precision.bfloat16_backbone`'s layout: residual stream, LayerNorm and
# the element-wise ops in float32), jit "auto" = "fusible" as under mixed precision.
_JIT = {"": "auto", "fuse": "fusible", "nofuse": False, "xla": True}
PEER_VARIANTS = ("fp32", "bf16")


def _data(batch: int, shape: dict = SHAPE):
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, shape["image"], shape["image"], 3)).astype("float32")
    labels = rng.integers(0, shape["classes"], batch).astype("int32")
    return images, labels


def backbone_config(shape: dict = SHAPE) -> dict:
    """keras-hub `ViTBackbone` arguments for a benchmark shape."""
    return {
        "patch_size": shape["patch"],
        "num_layers": shape["layers"],
        "num_heads": shape["heads"],
        "hidden_dim": shape["hidden"],
        "mlp_dim": shape["mlp"],
    }


def peer_model(shape: dict = SHAPE):
    """transformers `ViTForImageClassification` + PEFT LoRA on q/v; returns (model, targets)."""
    from peft import LoraConfig, get_peft_model
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(
        hidden_size=shape["hidden"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        intermediate_size=shape["mlp"],
        image_size=shape["image"],
        patch_size=shape["patch"],
        num_labels=shape["classes"],
    )
    base = ViTForImageClassification(cfg)
    names = {n.rsplit(".", 1)[-1] for n, _ in base.named_modules()}
    targets = ["q_proj", "v_proj"] if "q_proj" in names else ["query", "value"]
    lora = LoraConfig(
        r=shape["rank"],
        lora_alpha=shape["rank"],
        target_modules=targets,
        lora_dropout=0.0,  # ours has no LoRA dropout either
        bias="none",
        modules_to_save=["classifier"],
    )
    return get_peft_model(base, lora), targets


# ------------------------------------------------------------------------------------------------
# Workers (each runs in its own process)
# ------------------------------------------------------------------------------------------------
def ours_step(variant: str, args):
    """`(step, model, config)`: our training step as `eyegazer train` runs it, for `variant`.

    `step()` runs one optimizer step on a constant batch and waits for it. Leaves the XLA
    fusion setting of the variant switched on in this process (a worker runs one variant).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import keras
    import tensorflow as tf

    from eyegazer_keras import runs
    from eyegazer_keras.configs import settings as configs
    from eyegazer_keras.training import distribute, runtime
    from eyegazer_keras.training import trainer as trainer_lib

    runtime.configure_runtime()  # exactly what `eyegazer train` does first (threads, XLA flags)
    if args.inter_op:  # must precede any TF op; see NOTES.md "thread settings"
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op)
    keras.utils.set_random_seed(0)
    config = configs.TrainConfig(
        name="bench",
        backbone=None,
        backbone_config=backbone_config(SHAPE),
        image_size=SHAPE["image"],
        lora_rank=SHAPE["rank"],
        lora_alpha=SHAPE["rank"],
        lora_layout=args.lora_layout,
        batch_size=args.batch,
        mixed_precision="bfloat16" if variant.partition("-")[0] == "bf16" else None,
        jit_compile=_JIT[variant.partition("-")[2]],
        strategy="default",
    )
    strategy = distribute.get_strategy(config.strategy)
    matmuls_only = variant.partition("-")[0] == "bf16mm"
    if matmuls_only and config.jit_compile == "auto":
        config.jit_compile = "fusible"  # what "auto" gives mixed precision on CPU
    runtime.resolve_auto(config)
    # Context managers entered for the rest of this process, referenced by `step` (a generator
    # context manager that is garbage-collected runs its exit: the setting would be undone).
    held = [runtime.xla_fusion(config)]  # as train.run_training does
    held[0].__enter__()
    with strategy.scope():  # as train._run_stage does
        model = runs.build_model(config)
        if matmuls_only:  # stays switched for the whole run (the context is never left)
            from eyegazer_keras.serving import precision

            held.append(precision.bfloat16_backbone(model))
            held[-1].__enter__()
        optimizer = trainer_lib.make_optimizer(config)
        model.compile(optimizer=optimizer)
        optimizer.build(model.trainable_variables)
    trainer = trainer_lib.Trainer(model, optimizer, strategy, config.batch_size, config.jit_compile)
    images, labels = _data(args.batch)
    images, labels = tf.constant(images), tf.constant(labels)
    weights = tf.ones([args.batch], tf.float32)

    def step():
        trainer.train_step(images, labels, weights).numpy()

    step.held = held
    return step, model, config


def worker_ours(variant: str, args) -> dict:
    import numpy as np
    import tensorflow as tf

    step, model, config = ours_step(variant, args)
    result = timing.timed(step, args.warmup, args.steps, args.repeats, args.batch)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    result.update(
        side="ours",
        variant=variant,
        trainable=trainable,
        tf=tf.__version__,
        inter_op=tf.config.threading.get_inter_op_parallelism_threads(),
        jit_compile=config.jit_compile,
    )
    return result


def worker_peer(variant: str, args, shape: dict = SHAPE) -> dict:
    """The HF transformers + PEFT peer: fp32 or bf16 autocast, ``-compile`` adds
    ``torch.compile``; on CUDA when there is a GPU (`gpu_throughput.py`), else on all CPU cores."""
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model, targets = peer_model(shape)
    model = model.to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    images, labels = _data(args.batch, shape)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).contiguous() / 127.5 - 1.0).to(device)
    y = torch.from_numpy(labels).long().to(device)
    bf16 = variant.startswith("bf16")
    forward = torch.compile(model) if variant.endswith("-compile") else model

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            out = forward(pixel_values=x, labels=y)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    result = timing.timed(step, args.warmup, args.steps, args.repeats, args.batch)
    result.update(
        side="peer",
        variant=variant,
        targets=targets,
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        torch=torch.__version__,
        transformers=transformers.__version__,
        device=torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
    )
    return result


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------
def worker_machine(variant: str, args) -> dict:
    """This machine's TF fp32/bf16 2048x2048 matmul GFLOP/s (`timing.matmul_rates`)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return {"side": "machine", "variant": variant, **timing.matmul_rates()}


def _summary(results: list[dict], shape: dict = SHAPE) -> None:
    """Each variant's matmul GFLOP/s as a fraction of the run's best bf16 matmul rate, and
    its ratio to the peer's best precision."""
    rates = [r for r in results if r.get("side") == "machine" and "error" not in r]
    bf16 = max((r["bf16"] for r in rates), default=None)
    fp32 = max((r["fp32"] for r in rates), default=None)
    flops = timing.train_flops_per_image(shape)
    peer = timing.best(results, "peer")
    print(
        f"summary: {flops / 1e9:.1f} GFLOP per training image; this run's best 2048^2 matmul "
        f"rate fp32 {fp32 or float('nan'):.1f}, bf16 {bf16 or float('nan'):.1f} GFLOP/s"
    )
    for r in results:
        if r.get("side") not in ("ours", "peer") or "error" in r:
            continue
        ips = r["img_per_s"]
        frac = f"{timing.fraction(ips, flops, bf16):6.1%}" if bf16 else "   n/a"
        ratio = f"{ips / peer['img_per_s']:5.2f}x peer {peer['variant']}" if peer else "no peer"
        print(
            f"  {r['side']:4s} {r['variant']:12s} {ips:7.2f} img/s {ips * flops / 1e9:7.1f} "
            f"GFLOP/s = {frac} of bf16 matmul   {ratio}"
        )


def _run_worker(side: str, variant: str, args) -> dict:
    flags = ("batch", "steps", "warmup", "repeats", "inter_op", "lora_layout")
    worker_args = ["--worker", f"{side}:{variant}"]
    for flag in flags:
        worker_args += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return timing.run_worker(__file__, worker_args, side=side, variant=variant)


def _describe(r: dict) -> str:
    if r["side"] == "machine":
        return f"TF 2048^2 matmul GFLOP/s: fp32 {r['fp32']:6.1f}  bf16 {r['bf16']:6.1f}"
    return (
        f"{r['img_per_s']:7.2f} img/s (median)  best block {r['best_block']:6.2f}  "
        f"per-CPU-s x cores {r['cpu_img_per_s']:6.2f}  blocks={r['blocks']}"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer timed steps")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per block")
    parser.add_argument("--repeats", type=int, default=None, help="timed blocks (median)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--only", choices=("ours", "peer"), default=None)
    parser.add_argument(
        "--ours",
        default="fp32,bf16,fp32-fuse,bf16-nofuse",
        help=f"any of {','.join(OURS_VARIANTS)}",
    )
    parser.add_argument("--peer", default=",".join(PEER_VARIANTS))
    parser.add_argument(
        "--inter-op",
        type=int,
        default=0,
        help="ours: tf.config.threading inter-op threads (0 = runtime.configure_runtime(), as `eyegazer train`)",
    )
    parser.add_argument(
        "--lora-layout",
        default="peft",
        choices=("peft", "keras"),
        help="ours: LoRA layout (peft = PEFT's rank-r A/B, the default; keras = Keras core's)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.steps = args.steps or (3 if args.quick else 5)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.quick else 3)

    if args.worker:
        side, variant = args.worker.split(":")
        worker = {"ours": worker_ours, "peer": worker_peer, "machine": worker_machine}[side]
        timing.print_result(worker(variant, args))
        return 0

    jobs = [("machine", "before")]
    if args.only != "peer":
        jobs += [("ours", v) for v in args.ours.split(",") if v]
    if args.only != "ours":
        jobs += [("peer", v) for v in args.peer.split(",") if v]
    jobs += [("machine", "after")]
    print(f"machine: {timing.machine()}; load average before: {timing.load_average()}")
    print(
        f"shape: ViT-S/16 @ {SHAPE['image']}px, LoRA r={SHAPE['rank']} q+v, batch {args.batch}, "
        f"{args.warmup} warm-up + {args.repeats}x{args.steps} timed steps (median block)"
    )
    results = timing.run_jobs(jobs, lambda s, v: _run_worker(s, v, args), _describe, 9)
    print(f"load average after: {timing.load_average()}")
    _summary(results)
    o, p = timing.best(results, "ours"), timing.best(results, "peer")
    if o and p:
        print(
            f"best ours {o['variant']} {o['img_per_s']:.2f} img/s / best peer {p['variant']} "
            f"{p['img_per_s']:.2f} img/s = ratio {o['img_per_s'] / p['img_per_s']:.2f}x"
        )
        cpu = lambda r: r["cpu_img_per_s"]  # noqa: E731
        oc = cpu(timing.best(results, "ours", cpu))
        pc = cpu(timing.best(results, "peer", cpu))
        print(
            f"per-CPU-second ratio (contention-insensitive): {oc:.2f} / {pc:.2f} = {oc / pc:.2f}x"
        )
    return timing.exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
