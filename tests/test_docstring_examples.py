"""Every ```python example in a module docstring of the package runs, in a fresh folder.

The examples create their own inputs (tiny models, generated photos, the tiny synthetic set),
so what the docs show is what works.
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

from eyegazer_keras import cli

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "eyegazer_keras"
NOT_RUN = {  # examples that start a server and block until Ctrl-C; their tests start them
    "eyegazer_keras.serving.app": "starts a Gradio server and blocks (tests/serving/test_app.py serves one)",
    "eyegazer_keras.serving.serve": "starts a KServe server and blocks (tests/serving/test_serve.py serves one)",
}
# Measured on 2 busy cores: search 1 AutoKeras trial; data 42 s (prepares the tiny set).
SLOW = {"eyegazer_keras.runs.search", "eyegazer_keras.data.datasets"}


def module_examples() -> dict[str, list[str]]:
    """{module name: [code of each ```python block in its module docstring]}."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
        if blocks:
            parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
            out[".".join(p for p in parts if p != "__init__")] = blocks
    return out


EXAMPLES = module_examples()


def _params():
    for name in EXAMPLES:
        marks = [pytest.mark.slow] if name in SLOW else []
        yield pytest.param(name, marks=marks, id=name)


def test_examples_are_found():
    assert {
        "eyegazer_keras.cli",
        "eyegazer_keras.configs.settings",
        "eyegazer_keras.serving.predict",
    } <= set(EXAMPLES)
    for name in NOT_RUN:
        assert name in EXAMPLES, f"{name} has no example any more: drop it from NOT_RUN"


@pytest.mark.parametrize("module", _params())
def test_module_docstring_example_runs(module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples write relative paths only
    verbs = dict(cli.VERBS)  # the cli example registers a verb
    try:
        for k, code in enumerate(EXAMPLES[module]):
            compiled = compile(code, f"<{module} docstring example {k}>", "exec")
            if module in NOT_RUN:
                pytest.skip(NOT_RUN[module])  # compiled above: at least it is valid Python
            exec(compiled, {"__name__": f"__example_{module.replace('.', '_')}__"})
    finally:
        cli.VERBS.clear()
        cli.VERBS.update(verbs)
