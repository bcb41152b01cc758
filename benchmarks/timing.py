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
import platform
import statistics
import subprocess
import sys
import time

RESULT = "RESULT "


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
    """The CPU model, its bf16/AMX instruction flags and the logical CPU count, in one line."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        model = next(
            line.split(":", 1)[1].strip() for line in info.splitlines() if "model name" in line
        )
        flags = next(line for line in info.splitlines() if line.startswith("flags")).split()
        model += f" ({', '.join(f for f in ('avx512_bf16', 'amx_bf16', 'amx_tile') if f in flags) or 'no bf16 ISA'})"
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} logical CPUs"


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
