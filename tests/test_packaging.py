"""A non-editable wheel ships the TFDS builders and can build the embedded dataset."""

import os
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import NETGUARD_DIR

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_wheel_ships_builders_and_builds_dataset(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            REPO,
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("eyegazer_keras-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for required in [
        "eyegazer_datasets/synthetic_fundus/synthetic_fundus_dataset_builder.py",
        "eyegazer_datasets/aptos2019/aptos2019_dataset_builder.py",
        "eyegazer_datasets/aptos2019/README.md",
        "eyegazer_datasets/aptos2019/CITATIONS.bib",
        "eyegazer_datasets/common/kaggle_source.py",
        "eyegazer_datasets/common/duplicates.py",
        "eyegazer_datasets/common/layouts.py",
        "eyegazer_datasets/eyepacs2015/eyepacs2015_dataset_builder.py",
        "eyegazer_datasets/eyepacs2015/README.md",
        "eyegazer_datasets/eyepacs2015/dummy_data/make_dummy_data.py",
        "eyegazer_datasets/fundus_folder/fundus_folder_dataset_builder.py",
        "eyegazer_datasets/fundus_folder/CITATIONS.bib",
        "eyegazer_keras/cli/__init__.py",
        "eyegazer_keras/cli/commands/prepare.py",
        "eyegazer_keras/cli/commands/training.py",
        "eyegazer_keras/configs/named_configs.py",
    ]:
        assert required in names, required
    assert not any(n.startswith("datasets/") for n in names), "no top-level `datasets` package"
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    script = (
        "import eyegazer_datasets, eyegazer_keras\n"
        "from eyegazer_keras import cli, data\n"
        "assert {'prepare', 'train', 'predict', 'demo'} <= set(cli.VERBS), cli.VERBS\n"
        f"assert eyegazer_datasets.__file__.startswith({str(site)!r}), eyegazer_datasets.__file__\n"
        f"assert eyegazer_keras.__file__.startswith({str(site)!r}), eyegazer_keras.__file__\n"
        f"b = data.prepare('synthetic_fundus', data_dir={str(tmp_path / 'tfds')!r}, config='tiny')\n"
        "print(b.info.splits['train'].num_examples)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["PYTHONPATH"] = os.pathsep.join([NETGUARD_DIR, str(site)])  # the wheel, and no network
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "80"
