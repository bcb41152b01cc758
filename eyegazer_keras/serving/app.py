"""A Gradio app for people: upload a fundus photo, see what the exported model makes of it.

The engine of `eyegazer app`. It runs the exported SavedModel only (`predict.load_exported`, the
same `serving_default` call as `eyegazer predict` and `eyegazer serve`), so the page shows
exactly what serving returns:

* the photo's bytes go to the export unchanged (JPEG/PNG of any size);
* "what the model saw": the photo after `fundus.serving_transform` with the export's own
  sizes (crop, pad, resize; Ben Graham when the export uses it), the function the export runs;
* classification exports (grade, binary): the probabilities (`gr.Label`), the expected grade and
  referable probability (grade) or DR probability (binary), and the decision at the export's
  threshold (`decision_threshold`); regression exports: the continuous grade, the grade from
  the export's cut-offs and its referable flag;
* the gradability verdict only when the export's signature returns `gradable`, the explanation
  overlay only when the export has an explanation signature (`explanation_signature`);
  otherwise those parts stay hidden;
* the not-a-medical-device notice, always.

A file that is not a decodable image gets a one-line error on the page (`gr.Error`); the app
keeps running. Limits: an upload over `max_upload_bytes` (default `DEFAULT_MAX_UPLOAD_BYTES`,
50 MB) is refused by Gradio's upload route before it is stored, and again by the grade
function for files given by path; a photo whose header claims more than `fundus.MAX_PIXELS`
(50 MP) is refused from the header, before anything is decoded. A photo is decoded twice: once
by the export (its outputs and, when the export has `serving_explain`, the map in the same
call) and once for "what the model saw".

Example:

```python
from eyegazer_keras.serving import app

app.launch("exports/eyegazer", host="127.0.0.1", port=7860)  # blocks; Ctrl-C stops it
```
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence

import gradio as gr
import numpy as np
import tensorflow as tf

from eyegazer_keras import NOT_A_MEDICAL_DEVICE, fundus
from eyegazer_keras.evaluation import explain
from eyegazer_keras.serving import predict, signatures

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_UPLOAD_BYTES = 50_000_000  # a 50 MP JPEG is ~20 MB; a 12 MP PNG ~20 MB
API_NAME = "grade"
DEFAULT_THRESHOLD = 0.5
# Where an export's metadata may carry an operating threshold (issue 17 puts one there).
THRESHOLD_KEYS = {
    "grade": ("referable_threshold", "threshold"),
    "binary": ("dr_threshold", "threshold"),
}
EXAMPLE_SEEDS_GRADES = ((3, 0), (11, 2), (29, 4))  # synthetic_fundus generator (seed, grade)


def decision_threshold(metadata: dict, task: str) -> tuple[float, str]:
    """The export's operating threshold for the referable (grade) or DR (binary) decision.

    Args:
        metadata: dict. The export's metadata (`ExportedModel.metadata`).
        task: str. `"grade"` or `"binary"`.

    Returns:
        `(threshold, where it came from)`: the first of `THRESHOLD_KEYS[task]` found in the
        metadata (a number, or a dict with a `"threshold"` entry), else `(0.5, "default")`.
    """
    for key in THRESHOLD_KEYS.get(task, ()):
        value = metadata.get(key)
        if isinstance(value, dict):
            value = value.get("threshold")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value), f"metadata `{key}`"
    return DEFAULT_THRESHOLD, "default: the export records no threshold"


def explanation_signature(exported: predict.ExportedModel) -> str | None:
    """The name of the export's explanation signature (e.g. `serving_explain`), or None.

    A signature counts when its name contains "explain" and it takes `image_bytes`.
    """
    for name, fn in exported.loaded.signatures.items():
        _, inputs = fn.structured_input_signature
        if "explain" in name and signatures.BYTES_INPUT in inputs:
            return name
    return None


def has_gradability(exported: predict.ExportedModel) -> bool:
    """Whether the export's `serving_default` returns a `gradable` output."""
    fn = exported.loaded.signatures[signatures.BYTES_SIGNATURE]
    return "gradable" in fn.structured_outputs


def model_input_image(exported: predict.ExportedModel, image_bytes: bytes) -> np.ndarray:
    """What the model saw, `uint8 [S, S, 3]`: the export's own `fundus.PreprocessingSpec`.

    The photo is decoded (EXIF orientation applied), cropped as the spec says (`fundus` or
    `none`), stored-size resized, Ben-Graham-normalised if the spec says so, and resized to the
    model input side; a mean/std normalisation (HF imports) is left out so the image displays.
    Exports written before the spec existed fall back to their `source_size`/`use_ben_graham`.

    Raises:
        tf.errors.InvalidArgumentError: when the bytes are not a decodable image.
    """
    meta = exported.metadata
    if meta.get("preprocessing_spec"):
        spec = fundus.PreprocessingSpec.from_dict(meta["preprocessing_spec"])
    else:
        spec = fundus.PreprocessingSpec(
            stored_size=int(meta["source_size"]),
            ben_graham=bool(meta.get("use_ben_graham", False)),
        )
    stored = fundus.preprocess_photo(fundus.decode_image(tf.constant(image_bytes)), spec)
    x = fundus.to_model_input(stored, int(meta["image_size"]))  # 0..255, no mean/std
    return np.clip(x.numpy(), 0, 255).astype(np.uint8)


def _enlarged(image: np.ndarray, min_side: int = 224) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor, for display only (pixels stay exact)."""
    factor = max(1, -(-min_side // max(image.shape[:2])))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def _signature_outputs(
    exported: predict.ExportedModel, name: str, image_bytes: bytes
) -> dict[str, np.ndarray]:
    """The outputs (numpy, one row) of the export's signature `name` on one photo."""
    out = exported.loaded.signatures[name](**{signatures.BYTES_INPUT: tf.constant([image_bytes])})
    return {key: value.numpy() for key, value in out.items()}


def _explanation_map(out: dict[str, np.ndarray], name: str) -> np.ndarray:
    """The explanation map (`float32 [S, S]` in [0, 1]) among an explanation signature's outputs.

    Its `explanation` output (`signatures.EXPLANATION_OUTPUT`), else the first float `[B, h, w]`
    (or `[B, h, w, 1]`) output.

    Raises:
        ValueError: when the signature returns no such map.
    """
    if signatures.EXPLANATION_OUTPUT in out:
        return out[signatures.EXPLANATION_OUTPUT][0]
    for key in sorted(out):
        value = out[key]
        if value.dtype.kind == "f" and value.ndim in (3, 4):
            return value[0]
    raise ValueError(f"signature {name!r} returned no [B, H, W] float map: {sorted(out)}")


def _label_value(row: dict, task: str, class_names: Sequence[str]):
    if row.get("gradable") is False:  # no grade for an ungradable photo (predict's nulls)
        return None
    if task == "regression":
        return row["class_name"]
    return {name: float(p) for name, p in zip(class_names, row["probabilities"], strict=True)}


def _summary(row: dict, meta: dict) -> str:
    task, names = meta["task"], meta["class_names"]
    if row.get("gradable") is False:
        return "- **No grade**: the export's quality gate found the photo ungradable."
    if task == "regression":
        cut = ", ".join(f"{c:.2f}" for c in meta.get("cutoffs") or [])
        return "\n".join(
            [
                f"- **Continuous grade**: {row['grade']:.2f}",
                f"- **Grade** (export's cut-offs {cut}): {row['predicted_grade']} "
                f"{row['class_name']}",
                f"- **Referable** (grade ≥ 2): {'yes' if row['referable'] else 'no'}",
            ]
        )
    threshold, source = decision_threshold(meta, task)
    if task == "grade":
        p, what = row["referable_probability"], "Referable probability (grade ≥ 2)"
        decision = "refer" if p >= threshold else "do not refer"
        lines = [f"- **Expected grade** (Σ p·k): {row['expected_grade']:.2f}"]
        if row.get("predicted_grade") is not None:  # exports before the grade decision lack it
            cut = meta.get("cutoffs")
            how = "cut-offs " + ", ".join(f"{c:.2f}" for c in cut) if cut else "rounded"
            grade = int(row["predicted_grade"])
            lines.insert(
                0, f"- **Predicted grade** (expected grade, {how}): {grade} {names[grade]}"
            )
            lines.insert(
                1, f"- **Most probable grade**: {row['predicted_class']} {row['class_name']}"
            )
        else:
            lines.insert(0, f"- **Predicted grade**: {row['predicted_class']} {row['class_name']}")
    else:
        p, what = row["dr_probability"], f"{names[1]} probability"
        decision = names[1] if p >= threshold else names[0]
        lines = [f"- **Predicted class**: {row['class_name']}"]
    return "\n".join(
        lines
        + [
            f"- **{what}**: {p:.3f}",
            f"- **Decision** at threshold {threshold:.2f} ({source}): **{decision}**",
        ]
    )


def _gradability(row: dict) -> str:
    score = row.get("quality_score")  # exports before the fitted gate have none
    quality = "" if score is None else f" Quality score {score:.2f} (1 = good)."
    if row["gradable"]:
        return f"**Gradable photo**: it passed the export's quality gate.{quality}"
    reason = row.get("ungradable_reason") or "no reason given"
    return f"**Ungradable photo** (`{reason}`): take a new photo. No grade is given.{quality}"


def _read_upload(payload, max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> tuple[bytes, str]:
    """Bytes and name of the uploaded file (Gradio `FileData` dict, or a path).

    Raises:
        gr.Error: no photo, a `FileData` without a `path` (a `url` is not fetched), a file
            over `max_bytes`, or what `predict.read_input` refuses; one line each.
    """
    if payload is None:
        raise gr.Error("No photo: upload a JPEG or PNG fundus photo, or pick an example.")
    if isinstance(payload, dict):
        path, name = payload.get("path"), payload.get("orig_name") or "photo"
        if not isinstance(path, str) or not path:
            given = sorted(k for k, v in payload.items() if v is not None)
            raise gr.Error(
                f"The photo has no uploaded file (FileData fields given: {given}); this app "
                "does not fetch URLs. Upload the file itself (gradio_client: "
                "handle_file('eye.jpg'))."
            )
    else:
        path = name = os.fspath(payload)
    name = os.path.basename(name)
    if os.path.isfile(path) and os.path.getsize(path) > max_bytes:
        raise gr.Error(
            f"{name}: {os.path.getsize(path) / 1e6:.1f} MB, over the upload limit of "
            f"{max_bytes / 1e6:.3g} MB; send a smaller photo."
        )
    data, error = predict.read_input(path, None)
    error = error or predict.pixel_limit_error(path, data)
    if error is not None:
        raise gr.Error(error.replace(path, name))
    return data, name


def build_app(
    model: str | os.PathLike | predict.ExportedModel,
    examples_dir=None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
) -> gr.Blocks:
    """The Gradio Blocks page on an export.

    Args:
        model: str, path or `predict.ExportedModel`. The export.
        examples_dir: str or path or None. Folder with example photos to offer (see
            `write_examples`). Defaults to None (no examples).
        max_upload_bytes: int. The largest photo file graded. Defaults to
            `DEFAULT_MAX_UPLOAD_BYTES` (50 MB).

    Returns:
        A `gr.Blocks` (not launched). Its API endpoint `/grade` takes the photo file and returns
        (model input image, label, summary markdown, gradability markdown, overlay image).

    Raises:
        FileNotFoundError, ValueError: as `predict.load_exported`.
    """
    exported = model if isinstance(model, predict.ExportedModel) else predict.load_exported(model)
    # analytics_enabled=False: no version check or telemetry (the package never probes the net).
    with gr.Blocks(title="eyegazer: DR grade of a fundus photo", analytics_enabled=False) as demo:
        gr.Markdown(_header(exported))
        with gr.Row():
            photo, button = _input_column(examples_dir)
            outputs = _output_column(exported)
        button.click(
            _grade_function(exported, max_upload_bytes),
            inputs=photo,
            outputs=outputs,
            api_name=API_NAME,
            preprocess=False,  # the upload's own bytes, as a server gets them (no PIL re-open)
        )
    return demo


def _grade_function(exported: predict.ExportedModel, max_upload_bytes: int):
    """`grade(upload) -> (model input, label, summary, gradability, overlay)` for the page."""
    meta = exported.metadata
    task, names = meta["task"], list(meta["class_names"])
    gradability = has_gradability(exported)
    explain_name = explanation_signature(exported)

    signs = exported.loaded.signatures
    wanted = set(signs[signatures.BYTES_SIGNATURE].structured_outputs)
    # An explanation signature that also returns every prediction output (eyegazer's own
    # `serving_explain` does) answers both in one call: one decode fewer.
    both = bool(explain_name) and wanted <= set(signs[explain_name].structured_outputs)

    def grade(payload):
        data, name = _read_upload(payload, max_upload_bytes)
        try:
            out = _signature_outputs(exported, explain_name, data) if explain_name else None
            heat = _explanation_map(out, explain_name) if explain_name else None
            if both:
                out = {k: v for k, v in out.items() if k in wanted}
            else:
                out = exported.predict_bytes([data])
            row = predict.output_rows(out, 1, task)[0]
            seen = model_input_image(exported, data)
        except tf.errors.InvalidArgumentError as e:
            raise gr.Error(predict.decode_error(name, e)) from None
        return (
            _enlarged(seen),
            _label_value(row, task, names),
            _summary(row, meta),
            _gradability(row) if gradability else "",
            _enlarged(explain.overlay(seen, np.squeeze(heat))) if heat is not None else None,
        )

    return grade


def _header(exported: predict.ExportedModel) -> str:
    meta = exported.metadata
    kind = {"grade": "5-grade classifier", "binary": "DR / no-DR classifier"}.get(
        meta["task"], "regression (continuous grade + cut-offs)"
    )
    return (
        "# eyegazer: diabetic-retinopathy grade of a fundus photo\n"
        f"> **Not a medical device.** {NOT_A_MEDICAL_DEVICE}\n\n"
        f"Export `{os.path.basename(os.path.normpath(exported.path))}`: {kind}, "
        f"{meta['image_size']} px model input, classes {', '.join(meta['class_names'])}."
    )


def _input_column(examples_dir) -> tuple[gr.Image, gr.Button]:
    """The photo upload, the Grade button and the example photos (when given)."""
    with gr.Column():
        photo = gr.Image(
            type="filepath",
            sources=["upload"],
            label="Fundus photo (JPEG or PNG)",
            elem_id="photo",
        )
        button = gr.Button("Grade", variant="primary", elem_id="grade-button")
        if examples_dir is not None:
            files = sorted(
                os.path.join(examples_dir, f)
                for f in os.listdir(examples_dir)
                if f.lower().endswith((".png", ".jpg", ".jpeg"))
            )
            gr.Examples(files, inputs=photo, label="Example photos")
    return photo, button


def _output_column(exported: predict.ExportedModel) -> list:
    """Model input, label, summary, gradability verdict and overlay (hidden when not served)."""
    meta = exported.metadata
    with gr.Column():
        seen = gr.Image(
            label=f"What the model saw ({meta['image_size']} px, cropped and resized)",
            interactive=False,
            format="png",
            height=240,
            elem_id="model-input",
        )
        label = gr.Label(
            label="Grade probabilities" if meta["task"] != "regression" else "Grade",
            num_top_classes=len(meta["class_names"]),
            elem_id="grade-label",
        )
        summary = gr.Markdown(elem_id="grade-summary")
        verdict = gr.Markdown(visible=has_gradability(exported), elem_id="gradability")
        heat = gr.Image(
            label="Explanation overlay",
            visible=bool(explanation_signature(exported)),
            interactive=False,
            format="png",
            height=240,
            elem_id="explanation",
        )
    return [seen, label, summary, verdict, heat]


def write_examples(folder: str | os.PathLike) -> list[str]:
    """Writes the example photos: a few synthetic ones and `skimage.data.retina()`.

    Args:
        folder: str or path. Created if missing.

    Returns:
        The written PNG/JPEG paths.
    """
    from eyegazer_datasets.synthetic_fundus import generator
    from PIL import Image
    from skimage import data as skimage_data

    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for seed, grade in EXAMPLE_SEEDS_GRADES:
        image, framing = generator.render(seed, grade)
        path = os.path.join(folder, f"synthetic_grade{grade}_{framing}.png")
        Image.fromarray(image).save(path)
        paths.append(path)
    path = os.path.join(folder, "skimage_retina.jpg")
    Image.fromarray(skimage_data.retina()).save(path, quality=92)
    return paths + [path]


def launch(
    model: str | os.PathLike | predict.ExportedModel,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    block: bool = True,
    examples: bool = True,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
) -> gr.Blocks:
    """Builds and launches the app (headless: no browser opened, no share link, no analytics).

    Args:
        model: str, path or `predict.ExportedModel`. The export.
        host: str. Interface to listen on. Defaults to "127.0.0.1".
        port: int. Port. Defaults to 7860.
        block: bool. Serve until interrupted (True) or return the running app (False;
            `demo.close()` stops it). Defaults to True.
        examples: bool. Offer the example photos (written to a temporary folder that is removed
            when the app closes). Defaults to True.
        max_upload_bytes: int. The largest upload Gradio accepts and the app grades. Defaults
            to `DEFAULT_MAX_UPLOAD_BYTES` (50 MB).

    Returns:
        The launched `gr.Blocks` (`demo.local_url` is its address).
    """
    examples_dir = tempfile.TemporaryDirectory(prefix="eyegazer_examples_") if examples else None
    if examples_dir is not None:
        write_examples(examples_dir.name)
    demo = build_app(model, examples_dir.name if examples_dir else None, max_upload_bytes)
    demo._eyegazer_examples = examples_dir  # removed with the app object
    logger.info("Launching the app on http://%s:%d", host, port)
    demo.launch(
        server_name=host,
        server_port=int(port),
        prevent_thread_lock=not block,
        inbrowser=False,
        share=False,
        show_error=True,
        max_file_size=int(max_upload_bytes),
        allowed_paths=[examples_dir.name] if examples_dir else None,
    )
    return demo
