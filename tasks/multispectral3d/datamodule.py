"""Where multispectral3d's samples come from: GeoTIFF patches read with rasterio, in one of
two layouts:

- EuroSAT-MS: ``<Class>/<Class>_<n>.tif``, one file of every band per patch, the class its folder;
- BigEarthNet-S2: ``<patch>/<patch>_<band>.tif``, one folder per patch and one single-band file
  per band at the band's own resolution (10, 20 or 60 m), with
  ``<patch>/<patch>_labels_metadata.json`` holding ``"labels"``. A patch's bands are read
  together, each resampled (``resampling``, bilinear by default) onto the grid of its finest
  band. Its labels are its row of ``labels.csv`` (columns ``patch,label``; ``a;b`` for
  several) where the folder has one, else the ``labels`` list of its metadata. A patch with
  several labels makes the run multi-label (``multilabel``, :mod:`cnnsuite.data.labels`).

A sample is a cube of bands × H × W. The bands are named, never indexed: EuroSAT-MS files
hold B01 … B12 and then B8A (last, not after B08), and ``bands`` picks a subset by name in
any order. A file's band names are its band descriptions when it has them (``B1`` read as
``B01``), else EuroSAT-MS's 13 when it has 13 bands, else ``bands`` itself when it names as
many bands as the file has.

Reflectances are normalised per band with the mean and standard deviation of the *training*
split, computed once in ``setup``. They are the datamodule's state (with the split), so they
travel inside every checkpoint as tensors and evaluation or prediction later uses the run's
own statistics, not ones recomputed from other files.

``layout`` says how the model sees a cube: ``cube`` (1 × bands × H × W, the spectrum as the
depth axis of a 3D CNN), ``channels`` (bands × H × W, the 2D CNN with bands as channels, as
TorchGeo trains EuroSAT) or ``mean`` (1 × H × W, the brightness image: a space-only baseline).

The embedded default (``default_data.py``) is written once as real GeoTIFFs, with a UTM CRS and
a 10 m transform as Sentinel-2 tiles have, under ``data_root/multispectral3d``: ``default``
``eurosat`` writes single-label patches in the EuroSAT-MS layout, ``bigearthnet`` multi-label
mosaics of land covers in the BigEarthNet-S2 layout (bands at their native resolutions, labels in
each patch's metadata JSON), so each default is read by the reader of the data it stands for.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import Affine
from rasterio.warp import reproject
from torch.utils.data import Dataset

from cnnsuite.data import (
    BadFileError,
    Input,
    TaskDataModule,
    check_folder,
    collect_bad,
    list_classes,
    list_samples,
)
from cnnsuite.data.augment import BatchFlipsAndTurns
from cnnsuite.data.cache import fits_cache
from cnnsuite.data.folders import spread
from cnnsuite.data.labels import multi_hot
from cnnsuite.errors import ConfigError, StateError

from .default_data import (
    BANDS,
    BIGEARTHNET_BANDS,
    CLASSES,
    MOSAIC_CLASSES,
    RESOLUTIONS,
    digital_numbers,
    mosaic,
    patch,
)
from .readers import (
    DTYPES,
    EXTENSIONS,
    METADATA,
    RESAMPLINGS,
    GeoTiffReader,
    band_files,
    geotiff_suffix,
    kept_dtype,
    read_patch_labels,
)

LAYOUTS = ("cube", "channels", "mean")
#: the embedded defaults: single-label patches as EuroSAT-MS, multi-label ones as BigEarthNet-S2
DEFAULTS = ("eurosat", "bigearthnet")
TRUE_COLOUR = ("B04", "B03", "B02")
FALSE_COLOUR = ("B08", "B04", "B03")  # vegetation red: NIR shown as red


def model_input(raw: np.ndarray, stats: tuple[torch.Tensor, torch.Tensor], layout: str) -> torch.Tensor:
    """Reflectances ``(bands, H, W)``, or a batch of them ``(N, bands, H, W)``, as the model takes
    them: normalised per band with the training split's ``stats`` (mean, std) and shaped by
    ``layout``. The datasets and prediction's ``read_input`` both go through it; training's
    random flips and turns come later, on the batch (:meth:`MultispectralDataModule.augment_batch`)."""
    mean, std = (s[:, None, None] for s in stats)
    cube = (torch.from_numpy(raw.astype(np.float32, copy=False)) - mean) / std
    if layout == "cube":
        cube = cube.unsqueeze(-4)
    elif layout == "mean":
        cube = cube.mean(-3, keepdim=True)
    return cube.contiguous()


def composite(raw: np.ndarray, band_names: list[str], bands: tuple[str, str, str]) -> np.ndarray:
    """``(H, W, 3)`` picture in 0..1 of the reflectances ``raw`` (bands in ``band_names``'
    order) shown as red, green and blue, stretched between the 2nd and 98th percentiles."""
    rgb = np.stack([raw[band_names.index(b)] for b in bands], axis=-1).astype(np.float32)
    low, high = np.percentile(rgb, (2, 98))
    return np.clip((rgb - low) / (high - low + 1e-8), 0, 1)


def patches_nbytes(count: int, bands: int, size: tuple[int, int] | None, dtype: str) -> float:
    """What ``count`` patches read from files of ``dtype`` take in memory (as
    :func:`~.readers.kept_dtype`); patches of any size (``size`` None) are never cached, as if infinite."""
    return count * bands * size[0] * size[1] * kept_dtype(dtype).itemsize if size else math.inf


def band_moments(values: np.ndarray) -> np.ndarray:
    """``(2, bands)``: each band's mean and mean square over a patch's pixels, in float64: what
    the band statistics sum over the training patches."""
    cube = values.astype(np.float64)
    return np.stack([cube.mean(axis=(1, 2)), (cube**2).mean(axis=(1, 2))])


def take_or_read(checked: dict[str, np.ndarray], reader: GeoTiffReader, root: Path, sample_id: str) -> np.ndarray:
    """The patch's reflectances: those its check read (``checked``), handed over once, else the file's."""
    values = checked.pop(sample_id, None)
    return values if values is not None else reader(root / sample_id)


class PatchDataset(Dataset):
    """``(normalised sample, class index)`` for each relative path in ``ids``, shaped by ``layout``.
    The reflectances are kept in ``cache`` (the datamodule's
    :meth:`~cnnsuite.data.TaskDataModule.decoded_cache`): read once and kept in memory when the
    split fits in ``cache_limit_mb`` (see :mod:`cnnsuite.data.cache`), or read from the shards of a
    prepared folder; normalisation comes after, on a whole batch at once (``__getitems__``,
    PyTorch's batched fetch)."""

    def __init__(
        self,
        root: Path,
        ids: list[str],
        labels: list[int],
        read: Callable[[str], np.ndarray],
        nbytes: float,
        stats: tuple[torch.Tensor, torch.Tensor],
        layout: str,
        cache,
    ) -> None:
        """``read``: a patch id → its reflectances; ``nbytes``: what they all take in memory
        (:func:`patches_nbytes`)."""
        self.ids, self.labels, self.read_id = ids, labels, read
        self.stats, self.layout = stats, layout
        self.raw = cache(self.read, ids, nbytes, what=f"{root}: {len(ids)} patches")

    def read(self, index: int) -> np.ndarray:
        return self.read_id(self.ids[index])

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, object]]:
        cubes = model_input(np.stack([self.raw[i] for i in indices]), self.stats, self.layout)
        return list(zip(cubes, (self.labels[i] for i in indices), strict=True))


def usual_header(reader: GeoTiffReader, paths: list[Path]) -> tuple[list[str], tuple[int, int], str]:
    """The band names, size and data type most patches share, from the headers of patches
    spread over ``paths`` (:func:`~cnnsuite.data.folders.spread`): the first patch alone
    decided, and one odd first patch had every other named bad. Patches that do not read are
    the folder check's to name; where none of those read, the first one's error."""
    found, first_error = Counter(), None
    for path in spread(paths):
        try:
            bands, size, dtype = reader.header(path)
        except BadFileError as err:
            first_error = first_error or err
            continue
        found[(tuple(bands), tuple(size), dtype)] += 1
    if not found:
        raise first_error
    bands, size, dtype = found.most_common(1)[0][0]
    return list(bands), size, dtype


def check_state(state: dict) -> None:
    """What a checkpoint or a prepared folder says its run's patches were, before a patch is read
    with it: otherwise a damaged one is blamed on every input (a string of band names read as
    one band a letter, statistics of 5 bands for 13, a standard deviation of 0, a data type
    no patch has)."""
    bands = state.get("bands")
    if not (isinstance(bands, list) and bands and all(isinstance(b, str) and b for b in bands)
            and len(set(bands)) == len(bands)):  # fmt: skip
        raise StateError(f"bands is {shown(bands)}, expected a list of distinct band names")
    count = len(bands)
    for key in ("band_mean", "band_std"):
        value = state.get(key)
        if not isinstance(value, torch.Tensor) or value.shape != (count,) or (key == "band_std" and (value <= 0).any()):
            raise StateError(
                f"{key} is {shown(value)}, expected {count} numbers (one a band){', above 0' * (key == 'band_std')}"
            )
    size = state.get("patch_size")
    if size is not None and not (
        isinstance(size, list) and len(size) == 2 and all(type(n) is int and n > 0 for n in size)
    ):
        raise StateError(f"patch_size is {shown(size)}, expected a height and a width in pixels")
    if state.get("dtype", DTYPES[0]) not in DTYPES:
        raise StateError(f"dtype is {shown(state['dtype'])}, expected {' or '.join(DTYPES)}")


def shown(value: object) -> str:
    """A value of a damaged state, short: a tensor by its shape."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class MultispectralDataModule(TaskDataModule):
    """GeoTIFF patches → ``(sample, label)`` batches; see the module docstring.

    ``cache_limit_mb``: a split whose reflectances fit is read once and kept in memory
    (:mod:`cnnsuite.data.cache`).
    ``bands``: band names to read, in the order given (default: every band of the files).
    ``resampling``: how a band folder's bands of coarser resolution are brought onto its finest
    band's grid (a rasterio method, :data:`RESAMPLINGS`).
    ``on_bad_file``: ``error`` (default) stops naming every patch that cannot be used (wrong
    bands, size or data type, unreadable, NaN or infinity); ``skip`` leaves them out of the run
    with one warning listing them.
    ``default``: which embedded default (:data:`DEFAULTS`) a run without ``data_dir`` trains on:
    ``eurosat``, one land cover a patch, or ``bigearthnet``, mosaics of several, multi-label.
    ``default_size`` patches per class (``bigearthnet``: ``default_size`` × the number of
    classes patches), of ``default_patch`` pixels at 10 m, make the embedded default.
    ``multilabel``: ``auto`` trains multi-label when some patch has several labels (BigEarthNet's
    metadata, or ``a;b`` in ``labels.csv``), ``true`` always (one-hot for single labels),
    ``false`` never.
    """

    default_name = "multispectral3d"
    sample_noun = "GeoTIFF patches"
    pixel_kind = "geotiff"
    streams_prepared = True
    after_decoding_hparams = ("batch_size", "augment")
    generation_hparams = ("default", "default_size", "default_patch")
    input_extensions = EXTENSIONS

    def __init__(
        self,
        bands: list[str] | None = None,
        layout: str = "cube",
        augment: bool = True,
        cache_limit_mb: float = 1024,
        resampling: str = "bilinear",
        on_bad_file: str = "error",
        default: str = "eurosat",
        default_size: int = 100,
        default_patch: int = 64,
        batch_size: int = 32,
        multilabel: Literal["auto"] | bool = "auto",
        **kwargs,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        data_dir = self.raw_data_dir
        if layout not in LAYOUTS:
            raise ConfigError(f"data.layout={layout!r}: expected one of {', '.join(LAYOUTS)}")
        if bands is not None and (not bands or len(set(bands)) != len(bands)):
            raise ConfigError(f"data.bands={bands}: expected distinct band names, e.g. [B02, B03, B04, B08]")
        if resampling not in RESAMPLINGS:
            raise ConfigError(f"data.resampling={resampling!r}: expected one of {', '.join(RESAMPLINGS)}")
        if default not in DEFAULTS:
            raise ConfigError(f"data.default={default!r}: expected {' or '.join(DEFAULTS)}")
        #: reflectances the check read, of splits that fit the cache: their datasets take them
        #: rather than read each file a second time
        self.checked_values: dict[str, np.ndarray] = {}
        #: the band moments (:func:`band_moments`) of training patches the check read but did not
        #: keep: the band statistics then read no file a second time on data past the cache
        self.checked_moments: dict[str, np.ndarray] = {}
        #: ``patch folder → target`` in the band-folder layout (BigEarthNet-S2), else None
        self.patch_labels: dict | None = None
        self.decide_multilabel(multilabel is True)
        if data_dir is None:
            # Band names are checked against the default's in prepare_data: a checkpoint of a run
            # on the user's own bands rebuilds this branch for prediction (see restore_preprocessing).
            self.class_names = list(CLASSES if default == "eurosat" else MOSAIC_CLASSES)
            self.band_names, self.size = list(bands or self.default_bands), (default_patch, default_patch)
            self.dtype = DTYPES[0]
            if default == "bigearthnet":
                if multilabel is False:
                    raise ConfigError(
                        "data.multilabel=false: the bigearthnet default has several labels a patch; "
                        "expected auto or true, or data.default=eurosat"
                    )
                self.decide_multilabel(True)
        else:
            root = check_folder(data_dir)
            found = read_patch_labels(root, multilabel)
            if found is None:
                self.class_names = list_classes(root, EXTENSIONS)
                patches = [root / i for i, _ in list_samples(root, self.class_names, EXTENSIONS)]
            else:
                self.class_names, self.patch_labels, decided = found
                self.decide_multilabel(decided)
                patches = [root / i for i in self.patch_labels]
            self.band_names, self.size, self.dtype = usual_header(GeoTiffReader(bands, resampling=resampling), patches)
        self.in_channels = len(self.band_names) if layout == "channels" else 1
        self.reader = GeoTiffReader(self.band_names, self.size, self.dtype, resampling, name_unnamed=bands is not None)
        #: per-band mean and standard deviation of the training split (set by ``setup`` or a checkpoint)
        self.band_stats: tuple[torch.Tensor, torch.Tensor] | None = None
        self.use_prepared()

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        if self.size is None:  # restored from a checkpoint that did not record it
            return None
        bands = {"cube": (1, len(self.band_names)), "channels": (len(self.band_names),), "mean": (1,)}
        return (*bands[self.hparams.layout], *self.size)

    @property
    def channel_names(self) -> list[str] | None:
        """The bands in the ``channels`` layout, one input channel each; None in ``cube`` and
        ``mean``, whose input has one channel (the spectrum an axis of the sample, or averaged)."""
        return list(self.band_names) if self.hparams.layout == "channels" else None

    @property
    def default_bands(self) -> tuple[str, ...]:
        """The bands of the embedded default's files."""
        return BANDS if self.hparams.default == "eurosat" else BIGEARTHNET_BANDS

    def prepare_data(self) -> None:
        known = self.default_bands
        unknown = [b for b in self.hparams.bands or () if b not in known]
        if self.hparams.data_dir is None and unknown:
            raise ConfigError(
                f"data.bands: no band {', '.join(unknown)} in the {self.hparams.default} default; "
                f"expected names among {', '.join(known)}"
            )
        super().prepare_data()

    def write_default(self, folder: Path) -> None:
        rng = np.random.default_rng(20261125)
        size = self.hparams.default_patch
        crs = CRS.from_epsg(32632)  # WGS 84 / UTM zone 32N, as a Sentinel-2 tile over central Europe
        if self.hparams.default == "bigearthnet":
            self.write_mosaics(folder, size, crs, rng)
            return
        profile = dict(driver="GTiff", dtype=self.dtype, count=len(BANDS), height=size, width=size, crs=crs)
        for name in CLASSES:
            (folder / name).mkdir()
            for n in range(1, self.hparams.default_size + 1):
                # Each patch at its own place on a 10 m grid, as EuroSAT's patches cut from tiles.
                x0, y0 = 300_000 + 640 * rng.integers(0, 1000), 5_000_000 + 640 * rng.integers(0, 1000)
                transform = Affine(10, 0, x0, 0, -10, y0)  # 10 m pixels, north up
                with rasterio.open(folder / name / f"{name}_{n}.tif", "w", transform=transform, **profile) as dst:
                    dst.write(patch(name, size, rng))
                    dst.descriptions = BANDS

    def write_mosaics(self, folder: Path, size: int, crs: CRS, rng: np.random.Generator) -> None:
        """The multi-label default as BigEarthNet-S2 ships patches: ``<patch>/<patch>_<band>.tif``,
        one band a file at its native resolution (the 10 m reflectance averaged over 20 m and
        60 m pixels of the same footprint; 60 m is approximate where ``size`` is no multiple
        of 6), and ``<patch>/<patch>_labels_metadata.json`` with the labels."""
        for n in range(self.hparams.default_size * len(MOSAIC_CLASSES)):
            reflectance, labels, _ = mosaic(size, rng)
            x0, y0 = (
                300_000 + 10 * size * int(rng.integers(0, 1000)),
                5_000_000 + 10 * size * int(rng.integers(0, 1000)),
            )
            fine = Affine(10, 0, x0, 0, -10, y0)
            name = f"S2A_MSIL1C_20260101T000000_{n // 100}_{n % 100}"
            (folder / name).mkdir()
            for band in BIGEARTHNET_BANDS:
                layer = reflectance[BANDS.index(band)].astype(np.float32)
                side = math.ceil(size * 10 / RESOLUTIONS[BANDS.index(band)])
                transform = Affine(10 * size / side, 0, x0, 0, -10 * size / side, y0)
                if side != size:
                    coarse = np.empty((side, side), np.float32)
                    reproject(layer, coarse, src_transform=fine, src_crs=crs, dst_transform=transform, dst_crs=crs,
                              resampling=Resampling.average)  # fmt: skip
                    layer = coarse
                profile = dict(driver="GTiff", dtype=self.dtype, count=1, height=side, width=side, crs=crs)
                with rasterio.open(folder / name / f"{name}_{band}.tif", "w", transform=transform, **profile) as dst:
                    dst.write(digital_numbers(layer)[None])
            metadata = {
                "labels": labels,
                "coordinates": {"ulx": x0, "uly": y0, "lrx": x0 + 10 * size, "lry": y0 - 10 * size},
                "projection": crs.to_wkt(),
            }
            (folder / name / f"{name}{METADATA}").write_text(json.dumps(metadata))

    def list_samples(self) -> list[tuple[str, int]]:
        if self.patch_labels is None and self.hparams.data_dir is None and self.hparams.default == "bigearthnet":
            self.patch_labels = read_patch_labels(self.root, True, self.class_names)[1]
        if self.patch_labels is not None:
            return list(self.patch_labels.items())
        samples = list_samples(self.root, self.class_names, EXTENSIONS)
        if self.multilabel:  # class folders hold one label a patch: one-hot
            return [(i, multi_hot([label], self.num_classes)) for i, label in samples]
        return samples

    def is_input(self, path: Path) -> bool:
        """A GeoTIFF, or a patch folder of one GeoTIFF per band (BigEarthNet-S2)."""
        return bool(band_files(path)) if path.is_dir() else super().is_input(path)

    def inputs_taken(self) -> str:
        return super().inputs_taken() + ", or a patch folder of one GeoTIFF a band"

    def find_bad(self, ids: list[str], decode: bool) -> dict[str, BadFileError]:
        """The patches of ``ids`` that cannot be used, each read in full whether ``decode`` or not
        (a wrong band, a size or a value is found only in the pixels). The reflectances of those
        whose split fits the cache are kept (:attr:`checked_values`) for the split's dataset and
        the band statistics, which then read no file a second time; of the other training
        patches, what the statistics take of each (:attr:`checked_moments`)."""
        kept = self.cached_ids()
        train = set(self.splits["train"]) if self.splits is not None else set()

        def check(sample_id: str) -> None:
            values = self.reader(self.root / sample_id)
            if sample_id in kept:
                self.checked_values[sample_id] = values
            elif sample_id in train:
                self.checked_moments[sample_id] = band_moments(values)

        return collect_bad(ids, check)

    def cached_ids(self) -> set[str]:
        """The ids of the splits whose reflectances fit ``cache_limit_mb``: what their datasets
        will keep in memory (:class:`PatchDataset`)."""
        if self.splits is None:
            return set()
        limit = self.hparams.cache_limit_mb
        fits = [ids for ids in self.splits.values() if fits_cache(self.patches_nbytes(ids), limit)]
        return {sample_id for ids in fits for sample_id in ids}

    def patches_nbytes(self, ids: list[str]) -> float:
        """What the reflectances of ``ids`` take in memory, read as this run reads them."""
        return patches_nbytes(len(ids), len(self.band_names), self.reader.size, self.dtype)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.band_stats is None:
            train = self.check_samples(self.splits["train"], "train")
            self.band_stats = self.compute_band_stats(train)
            if stage != "fit":  # no training dataset will take the reflectances the check kept
                for sample_id in train:
                    self.checked_values.pop(sample_id, None)

    def compute_band_stats(self, ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-band mean and standard deviation over every pixel of ``ids`` (float64 sums)."""
        sums = 0.0
        for sample_id in ids:
            moments = self.checked_moments.pop(sample_id, None)
            if moments is None:
                values = self.checked_values.get(sample_id)
                moments = band_moments(values if values is not None else self.reader(self.root / sample_id))
            sums = sums + moments
        mean, squares = sums / len(ids)
        std = np.sqrt(np.maximum(squares - mean**2, 0.0))
        return torch.tensor(mean, dtype=torch.float32), torch.tensor(np.maximum(std, 1e-6), dtype=torch.float32)

    def state_dict(self) -> dict:
        """The split, the band names, the patch size and data type, and the training split's
        band statistics (tensors)."""
        state = super().state_dict()
        if self.band_stats is not None:
            state |= {"bands": self.band_names, "band_mean": self.band_stats[0], "band_std": self.band_stats[1]}
            state |= {"patch_size": list(self.size), "dtype": self.dtype}
        return state

    def restore_preprocessing(self, state: dict) -> None:
        """The run's bands, patch size, data type and band statistics, from the checkpoint alone:
        a patch is read and normalised as the run's test split was, wherever its training files are."""
        if "band_mean" not in state:
            raise ConfigError("the checkpoint holds no band statistics; patches cannot be normalised as in its run")
        check_state(state)
        self.band_names = list(state["bands"])
        # a checkpoint from before the size was saved: any size (the network pools globally)
        self.size = tuple(state["patch_size"]) if "patch_size" in state else None
        self.dtype = state.get("dtype", DTYPES[0])  # a checkpoint from before floats were read: uint16
        self.reader = GeoTiffReader(
            self.band_names, self.size, self.dtype, self.hparams.resampling, name_unnamed=self.hparams.bands is not None
        )
        self.band_stats = (state["band_mean"].float(), state["band_std"].float())

    def reflectance(self, raw: np.ndarray) -> np.ndarray:
        """Reflectance in 0..1 of values read from the run's patches: ``uint16`` digital numbers
        are reflectance × 10,000 (as Sentinel-2 products store it), floats are reflectance."""
        return raw / 10_000 if self.dtype == "uint16" else raw

    def describe_channels(self) -> dict:
        """The bands by name, in the order the input holds them, and how they are laid out."""
        return {"bands": list(self.band_names), "layout": self.hparams.layout}

    def describe_preprocessing(self) -> dict:
        layouts = {
            "cube": "(1, bands, H, W): the spectrum as the depth axis",
            "channels": "(bands, H, W): bands as channels",
            "mean": "(1, H, W): the mean of the normalised bands",
        }
        mean, std = self.band_stats if self.band_stats is not None else (None, None)
        return {
            "read": f"a {self.dtype} GeoTIFF of {'x'.join(map(str, self.size)) if self.size else 'any'} px; the bands "
            f"{', '.join(self.band_names)} by name, in this order; nodata pixels take their band's mean; "
            "any other NaN or infinity refuses the file; a patch stored as one file per band (BigEarthNet-S2) has "
            f"each band resampled onto its finest band's grid, {self.hparams.resampling} (rasterio)",
            "normalisation": {
                "mean": mean.tolist() if mean is not None else None,
                "std": std.tolist() if std is not None else None,
                "formula": "(reflectance - mean) / std, per band (the training split's statistics)",
            },
            "layout": layouts[self.hparams.layout],
        }

    def content_suffix(self, data: bytes) -> str | None:
        """A GeoTIFF's ending from its first bytes (:func:`~.readers.geotiff_suffix`)."""
        return geotiff_suffix(data)

    def read_input(self, path: Path) -> Input:
        """The patch as the test split sees it: the run's bands, normalised with its statistics,
        in its layout; ``view`` is its true-colour composite, or where the run has no red, green
        and blue bands the mean of its bands."""
        raw = self.reader(path)
        if set(TRUE_COLOUR) <= set(self.band_names):
            view = torch.from_numpy(composite(raw, self.band_names, TRUE_COLOUR)).permute(2, 0, 1)
        else:
            view = torch.from_numpy(raw.mean(0, keepdims=True, dtype=np.float32))
        return Input(path, model_input(raw, self.band_stats, self.hparams.layout), {"bands": self.band_names}, view)

    def load_state_dict(self, state_dict: dict) -> None:
        if "band_mean" in state_dict:
            check_state(state_dict)
            if state_dict["bands"] != self.band_names:
                raise ConfigError(
                    f"the checkpoint's statistics are for bands {state_dict['bands']}, the data gives {self.band_names}"
                )
            self.band_stats = (state_dict["band_mean"].float(), state_dict["band_std"].float())
        super().load_state_dict(state_dict)

    def make_dataset(self, ids: list[str], stage: str) -> Dataset:
        if self.band_stats is None:
            raise RuntimeError("setup() computes the band statistics before any dataset is built")
        if self.prepared is None:
            ids = self.check_samples(ids, stage)
        labels = dict(self.samples())
        return PatchDataset(
            self.root,
            ids,
            [labels[i] for i in ids],
            partial(take_or_read, self.checked_values, self.reader, self.root),
            self.patches_nbytes(ids),
            self.band_stats,
            self.hparams.layout,
            cache=self.decoded_cache(stage),
        )

    def augment_batch(self, batch: list) -> list:
        """Training's random flips (up-down, left-right) and quarter turns, each with probability
        ½ and drawn per patch, on the batch where it is (:class:`BatchFlipsAndTurns` over the
        last two axes, height and width, in every layout): a patch seen from above has no up or
        left. A patch that is not square is only flipped (a quarter turn would swap its sizes)."""
        if not self.hparams.augment:
            return batch
        patches, targets = batch
        return [BatchFlipsAndTurns(2, [(0, 1)], prob=0.5)(patches, self.augment_generator), targets]
