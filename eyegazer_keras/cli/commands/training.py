"""`eyegazer train` / `eyegazer search`: a named config (`--config`, `--set`) -> a run folder."""

from __future__ import annotations

import argparse
import json
import os

from eyegazer_keras.cli.commands import common
from eyegazer_keras.cli.commands.common import Verb, headline, registrar, say

VERBS: dict[str, Verb] = {}  # name -> Verb, in `eyegazer --help` order
verb = registrar(VERBS)


def run_arguments(p: argparse.ArgumentParser, workdir_default: str) -> None:
    """Adds `--workdir`, `--data-dir` and `--set KEY=VALUE` (repeatable) to a verb's parser.

    Args:
        p: argparse.ArgumentParser. The verb's parser.
        workdir_default: str. The default workdir, as `--help` shows it (e.g. "<root>/demo").
    """
    p.add_argument("--workdir", help=f"run directory (default {workdir_default})")
    p.add_argument("--data-dir", help="prepared datasets (default <root>/tfds)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (parsed by the field's type)",
    )


def config_arguments(kind: str):
    """`arguments(parser)` adding `--config` (names of `kind`) and the `run_arguments`.

    Args:
        kind: str. "train" or "search".

    Returns:
        A function of an `argparse.ArgumentParser`.
    """

    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", required=True, metavar="NAME", help=common.config_help(kind))
        run_arguments(p, "<root>/<config name>")

    return add


def load_config(name: str, overrides, data_dir: str | None, root: str, kind: str):
    """The named config with `overrides` applied and its data dir resolved.

    The data dir is `data_dir` (`--data-dir`) if given, else the config's own `data_dir`
    (e.g. from `--set data_dir=...`), else `common.resolve_data_dir`'s default.

    Args:
        name: str. A config name from `configs.CONFIGS`, optionally with ":runlocal".
        overrides: list of "key=value" strings (`--set`).
        data_dir: str or None. `--data-dir`.
        root: str. The output root.
        kind: str. "train" or "search".

    Returns:
        The config (`TrainConfig` or `SearchConfig`).

    Raises:
        configs.ConfigError: unknown name, bad override, or a config of the other kind.
    """
    from eyegazer_keras.configs import settings as configs

    config = configs.apply_overrides(configs.get_config(name), overrides)
    expected = configs.TrainConfig if kind == "train" else configs.SearchConfig
    if not isinstance(config, expected):
        other = "search" if kind == "train" else "train"
        raise configs.ConfigError(f"config '{name}' is not a {kind} config; use `eyegazer {other}`")
    config.data_dir = common.resolve_data_dir(data_dir or config.data_dir, root)
    return config


def start_run(args, kind: str, name: str, workdir_name: str | None = None):
    """Loads the config, resolves the workdir and prints every resolved path.

    Args:
        args: argparse.Namespace. With `set`, `data_dir`, `root` and `workdir`.
        kind: str. "train" or "search".
        name: str. The config name (`--config`).
        workdir_name: str or None. The workdir under `--root` when `--workdir` is absent.
            Defaults to the config's name.

    Returns:
        `(config, absolute workdir)`.

    Raises:
        configs.ConfigError: as `load_config`.
    """
    config = load_config(name, args.set, args.data_dir, args.root, kind)
    workdir = os.path.abspath(args.workdir or os.path.join(args.root, workdir_name or config.name))
    export_dir = os.path.join(workdir, "export") if config.export else None
    common.say_paths(data_dir=config.data_dir, workdir=workdir, export_dir=export_dir)
    return config, workdir


@verb("train", arguments=config_arguments("train"))
def _train(args) -> int:
    """ViT + LoRA fit (checkpoints, metrics, adapter, SavedModel)."""
    config, workdir = start_run(args, "train", args.config)
    from eyegazer_keras.runs import train

    summary = train.run_training(config, workdir, progress=say)
    if summary.get("chief"):
        say("validation: " + headline(summary.get("metrics", {})))
        say(f"run written to {workdir}")
    return 0


@verb("search", arguments=config_arguments("search"))
def _search(args) -> int:
    """AutoKeras ImageRegressor search, cut-offs tuned on QWK, export."""
    config, workdir = start_run(args, "search", args.config)
    from eyegazer_keras.runs import search

    summary = search.run_search(config, workdir, progress=say)
    say(json.dumps(summary.get("metrics", summary), default=str)[:2000])
    return 0
