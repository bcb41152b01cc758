"""Reading a Kaggle-style download: a folder, a zip, or a zip split into parts.

Every eyegazer builder (APTOS 2019, EyePACS 2015, graded class folders) reads its manual download
through `open_source`, which accepts what users actually have:

* the extracted folder (`train.csv` + `train_images/`, `trainLabels.csv` + `train/`, ...);
* the folder holding the zip(s) Kaggle ships, read in place, never extracted;
* the zip file itself;
* a zip split into parts (`train.zip.001`, `train.zip.002`, ...: the way Kaggle ships EyePACS),
  read as one archive without joining the parts on disk.

Files are addressed by relative POSIX path (`train/10_left.jpeg`); the label CSVs in them are
read by `label_csv`. Every problem raises `DatasetBuildError`, one line naming the file and the fix.

Example:

```python
from eyegazer_datasets.common import kaggle_source, label_csv

source = kaggle_source.open_source("~/Downloads", anchor="trainLabels.csv")
rows = label_csv.read_csv(source.read("trainLabels.csv"), "trainLabels.csv", ["image", "level"])
```
"""

from __future__ import annotations

import io
import os
import re
import threading
import zipfile
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from etils import epath

# Largest CSV read (bytes); anything bigger is not a label file.
MAX_CSV_BYTES = 1 << 28
_PART_RE = re.compile(r"^(?P<base>.+\.zip)\.(?P<n>\d{3})$")


class DatasetBuildError(ValueError):
    """Bad input to a builder: the one-line message names the file, the row and the fix.

    Args:
        message: str. One line: what is wrong, where, and what to do.
        report: dict. The build report so far (skipped files, counts), when there is one.
    """

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report


class FileTooLarge(Exception):
    """A file is larger than the caller's `max_bytes`; the message gives its size."""


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


class Source:
    """Files of a download by relative POSIX path. Thread-safe `read`.

    A subclass fills `_index` (`{relpath: what reads it}`) or overrides `files`.

    Attributes:
        description: str. Where the files come from, for reports and errors.
    """

    description: str = ""
    _index: dict[str, Any]

    def files(self) -> list[str]:
        """Every file, as relative POSIX paths."""
        return list(self._index)

    def read(self, relpath: str, max_bytes: int = MAX_CSV_BYTES) -> bytes:
        """The bytes of one file.

        Raises:
            FileNotFoundError: no such file.
            FileTooLarge: the file is larger than `max_bytes` (nothing is read).
        """
        raise NotImplementedError

    def _entry(self, relpath: str) -> Any:
        """What `_index` holds for `relpath`.

        Raises:
            FileNotFoundError: no such file.
        """
        entry = self._index.get(relpath)
        if entry is None:
            raise FileNotFoundError(relpath)
        return entry

    def close(self) -> None:
        """Closes open archive handles."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FolderSource(Source):
    """A folder: its top-level files and every file below the folders in `subdirs`.

    Files in nested folders are listed too (at any depth, symbolic links to folders not
    followed), so a builder can read them or say why it did not.

    Args:
        root: path. The folder.
        subdirs: folder names to list, or None for every immediate subfolder. Defaults to None.
    """

    def __init__(self, root: epath.PathLike, subdirs: Sequence[str] | None = None):
        self.root = epath.Path(root)
        self.subdirs = subdirs
        self.description = f"folder {self.root}"

    def files(self) -> list[str]:
        out = []
        for p in sorted(self.root.iterdir()):
            if p.is_file():
                out.append(p.name)
            elif p.is_dir() and (self.subdirs is None or p.name in self.subdirs):
                out.extend(_walk(p, p.name))
        return out

    def read(self, relpath: str, max_bytes: int = MAX_CSV_BYTES) -> bytes:
        path = self.root / relpath
        if not path.is_file():
            raise FileNotFoundError(relpath)
        size = path.stat().length
        if size > max_bytes:
            raise FileTooLarge(f"{size / 1e6:.0f} MB")
        return path.read_bytes()


def _walk(folder: epath.Path, prefix: str) -> list[str]:
    """Every file below `folder` as `prefix/relative/path`, sorted (links to folders not followed)."""
    out = []
    for top, dirs, names in os.walk(os.fspath(folder)):
        dirs.sort()
        rel = os.path.relpath(top, os.fspath(folder)).replace(os.sep, "/")
        base = prefix if rel == "." else f"{prefix}/{rel}"
        out.extend(f"{base}/{n}" for n in sorted(names) if os.path.isfile(os.path.join(top, n)))
    return out


class _ConcatenatedParts(io.RawIOBase):
    """The byte-wise concatenation of `x.zip.001`, `x.zip.002`, ... as one seekable file."""

    def __init__(self, parts: Sequence[epath.Path]):
        super().__init__()
        self._parts = list(parts)
        self._sizes = [p.stat().length for p in self._parts]
        self._starts = [sum(self._sizes[:i]) for i in range(len(self._sizes))]
        self._size = sum(self._sizes)
        self._pos = 0
        self._handles: dict[int, Any] = {}

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            index = max(i for i, s in enumerate(self._starts) if s <= self._pos)
            handle = self._handles.get(index)
            if handle is None:
                handle = self._handles[index] = self._parts[index].open("rb")
            handle.seek(self._pos - self._starts[index])
            want = min(len(view) - done, self._starts[index] + self._sizes[index] - self._pos)
            chunk = handle.read(want)
            if not chunk:
                break
            view[done : done + len(chunk)] = chunk
            done += len(chunk)
            self._pos += len(chunk)
        return done

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        super().close()


def _is_unsafe_member(name: str) -> bool:
    norm = name.replace("\\", "/")
    return (
        norm.startswith("/")
        or bool(re.match(r"^[A-Za-z]:", norm))
        or ".." in norm.split("/")
        or "\x00" in norm
    )


def _layout_prefix(names: Sequence[str], anchor: str | None) -> str:
    """The member folder a zip's layout starts in (`""`: the archive root); see `ZipSource`."""
    anchored = sorted(
        (n for n in names if anchor and n.rsplit("/", 1)[-1] == anchor),
        key=lambda n: (n.count("/"), n),
    )
    if anchored:
        return anchored[0][: -len(anchor)]
    tops = {n.split("/", 1)[0] for n in names}
    # One top folder above everything, unless it is itself a layout folder (`train/x.jpeg`).
    if len(tops) == 1 and all(n.count("/") >= 2 for n in names):
        return tops.pop() + "/"
    return ""


class ZipSource(Source):
    """A zip read in place (one file or split parts), one handle per reading thread.

    Members are addressed relative to the folder holding the shallowest `anchor` file (so a
    zip with a top folder, `aptos2019-blindness-detection/train.csv`, reads as `train.csv`);
    without an anchor in the archive, relative to a single top folder when every member sits in
    one, else to the archive root.

    Args:
        parts: the zip path, or its parts `x.zip.001, x.zip.002, ...` in order.
        anchor: str. A file name that marks the layout's root. Defaults to None.
        hint: str. What to re-download, for error messages. Defaults to "the Kaggle download".

    Raises:
        DatasetBuildError: not a readable zip, or a member pointing outside the archive.
    """

    def __init__(
        self,
        parts: epath.PathLike | Sequence[epath.PathLike],
        anchor: str | None = None,
        hint: str = "the Kaggle download",
    ):
        if isinstance(parts, str | os.PathLike):
            parts = [parts]
        self.parts = [epath.Path(p) for p in parts]
        self.path = self.parts[0]
        names = ", ".join(p.name for p in self.parts)
        self.description = f"zip {self.path}" + (
            f" ({len(self.parts)} parts: {names})" if len(self.parts) > 1 else ""
        )
        self._local = threading.local()
        self._handles: list[Any] = []
        self._lock = threading.Lock()
        try:
            infos = self._zip().infolist()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            missing = (
                f" (after {self.parts[-1].name} a part may be missing, or one is incomplete)"
                if len(self.parts) > 1
                else ""
            )
            raise DatasetBuildError(
                f"{self.path}: not a readable zip{missing} ({e}). Re-download {hint}."
            ) from None
        unsafe = [i.filename for i in infos if _is_unsafe_member(i.filename)]
        if unsafe:
            raise DatasetBuildError(
                f"{self.path}: member {unsafe[0]!r} (and {len(unsafe) - 1} more) points outside "
                f"the archive; refusing to read this zip. Re-download {hint}."
            )
        files = [i for i in infos if not i.is_dir()]
        prefix = _layout_prefix([i.filename for i in files], anchor)
        self._index = {i.filename[len(prefix) :]: i for i in files if i.filename.startswith(prefix)}

    def _zip(self) -> zipfile.ZipFile:
        zf = getattr(self._local, "zf", None)
        if zf is None:
            handle = (
                self.parts[0].open("rb")
                if len(self.parts) == 1
                else io.BufferedReader(_ConcatenatedParts(self.parts), 1 << 16)
            )
            zf = zipfile.ZipFile(handle)
            self._local.zf = zf
            with self._lock:
                self._handles.append((zf, handle))
        return zf

    def read(self, relpath: str, max_bytes: int = MAX_CSV_BYTES) -> bytes:
        info = self._entry(relpath)
        if info.file_size > max_bytes:
            raise FileTooLarge(f"{info.file_size / 1e6:.0f} MB uncompressed")
        return self._zip().read(info)

    def close(self) -> None:
        with self._lock:
            for zf, handle in self._handles:
                zf.close()
                handle.close()
            self._handles.clear()


class UnionSource(Source):
    """Several sources seen as one; the first source holding a path wins.

    Args:
        sources: the sources, in priority order (the extracted folder before the zips).
    """

    def __init__(self, sources: Sequence[Source]):
        self.sources = list(sources)
        self.description = " + ".join(s.description for s in self.sources)
        self._index = {}  # relpath -> the source that holds it
        for s in self.sources:
            for rel in s.files():
                self._index.setdefault(rel, s)

    def read(self, relpath: str, max_bytes: int = MAX_CSV_BYTES) -> bytes:
        return self._entry(relpath).read(relpath, max_bytes)

    def close(self) -> None:
        for s in self.sources:
            s.close()


def zip_archives(folder: epath.Path, accept: Callable[[str], bool]) -> list[list[epath.Path]]:
    """The zips in `folder` whose name `accept`s, each as its list of parts.

    `x.zip` is one archive; `x.zip.001`, `x.zip.002`, ... (without `x.zip`) are the parts of
    one archive, in order. `accept` receives the archive name (`x.zip`).
    """
    singles, parted = {}, {}
    for p in sorted(folder.iterdir()):
        if not p.is_file():
            continue
        m = _PART_RE.match(p.name)
        if m and accept(m.group("base")):
            parted.setdefault(m.group("base"), []).append((int(m.group("n")), p))
        elif p.name.endswith(".zip") and accept(p.name):
            singles[p.name] = [p]
    out = {}
    for base, numbered in parted.items():
        if base not in singles:
            out[base] = _complete_parts(folder, base, numbered)
    out = {base: parts for base, parts in out.items() if base not in singles}
    out.update(singles)
    return [out[name] for name in sorted(out)]


def _complete_parts(
    folder: epath.Path, base: str, numbered: list[tuple[int, epath.Path]]
) -> list[epath.Path]:
    """The parts in order, checked to run from `.001` without a gap.

    Raises:
        DatasetBuildError: a part is missing (named), e.g. `train.zip.002` between .001 and .003.
    """
    numbered = sorted(numbered)
    present = {n for n, _ in numbered}
    missing = [n for n in range(1, numbered[-1][0] + 1) if n not in present]
    if missing:
        names = ", ".join(f"{base}.{n:03d}" for n in missing)
        found = ", ".join(p.name for _, p in numbered)
        raise DatasetBuildError(
            f"{folder}: {names} missing from the split zip {base} (found {found}); every part "
            f"is needed to read any photo. Download {names} into {folder}."
        )
    return [p for _, p in numbered]


def _parts_of(path: epath.Path) -> list[epath.Path]:
    m = _PART_RE.match(path.name)
    if not m:
        return [path]
    base = m.group("base")
    numbered = []
    for p in path.parent.iterdir():
        part = _PART_RE.match(p.name)
        if part and part.group("base") == base:
            numbered.append((int(part.group("n")), p))
    return _complete_parts(path.parent, base, numbered)


def open_source(
    manual_dir: epath.PathLike,
    *,
    anchor: str | None,
    extracted_names: Iterable[str] = (),
    accept_zip: Callable[[str], bool] = lambda name: True,
    subdirs: Sequence[str] | None = None,
    hint: str = "the Kaggle download",
    what: str = "the download",
) -> Source:
    """Finds a download in `manual_dir`: the extracted folder, the folder holding the zip(s),
    the zip file itself, or the first part of a split zip.

    A folder is read together with the accepted zips inside it (a folder holding
    `trainLabels.csv` and `train.zip.001..005` is one layout); extracted files win over zip
    members of the same path.

    Args:
        manual_dir: path. The manual dir, the extracted folder, a zip, or `x.zip.001`.
        anchor: str or None. The file that marks the layout root (e.g. `train.csv`); the
            download is refused without it. None: no such file (class folders).
        extracted_names: folder names the extracted download may sit in below `manual_dir`
            (e.g. `aptos2019-blindness-detection`). Defaults to none.
        accept_zip: predicate on an archive name: which zips in a folder belong to the
            download. Defaults to every zip.
        subdirs: folders of the extracted layout to list (None: every immediate subfolder).
        hint: str. What to download, for errors. Defaults to "the Kaggle download".
        what: str. What was looked for, for errors (e.g. "aptos2019-blindness-detection.zip
            nor an extracted folder with train.csv").

    Returns:
        A `Source`; close it when done (or use it as a context manager).

    Raises:
        DatasetBuildError: nothing of the layout is there (one line naming what to download).
    """
    root = epath.Path(manual_dir).expanduser()
    if root.is_file():
        return _open_file(root, anchor, hint)
    if not root.is_dir() or not any(root.iterdir()):
        raise DatasetBuildError(
            f"{root}: the manual dir does not exist or is empty. Download {hint} into it "
            "(the zip, its parts, or the extracted folder)."
        )
    folder = _layout_folder(root, anchor, extracted_names)
    archives = zip_archives(folder, accept_zip)
    archive_files = {p.name for parts in archives for p in parts}
    # The folder counts when it holds more than the zips (a CSV, an extracted folder).
    sources: list[Source] = []
    if any(p.name not in archive_files for p in folder.iterdir()):
        sources.append(FolderSource(folder, subdirs))
    sources += [ZipSource(parts, anchor=anchor, hint=hint) for parts in archives]
    union = UnionSource(sources)
    if anchor and anchor not in union.files():
        union.close()
        raise DatasetBuildError(f"{root}: found neither {what}. Download {hint} into that folder.")
    return union


def _open_file(path: epath.Path, anchor: str | None, hint: str) -> Source:
    """A zip, or the first part of a split zip, given as the manual dir."""
    if path.name.endswith(".zip") or _PART_RE.match(path.name):
        return ZipSource(_parts_of(path), anchor=anchor, hint=hint)
    raise DatasetBuildError(
        f"{path}: not a zip and not a folder. Pass the extracted folder, the folder holding "
        f"the zip, or the zip itself ({hint})."
    )


def _layout_folder(root: epath.Path, anchor: str | None, extracted_names: Iterable[str]):
    """`root`, or the extracted folder below it that holds the `anchor` file."""
    if anchor and not (root / anchor).exists():
        for name in extracted_names:
            if (root / name / anchor).exists():
                return root / name
    return root
