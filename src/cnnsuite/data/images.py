"""Image files → float tensors in [0, 1] with torchvision's decoders, upright, naming the file on failure.

One folder may hold 8-bit JPEGs beside 16-bit PNGs or TIFFs (scanners, microscopes): every
image is scaled by its own type's full range (8-bit values / 255, 16-bit / 65535) as it is
read, so every file of a folder reads to the same range and type, in training, evaluation and
prediction alike.

Photos from phones and cameras are stored as the sensor saw them, with an EXIF orientation
tag saying how to turn them; every viewer honours it, so that is the image a user labelled.
torchvision's ``decode_image`` ignores the tag unless asked: everything here asks, and
sizes are the upright sizes too.

PNGs are decoded by Pillow: torchvision's PNG decoder ends the whole process (a segmentation
fault, no message) on any error libpng reports — most damaged PNGs, one uploaded to ``cnnsuite
serve`` included — where Pillow raises an error that names the file. Pillow reads 16-bit grey
PNGs at 16 bits and 16-bit colour PNGs at 8 bits a channel (the same [0, 1] range).

``decode_image`` has no pixel limit either (a small PNG may declare 30,000 × 30,000 pixels, and
the decoder allocates them all), so every file's header is read first and a file declaring more pixels than
:mod:`cnnsuite.data.limits` allows is refused before anything decodes it.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as F

from ..errors import ConfigError
from .errors import BadFileError, collect_bad
from .folders import spread
from .limits import check_size, max_pixels

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: the names of an image's channels by their count, as Pillow names its modes' bands: grey ``L``
#: (luminance), colour ``R``, ``G``, ``B`` (what a datamodule of images says as its ``channel_names``)
IMAGE_CHANNELS = {1: ("L",), 3: ("R", "G", "B")}
#: the longer side, in pixels, of the copy of an image that a picture of a prediction is drawn from
PICTURE_SIDE = 512
#: Pillow modes of 16-bit single-channel images (kept at 16 bits, never clipped to 8)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
#: EXIF orientations that turn the image a quarter turn (width and height swap)
_TRANSPOSED = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112
# DecompressionBombError is not an OSError
_PIL_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@contextmanager
def open_image(path: Path) -> Iterator[Image.Image]:
    """The image at ``path`` opened by Pillow, which reads its header only; a file whose
    header does not read, or which declares more pixels than the limit (every frame of a GIF,
    which torchvision decodes all of), raises :class:`BadFileError` naming it."""
    limit = max_pixels("image")
    # Pillow's own limit is ours: it refuses past twice it, and warns of a "decompression
    # bomb" past it, before the check below can name the file (or accept it, within ours)
    Image.MAX_IMAGE_PIXELS = limit
    try:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(path)
        except Image.DecompressionBombError:  # Pillow's refusal, which names no width or height: ours does
            img = _open_without_pillow_limit(path)
    except _PIL_ERRORS as err:
        raise BadFileError(f"{path}: cannot decode as an image ({err})") from None
    with img:
        try:
            frames = img.n_frames if img.format == "GIF" else 1
        except _PIL_ERRORS as err:
            raise BadFileError(f"{path}: cannot decode as an image ({err})") from None
        declared = f"{img.width}x{img.height}" + (f" x {frames} frames" if frames > 1 else "")
        check_size(path, "image", (img.width, img.height, frames), f"declares {declared}")
        if img.mode == "F":  # Pillow's convert() would clip it to 0..255: a [0, 1] image read as black
            raise BadFileError(
                f"{path}: floating-point pixels (Pillow mode F), which have no fixed range to scale to [0, 1]; "
                "expected 8- or 16-bit integer pixels"
            )
        yield img


def _open_without_pillow_limit(path: Path) -> Image.Image:
    """``Image.open`` with Pillow's own check off, for a file it refused: the check that
    follows refuses it too (Pillow's limit is ours), with its size in words."""
    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        return Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def read_image(path: Path, channels: int, size: tuple[int, int] | None = None) -> torch.Tensor:
    """``(channels, H, W)`` float32 in [0, 1], upright, 8- and 16-bit files alike; grayscale
    files are expanded to RGB and RGB reduced to gray as ``channels`` asks. ``size``: resized
    to ``(height, width)`` (bilinear, antialiased) before it is made float, so that a large
    photo costs its decoded bytes, not four times them. The header is checked
    (:func:`open_image`) before decoding."""
    return _to_float(_decode(path, channels), size)


def read_image_with_picture(
    path: Path, channels: int, size: tuple[int, int] | None = None, picture_side: int = PICTURE_SIDE
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """``(image, picture, (width, height))`` from one decoding of ``path``: the image as
    :func:`read_image` gives it, a copy whose longer side is at most ``picture_side`` (aspect
    kept) for a picture of a prediction to be drawn from, and the file's upright size. The
    picture of a 144-Mpx photo is then drawn from a quarter of a megapixel, never from the
    photo made float."""
    decoded = _decode(path, channels)
    height, width = decoded.shape[-2:]
    scale = min(1.0, picture_side / max(height, width))
    picture = (max(1, round(height * scale)), max(1, round(width * scale)))
    return _to_float(decoded, size), _to_float(decoded, picture), (width, height)


def _to_float(image: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """``image`` (uint8 or uint16) resized to ``size`` when given and not already it, then
    scaled by its type's full range to float32 in [0, 1]."""
    if size is not None and tuple(image.shape[-2:]) != tuple(size):
        image = F.resize(image, list(size), antialias=True)
    return F.to_dtype(image, torch.float32, scale=True)


#: the formats torchvision decodes, by the channels asked for: it keeps GIF and WebP in colour
#: when asked for gray, its PNG decoder ends the process (SIGSEGV) on any error libpng reports,
#: and it turns only a JPEG (or PNG) upright by its EXIF orientation, so a turned WebP is Pillow's
_TORCHVISION_DECODES = {1: ("JPEG",), 3: ("JPEG", "GIF", "WEBP")}


def _decode(path: Path, channels: int) -> torch.Tensor:
    """``(channels, H, W)`` uint8, or uint16 for a 16-bit file, upright."""
    mode = {1: ImageReadMode.GRAY, 3: ImageReadMode.RGB}.get(channels)
    if mode is None:
        raise ValueError(f"channels={channels}: images are read as 1 (gray) or 3 (RGB) channels")
    with open_image(path) as img:
        turned = img.format == "WEBP" and img.getexif().get(_EXIF_ORIENTATION, 1) != 1
        if img.format in _TORCHVISION_DECODES[channels] and not turned:
            try:
                decoded = decode_image(str(path), mode=mode, apply_exif_orientation=True)
                # an animated GIF decodes to all its frames: its first is the image, as Pillow shows it
                return decoded[0] if decoded.dim() == 4 else decoded
            except (RuntimeError, ValueError, OSError):
                pass
        # Pillow covers the rest, and what torchvision could not decode (an animated WebP)
        try:
            upright = ImageOps.exif_transpose(img)
            if upright.mode in (*_SIXTEEN_BIT, "I"):  # 16-bit, or 32-bit within 16: convert() would clip to 8
                gray = np.array(upright)
                if upright.mode == "I" and (gray.min() < 0 or gray.max() > np.iinfo(np.uint16).max):
                    raise BadFileError(
                        f"{path}: 32-bit integer pixels from {gray.min()} to {gray.max()}, outside the 16-bit range "
                        "an image is scaled from; expected 8- or 16-bit integer pixels"
                    )
                return torch.from_numpy(gray.astype(np.uint16)).expand(channels, -1, -1).clone()
            array = torch.from_numpy(np.array(upright.convert("L" if channels == 1 else "RGB")))
        except _PIL_ERRORS as err:
            raise BadFileError(f"{path}: cannot decode as an image ({err})") from None
    return array.permute(2, 0, 1) if array.dim() == 3 else array.unsqueeze(0)


def symmetric_normalisation(channels: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std that take [0, 1] pixels to [-1, 1] (the 2D image tasks')."""
    return [0.5] * channels, [0.5] * channels


def describe_read(channels: int) -> str:
    """How :func:`read_image` decodes a file, in words exact enough to do the same elsewhere
    (for the JSON beside an export): a colour JPEG read as gray is libjpeg's own grayscale
    output, which differs from Pillow's ``convert("L")`` of its RGB by a few levels."""
    if channels != 1:
        return "decoded upright (EXIF orientation applied) as RGB (a gray image's value in all three, alpha dropped)"
    return (
        "decoded upright (EXIF orientation applied) as gray: a JPEG as libjpeg decodes it to grayscale (its "
        "luma channel; in Pillow, image.draft('L', image.size) before reading), any other colour image as "
        "Pillow's convert('L') (ITU-R 601-2 luma, alpha dropped), a 16-bit gray image at 16 bits"
    )


def describe_image_preprocessing(channels: int, size: int | None, mean: list[float], std: list[float]) -> dict:
    """The JSON description of :func:`read_image` followed by a square resize, scaling to
    [0, 1] and per-channel normalisation (the 2D image tasks)."""
    return {
        "read": describe_read(channels),
        **({"resize": f"to {size}x{size} px, bilinear with antialiasing (aspect ratio not kept)"} if size else {}),
        "scale": "to [0, 1]: 8-bit values / 255, 16-bit / 65535",
        "normalisation": {"mean": list(mean), "std": list(std), "formula": "(x - mean) / std, per channel"},
        "layout": "channels first: (C, H, W)",
    }


def image_channel_names(count: int) -> list[str] | None:
    """The names of an image's ``count`` channels (:data:`IMAGE_CHANNELS`); None for another count."""
    names = IMAGE_CHANNELS.get(count)
    return list(names) if names else None


def check_channels(value: int | None) -> None:
    """``data.channels`` of an image task: 1, 3, or null (decided by the files)."""
    if value not in (None, 1, 3):
        raise ConfigError(f"data.channels={value}: expected 1 (gray), 3 (RGB) or null (from the files)")


def image_channels(paths: Iterable[Path]) -> int:
    """1 where the files are grayscale, 3 where any is in colour — read from the headers of
    files spread over ``paths`` (:func:`~cnnsuite.data.folders.spread`), not the first alone:
    one grayscale image sorting first made a colour dataset train on one channel. A file that
    does not read is the folder check's to name with the others (or to leave out, under
    ``on_bad_file: skip``), not one that decides the channels: where no probe reads, the first
    other file that does decides; where none reads, the first one's error."""
    paths = list(paths)
    if not paths:
        raise ValueError("image_channels: no paths")
    errors: list[BadFileError] = []

    def gray(path: Path) -> bool | None:
        try:
            with open_image(path) as img:
                return img.mode in ("1", "L", "LA", "I", "F", *_SIXTEEN_BIT)  # an alpha band is no colour
        except BadFileError as err:
            errors.append(err)
            return None

    probes = spread(paths)
    read = [g for g in map(gray, probes) if g is not None]
    if not read:
        probed = set(probes)
        read = next(([g] for p in paths if p not in probed and (g := gray(p)) is not None), [])
    if not read:
        raise errors[0]
    return 1 if all(read) else 3


def image_suffix(data: bytes, suffixes: Iterable[str]) -> str | None:
    """The first of ``suffixes`` (file endings a model takes) of the image format ``data`` is
    in, told from its content (Pillow reads the header only); None where it is no image of
    theirs. An upload named without its ending (a browser's ``Blob`` is named ``blob``) is
    still the image it is."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            found = image.format
    except Exception:  # no image Pillow knows, or one past its pixel limit: not an image of theirs
        return None
    registered = Image.registered_extensions()
    return next((suffix for suffix in suffixes if registered.get(suffix) == found), None)


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of the upright image — read from the header only (and refused,
    as :func:`read_image` would, when it declares more pixels than the limit)."""
    with open_image(path) as img:
        # Pillow 13 gives a TIFF's size turned by its orientation already (and turns its pixels
        # as they load): the size as stored, whatever the version, is in its tags
        width, height = (img.tag_v2[256], img.tag_v2[257]) if img.format == "TIFF" else img.size
        # Pillow decodes a whole PNG to look for an EXIF chunk after the pixels; one
        # before them (where writers put it) is in the header.
        has_exif = img.format != "PNG" or "exif" in img.info
        try:
            transposed = has_exif and img.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSED
        except _PIL_ERRORS as err:
            raise BadFileError(f"{path}: cannot decode as an image ({err})") from None
    return (height, width) if transposed else (width, height)


def find_bad_images(root: Path, ids: Iterable[str], decode_channels: int | None = None) -> dict[str, BadFileError]:
    """``{id: error}`` for every file among ``root/<id>`` that does not read as an image, so a
    whole folder's bad files are named at once. By default only headers are read (quick; a
    file damaged past its header is still named when it is decoded); ``decode_channels``
    decodes every file in full."""
    return collect_bad(ids, lambda sample_id: checked_size(root / sample_id, decode_channels))


def checked_size(path: Path, decode_channels: int | None = None) -> tuple[int, int]:
    """``(width, height)`` of the upright image at ``path``, from its header (:func:`image_size`)
    or, with ``decode_channels``, decoded in full: what a check that also needs the size (a box
    held to its image) reads, each file once."""
    if decode_channels is None:
        return image_size(path)
    height, width = read_image(path, decode_channels).shape[1:]
    return width, height
