"""What every builder's `dummy_data/make_dummy_data.py` (and the tests) write with.

Synthetic fundus-like photos (never patient images), their encodings, re-encoded duplicates,
and the archive forms Kaggle ships: a folder zipped, and a zip cut into `x.zip.001, .002, ...`
parts. Pure NumPy + Pillow + zipfile: no TensorFlow.

Example:

```python
import pathlib, tempfile
from eyegazer_datasets.common import dummy_data

root = pathlib.Path(tempfile.mkdtemp())
(root / "train").mkdir()
(root / "train" / "10_left.jpeg").write_bytes(dummy_data.encode(dummy_data.fundus_like(1), "JPEG"))
parts = dummy_data.split_file(dummy_data.zip_folder(root / "train", root / "train.zip", "train/"), 2)
```
"""

from __future__ import annotations

import io
import pathlib
import shutil
import zipfile

import numpy as np
from PIL import Image

SIZE = (100, 75)  # width, height: the 4:3 aspect of most APTOS photos


def fundus_like(seed: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    """A synthetic fundus-like RGB image: orange disc on black, vessels, optic disc, blotches.

    Args:
        seed: int. Different seeds give images with different perceptual hashes.
        size: (width, height). Defaults to (100, 75).

    Returns:
        `uint8 [height, width, 3]`.
    """
    rng = np.random.default_rng(seed)
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    radius = 0.48 * height
    r = np.hypot(yy - cy, xx - cx) / radius
    disc = r <= 1.0
    # Low-frequency illumination: a few broad random blobs make each photo's hash distinct.
    light = 0.55 + 0.25 * (1 - r**2)
    for _ in range(4):
        by, bx = rng.uniform(-0.8, 0.8, 2) * radius + (cy, cx)
        s = rng.uniform(0.25, 0.6) * radius
        light += rng.uniform(-0.12, 0.12) * np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / (2 * s * s))
    # Optic disc: a bright spot left or right of centre.
    side = rng.choice([-1, 1])
    oy, ox = cy + rng.uniform(-0.2, 0.2) * radius, cx + side * rng.uniform(0.35, 0.6) * radius
    light += 0.6 * np.exp(-((yy - oy) ** 2 + (xx - ox) ** 2) / (2 * (0.09 * radius) ** 2))
    # Vessels: dark random arcs leaving the optic disc.
    vessels = np.zeros_like(light)
    for _ in range(6):
        angle = rng.uniform(0, 2 * np.pi)
        curve = rng.uniform(-1.5, 1.5)
        t = np.linspace(0, 1.3 * radius, 200)
        vy = oy + t * np.sin(angle + curve * t / radius)
        vx = ox + t * np.cos(angle + curve * t / radius)
        for y, x in zip(vy.astype(int), vx.astype(int), strict=True):
            if 0 <= y < height and 0 <= x < width:
                vessels[y, x] = 1.0
    light -= 0.25 * vessels
    colour = np.stack([210 * light, 95 * light, 35 * light], axis=-1)
    colour += rng.normal(0, 3, colour.shape)
    image = np.where(disc[..., None], colour, 0.0)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def encode(image: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    """Encodes an RGB array with PIL (`fmt` is a PIL format name, e.g. PNG or JPEG)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def encode_dicom(image: np.ndarray, jpeg: bool = False, preamble: bool = True) -> bytes:
    """A DICOM Ophthalmic Photography file of an RGB array, the way fundus cameras write them.

    Args:
        image: `uint8 [H, W, 3]` (RGB), `uint8 / uint16 [H, W]` (MONOCHROME2), or either with
            a leading frame axis (a multi-frame file).
        jpeg: bool. Store the pixels as one JPEG-baseline frame (most cameras) instead of
            uncompressed. Defaults to False.
        preamble: bool. Write the 128-byte preamble and `DICM`. Defaults to True.

    Returns:
        The file's bytes (pydicom, imported here only).
    """
    import pydicom  # noqa: PLC0415 - only the DICOM tests need it
    from pydicom.dataset import FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

    op_image = "1.2.840.10008.5.1.4.1.1.77.1.5.1"  # Ophthalmic Photography 8 Bit Image Storage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = op_image
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = op_image
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OP"
    ds.PatientID = "SYNTHETIC"
    if jpeg:
        ds.Rows, ds.Columns = image.shape[:2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "YBR_FULL_422"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PlanarConfiguration = 0
        ds.PixelData = encapsulate([encode(image, "JPEG", quality=95)])
        ds["PixelData"].VR = "OB"
    else:
        interpretation = "RGB" if image.ndim >= 3 and image.shape[-1] == 3 else "MONOCHROME2"
        ds.set_pixel_data(image, interpretation, 8 if image.dtype == np.uint8 else 16)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=preamble)
    return buffer.getvalue()


def reencoded_copy(image: np.ndarray, scale: float = 2.0, quality: int = 90) -> bytes:
    """A duplicate the way APTOS has them: resized and JPEG re-encoded, returned as JPEG bytes."""
    height, width = image.shape[:2]
    pil = Image.fromarray(image).resize(
        (round(width * scale), round(height * scale)), Image.Resampling.BICUBIC
    )
    buffer = io.BytesIO()
    pil.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def fresh_dir(here: pathlib.Path, *names: str) -> pathlib.Path:
    """Deletes `here/<name>` for each of `names` (the layouts a `make_dummy_data.py` rewrites).

    Returns:
        `here`.
    """
    here = pathlib.Path(here)
    for name in names:
        if (here / name).exists():
            shutil.rmtree(here / name)
    return here


def zip_folder(folder: pathlib.Path, zip_path: pathlib.Path, prefix: str = "") -> pathlib.Path:
    """Zips every file below `folder` (stored, in sorted order) as `prefix + <path below it>`.

    Args:
        folder: the folder to zip.
        zip_path: the zip to write (its folder is created).
        prefix: str. Member name prefix: `""` puts the files at the archive root (the APTOS
            zip), `"train/"` under a top folder (Kaggle's `train.zip`). Defaults to `""`.

    Returns:
        `zip_path`.
    """
    folder, zip_path = pathlib.Path(folder), pathlib.Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(folder).as_posix())
    return zip_path


def split_file(path: pathlib.Path, parts: int) -> list[pathlib.Path]:
    """Cuts `x.zip` into `x.zip.001 ...` byte pieces (like 7-Zip volumes) and removes it.

    Returns:
        The parts, in order.
    """
    path = pathlib.Path(path)
    data = path.read_bytes()
    step = -(-len(data) // parts)
    out = []
    for n in range(parts):
        part = path.with_name(f"{path.name}.{n + 1:03d}")
        part.write_bytes(data[n * step : (n + 1) * step])
        out.append(part)
    path.unlink()
    return out
