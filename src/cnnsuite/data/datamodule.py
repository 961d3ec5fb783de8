"""TaskDataModule: what every task's datamodule shares.

- Its init arguments (where the data is, batch size, workers, seed, split fractions, a split
  file) are declared once, here: a task's datamodule declares its own and passes the rest on
  as ``**kwargs``, which jsonargparse follows to this signature (``--help`` and
  ``--print_config`` show them all).
- It knows its classes and channels when constructed (the embedded default by
  construction, a user folder by listing it), so the CLI can link them into the model.
- ``prepare_data`` materialises the embedded default once under ``data_root/<task>``,
  with the arguments that generated it recorded beside it; other generation arguments
  get a folder of their own. A folder the user names (``data_dir``) is only ever read.
- ``setup`` decides the split — a saved ``split_file``, else fixed lists the data brings
  (``train.txt``..., or split folders ``train/<class>/...`` where the task reads them), else
  stratified by ``seed`` — checks the files of all of it before training
  (``check_samples``, around a task's :meth:`~TaskDataModule.find_bad`) and saves it as
  ``splits.json`` in the run folder. The split
  is also the datamodule's ``state_dict``, so it travels inside every checkpoint: evaluation
  and resuming use the run's own split, never one re-derived from today's files.
- Its loaders size themselves to the machine: ``num_workers: auto`` (the default) starts
  :func:`auto_workers` processes, memory is pinned when the trainer runs on CUDA, and a
  task's random batch augmentation (:meth:`TaskDataModule.augment_batch`) runs in
  ``on_after_batch_transfer``, on the device the batch was moved to, in training only.
- Datasets are built on first use, one stage at a time: testing a checkpoint reads (and
  caches) only the test split.
- ``data_dir`` may name a folder written by ``cnnsuite prepare`` (or an ``s3://`` URL of one):
  a task that declares :attr:`~TaskDataModule.streams_prepared` then takes its split, classes
  and preprocessing from its record and its decoded items from the shards
  (:mod:`cnnsuite.data.shards`); random augmentation runs after, as on the in-memory cache.
- ``read_input`` turns one raw file into the model's input exactly as the test split's
  preprocessing does: ``cnnsuite predict``, ``serve`` and ``export`` go through it, so a
  prediction on a file is the prediction evaluation made on it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from ..classpath import class_path
from ..errors import BadFileError, ConfigError, StateError
from .cache import DecodedCache, check_cache_limit
from .errors import check_on_bad_file, report_bad_files
from .folders import expand_home, is_listed, leaves_folder, lies_within, list_classes, list_samples
from .images import check_channels, image_suffix
from .inputs import Input
from .labels import LABELS_CSV, check_multilabel, multi_hot, read_labels_csv
from .prepare import prepare_once
from .resumable import EpochSampler, ResumableDataLoader, pass_seed, run_seed
from .shards import PreparedFiles, StreamedItems, check_shards, is_prepared, is_url, read_record, tensors_from_json
from .splitfolders import find_split_folders, splits_from_folders
from .splits import (
    STAGES,
    check_splits,
    load_splits,
    read_split_lists,
    save_splits,
    split_validation,
    stratified_split,
)

#: options several tasks declare, each in its own signature (where ``--help`` shows it only for
#: a task that takes it), and their checks, run here for every task that declares one
SHARED_OPTION_CHECKS: dict[str, Callable[[object], object]] = {
    "cache_limit_mb": check_cache_limit,
    "channels": check_channels,
    "multilabel": check_multilabel,
    "on_bad_file": check_on_bad_file,
}

#: the most loader processes ``num_workers: auto`` starts: past it, a cached or decoded-once
#: dataset gains little and each worker costs its memory
MAX_AUTO_WORKERS = 8


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system has one, as a
    container's or a batch scheduler's limit shows there), else the machine's count; 1 when
    neither is known."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def auto_workers(processes: int = 1) -> int:
    """What ``num_workers: auto`` starts in each of ``processes`` training processes on this
    machine (DDP's devices): its share of the usable cores less the one it trains on, at most
    :data:`MAX_AUTO_WORKERS`; none on a share of 2 cores or fewer, where a worker takes the
    core the model trains on and loading in the training process measures fastest."""
    cores = usable_cores() // max(processes, 1)
    return 0 if cores <= 2 else min(cores - 1, MAX_AUTO_WORKERS)


def check_num_workers(value: object) -> None:
    """``data.num_workers`` is ``auto`` or a count of processes, 0 or more."""
    if value != "auto" and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ConfigError(f"data.num_workers={value!r}: expected auto or a count of loader processes, 0 or more")


def check_batch_size(value: object) -> None:
    """``data.batch_size`` is a count of samples, 1 or more (torch's sampler says so only at the
    first epoch, in a traceback)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"data.batch_size={value!r}: expected a count of samples, 1 or more")


class SetWhenConstructed:
    """An attribute a task's datamodule must set in its ``__init__``. Read before it is set, it
    is one line naming the class and the attribute: jsonargparse skips, without a word, a link
    whose attribute is missing, and the model would keep its defaults (10 classes, 1 channel)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, datamodule, owner: type | None = None):
        if datamodule is None:
            return self
        if self.name not in datamodule.__dict__:
            raise ConfigError(
                f"{class_path(type(datamodule))}: set no {self.name} when it was constructed; a task's datamodule "
                "sets class_names and in_channels in its __init__ (docs/guide.md, Your own task)"
            )
        return datamodule.__dict__[self.name]

    def __set__(self, datamodule, value) -> None:
        datamodule.__dict__[self.name] = value


class LazyDatasets(Mapping):
    """``stage → Dataset``, each built by ``make(stage)`` the first time it is asked for."""

    def __init__(self, make: Callable[[str], Dataset]) -> None:
        self._make, self._built = make, {}

    def __getitem__(self, stage: str) -> Dataset:
        if stage not in STAGES:
            raise KeyError(stage)
        if stage not in self._built:
            self._built[stage] = self._make(stage)
        return self._built[stage]

    def __iter__(self) -> Iterator[str]:
        return iter(STAGES)

    def __len__(self) -> int:
        return len(STAGES)

    @property
    def built(self) -> list[str]:
        """The stages whose dataset exists already."""
        return list(self._built)


class TaskDataModule(L.LightningDataModule):
    #: folder name of the embedded default under ``data_root``
    default_name: str = ""
    #: init arguments that are paths: stored absolute, so a checkpoint finds its data from any folder
    path_hparams: tuple[str, ...] = ("data_dir", "data_root", "split_file")
    #: how the loader batches items (None: torch's default collate; a list for detection's targets)
    collate_fn = None
    #: what the messages naming bad files call the samples (``images``, ``volumes``)
    sample_noun: str = "files"
    #: the kind of file a sample is read from (:mod:`cnnsuite.data.limits`: ``image``, ``volume``,
    #: ``video`` or ``geotiff``), whose pixel limit bounds the samples too
    pixel_kind: str = "image"
    #: init arguments that change what ``write_default`` generates (recorded in the data folder)
    generation_hparams: tuple[str, ...] = ()
    #: init arguments that say which data a run read; prediction drops them and reads only its inputs
    source_hparams: tuple[str, ...] = ("data_dir", "split_file")
    #: init arguments that say how data is loaded on this machine (processes, memory); the batch
    #: size stays the run's, so an evaluation averages its loss over the batches the run's did
    loading_hparams: tuple[str, ...] = ("num_workers", "cache_limit_mb", "cache")
    #: set by :func:`cnnsuite.trust.checkpoint.rebuild` when a checkpoint is tested on data other than its run's
    tests_other_data: bool = False
    #: set by :func:`cnnsuite.trust.checkpoint.rebuild` when the data is read from a folder other than the
    #: run's (the run's data moved, or other files of the same names)
    read_elsewhere: bool = False
    #: file endings that ``cnnsuite predict`` takes from a folder of inputs
    input_extensions: tuple[str, ...] = ()
    #: ``{stage: folder name}`` when the data comes in split folders (``train/<class>/...``,
    #: :mod:`cnnsuite.data.splitfolders`), set by a task that reads them; its sample ids then
    #: start with the folder's name
    split_folders: dict[str, str] | None = None
    #: whether the task streams a folder written by ``cnnsuite prepare``: its datasets keep their
    #: decoded items in :meth:`decoded_cache`'s cache (or their own, through it), its ``__init__`` ends with
    #: :meth:`use_prepared`, and its ``make_dataset`` reads no file when :attr:`prepared`
    streams_prepared: bool = False
    #: whether a sample's target may be -1, none: an image without objects to find (its split
    #: label, not a class); a class index below 0 is otherwise an error where it is read
    targetless_samples: bool = False
    #: init arguments that act after decoding (batch size, random augmentation): a prepared
    #: folder streams the same items whatever they are; any other must be the record's
    after_decoding_hparams: tuple[str, ...] = ("batch_size",)

    @property
    def split_folder_names(self) -> tuple[str, ...]:
        """The split folders' names, training first, for :func:`~cnnsuite.data.list_classes`
        and :func:`~cnnsuite.data.list_samples`; empty for plain class folders."""
        return tuple(self.split_folders.values()) if self.split_folders else ()

    def __init__(
        self,
        data_dir: str | None = None,
        data_root: str = "data",
        batch_size: int = 64,
        num_workers: Literal["auto"] | int = "auto",
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_file: str | None = None,
    ) -> None:
        super().__init__()
        check_num_workers(num_workers)
        check_batch_size(batch_size)
        # Collects the subclass's init arguments too; checkpoints keep them (JSON-able).
        self.save_hyperparameters()
        for key, check in SHARED_OPTION_CHECKS.items():
            if key in self.hparams:
                check(self.hparams[key])
        for key in self.path_hparams:
            if self.hparams.get(key) is not None and not is_url(self.hparams[key]):
                self.hparams[key] = str(expand_home(self.hparams[key], f"--data.{key}").resolve())
        self.splits: dict[str, list[str]] | None = None
        self.datasets = LazyDatasets(self._make_stage)
        #: the record of the prepared folder ``data_dir`` names (:mod:`cnnsuite.data.shards`), else None
        self.prepared: dict | None = None
        #: where its shards are streamed from: the folder, or its local copy (object storage)
        self._streamed_from: str | None = None
        self._probe = None  # set by decoder()
        self._listed: list | None = None  # samples(), listed once
        self._class_index: list[int] | None = None  # follow_classes(): the data's class i is class_index[i]
        self._checked: set[str] = set()  # ids check_samples has checked
        self._bad: set[str] = set()  # the bad among them; ids only, as an error's traceback holds what was read
        self._augment_generator: torch.Generator | None = None  # under DDP, the rank's own
        if is_prepared(self.hparams.data_dir):
            self.prepared = self._open_prepared(self.hparams.data_dir)

    def check_writes_outside(self, option: str, folder: str | Path) -> None:
        """A folder the suite writes (``option``: the run's files, a cache) may not lie in the
        user's data folder, which is only read: the next run would list what was written there
        as samples (a ``runs`` class folder), and a user's file of the same name be replaced.
        Checked before the first write; the relative defaults (``runs/<task>``, ``data``) land
        there when a command runs from inside the data folder."""
        data = self.raw_data_dir
        if data is None or is_url(data) or is_url(str(folder)) or not lies_within(folder, data):
            return
        raise ConfigError(
            f"--{option} {Path(folder).expanduser().resolve()}: inside the data folder {data}, which is only read "
            f"(the next run would take what is written there as samples); give --{option} outside it, or run from "
            "outside the data folder"
        )

    def _open_prepared(self, location: str) -> dict:
        """The record of ``location``, checked: this task's, written with this run's decoding
        settings, its shards unchanged."""
        name = self.default_name or type(self).__name__
        if not self.streams_prepared:
            raise ConfigError(
                f"data.data_dir={location}: a folder written by cnnsuite prepare; {name} does not stream a prepared "
                "folder (streams_prepared)"
            )
        files = PreparedFiles(location)  # one S3 client for the record and every shard
        record = read_record(files, self.targetless_samples)
        if record["datamodule"] != class_path(self):
            task = record["task"]
            raise ConfigError(f"{location}: prepared for the task {task} ({record['datamodule']}), not {name}")
        free = {*self.local_hparams(), *self.source_hparams, *self.after_decoding_hparams}
        recorded = record.get("hyper_parameters", {})
        for key in sorted(self.init_parameters().keys() - free):
            value, was = self.hparams.get(key), recorded.get(key)
            if json.loads(json.dumps(value)) != was and "auto" not in (value, was):
                raise ConfigError(
                    f"data.{key}={value!r}: {location} was prepared with {key}={was!r}; "
                    "give that, or run cnnsuite prepare again"
                )
        mirror = self.kept_for(location, "prepared") if is_url(location) else None
        verified = self.kept_for(location, "shards-verified", ".json")
        self._streamed_from = check_shards(files, record, verified, mirror)
        return record

    def kept_for(self, location: str, kind: str, suffix: str = "") -> Path:
        """Where what the suite keeps of a prepared folder between runs goes: under
        ``<data_root>/cache/<kind>`` (as other caches), one file or folder per folder or URL, so the
        folder itself is only read: the hashes of its shards (``shards-verified``), the local copy
        of a folder on object storage (``prepared``). A URL with a trailing slash is the same
        folder, as a local path's other spellings are."""
        where = location.rstrip("/") if is_url(location) else str(Path(location).expanduser().resolve())
        root = self.hparams.data_root
        if not is_url(location) and lies_within(root, where):
            raise ConfigError(
                f"--data.data_root {Path(root).expanduser().resolve()}: inside the prepared folder {where}, which is "
                "only read (the suite keeps its caches under data_root); give --data.data_root outside it"
            )
        digest = hashlib.sha256(where.encode()).hexdigest()[:16]
        return Path(root) / "cache" / kind / f"{digest}{suffix}"

    @property
    def raw_data_dir(self) -> str | None:
        """The user's folder of raw files that the task lists and reads; None for the embedded
        default and for a prepared folder (the record says what the samples are)."""
        return None if self.prepared is not None else self.hparams.data_dir

    def use_prepared(self) -> None:
        """What a prepared folder's record says, taken at the end of a streaming task's
        ``__init__`` (its data-dependent branch saw :attr:`raw_data_dir` None): class names,
        channels, label mode and the preprocessing state learnt from its training split."""
        record = self.prepared
        if record is None:
            return
        self.class_names, self.in_channels = list(record["class_names"]), int(record["channels"])
        if "multilabel" in self.init_parameters():  # decided by its labels: recorded as decided
            self.decide_multilabel(bool(record["multilabel"]))
        try:
            self.restore_preprocessing(tensors_from_json(record["preprocessing"]))
        except StateError as err:
            raise BadFileError(f"{self.hparams.data_dir}: its record's preprocessing cannot be used: {err}") from None

    def samples(self) -> list[tuple[str, object]]:
        """:meth:`list_samples`, or a prepared folder's samples as its record lists them; listed
        once: the split, each stage's dataset and the class weights all ask, and a folder of
        100,000 files takes seconds to walk."""
        if self._listed is None:
            if self.prepared is None:
                self._listed = self.list_samples()
                self._check_inside(i for i, _ in self._listed)
            else:
                targets = self.prepared["targets"].items()
                self._listed = [(i, np.asarray(t, np.float32) if self.multilabel else t) for i, t in targets]
        if self._class_index is None:
            return list(self._listed)
        return [(i, self.relabel(target)) for i, target in self._listed]

    def follow_classes(self, names: list[str]) -> None:
        """Label the data by ``names``, the classes a checkpoint was trained on, where the data's
        own classes are some of them, in any order: a test folder that lacks a class, or whose
        label file orders its classes otherwise, is scored with each sample as the model's class
        of its name, and a class it lacks has no score. Anything else (a class the model does not
        know; a prepared folder, whose shards hold their targets) is left as it is, for
        :func:`~cnnsuite.trust.checkpoint.check_matches` to refuse."""
        found = list(self.class_names)
        if found == list(names) or self.prepared is not None or not set(found) <= set(names):
            return
        self.samples()  # listed by the data's own classes (a class folder's index), relabelled from then on
        self._class_index = [list(names).index(name) for name in found]
        self.class_names = list(names)

    def relabel(self, target):
        """``target`` (a class index, below 0 for none, or a multi-hot vector) as a label of
        the classes :meth:`follow_classes` took; unchanged where it took none."""
        index = self._class_index
        if index is None:
            return target
        if isinstance(target, np.ndarray):
            vector = np.zeros(len(self.class_names), dtype=target.dtype)
            vector[index] = target
            return vector
        return index[target] if target >= 0 else target

    def _check_inside(self, ids) -> None:
        """A sample is a file under the data folder: an id a label table or annotation file gives
        as an absolute path or through ``..`` (``/home/me/private.jpg``) would have a downloaded
        dataset read, and ``cnnsuite prepare`` copy into its shards, a file from elsewhere."""
        for sample_id in ids:
            if leaves_folder(str(sample_id)):
                raise BadFileError(
                    f"{self.root}: sample {sample_id!r} lies outside the data folder; expected a path inside it"
                )

    def preprocessing_state(self) -> dict:
        """What preprocessing learnt from the training split: the datamodule's state less its split."""
        return {k: v for k, v in self.state_dict().items() if k != "splits"}

    def decoded_cache(self, stage: str, own: Callable | None = None) -> Callable:
        """How a ``stage`` dataset keeps its decoded items: ``cache(read, ids, nbytes, what)``
        gives ``read(i)`` of each of ``ids`` by index — read from raw files, ``own`` (a task
        that keeps them its own way, as MONAI's caches do) or a :class:`DecodedCache` within
        ``data.cache_limit_mb``; or a prepared folder's shards (the ids must be the record's)."""
        if self._probe is not None:
            return self._probe
        if self.prepared is None:
            return own or self.memory_cache
        expected, location = self.prepared["items"][stage], self.hparams.data_dir

        def streamed(read, ids, nbytes, what):
            if list(ids) != expected:
                raise ConfigError(f"{location}: the {stage} items are not those its {stage} dataset asks for")
            fetched = str(Path(self.hparams.data_root) / "cache" / "litdata")
            limit = self.hparams.get("cache_limit_mb", 0)
            return StreamedItems(self._streamed_from, stage, expected, limit, fetched)

        return streamed

    def memory_cache(self, read: Callable, ids: list[str], nbytes: float, what: str) -> DecodedCache:
        """``read(i)`` of each of ``ids``, kept in memory when within ``data.cache_limit_mb``
        (:class:`DecodedCache`): the raw files' way of :meth:`decoded_cache`."""
        return DecodedCache(read, len(ids), nbytes, self.hparams.get("cache_limit_mb", 0), what)

    def sample_facts(self) -> dict[str, object]:
        """``sample id → JSON-able facts`` the task learnt of a sample when it checked its file
        and that its datasets need before they read an item (a video's duration and frame rate
        decide its clips): ``cnnsuite prepare`` records them (``prepared["sample_facts"]``), so
        a prepared folder's datasets never open a raw file. The default: none needed."""
        return {}

    def decoder(self, stage: str) -> tuple[list[str], Callable]:
        """``(ids, read)``: the ``stage`` dataset's items and how one is decoded (``read(i)``),
        what ``cnnsuite prepare`` writes."""
        found = {}

        def probe(read, ids, nbytes, what):
            found.update(read=read, ids=list(ids))
            return DecodedCache(read, len(ids), nbytes, 0, what)

        self._probe = probe
        try:
            self.make_dataset(self.splits[stage], stage)
        finally:
            self._probe = None
        return found["ids"], found["read"]

    # --- what a task provides -------------------------------------------------------
    #: the classes' names, in class-index order, and the input's channels: set by the task's
    #: ``__init__`` and linked into its model
    class_names: list[str] = SetWhenConstructed()
    in_channels: int = SetWhenConstructed()
    #: the names of the input channels, one per channel (``R``, ``G``, ``B``; a grey image's ``L``;
    #: Sentinel-2 bands ``B01`` … ``B8A``), or None where they are unnamed: linked into the model,
    #: whose published weight file's first-layer kernels go to the channels of the same name
    channel_names: list[str] | None = None
    #: whether a sample may carry several labels (its target a multi-hot vector): decided when
    #: the datamodule is constructed, by a task that reads label files (:mod:`cnnsuite.data.labels`)
    multilabel: bool = False
    #: the fixed per-channel ``{"mean": [...], "std": [...]}`` its samples are normalised by, of
    #: values in [0, 1]; None where the statistics are the data's own (a z-score per volume,
    #: per-band statistics of the training split) or the model normalises (a detector)
    input_normalisation: dict | None = None

    #: ``sample id → target`` read from a data folder's ``labels.csv``; None where the folder
    #: layout (class folders) says each sample's class
    targets: dict | None = None

    def read_labelled_folder(
        self,
        root: Path,
        extensions: tuple[str, ...],
        id_column: str,
        multilabel: bool | str,
        what: str,
        name_bad: bool = True,
    ) -> None:
        """The classes of a user's folder and how its samples are labelled: its ``labels.csv``
        (a ``label`` column or one 0/1 column per class; it may make the run multi-label, see
        :func:`~cnnsuite.data.labels.read_labels_csv`), else its class folders, split folders
        included (one class a sample: multi-label only when ``multilabel`` is true). A class
        folder without a usable file is named with every bad file of the others
        (:meth:`find_bad`), unless ``name_bad`` is false: a task whose check opens every file
        would make the user wait long for that one line."""
        if (root / LABELS_CSV).is_file():
            self.class_names, self.targets, decided = read_labels_csv(root, id_column, multilabel, what=what)
            self.decide_multilabel(decided)
            return
        self.split_folders = find_split_folders(root)
        find_bad = partial(self.find_bad, decode=False) if name_bad else None
        self.class_names = list_classes(root, extensions, find_bad, self.split_folder_names)
        self.decide_multilabel(multilabel is True)

    def folder_samples(self, extensions: tuple[str, ...]) -> list[tuple[str, object]]:
        """Every sample of :meth:`read_labelled_folder`'s folder (or of an embedded default laid
        out in class folders) with its target: a class index, or a multi-hot vector in a
        multi-label run."""
        if self.targets is not None:
            return list(self.targets.items())
        samples = list_samples(self.root, self.class_names, extensions, self.split_folder_names)
        if self.multilabel:  # class folders, one label each: one-hot
            return [(sample_id, multi_hot([label], self.num_classes)) for sample_id, label in samples]
        return samples

    def decide_multilabel(self, multilabel: bool) -> None:
        """Record the decided label mode, in the hyper-parameters too: they then hold what the
        run trained (``auto`` is decided once), as the model's ``multilabel`` does (Lightning
        refuses to log the two under one name with different values)."""
        self.multilabel = multilabel
        self.save_hyperparameters({**self.hparams, "multilabel": multilabel})

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """One sample's shape as the model receives it (channels first), when every sample
        has it; the CLI tries the model on it before any data is read, so a network that
        does not fit the data (a kernel larger than the input) is named at once."""
        return None

    def write_default(self, folder: Path) -> None:
        """Write the embedded default dataset into ``folder`` (called once)."""
        raise NotImplementedError

    def list_samples(self) -> list[tuple[str, int]]:
        """Every sample of the data as ``(id, class index)``, or ``(id, multi-hot vector)`` when
        :attr:`multilabel`; ids are what split lists hold."""
        raise NotImplementedError

    def make_dataset(self, ids: list[str], stage: str) -> Dataset:
        raise NotImplementedError

    def split_targets(self, stage: str) -> list:
        """The targets of the ``stage`` split's samples, in its order (after :meth:`setup`):
        what the model weights its classes by (``class_weights``)."""
        if self.splits is None:
            raise RuntimeError("setup() decides the split before its targets are known")
        targets = dict(self.samples())
        return [targets[sample_id] for sample_id in self.splits[stage]]

    def read_input(self, path: Path) -> Input:
        """One raw file (an image, a volume, a video ...) as the model's input, preprocessed as
        the test split is; a file that cannot be read raises :class:`BadFileError` naming it."""
        raise NotImplementedError(f"{type(self).__name__} does not read single files for prediction")

    def describe_preprocessing(self) -> dict:
        """How :meth:`read_input` makes a raw file into a sample, in words and numbers, for the
        JSON beside an export: a user feeding the exported network must do the same."""
        raise NotImplementedError(f"{type(self).__name__} does not describe its preprocessing")

    def describe_channels(self) -> dict:
        """What the input's channels are, for the JSON beside an export (the default: gray or
        red, green, blue; a task whose channels are bands or other measures says so)."""
        channels = {1: ["gray"], 3: ["red", "green", "blue"]}.get(self.in_channels)
        return {"channels": channels or [f"channel {i}" for i in range(self.in_channels)]}

    def is_input(self, path: Path) -> bool:
        """Whether ``path``, met in a folder given to ``cnnsuite predict``, is one input."""
        return is_listed(path, self.input_extensions)

    def inputs_taken(self) -> str:
        """What :meth:`is_input` takes, in words, for a message that found none."""
        return ", ".join(self.input_extensions)

    def content_suffix(self, data: bytes) -> str | None:
        """The one of :attr:`input_extensions` that the file ``data`` is, told from its content,
        or None: what ``serve`` names an upload whose own name has no ending the task takes (a
        browser's ``Blob`` is named ``blob``). The default knows the image formats Pillow does
        (from the header); a task of other files tells its own."""
        return image_suffix(data, self.input_extensions)

    def restore_preprocessing(self, state: dict) -> None:
        """Take what the test preprocessing learnt from the training data (statistics, say)
        from a checkpoint's datamodule state, without its split: prediction reads no data
        folder. The default has nothing to take."""

    def synthetic_batch(self, size: int, generator: torch.Generator | None = None):
        """A training batch of ``size`` samples of random values, laid out as the training
        loader gives it: what ``cnnsuite bench`` times a training step on (the values do not
        change the work a network does; the shape does). Nothing is read. The default is
        ``(x, labels)``: samples of :attr:`input_shape` and class indices below
        :attr:`num_classes` (multi-hot vectors when :attr:`multilabel`); a task whose batches
        hold more (boxes, lists of images) overrides it."""
        if self.input_shape is None:
            raise NotImplementedError(
                f"{type(self).__name__} has no fixed input_shape: it must override synthetic_batch for the bench"
            )
        if self.multilabel:
            labels = torch.randint(2, (size, self.num_classes), generator=generator).float()
        else:
            labels = torch.randint(self.num_classes, (size,), generator=generator)
        return torch.randn(size, *self.input_shape, generator=generator), labels

    # --- shared ---------------------------------------------------------------------
    @classmethod
    def local_hparams(cls) -> tuple[str, ...]:
        """Init arguments that say where data is read and written on this machine and how it is
        loaded (:attr:`path_hparams`, :attr:`loading_hparams`), not what the run is: a
        datamodule rebuilt from a checkpoint takes them from the user, never from the file."""
        params = cls.init_parameters()
        return tuple(k for k in dict.fromkeys((*cls.path_hparams, *cls.loading_hparams)) if k in params)

    @classmethod
    def init_parameters(cls) -> dict[str, inspect.Parameter]:
        """Every init argument, the subclass's own and those its ``**kwargs`` pass on to this
        class's ``__init__`` (what jsonargparse shows in ``--help``)."""
        params: dict[str, inspect.Parameter] = {}
        for klass in reversed(cls.__mro__):
            if "__init__" in vars(klass) and issubclass(klass, TaskDataModule):
                params |= {
                    name: p
                    for name, p in inspect.signature(klass.__init__).parameters.items()
                    if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name != "self"
                }
        return params

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def root(self) -> Path:
        """Where samples are read from: the user's folder or the embedded default."""
        if self.hparams.data_dir is not None:
            return Path(self.hparams.data_dir).expanduser()
        suffix = "".join(f"-{k}={v}" for k, v in sorted(self.generation_changes.items()))
        return Path(self.hparams.data_root) / f"{self.default_name}{suffix}"

    @property
    def generation_args(self) -> dict:
        """The values of :attr:`generation_hparams`: what the embedded default was made with."""
        return {key: self.hparams[key] for key in self.generation_hparams}

    @property
    def generation_changes(self) -> dict:
        """Those of :attr:`generation_args` that are not the task's defaults."""
        return {k: v for k, v in self.generation_args.items() if v != self._init_default(k)}

    @classmethod
    def _init_default(cls, key: str):
        return cls.init_parameters()[key].default

    def prepare_data(self) -> None:
        if self.hparams.data_dir is None:
            defaults = {key: self._init_default(key) for key in self.generation_hparams}
            prepare_once(self.root, self.write_default, self.generation_args, defaults)

    def find_bad(self, ids: list[str], decode: bool) -> dict[str, BadFileError]:
        """``{id: error}`` of the samples of ``ids`` that cannot be used, each error naming its
        file and what is wrong. ``decode`` false: a quick check (headers; a file damaged past
        its header is named when it is read); true, with ``on_bad_file: skip``: every sample
        read in full, so that none the loader meets is bad. Tasks whose readers can fail
        override this (a task may keep what it learns of each good sample, as a video's
        duration); the default trusts the files."""
        return {}

    @property
    def on_bad_file(self) -> str:
        """``error`` (stop, naming every bad file) or ``skip`` (leave them out, with one warning
        naming each): the task's ``on_bad_file`` option; ``error`` for a task without one."""
        return self.hparams.get("on_bad_file", "error")

    def check_samples(self, ids: list[str], stage: str | None = None) -> list[str]:
        """``ids`` less their bad samples (:meth:`find_bad`). Each sample is checked once:
        before training every sample of the run (``setup``), so that every bad one is named
        before the first step (a bad test file found after the last epoch costs a run); a
        ``stage`` split not checked then (evaluation without training) when it is built. The
        bad ones among those checked now are named together (:attr:`on_bad_file`). A
        prepared folder's samples were checked when it was written."""
        if self.prepared is not None:
            return list(ids)
        new = [i for i in dict.fromkeys(ids) if i not in self._checked]
        bad = self.find_bad(new, decode=self.on_bad_file == "skip") if new else {}
        what = self.sample_noun if stage is None else f"{stage} {self.sample_noun}"
        report_bad_files(list(bad.values()), len(dict.fromkeys(ids)), self.on_bad_file, what=what)
        # kept once said: a bad sample that stopped the run is looked at again when asked again
        self._checked.update(new)
        self._bad.update(bad)
        return [i for i in ids if i not in self._bad]

    def setup(self, stage: str) -> None:
        if self.prepared is not None:  # decided and checked when it was prepared
            self.splits = self.splits or self.prepared["splits"]
            self._save_split_record()
            return
        if self.splits is None:
            self.splits = self.decide_splits()
        if stage == "fit":
            self.check_samples([i for s in STAGES for i in self.splits[s]])
        self._save_split_record()

    def state_dict(self) -> dict:
        """The run's split, saved in every checkpoint."""
        return {"splits": self.splits} if self.splits is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        """Take the split of a checkpoint (Lightning calls this on resume, after ``setup``)."""
        splits = state_dict.get("splits")
        if splits is None:
            return
        self.use_splits(splits, "the checkpoint's split")
        self._save_split_record()

    def use_splits(self, splits: dict[str, list[str]], source: object) -> None:
        """Take ``splits`` (a run's, from ``source``) as this data's split, each of its ids
        checked to be a sample of it; an embedded default not generated yet (``prepare_data``
        writes it before ``setup``) is checked when Lightning loads the checkpoint's state."""
        check_splits(splits, source)
        if self.prepared is not None or self.root.exists():
            self._check_known(splits, source)
        self.splits = splits
        self.datasets = LazyDatasets(self._make_stage)

    def _save_split_record(self) -> None:
        """``splits.json`` in the run folder: the split, readable without loading a checkpoint."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return
        log_dir = trainer.log_dir  # a collective call: every rank asks, once
        if log_dir and trainer.is_global_zero:
            save_splits(Path(log_dir) / "splits.json", self.splits)

    def _make_stage(self, stage: str) -> Dataset:
        if self.splits is None:
            raise RuntimeError("setup() decides the split before any dataset is built")
        ids = self.splits[stage] if self.prepared is None else self.prepared["items"][stage]
        return self.make_dataset(ids, stage)

    def unknown_ids(self, splits: dict[str, list[str]]) -> dict[str, list[str]]:
        """``stage → ids`` of ``splits`` that are no sample of this data (none: the split is for it)."""
        known = {sample_id for sample_id, _ in self.samples()}
        unknown = {s: [i for i in ids if i not in known] for s, ids in splits.items()}
        return {s: ids for s, ids in unknown.items() if ids}

    def _check_known(self, splits: dict[str, list[str]], source: object) -> None:
        """Every id of ``splits`` must be a sample of the data, or the split is for other data."""
        for s, unknown in self.unknown_ids(splits).items():
            raise ConfigError(f"{source}: {len(unknown)} {s} entries are not in {self.root}, e.g. {unknown[0]}")

    def listed_splits(
        self, splits: dict[str, list[str]], source: object, files: dict[str, object] | None = None
    ) -> dict[str, list[str]]:
        """A split the data lists (``source``: its own lists, ``split_file``; ``files``: the file
        each stage's list comes from, the ``source`` named where one file holds them all), each id
        checked to be a sample and each list to hold one.
        A train list with a test list alone (UCF101's) gets a validation split drawn from train;
        with a val list alone (COCO's and VOC's downloads: their test labels are not public) the
        val list is the test split, and validation is drawn from train the same way:
        ``val_fraction`` of the samples listed, stratified, by ``seed``."""
        if files and len(set(files.values())) == 1:  # one file holds every list (CUB's)
            source, files = next(iter(files.values())), None
        check_splits(splits, source, [s for s in STAGES if s in splits])
        self._check_known(splits, source)
        empty = next((stage for stage, ids in splits.items() if not ids), None)
        if empty is not None:  # an empty list gives no val metric to pick checkpoints by, or no test score
            noun = self.sample_noun
            raise ConfigError(
                f"{(files or {}).get(empty, source)}: gives the {empty} split no {noun}; expected one or more "
                f"({noun} left out as bad are not counted)"
            )
        if "val" in splits and "test" in splits:
            return splits
        held_out = "test" if "test" in splits else "val"
        if len(splits["train"]) < 2:  # scikit-learn's split would fail with its traceback
            raise ConfigError(
                f"{source}: the train list holds {len(splits['train'])} sample(s), too few to draw validation "
                f"from; give a {'val' if held_out == 'test' else 'test'} list too"
            )
        labels, hp = dict(self.samples()), self.hparams
        listed = sum(len(ids) for ids in splits.values())  # lists may leave samples out (VOC's)
        train, val = split_validation(splits["train"], [labels[i] for i in splits["train"]], hp.val_fraction,
                                      listed, hp.seed, self.class_names)  # fmt: skip
        named = {stage: f" ({path})" for stage, path in (files or {}).items()}
        test_list = "" if held_out == "test" else f"its val list{named.get('val', '')} is the test split; "
        rank_zero_info(
            f"{source}: no {'validation' if held_out == 'test' else 'test'} list; {test_list}validation is {len(val)} "
            f"samples drawn from the {len(splits['train'])} of the train list{named.get('train', '')} "
            f"(data.val_fraction {hp.val_fraction} of the {listed} listed, data.seed {hp.seed})"
        )
        return {"train": train, "val": val, "test": splits[held_out]}

    def decide_splits(self) -> dict[str, list[str]]:
        """The train/val/test split where none is known yet (a checkpoint's or a prepared folder's
        is kept): ``split_file``, else the data's own lists or split folders, else stratified by
        ``seed``. A task whose data brings a split of its own (a dataset's official train/test)
        overrides it."""
        if self.hparams.split_file:
            splits, source = load_splits(Path(self.hparams.split_file)), self.hparams.split_file
        else:
            splits, source = read_split_lists(self.root), f"{self.root}/{{train,val,test}}.txt"
        if splits is not None:
            return self.listed_splits(splits, source)
        samples = self.samples()
        hp, names = self.hparams, self.class_names
        if self.split_folders:
            splits, note = splits_from_folders(samples, self.split_folders, hp.val_fraction, hp.seed, names, self.root)
            if note:
                rank_zero_warn(f"{self.root}: {note}")
            return splits
        ids, labels = zip(*samples, strict=True)
        return stratified_split(ids, labels, hp.val_fraction, hp.test_fraction, hp.seed, names, self.root)

    def _loader(self, stage: str, shuffle: bool = False) -> DataLoader:
        """The stage's loader. The training one (``shuffle``) resumes exactly in the middle of
        an epoch (:mod:`cnnsuite.data.resumable`): its order is drawn from the run's seed and
        the epoch, sharded per DDP rank, and its position travels in every checkpoint."""
        workers = self.num_workers
        common = {
            "batch_size": self.hparams.batch_size,
            "num_workers": workers,
            "persistent_workers": workers > 0,
            # pinned pages make the copy to a CUDA device asynchronous; outside a fit, none
            "pin_memory": isinstance(getattr(self.trainer, "accelerator", None), CUDAAccelerator),
            "collate_fn": type(self).collate_fn,
        }
        if not shuffle:
            return DataLoader(self.datasets[stage], generator=self._rank_generator(), **common)
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        seed, epoch = run_seed(world), self._fit_epoch()
        sampler = EpochSampler(self.datasets[stage], num_replicas=world, rank=rank, seed=seed, epoch=epoch)
        # the rank's own generator (see _rank_generator), re-seeded by the loader each epoch
        generator = torch.Generator().manual_seed(pass_seed(seed, epoch, rank))
        return ResumableDataLoader(self.datasets[stage], sampler=sampler, generator=generator, **common)

    @property
    def num_workers(self) -> int:
        """The processes each loader starts: ``data.num_workers``, or for ``auto`` this
        training process's :func:`auto_workers` (the trainer's devices share the machine)."""
        workers = self.hparams.num_workers
        return auto_workers(getattr(self.trainer, "num_devices", 1)) if workers == "auto" else workers

    def augment_batch(self, batch):
        """A training batch with the task's random augmentation of whole batches, on the device
        it was moved to (:meth:`on_after_batch_transfer`); random draws come from torch's global
        generator, whose state every checkpoint carries, so a resumed run draws what the whole
        run drew. The default augments nothing here (a task that augments each sample does it
        in its dataset)."""
        return batch

    @property
    def augment_generator(self) -> torch.Generator | None:
        """What :meth:`augment_batch` draws from: torch's global generator (None) in one
        process, whose state every checkpoint carries; under DDP a generator of the rank's own
        (seeded as :meth:`_rank_generator`), or every rank would draw the same moves for its
        own samples."""
        trainer = self.trainer
        if trainer is None or trainer.world_size <= 1:
            return None
        if self._augment_generator is None:
            self._augment_generator = self._rank_generator()
        return self._augment_generator

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Lightning's hook after a batch reaches the model's device: training batches get
        :meth:`augment_batch` there, on the accelerator when there is one; validation, test and
        prediction never. Lightning's model summary passes the model's example input through
        it too, at the start of a fit: a bare tensor, not a loader's batch of fields, which is
        left alone (and draws nothing from the generator the run's augmentations use)."""
        trainer = self.trainer
        if trainer is None or not trainer.training or isinstance(batch, torch.Tensor):
            return batch
        return self.augment_batch(batch)

    def _fit_epoch(self) -> int:
        """The epoch the training loader is made for: the fit loop's count of finished
        epochs (a run resumed after its epoch ``e`` ended asks for the loader of ``e + 1``
        before Lightning's ``set_epoch``); 0 outside a fit."""
        fit_loop = getattr(self.trainer, "fit_loop", None)
        return fit_loop.epoch_progress.current.processed if fit_loop is not None else 0

    def _rank_generator(self) -> torch.Generator:
        """A random generator of the rank's own (one process is rank 0). Under DDP every rank
        starts from the same seed, and the loader's generator seeds its workers'
        augmentations, which would otherwise repeat on every rank. And a loader with a
        generator of its own draws its workers' seed from it when it starts an epoch, not from
        torch's global generator, which training's augmentations draw from: how often a run
        validates then does not change what its training draws."""
        rank = self.trainer.global_rank if self.trainer is not None else 0
        return torch.Generator().manual_seed(torch.initial_seed() + 1_000_003 * rank)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")
