"""biomedical3d's readers: a user's volumes, read with MONAI's ``LoadImage`` (NIfTI, NRRD,
MetaImage, a DICOM series folder) and checked to be one finite 3D volume within the size limits;
``labels.csv``; a MedMNIST v2 3D ``.npz``. Each failure names its file.
"""

from __future__ import annotations

import bz2
import gzip
import math
import zlib
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np
from monai.data import ImageReader, NrrdReader
from monai.data.image_reader import has_itk
from monai.transforms import (
    LoadImage,
    MapTransform,
)

from cnnsuite.data import BadFileError, check_finite
from cnnsuite.data.folders import leaves_folder
from cnnsuite.data.labels import read_labels_csv
from cnnsuite.data.limits import check_size
from cnnsuite.data.splits import STAGES
from cnnsuite.errors import ConfigError, MissingFileError

#: single-file volumes MONAI's LoadImage reads (a DICOM series is a folder of ``.dcm`` files;
#: MetaImage needs ITK installed)
VOLUME_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


MEDMNIST_KEYS = tuple(f"{stage}_{kind}" for stage in STAGES for kind in ("images", "labels"))


def check_header(path: str | Path) -> bool:
    """Refuse a volume from its header alone, before any voxel is read: one that declares more
    voxels than :mod:`cnnsuite.data.limits` allows, names the file of its voxels outside its own
    folder (:func:`check_data_file`), or, a NIfTI, more axes than a volume's. True where the
    header read and the file is as long as it says; False where the header does not read or a
    NIfTI may be cut short (:func:`may_be_cut`): the loader then reads it whole and names the file
    and the problem. A series folder without files is an error naming it (the loader's would be
    an IndexError)."""
    header = read_header(Path(path))
    if header is None:
        return False
    check_size(path, "volume", header.sizes, header.what)
    check_data_file(Path(path), header.data_file)
    # a NIfTI's axes are the array's: the loader takes three, or a fourth of one (a time or channel axis)
    if str(path).lower().endswith((".nii", ".nii.gz")) and not (len(header.sizes) == 3 or header.sizes[3:] == [1]):
        raise BadFileError(f"{path}: expected a 3D volume, its header {header.what}")
    return not header.may_be_cut


class Header(NamedTuple):
    """What :func:`read_header` reads of a volume without its voxels."""

    #: the shape the header declares, every axis (time and channels too)
    sizes: list[int]
    #: that in words, for a message
    what: str
    #: the file its voxels are in, where the header is a detached one (NRRD's ``data file``,
    #: MetaImage's ``ElementDataFile``)
    data_file: str | None = None
    #: a NIfTI file's length or gzip trailer says fewer bytes than its voxels take
    may_be_cut: bool = False


#: the most bytes of header extensions a NIfTI may hold between its header and its voxels, and
#: the most extensions (a file holds none or a few: a DICOM header, a JSON sidecar, AFNI's)
NIFTI_MAX_EXTENSIONS = 8 << 20
NIFTI_MAX_EXTENSION_COUNT = 1 << 10
#: nibabel's header classes, NIfTI-1 and NIfTI-2
NIFTI_HEADERS = (nib.Nifti1Header, nib.Nifti2Header)


def nifti_header(head: bytes):
    """The NIfTI header ``head`` begins with (either byte order), read without its extensions
    (nibabel's own class, from the header's bytes alone), or None for another file."""
    klass = next((k for k in NIFTI_HEADERS if k.may_contain_header(head)), None)
    return None if klass is None else klass(head[: klass.sizeof_hdr], check=False)


def check_nifti_extensions(path: Path) -> None:
    """nibabel reads a NIfTI's header extensions whole whenever it loads the header, each as
    many bytes as its own size field says, while the voxel offset leaves room, and to the end
    of the file when the offset lies before the header's end: a gzipped file of 1 MB can hold
    1 GB of them. Their sizes are walked here as nibabel would, from each one's 8-byte head,
    their contents skipped (a gzip stream inflated in passing, never kept), and a file whose
    extensions take more than :data:`NIFTI_MAX_EXTENSIONS` bytes or number more than
    :data:`NIFTI_MAX_EXTENSION_COUNT`, or one of less than an extension's 16 bytes (nibabel
    reads one of a negative size to the end of the file), is refused before nibabel reads them."""
    try:
        with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rb") as file:
            header = nifti_header(file.read(540))
            if header is None:
                return
            file.seek(header.sizeof_hdr)
            flag = file.read(4)
            if len(flag) < 4 or flag[0] == 0:  # nibabel's test: no extensions follow
                return
            room = float(header["vox_offset"]) - file.tell()  # below 0: nibabel reads to the end
            order = "little" if header.endianness == "<" else "big"
            total = count = 0
            while room >= 16 or room < 0:
                head = file.read(8)
                if len(head) < 8:  # the file's end: all read, or a cut file the loader names
                    return
                size = int.from_bytes(head[:4], order, signed=True)
                total, count = total + size, count + 1
                if size < 16:
                    raise BadFileError(
                        f"{path}: header extension {count} says it takes {size:,} bytes; expected 16 or more"
                    )
                if total > NIFTI_MAX_EXTENSIONS or count > NIFTI_MAX_EXTENSION_COUNT:
                    raise BadFileError(
                        f"{path}: its header extensions take at least {total:,} bytes in {count:,} of them; "
                        f"expected at most {NIFTI_MAX_EXTENSIONS:,} bytes in {NIFTI_MAX_EXTENSION_COUNT:,}"
                    )
                file.seek(size - 8, 1)
                room -= size
    except (OSError, EOFError, zlib.error):
        return  # nothing to measure by: the header check or the loader names the file


def volume_suffix(data: bytes) -> str | None:
    """The ending of the volume ``data`` is, told from its first bytes: a NIfTI by its header
    (:func:`nifti_header`), gzipped or not (a gzip stream's first bytes are inflated, at most a
    header's worth), or an NRRD by its ``NRRD000`` line; else None."""
    if data[:2] == b"\x1f\x8b":
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[:65536], 540)
        except zlib.error:
            return None
        return ".nii.gz" if nifti_header(head) is not None else None
    if nifti_header(data[:540]) is not None:
        return ".nii"
    return ".nrrd" if data.startswith(b"NRRD000") else None


def may_be_cut(path: Path, voxels) -> bool:
    """Whether a NIfTI file may hold fewer bytes than its header's voxels take (``voxels``:
    nibabel's array proxy of it), told without inflating them: an uncompressed file shorter than
    its data offset plus its voxels, or a gzipped one whose trailer (the length it inflates to,
    modulo 2**32) says another length. An interrupted copy or download cuts a file this way, and
    its header still reads: without this look at its end, a cut test volume is found only when
    the evaluation after the last epoch reads it. A whole file whose trailer says nothing useful
    (several gzip members, bytes after the stream) is then read by the loader and kept, never
    refused; so is a file whose end does not read (True: the loader tells)."""
    length = int(voxels.offset) + math.prod(voxels.shape) * np.dtype(voxels.dtype).itemsize
    try:
        with path.open("rb") as file:
            size = file.seek(0, 2)
            if not path.name.lower().endswith(".gz"):
                return size < length
            file.seek(max(size - 4, 0))
            return size < 18 or int.from_bytes(file.read(4), "little") != length % 2**32
    except OSError:
        return True


#: the most bytes a voxel of any NRRD type takes (double, int64)
NRRD_MAX_ITEMSIZE = 8
#: what an NRRD's compressed voxels may inflate to beyond its declared voxels: a ``byte skip``
#: or ``line skip`` ahead of them
NRRD_SLACK_BYTES = 1 << 16
NRRD_COMPRESSED = {"gzip": "gzip", "gz": "gzip", "bzip2": "bz2", "bz2": "bz2"}


def check_nrrd_payload(path: Path) -> None:
    """pynrrd inflates an NRRD's gzip or bzip2 voxels whole before it compares them with the
    header's sizes: a file of a few KB declaring 16x16x16 voxels can inflate to many GB. Here
    they are inflated a block at a time and counted (nothing kept), and a file whose voxels
    inflate past what its header's sizes hold is refused before pynrrd reads it. Called just
    before the loader reads a volume whose header :func:`check_header` passed, not by the quick
    header check, which would inflate each volume once more."""
    import nrrd

    with path.open("rb") as file:
        header = nrrd.read_header(file)
        sizes = [int(n) for n in header["sizes"]]
        compression = NRRD_COMPRESSED.get(str(header.get("encoding", "raw")).lower())
        if compression is None:  # raw and text voxels are read as the header's sizes say
            return
        data_file = header.get("datafile", header.get("data file"))
        bound = math.prod(sizes) * NRRD_MAX_ITEMSIZE + max(int(header.get("byte skip", 0)), 0) + NRRD_SLACK_BYTES
        inflated = 0
        try:
            source = (path.parent / data_file).open("rb") if data_file and data_file != "LOCAL" else file
            inflating = gzip.GzipFile(fileobj=source) if compression == "gzip" else bz2.BZ2File(source)
            with source, inflating as stream:
                while (block := stream.read(1 << 20)) and inflated <= bound:
                    inflated += len(block)
        except (OSError, EOFError, zlib.error) as err:  # a cut or damaged stream, a data file not there
            raise BadFileError(f"{path}: cannot read as a volume ({type(err).__name__}: {err})") from None
    if inflated > bound:
        raise BadFileError(
            f"{path}: its {header['encoding']} voxels inflate past {bound:,} bytes, more than its "
            f"{'x'.join(map(str, sizes))} voxels hold"
        )


def read_header(path: Path) -> Header | None:
    """The :class:`Header` of the volume at ``path`` (a file, or a DICOM series folder), read
    without its voxels; None where the header does not read."""
    name = path.name.lower()
    if path.is_dir() and not _series_files(path):
        raise BadFileError(f"{path}: a folder without files; expected a DICOM series (one file a slice)")
    if not path.is_dir() and not name.endswith(VOLUME_EXTENSIONS):  # nibabel would read .nii.bz2, .hdr ... unchecked
        raise BadFileError(f"{path}: expected a volume file ({', '.join(VOLUME_EXTENSIONS)}) or a DICOM series folder")
    data_file = None
    try:
        if path.is_dir():  # a DICOM series: each file a slice of Rows x Columns (x frames)
            import pydicom

            slices, files = [], _series_files(path)
            for file in files:
                try:
                    slices.append(pydicom.dcmread(file, stop_before_pixels=True))
                except pydicom.errors.InvalidDicomError:
                    continue  # not DICOM (Thumbs.db, notes): MONAI's reader leaves it out too
            if not slices:
                names = ", ".join(f.name for f in files[:3]) + (" ..." if len(files) > 3 else "")
                raise BadFileError(f"{path}: holds no DICOM file ({names}); expected a DICOM series (one file a slice)")
            check_one_series(path, slices)
            check_even_slices(path, slices)
            voxels = sum(int(s.Rows) * int(s.Columns) * int(getattr(s, "NumberOfFrames", 1) or 1) for s in slices)
            return Header([voxels], f"declares {len(slices)} DICOM slices of {slices[0].Rows}x{slices[0].Columns}")
        if name.endswith((".nrrd", ".nhdr")):
            import nrrd

            header = nrrd.read_header(str(path))
            check_nrrd_space(path, header.get("space"))
            sizes = [int(n) for n in header["sizes"]]
            data_file = header.get("datafile", header.get("data file"))
        elif name.endswith((".mha", ".mhd")):  # MetaImage: a text header, "DimSize = 512 512 300"
            with path.open("rb") as file:
                lines = file.read(65536).decode("latin-1").splitlines()
            fields = {k.strip(): v.split() for k, _, v in (line.partition("=") for line in lines)}
            channels = int(fields.get("ElementNumberOfChannels", ["1"])[0])
            sizes = [int(n) for n in fields["DimSize"]] + ([channels] if channels > 1 else [])
            data_file = " ".join(fields.get("ElementDataFile", [])) or None
        else:  # NIfTI: nib.load reads the header (and its extensions, walked first)
            check_nifti_extensions(path)
            voxels = nib.load(path).dataobj  # where and what its voxels are (the header's copy says offset 0)
            sizes = [int(n) for n in voxels.shape]
            return Header(sizes, "declares " + "x".join(map(str, sizes)), may_be_cut=may_be_cut(path, voxels))
    except BadFileError:
        raise
    except Exception:  # no header to check: the loader's own error names the file
        return None
    return Header(sizes, "declares " + "x".join(map(str, sizes)), data_file)


def check_one_series(folder: Path, slices: list) -> None:
    """A folder's slices must be one series: MONAI's DICOM reader stacks every file it finds,
    so two series in one folder (a scan and its localiser, two reconstructions) would be read
    as one volume of both interleaved, with a spacing neither has."""
    series = Counter(str(getattr(s, "SeriesInstanceUID", "")) for s in slices)
    if len(series) > 1:
        counted = ", ".join(f"{uid or 'none'}: {n} files" for uid, n in series.most_common())
        raise BadFileError(
            f"{folder}: holds {len(series)} DICOM series (SeriesInstanceUID {counted}); expected one series a folder"
        )


def check_even_slices(folder: Path, slices: list) -> None:
    """A series' slices must lie one spacing apart: MONAI's DICOM reader stacks the slices it
    finds and spreads them evenly over the first to the last, so a slice lost in transfer (or
    two at one place) would be read as a volume stretched past the gap, with a spacing the scan
    never had. Positions are along the slices' normal; a series that does not record them (or a
    multi-frame file) is left to the reader. Positions written to a few decimals (0.1 mm: 0.625 mm
    slices then lie 0.6 or 0.7 mm apart) may differ from one spacing by their rounding."""
    if len(slices) < 3 or any(int(getattr(s, "NumberOfFrames", 1) or 1) > 1 for s in slices):
        return
    try:
        orientation = np.asarray(slices[0].ImageOrientationPatient, float)
        normal = np.cross(orientation[:3], orientation[3:])
        places = np.sort([float(np.dot(normal, np.asarray(s.ImagePositionPatient, float))) for s in slices])
        rounding = _position_rounding(slices, normal)
    except (AttributeError, TypeError, ValueError, ArithmeticError):
        return
    gaps = np.diff(places)
    step = float(np.median(gaps))
    if step < 1e-3 < float(gaps.max()):
        raise BadFileError(
            f"{folder}: {len(slices)} slices at {len(set(np.round(places, 3)))} places (several acquisitions in one "
            "series?); expected one slice a place, one spacing through the series"
        )
    worst = int(np.argmax(np.abs(gaps - step)))
    if abs(gaps[worst] - step) > max(0.1 * step, 1e-3, rounding):
        raise BadFileError(
            f"{folder}: {len(slices)} slices, {step:g} mm apart but {gaps[worst]:g} mm between {places[worst]:g} and "
            f"{places[worst + 1]:g} mm ({'a slice missing?' if gaps[worst] > step else 'two slices at one place?'}); "
            "expected one spacing through the series"
        )


def _position_rounding(slices: list, normal: np.ndarray) -> float:
    """How far two gaps between the slices' places along ``normal`` may differ by the rounding of
    the ImagePositionPatient values as written (``8.1`` is rounded to 0.1 mm): each coordinate that
    changes through the series adds its last written decimal's unit, weighted by the normal."""
    from decimal import Decimal

    rounding = 0.0
    for axis in range(3):
        written = [str(s.ImagePositionPatient[axis]).strip() for s in slices]
        if len(set(written)) > 1:
            unit = max(10.0 ** Decimal(text).as_tuple().exponent for text in written)
            rounding += abs(float(normal[axis])) * unit
    return 1.5 * rounding  # the float error of the differences kept off the unit's edge


def is_dicom_series(folder: Path) -> bool:
    """Whether ``folder`` is a DICOM series as training reads one (hidden files left out): files
    alone, some of them DICOM (``.dcm``, or named without an ending as scanners export them, told
    by the DICOM preamble) and none a volume file. The others (``notes.txt``, ``Thumbs.db``) are
    left out of the series as :func:`read_header` and MONAI's reader leave them out, so predict
    takes the folder a labels.csv row trains on; a volume file or a sub-folder makes it a folder
    of inputs."""
    from pydicom.misc import is_dicom

    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    files_alone = all(p.is_file() and not p.name.lower().endswith(VOLUME_EXTENSIONS) for p in entries)
    return files_alone and any(p.suffix.lower() == ".dcm" or is_dicom(p) for p in entries)


def _series_files(folder: Path) -> list[Path]:
    """The files of a DICOM series folder, sorted, hidden ones left out."""
    return [f for f in sorted(folder.iterdir()) if f.is_file() and not f.name.startswith(".")]


def check_data_file(path: Path, data_file: str | None) -> None:
    """A detached header names the file that holds its voxels, and the loader opens whatever it
    names. That file must lie in the header's own folder or below it: an uploaded or downloaded
    header must not make the suite read another file of the machine (``/etc/shadow``,
    ``../../secret.bin``)."""
    if not data_file or data_file == "LOCAL":
        return
    listed = data_file.split()[0].upper() == "LIST"  # MetaImage: file names on the lines below, unchecked
    if listed or leaves_folder(data_file):
        raise BadFileError(
            f"{path}: its header names the data file {data_file!r}, outside its own folder; "
            "a detached header is read with its data file beside it"
        )


#: the NRRD spaces a volume may be in, as the NRRD format names them and as MONAI does
NRRD_SPACES = ("right-anterior-superior", "left-posterior-superior", "RAS", "LPS")


def check_nrrd_space(path: Path, space: str | None) -> None:
    """An NRRD's ``space`` must be one MONAI can orient to RAS (:data:`NRRD_SPACES`, or none:
    LPS, as MONAI takes it): another (``scanner-xyz``, ``left-anterior-superior``) failed in
    MONAI's ``Orientationd`` as ``'scanner-xyz' is not a valid SpaceKeys``, a traceback."""
    if space is not None and space not in NRRD_SPACES:
        raise BadFileError(
            f"{path}: its header says space: {space}; expected {', '.join(NRRD_SPACES[:2])} (RAS or LPS), the spaces "
            "a volume is oriented from"
        )


class AnatomicalNrrdReader(NrrdReader):
    """MONAI's ``NrrdReader``, which knows the NRRD format's ``left-posterior-superior`` by name
    but RAS only as MONAI's own ``RAS``: a volume in the format's ``right-anterior-superior``
    space (its affine already RAS) is given that name. A volume without ``space directions``
    or ``space origin`` (optional in the format; MONAI's reader failed with a ``KeyError``) is
    placed as ITK's NRRD reader (teem's ``nrrdOriginCalculate``) places it from its
    ``spacings``: the first voxel's centre at its ``axis mins`` plus half a voxel where an axis
    is cell-centred (the default). Without ``spacings``: voxels of 1 mm from the origin (ITK
    would derive spacings from ``axis maxs``, which no writer we know of gives alone)."""

    def get_data(self, img):
        for image in img if isinstance(img, list | tuple) else [img]:
            header, axes = image.header, int(image.header["dimension"])
            if header.get("space") == "right-anterior-superior":
                header["space"] = "RAS"
            spacings = np.nan_to_num(np.asarray(header.get("spacings", np.ones(axes)), float), nan=1.0)
            mins = np.nan_to_num(np.asarray(header.get("axis mins", np.zeros(axes)), float))
            centers = header.get("centers", header.get("centerings", "")) or ""
            centers = (centers.split() if isinstance(centers, str) else list(centers)) + ["cell"] * axes
            if len(spacings) != axes or len(mins) != axes:
                raise ValueError(f"its spacings and axis mins hold {len(spacings)} and {len(mins)} values for its "
                                 f"{axes} axes; expected one an axis")  # fmt: skip
            half = np.array([s / 2 if c != "node" else 0.0 for s, c in zip(spacings, centers, strict=False)])
            placed = "spacings" in header and "axis mins" in header  # else teem knows no origin: ITK's is 0
            header.setdefault("space directions", np.diag(spacings))
            header.setdefault("space origin", mins + half if placed else np.zeros(axes))
        return super().get_data(img)


def reader_for(path: str | Path) -> ImageReader | None:
    """The reader of a format MONAI's ``LoadImage`` would not pick itself, None where it picks:
    an NRRD is :class:`AnatomicalNrrdReader`'s, which MONAI's ``NrrdReader`` is but for a
    space's name (and which MONAI claims only for ``.nrrd``: a detached ``.nhdr`` header went to
    its DICOM reader). MetaImage is read by ITK alone; without ITK installed it is one line
    saying so, not pydicom's complaint about a missing DICOM preamble."""
    name = str(path).lower()
    if name.endswith((".nrrd", ".nhdr")):
        return AnatomicalNrrdReader()
    if name.endswith((".mha", ".mhd")) and not has_itk:
        raise BadFileError(f"{path}: MetaImage is read with ITK, which is not installed (pip install itk)")
    return None


class LoadVolumed(MapTransform):
    """MONAI's ``LoadImage`` with channel first, checked to be one 3D volume of finite values
    (none of its formats has a nodata convention to fill NaN from); any failure
    names the file (a truncated ``.nii.gz`` otherwise surfaces as a bare ``EOFError``). A file
    its header alone refuses (:func:`check_header`) is never given to the loader."""

    def __init__(self, keys: str = "image") -> None:
        super().__init__(keys)
        self.loader = LoadImage(image_only=True, ensure_channel_first=True)

    def __call__(self, data: dict) -> dict:
        data = dict(data)
        for key in self.keys:
            path = data[key]
            if check_header(path) and str(path).lower().endswith((".nrrd", ".nhdr")):
                check_nrrd_payload(Path(path))
            reader = reader_for(path)
            try:
                volume = self.loader(path, reader=reader)
            except Exception as err:  # nibabel, pynrrd, pydicom and gzip each raise their own
                raise BadFileError(f"{path}: cannot read as a volume ({type(err).__name__}: {err})") from None
            if volume.dim() != 4 or volume.shape[0] != 1:
                shape = tuple(volume.shape[1:]) if volume.shape[0] == 1 else tuple(volume.shape)
                raise BadFileError(f"{path}: expected a 3D volume, found shape {shape}")
            check_finite(path, volume, "voxels")
            data[key] = volume
        return data


class CheckResampledSized(MapTransform):
    """Refuse a volume that ``Spacingd`` to ``pixdim`` (mm) would make larger than
    :mod:`cnnsuite.data.limits` allows: a spacing far finer than the file's own (a setting, or a
    checkpoint's) would have the resampling allocate gigabytes. Goes between the loader (whose
    volume carries its spacing) and ``Spacingd``."""

    def __init__(self, keys: str, pixdim: list[float]) -> None:
        super().__init__(keys)
        self.pixdim = [float(v) for v in pixdim]

    def __call__(self, data: dict) -> dict:
        for key in self.keys:
            volume = data[key]
            stored = [float(v) for v in volume.pixdim]
            sizes = [math.ceil(n * s / t) for n, s, t in zip(volume.shape[1:], stored, self.pixdim, strict=True)]
            where = volume.meta.get("filename_or_obj", key)
            what = f"resampled from {stored} mm to data.spacing {self.pixdim} mm is {'x'.join(map(str, sizes))}"
            check_size(where, "volume", sizes, what)
        return data


def read_labels(root: Path, multilabel: bool | str, classes: list[str] | None = None) -> tuple[list[str], dict, bool]:
    """``(class names, image → target, multilabel)`` of ``root/labels.csv``, columns
    ``image,label`` or ``image`` and one 0/1 column per class (see
    :func:`cnnsuite.data.labels.read_labels_csv`)."""
    return read_labels_csv(root, "image", multilabel, classes, what="volumes")


def _load_medmnist(path: Path) -> dict[str, np.ndarray]:
    """A MedMNIST v2 3D ``.npz`` (``train_images`` (N, 28, 28, 28), ``train_labels`` (N, 1), ...)."""
    if not path.is_file():
        raise MissingFileError(f"data.medmnist_npz={path}: no such file")
    try:
        with np.load(path) as npz:
            missing = [k for k in MEDMNIST_KEYS if k not in npz.files]
            if missing:
                raise ConfigError(f"{path}: not a MedMNIST file, missing arrays {', '.join(missing)}")
            arrays = {k: npz[k] for k in MEDMNIST_KEYS}
    except (OSError, ValueError) as err:
        if str(path) in str(err):
            raise
        raise BadFileError(f"{path}: cannot read as .npz ({err})") from None
    for stage in STAGES:
        images = arrays[f"{stage}_images"]
        if images.ndim != 4:
            raise BadFileError(f"{path}: {stage}_images has shape {images.shape}, expected (N, D, H, W)")
    return arrays
