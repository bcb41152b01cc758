"""`eyegazer`: the command line. Thin: parse, call one library function, print.

Exit code 0 on success; on bad input a one-line reason on stderr and a non-zero code.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, RuntimeError, OSError, KeyError)


def _is_tf_error(err: BaseException) -> bool:
    import tensorflow as tf

    return isinstance(err, tf.errors.OpError)


def _expected(err: BaseException) -> bool:
    """Bad input, missing files, unreadable data: reported in one line, no traceback."""
    import zipfile

    if isinstance(err, EXPECTED_ERRORS + (TypeError, ArithmeticError, zipfile.BadZipFile)):
        return True
    return "tensorflow" in sys.modules and _is_tf_error(err)


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _print(line: str) -> None:
    print(line, flush=True)


def cmd_prepare(args) -> int:
    from eyegazer_keras import data

    builder = data.prepare(
        args.dataset,
        args.data_dir,
        args.config,
        args.manual_dir,
        max_bad_fraction=args.max_bad_fraction,
    )
    _print(f"prepared {args.dataset}/{builder.builder_config.name} in {builder.data_dir}")
    for split, info in builder.info.splits.items():
        labels = data.split_labels(args.dataset, split, args.data_dir, args.config)
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
    if args.preview:
        path = preview_grid(args.dataset, args.data_dir, args.config, args.preview)
        _print(f"  preview: {path}")
    return 0


def preview_grid(dataset: str, data_dir, config, path: str, per_grade: int = 6) -> str:
    """Writes a PNG grid: one row per grade, `per_grade` validation images each."""
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


def _load_config(args, kind: str):
    """The named config with `--set` and `--data-dir` applied; `kind` is "train" or "search"."""
    from eyegazer_keras import configs

    config = configs.apply_overrides(configs.get_config(args.config), args.set)
    expected = configs.TrainConfig if kind == "train" else configs.SearchConfig
    if not isinstance(config, expected):
        other = "search" if kind == "train" else "train"
        raise ValueError(f"config '{args.config}' is not a {kind} config; use `eyegazer {other}`")
    if args.data_dir:
        config.data_dir = args.data_dir
    return config, args.workdir or os.path.join("runs", config.name)


def cmd_train(args) -> int:
    config, workdir = _load_config(args, "train")
    from eyegazer_keras import train

    summary = train.run_training(config, workdir, progress=_print)
    if summary.get("chief"):
        m = summary.get("metrics", {})
        _print(
            "validation: "
            + json.dumps({k: m.get(k) for k in ("accuracy", "majority_baseline", "qwk", "auroc")})
        )
        _print(f"run written to {os.path.abspath(workdir)}")
    return 0


def cmd_evaluate(args) -> int:
    from eyegazer_keras import train

    m = train.evaluate_run(args.workdir, args.split, explain_maps=args.explain, tta=args.tta)
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
    _print(f"metrics and plots written to {os.path.abspath(args.workdir)}")
    return 0


def cmd_search(args) -> int:
    config, workdir = _load_config(args, "search")
    from eyegazer_keras import search

    summary = search.run_search(config, workdir, progress=_print)
    _print(json.dumps(summary.get("metrics", summary), default=str)[:2000])
    return 0


def cmd_export(args) -> int:
    from eyegazer_keras import train

    path = train.export_run(args.workdir, args.output, tta=args.tta)
    _print(f"SavedModel written to {path}")
    return 0


def cmd_import_peft(args) -> int:
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
        f"std {pre['image_std']} ({pre['source']}); export will use crop={record['export_crop']}"
    )
    _print(f"run written to {os.path.abspath(args.workdir)}")
    return 0


def cmd_export_peft(args) -> int:
    from eyegazer_keras.interop import peft

    record = peft.export_peft(args.workdir, args.output)
    _print(
        f"PEFT adapter written to {os.path.abspath(args.output)}: base "
        f"{record['base_model_name_or_path']}, r={record['rank']}, "
        f"lora_alpha={record['lora_alpha']:g}, targets {','.join(record['target_modules'])}"
    )
    return 0


def cmd_predict(args) -> int:
    from eyegazer_keras import predict

    try:
        results = predict.predict_paths(args.model, args.images, stdin=sys.stdin.buffer)
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


def cmd_app(args) -> int:
    from eyegazer_keras import app  # imports gradio: only for this verb

    app.launch(args.model, host=args.host, port=args.port)
    return 0


def cmd_serve(args) -> int:
    from eyegazer_keras import serve  # imports kserve: only for this verb

    serve.serve(args.model, name=args.name, port=args.port)
    return 0


def cmd_demo(args) -> int:
    """prepare synthetic_fundus -> train (demo config) -> evaluate -> export -> predict."""
    from eyegazer_keras import configs, train

    os.makedirs(args.workdir, exist_ok=True)
    config = configs.apply_overrides(configs.get_config("demo"), args.set)
    config.data_dir = args.data_dir
    _print(f"1/4 preparing {config.dataset}/{config.dataset_config} (generated here, no download)")
    cmd_prepare(
        argparse.Namespace(
            dataset=config.dataset,
            data_dir=args.data_dir,
            config=config.dataset_config,
            manual_dir=None,
            max_bad_fraction=None,
            preview=os.path.join(args.workdir, "preview.png") if args.workdir else None,
        )
    )
    _print("2/4 training ViT + LoRA (demo config)")
    summary = train.run_training(config, args.workdir, progress=_print)
    _print(f"    {summary['trainable_parameters']}")
    _print("3/4 evaluating on the validation split")
    m = train.evaluate_run(args.workdir, "validation")
    _print(
        "    "
        + json.dumps(
            {k: m.get(k) for k in ("accuracy", "majority_baseline", "qwk", "auroc")}, default=str
        )
    )
    _print(f"4/4 exported SavedModel: {summary.get('export')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eyegazer",
        description="Diabetic-retinopathy grading with Keras. Research software, NOT a medical device.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="build a dataset (synthetic_fundus or aptos2019)")
    p.add_argument("dataset", choices=["synthetic_fundus", "aptos2019"])
    p.add_argument(
        "--manual-dir",
        help="the extracted folder, the folder holding the Kaggle zip(s), or the zip itself",
    )
    p.add_argument("--data-dir", help="where prepared TFRecords go (default ~/tensorflow_datasets)")
    p.add_argument("--config", help="builder config (e.g. 512, 512_ben_graham, tiny)")
    p.add_argument("--preview", metavar="PNG", help="write a grid of validation images per grade")
    p.add_argument(
        "--max-bad-fraction",
        type=float,
        metavar="F",
        help="manual downloads: fail when more than this fraction of the listed photos is "
        "missing, unreadable or refused (default 0.01); they are skipped and counted below it",
    )
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="ViT + LoRA fit (checkpoints, metrics, adapter, SavedModel)")
    p.add_argument("--config", required=True, help="demo | blog-run1 | blog-run2 | blog-run3")
    p.add_argument("--workdir", help="run directory (default runs/<config>)")
    p.add_argument("--data-dir")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="metrics.json + plots for a trained run")
    p.add_argument("--workdir", required=True)
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
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "search", help="AutoKeras ImageRegressor search, cut-offs tuned on QWK, export"
    )
    p.add_argument("--config", required=True, help="search-demo | search-aptos")
    p.add_argument("--workdir")
    p.add_argument("--data-dir")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("export", help="SavedModel (+ model card) from a run")
    p.add_argument("--workdir", required=True)
    p.add_argument("--output", required=True)
    p.add_argument(
        "--tta",
        choices=("none", "flip", "flip4"),
        help="average flipped views inside the SavedModel (default: the run's tta)",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "import-peft", help="a Hugging Face PEFT LoRA adapter -> an eyegazer run folder"
    )
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
    p.set_defaults(func=cmd_import_peft)

    p = sub.add_parser("export-peft", help="a run's LoRA + head -> a Hugging Face PEFT adapter")
    p.add_argument("--workdir", required=True)
    p.add_argument("--output", required=True, help="adapter folder to write")
    p.set_defaults(func=cmd_export_peft)

    p = sub.add_parser("predict", help="one JSON line per image (use - for stdin)")
    p.add_argument("--model", required=True, help="exported SavedModel directory")
    p.add_argument(
        "--explain",
        metavar="DIR",
        help="write an explanation overlay PNG per photo into DIR (serving_explain signature)",
    )
    p.add_argument("images", nargs="+")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("app", help="Gradio app on an export, for people (a browser page)")
    p.add_argument("--model", required=True, help="exported SavedModel directory")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    p.add_argument("--port", type=int, default=7860)
    p.set_defaults(func=cmd_app)

    p = sub.add_parser(
        "serve", help="KServe V1 (TF Serving REST) server on an export, for programs"
    )
    p.add_argument("--model", required=True, help="exported SavedModel directory")
    p.add_argument("--name", default="eyegazer", help="model name in /v1/models/NAME:predict")
    p.add_argument("--port", type=int, default=8080, help="HTTP port")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="prepare synthetic data, train, evaluate and export in one go")
    p.add_argument("--workdir", default=os.path.join("runs", "demo"))
    p.add_argument("--data-dir")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    _quiet_tensorflow()
    from eyegazer_keras import train

    train.add_cpu_fusion_flags()  # before any verb runs TensorFlow (`demo` prepares first)
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
