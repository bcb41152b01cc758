"""Shared fixtures: a tiny prepared synthetic_fundus set and tiny model settings."""

from __future__ import annotations

import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Download caches go to a throw-away folder, never the user's home: a failed preset download
# leaves an empty kagglehub folder that later looks like a cached preset.
_CACHE = tempfile.mkdtemp(prefix="eyegazer-test-cache-")
os.environ["KAGGLEHUB_CACHE"] = os.path.join(_CACHE, "kagglehub")
os.environ["HF_HOME"] = os.path.join(_CACHE, "huggingface")
# The Hugging Face libraries the live tests use in-process (transformers, peft, huggingface_hub)
# stay offline: a full run once saw a connection to huggingface.co:443 from a test worker.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
import pytest  # noqa: E402

from tests import _netguard  # noqa: E402
from tests.test_case import TINY_VIT  # noqa: E402

# No network in tests (issue 13): this process and every Python child it starts (through
# tests/netguard/sitecustomize.py, first on their PYTHONPATH) may connect to loopback only.
NETGUARD_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "netguard")
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (NETGUARD_DIR, os.environ.get("PYTHONPATH")) if p
)
os.environ[_netguard.LOG_ENV] = os.path.join(_CACHE, "netguard.log")
_netguard.install()

from eyegazer_keras.configs import settings as configs  # noqa: E402
from eyegazer_keras.training import runtime  # noqa: E402

# What the `eyegazer` CLI sets first thing; in pytest's one process `configure_runtime` would
# come after TensorFlow's first function and be ignored, so set it up front.
runtime.add_cpu_fusion_flags()


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "network_blocked_expected: the test checks behaviour without network; the guard must "
        "block at least one attempt (and no packet leaves)",
    )


def _netguard_lines() -> list[str]:
    try:
        with open(os.environ[_netguard.LOG_ENV]) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


@pytest.fixture(autouse=True)
def no_network(request):
    """Fails the test if it, or a Python process it started, tried to reach a non-local host.

    The attempt itself already raised `_netguard.NetworkBlockedError` (a ConnectionRefusedError);
    this catches the ones a library swallowed. Tests marked `network_blocked_expected` must
    instead show at least one blocked attempt. Yields `attempts()`, the blocked attempts so far.
    """
    start = len(_netguard_lines())

    def attempts() -> list[str]:
        return _netguard_lines()[start:]

    yield attempts
    seen = attempts()
    if request.node.get_closest_marker("network_blocked_expected"):
        if not seen:
            pytest.fail("expected a blocked network attempt, saw none")
    elif seen:
        pytest.fail(
            "network access attempted (tests may reach 127.0.0.1 only):\n" + "\n".join(seen)
        )


TINY_BACKBONE = TINY_VIT  # the shared tiny ViT (tests/test_case.py) at the runlocal 32 px


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """synthetic_fundus/tiny (80/24/16 images at 64 px) prepared once per test session."""
    from eyegazer_keras.data import datasets as data

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    data.prepare("synthetic_fundus", data_dir=data_dir, config="tiny")
    return data_dir


def tiny_train_overrides(data_dir: str, **extra) -> dict:
    """A `TrainConfig` override dict for a seconds-long run on the tiny set.

    The configs' own `runlocal` settings (`configs.RUNLOCAL_TRAIN`: synthetic_fundus/tiny, 32 px,
    the tiny ViT, 1 epoch), the prepared `data_dir`, no export.
    """
    out = {**configs.RUNLOCAL_TRAIN, "data_dir": data_dir, "export": False}
    out["backbone_config"] = dict(TINY_BACKBONE)
    out.update(extra)
    return out


def train_command(data_dir: str, workdir, **extra) -> list[str]:
    """`eyegazer train` argv for a tiny run (`tiny_train_overrides` as `--set` flags)."""
    cmd = [
        sys.executable,
        "-m",
        "eyegazer_keras.cli",
        "train",
        "--config",
        "demo",
        "--workdir",
        str(workdir),
        "--data-dir",
        data_dir,
    ]
    for key, value in tiny_train_overrides(data_dir, **extra).items():
        if key != "data_dir":
            cmd += ["--set", f"{key}={json.dumps(value) if isinstance(value, dict) else value}"]
    return cmd
