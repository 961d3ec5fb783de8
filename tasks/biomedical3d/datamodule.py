"""Where biomedical3d's volumes come from, and how MONAI makes them comparable.

Three sources, one pipeline:

- the embedded default: generated lesion volumes (see ``default_data.py``) written once as
  NIfTI files plus ``labels.csv`` under ``data_root/biomedical3d``;
- a user's folder (``data_dir``): ``labels.csv`` with columns ``image,label`` (paths relative
  to the folder; a label is a name or an integer, several labels ``a;b`` make a multi-label
  run, see ``multilabel``) and the volumes, in any format MONAI's
  ``LoadImage`` reads — NIfTI, NRRD, a DICOM series folder;
- a MedMNIST v2 3D file (``medmnist_npz``), with its own train/val/test split;
- a folder written by ``cnnsuite prepare`` from any of them (``data_dir``): its shards hold
  the preprocessed volumes, which take the caches' place.

Volumes may differ in shape, spacing, orientation and dtype: MONAI transforms bring them to
one orientation (RAS), one voxel spacing (``spacing``, optional) and one size
(``spatial_size``, which need not be cubic), then z-score their intensities. The
deterministic part is cached (``cache``: in memory, or on disk under ``cache_dir``) so later
epochs neither re-read nor re-sample; random flips, 90° rotations and intensity shifts come
after the cache (or the shards), drawn every epoch.
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.data.utils import pickle_hashing
from monai.transforms import (
    Compose,
    EnsureTyped,
    NormalizeIntensityd,
    Orientationd,
    Resized,
    Spacingd,
)
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import default_collate

from cnnsuite.data import BadFileError, Input, TaskDataModule, check_folder, collect_bad, report_bad_files
from cnnsuite.data.augment import BatchFlipsAndTurns
from cnnsuite.data.cache import fits_cache, say_over_limit
from cnnsuite.data.folders import walk
from cnnsuite.data.labels import LABELS_CSV, multi_hot
from cnnsuite.data.splits import STAGES
from cnnsuite.errors import ConfigError

from .default_data import CLASSES, lesion_volume
from .readers import (
    VOLUME_EXTENSIONS,
    CheckResampledSized,
    LoadVolumed,
    _load_medmnist,
    check_header,
    is_dicom_series,
    read_labels,
    volume_suffix,
)


@contextmanager
def bad_files_surface():
    """MONAI wraps each transform's exception in ``RuntimeError("applying transform ...")``;
    re-raise the :class:`BadFileError` inside, whose message names the file."""
    try:
        yield
    except RuntimeError as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, BadFileError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None


class CheckedCacheDataset(CacheDataset):
    """MONAI's ``CacheDataset`` that reads every volume before it complains, then reports all
    the unreadable ones in one error: a folder with many bad files gets the whole list at once."""

    cached = True  # every volume preprocessed once and kept, as a DecodedCache within its limit

    def _fill_cache(self, indices: Sequence[int] | None = None) -> list:
        cache = super()._fill_cache(indices)
        report_bad_files([item for item in cache if isinstance(item, BadFileError)], len(cache), what="volumes")
        return cache

    def _load_cache_item(self, idx: int):
        try:
            with bad_files_surface():
                return super()._load_cache_item(idx)
        except BadFileError as err:
            return err  # in the cache's place, collected by _fill_cache


def file_stamps(path: str) -> list[tuple[str, int, int]]:
    """``(path, size, mtime_ns)`` of a volume's file, or of every file of a DICOM series folder."""
    root = Path(path)
    files = [f for f in walk(root) if f.is_file()] if root.is_dir() else [root]
    return [(str(f), (stat := f.stat()).st_size, stat.st_mtime_ns) for f in files]


def hash_item(item: dict) -> bytes:
    """The disk cache's key of one item: the item (path and label, as MONAI's default) and its
    files' sizes and modification times, so a volume rewritten at the same path is read again."""
    return pickle_hashing({**item, "files": file_stamps(item["image"])})


class Surfaced(TorchDataset):
    """The decoded items of ``dataset``, their bad-file errors unwrapped (see
    :func:`bad_files_surface`): a volume read on access (no cache) that cannot be used is named
    in one line, not inside MONAI's wrapping of the error."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        with bad_files_surface():
            return self.dataset[index]


def _collate(items: list[dict]) -> tuple:
    """MONAI items are dictionaries; the classifier takes ``(volumes, labels)``."""
    batch = default_collate(items)
    return batch["image"], batch["label"]


class Biomedical3DDataModule(TaskDataModule):
    """Volumes → ``(volume (1, D, H, W), label)`` batches for a 3D classifier.

    ``cache``: ``memory`` (MONAI CacheDataset: a split whose preprocessed float32 volumes fit
    ``cache_limit_mb``; a larger one is read and preprocessed again every epoch, with one line
    saying so, so memory never grows past the limit), ``disk`` (PersistentDataset under
    ``cache_dir``, default ``<data_root>/cache/biomedical3d``) or ``none``.
    ``multilabel``: ``auto`` trains multi-label when some row of ``labels.csv`` holds several
    labels (``a;b``), ``true`` always (labels become multi-hot vectors), ``false`` never.
    """

    default_name = "biomedical3d"
    sample_noun = "volumes"
    pixel_kind = "volume"
    streams_prepared = True
    after_decoding_hparams = ("batch_size", "augment")
    collate_fn = staticmethod(_collate)
    path_hparams = (*TaskDataModule.path_hparams, "medmnist_npz", "cache_dir")
    source_hparams = (*TaskDataModule.source_hparams, "medmnist_npz")
    input_extensions = VOLUME_EXTENSIONS
    generation_hparams = ("default_size",)

    def __init__(
        self,
        medmnist_npz: str | None = None,
        cache_dir: str | None = None,
        spatial_size: list[int] | None = None,
        spacing: list[float] | None = None,
        cache: str = "memory",
        cache_limit_mb: float = 1024,
        augment: bool = True,
        default_size: int = 900,
        batch_size: int = 16,
        multilabel: Literal["auto"] | bool = "auto",
        **kwargs,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        data_dir = self.raw_data_dir
        if data_dir is not None and medmnist_npz is not None:
            raise ConfigError("data.data_dir and data.medmnist_npz: give one source, not both")
        if cache not in ("memory", "disk", "none"):
            raise ConfigError(f"data.cache={cache!r}: expected 'memory', 'disk' or 'none'")
        if spatial_size is not None and len(spatial_size) != 3:
            raise ConfigError(f"data.spatial_size={spatial_size}: expected 3 sizes (D, H, W)")
        # MONAI's Spacingd keeps an axis whose spacing is 0 or below as stored, without a word
        if spacing is not None and (len(spacing) != 3 or not all(math.isfinite(v) and v > 0 for v in spacing)):
            raise ConfigError(f"data.spacing={list(spacing)}: expected 3 voxel sizes in mm, each above 0")
        self.spatial_size = tuple(spatial_size or (32, 32, 32))
        self.in_channels = 1
        if medmnist_npz is not None:
            self._npz = _load_medmnist(Path(medmnist_npz).expanduser())
            labels = np.concatenate([self._npz[f"{s}_labels"] for s in STAGES])
            self.class_names = [str(i) for i in range(int(labels.max()) + 1)]
            self.decide_multilabel(multilabel is True)
        elif data_dir is not None:
            self.class_names, self.targets, decided = read_labels(check_folder(data_dir), multilabel)
            self.decide_multilabel(decided)
        else:
            self.class_names = list(CLASSES)
            self.decide_multilabel(multilabel is True)
        self.use_prepared()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.in_channels, *self.spatial_size)

    # --- the embedded default -----------------------------------------------------
    def write_default(self, folder: Path) -> None:
        rng = np.random.default_rng(20260301)
        (folder / "volumes").mkdir()
        rows = []
        for index in range(self.hparams.default_size):
            label = index % len(CLASSES)
            name = f"volumes/case_{index:04d}.nii.gz"
            volume = lesion_volume(label, 32, rng)
            nib.save(nib.Nifti1Image(volume, affine=np.diag([1.0, 1.0, 1.0, 1.0])), folder / name)
            rows.append((name, CLASSES[label]))
        with (folder / LABELS_CSV).open("w", newline="") as f:
            csv.writer(f).writerows([("image", "label"), *rows])

    # --- samples and splits -------------------------------------------------------
    def list_samples(self) -> list[tuple[str, int]]:
        """A MedMNIST file's samples are its volumes, ``<split>/<index>`` in its own split (what
        a checkpoint's split holds and evaluation checks it against); a folder's, its labels."""
        if self.hparams.medmnist_npz is not None:
            samples = [
                (f"{s}/{i}", int(label.flat[0])) for s in STAGES for i, label in enumerate(self._npz[f"{s}_labels"])
            ]
            if self.multilabel:
                return [(i, multi_hot([label], self.num_classes)) for i, label in samples]
            return samples
        if self.hparams.data_dir is not None:
            return list(self.targets.items())
        _, targets, _ = read_labels(self.root, self.multilabel, self.class_names)
        return list(targets.items())

    def decide_splits(self) -> dict[str, list[str]]:
        if self.hparams.medmnist_npz is not None:  # the file's own split
            ids = [sample_id for sample_id, _ in self.samples()]
            return {s: [i for i in ids if i.startswith(f"{s}/")] for s in STAGES}
        return super().decide_splits()

    def find_bad(self, ids: list[str], decode: bool) -> dict[str, BadFileError]:
        """The volumes of ``ids`` whose header does not read (the loader says why), declares
        more voxels than the limit or names its data file outside its folder, and the NIfTI
        volumes cut short (:func:`~.readers.may_be_cut`, from the file's length or its gzip
        trailer). Headers and ends only, as the image tasks check theirs: a volume damaged
        inside its voxels is named when it is read. A MedMNIST file's arrays were checked when
        it was loaded; the embedded default's volumes were written by the suite (reading their
        headers would slow each ``make train`` for nothing)."""
        if self.hparams.medmnist_npz is not None or self.hparams.data_dir is None:
            return {}

        def check(sample_id: str) -> None:
            path = self.root / sample_id
            if not check_header(path):  # the loader reads it and says why
                LoadVolumed()({"image": str(path)})

        return collect_bad(ids, check)

    @property
    def root(self) -> Path:
        if self.hparams.medmnist_npz is not None:
            return Path(self.hparams.medmnist_npz).expanduser()
        return super().root

    def prepare_data(self) -> None:
        if self.hparams.medmnist_npz is None:
            super().prepare_data()

    # --- datasets -----------------------------------------------------------------
    def make_dataset(self, ids: list[str], stage: str) -> Dataset:
        ids = self.check_samples(ids, stage)
        labels = dict(self.samples())
        if self.hparams.medmnist_npz is not None:
            items = []
            for sample_id in ids:
                split, index = sample_id.split("/")
                image = self._npz[f"{split}_images"][int(index)].astype(np.float32)[None]
                items.append({"image": image, "label": labels[sample_id]})
        else:
            items = [{"image": str(self.root / i), "label": labels[i]} for i in ids]
        preprocess = Compose(self.preprocessing())

        def read(index: int) -> dict:
            with bad_files_surface():
                return preprocess(items[index])

        keep = self.decoded_cache(
            stage, own=lambda read, ids, nbytes, what: self._monai_cache(items, preprocess, nbytes, what)
        )
        nbytes = len(ids) * int(np.prod(self.spatial_size)) * 4  # float32 volumes
        decoded = keep(read, ids, nbytes, f"{self.root}: {len(ids)} volumes")
        # The random augmentation comes after the batch reaches the device (augment_batch),
        # whichever keeps the volumes (MONAI's caches, or a prepared folder's shards).
        return Surfaced(decoded)

    def _monai_cache(self, items: list[dict], preprocess: Compose, nbytes: float, what: str) -> Dataset:
        """The preprocessed volumes of ``items`` (``nbytes`` of them) as ``data.cache`` keeps them."""
        if self.hparams.cache == "memory":
            if fits_cache(nbytes, self.hparams.cache_limit_mb):
                return CheckedCacheDataset(items, preprocess, progress=False, num_workers=None)
            say_over_limit(what, nbytes, self.hparams.cache_limit_mb)
        if self.hparams.cache == "disk" and self.hparams.medmnist_npz is None:
            # Each cached file is named by its item's files (hash_item) and by the pickled
            # preprocessing transforms, every argument included (MONAI's json_hashing cannot
            # serialise transforms and falls back to their class names).
            return PersistentDataset(
                items, preprocess, self._cache_dir(), hash_func=hash_item, hash_transform=pickle_hashing
            )
        return Dataset(items, preprocess)

    def preprocessing(self) -> list:
        """The deterministic transforms, from what the source holds to a z-scored volume of
        ``spatial_size``. Their output is what the caches keep; the disk cache is keyed on
        all their arguments, so changing one here never serves volumes made by the old one."""
        steps = []
        if self.hparams.medmnist_npz is None:  # files: read, then bring to one orientation and spacing
            steps = [LoadVolumed("image"), Orientationd("image", axcodes="RAS", labels=None)]
            if self.hparams.spacing is not None:
                steps.append(CheckResampledSized("image", self.hparams.spacing))
                steps.append(Spacingd("image", pixdim=self.hparams.spacing, mode="bilinear"))
        return [
            *steps,
            Resized("image", spatial_size=self.spatial_size, mode="trilinear"),
            NormalizeIntensityd("image"),
            EnsureTyped("image", track_meta=False),
        ]

    @property
    def slice_views(self) -> tuple[str, str, str]:
        """What a slice across each axis of a preprocessed volume shows. Files are turned to
        RAS (axis 0 runs to the right, 1 to the front, 2 up): a slice across axis 0 is sagittal,
        across 1 coronal, across 2 axial. A MedMNIST file's arrays (or a folder prepared from
        one) keep the file's own axes, whose orientation nothing records."""
        source = self.prepared["hyper_parameters"] if self.prepared is not None else self.hparams
        return ("axis 0", "axis 1", "axis 2") if source.get("medmnist_npz") else ("sagittal", "coronal", "axial")

    # --- one file at a time (predict, serve) --------------------------------------------
    def is_input(self, path: Path) -> bool:
        """A volume file, or a folder of DICOM files (one series, :func:`~.readers.is_dicom_series`)."""
        return is_dicom_series(path) if path.is_dir() else super().is_input(path)

    def inputs_taken(self) -> str:
        return super().inputs_taken() + ", or a folder of DICOM files (one series)"

    def describe_preprocessing(self) -> dict:
        spacing = self.hparams.spacing
        return {
            "read": "one 3D volume (NIfTI, NRRD, MetaImage, or a folder of DICOM files) with MONAI's LoadImage, "
            "channel first",
            "orientation": "RAS (MONAI Orientation)",
            "spacing": f"resampled to {spacing} mm, bilinear" if spacing else "as stored (not resampled)",
            "resize": f"to {list(self.spatial_size)} voxels (D, H, W), trilinear",
            "normalisation": "z-score of each volume on its own: (x - its mean) / its std, the standard deviation "
            "over all voxels, dividing by their count; a volume of one value becomes all zeros (its std taken as 1) "
            "(MONAI NormalizeIntensity)",
            "layout": "(1, D, H, W)",
        }

    def content_suffix(self, data: bytes) -> str | None:
        """A volume's ending from its first bytes (:func:`~.readers.volume_suffix`)."""
        return volume_suffix(data)

    def read_input(self, path: Path) -> Input:
        """The volume through the test split's preprocessing (files are read, never the cache)."""
        with bad_files_surface():
            volume = Compose(self.preprocessing())({"image": str(path)})["image"]
        return Input(path, volume)

    def augment_batch(self, batch: tuple) -> tuple:
        """Training's random flips along each axis, quarter turns and intensity shifts (±0.1),
        each with probability ½ and drawn per volume, on the batch where it is
        (:class:`~cnnsuite.data.augment.BatchFlipsAndTurns`), in the (D, H) and (H, W) planes
        whose two sizes are equal (a quarter turn of a 96×64 plane could not be stacked)."""
        if not self.hparams.augment:
            return batch
        volumes, labels = batch
        moves = BatchFlipsAndTurns(3, [(0, 1), (1, 2)], prob=0.5, shift=0.1)
        return moves(volumes, self.augment_generator), labels

    def _cache_dir(self) -> Path:
        """Under ``cache_dir`` (default ``<data_root>/cache``), one folder per source, so a
        user's folder is never written to; the files' and transforms' keys are in the file
        names inside (see :meth:`make_dataset`)."""
        hp = self.hparams
        base = Path(hp.cache_dir) if hp.cache_dir else Path(hp.data_root) / "cache"
        self.check_writes_outside("data.cache_dir" if hp.cache_dir else "data.data_root", base)
        return base / "biomedical3d" / hashlib.sha1(str(self.root.resolve()).encode()).hexdigest()[:12]
