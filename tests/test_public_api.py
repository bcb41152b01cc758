"""The public API (`eyegazer_keras.__all__`): every name resolves, importing the package stays
light, and the notebooks import from it (not from the CLI's commands)."""

import json
import os
import re
import subprocess
import sys

import pytest

import eyegazer_keras

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")


def test_every_public_name_resolves():
    for name in eyegazer_keras.__all__:
        assert getattr(eyegazer_keras, name) is not None, name
    assert eyegazer_keras.FundusImageClassifier.__name__ == "FundusImageClassifier"
    assert eyegazer_keras.PreprocessingSpec is eyegazer_keras.fundus.PreprocessingSpec
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        eyegazer_keras.nope  # noqa: B018


def test_import_is_light():
    """`import eyegazer_keras` loads neither TensorFlow nor Keras (names load on first use)."""
    code = "import sys, eyegazer_keras; print(sorted({'tensorflow', 'keras'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"


def _notebook_imports(path: str) -> list[str]:
    with open(path) as f:
        cells = [c for c in json.load(f)["cells"] if c["cell_type"] == "code"]
    source = "\n".join("".join(c["source"]) for c in cells)
    return re.findall(r"^from eyegazer_keras[\w.]* import \(?[^)\n]*\)?", source, re.M) + [
        m.group(0)
        for m in re.finditer(r"^from eyegazer_keras import \(\n(?:    \w+,\n)+\)", source, re.M)
    ]


@pytest.mark.parametrize("name", sorted(n for n in os.listdir(NOTEBOOKS) if n.endswith(".ipynb")))
def test_notebooks_import_the_public_api(name):
    """Not executed here (test_notebooks does, slowly): their eyegazer imports resolve."""
    lines = _notebook_imports(os.path.join(NOTEBOOKS, name))
    assert lines, f"{name} imports nothing from eyegazer_keras"
    for line in lines:
        assert line.startswith("from eyegazer_keras import "), f"{name}: {line}"
        if line.endswith("("):
            continue  # the multi-line form is matched whole as well
        names = [n.strip() for n in line.split(" import ", 1)[1].strip("()\n").split(",")]
        for n in filter(None, names):
            assert n in eyegazer_keras.__all__, f"{name}: {n} is not in eyegazer_keras.__all__"
        exec(line, {})
