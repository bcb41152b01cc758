"""Verbs on a run folder: `evaluate`, `export`, and Hugging Face PEFT adapters in and out."""

from __future__ import annotations

import argparse
import os

from eyegazer_keras.cli.commands import common
from eyegazer_keras.cli.commands.common import Verb, options, registrar, say, say_paths

VERBS: dict[str, Verb] = {}  # name -> Verb, in `eyegazer --help` order
verb = registrar(VERBS)


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="a run folder written by `eyegazer train`")
    p.add_argument("--split", default="validation")
    p.add_argument(
        "--explain",
        action="store_true",
        dest="explain_maps",
        help="also score explanation maps against lesion masks: explanations_<split>.json",
    )
    p.add_argument(
        "--tta",
        choices=("none", "flip", "flip4"),
        help="also report QWK/AUROC/ECE with test-time augmentation (default: the run's tta)",
    )
    p.add_argument(
        "--dataset",
        choices=common.dataset_names(),
        help="external validation: score the run on another prepared dataset "
        "(writes metrics_<dataset>_<split>.json naming both datasets)",
    )
    p.add_argument(
        "--config",
        dest="dataset_config",
        metavar="CONFIG",
        help="builder config of --dataset (default: the run's)",
    )
    p.add_argument("--data-dir", help="where --dataset is prepared (default: the run's data dir)")


@verb("evaluate", arguments=_evaluate_arguments)
def _evaluate(args) -> int:
    """metrics_<split>.json + plots for a trained run."""
    say_paths(workdir=args.workdir)
    from eyegazer_keras import runs

    keywords = options(args, "explain_maps", "tta", "dataset", "dataset_config", "data_dir")
    m = runs.evaluate_run(args.workdir, args.split, **keywords)
    say(common.headline(m, ("n", *common.HEADLINE)))
    if args.explain_maps:
        e = m["explanations"]
        say(
            "explanations (grade >= 2, pointing game / pixel AUROC): "
            + ", ".join(
                f"{k} {v['pointing_game']:.3f}/{(v['pixel_auroc'] or float('nan')):.3f}"
                for k, v in e["maps"].items()
            )
        )
    if args.dataset:
        name = f"metrics_{args.dataset}_{args.split}.json"
        say(
            f"external validation on {args.dataset}: {os.path.join(os.path.abspath(args.workdir), name)}"
        )
    say(f"metrics and plots written to {os.path.abspath(args.workdir)}")
    return 0


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="a run folder written by `eyegazer train`")
    p.add_argument("--output", required=True, help="the SavedModel directory to write")
    p.add_argument(
        "--tta",
        choices=("none", "flip", "flip4"),
        help="average flipped views inside the SavedModel (default: the run's tta)",
    )
    p.add_argument(
        "--precision",
        choices=("float32", "bfloat16", "auto"),
        default="float32",
        help="the backbone's compute precision in the SavedModel: bfloat16 runs its matmuls on "
        "the CPU's bf16 units (AVX512-BF16, AMX; slower on CPUs without them); auto = bfloat16 "
        "where this CPU has them. Outputs stay float32; recorded in the metadata (default: "
        "float32)",
    )


@verb("export", arguments=_export_arguments)
def _export(args) -> int:
    """SavedModel (+ model card) from a run."""
    say_paths(workdir=args.workdir, export_dir=args.output)
    from eyegazer_keras import runs

    path = runs.export_run(args.workdir, args.output, tta=args.tta, precision=args.precision)
    say(f"SavedModel written to {path}")
    return 0


def _import_peft_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--base",
        required=True,
        help="the ViT or DINOv2 it was trained on: keras-hub preset name, preset dir, HF ViT or "
        "DINOv2 dir or hf://org/name",
    )
    p.add_argument("--adapter", required=True, help="PEFT adapter dir or hf://org/name")
    p.add_argument("--workdir", required=True, help="run folder to write")
    p.add_argument("--dataset", default="aptos2019", help="dataset `evaluate` uses by default")
    p.add_argument("--dataset-config", help="its builder config")
    p.add_argument("--data-dir")
    p.add_argument(
        "--crop",
        choices=["none", "fundus"],
        default="none",
        help="preprocessing the export applies: none = as HF ViTImageProcessor (default, what the "
        "adapter was trained on), fundus = this project's border crop",
    )


@verb("import-peft", arguments=_import_peft_arguments)
def _import_peft(args) -> int:
    """a Hugging Face PEFT LoRA adapter -> an eyegazer run folder."""
    say_paths(workdir=args.workdir, data_dir=args.data_dir)
    from eyegazer_keras.interop import peft, peft_files

    keywords = options(args, "dataset", "dataset_config", "data_dir", "crop")
    record = peft.import_peft(args.base, args.adapter, args.workdir, **keywords)
    say(
        f"imported {record['adapter']} ({record['naming']} transformers naming): LoRA "
        f"r={record['rank']} alpha={record['lora_alpha']:g} on {','.join(record['targets'])}, "
        f"{record['num_labels']} labels, head from the {record['head_from']}"
    )
    pre = record["trained_preprocessing"]
    say(
        f"trained on: {peft_files.describe_preprocessing(pre)} ({pre['source']}); recorded for "
        f"export: crop={record['export_crop']} (dataset.json)"
    )
    say(f"run written to {os.path.abspath(args.workdir)}")
    return 0


def _export_peft_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True)
    p.add_argument("--output", required=True, help="adapter folder to write")


@verb("export-peft", arguments=_export_peft_arguments)
def _export_peft(args) -> int:
    """a run's LoRA + head -> a Hugging Face PEFT adapter."""
    say_paths(workdir=args.workdir, output=args.output)
    from eyegazer_keras.interop import peft

    record = peft.export_peft(args.workdir, args.output)
    say(
        f"PEFT adapter written to {os.path.abspath(args.output)}: base "
        f"{record['base_model_name_or_path']}, r={record['rank']}, "
        f"lora_alpha={record['lora_alpha']:g}, targets {','.join(record['target_modules'])}"
    )
    return 0
