"""A sample's labels as a label file states them: one class, or several.

A label cell holds one label or several separated by ``;`` (``forest;water``, spaces around
each trimmed); a reader that gets a list of labels (BigEarthNet's metadata JSON) passes the
list. A file where no sample has several labels is single-label: its targets are class
indices, as a classifier with a softmax takes them. A file where some sample has several is
multi-label: its targets are multi-hot float vectors, one entry per class, for independent
sigmoids. ``data.multilabel`` (:data:`MULTILABEL_SETTINGS`) lets the file decide (``auto``),
or insists on one mode: ``true`` makes a single-label file one-hot multi-label, ``false``
refuses a file with several labels in a sample.

A data folder's ``labels.csv`` (:func:`read_labels_csv`) comes in the two layouts multi-label
datasets are shipped in: a ``label`` column of such cells (``image,label`` / ``x.png,a;b``), or
one column per class holding 1 where the sample carries the class and 0 where not
(``image,a,b`` / ``x.png,1,1``, as ChestX-ray14 and CheXpert tables are often written).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from ..errors import BadFileError, ConfigError, MissingFileError
from .errors import report_bad_files
from .textfiles import Row, read_csv


class OneLabelExpected(ConfigError):
    """A sample of several labels, or none, where ``data.multilabel=false`` takes one a sample:
    ``sample`` names its place, ``holds`` says what it holds, so that a command where the
    checkpoint's model, not a setting, asks for one label can say so."""

    def __init__(self, message: str, sample: str, holds: str) -> None:
        super().__init__(message)
        self.sample, self.holds = sample, holds


#: what ``data.multilabel`` takes
MULTILABEL_SETTINGS = ("auto", True, False)
#: what separates several labels in one cell
SEPARATOR = ";"
#: the label file of a data folder (:func:`read_labels_csv`)
LABELS_CSV = "labels.csv"
#: what a labels file's value past its header most likely is: labels written with commas
#: (``a.png,beach,sunset``), which quoted (``"beach,sunset"``) would be one class of that name
SEVERAL_LABELS = f"several labels go in one cell, separated by {SEPARATOR!r}: beach{SEPARATOR}sunset"
#: the same where the file has a 0/1 column per class and no ``label`` column to hold several
ONE_COLUMN_A_CLASS = "a class's 0/1 value goes under its own column, the class named in the header"


def check_multilabel(setting: object) -> None:
    if setting not in MULTILABEL_SETTINGS or isinstance(setting, int) and not isinstance(setting, bool):
        raise ConfigError(f"data.multilabel={setting!r}: expected auto, true or false")


def split_labels(cell: str | Sequence[str]) -> list[str]:
    """The distinct labels of one cell (``a;b``) or list, in order, each trimmed, empty ones dropped."""
    parts = cell.split(SEPARATOR) if isinstance(cell, str) else cell
    return list(dict.fromkeys(p.strip() for p in parts if p.strip()))


def class_names_of(labels) -> list[str]:
    """Sorted class names; integer labels sort as numbers (``2`` before ``10``)."""
    names = set(labels)
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def parse_labels(
    cells: Sequence[str | Sequence[str]],
    multilabel: bool | str = "auto",
    source: object = "the labels",
    where: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    allow_none: bool = False,
) -> tuple[list[str], list, bool]:
    """``(class names, targets, multilabel)`` of a label file's cells, one a sample.

    Single-label: the targets are class indices (ints). Multi-label: float32 multi-hot
    vectors (numpy), one entry per class in the class names' order. ``multilabel``: ``auto``
    decides from the cells and says so (naming ``source``) when some sample has several
    labels (or, ``allow_none``, none: a row of 0s in a table of one column per class, as
    ChestX-ray14's "no finding" is written, which only a multi-label run can learn); ``false``
    with such a sample is an error naming its place (``where[i]``, e.g. ``labels.csv, line
    7``); ``true`` makes single labels one-hot vectors. ``classes`` fixes the class names and
    their order (data generated from a known list); by default they are the labels found, sorted."""
    check_multilabel(multilabel)
    sets = [split_labels(cell) for cell in cells]

    def place(i: int) -> str:
        return where[i] if where is not None else f"{source}, sample {i + 1}"

    for i, labels in enumerate(sets):
        if not labels and not allow_none:
            raise ConfigError(f"{place(i)}: empty label")
    names = list(classes) if classes is not None else class_names_of(label for labels in sets for label in labels)
    unknown = sorted({label for labels in sets for label in labels} - set(names))
    if unknown:
        raise ConfigError(f"{source}: unknown labels {', '.join(unknown)}; expected among {', '.join(names)}")
    several = sum(len(labels) > 1 for labels in sets)
    none = sum(not labels for labels in sets)
    if (several or none) and multilabel is False:
        i = next(i for i, labels in enumerate(sets) if len(labels) != 1)
        holds = f"{SEPARATOR.join(sets[i])!r} holds {len(sets[i])} labels" if sets[i] else "holds no label"
        raise OneLabelExpected(
            f"{place(i)}: {holds}, but data.multilabel=false expects one a sample ({several} of {len(sets)} "
            f"samples have several, {none} none; data.multilabel=auto trains them multi-label)",
            place(i),
            holds,
        )
    decided = bool(several or none) if multilabel == "auto" else bool(multilabel)
    if (several or none) and multilabel == "auto":
        rank_zero_info(
            f"{source}: {several} of {len(sets)} samples have several labels"
            + (f" and {none} none" if none else "")
            + f": multi-label classification over {len(names)} classes (data.multilabel=auto)"
        )
    if not decided:
        return names, [names.index(labels[0]) for labels in sets], False
    index = {name: i for i, name in enumerate(names)}
    return names, [multi_hot([index[label] for label in labels], len(names)) for labels in sets], True


def multi_hot(indices: Sequence[int], count: int) -> np.ndarray:
    """float32 vector of ``count`` entries, 1 at ``indices``."""
    vector = np.zeros(count, dtype=np.float32)
    vector[list(indices)] = 1.0
    return vector


def is_multi_hot(labels: Sequence) -> bool:
    """Whether ``labels`` are multi-hot vectors (several labels a sample) rather than class indices."""
    return len(labels) > 0 and np.ndim(labels[0]) == 1


def label_cells(rows: Sequence[Row], id_column: str, path: object) -> tuple[list[str], list, list[str] | None]:
    """``(ids, cells, class columns)`` of a label table's rows (as :func:`~cnnsuite.data.textfiles.read_csv`
    gives them): with a ``label`` column its cells as they are, and no class columns; otherwise
    each column after ``id_column`` is a class, 0 or 1 in each row, and a row's cell is the list
    of its classes marked 1 (the class columns are returned in the file's order). A bad value
    raises :class:`ConfigError` naming ``path``, the line and the column."""
    header = [column for column in rows[0] if column] if rows else []
    if id_column not in header:
        raise ConfigError(
            f"{path}: expected columns {id_column},label or {id_column} and one 0/1 column per class, found {header}"
        )
    ids = [row[id_column] for row in rows]
    first: dict[str, int] = {}
    for row, sample_id in zip(rows, ids, strict=True):  # a second row would silently replace the first's labels
        line = row.line
        if sample_id in first:
            raise ConfigError(
                f"{path}, line {line}: {sample_id!r} again (line {first[sample_id]} has it); expected one row per "
                f"{id_column}, its labels together"
            )
        first[sample_id] = line
    if "label" in header:
        return ids, [row["label"] for row in rows], None
    classes = [column for column in header if column != id_column]
    if not classes:
        raise ConfigError(f"{path}: expected a label column or one 0/1 column per class after {id_column}")
    cells = []
    for row in rows:
        line, marked = row.line, []
        for name in classes:
            value = row.get(name, "")
            try:
                number = float(value)
            except ValueError:
                number = None
            if number not in (0.0, 1.0):
                # one column after the id, of names: most likely a label column under another name
                hint = (
                    " (one 0/1 column per class; a column of class names is headed label)" if len(classes) == 1 else ""
                )
                raise ConfigError(f"{path}, line {line}, column {name}: {value!r}; expected 0 or 1{hint}")
            if number:
                marked.append(name)
        cells.append(marked)
    return ids, cells, classes


def read_labels_csv(
    root: Path,
    id_column: str,
    multilabel: bool | str = "auto",
    classes: Sequence[str] | None = None,
    what: str = "files",
) -> tuple[list[str], dict[str, object], bool]:
    """``(class names, id → target, multilabel)`` of ``root/labels.csv`` in either layout (see
    the module): ids are paths relative to ``root``, each checked to exist (the missing ones,
    ``what``, reported together); labels and targets as :func:`parse_labels` makes them. The
    class names are ``classes`` if given, else the class columns in the file's order, else the
    labels found, sorted."""
    path = root / LABELS_CSV
    if not path.is_file():
        raise MissingFileError(f"{path}: missing; expected a CSV with columns {id_column},label")
    rows = read_csv(path, past_header=lambda header: SEVERAL_LABELS if "label" in header else ONE_COLUMN_A_CLASS)
    if not rows:
        raise ConfigError(f"{path}: no rows")
    ids, cells, columns = label_cells(rows, id_column, path)
    where = [f"{path}, line {row.line}" for row in rows]
    missing = []
    for place, sample_id, cell in zip(where, ids, cells, strict=True):
        if not sample_id or (columns is None and not cell):
            raise ConfigError(f"{place}: empty {id_column} or label")
        if not (root / sample_id).exists():
            missing.append(BadFileError(f"{place}: {root / sample_id} does not exist"))
    report_bad_files(missing, len(rows), what=what)
    names, targets, decided = parse_labels(cells, multilabel, path, where, classes or columns, columns is not None)
    return names, dict(zip(ids, targets, strict=True)), decided
