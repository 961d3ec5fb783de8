"""biomedical3d's readers: a user's volumes, read with MONAI's ``LoadImage`` (NIfTI, NRRD,
MetaImage, a DICOM series folder) and checked to be one finite 3D volume within the size limits;
``labels.csv``; a MedMNIST v2 3D ``.npz``. Each failure names its file.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.transforms import (
    LoadImage,
    MapTransform,
)

from cnnsuite.data import BadFileError, check_finite
from cnnsuite.data.labels import read_labels_csv
from cnnsuite.data.limits import check_size
from cnnsuite.data.splits import STAGES
from cnnsuite.errors import ConfigError, MissingFileError

#: single-file volumes MONAI's LoadImage reads (a DICOM series is a folder of ``.dcm`` files)
VOLUME_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


MEDMNIST_KEYS = tuple(f"{stage}_{kind}" for stage in STAGES for kind in ("images", "labels"))


def declared_size(path: str | Path) -> tuple[list[int], str] | None:
    """``(sizes, what)``: the shape a volume's header declares, every axis (time and channels
    too), read without its voxels, and in words; None where the header does not read (the
    loader then names the file and the problem). A series folder without files is an error
    naming it (the loader's would be an IndexError)."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir() and not _series_files(path):
        raise BadFileError(f"{path}: a folder without files; expected a DICOM series (one file a slice)")
    try:
        if path.is_dir():  # a DICOM series: each file a slice of Rows x Columns (x frames)
            import pydicom

            files = _series_files(path)
            slices = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
            voxels = sum(int(s.Rows) * int(s.Columns) * int(getattr(s, "NumberOfFrames", 1) or 1) for s in slices)
            return [voxels], f"declares {len(slices)} DICOM slices of {slices[0].Rows}x{slices[0].Columns}"
        if name.endswith((".nrrd", ".nhdr")):
            import nrrd

            sizes = [int(n) for n in nrrd.read_header(str(path))["sizes"]]
        elif name.endswith((".mha", ".mhd")):
            fields = metaimage_fields(path)
            channels = int(fields.get("ElementNumberOfChannels", ["1"])[0])
            sizes = [int(n) for n in fields["DimSize"]] + ([channels] if channels > 1 else [])
        else:  # NIfTI, and whatever else nibabel reads: nib.load reads the header only
            sizes = [int(n) for n in nib.load(path).header.get_data_shape()]
    except Exception:  # no header to check: the loader's own error names the file
        return None
    return sizes, "declares " + "x".join(map(str, sizes))


def _series_files(folder: Path) -> list[Path]:
    """The files of a DICOM series folder, sorted, hidden ones left out."""
    return [f for f in sorted(folder.iterdir()) if f.is_file() and not f.name.startswith(".")]


def metaimage_fields(path: Path) -> dict[str, list[str]]:
    """A MetaImage header's fields: text lines such as ``DimSize = 512 512 300``."""
    with path.open("rb") as file:
        lines = file.read(65536).decode("latin-1").splitlines()
    return {k.strip(): v.split() for k, _, v in (line.partition("=") for line in lines)}


def check_data_file(path: str | Path) -> None:
    """A detached header names the file that holds its voxels (NRRD's ``data file``,
    MetaImage's ``ElementDataFile``), and the loader opens whatever it names. That file must lie
    in the header's own folder or below it: an uploaded or downloaded header must not make the
    suite read another file of the machine (``/etc/shadow``, ``../../secret.bin``). A header
    that does not read is left to the loader, which names the file."""
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith((".nrrd", ".nhdr")):
            import nrrd

            header = nrrd.read_header(str(path))
            data_file = header.get("datafile", header.get("data file"))
        elif name.endswith((".mha", ".mhd")):
            data_file = " ".join(metaimage_fields(path).get("ElementDataFile", [])) or None
        else:
            return
    except Exception:
        return
    if not data_file or data_file == "LOCAL":
        return
    folder = os.path.abspath(path.parent)
    listed = data_file.split()[0].upper() == "LIST"  # MetaImage: file names on the lines below, unchecked
    if (
        listed
        or os.path.isabs(data_file)
        or not os.path.normpath(os.path.join(folder, data_file)).startswith(folder + os.sep)
    ):
        raise BadFileError(
            f"{path}: its header names the data file {data_file!r}, outside its own folder; "
            "a detached header is read with its data file beside it"
        )


class LoadVolumed(MapTransform):
    """MONAI's ``LoadImage`` with channel first, checked to be one 3D volume of finite values
    (none of its formats has a nodata convention to fill NaN from); any failure
    names the file (a truncated ``.nii.gz`` otherwise surfaces as a bare ``EOFError``). A file
    whose header declares more voxels than :mod:`cnnsuite.data.limits` allows is refused
    before its voxels are read."""

    def __init__(self, keys: str = "image") -> None:
        super().__init__(keys)
        self.loader = LoadImage(image_only=True, ensure_channel_first=True)

    def __call__(self, data: dict) -> dict:
        data = dict(data)
        for key in self.keys:
            path = data[key]
            declared = declared_size(path)
            if declared is not None:
                check_size(path, "volume", *declared)
            check_data_file(path)
            try:
                volume = self.loader(path)
            except Exception as err:  # nibabel, pynrrd, pydicom and gzip each raise their own
                raise BadFileError(f"{path}: cannot read as a volume ({type(err).__name__}: {err})") from None
            if volume.dim() != 4 or volume.shape[0] != 1:
                shape = tuple(volume.shape[1:]) if volume.shape[0] == 1 else tuple(volume.shape)
                raise BadFileError(f"{path}: expected a 3D volume, found shape {shape}")
            check_finite(path, volume, "voxels")
            data[key] = volume
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
