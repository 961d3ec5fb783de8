"""Split folders: ``root/train/<class>/<file>`` beside ``root/val/<class>/<file>``,
``root/test/<class>/<file>`` or both — the layout of Kinetics, and of datasets published with
their split as folders. The folders are the split; the class is the folder that holds a file,
and a sample's id is its path relative to ``root`` (``train/<class>/<file>``), as split lists
and checkpoints hold it.

A root is read this way only when its folders (hidden ones aside) are exactly ``train`` and
``val`` and/or ``test``, each holding sub-folders: anything else is the class-folder layout of
:mod:`cnnsuite.data.folders`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_warn

from ..errors import ConfigError
from .folders import list_classes, list_samples
from .splits import STAGES, split_off


@dataclass(frozen=True)
class SplitFolders:
    root: Path
    folders: dict[str, Path]  # stage → its folder, for the stages the data has
    classes: list[str]  # the training folder's classes, sorted
    extensions: tuple[str, ...]

    def samples(self) -> dict[str, list[tuple[str, int]]]:
        """``stage → (id, class index)`` of every matching file of each folder."""
        found = {}
        for stage, folder in self.folders.items():
            present = [name for name in self.classes if (folder / name).is_dir()]
            found[stage] = [
                (f"{folder.name}/{sample_id}", self.classes.index(present[index]))
                for sample_id, index in list_samples(folder, present, self.extensions)
            ]
        return found

    def splits(self, val_fraction: float, seed: int) -> dict[str, list[str]]:
        """The folders as train/val/test. A missing ``val`` folder is carved from ``train``
        (``val_fraction``, stratified by ``seed``); a missing ``test`` folder makes the ``val``
        folder the test split (Kinetics publishes no test labels) and validation is carved
        from ``train``, which is said once."""
        if not 0 < val_fraction < 1:
            raise ConfigError(f"data.val_fraction={val_fraction}: expected a fraction between 0 and 1")
        samples = self.samples()
        splits = {stage: [i for i, _ in samples[stage]] for stage in self.folders}
        if "test" not in splits:
            splits["test"] = splits.pop("val")
            rank_zero_warn(
                f"{self.root}: no test folder: val/ ({len(splits['test'])} files) is the test split, and "
                f"validation is data.val_fraction={val_fraction} of train/, stratified by data.seed={seed}"
            )
        if "val" not in splits:
            ids, labels = zip(*samples["train"], strict=True)
            train, val, _ = split_off(list(ids), list(labels), val_fraction, seed)
            splits["train"], splits["val"] = sorted(train), sorted(val)
        return {stage: splits[stage] for stage in STAGES}


def find_split_folders(root: Path, extensions: Iterable[str]) -> SplitFolders | None:
    """The split folders of ``root``, or None when ``root`` is not laid out so. Every class
    folder must hold a matching file, and a class of ``val`` or ``test`` must be one of
    ``train``'s: otherwise :class:`ConfigError` naming the folder."""
    extensions = tuple(e.lower() for e in extensions)
    folders = {d.name: d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")}
    if "train" not in folders or len(folders) < 2 or not set(folders) <= set(STAGES):
        return None
    if not all(any(d.is_dir() and not d.name.startswith(".") for d in f.iterdir()) for f in folders.values()):
        return None
    classes = list_classes(folders["train"], extensions)
    for folder in folders.values():
        for name in list_classes(folder, extensions):
            if name not in classes:
                raise ConfigError(f"{folder / name}: class {name!r} has no folder in {folders['train']}")
    return SplitFolders(root, {s: folders[s] for s in STAGES if s in folders}, classes, extensions)
