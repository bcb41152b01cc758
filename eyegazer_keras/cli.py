"""`eyegazer`: the command line. Thin: parse, call one library function, print.

Exit code 0 on success; on bad input a one-line reason on stderr and a non-zero code.

Each verb is one `@verb(...)`-decorated function plus an `arguments` function that adds its
options; verbs import the library lazily, inside the function, so `eyegazer --help` and
`eyegazer predict` never load keras-hub (or TensorFlow, for `--help`). To add a verb:

```python
from eyegazer_keras.cli import main, verb


def _hello_arguments(p):
    p.add_argument("--name", default="world")


@verb("hello", "print a greeting", arguments=_hello_arguments)
def cmd_hello(args):
    print(f"hello {args.name}")
    return 0


assert main(["hello", "--name", "retina"]) == 0  # prints "hello retina"
```

Outputs default to one root, `--root` (default `runs/`, or `$EYEGAZER_ROOT`): run folders go to
`<root>/<config>` and prepared datasets to `<root>/tfds` unless `--data-dir`, `--set data_dir=`,
`$EYEGAZER_DATA_DIR` or `$TFDS_DATA_DIR` say otherwise. Every verb that writes prints the
resolved absolute paths first.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Callable

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, RuntimeError, OSError, KeyError)
DATA_DIR_ENV = ("EYEGAZER_DATA_DIR", "TFDS_DATA_DIR")


# --------------------------------------------------------------------------------------------
# The verb registry
# --------------------------------------------------------------------------------------------
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


VERBS: dict[str, Verb] = {}


def verb(name: str, help: str, *, arguments=None):
    """Decorator registering `run(args) -> int` as `eyegazer NAME` (in definition order).

    Raises:
        ValueError: if `name` is already registered.
    """

    def register(run):
        if name in VERBS:
            raise ValueError(f"eyegazer verb '{name}' is registered twice")
        VERBS[name] = Verb(name, help, run, arguments)
        return run

    return register


def _print(line: str) -> None:
    print(line, flush=True)


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
    from eyegazer_keras import configs

    return configs.names(kind)


def _config_help(kind: str) -> str:
    return (
        f"one of {', '.join(config_names(kind))}; append ':runlocal' for the tiny variant "
        "(e.g. demo:runlocal)"
    )


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


def _print_paths(**paths: str | None) -> None:
    for key, path in paths.items():
        if path:
            _print(f"{key.replace('_', ' ')}: {os.path.abspath(os.path.expanduser(path))}")


# --------------------------------------------------------------------------------------------
# Errors and start-up noise
# --------------------------------------------------------------------------------------------
def _is_tf_error(err: BaseException) -> bool:
    import tensorflow as tf

    return isinstance(err, tf.errors.OpError)


def _expected(err: BaseException) -> bool:
    """Bad input, missing files, unreadable data: reported in one line, no traceback."""
    import zipfile

    if isinstance(err, EXPECTED_ERRORS + (TypeError, ArithmeticError, zipfile.BadZipFile)):
        return True
    return "tensorflow" in sys.modules and _is_tf_error(err)


# What TensorFlow/XLA/absl write to the process's stderr (fd 2) at start-up, before and beside
# any Python logging: absl/glog-format INFO and WARNING lines, CUDA probing errors on machines
# without a GPU driver, and the CPU-instruction notice. TF_CPP_MIN_LOG_LEVEL does not reach the
# lines logged before absl::InitializeLog (tensorflow/tensorflow#100442).
NATIVE_NOISE = re.compile(
    r"(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] "
    r"|E\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] .*(cuInit|CUDA|cuda|cuFFT|cuDNN|cuBLAS)"
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IW] "
    r"|To enable the following instructions: .*rebuild TensorFlow)"
    r".*$"  # to the end of the line (it may follow a progress bar's carriage return)
)


def drop_native_noise(line: str) -> str:
    """`line` without the `NATIVE_NOISE` part; "" if nothing but the noise was in it."""
    kept = NATIVE_NOISE.sub("", line.rstrip("\n"))
    if kept == line.rstrip("\n"):
        return line
    return kept + "\n" if kept.strip() else ""


class _NativeStderrFilter:
    """Routes fd 2 through a pipe and drops `NATIVE_NOISE` lines; everything else passes.

    Installed only by the `eyegazer` program (not by `main(argv)` called in-process), because
    it replaces the process-wide file descriptor 2.
    """

    def __init__(self) -> None:
        self._saved: int | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
            read, write = os.pipe()
        except OSError:
            return  # no usable fd 2: leave stderr as it is
        os.dup2(write, 2)
        os.close(write)
        self._saved = saved
        self._thread = threading.Thread(target=self._pump, args=(read,), daemon=True)
        self._thread.start()
        atexit.register(self.stop)

    def _pump(self, read: int) -> None:
        with os.fdopen(read, "rb") as source:
            for line in source:  # keep draining even if writing fails, or writers would block
                text = line.decode("utf-8", "replace")
                kept = drop_native_noise(text)
                if not kept:
                    continue
                try:
                    os.write(self._saved, line if kept is text else kept.encode("utf-8"))
                except OSError:
                    pass

    def stop(self) -> None:
        if self._saved is None:
            return
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self._saved, 2)  # closes the pipe's write end: the pump reads to the end
        self._thread.join(timeout=5)
        self._saved = None


def _quiet_start_up(verbose: bool) -> None:
    """Silences TensorFlow/absl start-up logging unless `verbose`."""
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("absl", "tensorflow"):
        logging.getLogger(name).setLevel(logging.ERROR)


# --------------------------------------------------------------------------------------------
# prepare
# --------------------------------------------------------------------------------------------
# One line per dataset for `eyegazer prepare --help`; the layout text is the builder's own.
_DATASET_HELP = {
    "synthetic_fundus": "generated fundus photos with known lesions (no download)",
    "aptos2019": "APTOS 2019 Kaggle zip or extracted folder",
    "eyepacs2015": "EyePACS / Kaggle DR Detection 2015 (folders, zips or split zip parts)",
    "fundus_folder": "graded photos in class folders (No_DR/ ... Proliferate_DR/ or 0/ ... 4/)",
}


def _prepare_arguments(p: argparse.ArgumentParser) -> None:
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
    for name in dataset_names():
        d = datasets.add_parser(
            name,
            parents=[options],
            help=_DATASET_HELP.get(name, name),
            description=layouts.MANUAL_DOWNLOAD_INSTRUCTIONS.get(name, _DATASET_HELP.get(name)),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        d.set_defaults(label_map=None, groups=None)
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


@verb("prepare", "build a dataset (TFRecords under --data-dir)", arguments=_prepare_arguments)
def cmd_prepare(args) -> int:
    data_dir = resolve_data_dir(args.data_dir, args.root)
    _print_paths(data_dir=data_dir, manual_dir=args.manual_dir, preview=args.preview)
    return _prepare(
        args.dataset,
        data_dir,
        args.config,
        args.manual_dir,
        args.preview,
        max_bad_fraction=args.max_bad_fraction,
        keep_ungradable=args.keep_ungradable or None,
        label_map=args.label_map,
        groups=args.groups,
    )


def _prepare(dataset, data_dir, config, manual_dir, preview, **builder_options) -> int:
    from eyegazer_keras import data

    builder = data.prepare(dataset, data_dir, config, manual_dir, **builder_options)
    _print(f"prepared {dataset}/{builder.builder_config.name} in {builder.data_dir}")
    for split, info in builder.info.splits.items():
        labels = data.split_labels(dataset, split, data_dir, config)
        if data.has_labels(labels):
            counts = {
                name: int((labels == k).sum())
                for k, name in enumerate(builder.info.features["label"].names)
            }
            _print(f"  {split}: {info.num_examples} examples, per grade {json.dumps(counts)}")
        else:
            _print(f"  {split}: {info.num_examples} examples, unlabeled")
    report_path = os.path.join(builder.data_dir, "build_report.json")
    if os.path.exists(report_path):
        with open(report_path) as f:
            build = json.load(f)
        for key in ("counts", "timing"):
            if key in build:
                _print(f"  {key}: {json.dumps(build[key], default=str)[:600]}")
        _print(f"  build report: {report_path}")
    if preview:
        path = preview_grid(dataset, data_dir, config, preview)
        _print(f"  preview: {path}")
    return 0


def preview_grid(dataset: str, data_dir, config, path: str, per_grade: int = 6) -> str:
    """Writes a PNG grid: one row per grade, `per_grade` validation images each.

    Args:
        dataset: str. A prepared dataset name, e.g. "synthetic_fundus".
        data_dir: str or None. Where it is prepared.
        config: str or None. Its builder config.
        path: str. The PNG to write.
        per_grade: int. Images per row (grade). Defaults to 6.

    Returns:
        `path`.

    Raises:
        data.DataNotPreparedError: if the dataset is not prepared in `data_dir`.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from eyegazer_keras import GRADE_NAMES, data

    images = {g: [] for g in range(5)}
    for ex in data.load_split(dataset, "validation", data_dir, config).as_numpy_iterator():
        g = int(ex["label"])
        if 0 <= g < 5 and len(images[g]) < per_grade:
            images[g].append(ex["image"])
        if all(len(v) >= per_grade for v in images.values()):
            break
    fig = Figure(figsize=(per_grade * 1.6, 5 * 1.7))
    FigureCanvasAgg(fig)
    axes = fig.subplots(5, per_grade, squeeze=False)
    for g in range(5):
        for k in range(per_grade):
            ax = axes[g][k]
            ax.axis("off")
            if k < len(images[g]):
                ax.imshow(np.asarray(images[g][k]))
            if k == 0:
                ax.set_title(f"{g}: {GRADE_NAMES[g]}", fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


# --------------------------------------------------------------------------------------------
# train / search: a named config
# --------------------------------------------------------------------------------------------
def _config_arguments(kind: str):
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", required=True, metavar="NAME", help=_config_help(kind))
        p.add_argument("--workdir", help="run directory (default <root>/<config name>)")
        p.add_argument("--data-dir", help="prepared datasets (default <root>/tfds)")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config field (parsed by the field's type)",
        )

    return add


def load_config(name: str, overrides, data_dir: str | None, root: str, kind: str):
    """The named config with `overrides` applied and its data dir resolved.

    The data dir is `data_dir` (`--data-dir`) if given, else the config's own `data_dir`
    (e.g. from `--set data_dir=...`), else `resolve_data_dir`'s default.

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
    from eyegazer_keras import configs

    config = configs.apply_overrides(configs.get_config(name), overrides)
    expected = configs.TrainConfig if kind == "train" else configs.SearchConfig
    if not isinstance(config, expected):
        other = "search" if kind == "train" else "train"
        raise configs.ConfigError(f"config '{name}' is not a {kind} config; use `eyegazer {other}`")
    config.data_dir = resolve_data_dir(data_dir or config.data_dir, root)
    return config


def _workdir(args, config) -> str:
    return os.path.abspath(args.workdir or os.path.join(args.root, config.name))


@verb(
    "train",
    "ViT + LoRA fit (checkpoints, metrics, adapter, SavedModel)",
    arguments=_config_arguments("train"),
)
def cmd_train(args) -> int:
    config = load_config(args.config, args.set, args.data_dir, args.root, "train")
    workdir = _workdir(args, config)
    export_dir = os.path.join(workdir, "export") if config.export else None
    _print_paths(data_dir=config.data_dir, workdir=workdir, export_dir=export_dir)
    from eyegazer_keras import train

    summary = train.run_training(config, workdir, progress=_print)
    if summary.get("chief"):
        m = summary.get("metrics", {})
        _print(
            "validation: "
            + json.dumps({k: m.get(k) for k in ("accuracy", "majority_baseline", "qwk", "auroc")})
        )
        _print(f"run written to {workdir}")
    return 0


@verb(
    "search",
    "AutoKeras ImageRegressor search, cut-offs tuned on QWK, export",
    arguments=_config_arguments("search"),
)
def cmd_search(args) -> int:
    config = load_config(args.config, args.set, args.data_dir, args.root, "search")
    workdir = _workdir(args, config)
    export_dir = os.path.join(workdir, "export") if config.export else None
    _print_paths(data_dir=config.data_dir, workdir=workdir, export_dir=export_dir)
    from eyegazer_keras import search

    summary = search.run_search(config, workdir, progress=_print)
    _print(json.dumps(summary.get("metrics", summary), default=str)[:2000])
    return 0


# --------------------------------------------------------------------------------------------
# evaluate / export / predict: a finished run or export
# --------------------------------------------------------------------------------------------
def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="a run folder written by `eyegazer train`")
    p.add_argument("--split", default="validation")
    p.add_argument(
        "--explain",
        action="store_true",
        help="also score explanation maps against lesion masks: explanations_<split>.json",
    )
    p.add_argument(
        "--tta",
        choices=("none", "flip", "flip4"),
        help="also report QWK/AUROC/ECE with test-time augmentation (default: the run's tta)",
    )
    p.add_argument(
        "--dataset",
        choices=dataset_names(),
        help="external validation: score the run on another prepared dataset "
        "(writes metrics_<dataset>_<split>.json naming both datasets)",
    )
    p.add_argument("--config", help="builder config of --dataset (default: the run's)")
    p.add_argument("--data-dir", help="where --dataset is prepared (default: the run's data dir)")


@verb("evaluate", "metrics.json + plots for a trained run", arguments=_evaluate_arguments)
def cmd_evaluate(args) -> int:
    _print_paths(workdir=args.workdir)
    from eyegazer_keras import train

    m = train.evaluate_run(
        args.workdir,
        args.split,
        explain_maps=args.explain,
        tta=args.tta,
        dataset=args.dataset,
        dataset_config=args.config,
        data_dir=args.data_dir,
    )
    _print(
        json.dumps({k: m.get(k) for k in ("n", "accuracy", "majority_baseline", "qwk", "auroc")})
    )
    if args.explain:
        e = m["explanations"]
        _print(
            "explanations (grade >= 2, pointing game / pixel AUROC): "
            + ", ".join(
                f"{k} {v['pointing_game']:.3f}/{(v['pixel_auroc'] or float('nan')):.3f}"
                for k, v in e["maps"].items()
            )
        )
    if args.dataset:
        name = f"metrics_{args.dataset}_{args.split}.json"
        _print(
            f"external validation on {args.dataset}: {os.path.join(os.path.abspath(args.workdir), name)}"
        )
    _print(f"metrics and plots written to {os.path.abspath(args.workdir)}")
    return 0


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="a run folder written by `eyegazer train`")
    p.add_argument("--output", required=True, help="the SavedModel directory to write")
    p.add_argument(
        "--tta",
        choices=("none", "flip", "flip4"),
        help="average flipped views inside the SavedModel (default: the run's tta)",
    )


@verb("export", "SavedModel (+ model card) from a run", arguments=_export_arguments)
def cmd_export(args) -> int:
    _print_paths(workdir=args.workdir, export_dir=args.output)
    from eyegazer_keras import train

    path = train.export_run(args.workdir, args.output, tta=args.tta)
    _print(f"SavedModel written to {path}")
    return 0


# --------------------------------------------------------------------------------------------
# import-peft / export-peft: Hugging Face PEFT adapters in and out
# --------------------------------------------------------------------------------------------
def _import_peft_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--base",
        required=True,
        help="the ViT it was trained on: keras-hub preset name, preset dir, HF ViT dir or hf://org/name",
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


@verb(
    "import-peft",
    "a Hugging Face PEFT LoRA adapter -> an eyegazer run folder",
    arguments=_import_peft_arguments,
)
def cmd_import_peft(args) -> int:
    _print_paths(workdir=args.workdir, data_dir=args.data_dir)
    from eyegazer_keras.interop import peft

    record = peft.import_peft(
        args.base,
        args.adapter,
        args.workdir,
        dataset=args.dataset,
        dataset_config=args.dataset_config,
        data_dir=args.data_dir,
        crop=args.crop,
    )
    _print(
        f"imported {record['adapter']} ({record['naming']} transformers naming): LoRA "
        f"r={record['rank']} alpha={record['lora_alpha']:g} on {','.join(record['targets'])}, "
        f"{record['num_labels']} labels, head from the {record['head_from']}"
    )
    pre = record["trained_preprocessing"]
    _print(
        f"trained on: resize to {pre['resize']} (no fundus crop), mean {pre['image_mean']}, "
        f"std {pre['image_std']} ({pre['source']}); recorded for export: crop={record['export_crop']} (dataset.json)"
    )
    _print(f"run written to {os.path.abspath(args.workdir)}")
    return 0


def _export_peft_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True)
    p.add_argument("--output", required=True, help="adapter folder to write")


@verb(
    "export-peft",
    "a run's LoRA + head -> a Hugging Face PEFT adapter",
    arguments=_export_peft_arguments,
)
def cmd_export_peft(args) -> int:
    _print_paths(workdir=args.workdir, output=args.output)
    from eyegazer_keras.interop import peft

    record = peft.export_peft(args.workdir, args.output)
    _print(
        f"PEFT adapter written to {os.path.abspath(args.output)}: base "
        f"{record['base_model_name_or_path']}, r={record['rank']}, "
        f"lora_alpha={record['lora_alpha']:g}, targets {','.join(record['target_modules'])}"
    )
    return 0


def _predict_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "One JSON line per image, in order: the export's grade outputs plus gradable (bool) "
        "and ungradable_reason (too_small, too_dark, no_fundus, overexposed, too_blurry, or "
        "empty). The photo is decoded with its EXIF orientation. An ungradable photo gets no "
        'grade (grade outputs null, class_name "ungradable") and exit code 0; an unreadable '
        'file gets {"path", "error"} and makes the exit code 1.'
    )
    p.epilog = "See docs/serving.md for every output."
    p.add_argument("--model", required=True, help="exported SavedModel directory")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: only when stderr is a terminal)",
    )
    p.add_argument(
        "--explain",
        metavar="DIR",
        help="write an explanation overlay PNG per photo into DIR (serving_explain signature)",
    )
    p.add_argument("images", nargs="+", help="image files; - reads one image from stdin")


@verb("predict", "one JSON line per image (use - for stdin)", arguments=_predict_arguments)
def cmd_predict(args) -> int:
    # stdout is the JSON-lines contract: no path lines here.
    from eyegazer_keras import predict

    try:
        progress = args.progress if args.progress is not None else sys.stderr.isatty()
        results = predict.predict_paths(
            args.model, args.images, stdin=sys.stdin.buffer, progress=progress
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"eyegazer predict: error: {err}", file=sys.stderr)
        return 2
    if args.explain:
        from eyegazer_keras import explain

        model = predict.load_exported(args.model)
        ok = [i for i, r in enumerate(results) if "error" not in r and r["path"] != "-"]
        try:
            pngs = explain.write_overlays(
                model,
                [(results[i]["path"], open(results[i]["path"], "rb").read()) for i in ok],
                args.explain,
            )
        except ValueError as err:
            print(f"eyegazer predict: error: {err}", file=sys.stderr)
            return 2
        for i, png in zip(ok, pngs, strict=True):
            results[i]["explanation_png"] = png
    for line in predict.format_prediction_lines(results):
        _print(line)
    return 1 if any("error" in r for r in results) else 0


# --------------------------------------------------------------------------------------------
# app / serve: an export, for people and for programs
# --------------------------------------------------------------------------------------------
def _app_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="exported SavedModel directory")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    p.add_argument("--port", type=int, default=7860)


@verb("app", "Gradio app on an export, for people (a browser page)", arguments=_app_arguments)
def cmd_app(args) -> int:
    from eyegazer_keras import app  # imports gradio: only for this verb

    app.launch(args.model, host=args.host, port=args.port)
    return 0


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="exported SavedModel directory")
    p.add_argument("--name", default="eyegazer", help="model name in /v1/models/NAME:predict")
    p.add_argument("--port", type=int, default=8080, help="HTTP port")


@verb(
    "serve",
    "KServe V1 (TF Serving REST) server on an export, for programs",
    arguments=_serve_arguments,
)
def cmd_serve(args) -> int:
    from eyegazer_keras import serve  # imports kserve: only for this verb

    serve.serve(args.model, name=args.name, port=args.port)
    return 0


# --------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------
def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", help="run directory (default <root>/demo)")
    p.add_argument("--data-dir", help="prepared datasets (default <root>/tfds)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--runlocal",
        action="store_true",
        help="the tiny demo:runlocal config (minutes on 2 cores; for checking an install)",
    )


@verb(
    "demo",
    "prepare synthetic data, train, evaluate and export in one go",
    arguments=_demo_arguments,
)
def cmd_demo(args) -> int:
    """prepare synthetic_fundus -> train (demo config) -> evaluate -> export."""
    name = "demo:runlocal" if args.runlocal else "demo"
    config = load_config(name, args.set, args.data_dir, args.root, "train")
    workdir = os.path.abspath(args.workdir or os.path.join(args.root, "demo"))
    export_dir = os.path.join(workdir, "export") if config.export else None
    preview = os.path.join(workdir, "preview.png")
    _print_paths(data_dir=config.data_dir, workdir=workdir, export_dir=export_dir)
    os.makedirs(workdir, exist_ok=True)
    from eyegazer_keras import train

    _print(f"1/4 preparing {config.dataset}/{config.dataset_config} (generated here, no download)")
    _prepare(config.dataset, config.data_dir, config.dataset_config, None, preview)
    _print(f"2/4 training ViT + LoRA ({name} config)")
    summary = train.run_training(config, workdir, progress=_print)
    _print(f"    {summary['trainable_parameters']}")
    _print("3/4 evaluated on the validation split (during training, not again)")
    m = summary.get("metrics", {})
    _print(
        "    "
        + json.dumps(
            {k: m.get(k) for k in ("accuracy", "majority_baseline", "qwk", "auroc")}, default=str
        )
    )
    _print(f"4/4 exported SavedModel: {summary.get('export')}")
    return 0


# --------------------------------------------------------------------------------------------
# Parser and entry point
# --------------------------------------------------------------------------------------------
def _common(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default if default is argparse.SUPPRESS else False,
        help="log at INFO level and keep TensorFlow's start-up lines",
    )
    parser.add_argument(
        "--root",
        default=default if default is argparse.SUPPRESS else default_root(),
        help="where outputs go by default (default $EYEGAZER_ROOT or runs)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The `eyegazer` parser, one sub-parser per entry of `VERBS`."""
    parser = argparse.ArgumentParser(
        prog="eyegazer",
        description="Diabetic-retinopathy grading with Keras. Research software, NOT a medical device.",
    )
    _common(parser, None)
    common = argparse.ArgumentParser(add_help=False)
    _common(common, argparse.SUPPRESS)  # `eyegazer train -v` as well as `eyegazer -v train`
    sub = parser.add_subparsers(dest="command", required=True, metavar="VERB")
    for v in VERBS.values():
        p = sub.add_parser(v.name, help=v.help, description=v.help, parents=[common])
        if v.arguments:
            v.arguments(p)
        p.set_defaults(func=v.run, verb=v)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs `eyegazer` with `argv` (default `sys.argv[1:]`) and returns the exit code.

    Called with `argv=None` (the `eyegazer` program), it also filters TensorFlow's native
    start-up lines out of fd 2 unless `-v`; called with a list (tests, notebooks) it leaves the
    process's file descriptors alone.
    """
    as_program = argv is None
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    _quiet_start_up(args.verbose)
    if as_program and not args.verbose:
        _NativeStderrFilter().start()
    from eyegazer_keras import runtime  # no TensorFlow/keras import

    runtime.add_cpu_fusion_flags()  # before any verb runs TensorFlow (`demo` prepares first)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("eyegazer: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one line for anything expected; a traceback for real bugs
        if args.verbose or not _expected(err):
            raise
        text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        if "tensorflow" in sys.modules and _is_tf_error(err):
            text = getattr(err, "message", text)
        message = text.strip().splitlines()[0] if text.strip() else type(err).__name__
        print(f"eyegazer {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
