"""Loading a file nobody vouches for (a checkpoint, a state dict): tensors only, one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import BadFileError


def load_weights_only(path: Path, failure: str, mmap: bool = False) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU: a file that would run pickled code, or
    is damaged or foreign, is a one-line ``ValueError``, ``failure`` followed by what torch met
    (``Unsupported global: GLOBAL print``), without its many-line advice to load it unsafely."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises several types for a damaged, foreign or code-carrying file
        raise BadFileError(f"{failure} ({type(err).__name__}: {_load_error_detail(err)})") from None


def check_finite_tensors(tensors: dict[str, torch.Tensor], source: object) -> None:
    """Weights with NaN or infinity give NaN outputs without a word: a one-line ``ValueError``
    naming ``source`` and the first such tensor."""
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise BadFileError(f"{source}: non-finite weights (NaN or infinity) in {bad[0]}{more}")


def _load_error_detail(err: Exception) -> str:
    text = str(err)
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.|\n\n|$)", text, re.S)
    return " ".join((found.group(1) if found else text).split()) or "no message"
