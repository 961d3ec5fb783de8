"""multispectral3d's readers: GeoTIFF patches read with rasterio, one file of all bands (EuroSAT-
MS) or a folder of one file per band at its own resolution (BigEarthNet-S2), bands named never
indexed, nodata filled, non-finite values refused; a patch's label from ``labels.csv`` or its
metadata JSON. Each failure names its file.
"""

from __future__ import annotations

import json
import re
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError

from cnnsuite.data import (
    BadFileError,
    check_finite,
    report_bad_files,
)
from cnnsuite.data.errors import check_not_empty
from cnnsuite.data.labels import LABELS_CSV, SEVERAL_LABELS, parse_labels
from cnnsuite.data.limits import check_size
from cnnsuite.data.textfiles import parse_json, read_csv
from cnnsuite.errors import ConfigError

from .default_data import BANDS, WAVELENGTHS

EXTENSIONS = (".tif", ".tiff")
#: a TIFF's first bytes: little- and big-endian, classic and BigTIFF
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


#: rasterio's resampling methods offered to bring a band of coarser resolution onto a patch's grid
RESAMPLINGS = ("nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average")


METADATA = "_labels_metadata.json"  # BigEarthNet-S2: <patch>/<patch>_labels_metadata.json


#: reflectance as Sentinel-2 L1C/L2A products store it (digital numbers, 10,000 = 1) or as
#: processing chains write surface reflectance (floats, 1 = 1); the statistics learnt from the
#: training split put either on one scale, so a run takes one and refuses the other
DTYPES = ("uint16", "float32", "float64")


def sentinel2_name(name: str) -> str:
    """A band description as Sentinel-2's band name where it spells one otherwise: Google Earth
    Engine's exports say ``B1`` and ``B8A``, other tools ``b4``, for EuroSAT's ``B01``, ``B04``."""
    match = re.fullmatch(r"[Bb]0?(\d{1,2})([Aa]?)", name.strip())
    named = match and f"B{int(match[1]):02d}{match[2].upper()}".replace("B08A", "B8A")
    return named if named in BANDS else name


def geotiff_suffix(data: bytes) -> str | None:
    """``.tif`` where ``data`` begins as a TIFF does (:data:`TIFF_MAGIC`), else None."""
    return EXTENSIONS[0] if data[:4] in TIFF_MAGIC else None


def band_names(path: Path, count: int, descriptions: tuple, bands: list[str] | None) -> list[str]:
    """The names of a file's bands, in file order (see the module docstring); an error names
    the file and what its band count would need."""
    if all(descriptions):
        names = [sentinel2_name(d) for d in descriptions]
        # a band is picked by its name: a second of the same name would be read as the first
        twice = [
            f"bands {names.index(n) + 1} and {k} are both {n}" for k, n in enumerate(names, 1) if names.index(n) < k - 1
        ]
        if twice:
            raise BadFileError(
                f"{path}: its band descriptions name a band twice ({'; '.join(twice)}); expected each band named once"
            )
        return names
    if count == len(BANDS):
        names, source = list(BANDS), "EuroSAT-MS's order"
    elif bands is not None and len(bands) == count:
        names, source = list(bands), "data.bands"
    else:
        raise BadFileError(
            f"{path}: has {count} bands without names; expected {len(BANDS)} (EuroSAT-MS: {', '.join(BANDS)}), "
            f"or name all {count} in file order with data.bands"
        )
    # a file naming some of its bands is read by the assumed order only where its names agree
    clashes = [
        f"band {k} is {sentinel2_name(d)}, not {name}"
        for k, (d, name) in enumerate(zip(descriptions, names, strict=True), 1)
        if d and sentinel2_name(d) != name
    ]
    if clashes:
        raise BadFileError(
            f"{path}: its band descriptions name some bands and disagree with {source} for the rest "
            f"({'; '.join(clashes[:3])}); give every band its description, or none"
        )
    return names


def band_files(folder: Path) -> dict[str, Path]:
    """``band → file`` of a patch folder in the BigEarthNet-S2 layout (``<patch>/<patch>_<band>.tif``),
    bands in wavelength order; empty for any other folder."""
    found = {}
    for path in folder.iterdir():
        stem, dot, extension = path.name.rpartition(".")
        prefix, _, band = stem.rpartition("_")
        if dot and f".{extension.lower()}" in EXTENSIONS and prefix == folder.name and band in BANDS:
            found[band] = path
    return {band: found[band] for band in sorted(found, key=lambda b: WAVELENGTHS[BANDS.index(b)])}


def kept_dtype(dtype: str) -> np.dtype:
    """What a patch of the file type ``dtype`` is read as: ``uint16`` digital numbers as
    stored (exact, and half the memory of floats: twice the patches fit the decoded cache),
    floats as float32."""
    return np.dtype(np.uint16 if dtype == "uint16" else np.float32)


def fill_nodata(data: np.ma.MaskedArray, path: Path, names: list[str]) -> np.ndarray:
    """``(bands, H, W)`` of a masked read as :func:`kept_dtype`, each nodata pixel the mean of its
    band's valid ones (rounded to a digital number in ``uint16``). A band of ``names`` without a
    valid pixel has nothing to fill it with: ``path`` is a bad file."""
    kept = kept_dtype(str(data.dtype))
    values = data.data.astype(kept)
    if np.ma.is_masked(data):
        mask = np.ma.getmaskarray(data)
        for name, band in zip(names, mask, strict=True):
            if band.all():
                raise BadFileError(f"{path}: band {name} has no valid pixel (all {band.size:,} are nodata)")
        fill = data.astype(np.float64).mean(axis=(1, 2)).filled(0.0)
        fill = np.rint(fill) if kept.kind == "u" else fill
        values = np.where(mask, fill[:, None, None], values).astype(kept)
    return values


class GeoTiffReader:
    """Reads the ``bands`` of GeoTIFF patches of one ``size`` and one ``dtype`` as
    ``(len(bands), H, W)`` of :func:`kept_dtype` (uint16 as stored, floats as float32): a patch
    is one file of all its bands, or a folder of one file per band (the BigEarthNet-S2 layout),
    whose bands are resampled with ``resampling`` onto the grid of its finest band.

    ``bands=None`` reads every band of a patch, ``dtype=None`` any of :data:`DTYPES`;
    ``name_unnamed=False``: ``bands`` only selects, and names no file's bands. Nodata
    pixels (the file's nodata value, NaN included) take the mean of the band's valid pixels,
    so a normalised nodata pixel is near zero rather than a spike; any other NaN or infinity
    is damage. Every failure is a :class:`BadFileError` naming the file."""

    def __init__(
        self,
        bands: list[str] | None,
        size: tuple[int, int] | None = None,
        dtype: str | None = None,
        resampling: str = "bilinear",
        name_unnamed: bool = True,
    ) -> None:
        self.bands, self.size, self.dtype, self.resampling = bands, size, dtype, resampling
        #: whether ``bands`` also names the bands of a file without descriptions (the user's
        #: ``data.bands`` does; names found in other files' descriptions do not)
        self.name_unnamed = name_unnamed

    def check_pixels(self, path: Path, src, size: tuple[int, int]) -> None:
        """The run's data type and patch ``size`` (a file's, or a band folder's finest band's)."""
        dtypes = ", ".join(sorted(set(src.dtypes)))
        if len(set(src.dtypes)) != 1 or src.dtypes[0] not in DTYPES:
            raise BadFileError(f"{path}: bands are {dtypes}, expected {' or '.join(DTYPES)} reflectance")
        if self.dtype is not None and src.dtypes[0] != self.dtype:
            raise BadFileError(f"{path}: bands are {dtypes}, expected {self.dtype} as the run's patches are")
        if self.size is not None and tuple(size) != tuple(self.size):
            raise BadFileError(
                f"{path}: is {size[0]}x{size[1]} pixels, "
                f"expected {self.size[0]}x{self.size[1]} as the run's patches are"
            )

    def select(self, path: Path, src) -> tuple[list[int], list[str]]:
        """rasterio's 1-based indexes and the names of the bands to read from the open ``src``."""
        self.check_pixels(path, src, (src.height, src.width))
        names = band_names(path, src.count, src.descriptions, self.bands if self.name_unnamed else None)
        wanted = self.wanted(path, names)
        return [names.index(b) + 1 for b in wanted], wanted

    def wanted(self, path: Path, names: list[str]) -> list[str]:
        """The bands to read of a patch that has ``names``; an error names the missing ones."""
        wanted = list(self.bands or names)
        missing = [b for b in wanted if b not in names]
        if missing:
            raise BadFileError(f"{path}: has no band {', '.join(missing)}; its bands are {', '.join(names)}")
        return wanted

    def header(self, path: Path) -> tuple[list[str], tuple[int, int], str]:
        """``(band names read, (height, width), dtype)`` of a patch, from its headers only."""
        if path.is_dir():
            with ExitStack() as stack:
                bands, size = self.open_bands(path, stack)
                return list(bands), size, next(iter(bands.values())).dtypes[0]
        with self.open(path) as src:
            return self.select(path, src)[1], (src.height, src.width), src.dtypes[0]

    def open_bands(self, folder: Path, stack: ExitStack) -> tuple[dict, tuple[int, int]]:
        """``(band → open file, grid)`` of a band folder's wanted bands, checked; the grid is
        its finest band's size."""
        files = band_files(folder)
        bands = {band: stack.enter_context(self.open(files[band])) for band in self.wanted(folder, list(files))}
        for band, src in bands.items():
            if src.count != 1:
                raise BadFileError(f"{files[band]}: has {src.count} bands, expected one ({band})")
        size = max((src.height, src.width) for src in bands.values())
        for band, src in bands.items():
            self.check_pixels(files[band], src, size)
        return bands, size

    def read_bands(self, folder: Path) -> np.ndarray:
        """A band folder's bands, each resampled onto the patch's grid."""
        with ExitStack() as stack:
            bands, size = self.open_bands(folder, stack)
            layers = []
            for src in bands.values():
                try:
                    layers.append(src.read(1, out_shape=size, resampling=Resampling[self.resampling], masked=True))
                except RasterioError as err:  # truncated or damaged pixel data
                    raise BadFileError(f"{src.name}: cannot read as a GeoTIFF ({gdal_said(err)})") from None
        return fill_nodata(np.ma.stack(layers), folder, list(bands))

    def open(self, path: Path):
        """The file opened by rasterio, which reads its header only; one that declares more
        bands × width × height than :mod:`cnnsuite.data.limits` allows is refused here. GDAL
        tells a format by the content, and a VRT or another format that names files or URLs
        would have them read: only the GeoTIFF driver may open it."""
        check_not_empty(path, "a GeoTIFF")
        try:
            src = rasterio.open(path, driver="GTiff")
        except RasterioError as err:  # not a TIFF, a damaged header
            raise BadFileError(f"{path}: cannot read as a GeoTIFF ({gdal_said(err)})") from None
        try:
            what = f"declares {src.count} bands of {src.width}x{src.height}"
            check_size(path, "geotiff", (src.count, src.width, src.height), what)
        except BadFileError:
            src.close()
            raise
        return src

    def __call__(self, path: Path) -> np.ndarray:
        if path.is_dir():
            values = self.read_bands(path)
        else:
            with self.open(path) as src:
                indexes, names = self.select(path, src)
                try:
                    values = fill_nodata(src.read(indexes, masked=True), path, names)
                except RasterioError as err:  # truncated or damaged pixel data
                    raise BadFileError(f"{path}: cannot read as a GeoTIFF ({gdal_said(err)})") from None
        check_finite(path, values, "pixels")
        return values


def gdal_said(err: RasterioError) -> str:
    """What a failed read says: GDAL's own words where rasterio's only point at them ("Read
    failed. See previous exception for details.", of a truncated file)."""
    cause = err.__cause__ or err.__context__
    return str(cause) if cause is not None and "previous exception" in str(err) else str(err)


def read_patch_labels(
    root: Path, multilabel: bool | str = "auto", classes: list[str] | None = None
) -> tuple[list[str], dict, bool] | None:
    """``(class names, patch folder → target, multilabel)`` of a folder in the BigEarthNet-S2
    layout, patches sorted; None for any other layout. The labels are ``root/labels.csv``'s
    (columns ``patch,label``; a cell ``a;b`` holds several) where there is one, else each
    patch's ``"labels"`` list in its ``<patch>_labels_metadata.json``, missing or unreadable
    metadata listed all at once. Several labels a patch make a multi-label run as
    ``multilabel`` allows (:func:`cnnsuite.data.labels.parse_labels`); ``classes`` fixes the
    class names and their order (a generated default's), else they are the labels found."""
    patches = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and band_files(d))
    if not patches:
        return None
    table = root / LABELS_CSV
    if table.is_file():
        rows = read_labels_table(table, patches)
        where = {name: f"{table}, line {line}" for name, (_, line) in rows.items()}
        cells = {name: cell for name, (cell, _) in rows.items()}
        source = table
    else:
        cells, where = read_metadata_labels(root, patches, table)
        source = f"{root}/*/*{METADATA}"
    names, targets, decided = parse_labels(list(cells.values()), multilabel, source, list(where.values()), classes)
    return names, dict(zip(cells, targets, strict=True)), decided


def read_metadata_labels(root: Path, patches: list[str], table: Path) -> tuple[dict, dict]:
    """``(patch → its labels list, patch → its metadata file)`` from each patch's metadata JSON."""
    labels, errors = {}, []
    for name in patches:
        path = root / name / f"{name}{METADATA}"
        try:
            found = parse_json(path.read_text(encoding="utf-8-sig"))["labels"]
        except FileNotFoundError:
            errors.append(
                BadFileError(f"{path}: missing; expected the patch's labels, or {table} (columns patch,label)")
            )
            continue
        except (OSError, ValueError, TypeError, KeyError) as err:
            errors.append(BadFileError(f'{path}: cannot read {{"labels": [...]}} ({type(err).__name__}: {err})'))
            continue
        if not isinstance(found, list) or not found or not all(isinstance(x, str) for x in found):
            errors.append(BadFileError(f'{path}: "labels" is {json.dumps(found)}, expected a list of label names'))
        else:
            labels[name] = found
    report_bad_files(errors, len(patches), what="patch folders")
    return labels, {name: str(root / name / f"{name}{METADATA}") for name in labels}


def read_labels_table(table: Path, patches: list[str]) -> dict[str, tuple[str, int]]:
    """``patch → (label cell, line)`` rows of a band-folder layout's ``labels.csv`` (read as
    every CSV a user brings is, :func:`cnnsuite.data.textfiles.read_csv`), sorted by patch;
    each patch must be one of the folder's ``patches``."""
    rows = [(row["patch"], row["label"], row.line) for row in read_csv(table, ("patch", "label"), SEVERAL_LABELS)]
    known, labels, errors = set(patches), {}, []
    for name, label, line in rows:
        if not name or not label:
            raise ConfigError(f"{table}, line {line}: empty patch or label")
        if name not in known:
            errors.append(BadFileError(f"{table}, line {line}: {table.parent / name} is no patch folder of band files"))
        if name in labels:  # a second row would silently replace the first's labels
            raise ConfigError(
                f"{table}, line {line}: {name!r} again (line {labels[name][1]} has it); expected one row per patch, "
                "its labels together"
            )
        labels[name] = (label, line)
    if not labels:
        raise ConfigError(f"{table}: no rows")
    report_bad_files(errors, len(rows), what="patches")
    return dict(sorted(labels.items()))
