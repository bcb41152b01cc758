"""Serving speed: the exported bytes endpoint vs HF transformers on torch, and over HTTP.

Two parts, both on ViT-S/16 at 224 px (12 layers, 6 heads, hidden 384, MLP 1536, LoRA rank 16
on query/value, 5 classes; random weights: speed does not depend on them), 512x384 JPEG input.

`--part peer` (issue 18), each measurement in its own subprocess, one after the other:

* ours: the model `eyegazer train` builds (`runs.build_model`), exported with
  `export.export_saved_model`, reloaded with `predict.load_exported`, and timed on
  `serving_default` with JPEG bytes (decode + fundus crop/pad/resize + model) at batch 1 and 32.
  Variants are `+`-joined levers: `fp32`; `bf16` (`export_saved_model(precision="bfloat16")`,
  what `eyegazer export --precision bfloat16` writes: bf16 matmuls, float32 residual stream and
  outputs); `bf16mixed` (the model built under Keras `mixed_bfloat16`, the whole backbone in
  bf16: what the issue measured); `merged` (LoRA
  merged into the kernels before export: a LoRA-free model loaded with the merged weights; without
  it the export computes `x @ W + s (x @ A) @ B`, as `eyegazer export` writes it today), `fuse`
  (TF auto-clustering of the element-wise ops, `runtime.xla_fusion`'s setting, applied to the
  loaded SavedModel), `inter1` (one inter-op thread, as `runtime.configure_runtime` sets on small
  CPUs), `noonednn` (`TF_ENABLE_ONEDNN_OPTS=0`), `xla` (the in-process Keras model on ready
  tensors under `tf.function(jit_compile=True)`, in the variant's precision: the export has no
  XLA switch, because it did not pay on CPU, see NOTES.md), `tensors` (the same without XLA:
  the model's forward pass alone, no decoding or preprocessing). Each bf16 variant also reports its
  max |delta p| against the float32 model on 8 different photos.
* machine: the TF float32 and bfloat16 2048x2048 matmul rate of this machine (oneDNN), measured
  before and after the variants; each variant prints its matmul GFLOP/s (9.2 GFLOP per ViT-S
  image) as a fraction of the better bf16 rate.
* peer: transformers `ViTForImageClassification` + PEFT LoRA (same shape and rank), merged with
  `merge_and_unload()` (checked: no LoRA module left), `torch.inference_mode()`, all cores;
  `fp32` or `bf16` (`torch.autocast`), on ready `pixel_values` (model only), and `e2e`: the same
  JPEG bytes through PIL + `ViTImageProcessor` + model (what a transformers server does).
* http: `eyegazer serve` (KServe) on the `fp32+merged` export in a subprocess; POSTs of 32
  instances one after another, and 1-instance POSTs from 1 and 4 concurrent clients.

Prints the CPU (model, bf16/AMX units), img/s (median block; warm-up excluded) per variant, img
per CPU-second x cores (steadier on a shared machine), each variant's fraction of the bf16
matmul rate and its ratio to the peer's best precision at that batch, and the ratios
best-ours / best-peer at batch 1 and 32.

`--part overhead` (the earlier check, in one process, interleaved): the bytes endpoint against
the same Keras model called in-process on preprocessed tensors (target <= 1.2x).

Usage:

    pip install -r benchmarks/requirements-peer.txt   # torch (CPU), transformers, peft
    nice python benchmarks/serving.py --part peer     # ~15 min on 2 shared cores
    python benchmarks/serving.py --part overhead [--tiny]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import timing  # noqa: E402
from train_throughput import SHAPE, backbone_config, peer_model  # noqa: E402

OURS_DEFAULT = "fp32+merged,bf16+merged,bf16,bf16mixed+merged"
PEER_DEFAULT = "fp32,bf16"


def fundus_like_jpeg(width: int, seed: int = 0) -> bytes:
    """A 4:3 fundus-like photo (textured orange disc on black), JPEG quality 90."""
    from PIL import Image

    height = width * 3 // 4
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    dist = np.hypot(yy - height / 2, xx - width / 2)
    shade = np.clip(1.0 - 0.5 * (dist / (0.45 * height)) ** 2, 0.0, 1.0)
    image = np.stack([215 * shade, 105 * shade, 35 * shade], axis=-1)
    image += rng.normal(0.0, 6.0, image.shape)
    image[dist > 0.45 * height] = 0.0
    buf = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------
# Ours: the exported bytes endpoint
# ------------------------------------------------------------------------------------------------
def build_ours(levers: set[str]):
    """`runs.build_model` for ViT-S/16 + LoRA r16; with `merged`, a LoRA-free copy holding the
    merged kernels W + s A @ B (`vit_lora.merge_lora` into the rank-0 model)."""
    import keras

    from eyegazer_keras import runs
    from eyegazer_keras.configs import settings as configs

    def config(rank: int):
        return configs.TrainConfig(
            name="bench",
            backbone="config",
            backbone_config=backbone_config(SHAPE),
            image_size=SHAPE["image"],
            lora_rank=rank,
            lora_alpha=SHAPE["rank"] if rank else None,
            mixed_precision="bfloat16" if "bf16mixed" in levers else None,
        )

    keras.utils.set_random_seed(0)
    model = runs.build_model(config(SHAPE["rank"]), "config")
    rng = np.random.default_rng(0)
    for layer in model._flatten_layers():  # a non-zero LoRA update, so merging is visible
        if getattr(layer, "lora_enabled", False):
            b = layer.lora_kernel_b
            b.assign(rng.normal(0, 0.02, b.shape).astype("float32"))
    if "merged" not in levers:
        return model, model
    from eyegazer_keras.models import vit_lora

    merged = vit_lora.merge_lora(model, runs.build_model(config(0), "config"))
    return model, merged


def worker_ours(variant: str, args) -> dict:
    levers = set(variant.split("+"))
    if "noonednn" in levers:
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
    import tensorflow as tf

    from eyegazer_keras import fundus
    from eyegazer_keras.serving import export, precision, predict
    from eyegazer_keras.training import runtime

    runtime.add_cpu_fusion_flags()  # what the `eyegazer` CLI does first, for every verb
    if "inter1" in levers:
        tf.config.threading.set_inter_op_parallelism_threads(1)
    jpeg = fundus_like_jpeg(args.jpeg_px)
    lora_model, model = build_ours(levers)
    x32 = tf.stack([fundus.serving_transform(tf.constant(jpeg), args.source_size, 224)] * 32)
    check = float(np.abs(model(x32[:2]).numpy() - lora_model(x32[:2]).numpy()).max())
    tolerance = 1e-2 if "bf16mixed" in levers else 1e-4  # bf16 rounds the merged kernels
    assert check < tolerance, f"merged model differs from the LoRA model by {check}"
    result = {"side": "ours", "variant": variant, "max_dp_vs_lora": check}
    compute = "bfloat16" if "bf16" in levers else "float32"

    def in_precision():  # a fresh context manager per use
        if compute == "bfloat16":
            return precision.bfloat16_backbone(model)
        return contextlib.nullcontext()

    if "bf16" in levers or "bf16mixed" in levers:  # parity with float32 on 8 different photos
        photos = tf.stack(
            [
                fundus.serving_transform(tf.constant(fundus_like_jpeg(256, s)), 256, 224)
                for s in range(8)
            ]
        )
        photos *= tf.random.stateless_uniform([8, 1, 1, 3], (0, 0), 0.6, 1.3)  # tints
        reference = build_ours(levers - {"bf16mixed"})[1] if "bf16mixed" in levers else model
        expected = reference(photos).numpy()  # (outside `in_precision()`: float32)
        with in_precision():
            got = model(photos).numpy()
        result["max_dp_vs_fp32"] = float(np.abs(got - expected).max())
    if "xla" in levers or "tensors" in levers:  # in-process, on ready tensors (model only)
        jit = "xla" in levers
        with in_precision():  # traced in the variant's precision
            fn = tf.function(lambda x: model(x, training=False), jit_compile=jit)
            fn(x32[:1])
            fn(x32)
        result["kind"] = f"keras on tensors, model only (jit_compile={jit})"
        for batch in (1, 32):
            x = x32[:batch]
            result[f"b{batch}"] = timing.timed(
                lambda x=x: fn(x).numpy(), args.warmup, args.steps[batch], args.repeats, batch
            )
        return result
    with tempfile.TemporaryDirectory() as tmp:
        export.export_saved_model(
            model,
            tmp,
            task="grade",
            image_size=224,
            source_size=args.source_size,
            precision=compute,
        )
        exported = predict.load_exported(tmp)
        if "fuse" in levers:
            tf.config.optimizer.set_jit("autoclustering")
        result["kind"] = "SavedModel serving_default, JPEG bytes"
        for batch in (1, 32):
            blobs = [jpeg] * batch
            result[f"b{batch}"] = timing.timed(
                lambda b=blobs: exported.predict_bytes(b)["probabilities"],
                args.warmup,
                args.steps[batch],
                args.repeats,
                batch,
            )
    result["tf"] = tf.__version__
    return result


# ------------------------------------------------------------------------------------------------
# Peer: transformers ViTForImageClassification + PEFT LoRA, merged, on torch CPU
# ------------------------------------------------------------------------------------------------
def worker_peer(variant: str, args) -> dict:
    import torch
    import transformers
    from PIL import Image
    from transformers import ViTImageProcessor

    levers = set(variant.split("+"))
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    peft_model, _ = peer_model(SHAPE)
    for name, p in peft_model.named_parameters():  # non-zero LoRA update, as ours
        if "lora_B" in name:
            torch.nn.init.normal_(p, 0.0, 0.02)
    model = peft_model.merge_and_unload().eval()
    leftover = [n for n, _ in model.named_modules() if "lora" in n.lower()]
    assert not leftover, f"LoRA not merged: {leftover[:3]}"
    bf16 = "bf16" in levers
    processor = ViTImageProcessor(size={"height": 224, "width": 224})
    jpeg = fundus_like_jpeg(args.jpeg_px)

    def run(batch: int):
        if "e2e" in levers:
            images = [Image.open(io.BytesIO(jpeg)).convert("RGB") for _ in range(batch)]
            pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        else:
            pixels = ready[:batch]
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(pixel_values=pixels).logits
        return torch.softmax(logits.float(), -1).numpy()

    ready = processor(
        images=[Image.open(io.BytesIO(jpeg)).convert("RGB")] * 32, return_tensors="pt"
    )["pixel_values"]
    result = {
        "side": "peer",
        "variant": variant,
        "kind": "PIL + ViTImageProcessor + model" if "e2e" in levers else "model on pixel_values",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "merged": True,
    }
    for batch in (1, 32):
        result[f"b{batch}"] = timing.timed(
            lambda b=batch: run(b), args.warmup, args.steps[batch], args.repeats, batch
        )
    return result


# ------------------------------------------------------------------------------------------------
# HTTP: `eyegazer serve` (KServe) on the merged fp32 export
# ------------------------------------------------------------------------------------------------
def _post(url: str, body: bytes) -> dict:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def worker_http(variant: str, args) -> dict:
    import concurrent.futures

    from eyegazer_keras.serving import export

    jpeg = fundus_like_jpeg(args.jpeg_px)
    instance = {"b64": base64.b64encode(jpeg).decode()}
    result = {"side": "http", "variant": variant, "kind": "eyegazer serve (KServe), JSON+b64"}
    with tempfile.TemporaryDirectory() as tmp:
        _, model = build_ours({"fp32", "merged"})
        export.export_saved_model(
            model, tmp, task="grade", image_size=224, source_size=args.source_size
        )
        del model
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "eyegazer_keras.cli", "serve", "--model", tmp]
        proc = subprocess.Popen(
            cmd + ["--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        )
        url = f"http://127.0.0.1:{port}/v1/models/eyegazer:predict"
        try:
            for _ in range(600):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models/eyegazer", timeout=5)
                    break
                except OSError:
                    time.sleep(1)
            for batch, clients in ((32, 1), (1, 1), (1, 4)):
                body = json.dumps({"instances": [instance] * batch}).encode()
                assert len(_post(url, body)["predictions"]) == batch
                steps = max(1, args.steps[batch] // clients)

                def block(body=body, clients=clients, steps=steps):
                    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                        list(
                            pool.map(
                                lambda _: [_post(url, body) for _ in range(steps)], range(clients)
                            )
                        )

                result[f"b{batch}x{clients}"] = timing.timed(
                    block, 1, 1, args.repeats, batch * clients * steps
                )
        finally:
            proc.terminate()
            proc.wait(timeout=120)
    return result


def worker_machine(variant: str, args) -> dict:
    """This machine's TF fp32/bf16 2048x2048 matmul GFLOP/s (`timing.matmul_rates`)."""
    return {
        "side": "machine",
        "variant": variant,
        "kind": "TF 2048^2 matmul GFLOP/s",
        **timing.matmul_rates(),
    }


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------
def _run_worker(side: str, variant: str, args) -> dict:
    worker_args = ["--part", "peer", "--worker", f"{side}:{variant}"]
    worker_args += ["--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    worker_args += ["--steps1", str(args.steps[1]), "--steps32", str(args.steps[32])]
    worker_args += ["--smoke"] if args.smoke else []
    return timing.run_worker(__file__, worker_args, side=side, variant=variant)


def _describe(r: dict) -> str:
    if r["side"] == "machine":
        return f"fp32 {r['fp32']:6.1f}  bf16 {r['bf16']:6.1f}  [{r['kind']}]"
    cells = []
    for key in sorted(k for k in r if k.startswith("b") and isinstance(r[k], dict)):
        t = r[key]
        cpu = "" if r["side"] == "http" else f" (cpu x cores {t['cpu_img_per_s']:6.2f})"
        cells.append(f"{key}: {t['img_per_s']:6.2f} img/s{cpu}")  # http: the server's CPU
        # time is in another process, so only the wall-clock rate is shown
    extra = f" max|dp| merged vs LoRA {r['max_dp_vs_lora']:.1e}" if "max_dp_vs_lora" in r else ""
    if "max_dp_vs_fp32" in r:
        extra += f", vs float32 {r['max_dp_vs_fp32']:.1e}"
    return f"{'  '.join(cells)}  [{r['kind']}]{extra}"


def _summary(results: list[dict]) -> None:
    """Per variant and batch: img/s, matmul GFLOP/s as a fraction of the best bf16 matmul rate
    measured in this run, and the ratio to the peer's best precision (model only)."""
    rates = [r for r in results if r["side"] == "machine" and "error" not in r]
    bf16 = max((r["bf16"] for r in rates), default=None)
    fp32 = max((r["fp32"] for r in rates), default=None)
    flops = timing.vit_forward_flops(SHAPE)
    print(
        f"summary: {flops / 1e9:.2f} GFLOP per image; this run's best 2048^2 matmul rate "
        f"fp32 {fp32 or float('nan'):.1f}, bf16 {bf16 or float('nan'):.1f} GFLOP/s"
    )
    for batch in (1, 32):
        key = f"b{batch}"
        peers = [
            r
            for r in results
            if r["side"] == "peer" and key in r and "e2e" not in r["variant"] and "error" not in r
        ]
        peer = max(peers, key=lambda r: r[key]["img_per_s"], default=None)
        for r in results:
            if r["side"] not in ("ours", "peer") or key not in r:
                continue
            ips = r[key]["img_per_s"]
            frac = f"{timing.fraction(ips, flops, bf16):6.1%}" if bf16 else "   n/a"
            ratio = f"{ips / peer[key]['img_per_s']:5.2f}x" if peer else "  n/a"
            best = f"peer {peer['variant']}" if peer else "no peer"
            print(
                f"  batch {batch:2d} {r['side']:4s} {r['variant']:22s} {ips:7.2f} img/s "
                f"{ips * flops / 1e9:7.1f} GFLOP/s = {frac} of bf16 matmul   {ratio} {best}"
            )


def part_peer(args) -> int:
    if args.worker:
        side, variant = args.worker.split(":")
        worker = {
            "ours": worker_ours,
            "peer": worker_peer,
            "http": worker_http,
            "machine": worker_machine,
        }[side]
        timing.print_result(worker(variant, args))
        return 0
    jobs = [("machine", "before")]
    jobs += [("ours", v) for v in args.ours.split(",") if v]
    jobs += [("peer", v) for v in args.peer.split(",") if v]
    jobs += [("http", "fp32+merged")] if args.http else []
    jobs += [("machine", "after")]
    print(f"machine: {timing.machine()}; load average before: {timing.load_average()}")
    print(
        f"ViT-S/16 @224, LoRA r{SHAPE['rank']}, JPEG {args.jpeg_px}x{args.jpeg_px * 3 // 4}; "
        f"{args.warmup} warm-up + {args.repeats} timed blocks of {args.steps[1]} (batch 1) / "
        f"{args.steps[32]} (batch 32) calls; median block"
    )
    results = timing.run_jobs(jobs, lambda s, v: _run_worker(s, v, args), _describe, 22)
    print(f"load average after: {timing.load_average()}")
    _summary(results)
    for batch in (1, 32):
        key = f"b{batch}"

        def best(side, exclude=(), key=key):
            ok = [
                r
                for r in results
                if r["side"] == side and key in r and not any(e in r["variant"] for e in exclude)
            ]
            return max(ok, key=lambda r: r[key]["img_per_s"]) if ok else None

        o, p = best("ours", ("xla", "tensors")), best("peer", ("e2e",))
        if o and p:
            line = (
                f"batch {batch}: best bytes endpoint {o['variant']} {o[key]['img_per_s']:.2f} img/s"
                f" / best peer model-only {p['variant']} {p[key]['img_per_s']:.2f} = "
                f"{o[key]['img_per_s'] / p[key]['img_per_s']:.2f}x"
            )
            e2e = [r for r in results if r["side"] == "peer" and "e2e" in r["variant"] and key in r]
            if e2e:
                line += f"; / peer e2e {e2e[0][key]['img_per_s']:.2f} = "
                line += f"{o[key]['img_per_s'] / e2e[0][key]['img_per_s']:.2f}x"
            print(line)
    print(
        "targets (issue 26): bytes endpoint >= 1.5x the peer's best precision at batch 32 and 1; "
        "ViT-S/16 forward at batch 32 >= 30 % of the bf16 matmul rate"
    )
    return timing.exit_code(results)


# ------------------------------------------------------------------------------------------------
# Part "overhead": bytes endpoint vs the in-process Keras call (one process, interleaved)
# ------------------------------------------------------------------------------------------------
def build_plain_vit(args):
    import keras
    import keras_hub

    size = args.image_size
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)
    x = keras_hub.models.ViTBackbone(
        image_shape=(size, size, 3),
        patch_size=args.patch_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        hidden_dim=args.hidden_dim,
        mlp_dim=args.mlp_dim,
    )(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(x))


def interleaved_seconds(fns: dict, rounds: int, warmup: int = 1) -> dict[str, float]:
    """Best-of-`rounds` seconds per function, calling them in turn every round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def part_overhead(args) -> int:
    if args.tiny:
        args.image_size, args.patch_size, args.num_layers = 32, 8, 2
        args.num_heads, args.hidden_dim, args.mlp_dim = 2, 48, 96
    import tensorflow as tf

    from eyegazer_keras import fundus
    from eyegazer_keras.serving import export

    model = build_plain_vit(args)
    jpeg = fundus_like_jpeg(args.jpeg_px)
    ready = fundus.serving_transform(tf.constant(jpeg), args.source_size, args.image_size)
    compiled = tf.function(lambda x: model(x, training=False))
    spec = tf.TensorSpec([args.image_size, args.image_size, 3], tf.float32)
    preprocess = tf.function(
        lambda b: tf.map_fn(
            lambda e: fundus.serving_transform(e, args.source_size, args.image_size),
            b,
            fn_output_signature=spec,
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = export.export_saved_model(
            model, tmp, task="grade", image_size=args.image_size, source_size=args.source_size
        )
        serve = tf.saved_model.load(path).signatures["serving_default"]
        print(
            f"model: ViT image={args.image_size} patch={args.patch_size} layers={args.num_layers} "
            f"hidden={args.hidden_dim}; JPEG {args.jpeg_px}x{args.jpeg_px * 3 // 4}; "
            f"cpus={os.cpu_count()}; best of {args.rounds} interleaved rounds"
        )
        header = ("batch", "bytes ms", "keras ms", "eager ms", "preproc ms", "ratio", "max|dp|")
        print("{:>5} {:>10} {:>10} {:>10} {:>11} {:>7} {:>9}".format(*header))
        for batch in (1, 32):
            blobs = tf.constant([jpeg] * batch)
            x = tf.stack([ready] * batch)
            served = serve(image_bytes=blobs)["probabilities"].numpy()
            delta = np.abs(served - compiled(x).numpy()).max()
            best = interleaved_seconds(
                {
                    "bytes": lambda b=blobs: serve(image_bytes=b)["probabilities"].numpy(),
                    "keras": lambda x=x: compiled(x).numpy(),
                    "eager": lambda x=x: model(x, training=False).numpy(),
                    "preproc": lambda b=blobs: preprocess(b).numpy(),
                },
                args.rounds,
            )
            print(
                f"{batch:>5} {1e3 * best['bytes']:>10.1f} {1e3 * best['keras']:>10.1f} "
                f"{1e3 * best['eager']:>10.1f} {1e3 * best['preproc']:>11.1f} "
                f"{best['bytes'] / best['keras']:>6.2f}x {delta:>9.1e}"
            )
        print("ratio = bytes / keras; target <= 1.20x")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("peer", "overhead"), default="peer")
    parser.add_argument("--jpeg-px", type=int, default=512, help="width of the test JPEG")
    parser.add_argument("--source-size", type=int, default=512, help="builder's stored size")
    # part peer
    parser.add_argument("--ours", default=OURS_DEFAULT)
    parser.add_argument("--peer", default=PEER_DEFAULT)
    parser.add_argument("--no-http", dest="http", action="store_false")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks (median)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps1", type=int, default=8, help="calls per block at batch 1")
    parser.add_argument("--steps32", type=int, default=1, help="calls per block at batch 32")
    parser.add_argument("--smoke", action="store_true", help="peer: 2-layer ViT (plumbing only)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    # part overhead
    parser.add_argument("--tiny", action="store_true", help="overhead: tiny ViT at 32 px")
    parser.add_argument("--rounds", type=int, default=5, help="overhead: interleaved rounds")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--num-layers", type=int, default=12)
    parser.add_argument("--num-heads", type=int, default=6)
    parser.add_argument("--hidden-dim", type=int, default=384)
    parser.add_argument("--mlp-dim", type=int, default=1536)
    args = parser.parse_args(argv)
    args.steps = {1: args.steps1, 32: args.steps32}
    if args.smoke:  # a 2-layer ViT at the same 224 px: checks the plumbing in about a minute
        SHAPE.update(layers=2, heads=2, hidden=48, mlp=96, rank=4)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, os.path.dirname(HERE))
    return part_peer(args) if args.part == "peer" else part_overhead(args)


if __name__ == "__main__":
    sys.exit(main())
