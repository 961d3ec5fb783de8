"""Image files → uint8 tensors with torchvision's decoders, naming the file on failure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image

from .errors import BadFileError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def read_image(path: Path, channels: int) -> torch.Tensor:
    """``(channels, H, W)`` uint8; grayscale files are expanded to RGB and RGB reduced to
    gray as ``channels`` asks."""
    mode = {1: ImageReadMode.GRAY, 3: ImageReadMode.RGB}.get(channels)
    if mode is None:
        raise ValueError(f"channels={channels}: images are read as 1 (gray) or 3 (RGB) channels")
    try:
        return decode_image(str(path), mode=mode)
    except (RuntimeError, ValueError, OSError):
        pass
    # torchvision decodes PNG, JPEG, GIF and WebP; Pillow covers BMP and TIFF.
    try:
        with Image.open(path) as img:
            array = torch.from_numpy(np.array(img.convert("L" if channels == 1 else "RGB")))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise BadFileError(f"{path}: cannot decode as an image ({err})") from None
    return array.permute(2, 0, 1) if array.dim() == 3 else array.unsqueeze(0)


def image_channels(path: Path) -> int:
    """1 for a grayscale file, 3 otherwise — read from the header only."""
    try:
        with Image.open(path) as img:
            return 1 if img.mode in ("1", "L", "I", "I;16", "F") else 3
    except (UnidentifiedImageError, OSError) as err:
        raise BadFileError(f"{path}: cannot decode as an image ({err})") from None
