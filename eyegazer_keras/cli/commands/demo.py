"""`eyegazer demo`: prepare synthetic_fundus -> train (demo config) -> evaluate -> export."""

from __future__ import annotations

import argparse
import os

from eyegazer_keras.cli.commands.common import Verb, headline, registrar, say
from eyegazer_keras.cli.commands.prepare import prepare_and_report
from eyegazer_keras.cli.commands.training import run_arguments, start_run

VERBS: dict[str, Verb] = {}  # name -> Verb, in `eyegazer --help` order
verb = registrar(VERBS)


_RUNLOCAL_HELP = "the tiny demo:runlocal config (minutes on 2 cores; for checking an install)"


def _arguments(p: argparse.ArgumentParser) -> None:
    run_arguments(p, "<root>/demo")
    p.add_argument("--runlocal", action="store_true", help=_RUNLOCAL_HELP)


@verb("demo", arguments=_arguments)
def _demo(args) -> int:
    """prepare synthetic data, train, evaluate and export in one go.

    synthetic_fundus -> train (demo config; evaluates the validation split) -> export.
    """
    name = "demo:runlocal" if args.runlocal else "demo"
    config, workdir = start_run(args, "train", name, workdir_name="demo")
    preview = os.path.join(workdir, "preview.png")
    os.makedirs(workdir, exist_ok=True)
    from eyegazer_keras.runs import train

    say(f"1/4 preparing {config.dataset}/{config.dataset_config} (generated here, no download)")
    prepare_and_report(config.dataset, config.data_dir, config.dataset_config, None, preview)
    say(f"2/4 training ViT + LoRA ({name} config)")
    summary = train.run_training(config, workdir, progress=say)
    say(f"    {summary['trainable_parameters']}")
    say("3/4 evaluated on the validation split (during training, not again)")
    say("    " + headline(summary.get("metrics", {})))
    say(f"4/4 exported SavedModel: {summary.get('export')}")
    return 0
