"""Every file of a download a build did not use, by reason: nothing is dropped silently.

Each builder lists the files it read (the label CSVs, the photos of its jobs); every other file
of the source lands in the build report's `not_used` (`{reason: [files]}`), in `counts`
(`not_used`, `not_used_by_reason`) and in the summary `eyegazer prepare` prints. What an
operating system leaves behind (macOS `._*` AppleDouble files and `__MACOSX/`, `.DS_Store`,
`Thumbs.db`) is ignored under its own reason, never an error.

Example:

```python
from eyegazer_datasets.common import inventory

unused = inventory.not_used(
    ["train.csv", "train_images/a.png", "train_images/._a.png", "notes.txt"],
    used={"train.csv", "train_images/a.png"},
)
assert unused == {
    inventory.SYSTEM_FILE: ["train_images/._a.png"],
    inventory.NOT_PART_OF_LAYOUT: ["notes.txt"],
}
assert inventory.summary(unused).startswith("2 file(s) not used")
```
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterable, Mapping

from eyegazer_keras.fundus import formats

from . import label_csv

SYSTEM_FILE = "system file (macOS ._* or __MACOSX/, .DS_Store, Thumbs.db): ignored"
NOT_PART_OF_LAYOUT = "not part of the dataset's layout"
UNLISTED = "a photo no CSV row names"
SAME_ID = "another file of the same id was used"
READ_FORMATS = ", ".join(sorted(formats.IMAGE_EXTENSIONS))


def not_a_photo(relpath: str) -> str:
    """The reason for a file whose extension is not a photo format the builders read."""
    ext = os.path.splitext(relpath.rsplit("/", 1)[-1])[1]
    if not ext:
        return (
            "no file extension, so not read as a photo (a DICOM file without one: rename it "
            "to .dcm)"
        )
    return f"not a photo format the builders read ({ext}; they read {READ_FORMATS})"


def not_used(
    files: Iterable[str],
    used: Iterable[str],
    reason_of: Callable[[str], str] | Mapping[str, str] | None = None,
) -> dict[str, list[str]]:
    """`{reason: [files]}` of every file not in `used`.

    Args:
        files: every file of the source (relative POSIX paths).
        used: the files the build read.
        reason_of: `relpath -> reason` (a callable or a dict) for the builder's own reasons;
            a system file is always `SYSTEM_FILE`; anything else defaults to
            `NOT_PART_OF_LAYOUT`.

    Returns:
        Reasons in sorted order, each with its files sorted (printable: odd bytes as `\\xNN`).
    """
    used = set(used)
    if isinstance(reason_of, Mapping):
        mapping = reason_of
        reason_of = lambda rel: mapping.get(rel, "")  # noqa: E731
    out: dict[str, list[str]] = collections.defaultdict(list)
    for rel in files:
        if rel in used:
            continue
        if formats.is_system_file(rel):
            reason = SYSTEM_FILE
        else:
            reason = (reason_of(rel) if reason_of else "") or NOT_PART_OF_LAYOUT
        out[reason].append(label_csv.display_text(rel))
    return {reason: sorted(out[reason]) for reason in sorted(out)}


def counts(unused: Mapping[str, list[str]]) -> dict[str, int]:
    """`{reason: number of files}`."""
    return {reason: len(files) for reason, files in unused.items()}


def summary(unused: Mapping[str, list[str]]) -> str:
    """One line: `"3 file(s) not used (system file ...: 2; ...: 1), e.g. a/._x.png"`, or `""`."""
    total = sum(len(v) for v in unused.values())
    if not total:
        return ""
    parts = "; ".join(f"{reason}: {len(files)}" for reason, files in unused.items())
    first = next(f[0] for f in unused.values() if f)
    return f"{total} file(s) not used ({parts}), e.g. {first}; listed in the build report"
