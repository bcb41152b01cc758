"""An HTTP server for programs: KServe's `ModelServer` on an export, speaking TF Serving's REST API.

The engine of `eyegazer serve`. KServe's V1 protocol is TF Serving's REST protocol, so clients
written for either work with both, and the same model class deploys on Kubernetes with KServe:

* `GET /v1/models/NAME`: readiness (`{"name": NAME, "ready": true}`; 503 until loaded);
* `POST /v1/models/NAME:predict` with `{"instances": [{"b64": "..."}, ...]}` or the named form
  `{"instances": [{"image_bytes": {"b64": "..."}}, ...]}` (a JPEG or PNG file per instance,
  base64, exactly as TF Serving takes a `tf.string` input) -> `{"predictions": [{...}, ...]}`:
  the outputs of the export's `serving_default` signature, one dict per instance, in order
  (`eyegazer_keras.signatures.OUTPUTS`, plus whatever else the export's signature returns);
* `GET /` (liveness), `GET /v2/health/live`, `GET /v2/health/ready`, `GET /v1/models`,
  `GET /metrics` (Prometheus): KServe's own.

Bad input (not JSON, no `instances` list, a wrong field, not base64, not a decodable image) gets
HTTP 400 and `{"error": "<one line naming the instance and the fix>"}`; the server keeps serving.
As in TF Serving, one bad instance fails its whole request.

KServe's Python server runs each request's model call on its own (the request batcher of KServe
is a separate Kubernetes sidecar, not part of `kserve.ModelServer`); send several instances in one
request to batch them. The model call runs in a worker thread, so health checks answer while a
batch is being computed. See `benchmarks/serving.py` for what concurrency and batching give.

Example (the server blocks until Ctrl-C / SIGTERM):

```python
from eyegazer_keras import serve

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
import logging
import os
from collections.abc import Sequence

import kserve
import tensorflow as tf
from kserve.errors import InvalidInput

from eyegazer_keras import predict, signatures
from eyegazer_keras.fundus import formats

logger = logging.getLogger(__name__)

DEFAULT_NAME = "eyegazer"
DEFAULT_PORT = 8080
_EXAMPLE = '{"instances": [{"b64": "<base64 of a JPEG/PNG>"}]}'


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


def decode_instances(payload) -> list[bytes]:
    """The image files of a V1 (TF Serving REST) predict request body.

    Args:
        payload: the decoded JSON body, `{"instances": [{"b64": str} | {"image_bytes":
            {"b64": str}}, ...]}`; `"signature_name"` may be given and must be
            `"serving_default"`.

    Returns:
        List of bytes, one encoded image per instance.

    Raises:
        kserve.errors.InvalidInput: (HTTP 400) with a one-line message naming the instance and
            the fix, when the body is not of that form, a `b64` value is not base64, or an
            image is TIFF / DICOM / HEIC (the SavedModel's TF decode reads none of them; the
            message says to send JPEG or PNG).
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
    images = []
    for i, instance in enumerate(instances):
        text = _b64_field(instance, i)
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as e:
            raise InvalidInput(f'instances[{i}]: "b64" is not valid base64 ({e}).') from None
        if not data:
            raise InvalidInput(f'instances[{i}]: "b64" holds no bytes; send a JPEG or PNG file.')
        refusal = formats.serving_refusal(data, f"instances[{i}]")  # TIFF, DICOM, HEIC
        if refusal:
            raise InvalidInput(refusal)
        images.append(data)
    return images


class EyegazerModel(kserve.Model):
    """A `kserve.Model` serving an eyegazer SavedModel's `serving_default` (bytes in).

    Args:
        name: str. The model name in the URLs (`/v1/models/NAME:predict`).
        model_dir: str or path. The export directory (see `predict.load_exported`).
    """

    def __init__(self, name: str, model_dir: str | os.PathLike):
        super().__init__(name)
        self.model_dir = os.fspath(model_dir)
        self.exported: predict.ExportedModel | None = None

    def load(self) -> bool:
        """Loads the export; the model reports ready afterwards.

        Raises:
            FileNotFoundError, ValueError: as `predict.load_exported`.
        """
        self.exported = predict.load_exported(self.model_dir)
        self.ready = True
        return self.ready

    def predict_images(self, images: Sequence[bytes]) -> list[dict]:
        """One output dict per image (the rows of `eyegazer predict`, without `path`).

        Raises:
            kserve.errors.InvalidInput: when an image cannot be decoded; the message names the
                first such instance.
        """
        task = self.exported.metadata.get("task")
        try:
            outputs = self.exported.predict_bytes(images)
        except tf.errors.InvalidArgumentError as error:
            for i, data in enumerate(images):  # which one? (only on the error path)
                try:
                    self.exported.predict_bytes([data])
                except tf.errors.InvalidArgumentError as e:
                    raise InvalidInput(predict.decode_error(f"instances[{i}]", e)) from None
            raise InvalidInput(predict.tf_error_text(error)) from None
        return predict.output_rows(outputs, len(images), task)

    async def predict(self, payload, headers=None, response_headers=None) -> dict:
        """V1 predict: `{"instances": [...]}` -> `{"predictions": [...]}` (see the module doc)."""
        images = decode_instances(payload)
        loop = asyncio.get_running_loop()
        rows = await loop.run_in_executor(None, self.predict_images, images)
        return {"predictions": rows}


def serve(
    model_dir: str | os.PathLike,
    name: str = DEFAULT_NAME,
    port: int = DEFAULT_PORT,
) -> None:
    """Loads the export and serves it with `kserve.ModelServer` until SIGINT/SIGTERM.

    KServe's REST server listens on all interfaces (0.0.0.0), as in a container; gRPC is off.

    Args:
        model_dir: str or path. The export directory.
        name: str. The model name in the URLs. Defaults to "eyegazer".
        port: int. HTTP port. Defaults to 8080.

    Raises:
        FileNotFoundError, ValueError: when `model_dir` is not an eyegazer export.
    """
    model = EyegazerModel(name, model_dir)
    model.load()
    logger.info("Serving %s as /v1/models/%s on port %d", model_dir, name, port)
    kserve.ModelServer(http_port=int(port), enable_grpc=False, workers=1).start([model])
