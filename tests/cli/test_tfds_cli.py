"""`eyegazer_keras.cli.tfds`: the `tfds` command without apache-beam / mlcroissant.

The build tests run the real command in a subprocess, the way a user runs it:
`python -m eyegazer_keras.cli.tfds build <folder> --manual_dir ... --data_dir ...`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from eyegazer_keras.cli import tfds as tfds_cli

REPO = pathlib.Path(__file__).resolve().parents[2]
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


# Imports the TFDS CLI module without the shim; on each missing module, records its name and
# the last TFDS file in the traceback, puts a bare stand-in in place and tries again.
_IMPORT_PLAIN_CLI = """
import json, sys, traceback, types
missing = []
while True:
    try:
        import tensorflow_datasets.scripts.cli.main
        break
    except ModuleNotFoundError as e:
        if e.name in dict(missing):
            raise
        files = [f.filename for f in traceback.extract_tb(e.__traceback__)]
        missing.append((e.name, [f for f in files if "tensorflow_datasets" in f][-1]))
        stub = sys.modules[e.name] = types.ModuleType(e.name)
        stub.DoFn = stub.Dataset = object
        for name in [m for m in sys.modules if m.startswith("tensorflow_datasets.scripts.cli")]:
            del sys.modules[name]
print("MISSING=" + json.dumps(missing))
"""


@pytest.mark.skipif(
    BEAM_INSTALLED and CROISSANT_INSTALLED,
    reason="apache_beam and mlcroissant are installed: tfds starts without a shim",
)
def test_plain_tfds_cli_needs_apache_beam_and_mlcroissant(tmp_path):
    # The failures the shim exists for (tensorflow-datasets 4.9.10), in import order:
    # convert_format_utils.py defines `class ConvertMetadataFn(beam.DoFn)`, croissant.py runs
    # `import mlcroissant`. Plain `import tensorflow_datasets.scripts.cli.main` dies on the first.
    result = _run(["-c", _IMPORT_PLAIN_CLI], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    missing = json.loads(result.stdout.split("MISSING=")[-1])
    expected = []
    if not BEAM_INSTALLED:
        expected.append(("apache_beam", "convert_format_utils.py"))
    if not CROISSANT_INSTALLED:
        expected.append(("mlcroissant", "croissant.py"))
    assert [(name, pathlib.Path(f).name) for name, f in missing] == expected


def test_import_leaves_no_stub_behind_and_beam_commands_fail_clearly():
    tfds_cli.import_tfds_cli()
    if not BEAM_INSTALLED:
        assert "apache_beam" not in sys.modules  # TFDS's own Beam checks stay truthful
        from tensorflow_datasets.scripts.cli import convert_format_utils

        with pytest.raises(ImportError, match="pip install apache-beam"):
            convert_format_utils.beam.Pipeline  # noqa: B018  (what `convert_format --use_beam` runs)
    if not CROISSANT_INSTALLED:
        assert "mlcroissant" not in sys.modules


def test_stub_only_provides_what_the_import_needs():
    beam = tfds_cli._stub_module("apache_beam")

    class MyFn(beam.DoFn):  # what convert_format_utils.py does at import time
        pass

    with pytest.raises(
        ImportError, match="Beam-based datasets or `tfds convert_format --use_beam`"
    ):
        MyFn()
    with pytest.raises(ImportError, match="`apache_beam.Map` is unavailable"):
        beam.Map  # noqa: B018
    with pytest.raises(AttributeError):  # dunders stay AttributeError: hasattr() keeps working
        beam.__path__  # noqa: B018
    assert not hasattr(beam, "__file__")


def _tfds_build(tmp_path: pathlib.Path, dataset: str, *flags: str) -> pathlib.Path:
    """Runs `eyegazer-tfds build datasets/<dataset> FLAGS --data_dir D`; checks it succeeds.

    Returns:
        The data dir `D`.
    """
    data_dir = tmp_path / "data"
    command = ["-m", "eyegazer_keras.cli.tfds", "build", str(REPO / "datasets" / dataset)]
    result = _run([*command, *flags, "--data_dir", str(data_dir)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return data_dir


@pytest.mark.slow  # a TF subprocess: ~10-20 s on 2 busy cores
def test_aptos2019_tfds_build_from_the_builder_folder(tmp_path):
    manual = ["--manual_dir", str(APTOS_DUMMY / "folder")]
    data_dir = _tfds_build(tmp_path, "aptos2019", *manual, "--config", "256")
    variant = data_dir / "aptos2019" / "256" / "1.2.0"
    sizes = _split_sizes(variant)
    assert set(sizes) == {"train", "validation", "test"}
    # 12 labelled dummy photos (a conflicting duplicate pair kept), 4 test photos.
    assert sizes["train"] + sizes["validation"] == 12
    assert sizes["validation"] > 0
    assert sizes["test"] == 4
    assert (variant / "build_report.json").exists()


@pytest.mark.slow  # a TF subprocess: ~10-20 s on 2 busy cores
def test_synthetic_fundus_tfds_build_tiny_config(tmp_path):
    data_dir = _tfds_build(tmp_path, "synthetic_fundus", "--config=tiny")
    sizes = _split_sizes(data_dir / "synthetic_fundus" / "tiny" / "1.2.0")
    assert sizes == {"train": 80, "validation": 24, "test": 16}


@pytest.mark.slow  # a TF subprocess: ~10-20 s on 2 busy cores
def test_eyepacs2015_tfds_build_from_zip_parts(tmp_path):
    manual = ["--manual_dir", str(REPO / "datasets" / "eyepacs2015" / "dummy_data" / "zip_parts")]
    data_dir = _tfds_build(tmp_path, "eyepacs2015", *manual, "--config", "256")
    sizes = _split_sizes(data_dir / "eyepacs2015" / "256" / "1.2.0")
    assert sizes == {"train": 12, "validation": 4, "test": 6, "sample": 2}
