"""Where the time goes: TF profiler op tables and oneDNN's kernel log, serving and training.

    python benchmarks/profile_ops.py serving --precision float32,bfloat16 --batch 32,1
    python benchmarks/profile_ops.py train --variant bf16          # (any train_throughput variant)
    python benchmarks/profile_ops.py serving --precision bfloat16 --batch 32 --onednn

* `serving`: ViT-S/16 at 224 px with LoRA r16 merged (`serving.build_ours`), exported with
  `export_saved_model(precision=...)` as `eyegazer export` writes it, reloaded, and its
  `serving_default` (JPEG bytes in) traced with `tf.profiler` over `--calls` calls after two
  warm-up calls.
* `train`: one `train_throughput.ours_step` (the `eyegazer train` step, batch 16) per call.

Prints, per call: wall time under the profiler, then TF op types by summed op time (each op as
TensorFlow's executor ran it; oneDNN's matmuls run on both cores inside one op, so the op sum
is not core-seconds), then the `Cast` ops grouped by where they sit (layer names with the block
number removed). `--onednn` instead reruns the same calls in a subprocess under
``ONEDNN_VERBOSE=1`` and tabulates oneDNN's executed primitives by kind, implementation (ISA:
``avx512_core_bf16``, ``avx512_core_amx``, ...) and source dtype.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import timing  # noqa: E402


def op_times(logdir: str):
    """`(by type, by name)`: `{key: [picoseconds, count]}` of TF ops in the trace under `logdir`."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    path = sorted(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True))[-1]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    by_type = collections.defaultdict(lambda: [0, 0])
    by_name = collections.defaultdict(lambda: [0, 0])
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if line.name == "python":
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                # TF op events are "name:Type"; executor/threadpool events are "A::B".
                if ":" not in name or "::" in name:
                    continue
                op, _, kind = name.rpartition(":")
                for table, key in ((by_type, kind), (by_name, name)):
                    table[key][0] += event.duration_ps
                    table[key][1] += 1
    return by_type, by_name


def print_table(title: str, table: dict, calls: int, top: int) -> None:
    total = sum(v[0] for v in table.values()) or 1
    print(f"  {title}: {total / 1e9 / calls:.1f} ms per call")
    for key, (ps, n) in sorted(table.items(), key=lambda kv: -kv[1][0])[:top]:
        print(
            f"    {key[:64]:64s} {ps / 1e9 / calls:8.1f} ms {100 * ps / total:5.1f} %  x{n / calls:.0f}"
        )


def cast_sites(by_name: dict) -> dict:
    """`Cast` ops grouped by where they sit: the op name without block numbers and suffixes."""
    sites = collections.defaultdict(lambda: [0, 0])
    for name, (ps, n) in by_name.items():
        if not name.endswith(":Cast"):
            continue
        site = re.sub(r"_\d+", "", name.rpartition(":")[0])
        site = "/".join(site.split("/")[-3:])
        sites[site][0] += ps
        sites[site][1] += n
    return sites


# ------------------------------------------------------------------------------------------------
# What is called
# ------------------------------------------------------------------------------------------------
def serving_call(precision: str, batch: int, source_size: int = 512):
    """A `call()` of the exported bytes endpoint on `batch` copies of one JPEG."""
    from serving import build_ours, fundus_like_jpeg

    from eyegazer_keras.serving import export, predict

    _, model = build_ours({"merged"})
    tmp = tempfile.mkdtemp(prefix="profile_ops_")
    export.export_saved_model(
        model, tmp, task="grade", image_size=224, source_size=source_size, precision=precision
    )
    exported = predict.load_exported(tmp)
    blobs = [fundus_like_jpeg(512)] * batch
    return lambda: exported.predict_bytes(blobs)["probabilities"]


def train_call(variant: str, batch: int):
    from train_throughput import ours_step

    args = argparse.Namespace(inter_op=0, lora_layout="peft", batch=batch)
    return ours_step(variant, args)[0]


def run_profile(call, label: str, calls: int, top: int) -> None:
    import tensorflow as tf

    call()
    call()
    logdir = tempfile.mkdtemp(prefix="profile_ops_trace_")
    tf.profiler.experimental.start(logdir)
    start = time.perf_counter()
    for _ in range(calls):
        call()
    wall = (time.perf_counter() - start) / calls
    tf.profiler.experimental.stop()
    by_type, by_name = op_times(logdir)
    shutil.rmtree(logdir, ignore_errors=True)
    print(f"== {label}: {1e3 * wall:.0f} ms per call under the profiler ({calls} calls)")
    print_table("TF op time by type", by_type, calls, top)
    print_table("of which Cast, by site", cast_sites(by_name), calls, 8)


def onednn_table(lines: list[str], calls: int) -> None:
    """oneDNN `exec` lines -> time and count by (primitive, implementation, source dtype)."""
    table = collections.defaultdict(lambda: [0.0, 0])
    for line in lines:
        fields = line.strip().split(",")
        if len(fields) < 13 or fields[2] != "primitive" or fields[3] != "exec":
            continue
        src = re.search(r"src:?_?(\w+?):", fields[8])
        key = f"{fields[5]:10s} {fields[6]:34s} src {src.group(1) if src else '?'}"
        table[key][0] += float(fields[-1])
        table[key][1] += 1
    total = sum(v[0] for v in table.values()) or 1
    print(f"  oneDNN primitives: {total / calls:.1f} ms per call")
    for key, (ms, n) in sorted(table.items(), key=lambda kv: -kv[1][0])[:20]:
        print(f"    {key} {ms / calls:8.1f} ms {100 * ms / total:5.1f} %  x{n / calls:.0f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("serving", "train"))
    parser.add_argument(
        "--precision", default="float32,bfloat16", help="serving: export precisions"
    )
    parser.add_argument("--batch", default=None, help="serving: 32,1; train: 16")
    parser.add_argument("--variant", default="bf16", help="train: a train_throughput variant")
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--top", type=int, default=16)
    parser.add_argument("--onednn", action="store_true", help="oneDNN verbose table instead")
    parser.add_argument("--smoke", action="store_true", help="2-layer ViT (plumbing only)")
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)  # worker
    args = parser.parse_args(argv)
    if args.smoke:
        from train_throughput import SHAPE

        SHAPE.update(layers=2, heads=2, hidden=48, mlp=96, rank=4)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    batches = [
        int(b) for b in (args.batch or ("32,1" if args.what == "serving" else "16")).split(",")
    ]
    if args.onednn and not args.plain:
        cmd = [sys.executable, os.path.abspath(__file__), *(argv or sys.argv[1:]), "--plain"]
        if shutil.which("stdbuf"):  # oneDNN's printf lines and Python's marks in order
            cmd = ["stdbuf", "-oL", *cmd]
        env = dict(os.environ, ONEDNN_VERBOSE="1")
        print(f"machine: {timing.machine()}; load average {timing.load_average()}")
        out = subprocess.run(cmd, capture_output=True, text=True, env=env).stdout.splitlines()
        start = None
        for i, line in enumerate(out):
            if line.startswith("== end"):
                onednn_table(out[start:i], args.calls)
            elif line.startswith("== "):
                print(line)
                start = i
        info = [line for line in out if ",info,cpu," in line]
        print("  " + "\n  ".join(dict.fromkeys(info)))
        return 0
    if not args.plain:
        print(f"machine: {timing.machine()}; load average {timing.load_average()}")
    labels = []
    if args.what == "serving":
        labels = [(p, b) for p in args.precision.split(",") for b in batches]
    else:
        labels = [(args.variant, b) for b in batches]
    for name, batch in labels:
        call = serving_call(name, batch) if args.what == "serving" else train_call(name, batch)
        label = f"{args.what} {name} batch {batch}"
        if args.plain:  # oneDNN verbose worker: warm up quietly, then mark the timed calls
            call()
            call()
            print(f"== {label}", flush=True)
            for _ in range(args.calls):
                call()
            print("== end", flush=True)
            continue
        run_profile(call, label, args.calls, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
