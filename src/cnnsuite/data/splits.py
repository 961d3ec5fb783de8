"""Train/val/test splits: fixed lists when the data brings them, else stratified by seed:
by class for single-label data, by iterative stratification (Sechidis et al., 2011, as
``iterstrat`` implements it) for multi-label data, so a rare label reaches val and test too."""

from __future__ import annotations

import json
import math
import operator
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit
from sklearn.model_selection import train_test_split

from ..errors import ConfigError
from .labels import is_multi_hot
from .textfiles import parse_json, read_lines

STAGES = ("train", "val", "test")


class ListedSplits(NamedTuple):
    """The split a dataset's own lists make (VOC's ``ImageSets/Main``, COCO's split files, CUB's
    ``train_test_split.txt``): each stage's ids, and the file its list is read from, which a
    message about that stage names."""

    ids: dict[str, list[str]]
    files: dict[str, Path]


def stratified_split(
    ids: Sequence[str],
    labels: Sequence,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    names: Sequence[str] | None = None,
    source: object = None,
) -> dict[str, list[str]]:
    """Split ``ids`` so each class keeps its share in train, val and test; ``labels`` are
    class indices, or multi-hot vectors (each label then keeps its share as near as it can);
    ``names``, the class names, name a class that cannot be stratified; ``source``, where the
    samples come from (their folder), names them in a message that they are too few."""
    check_fraction("val_fraction", val_fraction)
    check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1:
        raise ConfigError(f"data.val_fraction + data.test_fraction = {val_fraction + test_fraction}: expected < 1")
    where = "" if source is None else f"{source}: "
    too_few = ConfigError(
        f"{where}{n_samples(len(ids))}: too few to split into train, val and test "
        f"(data.val_fraction {val_fraction}, data.test_fraction {test_fraction}); expected at least 3, and "
        "enough that the fractions leave one to train on"
    )
    if len(ids) < 3:  # one sample a split at the least
        raise too_few
    try:
        rest, test, rest_labels = split_off(list(ids), list(labels), test_fraction, seed, names)
        # a class of one sample, said when the test split was drawn, is in the rest still: said once
        train, val, _ = split_off(rest, rest_labels, val_fraction / (1 - test_fraction), seed, names, say_lone=False)
    except TooFewToSplit:  # iterative stratification may draw more test samples than the fraction asks, too
        raise too_few from None
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def split_validation(
    train: list[str], labels: list, val_fraction: float, total: int, seed: int, names: Sequence[str] | None = None
) -> tuple[list[str], list[str]]:
    """``(train, val)`` for data that brings its train and test splits but no validation:
    ``val_fraction`` of all ``total`` samples, drawn from train (at most half of it) and
    stratified by ``labels`` where :func:`split_off` can."""
    check_fraction("val_fraction", val_fraction)
    fraction = min(0.5, val_fraction * total / max(len(train), 1))
    kept, val, _ = split_off(list(train), list(labels), fraction, seed, names)
    return sorted(kept), sorted(val)


def check_fraction(key: str, value: float) -> None:
    if not 0 < value < 1:
        raise ConfigError(f"data.{key}={value}: expected a fraction between 0 and 1")


def n_samples(count: int) -> str:
    """``count`` samples in words: ``1 sample``, ``5 samples``."""
    return f"{count} sample{'' if count == 1 else 's'}"


class TooFewToSplit(ConfigError):
    """Raised by :func:`split_off` where splitting off its fraction would keep no sample."""


def split_off(
    ids: list[str], labels: list, fraction: float, seed: int, names: Sequence[str] | None = None, say_lone: bool = True
):
    """``(kept ids, split-off ids, kept labels)``, stratified when every class can be (and
    said out loud when not, naming the classes by ``names`` where given: a class may then be
    missing from a split). Multi-hot labels are split by iterative stratification. A class of
    a single sample is kept for training, said where ``say_lone``. Where the fraction, rounded
    up as scikit-learn does, takes every sample, :class:`TooFewToSplit`."""
    if len(ids) - math.ceil(fraction * len(ids)) < 1:  # scikit-learn's "the resulting train set will be empty"
        raise TooFewToSplit(f"{n_samples(len(ids))}: too few to split off {fraction:g} and keep one")
    if is_multi_hot(labels):
        targets = np.stack(labels)
        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        kept, out = next(splitter.split(np.zeros((len(ids), 1)), targets))
        return [ids[i] for i in kept], [ids[i] for i in out], [labels[i] for i in kept]
    counts = Counter(labels)
    if any(n < 2 for n in counts.values()) and any(n >= 2 for n in counts.values()):
        # a class of one sample is kept for training (split off, it was never trained on and
        # scored 0); the others are stratified as they can be
        if say_lone and (said := lone_classes(labels, names)):
            warnings.warn(f"{said}: kept in training, none to validate or test it", stacklevel=3)
        lone = [i for i, label in enumerate(labels) if counts[label] < 2]
        many = [i for i, label in enumerate(labels) if counts[label] >= 2]
        kept, out, kept_labels = split_off(
            [ids[i] for i in many], [labels[i] for i in many], fraction, seed, names, say_lone
        )
        return kept + [ids[i] for i in lone], out, kept_labels + [labels[i] for i in lone]
    try:
        kept, out, kept_labels, _ = train_test_split(
            ids, labels, test_size=fraction, random_state=seed, stratify=labels
        )
    except ValueError as err:  # too few samples of some class, or fewer split-off samples than classes
        reason = lone_classes(labels, names) or str(err)
        warnings.warn(
            f"the split of {len(ids)} samples cannot be stratified by class ({reason}); "
            "splitting at random, so a class may be missing from a split",
            stacklevel=3,
        )
        kept, out, kept_labels, _ = train_test_split(ids, labels, test_size=fraction, random_state=seed)
    return kept, out, kept_labels


def lone_classes(labels: list, names: Sequence[str] | None) -> str:
    """The most common reason a split cannot be stratified, in the user's terms: the classes
    with a single sample (a misspelt folder, a stray label), by name rather than by
    scikit-learn's index; '' when there are none. A label that is no index of ``names`` (a
    task's own datamodule may stratify by something else) is shown as it is; a negative one
    is a sample without a target (a detector's image without objects), no class to name."""
    lone = sorted(label for label, count in Counter(labels).items() if count < 2 and not _targetless(label))
    if not lone:
        return ""

    def named(label) -> str:
        try:
            index = operator.index(label)
        except TypeError:
            return repr(label)
        return repr(names[index]) if names and 0 <= index < len(names) else str(index)

    listed = ", ".join(map(named, lone))
    return f"{'class' if len(lone) == 1 else 'classes'} {listed} {'has' if len(lone) == 1 else 'have'} a single sample"


def _targetless(label) -> bool:
    try:
        return operator.index(label) < 0
    except TypeError:
        return False


def read_split_lists(root: Path) -> dict[str, list[str]] | None:
    """``train.txt``, ``val.txt`` and ``test.txt`` in ``root`` (one relative path a line), if
    the data brings them: all three, train and test alone (validation is then drawn from train,
    see :meth:`~cnnsuite.data.TaskDataModule.listed_splits`), or none."""
    files = {stage: Path(root) / f"{stage}.txt" for stage in STAGES}
    present = check_lists_present(root, {s: f.is_file() for s, f in files.items()}, "")
    if present is None:
        return None
    lists = {s: [line for line in read_lines(files[s]) if line] for s in present}
    return check_splits(lists, f"{root}/{{train,val,test}}.txt", present)


def check_lists_present(root: Path, found: dict[str, bool], kind: str) -> list[str] | None:
    """The stages whose split lists ``root`` holds (``found``), where they make a split: all
    three, or train and test; None where there are none. ``kind``: the lists' kind in words."""
    present = [s for s in STAGES if found[s]]
    if not present:
        return None
    if present not in (list(STAGES), ["train", "test"]):
        missing = ", ".join(s for s in STAGES if s not in present)
        raise ConfigError(
            f"{root}: found {', '.join(present)} {kind}split lists but not {missing}; expected train, val and "
            "test, or train and test (validation then drawn from train)"
        )
    return present


def save_splits(path: Path, splits: dict[str, list[str]]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(splits, indent=1))


def load_splits(path: Path) -> dict[str, list[str]]:
    try:
        splits = parse_json(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as err:  # not JSON, or not UTF-8
        raise ConfigError(f"{path}: cannot read the split lists ({err})") from None
    return check_splits(splits, path)


def check_splits(splits: object, source: object, stages: Sequence[str] = STAGES) -> dict[str, list[str]]:
    """``splits`` if it is ``{"train": [ids], "val": [ids], "test": [ids]}`` (the ``stages``
    given), each id in one split once; else a ``ValueError`` naming ``source``. An id in two
    splits would score a training sample as a test one, and one listed twice trains twice as often."""
    if not isinstance(splits, dict) or any(
        not isinstance(splits.get(s), list) or not all(isinstance(i, str) for i in splits[s]) for s in stages
    ):
        raise ConfigError(f"{source}: expected lists of sample ids under {', '.join(stages)}")
    seen: dict[str, str] = {}
    for stage in stages:
        for sample_id in splits[stage]:
            if sample_id in seen:
                where = f"twice in {stage}" if seen[sample_id] == stage else f"in {seen[sample_id]} and {stage}"
                raise ConfigError(f"{source}: {sample_id!r} is {where}; expected each sample in one split, once")
            seen[sample_id] = stage
    return splits
