"""Reading the label CSVs of a download (`train.csv`, `trainLabels.csv`, groups files).

CSVs are read with the `csv` module: a UTF-8 BOM, CRLF, quoted fields with commas, extra
columns and surrounding whitespace are all accepted, and every problem raises
`kaggle_source.DatasetBuildError` naming the file, the row and the fix ("train.csv row 17
(line 18): diagnosis '7' is not in 0-4. ...").

Example:

```python
from eyegazer_datasets.common import label_csv

grades, _ = label_csv.read_id_grades(b"id_code,diagnosis\\nab12,2\\n", "train.csv",
                                     "id_code", "diagnosis", fix="Fix the row.")
assert grades == {"ab12": 2}
```
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from collections.abc import Sequence

from .kaggle_source import DatasetBuildError

# Refused in an id: path separators and control characters (any other letter, space or symbol
# names a file: `Müller 01`, `photo (2)`).
_BAD_ID_RE = re.compile(r"[/\\\x00-\x1f\x7f]")


@dataclasses.dataclass(frozen=True)
class CsvRow:
    """One data row: `fields` maps lower-cased header names to stripped values.

    Attributes:
        row: int. 1-based data row number (the header is row 0).
        line: int. 1-based line of the file where the row ends.
        fields: dict[str, str].
    """

    row: int
    line: int
    fields: dict[str, str]

    def where(self, filename: str) -> str:
        """`"train.csv row 3 (line 4)"`, the prefix of every row error."""
        return f"{filename} row {self.row} (line {self.line})"


def _text(data: bytes, filename: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetBuildError(
            f"{filename}: not UTF-8 text ({e.reason} at byte {e.start}); re-download it."
        ) from None


def _header(reader, filename: str, required: Sequence[str], expected: str) -> list[str]:
    """The lower-cased column names; checks that every `required` column is there."""
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise DatasetBuildError(
            f"{filename}: empty file or empty header; expected a header line such as "
            f"'{expected}' (re-download it)."
        )
    names = [h.strip().lower() for h in header]
    for column in required:
        if column not in names:
            raise DatasetBuildError(
                f"{filename}: missing column '{column}' (header is {','.join(header)!r}); "
                f"the file starts with '{expected}'. Fix the header or re-download it."
            )
    return names


def _rows(reader, filename: str, names: list[str]) -> list[CsvRow]:
    """The data rows after the header; blank lines are skipped, short rows refused."""
    rows = []
    for cells in reader:
        if not cells or not any(c.strip() for c in cells):
            continue  # blank lines are harmless
        row = CsvRow(len(rows) + 1, reader.line_num, {})
        if len(cells) < len(names):
            raise DatasetBuildError(
                f"{row.where(filename)}: {len(cells)} field(s) but the header has "
                f"{len(names)}: {','.join(cells)!r}. Fix or delete the row."
            )
        fields = {n: c.strip() for n, c in zip(names, cells, strict=False)}
        rows.append(CsvRow(row.row, row.line, fields))
    return rows


def read_csv(
    data: bytes, filename: str, required: Sequence[str], example: str = ""
) -> list[CsvRow]:
    """Parses a label CSV with the `csv` module and checks its header.

    Accepted: a UTF-8 BOM, LF/CRLF/CR line ends, quoted fields (`"blurry, dark"`), extra
    columns in any order, header names in any case, whitespace around names and values, blank
    lines. Rows with fewer fields than the header are refused.

    Args:
        data: bytes. The file content.
        filename: str. Name used in errors.
        required: column names (lower case) that must be in the header.
        example: str. The expected header, for errors. Defaults to `",".join(required)`.

    Returns:
        The data rows in file order.

    Raises:
        DatasetBuildError: not UTF-8, empty, a missing column, a short row, a malformed quote.
    """
    text = _text(data, filename)
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True, strict=True)
    try:
        names = _header(reader, filename, required, example or ",".join(required))
        rows = _rows(reader, filename, names)
    except csv.Error as e:
        raise DatasetBuildError(
            f"{filename} line {reader.line_num}: not valid CSV ({e}). Fix the quoting of that row."
        ) from None
    if not rows:
        raise DatasetBuildError(f"{filename}: no data rows. Re-download it.")
    return rows


def check_image_id(value: str, where: str, column: str) -> str:
    """Checks that an id names a plain file (no folders, no `..`) and returns it.

    Any letters, digits, spaces and symbols are fine (`Müller 01`, `photo (2)`); an id read
    from a file name that is not valid UTF-8 is given with its odd bytes as `\\xNN`.

    Raises:
        DatasetBuildError: empty, `.`/`..`, or holding `/`, `\\` or a control character.
    """
    if not value:
        raise DatasetBuildError(f"{where}: empty {column}. Fill it in or delete the row.")
    bad = _BAD_ID_RE.search(value)
    value = display_text(value)
    if bad or value in (".", ".."):
        what = f"it holds {bad.group()!r}" if bad else "it names a folder"
        raise DatasetBuildError(
            f"{where}: {column} {value!r} is not a plain file name ({what}); an id names one "
            "file: any letters, digits, spaces and symbols except '/', '\\' and control "
            "characters. Fix or delete the row."
        )
    return value


def display_text(text: str) -> str:
    """A file name as printable UTF-8: undecodable bytes (`os.fsdecode` surrogates) as `\\xNN`.

    `"M\\udcfcller"` (the Latin-1 `Müller` on a UTF-8 system) -> `"M\\\\xfcller"`; valid text is
    returned as it is.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def strip_image_extension(
    ids: dict[str, int], filename: str, column: str, extensions
) -> tuple[dict[str, int], int]:
    """`{"10_left.jpeg": 2}` -> `{"10_left": 2}`: ids written with a photo extension.

    Kaggle's CSVs name photos by stem; a CSV re-saved from a file listing often keeps the
    extension. Ids ending in one of `extensions` are read as their stem.

    Args:
        ids: `{id: grade}` in file order.
        filename: str. The CSV's name, for errors.
        column: str. The id column, for errors.
        extensions: the photo extensions (lower case, with the dot).

    Returns:
        `({id without extension: grade}, how many ids had one)`.

    Raises:
        DatasetBuildError: an id appears both with and without an extension.
    """
    out: dict[str, int] = {}
    stripped = 0
    for image_id, grade in ids.items():
        stem, dot, ext = image_id.rpartition(".")
        key = image_id
        if dot and stem and f".{ext.lower()}" in extensions:
            key, stripped = stem, stripped + 1
        if key in out:
            raise DatasetBuildError(
                f"{filename}: {column} {key!r} appears twice once its extension is dropped "
                f"({image_id!r}); delete one of the two rows."
            )
        out[key] = grade
    return out, stripped


def parse_grade(value: str, where: str, column: str, fix: str) -> int:
    """A 0-4 grade from a CSV cell.

    Raises:
        DatasetBuildError: not an integer, or not in 0-4.
    """
    try:
        grade = int(value)
    except ValueError:
        raise DatasetBuildError(
            f"{where}: {column} {value!r} is not an integer grade 0-4. {fix}"
        ) from None
    if not 0 <= grade <= 4:
        raise DatasetBuildError(f"{where}: {column} '{value}' is not in 0-4. {fix}")
    return grade


def read_id_grades(
    data: bytes,
    filename: str,
    id_column: str,
    grade_column: str | None,
    fix: str,
    extra_columns: Sequence[str] = (),
) -> tuple[dict[str, int], dict[str, dict[str, str]]]:
    """Reads `id,grade[,...]` rows: checked ids (unique), grades 0-4 (or -1 without a column).

    Args:
        data: bytes. The CSV file.
        filename: str. Name for errors.
        id_column: str. The id column (e.g. `id_code`, `image`).
        grade_column: str or None. The grade column (e.g. `diagnosis`, `level`); None for an
            unlabelled file (every grade -1).
        fix: str. The fix to suggest for a bad grade.
        extra_columns: further required columns, returned per id.

    Returns:
        `({id: grade}, {id: {extra column: value}})`, both in file order.

    Raises:
        DatasetBuildError: any malformed header, row, id or grade.
    """
    required = [id_column] + ([grade_column] if grade_column else []) + list(extra_columns)
    out: dict[str, int] = {}
    extras: dict[str, dict[str, str]] = {}
    first_row: dict[str, int] = {}
    for row in read_csv(data, filename, required):
        where = row.where(filename)
        image_id = check_image_id(row.fields[id_column], where, id_column)
        if image_id in out:
            raise DatasetBuildError(
                f"{where}: {id_column} {image_id!r} already appears on row {first_row[image_id]}. "
                "Delete one of the two rows."
            )
        grade = -1
        if grade_column:
            grade = parse_grade(row.fields[grade_column], where, grade_column, fix)
        out[image_id] = grade
        extras[image_id] = {c: row.fields[c] for c in extra_columns}
        first_row[image_id] = row.row
    return out, extras
