"""The notebooks execute top to bottom on the tiny synthetic set, plot, and are committed clean.

The execution tests (`slow`) run each notebook in a fresh `python3` kernel with `nbclient`, in
order, sharing one `EYEGAZER_NOTEBOOK_DIR` so the dataset is prepared once (each notebook also
prepares it itself, so any one of them runs alone). Runtimes are printed (`pytest -s`) and
recorded as the `notebook_seconds` property.
"""

from __future__ import annotations

import pathlib
import sys
import time

import nbformat
import pytest

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = [
    "01_data.ipynb",
    "02_five_class_vit_lora.ipynb",
    "03_the_shortcut.ipynb",
    "04_binary_screening.ipynb",
    "05_autokeras_regression.ipynb",
    "06_serving.ipynb",
    "07_explanations.ipynb",
]
CELL_TIMEOUT_S = 600


def _read(name: str):
    return nbformat.read(NOTEBOOK_DIR / name, as_version=4)


def test_notebook_list_is_complete():
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_has_no_outputs(name):
    nb = _read(name)
    nbformat.validate(nb)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, (
        f"notebooks/{name}: cells {dirty} hold outputs; run `python notebooks/strip_outputs.py`"
    )


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_one_parameter_cell_first(name):
    code_cells = [c for c in _read(name).cells if c.cell_type == "code"]
    tagged = [i for i, c in enumerate(code_cells) if "parameters" in c.metadata.get("tags", [])]
    assert tagged == [0], f"notebooks/{name}: the first code cell must be the one parameter cell"
    assert "DATASET = " in code_cells[0].source and "aptos2019" in code_cells[0].source


def test_readme_links_every_notebook():
    readme = (NOTEBOOK_DIR / "README.md").read_text(encoding="utf-8")
    for name in NOTEBOOKS:
        assert f"]({name})" in readme, f"notebooks/README.md does not link {name}"


@pytest.fixture(scope="module")
def notebook_workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("notebook_runs")


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, notebook_workdir, monkeypatch, record_property):
    import nbclient

    monkeypatch.setenv("EYEGAZER_NOTEBOOK_DIR", str(notebook_workdir))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    nb = _read(name)
    # Not part of the committed notebook: proves the kernel runs this interpreter (the venv).
    nb.cells.append(nbformat.v4.new_code_cell("import sys\nprint(sys.prefix)"))
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(notebook_workdir)}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError (with the cell and traceback) on any error
    seconds = time.perf_counter() - start
    record_property("notebook_seconds", round(seconds, 1))
    print(f"\n{name}: executed in {seconds:.1f} s")

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{name}: no plot rendered"
    kernel_prefix = "".join(o.text for o in nb.cells[-1].outputs if o.output_type == "stream")
    assert kernel_prefix.strip() == sys.prefix, (
        f"the python3 kernel runs {kernel_prefix.strip()!r}, not this venv ({sys.prefix}); "
        "register it with `python -m ipykernel install --sys-prefix`"
    )
