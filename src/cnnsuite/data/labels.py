"""A sample's labels as a label file states them: one class, or several.

A label cell holds one label or several separated by ``;`` (``forest;water``, spaces around
each trimmed); a reader that gets a list of labels (BigEarthNet's metadata JSON) passes the
list. A file where no sample has several labels is single-label: its targets are class
indices, as a classifier with a softmax takes them. A file where some sample has several is
multi-label: its targets are multi-hot float vectors, one entry per class, for independent
sigmoids. ``data.multilabel`` (:data:`MULTILABEL_SETTINGS`) lets the file decide (``auto``),
or insists on one mode: ``true`` makes a single-label file one-hot multi-label, ``false``
refuses a file with several labels in a sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from ..errors import ConfigError

#: what ``data.multilabel`` takes
MULTILABEL_SETTINGS = ("auto", True, False)
#: what separates several labels in one cell
SEPARATOR = ";"


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
) -> tuple[list[str], list, bool]:
    """``(class names, targets, multilabel)`` of a label file's cells, one a sample.

    Single-label: the targets are class indices (ints). Multi-label: float32 multi-hot
    vectors (numpy), one entry per class in the class names' order. ``multilabel``: ``auto``
    decides from the cells and says so (naming ``source``) when some sample has several
    labels; ``false`` with such a sample is an error naming its place (``where[i]``, e.g.
    ``labels.csv, line 7``); ``true`` makes single labels one-hot vectors. ``classes`` fixes
    the class names and their order (data generated from a known list); by default they are
    the labels found, sorted."""
    check_multilabel(multilabel)
    sets = [split_labels(cell) for cell in cells]
    for i, labels in enumerate(sets):
        if not labels:
            place = where[i] if where is not None else f"{source}, sample {i + 1}"
            raise ConfigError(f"{place}: empty label")
    names = list(classes) if classes is not None else class_names_of(label for labels in sets for label in labels)
    unknown = sorted({label for labels in sets for label in labels} - set(names))
    if unknown:
        raise ConfigError(f"{source}: unknown labels {', '.join(unknown)}; expected among {', '.join(names)}")
    several = sum(len(labels) > 1 for labels in sets)
    if several and multilabel is False:
        i = next(i for i, labels in enumerate(sets) if len(labels) > 1)
        place = where[i] if where is not None else f"{source}, sample {i + 1}"
        raise ConfigError(
            f"{place}: {SEPARATOR.join(sets[i])!r} holds {len(sets[i])} labels, but data.multilabel=false "
            f"expects one a sample ({several} of {len(sets)} samples have several; data.multilabel=auto trains "
            "them multi-label)"
        )
    decided = bool(several) if multilabel == "auto" else bool(multilabel)
    if several and multilabel == "auto":
        rank_zero_info(
            f"{source}: {several} of {len(sets)} samples have several labels: multi-label classification "
            f"over {len(names)} classes (data.multilabel=auto)"
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
