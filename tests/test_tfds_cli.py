"""`eyegazer_keras.tfds_cli`: the `tfds` command without apache-beam / mlcroissant.

The build tests run the real command in a subprocess, the way a user runs it:
`python -m eyegazer_keras.tfds_cli build <folder> --manual_dir ... --data_dir ...`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from eyegazer_keras import tfds_cli

REPO = pathlib.Path(__file__).resolve().parents[1]
APTOS_DUMMY = REPO / "datasets" / "aptos2019" / "dummy_data"
BEAM_INSTALLED = importlib.util.find_spec("apache_beam") is not None
CROISSANT_INSTALLED = importlib.util.find_spec("mlcroissant") is not None


def _run(args: list[str], cwd: pathlib.Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _split_sizes(variant_dir: pathlib.Path) -> dict[str, int]:
    """`{split: num_examples}` read from a prepared variant's `dataset_info.json`."""
    info = json.loads((variant_dir / "dataset_info.json").read_text())
    return {s["name"]: sum(int(n) for n in s["shardLengths"]) for s in info["splits"]}


@pytest.mark.skipif(BEAM_INSTALLED, reason="apache_beam is installed: tfds starts without a shim")
def test_plain_tfds_cli_needs_apache_beam(tmp_path):
    # The failure the shim exists for (tensorflow-datasets 4.9.10): importing the CLI module
    # defines `class ConvertMetadataFn(beam.DoFn)` (convert_format_utils.py).
    # mlcroissant is stubbed here so that the first missing import reported is apache_beam.
    code = (
        "import sys, types\n"
        "if not " + repr(CROISSANT_INSTALLED) + ":\n"
        "    m = types.ModuleType('mlcroissant'); m.Dataset = object\n"
        "    sys.modules['mlcroissant'] = m\n"
        "import tensorflow_datasets.scripts.cli.main\n"
    )
    result = _run(["-c", code], cwd=tmp_path)
    assert result.returncode != 0
    assert "No module named 'apache_beam'" in result.stderr
    assert "convert_format_utils.py" in result.stderr


@pytest.mark.skipif(
    CROISSANT_INSTALLED, reason="mlcroissant is installed: croissant.py imports it"
)
def test_plain_tfds_cli_needs_mlcroissant(tmp_path):
    result = _run(["-c", "import tensorflow_datasets.scripts.cli.main"], cwd=tmp_path)
    assert result.returncode != 0
    assert "No module named 'mlcroissant'" in result.stderr


def test_import_leaves_no_stub_behind_and_beam_commands_fail_clearly():
    tfds_cli.import_tfds_cli()
    if not BEAM_INSTALLED:
        assert "apache_beam" not in sys.modules  # TFDS's own Beam checks stay truthful
        from tensorflow_datasets.scripts.cli import convert_format_utils

        with pytest.raises(ImportError, match="pip install apache-beam"):
            convert_format_utils.beam.Pipeline  # noqa: B018  (what `tfds convert_format` runs)
    if not CROISSANT_INSTALLED:
        assert "mlcroissant" not in sys.modules


def test_stub_only_provides_what_the_import_needs():
    beam = tfds_cli._stub_module("apache_beam")

    class MyFn(beam.DoFn):  # what convert_format_utils.py does at import time
        pass

    with pytest.raises(ImportError, match="Beam-based datasets or `tfds convert_format`"):
        MyFn()
    with pytest.raises(ImportError, match="`apache_beam.Map` is unavailable"):
        beam.Map  # noqa: B018
    with pytest.raises(AttributeError):  # dunders stay AttributeError: hasattr() keeps working
        beam.__path__  # noqa: B018
    assert not hasattr(beam, "__file__")


def test_aptos2019_tfds_build_from_the_builder_folder(tmp_path):
    data_dir = tmp_path / "data"
    result = _run(
        [
            "-m",
            "eyegazer_keras.tfds_cli",
            "build",
            str(REPO / "datasets" / "aptos2019"),
            "--manual_dir",
            str(APTOS_DUMMY / "folder"),
            "--data_dir",
            str(data_dir),
            "--config",
            "256",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    variant = data_dir / "aptos2019" / "256" / "1.0.0"
    sizes = _split_sizes(variant)
    assert set(sizes) == {"train", "validation", "test"}
    # 12 labelled dummy photos (a conflicting duplicate pair kept), 4 test photos.
    assert sizes["train"] + sizes["validation"] == 12
    assert sizes["validation"] > 0
    assert sizes["test"] == 4
    assert (variant / "build_report.json").exists()


def test_synthetic_fundus_tfds_build_tiny_config(tmp_path):
    data_dir = tmp_path / "data"
    result = _run(
        [
            "-m",
            "eyegazer_keras.tfds_cli",
            "build",
            str(REPO / "datasets" / "synthetic_fundus"),
            "--config=tiny",
            "--data_dir",
            str(data_dir),
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sizes = _split_sizes(data_dir / "synthetic_fundus" / "tiny" / "1.0.0")
    assert sizes == {"train": 80, "validation": 24, "test": 16}
