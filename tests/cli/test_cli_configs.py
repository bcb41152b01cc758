"""Configs, --set parsing and the CLI contract (help, exit codes, fast failure, paths, noise).

CLI checks run in-process through `cli.main(argv)`; a subprocess only where the check is about a
fresh process (what `--help` imports, TensorFlow's start-up lines, the network guard in a child).
"""

import json
import os
import subprocess
import sys

import pytest

from eyegazer_keras import cli
from eyegazer_keras.cli.commands import common, training
from eyegazer_keras.configs import field_values
from eyegazer_keras.configs import settings as configs


def test_every_config_has_a_docstring_with_command_runtime_and_expected():
    for name, factory in configs.CONFIGS.items():
        doc = factory.__doc__ or ""
        assert "Command:" in doc and "Runtime:" in doc and "Expected" in doc, name
        assert f"--config {name}:runlocal" in doc or name == "demo", name
        assert "runlocal" in doc and "Args:" in doc and "Returns:" in doc, name
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


@pytest.mark.parametrize(
    "item,key,expected",
    [
        ("jit_compile=fusible", "jit_compile", "fusible"),  # bool | str: the string
        ("jit_compile=true", "jit_compile", True),  # bool | str: the bool
        ("max_train_examples=12", "max_train_examples", 12),  # int | None
        ("max_train_examples=none", "max_train_examples", None),
        ("lora_alpha=16", "lora_alpha", 16.0),  # float | None: a float, not an int
        ("mixed_precision=none", "mixed_precision", None),
        ('lora_targets=["query"]', "lora_targets", ("query",)),  # tuple[str, ...] as JSON
        ("backbone=none", "backbone", None),
        ("backbone=config", "backbone", None),  # the old magic string
        ("dataset_config=tiny", "dataset_config", "tiny"),
    ],
)
def test_set_values_follow_the_declared_field_types(item, key, expected):
    cfg = configs.apply_overrides(configs.get_config("demo"), [item])
    value = getattr(cfg, key)
    assert value == expected and type(value) is type(expected), (item, value)


def test_set_value_errors_say_what_the_field_takes():
    with pytest.raises(ValueError, match="expected an integer"):
        field_values.parse_value(configs.TrainConfig, "epochs", "two")
    with pytest.raises(ValueError, match="expected true/false"):
        field_values.parse_value(configs.TrainConfig, "augment", "maybe")
    with pytest.raises(ValueError, match="expected an integer"):  # int | None
        field_values.parse_value(configs.TrainConfig, "max_eval_examples", "many")
    assert field_values.parse_value(configs.SearchConfig, "block_type", "none") is None


def test_bad_overrides_name_the_fix():
    with pytest.raises(configs.ConfigError, match="valid keys"):
        configs.apply_overrides(configs.get_config("demo"), ["epoch=2"])
    with pytest.raises(configs.ConfigError, match="key=value"):
        configs.apply_overrides(configs.get_config("demo"), ["epochs"])
    with pytest.raises(configs.ConfigError, match="unknown config"):
        configs.get_config("nope")
    with pytest.raises(configs.ConfigError, match="demo:runlocal"):
        configs.get_config("demo:tiny")


def test_task_replaces_label_mode_and_old_run_configs_still_load():
    cfg = configs.apply_overrides(configs.get_config("demo"), ["label_mode=binary"])
    assert cfg.task == "binary" and cfg.num_classes == 2
    assert "label_mode" not in configs.to_dict(cfg) and "requires_real_data" not in configs.to_dict(
        cfg
    )
    old = {  # a config.json written before issue 14
        "kind": "TrainConfig",
        "name": "old",
        "label_mode": "binary",
        "backbone": "config",
        "requires_real_data": False,
        "lora_rank": 4,
    }
    cfg = configs.from_dict(old)
    assert cfg.task == "binary" and cfg.backbone is None and cfg.lora_layout == "keras"
    with pytest.raises(configs.ConfigError, match="eyegazer search"):
        configs.apply_overrides(configs.get_config("demo"), ["task=regression"])
    assert configs.get_config("search-demo").task == "regression"


@pytest.mark.parametrize("name", list(configs.CONFIGS))
def test_every_config_has_a_tiny_runlocal_variant(name):
    full, tiny = configs.get_config(name), configs.get_config(f"{name}:runlocal")
    assert type(tiny) is type(full) and tiny.name == f"{name}-runlocal"
    assert tiny.dataset == "synthetic_fundus" and tiny.dataset_config == "tiny"
    assert tiny.image_size == 32 and tiny.epochs == 1
    if isinstance(tiny, configs.TrainConfig):
        assert tiny.backbone is None and tiny.backbone_config == configs.RUNLOCAL_VIT
        assert tiny.pretrain_epochs == 0
        for recipe in ("task", "monitor", "class_weight", "stop_on_collapse", "lora_targets"):
            assert getattr(tiny, recipe) == getattr(full, recipe), recipe
    else:
        assert tiny.max_trials == 1
    configs.validate(tiny)


def test_config_names_by_kind():
    assert configs.names("train") == ["demo", "blog-run1", "blog-run2", "blog-run3", "dinov2-lora"]
    assert configs.names("search") == ["search-demo", "search-aptos"]
    assert configs.names() == list(configs.CONFIGS)


# ---------------------------------------------------------------------------------------------
# The CLI, in-process
# ---------------------------------------------------------------------------------------------
def _cli(capsys, *argv):
    try:
        code = cli.main(list(argv))
    except SystemExit as exit_:  # argparse: --help, usage errors
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_on_every_verb(capsys):
    for verb in cli.VERBS:
        code, out, _ = _cli(capsys, verb, "--help")
        assert code == 0 and "usage: eyegazer" in out, verb
    for verb in ["prepare", "train", "evaluate", "search", "export", "predict", "demo"]:
        assert verb in cli.VERBS


def test_choices_come_from_the_registries(capsys):
    from eyegazer_keras.data import datasets as data

    assert set(common.dataset_names()) >= set(data.DATASETS)
    assert "common" not in common.dataset_names()  # a shared module, not a builder
    _, out, _ = _cli(capsys, "prepare", "--help")
    assert all(name in out for name in common.dataset_names())
    code, _, err = _cli(capsys, "prepare", "nope")
    assert code == 2 and "invalid choice" in err
    _, out, _ = _cli(capsys, "train", "--help")
    assert all(name in out for name in configs.names("train"))
    assert "search-demo" not in out.split("--config")[1].split("--workdir")[0]


@pytest.mark.parametrize("name", ["blog-run1", "blog-run2", "blog-run3", "search-aptos"])
def test_real_data_configs_fail_fast_without_data(tmp_path, capsys, name):
    verb = "search" if name.startswith("search") else "train"
    code, _, err = _cli(
        capsys,
        verb,
        "--config",
        name,
        "--workdir",
        str(tmp_path / "w"),
        "--data-dir",
        str(tmp_path),
    )
    assert code == 2
    assert "eyegazer prepare aptos2019 --manual-dir" in err
    assert "Traceback" not in err


def _run(*args, timeout=120, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "eyegazer_keras.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


@pytest.mark.slow
@pytest.mark.network_blocked_expected
def test_blog_config_fails_fast_without_preset(tiny_data_dir, tmp_path, no_network):
    # Data present (tiny synthetic set stands in), preset missing and no network: the child's
    # attempt to reach Kaggle is blocked by the test session's guard (tests/_netguard.py). A
    # subprocess on purpose: it shows `python -m eyegazer_keras.cli` children are guarded too.
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


def test_unknown_config_is_one_line(tmp_path, capsys):
    code, _, err = _cli(capsys, "train", "--config", "nope", "--workdir", str(tmp_path))
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("eyegazer train: error: unknown config")


def test_preview_grid(tiny_data_dir, tmp_path):
    from PIL import Image

    from eyegazer_keras.data import datasets as data

    path = data.preview_grid("synthetic_fundus", tiny_data_dir, "tiny", str(tmp_path / "p.png"), 3)
    assert Image.open(path).size[0] > 100


@pytest.mark.parametrize(
    "override,expected",
    [
        ("batch_size=0", "must be > 0"),
        ("label_mode=regression", "choose one of grade, binary"),
        ("backbone_config=foo", "JSON object"),
    ],
)
def test_bad_set_values_are_one_line(tmp_path, capsys, override, expected):
    code, _, err = _cli(
        capsys, "train", "--config", "demo", "--workdir", str(tmp_path), "--set", override
    )
    assert code == 2 and "Traceback" not in err
    assert expected in err.strip().splitlines()[-1]


def test_blog_alpha_accepts_floats():
    cfg = configs.apply_overrides(configs.get_config("blog-run1"), ["lora_alpha=0.5"])
    assert cfg.lora_alpha == 0.5


def test_data_dir_precedence(tmp_path, monkeypatch):
    for var in common.DATA_DIR_ENV:
        monkeypatch.delenv(var, raising=False)
    root = str(tmp_path / "root")
    load = training.load_config
    assert load("demo", [], None, root, "train").data_dir == os.path.join(root, "tfds")
    given = str(tmp_path / "set")
    assert load("demo", [f"data_dir={given}"], None, root, "train").data_dir == given
    flag = str(tmp_path / "flag")
    assert load("demo", [f"data_dir={given}"], flag, root, "train").data_dir == flag
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "env"))
    assert load("demo", [], None, root, "train").data_dir == str(tmp_path / "env")
    with pytest.raises(configs.ConfigError, match="not a search config; use `eyegazer train`"):
        load("demo", [], None, root, "search")


@pytest.mark.slow
def test_demo_runlocal_keeps_set_data_dir_and_prints_its_paths(tmp_path, capsys):
    """`eyegazer demo` end to end (runlocal): `--set data_dir` is kept without `--data-dir`, and
    everything else lands under `--root`."""
    root, data_dir = tmp_path / "root", tmp_path / "elsewhere"
    code, out, err = _cli(
        capsys, "--root", str(root), "demo", "--runlocal", "--set", f"data_dir={data_dir}"
    )
    assert code == 0, err
    lines = out.splitlines()
    assert f"data dir: {data_dir}" in lines
    assert f"workdir: {root / 'demo'}" in lines
    assert f"export dir: {root / 'demo' / 'export'}" in lines
    assert (data_dir / "synthetic_fundus" / "tiny").is_dir()
    assert not (root / "tfds").exists()
    run = root / "demo"
    assert (run / "export" / "saved_model.pb").exists() and (run / "preview.png").exists()
    with open(run / "config.json") as f:
        assert json.load(f)["task"] == "grade"
    assert "4/4 exported SavedModel" in out


# ---------------------------------------------------------------------------------------------
# Fresh processes: imports and start-up noise
# ---------------------------------------------------------------------------------------------
_IMPORTS = r"""
import sys
from eyegazer_keras import cli
for argv in (["--help"], ["predict", "--help"], ["train", "--help"], ["prepare", "--help"]):
    try:
        cli.main(argv)
    except SystemExit:
        pass
heavy = ("tensorflow", "keras", "keras_hub", "matplotlib", "sklearn")
print("HEAVY", [m for m in heavy if m in sys.modules])
code = cli.main(["predict", "--model", sys.argv[1], "photo.png"])
print("PREDICT", code, [m for m in ("keras_hub",) if m in sys.modules])
"""


def test_help_imports_nothing_heavy_and_predict_no_keras_hub(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", _IMPORTS, str(tmp_path / "no_export")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    assert lines.get("HEAVY") == "[]", out.stdout + out.stderr[-2000:]
    assert lines.get("PREDICT", "").endswith("[]"), out.stdout + out.stderr[-2000:]
    assert not lines["PREDICT"].startswith("0 ")  # no export there: an error exit


def test_drop_native_noise():
    noise = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
        "I0000 00:00:1796155768.283992   18912 cudart_stub.cc:31] Could not find cuda drivers on "
        "your machine, GPU will not be used.\n",
        "E0000 00:00:1796156161.519027   28686 cuda_platform.cc:52] failed call to cuInit: "
        "INTERNAL: CUDA error\n",
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild "
        "TensorFlow with the appropriate compiler flags.\n",
        "E0000 00:00:1796632130.728217    7661 util.cc:131] oneDNN supports DT_BOOL only on "
        "platforms with AVX-512. Falling back to the default Eigen-based implementation if "
        "present.\n",
        "E0000 00:00:1796639007.899444   17929 util.cc:131] oneDNN supports DT_UINT8 only on "
        "platforms with AVX-512. Falling back to the default Eigen-based implementation if "
        "present.\n",
    ]
    for line in noise:
        assert cli.drop_native_noise(line) == "", line
    glued = "Generating train examples...: 0 examples\x1b[A" + noise[2]
    assert cli.drop_native_noise(glued) == "Generating train examples...: 0 examples\x1b[A\n"
    for kept in (
        "eyegazer train: error: unknown config 'nope'\n",
        "E0000 00:00:1796156161.519027   28686 op_kernel.cc:1] OOM when allocating tensor\n",
        "Traceback (most recent call last):\n",
    ):
        assert cli.drop_native_noise(kept) == kept


@pytest.mark.slow
def test_prepare_prints_no_tensorflow_start_up_lines(tmp_path):
    out = _run(
        "prepare",
        "synthetic_fundus",
        "--config",
        "tiny",
        "--data-dir",
        str(tmp_path / "tfds"),
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    for word in ("cuda", "cuinit", "absl::initializelog", "cpu_feature_guard", "dt_bool"):
        assert word not in text.lower(), word
    # TFDS's banner for a download that does not happen, and its "downloaded and prepared".
    assert "Downloading and preparing" not in text and "Subsequent calls" not in text
    assert f"data dir: {tmp_path / 'tfds'}" in out.stdout.splitlines()
    assert "train: 80 examples" in out.stdout


def test_headline_rounds_and_gives_the_referable_figures():
    metrics = {
        "accuracy": 0.66,
        "majority_baseline": 0.4975,
        "qwk": 0.7747035573122529,
        "auroc": 0.8550610227628361,
        "referable": {
            "definition": "grade >= 2",
            "auroc": 0.9445481896462288,
            "sensitivity": 0.679,
            "specificity": 0.979,
            "threshold": 0.5,
        },
        "temperature_scaling": {
            "report_half": {
                "operating_point": {
                    "sensitivity": 0.9,
                    "specificity": 0.8305084745762712,
                    "threshold": 0.0984234,
                }
            }
        },
    }
    line = common.headline(metrics)
    assert line == (
        "accuracy 0.660 (majority 0.497) | QWK 0.775 | AUROC 0.855 | referable DR (grade >= 2): "
        "AUROC 0.945, sensitivity 0.900 / specificity 0.831 at the exported threshold 0.098"
    )
    del metrics["temperature_scaling"]  # no calibration: the metrics' own threshold
    assert common.headline(metrics).endswith("sensitivity 0.679 / specificity 0.979 at p >= 0.500")
    assert common.headline({"qwk": None}, ("qwk",)) == "QWK n/a"


def test_a_progress_bar_is_passed_on_before_its_newline_but_a_log_line_waits():
    """The stderr filter forwards a bar's redraw at once (a leave=False bar's clearing used to
    surface after the demo's last line, at exit); a possible native log line waits for its
    newline so that `drop_native_noise` sees it whole."""
    for partial in (b"Generating train examples...: 10%|#   | 1/10\r", b"\r    \x1b[A", b""):
        assert not cli.may_begin_native_noise(partial), partial
    for partial in (
        b"E0000 00:00:1796632130.7",
        b"W",
        b"WARNING: All log",
        b"bar\rI0000 1",
        b"2026-12-07 08:28:35.1",
        b"To enable the following",
    ):
        assert cli.may_begin_native_noise(partial), partial
