"""`eyegazer prepare DATASET`: build a TFDS dataset, print its splits, write a preview grid."""

from __future__ import annotations

import argparse
import json
import os

from eyegazer_keras.cli.commands import common
from eyegazer_keras.cli.commands.common import Verb, registrar, say

VERBS: dict[str, Verb] = {}  # name -> Verb, in `eyegazer --help` order
verb = registrar(VERBS)

# One line per dataset for `eyegazer prepare --help`; the layout text is the builder's own.
_DATASET_HELP = {
    "synthetic_fundus": "generated fundus photos with known lesions (no download)",
    "aptos2019": "APTOS 2019 Kaggle zip or extracted folder",
    "eyepacs2015": "EyePACS / Kaggle DR Detection 2015 (folders, zips or split zip parts)",
    "fundus_folder": "graded photos in class folders (No_DR/ ... Proliferate_DR/ or 0/ ... 4/)",
}


def _arguments(p: argparse.ArgumentParser) -> None:
    """`eyegazer prepare DATASET ...`: one sub-command per dataset; its `--help` is the layout."""
    from eyegazer_datasets.common import layouts  # plain strings, no TensorFlow

    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--manual-dir",
        help="the extracted folder, the folder holding the zip(s) or zip parts, or the zip itself",
    )
    options.add_argument("--data-dir", help="where prepared TFRecords go (default <root>/tfds)")
    options.add_argument("--config", help="builder config (e.g. 512, 512_ben_graham, 256, tiny)")
    options.add_argument(
        "--preview", metavar="PNG", help="write a grid of validation images per grade"
    )
    options.add_argument(
        "--max-bad-fraction",
        type=float,
        metavar="F",
        help="manual downloads: fail when more than this fraction of the listed photos is "
        "missing, unreadable or refused (default 0.01); below it they are skipped and counted "
        "in build_report.json",
    )
    options.add_argument(
        "--keep-ungradable",
        action="store_true",
        help="manual downloads: keep labelled photos the fundus quality gate calls ungradable "
        "(default: skip them and count them by reason in build_report.json)",
    )
    datasets = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for name in common.dataset_names():
        d = datasets.add_parser(
            name,
            parents=[options],
            help=_DATASET_HELP.get(name, name),
            description=layouts.MANUAL_DOWNLOAD_INSTRUCTIONS.get(name, _DATASET_HELP.get(name)),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        d.set_defaults(label_map=None, groups=None, quality_labels=None)
        if name == "eyepacs2015":
            d.add_argument(
                "--quality-labels",
                metavar="CSV",
                help="human image-quality labels, columns image,quality (EyeQ's "
                "Label_EyeQ_*.csv: 0 Good, 1 Usable, 2 Reject), stored as the `quality` feature; "
                "`eyegazer evaluate` then reports the quality gate's agreement with them",
            )
        if name == "fundus_folder":
            d.add_argument(
                "--label-map",
                metavar="NAME=GRADE,...",
                help="grades of folder names beyond the usual spellings, e.g. 'Blurry=0'",
            )
            d.add_argument(
                "--groups",
                metavar="CSV",
                help="CSV with columns image,patient: a patient's photos stay in one split",
            )


@verb("prepare", arguments=_arguments)
def _prepare(args) -> int:
    """build a dataset (TFRecords under --data-dir)."""
    data_dir = common.resolve_data_dir(args.data_dir, args.root)
    common.say_paths(data_dir=data_dir, manual_dir=args.manual_dir, preview=args.preview)
    return prepare_and_report(
        args.dataset,
        data_dir,
        args.config,
        args.manual_dir,
        args.preview,
        max_bad_fraction=args.max_bad_fraction,
        keep_ungradable=args.keep_ungradable or None,
        label_map=args.label_map,
        groups=args.groups,
        quality_labels=args.quality_labels,
    )


def prepare_and_report(
    dataset: str, data_dir: str, config, manual_dir, preview, **builder_options
) -> int:
    """Builds `dataset` and prints its splits (examples per grade) and build report.

    Args:
        dataset: str. A builder name (`common.dataset_names()`).
        data_dir: str. Where the TFRecords go.
        config: str or None. The builder config (e.g. "tiny", "512_ben_graham").
        manual_dir: str or None. The downloaded folder, zip or zip parts.
        preview: str or None. A PNG path for `preview_grid`, or None for no preview.
        **builder_options: passed to `data.prepare` (e.g. `max_bad_fraction`).

    Returns:
        0, the exit code.

    Raises:
        data.DataNotPreparedError: a manual download without `manual_dir`.
        ValueError: bad input (the builders' one-line `DatasetBuildError`s).
    """
    from eyegazer_keras.data import datasets as data

    builder = data.prepare(dataset, data_dir, config, manual_dir, **builder_options)
    say(f"prepared {dataset}/{builder.builder_config.name} in {builder.data_dir}")
    for split, info in builder.info.splits.items():
        labels = data.split_labels(dataset, split, data_dir, config)
        if data.has_labels(labels):
            counts = {
                name: int((labels == k).sum())
                for k, name in enumerate(builder.info.features["label"].names)
            }
            say(f"  {split}: {info.num_examples} examples, per grade {json.dumps(counts)}")
        else:
            say(f"  {split}: {info.num_examples} examples, unlabeled")
    report_path = os.path.join(builder.data_dir, "build_report.json")
    if os.path.exists(report_path):
        with open(report_path) as f:
            build = json.load(f)
        for key in ("counts", "timing"):
            if key in build:
                say(f"  {key}: {json.dumps(build[key], default=str)[:600]}")
        if "not_used" in build:  # the manual downloads' builders
            say(f"  {not_used_line(build)}")
        if build.get("quality"):
            say(f"  {quality_line(build['quality'])}")
        say(f"  build report: {report_path}")
    if preview:
        path = data.preview_grid(dataset, data_dir, config, preview)
        say(f"  preview: {path}")
    return 0


def quality_line(quality: dict) -> str:
    """The quality gate's summary line (`build_report.json`'s `quality`)."""
    if not quality.get("judged"):
        return "quality gate: no photo judged"
    reasons = ", ".join(f"{k}: {v}" for k, v in quality["ungradable_by_reason"].items())
    return (
        f"quality gate: {quality['gradable']} of {quality['judged']} photos gradable "
        f"(imageability {quality['imageability']:.1%})"
        + (f"; ungradable: {reasons}" if reasons else "")
        + f"; median quality_score {quality['quality_score_quantiles']['0.5']:.3f}"
    )


def not_used_line(build: dict) -> str:
    """The summary line of the files a build did not use (`build_report.json`'s `not_used`).

    Args:
        build: dict. A build report.

    Returns:
        str. `"not used: 3 file(s): system file ...: 2; a photo no CSV row names: 1 (listed in
        build_report.json 'not_used')"`, or `"not used: none"` (every file was read).
    """
    unused = build.get("not_used") or {}
    total = sum(len(files) for files in unused.values())
    if not total:
        return "not used: none (every file of the download was read)"
    reasons = "; ".join(f"{reason}: {len(files)}" for reason, files in unused.items())
    return f"not used: {total} file(s): {reasons} (listed in build_report.json 'not_used')"
