"""APTOS 2019 Blindness Detection: fundus photographs graded 0-4 for diabetic retinopathy.

The builder reads the Kaggle download (the zip, read in place, or the extracted folder), checks
both CSVs before touching an image, decodes every photo ONCE in parallel, crops and resizes it
with `eyegazer_keras.fundus.preprocess_fundus` (the code serving runs) and stores it as a
lossless PNG. It hashes every photo (perceptual hash), groups duplicates, keeps each group in
one split, applies the configured policy to groups with conflicting grades and writes a build
report (`build_report.json`) next to the prepared data.

Example:

```python
from eyegazer_datasets.aptos2019 import aptos2019_dataset_builder as aptos

report = aptos.prepare(manual_dir="~/Downloads", data_dir="~/tensorflow_datasets")
print(report["counts"])
```
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import io
import json
import logging
import math
import multiprocessing
import re
import threading
import time
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import PIL.Image
import scipy.fft
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from eyegazer_keras import GRADE_NAMES, fundus

logger = logging.getLogger(__name__)

ZIP_NAME = "aptos2019-blindness-detection.zip"
TRAIN_CSV = "train.csv"
TEST_CSV = "test.csv"
TRAIN_DIR = "train_images"
TEST_DIR = "test_images"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
CONFLICT_POLICIES = ("keep", "drop", "majority")
VALIDATION_FRACTION = 0.10
# Part of the split rule: changing it changes the split. Bump the suffix if you ever do.
SPLIT_RULE = "sha256-stratified-10pct-v1"
# Perceptual hash: computed on `preprocess_fundus(subsampled image, HASH_SOURCE_SIZE)`, independent
# of the config, so every config groups (and therefore splits) the same way.
HASH_SOURCE_SIZE = 64
# zlib level of the stored PNGs: lossless at any level; 3 encodes ~4x faster than 6, ~10 % larger.
PNG_COMPRESSION = 3
DEFAULT_DUPLICATE_MAX_DISTANCE = 8
# A hash match is confirmed when the 32x32 grey thumbnails differ by at most this mean absolute
# grey level: fundus photos look alike, so a near hash alone could join two different eyes.
DEFAULT_DUPLICATE_MAX_THUMB_DIFF = 3.0
DEFAULT_MAX_BAD_FRACTION = 0.01
DEFAULT_MAX_MEGAPIXELS = 50.0
REPORT_NAME = "build_report.json"
VALIDATION_IDS_NAME = "validation_ids.txt"
_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_TRAIN_IDS_SHA_RE = re.compile(r"^#\s*train_ids_sha256:\s*([0-9a-f]{64})\s*$")

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
APTOS 2019 is only available from Kaggle, after accepting the competition rules at
https://www.kaggle.com/competitions/aptos2019-blindness-detection/data

Download `aptos2019-blindness-detection.zip` (about 9.5 GB), either from that page or with
`kaggle competitions download -c aptos2019-blindness-detection`, and put it in the manual dir
(`--manual_dir`, default `~/tensorflow_datasets/downloads/manual/`). There is no need to
extract it: the builder reads the zip in place. The extracted folder (`train.csv`, `test.csv`,
`train_images/`, `test_images/`) works too. Then run
`eyegazer prepare aptos2019 --manual-dir DIR` or `tfds build datasets/aptos2019 --manual_dir DIR`.
"""


class Aptos2019BuildError(ValueError):
    """Bad APTOS input: the message names the file, the row and the fix (no traceback needed)."""

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class Aptos2019Config(tfds.core.BuilderConfig):
    """What changes the bytes on disk.

    Args:
        size: int. Side of the stored square image in pixels. Defaults to 512.
        ben_graham: bool. Apply Ben Graham's local-colour normalisation. Defaults to False.
        conflict_policy: str. What to do with duplicate groups whose grades disagree: `keep`
            (every copy keeps its own grade, `label_conflict=True`), `drop` (remove every copy
            from train/validation) or `majority` (relabel every copy to the grade held by more
            than half of the group; groups without such a grade are dropped). Defaults to `keep`.
        duplicate_max_distance: int. Two photos are duplicate candidates when their 64-bit
            perceptual hashes differ in at most this many bits. Part of the split rule.
            Defaults to 8.
        duplicate_max_thumb_diff: float. A candidate pair is a duplicate when the 32x32 grey
            thumbnails differ by at most this mean absolute grey level (0-255). Part of the
            split rule. Defaults to 3.0.
    """

    size: int = 512
    ben_graham: bool = False
    conflict_policy: str = "keep"
    duplicate_max_distance: int = DEFAULT_DUPLICATE_MAX_DISTANCE
    duplicate_max_thumb_diff: float = DEFAULT_DUPLICATE_MAX_THUMB_DIFF

    def __post_init__(self):
        if self.conflict_policy not in CONFLICT_POLICIES:
            raise ValueError(
                f"conflict_policy {self.conflict_policy!r} is not one of {CONFLICT_POLICIES}."
            )
        if int(self.size) < 8:
            raise ValueError(f"size must be at least 8 pixels, got {self.size}.")


def make_config(
    size: int = 512,
    ben_graham: bool = False,
    conflict_policy: str = "keep",
    duplicate_max_distance: int = DEFAULT_DUPLICATE_MAX_DISTANCE,
) -> Aptos2019Config:
    """Returns a config named after its choices, e.g. `384_ben_graham_drop`.

    Args:
        size: int. Stored image side. Defaults to 512.
        ben_graham: bool. Ben Graham variant. Defaults to False.
        conflict_policy: str. `keep`, `drop` or `majority`. Defaults to `keep`.
        duplicate_max_distance: int. Hamming threshold for duplicate candidates. Defaults to 8.
    """
    name = str(size)
    if ben_graham:
        name += "_ben_graham"
    if conflict_policy != "keep":
        name += f"_{conflict_policy}"
    if duplicate_max_distance != DEFAULT_DUPLICATE_MAX_DISTANCE:
        name += f"_dup{duplicate_max_distance}"
    policy_text = {
        "keep": "duplicate copies with conflicting grades are kept",
        "drop": "duplicate groups with conflicting grades are dropped",
        "majority": "conflicting duplicate groups take their majority grade (no majority: dropped)",
    }[conflict_policy]
    description = (
        f"Fundus cropped and resized to {size}x{size} px"
        + (", Ben Graham normalisation" if ben_graham else "")
        + f", lossless PNG; {policy_text}."
    )
    return Aptos2019Config(
        name=name,
        description=description,
        size=size,
        ben_graham=ben_graham,
        conflict_policy=conflict_policy,
        duplicate_max_distance=duplicate_max_distance,
    )


# --------------------------------------------------------------------------------------------
# CSV parsing (runs before any image work)
# --------------------------------------------------------------------------------------------


def _csv_lines(data: bytes, filename: str) -> list[str]:
    try:
        text = data.decode("utf-8-sig")  # strips a BOM when there is one
    except UnicodeDecodeError as e:
        raise Aptos2019BuildError(
            f"{filename}: not UTF-8 text ({e.reason} at byte {e.start}); re-download it from Kaggle."
        ) from None
    lines = text.splitlines()  # handles LF, CRLF and CR
    if not lines or not lines[0].strip():
        raise Aptos2019BuildError(
            f"{filename}: empty file or empty header; expected a header line such as "
            f"'id_code,diagnosis' (re-download it from Kaggle)."
        )
    return lines


def _split_row(line: str) -> list[str]:
    return [cell.strip().strip('"').strip() for cell in line.split(",")]


def parse_labels_csv(
    data: bytes, filename: str = TRAIN_CSV, require_diagnosis: bool = True
) -> dict[str, int]:
    """Parses and checks `train.csv` (`id_code,diagnosis`) or `test.csv` (`id_code`).

    BOM and CRLF line endings are accepted. Every problem raises `Aptos2019BuildError` naming
    the file, the row and the fix.

    Args:
        data: bytes. The file content.
        filename: str. Name used in error messages. Defaults to `train.csv`.
        require_diagnosis: bool. Whether a `diagnosis` column (grade 0-4) is required. When
            False (`test.csv`) every id maps to -1. Defaults to True.

    Returns:
        `{id_code: grade}` in file order (grade -1 without a diagnosis column).
    """
    lines = _csv_lines(data, filename)
    header = [h.lower() for h in _split_row(lines[0])]
    needed = ["id_code"] + (["diagnosis"] if require_diagnosis else [])
    for column in needed:
        if column not in header:
            raise Aptos2019BuildError(
                f"{filename}: missing column '{column}' (header is {lines[0].strip()!r}); "
                f"the Kaggle file starts with '{','.join(needed)}'. Fix the header or "
                "re-download it."
            )
    id_col = header.index("id_code")
    dx_col = header.index("diagnosis") if require_diagnosis else None
    out: dict[str, int] = {}
    first_row: dict[str, int] = {}
    for line_no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue  # a trailing blank line is harmless
        row_no = line_no - 1
        where = f"{filename} row {row_no} (line {line_no})"
        cells = _split_row(line)
        if len(cells) < len(header):
            raise Aptos2019BuildError(
                f"{where}: {len(cells)} field(s) but the header has {len(header)}: {line!r}. "
                "Fix or delete the row."
            )
        id_code = cells[id_col]
        if not id_code:
            raise Aptos2019BuildError(f"{where}: empty id_code. Fill it in or delete the row.")
        if not _ID_RE.match(id_code) or ".." in id_code:
            raise Aptos2019BuildError(
                f"{where}: id_code {id_code!r} is not a plain file name (letters, digits, "
                "'_', '-', '.'). Fix or delete the row."
            )
        if id_code in out:
            raise Aptos2019BuildError(
                f"{where}: id_code {id_code!r} already appears on row {first_row[id_code]}. "
                "Delete one of the two rows."
            )
        grade = -1
        if dx_col is not None:
            raw = cells[dx_col]
            try:
                grade = int(raw)
            except ValueError:
                raise Aptos2019BuildError(
                    f"{where}: diagnosis {raw!r} is not an integer grade 0-4. "
                    "Fix the row or re-download train.csv from Kaggle."
                ) from None
            if not 0 <= grade <= 4:
                raise Aptos2019BuildError(
                    f"{where}: diagnosis '{raw}' is not in 0-4. "
                    "Fix the row or re-download train.csv from Kaggle."
                )
        out[id_code] = grade
        first_row[id_code] = row_no
    if not out:
        raise Aptos2019BuildError(f"{filename}: no data rows. Re-download it from Kaggle.")
    return out


# --------------------------------------------------------------------------------------------
# Sources: the Kaggle zip (read in place) or the extracted folder
# --------------------------------------------------------------------------------------------


def _is_unsafe_member(name: str) -> bool:
    norm = name.replace("\\", "/")
    return (
        norm.startswith("/")
        or bool(re.match(r"^[A-Za-z]:", norm))
        or ".." in norm.split("/")
        or "\x00" in norm
    )


class _Source:
    """Reads files of the Kaggle layout by relative posix path (`train_images/x.png`)."""

    description: str

    def files(self) -> list[str]:
        raise NotImplementedError

    def read(self, relpath: str, max_bytes: int) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _ZipSource(_Source):
    def __init__(self, path: epath.Path):
        self.path = path
        self.description = f"zip {path}"
        self._local = threading.local()
        self._handles: list[Any] = []
        self._lock = threading.Lock()
        try:
            zf = self._zip()
        except (zipfile.BadZipFile, OSError) as e:
            raise Aptos2019BuildError(
                f"{path}: not a readable zip ({e}). Re-download {ZIP_NAME} from Kaggle."
            ) from None
        infos = zf.infolist()
        unsafe = [i.filename for i in infos if _is_unsafe_member(i.filename)]
        if unsafe:
            raise Aptos2019BuildError(
                f"{path}: member {unsafe[0]!r} (and {len(unsafe) - 1} more) points outside the "
                "archive; refusing to read this zip. Re-download it from Kaggle."
            )
        csvs = sorted(
            (i.filename for i in infos if i.filename.rsplit("/", 1)[-1] == TRAIN_CSV),
            key=lambda n: (n.count("/"), n),
        )
        prefix = csvs[0][: -len(TRAIN_CSV)] if csvs else ""
        self._infos = {
            i.filename[len(prefix) :]: i
            for i in infos
            if i.filename.startswith(prefix) and not i.is_dir()
        }
        self._prefix = prefix

    def _zip(self) -> zipfile.ZipFile:
        zf = getattr(self._local, "zf", None)
        if zf is None:
            handle = self.path.open("rb")
            zf = zipfile.ZipFile(handle)
            self._local.zf = zf
            with self._lock:
                self._handles.append((zf, handle))
        return zf

    def files(self) -> list[str]:
        return list(self._infos)

    def read(self, relpath: str, max_bytes: int) -> bytes:
        info = self._infos.get(relpath)
        if info is None:
            raise FileNotFoundError(relpath)
        if info.file_size > max_bytes:
            raise _TooLarge(f"{info.file_size / 1e6:.0f} MB uncompressed")
        return self._zip().read(info)

    def close(self) -> None:
        with self._lock:
            for zf, handle in self._handles:
                zf.close()
                handle.close()
            self._handles.clear()


class _FolderSource(_Source):
    def __init__(self, root: epath.Path):
        self.root = root
        self.description = f"folder {root}"

    def files(self) -> list[str]:
        out = [p.name for p in self.root.iterdir() if p.is_file()]
        for sub in (TRAIN_DIR, TEST_DIR):
            folder = self.root / sub
            if folder.is_dir():
                out.extend(f"{sub}/{p.name}" for p in folder.iterdir())
        return out

    def read(self, relpath: str, max_bytes: int) -> bytes:
        path = self.root / relpath
        if not path.exists():
            raise FileNotFoundError(relpath)
        size = path.stat().length
        if size > max_bytes:
            raise _TooLarge(f"{size / 1e6:.0f} MB")
        return path.read_bytes()


def open_source(manual_dir: str | epath.PathLike) -> _Source:
    """Finds the Kaggle data in `manual_dir`: the extracted folder first, else the zip.

    Args:
        manual_dir: path. The manual dir (or the extracted folder itself).

    Returns:
        A source object with `files()` and `read(relpath, max_bytes)`.
    """
    root = epath.Path(manual_dir).expanduser()
    for candidate in (root, root / "aptos2019-blindness-detection"):
        if (candidate / TRAIN_CSV).exists():
            return _FolderSource(candidate)
    zips = [root / ZIP_NAME] if (root / ZIP_NAME).exists() else []
    if not zips and root.is_dir():
        zips = sorted(p for p in root.iterdir() if p.name.endswith(".zip") and "aptos" in p.name)
    if zips:
        return _ZipSource(zips[0])
    raise Aptos2019BuildError(
        f"{root}: found neither {ZIP_NAME} nor an extracted folder with {TRAIN_CSV}. "
        "Download it from https://www.kaggle.com/competitions/aptos2019-blindness-detection/data "
        "(or `kaggle competitions download -c aptos2019-blindness-detection`) into that folder."
    )


# --------------------------------------------------------------------------------------------
# Images: header check, robust decode, preprocess, perceptual hash
# --------------------------------------------------------------------------------------------


class _TooLarge(Exception):
    pass


@dataclasses.dataclass
class _Processed:
    id_code: str
    relpath: str
    ok: bool
    reason: str = ""
    height: int = 0
    width: int = 0
    phash: int = 0
    thumb: np.ndarray | None = None
    decoder: str = ""


def grey_thumbnail(image: np.ndarray) -> np.ndarray:
    """Block-averages an RGB image (sides multiples of 32) to a `float32 [32, 32]` grey image."""
    grey = np.asarray(image, np.float64).mean(axis=-1)
    h, w = grey.shape
    return grey.reshape(32, h // 32, 32, w // 32).mean(axis=(1, 3)).astype(np.float32)


def phash64(image: np.ndarray) -> int:
    """64-bit DCT perceptual hash (pHash) of an RGB `uint8` image.

    Grey levels are block-averaged to 32x32, transformed with a 2-D DCT-II, and each of the 64
    lowest-frequency coefficients becomes one bit: set when above their median. Re-encoded
    or resized copies of a photo get the same (or a very close) hash.

    Args:
        image: `uint8 [H, W, 3]` with H and W multiples of 32 (e.g. 64x64).

    Returns:
        The hash as a Python int (use `f"{h:016x}"` for hex).
    """
    grey = grey_thumbnail(image).astype(np.float64)
    low = scipy.fft.dctn(grey, type=2, norm="ortho")[:8, :8]
    bits = (low > np.median(low)).ravel()
    return int(sum(1 << i for i, b in enumerate(bits[::-1]) if b))


def hash_image(image: np.ndarray) -> tuple[int, np.ndarray]:
    """The config-independent perceptual hash of a decoded photo (used to find duplicates).

    The photo is subsampled with a stride that keeps its short side at 256 px or more (cheap,
    deterministic), cropped and resized to 64 px by `fundus.preprocess_fundus`, then hashed by
    `phash64`. Every config hashes the same pixels, so every config groups duplicates alike.

    Args:
        image: `uint8 [H, W, 3]` decoded photo.

    Returns:
        `(hash, thumbnail)`: the 64-bit hash as an int and the `float32 [32, 32]` grey
        thumbnail it was computed from (used to confirm hash matches).
    """
    stride = max(1, min(image.shape[:2]) // 256)
    small = fundus.preprocess_fundus(image[::stride, ::stride], HASH_SOURCE_SIZE).numpy()
    return phash64(small), grey_thumbnail(small)


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


def decode_to_rgb(data: bytes, max_pixels: int) -> tuple[np.ndarray, str]:
    """Checks the header size, then decodes to RGB `uint8 [H, W, 3]`.

    TensorFlow (the decoder serving uses) decodes first: RGBA, grayscale, palette, 16-bit PNG
    and CMYK JPEG all come out as RGB. What TF refuses but PIL reads falls back to PIL.

    Args:
        data: bytes. The encoded file.
        max_pixels: int. Images with more pixels (read from the header) are refused undecoded.

    Returns:
        `(image, decoder)` with decoder `"tf"` or `"pil"`.

    Raises:
        ValueError: with a short reason for empty, unidentifiable, too large, truncated or
            corrupt images.
    """
    if not data:
        raise ValueError("empty file (0 bytes)")
    try:
        with PIL.Image.open(io.BytesIO(data)) as im:
            width, height = im.size
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
    try:
        image = fundus.decode_image(tf.constant(data)).numpy()
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
    if image.shape[:2] != (height, width):
        raise ValueError(
            f"decoded {image.shape[1]}x{image.shape[0]} but header says {width}x{height}"
        )
    return image, decoder


def _process(
    source: _Source,
    id_code: str,
    relpath: str | None,
    size: int,
    ben_graham: bool,
    max_pixels: int,
    scratch: epath.Path,
) -> _Processed:
    """Reads, checks, decodes, preprocesses and hashes one image; writes its PNG to scratch."""
    if relpath is None:
        return _Processed(id_code, "", ok=False, reason="missing file")
    try:
        data = source.read(relpath, max_bytes=max(8 * max_pixels, 1 << 20))
        image, decoder = decode_to_rgb(data, max_pixels)
    except FileNotFoundError:
        return _Processed(id_code, relpath, ok=False, reason="missing file")
    except _TooLarge as e:
        return _Processed(id_code, relpath, ok=False, reason=f"refused undecoded: file is {e}")
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        return _Processed(id_code, relpath, ok=False, reason=str(e))
    stored = fundus.preprocess_fundus(image, size, use_ben_graham=ben_graham)
    phash, thumb = hash_image(image)
    (scratch / f"{id_code}.png").write_bytes(
        tf.io.encode_png(stored, compression=PNG_COMPRESSION).numpy()
    )
    return _Processed(
        id_code,
        relpath,
        ok=True,
        height=int(image.shape[0]),
        width=int(image.shape[1]),
        phash=phash,
        thumb=thumb,
        decoder=decoder,
    )


# --------------------------------------------------------------------------------------------
# Duplicates and splits (pure functions of ids, hashes and grades)
# --------------------------------------------------------------------------------------------


def group_duplicates(
    hashes: dict[str, int],
    max_distance: int,
    thumbs: dict[str, np.ndarray] | None = None,
    max_thumb_diff: float = float("inf"),
) -> list[list[str]]:
    """Groups ids whose 64-bit hashes differ in at most `max_distance` bits (union-find).

    Args:
        hashes: `{id_code: hash}`.
        max_distance: int. Hamming threshold (0 = identical hashes only).
        thumbs: `{id_code: float32 [32, 32]}`. When given, a hash match only counts when the
            thumbnails' mean absolute difference is at most `max_thumb_diff`.
        max_thumb_diff: float. Thumbnail confirmation threshold. Defaults to no limit.

    Returns:
        Groups of 2+ ids, each sorted, sorted by first id.
    """
    ids = sorted(hashes)
    if len(ids) < 2:
        return []
    values = np.array([hashes[i] for i in ids], dtype=np.uint64)
    parent = list(range(len(ids)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    chunk = 512
    for start in range(0, len(ids), chunk):
        block = values[start : start + chunk, None] ^ values[None, :]
        rows, cols = np.nonzero(np.bitwise_count(block) <= max_distance)
        for r, c in zip(rows + start, cols, strict=True):
            if c > r:
                if thumbs is not None:
                    diff = np.abs(thumbs[ids[r]] - thumbs[ids[c]]).mean()
                    if diff > max_thumb_diff:
                        continue
                a, b = find(int(r)), find(int(c))
                if a != b:
                    parent[max(a, b)] = min(a, b)
    groups: dict[int, list[str]] = collections.defaultdict(list)
    for i, id_code in enumerate(ids):
        groups[find(i)].append(id_code)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def _split_key(id_code: str) -> str:
    return hashlib.sha256(f"aptos2019/validation/{id_code}".encode()).hexdigest()


def assign_validation(
    grades: dict[str, int],
    groups: Sequence[Sequence[str]] = (),
    fraction: float = VALIDATION_FRACTION,
) -> set[str]:
    """The deterministic split rule: which train ids go to validation.

    A pure function of the ids, their CSV grades and the duplicate groups (no RNG state):
    each duplicate group (a photo without duplicates is a group of one) is represented by its
    smallest id; groups are stratified by that id's grade, ordered within a grade by
    `sha256("aptos2019/validation/" + id)`, and taken in that order until the group holds
    `fraction * images of that grade` images (rounded half up; at least one group when a
    grade has two or more). Whole groups move together, so no photo
    has a copy on the other side.

    Args:
        grades: `{id_code: grade}` of the labelled images.
        groups: duplicate groups (ids not in `grades` are ignored).
        fraction: float. Target validation fraction per grade. Defaults to 0.1.

    Returns:
        The validation ids.
    """
    group_of = {i: [i] for i in grades}
    for g in groups:
        members = sorted(i for i in g if i in grades)
        for i in members:
            group_of[i] = members
    units = {tuple(m) for m in group_of.values()}
    strata: dict[int, list[tuple[str, ...]]] = collections.defaultdict(list)
    for unit in units:
        strata[grades[unit[0]]].append(unit)
    chosen: set[str] = set()
    for grade in sorted(strata):
        items = sorted(strata[grade], key=lambda u: _split_key(u[0]))
        n_images = sum(len(u) for u in items)
        target = math.floor(fraction * n_images + 0.5)  # half-up, unlike round()
        if target == 0 and len(items) >= 2:
            target = 1  # tiny sets still get one validation group per grade
        taken = 0
        for unit in items:
            if taken >= target:
                break
            chosen.update(unit)
            taken += len(unit)
    return chosen


def train_ids_sha256(ids: Iterable[str]) -> str:
    """Fingerprint of a set of train ids: sha256 of the sorted ids joined by newlines."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def format_validation_ids(ids: Iterable[str], train_ids: Iterable[str]) -> str:
    """The text of a `validation_ids.txt` file (header with the train-id fingerprint).

    Args:
        ids: validation ids.
        train_ids: every train.csv id (for the fingerprint).
    """
    ids = sorted(ids)
    header = (
        "# APTOS 2019 validation split for eyegazer-keras: one id_code per line.\n"
        f"# rule: {SPLIT_RULE}\n"
        f"# train_ids_sha256: {train_ids_sha256(train_ids)}\n"
        f"# count: {len(ids)}\n"
    )
    return header + "".join(f"{i}\n" for i in ids)


def read_validation_ids(path: str | epath.PathLike) -> tuple[list[str], str | None]:
    """Reads a `validation_ids.txt`: ids and the train-id fingerprint (None if absent).

    Args:
        path: path. The file; a missing file reads as no ids.
    """
    path = epath.Path(path)
    if not path.exists():
        return [], None
    ids, fingerprint = [], None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            m = _TRAIN_IDS_SHA_RE.match(line)
            if m:
                fingerprint = m.group(1)
            continue
        ids.append(line)
    return ids, fingerprint


# --------------------------------------------------------------------------------------------
# The builder
# --------------------------------------------------------------------------------------------


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for APTOS 2019 (manual download from Kaggle).

    Args:
        max_bad_fraction: float. The build fails when more than this fraction of the images
            named by the CSVs is missing, unreadable or refused. Defaults to 0.01.
        max_megapixels: float. Images with more megapixels (read from the header) are refused
            without being decoded. Defaults to 50.
        num_workers: int. Decoding threads. Defaults to the number of CPUs.
        validation_ids_file: path. The published validation list. Defaults to the
            `validation_ids.txt` committed next to this file.
        **kwargs: passed to `tfds.core.GeneratorBasedBuilder` (`data_dir`, `config`, ...).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [
        make_config(512),
        make_config(512, ben_graham=True),
        make_config(256),
        make_config(512, conflict_policy="drop"),
        make_config(512, conflict_policy="majority"),
    ]
    DEFAULT_CONFIG_NAME = "512"

    def __init__(
        self,
        *,
        max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
        max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
        num_workers: int | None = None,
        validation_ids_file: str | epath.PathLike | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.max_bad_fraction = float(max_bad_fraction)
        self.max_megapixels = float(max_megapixels)
        self.num_workers = num_workers
        self.validation_ids_file = validation_ids_file
        self._original_state.update(
            max_bad_fraction=max_bad_fraction,
            max_megapixels=max_megapixels,
            num_workers=num_workers,
            validation_ids_file=validation_ids_file,
        )
        self._plan: dict[str, list[dict]] = {}

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.size
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                    "id_code": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=list(GRADE_NAMES)),
                    "has_label": tfds.features.Scalar(dtype=np.bool_),
                    "original_diagnosis": tfds.features.Scalar(dtype=np.int32),
                    "original_height": tfds.features.Scalar(dtype=np.int32),
                    "original_width": tfds.features.Scalar(dtype=np.int32),
                    "image_hash": tfds.features.Text(),
                    "duplicate_group": tfds.features.Text(),
                    "label_conflict": tfds.features.Scalar(dtype=np.bool_),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://www.kaggle.com/competitions/aptos2019-blindness-detection",
        )

    # The whole plan (checks, decode, hash, groups, split) is made here, before any example is
    # written: duplicates can only be grouped once every image has been hashed.
    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        source = open_source(dl_manager.manual_dir)
        try:
            plan, report = self._plan_build(source)
        finally:
            source.close()
        validation_text = report["validation"].pop("computed_file_text")
        (epath.Path(self.data_dir) / REPORT_NAME).write_text(json.dumps(report, indent=2))
        # The rule's list, ready to be committed as datasets/aptos2019/validation_ids.txt.
        (epath.Path(self.data_dir) / VALIDATION_IDS_NAME).write_text(validation_text)
        self._plan = plan
        return {name: self._generate_examples(name) for name in ("train", "validation", "test")}

    def _generate_examples(self, split: str) -> Iterator[tuple[str, dict]]:
        """Yields the planned examples of `split`; their PNGs were written once, at decode."""
        scratch = epath.Path(self.data_dir) / "_scratch"
        rows = self._plan.get(split, [])
        for row in rows:
            example = dict(row)
            example["image"] = (scratch / f"{row['id_code']}.png").read_bytes()
            yield row["id_code"], example
        # The split is written: free its scratch PNGs (and the folder once every split is done).
        for row in rows:
            path = scratch / f"{row['id_code']}.png"
            if path.exists():
                path.unlink()
        if scratch.exists() and not any(scratch.iterdir()):
            scratch.rmdir()

    # ----------------------------------------------------------------------------------------

    def _plan_build(self, source: _Source) -> tuple[dict[str, list[dict]], dict]:
        config = self.builder_config
        files = source.files()
        file_set = set(files)
        for name in (TRAIN_CSV, TEST_CSV):
            if name not in file_set:
                raise Aptos2019BuildError(
                    f"{source.description}: no {name}. Expected the Kaggle layout ({TRAIN_CSV}, "
                    f"{TEST_CSV}, {TRAIN_DIR}/, {TEST_DIR}/); re-download the competition data."
                )
        big = 1 << 28
        train = parse_labels_csv(source.read(TRAIN_CSV, big), TRAIN_CSV, require_diagnosis=True)
        test = parse_labels_csv(source.read(TEST_CSV, big), TEST_CSV, require_diagnosis=False)
        both = sorted(set(train) & set(test))
        if both:
            raise Aptos2019BuildError(
                f"id_code {both[0]!r} (and {len(both) - 1} more) is in both {TRAIN_CSV} and "
                f"{TEST_CSV}; delete it from one of them."
            )

        # Map ids to image files; find images no CSV row names.
        by_folder: dict[str, dict[str, str]] = {TRAIN_DIR: {}, TEST_DIR: {}}
        unlisted = []
        for rel in sorted(files):
            folder, _, fname = rel.partition("/")
            if folder not in by_folder or not fname or "/" in fname:
                continue
            stem, dot, ext = fname.rpartition(".")
            if not dot or f".{ext.lower()}" not in IMAGE_EXTENSIONS:
                unlisted.append(rel)
                continue
            known = train if folder == TRAIN_DIR else test
            if stem not in known:
                unlisted.append(rel)
                continue
            previous = by_folder[folder].get(stem)
            if previous is None or rel.lower().endswith(".png"):
                by_folder[folder][stem] = rel
        if unlisted:
            logger.warning(
                "aptos2019: %d image file(s) are named by no CSV row and are ignored, e.g. %s",
                len(unlisted),
                unlisted[0],
            )

        jobs = [(i, by_folder[TRAIN_DIR].get(i), TRAIN_DIR) for i in train]
        jobs += [(i, by_folder[TEST_DIR].get(i), TEST_DIR) for i in test]
        workers = self.num_workers or multiprocessing.cpu_count()
        max_pixels = int(self.max_megapixels * 1e6)
        scratch = epath.Path(self.data_dir) / "_scratch"
        if scratch.exists():
            scratch.rmtree()
        scratch.mkdir(parents=True)
        results: dict[str, _Processed] = {}
        start = time.perf_counter()
        logger.info(
            "aptos2019 [%s]: decoding %d images from %s with %d threads",
            config.name,
            len(jobs),
            source.description,
            workers,
        )
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [
                pool.submit(
                    _process, source, i, rel, config.size, config.ben_graham, max_pixels, scratch
                )
                for i, rel, _ in jobs
            ]
            step = max(1, len(futures) // 10)
            for n, future in enumerate(futures, start=1):
                r = future.result()
                results[r.id_code] = r
                if n % step == 0:
                    elapsed = time.perf_counter() - start
                    logger.info(
                        "aptos2019: %d/%d images (%.1f img/s)", n, len(futures), n / elapsed
                    )
        seconds = time.perf_counter() - start
        rate = len(jobs) / seconds if seconds > 0 else float("inf")
        logger.info(
            "aptos2019 [%s]: decoded %d images in %.1f s: %.1f img/s (%d threads)",
            config.name,
            len(jobs),
            seconds,
            rate,
            workers,
        )

        folder_of = {i: folder for i, _, folder in jobs}
        bad = [r for r in results.values() if not r.ok]
        skipped = [
            {
                "id_code": r.id_code,
                "file": r.relpath or f"{folder_of[r.id_code]}/{r.id_code}.png",
                "reason": r.reason,
            }
            for r in sorted(bad, key=lambda r: r.id_code)
        ]
        for s in skipped:
            logger.warning("aptos2019: skipped %s: %s", s["file"], s["reason"])
        bad_fraction = len(bad) / max(1, len(jobs))
        report: dict[str, Any] = {
            "dataset": "aptos2019",
            "config": config.name,
            "version": str(self.version),
            "source": source.description,
            "conflict_policy": config.conflict_policy,
            "duplicate_max_distance": config.duplicate_max_distance,
            "duplicate_max_thumb_diff": config.duplicate_max_thumb_diff,
            "max_bad_fraction": self.max_bad_fraction,
            "max_megapixels": self.max_megapixels,
            "timing": {
                "images": len(jobs),
                "seconds": round(seconds, 3),
                "images_per_second": round(rate, 2),
                "workers": workers,
            },
            "skipped": skipped,
            "bad_fraction": bad_fraction,
            "unlisted_images": unlisted,
            "pil_fallback": sorted(r.id_code for r in results.values() if r.decoder == "pil"),
        }
        if bad_fraction > self.max_bad_fraction:
            first = "; ".join(f"{s['file']} ({s['reason']})" for s in skipped[:3])
            raise Aptos2019BuildError(
                f"{len(bad)} of {len(jobs)} images ({bad_fraction:.2%}) are missing, unreadable "
                f"or refused, more than max_bad_fraction={self.max_bad_fraction:.2%}; first: "
                f"{first}. Re-download the data or raise max_bad_fraction.",
                report=report,
            )

        good = {i: r for i, r in results.items() if r.ok}
        hashes = {i: r.phash for i, r in good.items()}
        groups = group_duplicates(
            hashes,
            config.duplicate_max_distance,
            {i: r.thumb for i, r in good.items()},
            config.duplicate_max_thumb_diff,
        )
        big_groups = [g for g in groups if len(g) > 10]
        if big_groups:
            logger.warning(
                "aptos2019: %d duplicate group(s) have more than 10 photos (largest: %d, from "
                "%s); check the build report, the thresholds may be joining different eyes.",
                len(big_groups),
                max(len(g) for g in big_groups),
                big_groups[0][0],
            )
        group_id = {i: g[0] for g in groups for i in g}
        good_train = {i: train[i] for i in train if i in good}

        # Validation: the committed list when it belongs to this train.csv, else the rule.
        computed = assign_validation(good_train, groups)
        list_path = (
            epath.Path(self.validation_ids_file)
            if self.validation_ids_file
            else epath.Path(__file__).parent / VALIDATION_IDS_NAME
        )
        committed, fingerprint = read_validation_ids(list_path)
        actual_fp = train_ids_sha256(train)
        if committed and fingerprint not in (None, actual_fp):
            logger.warning(
                "aptos2019: %s was made for another train.csv (train_ids_sha256 differs); "
                "using the deterministic rule instead.",
                list_path,
            )
            committed = []
        moved: list[str] = []
        if committed:
            validation = {i for i in committed if i in good_train}
            unknown = sorted(set(committed) - set(train))
            for g in groups:
                members = [i for i in g if i in good_train]
                if any(i in validation for i in members):
                    extra = [i for i in members if i not in validation]
                    moved.extend(extra)
                    validation.update(extra)
            validation_source = str(list_path)
        else:
            validation = computed
            unknown = []
            validation_source = f"rule {SPLIT_RULE}"

        def split_of(i: str) -> str:
            if i in test:
                return "test"
            return "validation" if i in validation else "train"

        # Conflicts and the policy.
        label_of = dict(good_train)
        dropped: set[str] = set()
        group_reports = []
        conflicts = 0
        for g in groups:
            labelled = [i for i in g if i in good_train]
            grades = sorted({good_train[i] for i in labelled})
            conflict = len(grades) > 1
            action = "kept"
            if conflict:
                conflicts += 1
                if config.conflict_policy == "drop":
                    dropped.update(labelled)
                    action = "dropped"
                elif config.conflict_policy == "majority":
                    counts = collections.Counter(good_train[i] for i in labelled)
                    grade, count = counts.most_common(1)[0]
                    if count * 2 > len(labelled):
                        for i in labelled:
                            label_of[i] = grade
                        action = f"relabelled to {grade}"
                    else:
                        dropped.update(labelled)
                        action = "dropped (no majority)"

            group_reports.append(
                {
                    "group": g[0],
                    "members": [
                        {
                            "id_code": i,
                            "split": split_of(i),
                            "diagnosis": train.get(i, -1) if i in train else None,
                            "image_hash": f"{hashes[i]:016x}",
                        }
                        for i in g
                    ],
                    "label_conflict": conflict,
                    "crosses_train_test": bool(set(g) & set(test)) and bool(labelled),
                    "action": action,
                }
            )
        conflicting_groups = {g["group"] for g in group_reports if g["label_conflict"]}

        plan: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
        for i in sorted(good):
            r = good[i]
            if i in test:
                split = "test"
            elif i in dropped:
                (scratch / f"{i}.png").unlink()
                continue
            else:
                split = "validation" if i in validation else "train"
            plan[split].append(
                {
                    "id_code": i,
                    "label": label_of.get(i, -1),
                    "has_label": i in train,
                    "original_diagnosis": train.get(i, -1),
                    "original_height": r.height,
                    "original_width": r.width,
                    "image_hash": f"{r.phash:016x}",
                    "duplicate_group": group_id.get(i, ""),
                    "label_conflict": group_id.get(i, "") in conflicting_groups,
                }
            )

        empty = [split for split, rows in plan.items() if not rows]
        if empty:
            raise Aptos2019BuildError(
                f"split {empty[0]!r} would be empty ({len(good)} images decoded, "
                f"{len(bad)} skipped, {len(dropped)} dropped by conflict_policy="
                f"{config.conflict_policy}); check the data or the build report's 'skipped'.",
                report=report,
            )
        report.update(
            {
                "counts": {
                    "train_csv_rows": len(train),
                    "test_csv_rows": len(test),
                    "decoded": len(good),
                    "skipped": len(bad),
                    "unlisted_images": len(unlisted),
                    "duplicate_groups": len(groups),
                    "label_conflict_groups": conflicts,
                    "dropped_by_policy": len(dropped),
                    **{split: len(rows) for split, rows in plan.items()},
                },
                "duplicate_groups": group_reports,
                "validation": {
                    "source": validation_source,
                    "rule": SPLIT_RULE,
                    "train_ids_sha256": actual_fp,
                    "ids": sorted(validation),
                    "moved_with_their_duplicates": sorted(moved),
                    "committed_ids_not_in_train_csv": unknown,
                    "computed_file_text": format_validation_ids(computed, train),
                },
            }
        )
        logger.info(
            "aptos2019 [%s]: train %d, validation %d (%s), test %d; %d skipped, %d duplicate "
            "groups (%d with conflicting grades, policy %s)",
            config.name,
            len(plan["train"]),
            len(plan["validation"]),
            validation_source,
            len(plan["test"]),
            len(bad),
            len(groups),
            conflicts,
            config.conflict_policy,
        )
        return plan, report


def load_build_report(builder: tfds.core.DatasetBuilder) -> dict:
    """Reads the `build_report.json` a finished build wrote next to its data.

    Args:
        builder: a prepared `aptos2019` builder.
    """
    return json.loads((epath.Path(builder.data_dir) / REPORT_NAME).read_text())


def prepare(
    manual_dir: str | epath.PathLike,
    data_dir: str | epath.PathLike | None = None,
    config: str | Aptos2019Config = "512",
    *,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    num_workers: int | None = None,
    validation_ids_file: str | epath.PathLike | None = None,
) -> dict:
    """Builds APTOS 2019 from the Kaggle zip or folder and returns the build report.

    This is what `eyegazer prepare aptos2019 --manual-dir DIR` calls. Bad input raises
    `Aptos2019BuildError` (a `ValueError`) whose message is one line naming the fix.

    Args:
        manual_dir: path. Folder holding `aptos2019-blindness-detection.zip` or its content.
        data_dir: path. TFDS data dir. Defaults to TFDS's default (`~/tensorflow_datasets`).
        config: str or `Aptos2019Config`. Defaults to `"512"`.
        max_bad_fraction: float. See `Builder`. Defaults to 0.01.
        max_megapixels: float. See `Builder`. Defaults to 50.
        num_workers: int. Decoding threads. Defaults to the CPU count.
        validation_ids_file: path. Defaults to the committed `validation_ids.txt`.

    Returns:
        The build report (dict), also written to `<data_dir>/aptos2019/<config>/<version>/`.
    """
    manual = epath.Path(manual_dir).expanduser()
    if not manual.is_dir() or not any(manual.iterdir()):
        raise Aptos2019BuildError(
            f"{manual}: the manual dir does not exist or is empty. Download {ZIP_NAME} from "
            "https://www.kaggle.com/competitions/aptos2019-blindness-detection/data "
            "(or `kaggle competitions download -c aptos2019-blindness-detection`) into it."
        )
    builder = Builder(
        data_dir=None if data_dir is None else str(epath.Path(data_dir).expanduser()),
        config=config,
        max_bad_fraction=max_bad_fraction,
        max_megapixels=max_megapixels,
        num_workers=num_workers,
        validation_ids_file=validation_ids_file,
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
    )
    return load_build_report(builder)
