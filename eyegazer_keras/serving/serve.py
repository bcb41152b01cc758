"""An HTTP server for programs: KServe's `ModelServer` on an export, speaking TF Serving's REST API.

The engine of `eyegazer serve`. KServe's V1 protocol is TF Serving's REST protocol, so clients
written for either work with both, and the same model class deploys on Kubernetes with KServe:

* `GET /v1/models/NAME`: readiness (`{"name": NAME, "ready": true}`; 503 until loaded);
* `POST /v1/models/NAME:predict` with `{"instances": [{"b64": "..."}, ...]}` or the named form
  `{"instances": [{"image_bytes": {"b64": "..."}}, ...]}` (a JPEG or PNG file per instance,
  base64, exactly as TF Serving takes a `tf.string` input) -> `{"predictions": [{...}, ...]}`:
  the outputs of the export's `serving_default` signature, one dict per instance, in order
  (`eyegazer_keras.serving.signatures.OUTPUTS`, plus whatever else the export's signature returns);
* `POST /v2/models/NAME/infer` (the V2 Open Inference Protocol, KServe's native one) with
  `{"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [N], "data": ["<base64>",
  ...]}]}` -> `{"outputs": [...]}`: one output per signature output, under the same names
  (`probabilities` `FP32 [N, classes]`, `gradable` `BOOL [N]`, ...); an ungradable photo's
  grade outputs hold the export's fills (NaN as `null`, -1, `"ungradable"`) where V1 has
  `null`. `GET /v2/models/NAME` lists the real inputs and outputs (`input_types`,
  `output_types`);
* `GET /` (liveness), `GET /v2/health/live`, `GET /v2/health/ready`, `GET /v1/models`,
  `GET /metrics` (Prometheus): KServe's own.

Bad input (not JSON, no `instances` list, a wrong field, not base64, not a decodable image, a
header claiming more than `fundus.MAX_PIXELS`, more than `max_instances` photos) gets HTTP 400
and `{"error": "<one line naming the instance and the fix>"}`; a body over `max_body_bytes` gets
HTTP 413 before it is parsed. The server keeps serving. As in TF Serving, one bad instance fails
its whole request. Image bombs (a small file whose header claims 400 MP) are refused from the
header, before anything is decoded, by the export itself (`fundus.decode_image`) and, for
exports written before that, by this server.

The server listens on 127.0.0.1 unless told otherwise (`host="0.0.0.0"` in a container).

KServe's Python server runs each request's model call on its own (the request batcher of KServe
is a separate Kubernetes sidecar, not part of `kserve.ModelServer`); send several instances in one
request to batch them. The model call runs in a worker thread, so health checks answer while a
batch is being computed. See `benchmarks/serving.py` for what concurrency and batching give.

Example (the server blocks until Ctrl-C / SIGTERM):

```python
from eyegazer_keras.serving import serve

serve.serve("exports/eyegazer", name="eyegazer", port=8080)
```

```bash
curl -s -X POST http://127.0.0.1:8080/v1/models/eyegazer:predict \\
  -H 'Content-Type: application/json' \\
  -d "{\\"instances\\": [{\\"b64\\": \\"$(base64 -w0 eye.jpg)\\"}]}"
```
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import uuid
from collections.abc import Sequence

import kserve
import kserve.model_server
import numpy as np
import tensorflow as tf
from kserve import InferOutput, InferRequest, InferResponse
from kserve.errors import InvalidInput

from eyegazer_keras.fundus import formats
from eyegazer_keras.serving import predict, signatures

logger = logging.getLogger(__name__)

DEFAULT_NAME = "eyegazer"
DEFAULT_PORT = 8080
DEFAULT_HOST = "127.0.0.1"
# A request's limits: 32 MB of body (base64 JSON; ~24 MB of photos) and 16 photos. Decoding a
# photo at the pixel limit (`fundus.MAX_PIXELS`, 50 MP) takes ~150 MB; 16 of them are 2.4 GB.
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_INSTANCES = 16
_EXAMPLE = '{"instances": [{"b64": "<base64 of a JPEG/PNG>"}]}'
_V2_EXAMPLE = (
    '{"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], '
    '"data": ["<base64 of a JPEG/PNG>"]}]}'
)
# numpy dtype kind/size -> V2 datatype
_V2_TYPES = {"f4": "FP32", "f8": "FP64", "i4": "INT32", "i8": "INT64", "b1": "BOOL", "O": "BYTES"}


def _b64_field(instance, index: int) -> str:
    """The base64 text of one instance: `{"b64": s}` or `{"image_bytes": {"b64": s}}`."""
    where = f"instances[{index}]"
    if isinstance(instance, dict) and set(instance) == {signatures.BYTES_INPUT}:
        instance, where = instance[signatures.BYTES_INPUT], f"{where}.{signatures.BYTES_INPUT}"
    if not isinstance(instance, dict) or set(instance) != {"b64"}:
        got = sorted(instance) if isinstance(instance, dict) else type(instance).__name__
        raise InvalidInput(
            f'{where}: expected {{"b64": "..."}} or {{"{signatures.BYTES_INPUT}": {{"b64": "..."}}}} '
            f"(a base64 JPEG/PNG file), got {got}."
        )
    if not isinstance(instance["b64"], str):
        raise InvalidInput(f'{where}: "b64" must be a string of base64 text.')
    return instance["b64"]


def _base64(text, where: str) -> bytes:
    if not isinstance(text, str):
        raise InvalidInput(f"{where}: must be a string of base64 text.")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidInput(f"{where}: is not valid base64 ({e}).") from None
    if not data:
        raise InvalidInput(f"{where}: holds no bytes; send a JPEG or PNG file.")
    return data


def _check_count(n: int, max_instances: int, what: str) -> None:
    if n > max_instances:
        raise InvalidInput(
            f"{n} {what} in one request, over the limit of {max_instances} "
            "(--max-instances); split them over several requests."
        )


def decode_instances(payload, max_instances: int = DEFAULT_MAX_INSTANCES) -> list[bytes]:
    """The image files of a V1 (TF Serving REST) predict request body.

    Args:
        payload: the decoded JSON body, `{"instances": [{"b64": str} | {"image_bytes":
            {"b64": str}}, ...]}`; `"signature_name"` may be given and must be
            `"serving_default"`.

        max_instances: int. The most instances taken. Defaults to `DEFAULT_MAX_INSTANCES`.

    Returns:
        List of bytes, one encoded image per instance.

    Raises:
        kserve.errors.InvalidInput: (HTTP 400) with a one-line message naming the instance and
            the fix, when the body is not of that form, holds more than `max_instances`
            instances, a `b64` value is not base64, or an image is TIFF / DICOM / HEIC (the
            SavedModel's TF decode reads none of them; the message says to send JPEG or PNG).
    """
    if not isinstance(payload, dict):
        raise InvalidInput(
            f"the request body must be a JSON object like {_EXAMPLE} "
            "(send it with Content-Type: application/json)."
        )
    signature = payload.get("signature_name", signatures.BYTES_SIGNATURE)
    if signature != signatures.BYTES_SIGNATURE:
        raise InvalidInput(
            f"signature_name {signature!r} is not served; this server serves "
            f"{signatures.BYTES_SIGNATURE!r} (image file bytes in)."
        )
    unknown = sorted(set(payload) - {"instances", "signature_name"})
    if unknown or not isinstance(payload.get("instances"), list):
        raise InvalidInput(
            f'expected a JSON object with an "instances" list like {_EXAMPLE}'
            + (f"; unknown field(s) {unknown}" if unknown else "")
            + "."
        )
    instances = payload["instances"]
    if not instances:
        raise InvalidInput(f'"instances" is empty; send at least one image like {_EXAMPLE}.')
    _check_count(len(instances), max_instances, "instances")
    return [
        _decodable(_base64(_b64_field(x, i), f'instances[{i}]: "b64"'), f"instances[{i}]")
        for i, x in enumerate(instances)
    ]


def _decodable(data: bytes, where: str) -> bytes:
    """`data`, or a 400 naming `where` for TIFF / DICOM / HEIC (`formats.serving_refusal`)."""
    refusal = formats.serving_refusal(data, where)
    if refusal:
        raise InvalidInput(refusal)
    return data


def decode_v2_inputs(request: InferRequest, max_instances: int = DEFAULT_MAX_INSTANCES):
    """The image files of a V2 (Open Inference Protocol) infer request.

    Args:
        request: `kserve.InferRequest`. One input named `image_bytes`, datatype `BYTES`, whose
            `data` are the photos' base64 strings (a flat list, or one per row of shape
            `[N, 1]`).
        max_instances: int. The most photos taken. Defaults to `DEFAULT_MAX_INSTANCES`.

    Returns:
        List of bytes, one encoded image per element of `data`.

    Raises:
        kserve.errors.InvalidInput: (HTTP 400) with a one-line message naming the element and
            the fix.
    """
    inputs = list(request.inputs or [])
    names = [i.name for i in inputs]
    if names != [signatures.BYTES_INPUT]:
        raise InvalidInput(
            f"V2 request: expected one input named {signatures.BYTES_INPUT!r}, got {names}; "
            f"send {_V2_EXAMPLE}."
        )
    item = inputs[0]
    if item.datatype != "BYTES":
        raise InvalidInput(
            f"V2 input {item.name!r}: datatype {item.datatype!r}, expected 'BYTES' (base64 "
            "strings of JPEG/PNG files)."
        )
    data = item.data
    if isinstance(data, list) and all(isinstance(d, list) and len(d) == 1 for d in data):
        data = [d[0] for d in data]  # shape [N, 1]
    if not isinstance(data, list) or not data:
        raise InvalidInput(
            f"V2 input {item.name!r}: 'data' must be a non-empty list of base64 strings."
        )
    _check_count(len(data), max_instances, "photos")
    return [
        _decodable(_base64(d, f"{item.name}[{i}]"), f"{item.name}[{i}]") for i, d in enumerate(data)
    ]


class EyegazerModel(kserve.Model):
    """A `kserve.Model` serving an eyegazer SavedModel's `serving_default` (bytes in).

    Args:
        name: str. The model name in the URLs (`/v1/models/NAME:predict`).
        model_dir: str or path. The export directory (see `predict.load_exported`).
        max_instances: int. The most photos in one request. Defaults to
            `DEFAULT_MAX_INSTANCES`.
    """

    def __init__(
        self,
        name: str,
        model_dir: str | os.PathLike,
        max_instances: int = DEFAULT_MAX_INSTANCES,
    ):
        super().__init__(name)
        self.model_dir = os.fspath(model_dir)
        self.max_instances = int(max_instances)
        self.exported: predict.ExportedModel | None = None

    def load(self) -> bool:
        """Loads the export; the model reports ready afterwards.

        Raises:
            FileNotFoundError, ValueError: as `predict.load_exported`.
        """
        self.exported = predict.load_exported(self.model_dir)
        self.ready = True
        return self.ready

    def predict_outputs(self, images: Sequence[bytes], label: str = "instances"):
        """The `serving_default` outputs (numpy, one row per image) of encoded images.

        Each header is checked against `fundus.MAX_PIXELS` first (no decoding).

        Args:
            images: sequence of bytes. The photos.
            label: str. How the message names the photos: `label[i]`.

        Raises:
            kserve.errors.InvalidInput: when an image is too large or cannot be decoded; the
                message names the first such one.
        """
        for i, data in enumerate(images):
            refused = predict.pixel_limit_error(f"{label}[{i}]", data)
            if refused:
                raise InvalidInput(refused)
        try:
            return self.exported.predict_bytes(images)
        except tf.errors.InvalidArgumentError as error:
            for i, data in enumerate(images):  # which one? (only on the error path)
                try:
                    self.exported.predict_bytes([data])
                except tf.errors.InvalidArgumentError as e:
                    raise InvalidInput(predict.decode_error(f"{label}[{i}]", e)) from None
            raise InvalidInput(predict.tf_error_text(error)) from None

    def predict_images(self, images: Sequence[bytes]) -> list[dict]:
        """One output dict per image (the rows of `eyegazer predict`, without `path`).

        Raises:
            kserve.errors.InvalidInput: as `predict_outputs`.
        """
        outputs = self.predict_outputs(images)
        return predict.output_rows(outputs, len(images), self.exported.metadata.get("task"))

    def _signature_outputs(self) -> dict:
        fn = self.exported.loaded.signatures[signatures.BYTES_SIGNATURE]
        return fn.structured_outputs

    def get_input_types(self) -> list[dict]:
        """V2 metadata: `image_bytes`, `BYTES [-1]` (base64 JPEG/PNG files)."""
        return [{"name": signatures.BYTES_INPUT, "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        """V2 metadata: every `serving_default` output, its V2 datatype and shape (-1 = any)."""
        specs = self._signature_outputs()
        out = []
        for name in self._output_order(specs):
            spec = specs[name]
            dtype = "O" if spec.dtype == tf.string else spec.dtype.as_numpy_dtype().dtype.str[1:]
            shape = [-1 if d is None else int(d) for d in spec.shape.as_list()]
            out.append({"name": name, "datatype": _V2_TYPES.get(dtype, dtype), "shape": shape})
        return out

    def _output_order(self, names) -> list[str]:
        """`signatures.OUTPUTS[task]` first, in that order, then the others sorted (as V1)."""
        task = self.exported.metadata.get("task")
        order = [k for k in signatures.OUTPUTS.get(task, {}) if k in names]
        return order + sorted(set(names) - set(order))

    def _v2_response(self, request: InferRequest, outputs: dict) -> InferResponse:
        infer_outputs = []
        for name in self._output_order(outputs):
            value = np.asarray(outputs[name])
            kind = "O" if value.dtype.kind in "OSU" else value.dtype.str[1:]
            if kind == "O":
                value = value.astype(object)
            infer_outputs.append(
                InferOutput(name, list(value.shape), _V2_TYPES.get(kind, "BYTES"), value)
            )
        return InferResponse(
            response_id=request.id or str(uuid.uuid4()),
            model_name=self.name,
            infer_outputs=infer_outputs,
            requested_outputs=request.request_outputs,
        )

    async def predict(self, payload, headers=None, response_headers=None):
        """V1: `{"instances": [...]}` -> `{"predictions": [...]}`; V2: an `InferRequest` with
        `image_bytes` -> an `InferResponse` (see the module doc)."""
        loop = asyncio.get_running_loop()
        if isinstance(payload, InferRequest):
            images = decode_v2_inputs(payload, self.max_instances)
            label = signatures.BYTES_INPUT
            outputs = await loop.run_in_executor(None, self.predict_outputs, images, label)
            return self._v2_response(payload, outputs)
        images = decode_instances(payload, self.max_instances)
        rows = await loop.run_in_executor(None, self.predict_images, images)
        return {"predictions": rows}


class BodyLimit:
    """ASGI middleware: HTTP 413 and a one-line JSON error for a body over `max_bytes`.

    A declared `Content-Length` over the limit is refused before the body is read (what is
    sent is drained, up to 4x the limit or 5 s, so the client reads the answer); a chunked body is
    read up to the limit and refused there. Memory held: at most `max_bytes` per request.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._drain(receive)
            return await self._refuse(send, f"{int(declared) / 1e6:.1f} MB")
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            total += len(message.get("body", b""))
            if total > self.max_bytes:
                await self._drain(receive)
                return await self._refuse(send, "more")
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _drain(self, receive, timeout_s: float = 5.0) -> None:
        async def drain():
            seen = 0
            while seen <= 4 * self.max_bytes:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body"):
                    return
                seen += len(message.get("body", b""))

        try:
            await asyncio.wait_for(drain(), timeout_s)
        except TimeoutError:
            pass

    async def _refuse(self, send, size: str) -> None:
        error = (
            f"request body of {size} is over the limit of {self.max_bytes / 1e6:.3g} MB "
            "(--max-body-mb); send fewer or smaller photos per request."
        )
        body = json.dumps({"error": error}).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _ModelServer(kserve.ModelServer):
    """`kserve.ModelServer` listening on `host` (KServe 0.21 hard-codes 0.0.0.0)."""

    def __init__(self, host: str, **kwargs):
        super().__init__(**kwargs)
        self.host = host

    def setup_event_loop(self):
        # Runs after `start` built the REST server and before it serves: set the interface.
        self._rest_server.config.host = self.host
        super().setup_event_loop()


def serve(
    model_dir: str | os.PathLike,
    name: str = DEFAULT_NAME,
    port: int = DEFAULT_PORT,
    host: str = DEFAULT_HOST,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_instances: int = DEFAULT_MAX_INSTANCES,
) -> None:
    """Loads the export and serves it with `kserve.ModelServer` until SIGINT/SIGTERM.

    KServe's REST server (V1 and V2) on `host`; gRPC is off.

    Args:
        model_dir: str or path. The export directory.
        name: str. The model name in the URLs. Defaults to "eyegazer".
        port: int. HTTP port. Defaults to 8080.
        host: str. Interface to listen on: "127.0.0.1" (this machine only, the default) or
            "0.0.0.0" (every interface, e.g. in a container).
        max_body_bytes: int. Largest request body; larger ones get HTTP 413. Defaults to
            `DEFAULT_MAX_BODY_BYTES` (32 MiB).
        max_instances: int. Most photos per request; more get HTTP 400. Defaults to
            `DEFAULT_MAX_INSTANCES` (16).

    Raises:
        FileNotFoundError, ValueError: when `model_dir` is not an eyegazer export.
    """
    model = EyegazerModel(name, model_dir, max_instances=max_instances)
    model.load()
    kserve.model_server.app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    logger.info(
        "Serving %s as /v1/models/%s and /v2/models/%s on http://%s:%d",
        model_dir,
        name,
        name,
        host,
        port,
    )
    server = _ModelServer(host, http_port=int(port), enable_grpc=False, workers=1)
    server.start([model])
