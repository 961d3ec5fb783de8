"""Datasets shipped split into folders, as torchvision's ``ImageFolder`` datasets often are:
``root/train/<class>/...`` beside ``root/val/<class>/...`` (and ``root/test/<class>/...``).

:func:`find_split_folders` tells that layout from plain class folders (a ``train`` folder
beside a ``val`` or ``test`` one); :func:`splits_from_folders` turns the samples listed under
them (their ids start with the split folder's name) into the train/val/test split. A split
without its own folder is formed the usual way, and said once: without ``test``, the official
validation folder is the test split (the figure a paper reports on such datasets) and
validation is carved from train; without ``val``, validation is carved from train.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError
from .splits import STAGES, TooFewToSplit, n_samples, split_off

#: the folder names each split goes by, in the order they are looked for (any letter case)
FOLDER_NAMES = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}


def find_split_folders(root: Path) -> dict[str, str] | None:
    """``{stage: folder name}`` for the split folders of ``root`` when it has a train folder
    and a val or test folder; None when it has not (its folders are classes)."""
    names = {d.name.lower(): d.name for d in Path(root).iterdir() if d.is_dir() and not d.name.startswith(".")}
    found = {}
    for stage, options in FOLDER_NAMES.items():
        name = next((names[o] for o in options if o in names), None)
        if name is not None:
            found[stage] = name
    return found if "train" in found and len(found) > 1 else None


def splits_from_folders(
    samples: Sequence[tuple[str, int]],
    folders: dict[str, str],
    val_fraction: float,
    seed: int,
    names: Sequence[str] | None = None,
    root: Path | str = ".",
) -> tuple[dict[str, list[str]], str | None]:
    """``(split, note)``: each sample (id, label) in the split of the folder its id starts
    with; a missing val split carved from train (``val_fraction`` of it, stratified by
    ``seed``; ``names``, the class names, name a class it cannot be stratified by), a missing
    test split the val folder's samples. ``note`` says how a missing split was formed (None
    when every split has its folder). A train folder too small to carve validation from is a
    :class:`~cnnsuite.errors.ConfigError` naming it, under ``root``."""
    stage_of = {name: stage for stage, name in folders.items()}
    by_stage: dict[str, list[tuple[str, int]]] = {stage: [] for stage in STAGES}
    for sample_id, label in samples:
        by_stage[stage_of[sample_id.split("/")[0]]].append((sample_id, label))
    note = None
    if "test" not in folders:
        by_stage["test"], by_stage["val"] = by_stage["val"], []
        note = f"no test folder: {folders['val']}/ ({len(by_stage['test'])} files) is the test split"
    if "val" not in folders or "test" not in folders:
        ids, labels = (list(x) for x in zip(*by_stage["train"], strict=True))
        try:
            train, val, _ = split_off(ids, labels, val_fraction, seed, names)
        except TooFewToSplit:
            raise ConfigError(
                f"{Path(root, folders['train'])}: {n_samples(len(ids))}: too few to draw "
                f"validation from (data.val_fraction {val_fraction}); give a val folder too"
            ) from None
        by_stage["train"], by_stage["val"] = [(i, 0) for i in train], [(i, 0) for i in val]
        carved = f"validation is {val_fraction:g} of {folders['train']}/, drawn with seed {seed}"
        note = f"{note}; {carved}" if note else f"no val folder: {carved}"
    return {stage: sorted(i for i, _ in by_stage[stage]) for stage in STAGES}, note
