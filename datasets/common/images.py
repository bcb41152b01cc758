"""The decode phase every eyegazer builder runs: read, check, decode, gate, crop, hash, store.

Each listed photo is read from the source (TIFF and DICOM converted to PNG bytes by
`eyegazer_keras.fundus.formats`, as `predict` and the app do), refused undecoded when its header is too large,
decoded (TensorFlow first, the decoder serving uses; PIL for what TF refuses; a JPEG much
larger than needed at 1/2, 1/4 or 1/8 scale in the DCT domain, `fundus.jpeg_ratio`), passed
through the fundus quality gate, cropped and resized by `eyegazer_keras.fundus.preprocess_fundus`
(the code serving runs, here as one traced graph), perceptually hashed, and written as a
lossless PNG to a scratch folder.
Photos are processed in parallel threads with a TFDS progress bar (`tfds.disable_progress_bar()`
turns it off). Bad files are not errors here: they come back as results with a reason, and the
builder counts them.

Example:

```python
from eyegazer_datasets.common import dummy_data, images

png = dummy_data.encode(dummy_data.fundus_like(seed=1))  # a synthetic 100x75 fundus photo
image, decoder = images.decode_to_rgb(png, max_pixels=50_000_000)  # uint8 [75, 100, 3], "tf"
```
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import io
import logging
import multiprocessing
import re
import time
import zipfile
from collections.abc import Callable, Sequence

import numpy as np
import PIL.Image
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from eyegazer_keras import fundus
from eyegazer_keras.fundus import formats

from . import duplicates, kaggle_source

logger = logging.getLogger(__name__)

# Perceptual hash: computed on `preprocess_fundus(subsampled image, HASH_SOURCE_SIZE)`, independent
# of the config, so every config groups (and therefore splits) the same way.
HASH_SOURCE_SIZE = 64
# The quality gate and the hash look at the photo decoded with its short side at least this
# (JPEGs at 1/2, 1/4 or 1/8 scale in the DCT domain, `fundus.jpeg_ratio`): the gate measures
# on a ~512-px strided copy and a 256-px disc, the hash on a >= 256-px copy. Depends on the
# photo only, so every config judges and groups alike; photos under 1,024 px on the short side
# (the ~1,024x683 EyePACS copies) are looked at in full, as before.
ANALYSIS_MIN_SIDE = 512
# zlib level of the stored PNGs: lossless at any level. On real 512-px EyePACS crops level 1
# encodes ~2x faster than 3 for ~6 % more bytes (3 was ~4x faster than 6, ~10 % larger).
PNG_COMPRESSION = 1
# The one pixel limit (`fundus.MAX_PIXELS`), shared with serving, `predict` and the app.
DEFAULT_MAX_MEGAPIXELS = fundus.MAX_PIXELS / 1e6

# `gate(image) -> (gradable, reason, quality_score)`; reason is "" for a gradable photo.
QualityGate = Callable[[np.ndarray], tuple[bool, str, float]]


@dataclasses.dataclass
class Job:
    """One photo to process.

    Attributes:
        key: str. The example key (`id_code`, `10_left`, ...).
        relpath: str or None. Its file in the source; None when no file was found.
        gate: bool. Whether the quality gate refuses the photo when it is ungradable
            (labelled training photos); every photo gets the gate's verdict either way.
    """

    key: str
    relpath: str | None
    gate: bool = False


@dataclasses.dataclass
class Processed:
    """The outcome of one photo.

    Attributes:
        key, relpath: from the `Job`.
        ok: bool. Decoded, gradable (or not gated) and stored.
        reason: str. Why not ok ("missing file", "truncated or corrupt (...)", ...).
        ungradable: bool. Refused by the quality gate (a readable photo), not a bad file.
        height, width: int. The photo's size in pixels, upright (a JPEG decoded at a DCT
            scale still reports its full size).
        phash: int. 64-bit perceptual hash.
        thumb: `float32 [32, 32]` grey thumbnail (confirms hash matches).
        decoder: str. `tf` or `pil`.
        gradable, ungradable_reason, quality_score: the quality gate's verdict
            (`fundus.assess_quality`); `quality_score` is NaN when no gate ran.
    """

    key: str
    relpath: str
    ok: bool
    reason: str = ""
    ungradable: bool = False
    height: int = 0
    width: int = 0
    phash: int = 0
    thumb: np.ndarray | None = None
    decoder: str = ""
    gradable: bool = True
    ungradable_reason: str = ""
    quality_score: float = float("nan")


def hash_image(image: np.ndarray) -> tuple[int, np.ndarray]:
    """The config-independent perceptual hash of a decoded photo (used to find duplicates).

    The photo is subsampled with a stride that keeps its short side at 256 px or more (cheap,
    deterministic), cropped and resized to 64 px by `fundus.preprocess_fundus`, then hashed by
    `duplicates.phash64`. Every config hashes the same pixels, so every config groups alike.

    Args:
        image: `uint8 [H, W, 3]` decoded photo.

    Returns:
        `(hash, thumbnail)`: the 64-bit hash and its `float32 [32, 32]` grey thumbnail.
    """
    stride = max(1, min(image.shape[:2]) // 256)
    small = _hash_source(tf.convert_to_tensor(image[::stride, ::stride], tf.uint8)).numpy()
    return duplicates.phash64(small), duplicates.grey_thumbnail(small)


_PIXELS = [tf.TensorSpec([None, None, 3], tf.uint8)]
# One traced graph each (eagerly, the crop's few hundred small ops cost more than their math).
_hash_source = tf.function(
    lambda image: fundus.preprocess_fundus(image, HASH_SOURCE_SIZE),
    input_signature=_PIXELS,
    autograph=False,
)


@functools.cache
def _stored_png(size: int, ben_graham: bool):
    """`uint8 [H, W, 3] -> PNG bytes` of `fundus.preprocess_fundus`, one graph per config."""

    def store(image):
        stored = fundus.preprocess_fundus(image, size, use_ben_graham=ben_graham)
        return tf.io.encode_png(stored, compression=PNG_COMPRESSION)

    return tf.function(store, input_signature=_PIXELS, autograph=False)


def stored_png(image: np.ndarray, size: int, ben_graham: bool = False) -> bytes:
    """The stored image of a decoded photo as PNG bytes (`fundus.preprocess_fundus`, traced).

    Args:
        image: `uint8 [H, W, 3]` decoded photo.
        size: int. Stored side in pixels.
        ben_graham: bool. Ben Graham's normalisation. Defaults to False.

    Returns:
        bytes: a `size x size` RGB PNG (zlib level `PNG_COMPRESSION`).
    """
    return _stored_png(int(size), bool(ben_graham))(tf.convert_to_tensor(image, tf.uint8)).numpy()


def _pil_to_rgb(im: PIL.Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, np.float64)
        scale = 257.0 if arr.max() > 255 else 1.0
        grey = np.clip(np.round(arr / scale), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(im.convert("RGB"), np.uint8)


def _short_tf_error(e: Exception) -> str:
    msg = getattr(e, "message", str(e))
    msg = re.sub(r"\{\{[^}]*\}\}\s*", "", msg)
    return msg.split(" [Op:")[0].strip().splitlines()[0] if msg.strip() else type(e).__name__


def _limit_text(max_pixels: int) -> str:
    return (
        f"the {max_pixels / 1e6:.3g} MP limit for a fundus photo (max_megapixels; PIL refuses "
        f"anything over {PIL.Image.MAX_IMAGE_PIXELS * 2 / 1e6:.0f} MP)"
    )


def header_size(data: bytes, max_pixels: int) -> tuple[int, int, str]:
    """`(height, width, format)` from the header (PIL), refusing what is over `max_pixels`.

    Args:
        data: bytes. The encoded file.
        max_pixels: int. Images with more pixels (read from the header) are refused.

    Returns:
        `(height, width, format)`, e.g. `(683, 1024, "JPEG")`; as stored, before any EXIF turn.

    Raises:
        ValueError: with a short reason for empty, unidentifiable or too large images.
    """
    if not data:
        raise ValueError("empty file (0 bytes)")
    try:
        with PIL.Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            kind = im.format or ""
    except PIL.Image.DecompressionBombError as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        pixels = int(found.group(1)) if found else 0
        raise ValueError(
            f"refused undecoded: header size ({pixels / 1e6:.3g} MP) exceeds "
            f"{_limit_text(max_pixels)}"
        ) from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for garbage
        raise ValueError(f"not a readable image ({type(e).__name__}: {e})") from None
    if width * height > max_pixels:
        raise ValueError(
            f"refused undecoded: {width}x{height} ({width * height / 1e6:.3g} MP) exceeds "
            f"{_limit_text(max_pixels)}"
        )
    return height, width, kind


def decode_to_rgb(data: bytes, max_pixels: int, ratio: int = 1) -> tuple[np.ndarray, str]:
    """Checks the header size, then decodes to RGB `uint8 [H, W, 3]`.

    TensorFlow (`fundus.decode_image`, the decoder serving uses) decodes first: RGBA,
    grayscale, palette, 16-bit PNG and CMYK JPEG all come out as RGB. What TF refuses but PIL
    reads falls back to PIL.

    Args:
        data: bytes. The encoded file.
        max_pixels: int. Images with more pixels (read from the header) are refused undecoded.
        ratio: int. 1, 2, 4 or 8: a JPEG decoded by TF comes out at 1/ratio scale (DCT domain,
            `fundus.decode_image`); other formats and the PIL fallback at full size.
            Defaults to 1.

    Returns:
        `(image, decoder)` with decoder `"tf"` or `"pil"`.

    Raises:
        ValueError: with a short reason for empty, unidentifiable, too large, truncated or
            corrupt images.
    """
    height, width, _ = header_size(data, max_pixels)
    try:
        image = fundus.decode_image(tf.constant(data), ratio=ratio).numpy()
        decoder = "tf"
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as tf_error:
        try:
            with PIL.Image.open(io.BytesIO(data)) as im:
                im.load()
                image = _pil_to_rgb(im)
            decoder = "pil"
        except Exception as e:  # noqa: BLE001
            raise ValueError(
                f"truncated or corrupt ({_short_tf_error(tf_error)}; PIL: {e})"
            ) from None
    scaled = (-(-height // ratio), -(-width // ratio))
    if sorted(image.shape[:2]) not in (sorted((height, width)), sorted(scaled)):
        raise ValueError(
            f"decoded {image.shape[1]}x{image.shape[0]} but header says {width}x{height}"
        )
    return image, decoder


@dataclasses.dataclass(frozen=True)
class StoreSpec:
    """How photos are stored: what the builder config fixes.

    Attributes:
        size: int. Side of the stored square image in pixels.
        ben_graham: bool. Ben Graham's local-colour normalisation.
        max_pixels: int. Larger photos (by header) are refused undecoded.
    """

    size: int
    ben_graham: bool
    max_pixels: int


def process_image(
    source: kaggle_source.Source,
    job: Job,
    spec: StoreSpec,
    scratch: epath.Path,
    gate: QualityGate | None = None,
    keep_ungradable: bool = False,
) -> Processed:
    """Reads, checks, decodes, gates, preprocesses and hashes one photo; writes its PNG.

    Args:
        source: where the file is.
        job: the photo.
        spec: the stored size and variant.
        scratch: folder for the stored PNG (`<key>.png`).
        gate: the quality gate, run on every photo; it refuses an ungradable photo of a job
            with `job.gate` unless `keep_ungradable`. Defaults to none.
        keep_ungradable: bool. Store ungradable photos with their verdict. Defaults to False.

    Returns:
        A `Processed`; bad files are results with `ok=False` and a reason, never exceptions.
    """
    if job.relpath is None:
        return Processed(job.key, "", ok=False, reason="missing file")
    try:
        data = source.read(job.relpath, max_bytes=max(8 * spec.max_pixels, 1 << 20))
        data = formats.to_decodable(data, job.relpath, spec.max_pixels)  # TIFF, DICOM -> PNG
        height, width, kind = header_size(data, spec.max_pixels)
        # A JPEG much larger than needed is decoded at 1/2, 1/4 or 1/8 scale (DCT domain): the
        # stored image keeps at least `spec.size` px on the short side, the gate and the hash
        # look at a copy of at least `ANALYSIS_MIN_SIDE` px (the same for every config).
        jpeg = kind == "JPEG"
        store_ratio = fundus.jpeg_ratio(height, width, spec.size) if jpeg else 1
        look_ratio = fundus.jpeg_ratio(height, width, ANALYSIS_MIN_SIDE) if jpeg else 1
        image, decoder = decode_to_rgb(data, spec.max_pixels, store_ratio)
        analysis = image
        if look_ratio != store_ratio and decoder == "tf":
            analysis, _ = decode_to_rgb(data, spec.max_pixels, look_ratio)
    except FileNotFoundError:
        return Processed(job.key, job.relpath, ok=False, reason="missing file")
    except kaggle_source.FileTooLarge as e:
        return Processed(job.key, job.relpath, ok=False, reason=f"refused undecoded: file is {e}")
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        return Processed(job.key, job.relpath, ok=False, reason=str(e))
    # The photo's own size, upright (the decoded image may be a DCT-scaled copy).
    turned = image.shape[0] != image.shape[1] and (image.shape[0] > image.shape[1]) != (
        height > width
    )
    size = {"height": width if turned else height, "width": height if turned else width}
    verdict = {}
    if gate is not None:
        gradable, why, score = gate(analysis)
        verdict = {"gradable": gradable, "ungradable_reason": why, "quality_score": score}
        if job.gate and not gradable and not keep_ungradable:
            return Processed(
                job.key, job.relpath, ok=False, reason=why, ungradable=True, **size, **verdict
            )
    phash, thumb = hash_image(analysis)
    (scratch / f"{job.key}.png").write_bytes(stored_png(image, spec.size, spec.ben_graham))
    return Processed(
        job.key, job.relpath, ok=True, phash=phash, thumb=thumb, decoder=decoder, **size, **verdict
    )


@dataclasses.dataclass
class DecodeResult:
    """Every photo's outcome and how long the phase took.

    Attributes:
        results: `{key: Processed}` in job order.
        timing: `{"images", "seconds", "images_per_second", "workers"}`.
    """

    results: dict[str, Processed]
    timing: dict


def decode_all(
    name: str,
    source: kaggle_source.Source,
    jobs: Sequence[Job],
    spec: StoreSpec,
    scratch: epath.Path,
    *,
    num_workers: int | None = None,
    gate: QualityGate | None = None,
    keep_ungradable: bool = False,
) -> DecodeResult:
    """Processes every job in parallel threads, with a progress bar (TFDS's tqdm).

    Args:
        name: str. Dataset name, for the progress bar and the log.
        source: where the files are.
        jobs: the photos.
        spec: the stored size and variant.
        scratch: folder for the stored PNGs (created empty).
        num_workers: int. Threads. Defaults to the CPU count.
        gate: the quality gate (see `process_image`). Defaults to none.
        keep_ungradable: bool. Store ungradable photos too. Defaults to False.

    Returns:
        A `DecodeResult`.
    """
    workers = num_workers or multiprocessing.cpu_count()
    if scratch.exists():
        scratch.rmtree()
    scratch.mkdir(parents=True)
    logger.info(
        "%s: decoding %d images from %s with %d threads",
        name,
        len(jobs),
        source.description,
        workers,
    )
    results: dict[str, Processed] = {}
    start, cpu = time.perf_counter(), time.process_time()
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [
            pool.submit(process_image, source, j, spec, scratch, gate, keep_ungradable)
            for j in jobs
        ]
        bar = tfds.core.utils.tqdm(
            futures, total=len(futures), desc=f"{name}: decoding photos", unit=" img"
        )
        for future in bar:
            r = future.result()
            results[r.key] = r
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return DecodeResult(results, _timing(name, len(jobs), seconds, cpu, workers))


def _timing(name: str, count: int, seconds: float, cpu_seconds: float, workers: int) -> dict:
    """Logs the decode rate and returns it as the report's `timing`.

    `cpu_seconds` is this process's CPU time over the phase (every thread): on a machine shared
    with other jobs, `count / cpu_seconds` per core is the steadier figure.
    """
    rate = count / seconds if seconds > 0 else float("inf")
    logger.info(
        "%s: decoded %d images in %.1f s: %.1f img/s (%d threads, %.0f CPU-ms per image)",
        name,
        count,
        seconds,
        rate,
        workers,
        1000 * cpu_seconds / max(count, 1),
    )
    return {
        "images": count,
        "seconds": round(seconds, 3),
        "images_per_second": round(rate, 2),
        "workers": workers,
        "cpu_seconds": round(cpu_seconds, 3),
    }
