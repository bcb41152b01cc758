"""The package's house rules, read from the source (an AST scan, nothing is imported).

The subpackages follow the data's path, on floors; an import may go sideways (same floor) or
down, never up, and the subpackages form no circle:

    floor 4  cli                                      parse, call the library, print
    floor 3  runs                                     the run folder and its workflows
    floor 2  training  evaluation  serving  interop   fit / judge / ship a model; PEFT in and out
    floor 1  data  models                             stored -> model input; backbones, the task
    floor 0  fundus  configs  files                   photo -> stored; settings; atomic files

`interop` sits on floor 2, not beside `models`: it writes run folders for imported adapters and
names their classes with `evaluation.metrics.BINARY_NAMES`. The package root (`__init__.py`)
is the public API and loads its names lazily; modules below may import only its constants
(`ROOT_CONSTANTS`) from it.

Every import counts: module-level, inside functions, and under ``if TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "eyegazer_keras"

FLOORS = {
    "cli": 4,
    "runs": 3,
    "training": 2,
    "evaluation": 2,
    "serving": 2,
    "interop": 2,
    "data": 1,
    "models": 1,
    "fundus": 0,
    "configs": 0,
    "files": 0,
}
ROOT_CONSTANTS = {"GRADE_NAMES", "NOT_A_MEDICAL_DEVICE", "__version__"}

# Upward imports that are known and kept, each with its reason. The test fails when one goes
# away (so the list stays true) or a new one appears.
UPWARD_EXCEPTIONS: set[tuple[str, str]] = set()

MAX_LINES = 500
# Modules over MAX_LINES, each with its reason; the test fails when one shrinks below it.
LONG_MODULES: dict[str, str] = {}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _subpackage(module: str) -> str:
    """The top-level room of a module: ``runs.folder`` -> ``runs``; the root -> ``""``."""
    return module.split(".")[0] if module else ""


def _imports(path: pathlib.Path) -> list[tuple[str, tuple[str, ...], int]]:
    """`(imported module, names taken from it, line)` for every eyegazer_keras import."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "eyegazer_keras" or alias.name.startswith("eyegazer_keras."):
                    found.append((alias.name, (), node.lineno))
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import; use absolute"
            module = node.module or ""
            if module == "eyegazer_keras" or module.startswith("eyegazer_keras."):
                found.append((module, tuple(a.name for a in node.names), node.lineno))
    return found


def _edges() -> list[tuple[str, str, str]]:
    """`(importing module, imported module, where)` within the package, relative names."""
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _module_name(path)
        for module, names, line in _imports(path):
            target = module.removeprefix("eyegazer_keras").removeprefix(".")
            where = f"{path.relative_to(PACKAGE.parent)}:{line}"
            if not target:  # `from eyegazer_keras import x`: x is a constant or a subpackage
                for name in names:
                    if name not in ROOT_CONSTANTS:
                        edges.append((source, name, where))
                    elif source:
                        edges.append((source, "", where))
            else:
                for name in names or ("",):  # `from pkg import submodule` imports pkg.submodule
                    sub = f"{target}.{name}"
                    is_module = (PACKAGE / f"{sub.replace('.', '/')}.py").exists() or (
                        PACKAGE / sub.replace(".", "/") / "__init__.py"
                    ).exists()
                    edges.append((source, sub if is_module else target, where))
    return edges


def test_every_subpackage_has_a_floor():
    rooms = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    rooms |= {p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    assert rooms == set(FLOORS), "give each new subpackage a floor (and a line in the docstring)"


def test_the_root_gives_only_its_constants():
    """`from eyegazer_keras import X` below the root: X is a constant or a subpackage, never a
    lazily loaded public name (that would hide the real edge from this scan)."""
    for source, target, where in _edges():
        if source and target:
            assert _subpackage(target) in FLOORS, (
                f"{where}: {source} imports {target!r} from the root"
            )


def test_no_import_runs_upward():
    upward = set()
    for source, target, where in _edges():
        if not source or not target:
            continue  # the root (lazy public API) may name anything; constants are floor 0
        src, dst = _subpackage(source), _subpackage(target)
        if FLOORS[dst] > FLOORS[src]:
            upward.add((source, target))
            assert (source, target) in UPWARD_EXCEPTIONS, (
                f"{where}: {source} (floor {FLOORS[src]}) imports {target} "
                f"(floor {FLOORS[dst]}): an import runs upward"
            )
    assert upward == UPWARD_EXCEPTIONS, "an exception no longer exists: remove it from the list"


def test_no_circle_between_subpackages():
    graph: dict[str, set[str]] = {room: set() for room in FLOORS}
    for source, target, _ in _edges():
        if not source or not target:
            continue
        src, dst = _subpackage(source), _subpackage(target)
        if src != dst and (source, target) not in UPWARD_EXCEPTIONS:
            graph[src].add(dst)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph[start] - seen:
            if nxt == goal or reaches(nxt, goal, seen | {nxt}):
                return True
        return False

    circles = sorted(room for room in graph if reaches(room, room, set()))
    assert not circles, f"subpackages in a circle: {circles}; graph {graph}"


def test_the_scan_sees_function_level_and_type_checking_imports():
    edges = {(s, t) for s, t, _ in _edges()}
    # function-level: the CLI imports the library inside each verb's `run`
    assert ("cli.commands.exported", "serving.predict") in edges
    # under `if TYPE_CHECKING`: runs/evaluation.py annotates with runs.folder.RunData
    assert ("runs.evaluation", "runs.folder") in edges
    # a constant of the root
    assert ("evaluation.metrics", "") in edges


def test_no_module_is_over_500_lines():
    long = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            long[path.relative_to(PACKAGE).as_posix()] = lines
    assert set(long) == set(LONG_MODULES), (
        f"modules over {MAX_LINES} lines: {long}; split the second concept out (or, with a "
        "reason, list it in LONG_MODULES; remove one that shrank)"
    )
