"""tf.distribute on CPU: 2 logical replicas vs 1 device, and 2 real worker processes."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from eyegazer_keras.training import callbacks, distribute
from tests.conftest import train_command

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def test_unknown_strategy_and_missing_tf_config(monkeypatch):
    with pytest.raises(distribute.StrategyError, match="not one of"):
        distribute.get_strategy("nccl")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(distribute.StrategyError, match="TF_CONFIG"):
        distribute.get_strategy("multiworker")


def test_batch_rule_names_the_fix():
    class Fake:
        num_replicas_in_sync = 3

    assert distribute.per_replica_batch_size(12, Fake()) == 4
    with pytest.raises(distribute.StrategyError, match="batch_size=9"):
        distribute.per_replica_batch_size(10, Fake())


@pytest.mark.slow
def test_mirrored_two_logical_cpus_match_single_device(tiny_data_dir, tmp_path):
    lines = []
    for extra in ([], [tiny_data_dir, str(tmp_path / "run")]):
        out = subprocess.run(
            [sys.executable, os.path.join(HERE, "mirrored_check.py"), *extra],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=REPO,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        lines += [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    step, run = lines
    assert step["replicas"] == 2 and len(set(step["devices"])) == 2
    assert step["max_weight_change"] > 1e-4  # the step really moved the weights ...
    assert step["max_weight_diff"] < 1e-6  # ... identically on 2 replicas and on 1 device
    assert run == {"run_replicas": 2, "per_replica": 8}
    assert (tmp_path / "run" / "metrics_validation.json").exists()


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _worker_cmd(data_dir, workdir, **extra):
    return train_command(data_dir, workdir, strategy="multiworker", **extra)


def _start_workers(cmd, ports, tmp_root, logs):
    procs = []
    for index in range(2):
        env = dict(os.environ)
        env["TF_CONFIG"] = json.dumps(
            {
                "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                "task": {"type": "worker", "index": index},
            }
        )
        env["TMPDIR"] = str(tmp_root / f"tmp{index}")
        os.makedirs(env["TMPDIR"], exist_ok=True)
        log = open(logs / f"worker{index}.log", "a")
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO))
    return procs


@pytest.mark.slow
def test_two_worker_processes_train_in_sync_and_only_chief_writes(tiny_data_dir, tmp_path):
    workdir = tmp_path / "run"
    procs = _start_workers(
        _worker_cmd(tiny_data_dir, workdir, epochs=2), _free_ports(2), tmp_path, tmp_path
    )
    codes = [p.wait(timeout=600) for p in procs]
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], logs[1][-2000:] + logs[0][-2000:]
    for i, log in enumerate(logs):
        assert "2 replica(s), global batch 16 = 8 per replica" in log
        assert f"chief={i == 0}" in log
    # Same losses on both workers: one model, trained in sync.
    loss = [[line for line in log.splitlines() if line.startswith("epoch 2/2")][0] for log in logs]
    assert loss[0].split("(")[0] == loss[1].split("(")[0]
    summary = json.loads((workdir / "run.json").read_text())
    assert summary["strategy"] in ("MultiWorkerMirroredStrategy", "CollectiveAllReduceStrategy")
    assert summary["replicas"] == 2
    # Only the chief's outputs exist: the non-chief's temporary dir is gone.
    assert not any((tmp_path / "tmp1").iterdir()), list((tmp_path / "tmp1").iterdir())
    assert sorted(p.name for p in workdir.iterdir()) == sorted(
        [
            "adapter.npz",
            "calibration.json",
            "checkpoints",
            "config.json",
            "confusion_matrix_validation.png",
            "dataset.json",
            "history.json",
            "logs",
            "metrics_validation.json",
            "reliability_validation.png",
            "roc_validation.png",
            "run.json",
            "training_curves.png",
        ]
    )


@pytest.mark.slow
def test_killed_worker_restarts_and_job_completes(tiny_data_dir, tmp_path):
    workdir = tmp_path / "run"
    cmd = _worker_cmd(tiny_data_dir, workdir, epochs=6, checkpoint_every_steps=2)
    ports = _free_ports(2)
    procs = _start_workers(cmd, ports, tmp_path, tmp_path)
    deadline = time.time() + 300
    killed = False
    while time.time() < deadline and all(p.poll() is None for p in procs):
        position = callbacks.backup_position(str(workdir / "backup"))
        if position and position[0] >= 1:
            procs[1].send_signal(signal.SIGKILL)  # the non-chief worker dies mid-run
            killed = True
            break
        time.sleep(0.05)
    assert killed, "workers finished or died before the kill"
    procs[1].wait()
    # The chief notices the lost peer (collective error) or waits for it; a cluster manager
    # restarts the job. Give the chief a moment, then restart whatever is not running.
    try:
        procs[0].wait(timeout=60)
    except subprocess.TimeoutExpired:
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
    assert not (workdir / "run.json").exists()
    procs = _start_workers(cmd, ports, tmp_path, tmp_path)
    codes = [p.wait(timeout=600) for p in procs]
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert all("resuming at epoch" in log for log in logs)
    history = json.loads((workdir / "history.json").read_text())
    assert len(history["val_qwk"]) == 6
    assert (workdir / "run.json").exists() and not (workdir / "backup").exists()


@pytest.mark.slow
def test_search_runs_under_mirrored_and_refuses_multiworker(tiny_data_dir, tmp_path, monkeypatch):
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(HERE, "mirrored_check.py"),
            tiny_data_dir,
            str(tmp_path / "s"),
            "search",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")][-1]
    assert result["search_lines"] and "2 replicas" in result["search_lines"][0]
    from eyegazer_keras.configs import settings as configs
    from eyegazer_keras.runs import search

    config = configs.apply_overrides(configs.get_config("search-demo"), {"strategy": "multiworker"})
    with pytest.raises(ValueError, match="keras-team/keras#20585"):
        search.run_search(config, str(tmp_path / "mw"))
