"""TaskDataModule: what every task's datamodule shares.

- It knows its classes and channels when constructed (the embedded default by
  construction, a user folder by listing it), so the CLI can link them into the model.
- ``prepare_data`` materialises the embedded default once under ``data_root/<task>``;
  a folder the user names (``data_dir``) is only ever read.
- ``setup`` decides the split — a saved ``split_file`` (evaluation reuses the run's),
  else fixed lists the data brings, else stratified by ``seed`` — and saves it as
  ``splits.json`` in the run folder.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, Dataset

from .prepare import prepare_once
from .splits import STAGES, load_splits, read_split_lists, save_splits, stratified_split


class TaskDataModule(L.LightningDataModule):
    #: folder name of the embedded default under ``data_root``
    default_name: str = ""
    #: init arguments that are paths: stored absolute, so a checkpoint finds its data from any folder
    path_hparams: tuple[str, ...] = ("data_dir", "data_root", "split_file")
    #: the DataLoader class and how it batches items (tasks may pick MONAI's, a list collate...)
    loader_class: type[DataLoader] = DataLoader
    collate_fn = None

    def __init__(
        self,
        data_dir: str | None = None,
        data_root: str = "data",
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_file: str | None = None,
    ) -> None:
        super().__init__()
        # Collects the subclass's init arguments too; checkpoints keep them (JSON-able).
        self.save_hyperparameters()
        for key in self.path_hparams:
            if self.hparams.get(key) is not None:
                self.hparams[key] = str(Path(self.hparams[key]).expanduser().resolve())
        self.datasets: dict[str, Dataset] = {}
        self.splits: dict[str, list[str]] | None = None

    # --- what a task provides -------------------------------------------------------
    class_names: list[str]
    in_channels: int

    def write_default(self, folder: Path) -> None:
        """Write the embedded default dataset into ``folder`` (called once)."""
        raise NotImplementedError

    def list_samples(self) -> list[tuple[str, int]]:
        """Every sample of the data as ``(id, class index)``; ids are what split lists hold."""
        raise NotImplementedError

    def make_dataset(self, ids: list[str], stage: str) -> Dataset:
        raise NotImplementedError

    # --- shared ---------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def root(self) -> Path:
        """Where samples are read from: the user's folder or the embedded default."""
        if self.hparams.data_dir is not None:
            return Path(self.hparams.data_dir).expanduser()
        return Path(self.hparams.data_root) / self.default_name

    def prepare_data(self) -> None:
        if self.hparams.data_dir is None:
            prepare_once(self.root, self.write_default)

    def setup(self, stage: str) -> None:
        if self.splits is None:
            self.splits = self._decide_splits()
            self.datasets = {s: self.make_dataset(self.splits[s], s) for s in STAGES}
        trainer = self.trainer
        if stage == "fit" and trainer is not None and trainer.log_dir and trainer.is_global_zero:
            save_splits(Path(trainer.log_dir) / "splits.json", self.splits)

    def _decide_splits(self) -> dict[str, list[str]]:
        if self.hparams.split_file:
            splits = load_splits(Path(self.hparams.split_file))
        else:
            splits = read_split_lists(self.root)
        samples = self.list_samples()
        if splits is not None:
            known = {sample_id for sample_id, _ in samples}
            for s in STAGES:
                unknown = [i for i in splits[s] if i not in known]
                if unknown:
                    source = self.hparams.split_file or self.root / f"{s}.txt"
                    raise ValueError(f"{source}: {len(unknown)} {s} entries are not in {self.root}, e.g. {unknown[0]}")
            return splits
        ids, labels = zip(*samples, strict=True)
        hp = self.hparams
        return stratified_split(ids, labels, hp.val_fraction, hp.test_fraction, hp.seed)

    def _loader(self, stage: str, shuffle: bool = False) -> DataLoader:
        workers = self.hparams.num_workers
        return self.loader_class(
            self.datasets[stage],
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            num_workers=workers,
            persistent_workers=workers > 0,
            collate_fn=type(self).collate_fn,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")
