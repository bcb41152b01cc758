"""What every verb shares: the `Verb` record, printing, the output root and data dir, choices.

Nothing here imports TensorFlow: `eyegazer --help` builds every parser from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
    """`metrics` restricted to `keys`, as one JSON line (missing keys are null)."""
    return json.dumps({k: metrics.get(k) for k in keys}, default=str)


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
