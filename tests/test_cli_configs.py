"""Configs, --set parsing and the CLI contract (help, exit codes, fast failure)."""

import subprocess
import sys

import pytest

from eyegazer_keras import cli, configs


def test_every_config_has_a_docstring_with_command_runtime_and_expected():
    for name, factory in configs.CONFIGS.items():
        doc = factory.__doc__ or ""
        assert "Command:" in doc and "Runtime:" in doc and "Expected" in doc, name
        assert configs.get_config(name).name == name


def test_overrides_parse_types():
    cfg = configs.apply_overrides(
        configs.get_config("demo"),
        [
            "epochs=2",
            "learning_rate=0.01",
            "augment=false",
            "lora_targets=query,key,value",
            'backbone_config={"num_layers": 2}',
            "lora_alpha=none",
            "strategy=mirrored",
        ],
    )
    assert cfg.epochs == 2 and cfg.learning_rate == 0.01 and cfg.augment is False
    assert cfg.lora_targets == ("query", "key", "value")
    assert cfg.backbone_config == {"num_layers": 2} and cfg.lora_alpha is None
    assert configs.from_dict(configs.to_dict(cfg)) == cfg


def test_bad_overrides_name_the_fix():
    with pytest.raises(configs.ConfigError, match="valid keys"):
        configs.apply_overrides(configs.get_config("demo"), ["epoch=2"])
    with pytest.raises(configs.ConfigError, match="key=value"):
        configs.apply_overrides(configs.get_config("demo"), ["epochs"])
    with pytest.raises(configs.ConfigError, match="unknown config"):
        configs.get_config("nope")


def _run(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "eyegazer_keras.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help_on_every_verb():
    for verb in ["prepare", "train", "evaluate", "search", "export", "predict", "demo"]:
        out = _run(verb, "--help")
        assert out.returncode == 0 and "usage: eyegazer" in out.stdout, verb


@pytest.mark.parametrize("name", ["blog-run1", "blog-run2", "blog-run3", "search-aptos"])
def test_real_data_configs_fail_fast_without_data(tmp_path, name):
    verb = "search" if name.startswith("search") else "train"
    out = _run(
        verb, "--config", name, "--workdir", str(tmp_path / "w"), "--data-dir", str(tmp_path)
    )
    assert out.returncode == 2
    assert "eyegazer prepare aptos2019 --manual-dir" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.network_blocked_expected
def test_blog_config_fails_fast_without_preset(tiny_data_dir, tmp_path, no_network):
    # Data present (tiny synthetic set stands in), preset missing and no network: the child's
    # attempt to reach Kaggle is blocked by the test session's guard (tests/_netguard.py).
    out = _run(
        "train",
        "--config",
        "blog-run1",
        "--workdir",
        str(tmp_path / "w"),
        "--data-dir",
        tiny_data_dir,
        "--set",
        "dataset=synthetic_fundus",
        "--set",
        "dataset_config=tiny",
    )
    assert out.returncode == 2, out.stderr
    assert "vit_base_patch16_224_imagenet21k" in out.stderr and "--set backbone=" in out.stderr
    assert any("kaggle" in line for line in no_network()), no_network()


def test_unknown_config_is_one_line(tmp_path):
    out = _run("train", "--config", "nope", "--workdir", str(tmp_path))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("eyegazer train: error: unknown config")


def test_preview_grid(tiny_data_dir, tmp_path):
    from PIL import Image

    path = cli.preview_grid("synthetic_fundus", tiny_data_dir, "tiny", str(tmp_path / "p.png"), 3)
    assert Image.open(path).size[0] > 100


@pytest.mark.parametrize(
    "override,expected",
    [
        ("batch_size=0", "must be > 0"),
        ("label_mode=regression", "choose one of grade, binary"),
        ("backbone_config=foo", "JSON object"),
    ],
)
def test_bad_set_values_are_one_line(tmp_path, override, expected):
    out = _run("train", "--config", "demo", "--workdir", str(tmp_path), "--set", override)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert expected in out.stderr.strip().splitlines()[-1]


def test_blog_alpha_accepts_floats():
    cfg = configs.apply_overrides(configs.get_config("blog-run1"), ["lora_alpha=0.5"])
    assert cfg.lora_alpha == 0.5
