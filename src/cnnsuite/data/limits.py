"""How large a file may say it is before anything decodes it.

A decoder allocates what a file's header declares: a small PNG may declare 30,000 × 30,000
pixels, and torchvision's ``decode_image`` (which has no limit of its own) allocates and fills
them all, for gigabytes and tens of seconds.
Every reader of the suite reads the size a file declares from its header first and refuses
one over the limit with a :class:`BadFileError` that names it, before decoding anything.

What counts is pixels: an image's width × height (× frames of an animated GIF), a volume's
voxels (the product of its shape), a video's frames × width × height, a GeoTIFF's bands ×
width × height. The defaults are far above any normal dataset (a whole-body CT is about
0.2 G voxels, a 10-s Kinetics clip at 1080p 0.6 G pixels) and well below what takes a
machine down. ``CNNSUITE_MAX_PIXELS`` sets one limit for every kind of file, the same in
training, ``cnnsuite predict`` and ``cnnsuite serve`` (whose ``--max_pixels`` sets it): an
environment variable, because every process of a run inherits it (DataLoader workers, DDP
ranks, LitServe's inference workers), and because a checkpoint, which is untrusted input,
must not be able to raise it. The samples a model is given are held to it too
(:func:`check_sample_size`): a checkpoint's ``image_size`` sizes what every prediction
allocates. Pillow's own limit (``PIL.Image.MAX_IMAGE_PIXELS``) is set to
the image limit whenever an image is opened, so the two never disagree.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError
from .errors import BadFileError

#: the environment variable that sets the limit (a whole number of pixels; ``4e8`` reads too)
ENV = "CNNSUITE_MAX_PIXELS"
#: the limit of each kind of file while ``CNNSUITE_MAX_PIXELS`` is unset
DEFAULTS = {
    "image": 178_956_970,  # where Pillow's default refuses an image: 2 × its MAX_IMAGE_PIXELS
    "volume": 2**30,  # 1024³ voxels
    "video": 2**30,  # frames × width × height: 38 s of 720p at 30 frames a second (3 GB decoded)
    "geotiff": 2**30,  # 13 bands of 9,000 × 9,000
}
UNITS = {"image": "pixels", "volume": "voxels", "video": "pixels", "geotiff": "pixels"}


def parse_count(text: str, name: str) -> int:
    """A whole number of pixels, 1 or more, written as ``400000000``, ``400_000_000`` or ``4e8``."""
    try:
        number = float(str(text).strip().replace("_", ""))
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number >= 1 and number == int(number)):
        raise ConfigError(f"{name}={text!r}: expected a whole number of pixels, 1 or more (such as 4e8)")
    return int(number)


def max_pixels(kind: str) -> int:
    """The limit for a file of ``kind`` (``image``, ``volume``, ``video``, ``geotiff``)."""
    value = os.environ.get(ENV, "").strip()
    return parse_count(value, ENV) if value else DEFAULTS[kind]


def check_sample_size(shape: Sequence[int], kind: str, what: str = "the data's samples (data.*) of shape") -> None:
    """A sample the model takes (``shape``, channels first) may hold no more pixels than a file
    of ``kind`` may declare: a setting that sizes it (``image_size``, and a checkpoint's, which
    is untrusted input) must not make the suite allocate what no file could make it allocate.
    ``cnnsuite serve --max_pixels`` bounds a served checkpoint's samples so too."""
    total = math.prod(int(size) for size in shape[1:])
    limit = max_pixels(kind)
    if total > limit:
        raise ConfigError(
            f"{what} {tuple(shape)} hold {total:,} {UNITS[kind]}, over the limit of {limit:,}; "
            f"to use them, raise the limit with {ENV}={total} (cnnsuite serve: --max_pixels {total})"
        )


def check_size(path: str | Path, kind: str, sizes: Sequence[int], what: str) -> None:
    """Refuse ``path`` when the product of ``sizes`` is over ``kind``'s limit; ``what`` says
    what it declares (``"declares 30000x30000"``) in the one-line message."""
    total = math.prod(int(size) for size in sizes)
    limit = max_pixels(kind)
    if total > limit:
        raise BadFileError(
            f"{path}: {what} = {total:,} {UNITS[kind]}, over the limit of {limit:,}; to read it, raise the limit "
            f"with {ENV}={total} (cnnsuite serve: --max_pixels {total})"
        )
