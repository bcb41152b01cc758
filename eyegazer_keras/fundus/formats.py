"""The one set of photo formats, and the Python-side reader of TIFF and DICOM.

Every path reads the same formats:

* **Served formats** (`SERVED_FORMATS`): JPEG, PNG, GIF, BMP and WebP. TensorFlow's
  `tf.io.decode_image` (`fundus.decode_image`) reads them inside the SavedModel, so `eyegazer
  serve`, `predict`, the app and the builders all take them.
* **Camera formats** (`CAMERA_FORMATS`): TIFF and DICOM (Ophthalmic Photography, as fundus
  cameras write). `predict`, the app and the builders read them in Python (PIL, pydicom) and
  hand on PNG bytes (or a DICOM's own JPEG frame) to the same TF decode; the SavedModel and
  `eyegazer serve` have no Python and refuse them with a line that says to send JPEG or PNG
  (`serving_refusal`).

`IMAGE_EXTENSIONS` is what the builders index by name; `is_system_file` names what operating
systems leave in folders (macOS `._*` AppleDouble, `.DS_Store`, `Thumbs.db`), which every
builder ignores and counts. Importable without TensorFlow (numpy and Pillow; pydicom when a
DICOM file is read).

Example:

```python
import io
import numpy as np
from PIL import Image
from eyegazer_keras.fundus import formats

buffer = io.BytesIO()
Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(buffer, "TIFF")
assert formats.sniff(buffer.getvalue()) == "TIFF"
png = formats.to_decodable(buffer.getvalue(), "photo.tif")  # PNG bytes, 12x8 RGB
assert formats.sniff(png) == "PNG"
assert "send JPEG or PNG" in formats.serving_refusal(buffer.getvalue(), "instances[0]")
```
"""

from __future__ import annotations

import io
import logging
import os

import numpy as np
import PIL.Image
import PIL.ImageOps

logger = logging.getLogger(__name__)

# What `tf.io.decode_image` (TF 2.21) reads, so what the SavedModel accepts. (TF also reads
# JPEG XL; Pillow 12.3 does not, so the builders could not check its header: left out.)
SERVED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")
# Read in Python (predict, app, builders) and handed on as PNG (or JPEG) bytes.
CAMERA_FORMATS = ("TIFF", "DICOM")
IMAGE_EXTENSIONS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".gif": "GIF",
    ".bmp": "BMP",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".dcm": "DICOM",
    ".dicom": "DICOM",
}
SYSTEM_FILE_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini", "ehthumbs.db"})
SYSTEM_FOLDERS = frozenset({"__MACOSX"})
SEND_JPEG_OR_PNG = "send JPEG or PNG (or GIF, BMP, WebP)"
# The one pixel limit (`fundus.MAX_PIXELS`, repeated here so this module needs no TensorFlow;
# tests/fundus/test_header.py checks they agree): TIFF / DICOM headers over it are refused undecoded.
DEFAULT_MAX_PIXELS = 50_000_000
# DICOM transfer syntaxes whose single frame is a plain JPEG file TF decodes as is.
_JPEG_SYNTAXES = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")


def extension_format(name: str) -> str | None:
    """The format a file name's extension stands for (`"x.JPG"` -> `"JPEG"`), or None."""
    return IMAGE_EXTENSIONS.get(os.path.splitext(name)[1].lower())


def is_system_file(relpath: str) -> bool:
    """Whether a path is what an operating system leaves behind, not a photo.

    macOS `._name` AppleDouble files and `__MACOSX/` folders (zips made by Finder),
    `.DS_Store`, Windows `Thumbs.db` / `desktop.ini`.

    Args:
        relpath: str. A POSIX path (`"Mild/._p01.png"`) or a bare name.
    """
    parts = relpath.replace("\\", "/").split("/")
    name = parts[-1]
    return (
        name.startswith("._")
        or name.lower() in SYSTEM_FILE_NAMES
        or any(p in SYSTEM_FOLDERS for p in parts[:-1])
    )


def sniff(data: bytes) -> str | None:
    """The format of encoded bytes from their magic numbers.

    Args:
        data: bytes. At least the first 132 bytes of a file (DICOM's `DICM` sits at 128).

    Returns:
        One of `SERVED_FORMATS`, `CAMERA_FORMATS`, `"HEIF"`, or None (unknown).
    """
    head = bytes(data[:132])
    if head.startswith(b"\xff\xd8"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith(b"BM"):
        return "BMP"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "TIFF"
    if head[128:132] == b"DICM":
        return "DICOM"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"hevc"):
        return "HEIF"
    return None


def serving_refusal(data: bytes, label: str) -> str | None:
    """The one-line refusal of a served request holding a camera format, else None.

    The SavedModel decodes with TF, which reads neither TIFF nor DICOM (nor HEIC); this names
    the format and says what to send instead of TF's "Unknown image file format".

    Args:
        data: bytes. The request's image.
        label: str. What names it in the message (`"instances[2]"`).

    Returns:
        str or None.
    """
    kind = sniff(data)
    if kind in CAMERA_FORMATS or kind == "HEIF":
        return (
            f"{label}: a {kind} file; the served model reads JPEG, PNG, GIF, BMP and WebP only: "
            f"{SEND_JPEG_OR_PNG}, or use `eyegazer predict` / `eyegazer app`, which read "
            "TIFF and DICOM."
        )
    return None


def to_decodable(data: bytes, label: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> bytes:
    """Camera formats -> bytes the shared TF decode reads; other bytes are returned as they are.

    TIFF: the first page, EXIF/TIFF orientation applied, as RGB PNG (16-bit grey scaled to
    8 bits). DICOM: a single-frame JPEG-baseline photo is handed on as its own JPEG frame;
    any other pixel data (uncompressed, RLE, JPEG 2000 where a decoder is installed) is decoded
    by pydicom, colour-converted to RGB, scaled to 8 bits (MONOCHROME1 inverted) and encoded as
    PNG.

    Args:
        data: bytes. The file's content.
        label: str. The file's name, for errors.
        max_pixels: int or None. Refuse larger images, from their header, before decoding.
            Defaults to `DEFAULT_MAX_PIXELS` (None: no limit but PIL's own for TIFF).

    Returns:
        bytes: unchanged for served formats and unknown bytes, else PNG (or JPEG) bytes.

    Raises:
        ValueError: one line naming the file: an unreadable TIFF or DICOM, a DICOM without
            pixel data, with several frames, or over `max_pixels`.
    """
    kind = sniff(data)
    if kind is None and extension_format(label) == "DICOM":
        kind = "DICOM"  # DICOM without the 128-byte preamble
    if kind == "TIFF":
        return _tiff_to_png(data, label, max_pixels)
    if kind == "DICOM":
        return _dicom_to_decodable(data, label, max_pixels)
    return data


def _check_pixels(label: str, kind: str, width: int, height: int, max_pixels: int | None):
    if max_pixels is not None and width * height > max_pixels:
        raise ValueError(
            f"{label}: {kind} of {width}x{height} ({width * height / 1e6:.3g} MP) is over the "
            f"{max_pixels / 1e6:.3g} MP limit for a fundus photo; refused undecoded."
        )


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(image).save(buffer, "PNG", compress_level=3)
    return buffer.getvalue()


def _to_uint8(array: np.ndarray, bits: int) -> np.ndarray:
    """Integer or float samples of `bits` significant bits -> `uint8`."""
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        low, high = float(np.nanmin(array)), float(np.nanmax(array))
        scaled = (array - low) / (high - low or 1.0) * 255.0
        return np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    array = array.astype(np.int64)
    if array.min() < 0:
        array = array - array.min()
    top = (1 << max(1, bits)) - 1
    return np.clip(np.round(array * (255.0 / top)), 0, 255).astype(np.uint8)


def _tiff_to_png(data: bytes, label: str, max_pixels: int | None) -> bytes:
    try:
        with PIL.Image.open(io.BytesIO(data)) as im:
            _check_pixels(label, "TIFF", *im.size, max_pixels)
            pages = getattr(im, "n_frames", 1)
            if pages > 1:
                logger.info("%s: TIFF of %d pages; reading the first", label, pages)
            im.load()
            im = PIL.ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                grey = np.asarray(im)
                grey = _to_uint8(grey, 16 if grey.max() > 255 else 8)
                rgb = np.repeat(grey[..., None], 3, axis=-1)
            else:
                rgb = np.asarray(im.convert("RGB"), np.uint8)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
        raise ValueError(
            f"{label}: unreadable TIFF ({type(e).__name__}: {e}); re-export it from the camera "
            "software or save it as PNG."
        ) from None
    return _png_bytes(rgb)


def _dicom_to_decodable(data: bytes, label: str, max_pixels: int | None) -> bytes:
    import pydicom  # noqa: PLC0415 - only when a DICOM file is read

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        rows, columns = int(ds.Rows), int(ds.Columns)
    except Exception as e:  # noqa: BLE001 - pydicom raises many types for broken files
        reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise ValueError(
            f"{label}: not a readable DICOM image ({reason}); export the photo from the "
            "camera software as DICOM Ophthalmic Photography, JPEG or PNG."
        ) from None
    if "PixelData" not in ds:
        raise ValueError(
            f"{label}: DICOM file without pixel data (modality {ds.get('Modality', '?')}); "
            "pass the photo's own DICOM file, not a DICOMDIR or report."
        )
    _check_pixels(label, "DICOM", columns, rows, max_pixels)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ValueError(
            f"{label}: DICOM with {frames} frames (a stereo pair or series); export each "
            "photo as its own file."
        )
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if syntax in _JPEG_SYNTAXES:
        from pydicom.encaps import generate_frames  # noqa: PLC0415

        return next(generate_frames(ds.PixelData, number_of_frames=1))
    try:
        pixels = ds.pixel_array  # YBR photometric interpretations come back as RGB
    except Exception as e:  # noqa: BLE001
        raise ValueError(
            f"{label}: DICOM pixel data cannot be decoded here (transfer syntax {syntax or '?'}: "
            f"{e}); export the photo as JPEG or PNG."
        ) from None
    bits = int(ds.get("BitsStored", 8) or 8)
    image = _to_uint8(np.asarray(pixels), bits)
    if image.ndim == 2:
        if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
            image = 255 - image
        image = np.repeat(image[..., None], 3, axis=-1)
    return _png_bytes(np.ascontiguousarray(image[..., :3]))
