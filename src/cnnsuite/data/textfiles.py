"""The one reader of the CSV files and text lists a user brings (labels, split lists).

They come from spreadsheets and editors on every system: Excel starts a "CSV UTF-8" file with
a byte-order mark (which otherwise sticks to the first column's name, ``'\\ufeffimage'``),
Windows ends lines with ``\\r\\n``, old Macs with ``\\r``, and spreadsheets quote fields that
hold commas. Everything here reads ``utf-8-sig`` with universal newlines and the :mod:`csv`
module's quoting, so each of these reads as the plain file it stands for.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import ConfigError

ENCODING = "utf-8-sig"


def read_csv(path: str | Path, columns: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """The rows of the CSV file at ``path`` as ``{column name: value}``, values stripped of
    surrounding spaces; a header lacking one of ``columns`` (or that does not decode) raises
    :class:`ConfigError` naming the file and what was expected. A row's line number in the
    file is its index + 2: no field of these files (names, labels, numbers) spans lines, and a
    quote left open would take the rest of the file as one value, so a row that spans lines, or
    whose quotes do not close before a comma, is an error naming it."""
    path = Path(path)
    rows = []
    try:
        with path.open(newline="", encoding=ENCODING) as file:
            reader = csv.DictReader(file, strict=True)
            found = [name.strip() for name in reader.fieldnames or []]
            missing = [c for c in columns if c not in found]
            if missing:
                raise ConfigError(f"{path}: expected columns {','.join(columns)}, found {found}")
            reader.fieldnames = found
            for number, row in enumerate(reader, start=2):
                cells = [c for v in row.values() for c in (v if isinstance(v, list) else [v])]  # extra cells: a list
                if any("\n" in c or "\r" in c for c in cells if isinstance(c, str)):
                    raise ConfigError(f"{path} row {number}: a quoted field runs on over the next lines; expected "
                                      "one line a row")  # fmt: skip
                rows.append({k: (v or "").strip() for k, v in row.items() if k is not None})
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: cannot read as a UTF-8 CSV file ({err})") from None
    except csv.Error as err:  # strict quoting: a quote left open, or text after a closing one
        raise ConfigError(
            f"{path} row {len(rows) + 2}: {err}; expected a quoted field closed on its row, a comma after the quote"
        ) from None
    return rows


def read_lines(path: str | Path) -> list[str]:
    """The lines of the text file at ``path``, stripped of surrounding spaces; blank ones are
    kept (as ``""``), so a line's number in the file is its index + 1."""
    path = Path(path)
    try:
        text = path.read_text(encoding=ENCODING)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: cannot read as a UTF-8 text file ({err})") from None
    return [line.strip() for line in text.splitlines()]
