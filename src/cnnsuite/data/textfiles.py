"""The one reader of the CSV files, text lists and JSON a user brings (labels, split lists, annotations).

They come from spreadsheets and editors on every system: Excel starts a "CSV UTF-8" file with
a byte-order mark (which otherwise sticks to the first column's name, ``'\\ufeffimage'``),
Windows ends lines with ``\\r\\n``, old Macs with ``\\r``, and spreadsheets quote fields that
hold commas. Everything here reads ``utf-8-sig`` with universal newlines and the :mod:`csv`
module's quoting, so each of these reads as the plain file it stands for.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import yaml

from ..errors import ConfigError

ENCODING = "utf-8-sig"


class Row(dict):
    """A CSV row, ``{column name: value}``, that knows its ``line`` in the file (blank lines,
    which the reader skips, are counted) for messages naming it."""

    def __init__(self, cells: dict[str, str], line: int) -> None:
        super().__init__(cells)
        self.line = line


#: what a value past the header's last column most likely means, in a file of one value a column
QUOTE_A_COMMA = 'quote a value that holds a comma: "a, b"'


def read_csv(
    path: str | Path, columns: tuple[str, ...] = (), past_header: str | Callable[[list[str]], str] = QUOTE_A_COMMA
) -> list[Row]:
    """The rows of the CSV file at ``path`` (:class:`Row`), values stripped of surrounding
    spaces, blank lines skipped; a header lacking one of ``columns`` (or that does not decode)
    raises :class:`ConfigError` naming the file and what was expected. No field of these files
    (names, labels, numbers) spans lines, and a quote left open would take the rest of the file
    as one value, so a row that spans lines, or whose quotes do not close before a comma, is an
    error naming its line, as is a row with a value under no column's name, past the header's
    last one or under an empty one (empty cells there, a spreadsheet's trailing commas, read as
    none), with ``past_header``: what the file's reader tells the user to write instead (or the
    function of the header's names that tells it, where the file's layout decides); a first
    column of no name numbering the rows (pandas' ``to_csv``, R's ``write.csv``) reads as none. A
    header naming a column twice is an error too: one of the two values would be lost."""
    path = Path(path)
    rows, line = [], 1
    try:
        with path.open(newline="", encoding=ENCODING) as file:
            reader = csv.reader(file, strict=True)
            found = [name.strip() for name in next(reader, [])]
            missing = [c for c in columns if c not in found]
            if missing:
                raise ConfigError(f"{path}: expected columns {','.join(columns)}, found {found}")
            twice = sorted({name for name in found if name and found.count(name) > 1})
            if twice:  # a row's value under the first would be lost to the second's
                raise ConfigError(f"{path}: column {', '.join(twice)} named twice in its header; expected each once")
            unnamed = [k for k, name in enumerate(found) if not name]  # a spreadsheet's trailing comma
            # pandas' to_csv and R's write.csv write each row's number first, under no name: no value of the data
            numbered = len(found) > 1 and not found[0]
            while True:
                line = reader.line_num + 1
                cells = next(reader, None)
                if cells is None:
                    break
                if reader.line_num > line:
                    raise ConfigError(f"{path} line {line}: a quoted field runs on over the next lines; expected "
                                      "one line a row")  # fmt: skip
                if numbered and cells and cells[0].strip().isascii() and cells[0].strip().isdigit():
                    cells[0] = ""
                extra = [cells[k].strip() for k in unnamed if k < len(cells)] + [c.strip() for c in cells[len(found) :]]
                if any(extra):  # a value under no column's name would be dropped: a label, a number
                    raise ConfigError(
                        f"{path} line {line}: {len(cells)} values, {', '.join(map(repr, filter(None, extra)))} under "
                        f"no name of the header's ({','.join(found)}); expected one value a named column "
                        f"({past_header if isinstance(past_header, str) else past_header(found)})"
                    )
                if cells:  # empty cells past the header's are left out, missing ones are empty
                    rows.append(Row({name: (cells[k].strip() if k < len(cells) else "") for k, name in
                                     enumerate(found)}, line))  # fmt: skip
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: cannot read as a UTF-8 CSV file ({err})") from None
    except csv.Error as err:  # strict quoting: a quote left open, or text after a closing one
        raise ConfigError(
            f"{path} line {line}: {err}; expected a quoted field closed on its row, a comma after the quote"
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


def parse_json(text: str | bytes) -> object:
    """``json.loads``, where JSON nested deeper than Python's recursion limit is a ``ValueError``
    as other malformed JSON is: ``json.loads`` raises ``RecursionError`` there, a few kilobytes of
    ``[`` in a downloaded annotation file, which every reader's ``except ValueError`` would let
    through as a bug's traceback."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply: more levels of lists and objects than a reader follows") from None


class NestedTooDeeply(yaml.MarkedYAMLError):
    """YAML nested deeper than Python's recursion limit (:func:`parse_yaml`); its ``problem``
    says so, as PyYAML's own errors say theirs."""

    def __init__(self) -> None:
        super().__init__(problem="nested too deeply: more levels of lists and mappings than a reader follows")


def parse_yaml(text: str) -> object:
    """``yaml.safe_load``, where YAML nested deeper than Python's recursion limit is a
    ``yaml.YAMLError`` as other malformed YAML is: PyYAML raises ``RecursionError`` there (a
    line of a few hundred ``[`` in a config), which every reader's ``except yaml.YAMLError``
    would let through as a bug's traceback."""
    try:
        return yaml.safe_load(text)
    except RecursionError:
        raise NestedTooDeeply from None
