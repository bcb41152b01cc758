"""What the benchmark scripts share: timed blocks, the machine line, one subprocess per measurement.

`timed` runs warm-up calls, then `repeats` blocks of `steps` calls, and reports the median
block's images per wall second and per CPU-second of this process times the core count (steadier
on a machine shared with other jobs). Each measurement runs in its own process (`run_worker`),
which prints its result as one `RESULT {json}` line (`print_result`), so TF and torch never share
a process or compete for the cores. Used by train_throughput.py, serving.py and gpu_throughput.py.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

RESULT = "RESULT "
# The repository root, so that `eyegazer_keras` imports from this checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def timed(step, warmup: int, steps: int, repeats: int, batch: int) -> dict:
    """Wall-clock img/s (median block) and img per CPU-second of this process x cores.

    The second figure (``cpu_img_per_s``) divides by the CPU time this process used, scaled by
    the core count: on a machine shared with other jobs it estimates the uncontended rate.

    Args:
        step: callable(). One call processes `batch` images and returns when they are done.
        warmup: int. Untimed calls first (tracing, compilation, caches).
        steps: int. Calls per timed block.
        repeats: int. Timed blocks.
        batch: int. Images per call.

    Returns:
        `{"img_per_s", "best_block", "cpu_img_per_s", "blocks"}` (images per second; `blocks`
        lists every block's wall-clock rate).
    """
    for _ in range(warmup):
        step()
    rates, cpu_rates = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        for _ in range(steps):
            step()
        rates.append(batch * steps / (time.perf_counter() - t))
        cpu_rates.append(batch * steps * (os.cpu_count() or 1) / (time.process_time() - c))
    return {
        "img_per_s": statistics.median(rates),
        "best_block": max(rates),
        "cpu_img_per_s": statistics.median(cpu_rates),
        "blocks": [round(r, 2) for r in rates],
    }


def machine() -> str:
    """The CPU model, its bf16/AMX instruction flags and the logical CPU count, in one line.

    E.g. ``AMD EPYC (family 26 model 2) (avx512_bf16: bf16 units, no AMX), 2 logical CPUs``.
    """
    from eyegazer_keras.serving import precision

    model = precision.cpu_model()
    family = _cpuinfo_field("cpu family"), _cpuinfo_field("model")
    if all(family):
        model += f" (family {family[0]} model {family[1]})"
    flags = precision.cpu_bf16_flags()
    units = "bf16 units" if flags else "no bf16 units: bf16 is emulated"
    amx = "AMX" if "amx_bf16" in flags else "no AMX"
    return f"{model} ({', '.join(flags) or 'no bf16 flags'}: {units}, {amx}), {os.cpu_count()} logical CPUs"


def _cpuinfo_field(name: str) -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == name:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


# ------------------------------------------------------------------------------------------------
# FLOPs and the machine's matmul rate (what a variant's fraction is measured against)
# ------------------------------------------------------------------------------------------------
def vit_forward_flops(shape: dict) -> float:
    """Matmul FLOPs (2 per multiply-add) of one ViT image forward: blocks, attention, patches.

    ViT-S/16 at 224 px: 9.2 GFLOP (the issue's "4.6 GFLOP per image" counts multiply-adds).
    """
    h, mlp, n = shape["hidden"], shape["mlp"], shape["layers"]
    t = (shape["image"] // shape["patch"]) ** 2 + 1
    blocks = 2 * n * (4 * h * h + 2 * h * mlp) * t
    attn = 4 * n * t * t * h
    patch = 2 * (3 * shape["patch"] ** 2 * h) * (t - 1)
    return blocks + attn + patch


def train_flops_per_image(shape: dict) -> float:
    """Matmul FLOPs of one LoRA (q+v, frozen base) training image: NOTES.md "GPU on paper"."""
    h, mlp, n, r = shape["hidden"], shape["mlp"], shape["layers"], shape["rank"]
    t = (shape["image"] // shape["patch"]) ** 2 + 1
    p = n * (4 * h * h + 2 * h * mlp)
    attn = 4 * n * t * t * h
    lora = 2 * n * 2 * t * (h * r + r * h)  # PEFT layout on both sides: A (h, r), B (r, h)
    patch = 2 * (3 * shape["patch"] ** 2 * h) * (t - 1)
    return 4 * p * t + 3 * attn + 3 * lora + patch


def matmul_rates(n: int = 2048, repeats: int = 5) -> dict:
    """This machine's TensorFlow (oneDNN) float32 and bfloat16 `n x n` matmul GFLOP/s, now.

    Best of `repeats` after one warm-up call, in a `tf.function`, all cores: what a model's
    matmuls could reach here. Run it in the same process tree and minute as the variants.

    Returns:
        ``{"fp32": GFLOP/s, "bf16": GFLOP/s}``.
    """
    import tensorflow as tf

    rates = {}
    for name, dtype in (("fp32", tf.float32), ("bf16", tf.bfloat16)):
        a = tf.cast(tf.random.stateless_normal([n, n], seed=(0, 1)), dtype)
        b = tf.cast(tf.random.stateless_normal([n, n], seed=(0, 2)), dtype)
        fn = tf.function(lambda a, b: tf.linalg.matmul(a, b)[0, 0])  # the whole product runs
        fn(a, b).numpy()
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            fn(a, b).numpy()
            best = min(best, time.perf_counter() - t)
        rates[name] = 2 * n**3 / best / 1e9
    return rates


def fraction(img_per_s: float, flops_per_image: float, rate_gflops: float) -> float:
    """Achieved matmul GFLOP/s as a fraction of `rate_gflops` (e.g. 0.31 = 31 %)."""
    return img_per_s * flops_per_image / 1e9 / rate_gflops


def load_average() -> str:
    """The 1, 5 and 15 minute load averages ("n/a" where the OS has none)."""
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def print_result(result: dict) -> None:
    """A worker's last word: its result as one `RESULT {json}` line on stdout."""
    print(RESULT + json.dumps(result), flush=True)


def run_worker(script: str, worker_args: list[str], tail: int = 2000, **labels) -> dict:
    """Runs `python script *worker_args` in a fresh process and returns its `RESULT` dict.

    Args:
        script: str. The benchmark script (it calls `print_result` in worker mode).
        worker_args: list of str. Its command-line arguments.
        tail: int. Characters of the worker's stderr (else stdout) kept on failure.
        **labels: what the measurement is (e.g. `side="ours", variant="bf16"`), kept in the
            failure record.

    Returns:
        The worker's result dict, or `{**labels, "error": "exit N: <output tail>"}` when it
        printed none.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [sys.executable, os.path.abspath(script), *worker_args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT) :])
    output = (proc.stderr or proc.stdout)[-tail:]
    return {**labels, "error": f"exit {proc.returncode}: {output}"}


def run_jobs(jobs, run, describe, width: int) -> list[dict]:
    """Runs each `(side, variant)` job, printing one line per result as it comes.

    Args:
        jobs: list of `(side, variant)` pairs, e.g. `("ours", "bf16")`.
        run: callable(side, variant) -> result dict (`run_worker`'s).
        describe: callable(result) -> str. The line's text for a result without "error".
        width: int. Column width of the variant name.

    Returns:
        The results, in job order (failures as `{..., "error": ...}`).
    """
    results = []
    for side, variant in jobs:
        r = run(side, variant)
        results.append(r)
        text = f"FAILED {r['error']}" if "error" in r else describe(r)
        print(f"{side:4s} {variant:{width}s} {text}", flush=True)
    return results


def exit_code(results: list[dict]) -> int:
    """0 if every measurement succeeded, else 1."""
    return 0 if all("error" not in r for r in results) else 1


def best(results: list[dict], side: str, rate=lambda r: r["img_per_s"]) -> dict | None:
    """The fastest successful result of `side` ("ours" / "peer") by `rate`, or None."""
    ok = [r for r in results if r.get("side") == side and "error" not in r]
    return max(ok, key=rate) if ok else None
