"""What every verb shares: the `Verb` record, printing, the output root and data dir, choices.

Nothing here imports TensorFlow: `eyegazer --help` builds every parser from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable

DATA_DIR_ENV = ("EYEGAZER_DATA_DIR", "TFDS_DATA_DIR")
# The headline metrics a verb prints after a run (all of them are in metrics_<split>.json).
HEADLINE = ("accuracy", "majority_baseline", "qwk", "auroc")


@dataclasses.dataclass(frozen=True)
class Verb:
    """One `eyegazer` sub-command.

    Args:
        name: str. The verb, e.g. "train".
        help: str. One line for `eyegazer --help`.
        run: callable. `run(args) -> int`, the exit code.
        arguments: callable or None. `arguments(parser)` adds the verb's options.
    """

    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    arguments: Callable[[argparse.ArgumentParser], None] | None = None


def registrar(verbs: dict[str, Verb]):
    """The `@verb(name, help, arguments=...)` decorator that registers into `verbs`.

    Args:
        verbs: dict. `name -> Verb`, filled in definition order.

    Returns:
        `verb(name, help=None, *, arguments=None)`, the decorator.
    """

    def verb(name: str, help: str | None = None, *, arguments=None):
        """Decorator registering `run(args) -> int` as `eyegazer NAME` (in definition order).

        Args:
            name: str. The verb.
            help: str or None. One line for `eyegazer --help`. Defaults to the first line of
                `run`'s docstring, without its final period.
            arguments: callable or None. `arguments(parser)` adds the verb's options.
                Defaults to None.

        Returns:
            The decorator; it returns `run` unchanged.

        Raises:
            ValueError: if `name` is already registered, or has no help.
        """

        def register(run):
            text = help or (run.__doc__ or "").strip().split("\n")[0].removesuffix(".")
            if name in verbs or not text:
                raise ValueError(f"eyegazer verb '{name}' is registered twice or has no help")
            verbs[name] = Verb(name, text, run, arguments)
            return run

        return register

    return verb


def options(args: argparse.Namespace, *names: str) -> dict:
    """`{name: args.name}` for `names`: a verb's options as a library call's keyword arguments."""
    return {name: getattr(args, name) for name in names}


def say(line: str) -> None:
    """Prints one line of a verb's output to stdout, flushed (the CLI prints; the library logs)."""
    print(line, flush=True)


def say_paths(**paths: str | None) -> None:
    """Prints `key: /absolute/path` for each given path (`data_dir` -> "data dir: ...")."""
    for key, path in paths.items():
        if path:
            say(f"{key.replace('_', ' ')}: {os.path.abspath(os.path.expanduser(path))}")


def headline(metrics: dict, keys=HEADLINE) -> str:
    """The figures a verb prints after a run, rounded to 3 decimals, on one line.

    Args:
        metrics: dict. A split's metrics (`metrics_<split>.json`).
        keys: the overall figures to show, in order. Defaults to `HEADLINE`.

    Returns:
        str, e.g. ``accuracy 0.660 (majority 0.497) | QWK 0.775 | AUROC 0.855 | referable DR
        (grade >= 2): AUROC 0.945, sensitivity 0.900 / specificity 0.831 at the exported
        threshold 0.098``. The referable part is there when the metrics have it: at the
        calibration's operating threshold, measured on the half of validation that did not fit
        it (else at the metrics' own threshold). A missing figure prints as ``n/a``.
    """
    names = {"qwk": "QWK", "auroc": "AUROC", "n": "photos", "majority_baseline": "majority"}
    parts = []
    for key in keys:
        text = f"{names.get(key, key)} {_figure(metrics.get(key))}"
        if key == "majority_baseline" and parts:
            parts[-1] += f" ({text})"
        else:
            parts.append(text)
    referable = metrics.get("referable")
    if isinstance(referable, dict):
        point = (metrics.get("temperature_scaling") or {}).get("report_half", {})
        point = point.get("operating_point") or {}
        where = "the exported threshold"
        if not point:
            point, where = referable, "p >="
        parts.append(
            f"referable DR ({referable.get('definition', 'grade >= 2')}): AUROC "
            f"{_figure(referable.get('auroc'))}, sensitivity {_figure(point.get('sensitivity'))} "
            f"/ specificity {_figure(point.get('specificity'))} at {where} "
            f"{_figure(point.get('threshold'))}"
        )
    return " | ".join(parts)


def _figure(value) -> str:
    """A metric for a person: ints as they are, floats to 3 decimals, None as ``n/a``."""
    if isinstance(value, bool) or value is None:
        return "n/a" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    try:
        return f"{float(value):.3f}"
    except (TypeError, ValueError):
        return str(value)


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------
def default_root() -> str:
    """`$EYEGAZER_ROOT`, else `runs` (relative to the working directory)."""
    return os.environ.get("EYEGAZER_ROOT") or "runs"


def resolve_data_dir(given: str | None, root: str) -> str:
    """`given`, else `$EYEGAZER_DATA_DIR` / `$TFDS_DATA_DIR`, else `<root>/tfds`; absolute."""
    if not given:
        given = next((os.environ[k] for k in DATA_DIR_ENV if os.environ.get(k)), None)
    return os.path.abspath(os.path.expanduser(given or os.path.join(root, "tfds")))


# --------------------------------------------------------------------------------------------
# Choices from the registries (no TensorFlow import)
# --------------------------------------------------------------------------------------------
def dataset_names() -> list[str]:
    """The TFDS builders shipped in `eyegazer_datasets` (`<name>/<name>_dataset_builder.py`)."""
    import importlib.util
    import pkgutil

    spec = importlib.util.find_spec("eyegazer_datasets")
    if spec is None or not spec.submodule_search_locations:
        return []
    names = []
    for info in pkgutil.iter_modules(spec.submodule_search_locations):
        folder = os.path.join(info.module_finder.path, info.name)
        if info.ispkg and os.path.exists(os.path.join(folder, f"{info.name}_dataset_builder.py")):
            names.append(info.name)
    return sorted(names)


def config_names(kind: str) -> list[str]:
    """Names in `configs.CONFIGS` of one kind: "train" (TrainConfig) or "search" (SearchConfig)."""
    from eyegazer_keras.configs import settings as configs

    return configs.names(kind)


def config_help(kind: str) -> str:
    """The `--config` help of `eyegazer train` / `eyegazer search`: the names of that kind."""
    return (
        f"one of {', '.join(config_names(kind))}; append ':runlocal' for the tiny variant "
        "(e.g. demo:runlocal)"
    )
