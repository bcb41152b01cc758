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
os.environ["HF_HUB_OFFLINE"] = "1"
import pytest  # noqa: E402

from eyegazer_keras import train  # noqa: E402

# What the `eyegazer` CLI sets first thing; in pytest's one process `configure_runtime` would
# come after TensorFlow's first function and be ignored, so set it up front.
train.add_cpu_fusion_flags()

TINY_BACKBONE = {"patch_size": 8, "num_layers": 2, "num_heads": 2, "hidden_dim": 48, "mlp_dim": 96}


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """synthetic_fundus/tiny (80/24/16 images at 64 px) prepared once per test session."""
    from eyegazer_keras import data

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    data.prepare("synthetic_fundus", data_dir=data_dir, config="tiny")
    return data_dir


def tiny_train_overrides(data_dir: str, **extra) -> dict:
    """A `TrainConfig` override dict for a seconds-long run on the tiny set."""
    out = {
        "dataset_config": "tiny",
        "data_dir": data_dir,
        "image_size": 32,
        "backbone": None,
        "backbone_config": dict(TINY_BACKBONE),
        "pretrain_epochs": 0,
        "batch_size": 16,
        "epochs": 1,
        "augment": False,
        "export": False,
        "lora_rank": 4,
    }
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
