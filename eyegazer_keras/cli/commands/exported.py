"""Verbs on an exported SavedModel: `predict` (JSON lines), `app` (Gradio), `serve` (KServe V1)."""

from __future__ import annotations

import argparse
import sys

from eyegazer_keras.cli.commands.common import Verb, registrar, say

# The defaults of `serve` and `app`, and `fundus.MAX_PIXELS`, as --help shows them: --help
# imports neither kserve, gradio nor TensorFlow (tests check these agree with the modules).
SERVE_MAX_BODY_MB = 32 * 1024 * 1024 / 1e6  # serve.DEFAULT_MAX_BODY_BYTES
SERVE_MAX_INSTANCES = 16  # serve.DEFAULT_MAX_INSTANCES
APP_MAX_UPLOAD_MB = 50.0  # app.DEFAULT_MAX_UPLOAD_BYTES
MAX_MEGAPIXELS = 50  # fundus.MAX_PIXELS


VERBS: dict[str, Verb] = {}  # name -> Verb, in `eyegazer --help` order
verb = registrar(VERBS)


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


@verb("predict", arguments=_predict_arguments)
def _predict(args) -> int:
    """one JSON line per image (use - for stdin)."""
    # stdout is the JSON-lines contract: no path lines here.
    from eyegazer_keras.serving import predict

    try:
        progress = args.progress if args.progress is not None else sys.stderr.isatty()
        results = predict.predict_paths(
            args.model, args.images, stdin=sys.stdin.buffer, progress=progress
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"eyegazer predict: error: {err}", file=sys.stderr)
        return 2
    if args.explain:
        from eyegazer_keras.evaluation import explain

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
        say(line)
    return 1 if any("error" in r for r in results) else 0


def _app_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "A Gradio page on an export: upload a fundus photo, see the grade. An upload over "
        "--max-upload-mb, or a photo whose header claims more than "
        f"{MAX_MEGAPIXELS} MP, is refused with a one-line error."
    )
    p.add_argument("--model", required=True, help="exported SavedModel directory")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=APP_MAX_UPLOAD_MB,
        help=f"largest photo file accepted, in MB (default: {APP_MAX_UPLOAD_MB:g})",
    )


@verb("app", arguments=_app_arguments)
def _app(args) -> int:
    """Gradio app on an export, for people (a browser page)."""
    from eyegazer_keras.serving import app  # imports gradio: only for this verb

    app.launch(
        args.model,
        host=args.host,
        port=args.port,
        max_upload_bytes=int(args.max_upload_mb * 1e6),
    )
    return 0


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    body_mb = SERVE_MAX_BODY_MB
    p.description = (
        "KServe V1 (TF Serving REST: POST /v1/models/NAME:predict) and V2 (Open Inference "
        "Protocol: POST /v2/models/NAME/infer, input image_bytes, datatype BYTES, base64 data) "
        "server on an export. Limits: a request body over --max-body-mb gets HTTP 413, more "
        "than --max-instances photos HTTP 400, a photo whose header claims more than "
        f"{MAX_MEGAPIXELS} MP HTTP 400 (refused before decoding)."
    )
    p.epilog = "See docs/serving.md."
    p.add_argument("--model", required=True, help="exported SavedModel directory")
    p.add_argument("--name", default="eyegazer", help="model name in /v1/models/NAME:predict")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 in a "
        "container, to be reachable from outside)",
    )
    p.add_argument("--port", type=int, default=8080, help="HTTP port (default: 8080)")
    p.add_argument(
        "--max-body-mb",
        type=float,
        default=body_mb,
        help=f"largest request body in MB; larger gets HTTP 413 (default: {body_mb:.1f})",
    )
    p.add_argument(
        "--max-instances",
        type=int,
        default=SERVE_MAX_INSTANCES,
        help=f"most photos per request; more gets HTTP 400 (default: {SERVE_MAX_INSTANCES})",
    )


@verb("serve", arguments=_serve_arguments)
def _serve(args) -> int:
    """KServe V1 (TF Serving REST) + V2 server on an export, for programs."""
    from eyegazer_keras.serving import serve  # imports kserve: only for this verb

    serve.serve(
        args.model,
        name=args.name,
        port=args.port,
        host=args.host,
        max_body_bytes=int(args.max_body_mb * 1e6),
        max_instances=args.max_instances,
    )
    return 0
