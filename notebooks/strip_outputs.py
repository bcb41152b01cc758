"""Strips outputs and execution counts from notebooks, in place (run before committing).

Usage: `python notebooks/strip_outputs.py [NOTEBOOK.ipynb ...]` (default: every notebook in
this folder). `--check` only reports notebooks that still hold outputs and exits 1 if any do.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import nbformat


def has_outputs(nb) -> bool:
    """True when any code cell of `nb` holds outputs or an execution count.

    Args:
        nb: nbformat.NotebookNode. A notebook read with `nbformat.read`.
    """
    return any(
        cell.cell_type == "code"
        and (cell.get("outputs") or cell.get("execution_count") is not None)
        for cell in nb.cells
    )


def strip(nb):
    """Clears every code cell's outputs and execution count, and run-time metadata.

    Args:
        nb: nbformat.NotebookNode. Modified in place and returned.
    """
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            for key in ("execution", "collapsed", "scrolled"):
                cell.metadata.pop(key, None)
    nb.metadata.pop("widgets", None)
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=pathlib.Path)
    parser.add_argument(
        "--check", action="store_true", help="report only; exit 1 if outputs remain"
    )
    args = parser.parse_args(argv)
    paths = args.paths or sorted(pathlib.Path(__file__).parent.glob("*.ipynb"))
    dirty = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if not has_outputs(nb):
            continue
        dirty.append(path)
        if not args.check:
            nbformat.write(strip(nb), path)
    for path in dirty:
        print(f"{path}: {'has outputs' if args.check else 'stripped'}")
    return 1 if args.check and dirty else 0


if __name__ == "__main__":
    sys.exit(main())
