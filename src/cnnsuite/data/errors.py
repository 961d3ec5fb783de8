"""Errors a user's files can cause, and how many of them are reported at once."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import BadFileError, ConfigError

#: what a datamodule does with the bad files a check finds: stop naming them all, or leave them out
ON_BAD_FILE = ("error", "skip")


def check_on_bad_file(value: str) -> None:
    if value not in ON_BAD_FILE:
        raise ConfigError(f"data.on_bad_file={value!r}: expected 'error' or 'skip'")


def check_not_empty(path: Path, expected: str) -> None:
    """A file of no bytes is named as such: its reader would call it some unknown format."""
    if path.is_file() and path.stat().st_size == 0:
        raise BadFileError(f"{path}: empty file (0 bytes), expected {expected}")


def check_finite(path: str | Path, values: np.ndarray | torch.Tensor, what: str = "values") -> None:
    """Refuse a file whose decoded ``values`` hold NaN or infinity, naming it: one such value
    makes every loss and prediction it reaches NaN, with nothing to tell which file it came from."""
    # NumPy's test runs on one thread: torch splits so small a job across its threads, which
    # costs more than the test itself (and far more when the cores are busy).
    if isinstance(values, torch.Tensor):  # NumPy has no bfloat16
        values = (values.float() if values.dtype == torch.bfloat16 else values).numpy(force=True)
    finite = np.isfinite(values)
    bad = int(finite.size - np.count_nonzero(finite))
    if bad:
        raise BadFileError(f"{path}: {bad} of {finite.size} {what} are NaN or infinite; expected finite values")


def collect_bad(ids: Iterable[str], check: Callable[[str], object]) -> dict[str, BadFileError]:
    """``{id: error}`` of the samples of ``ids`` whose ``check`` raises :class:`BadFileError`,
    each sample checked whatever the others gave: a folder's bad files are named together
    (:func:`report_bad_files`), not one a run."""
    bad = {}
    for sample_id in ids:
        try:
            check(sample_id)
        except BadFileError as err:
            bad[sample_id] = err
    return bad


def report_bad_files(
    errors: Sequence[BadFileError], total: int, on_bad_file: str = "error", what: str = "files"
) -> None:
    """Act on every bad file found by a check of all ``total`` files: with ``on_bad_file="error"``
    raise one :class:`BadFileError` that lists them all (a user fixing a folder of thousands
    wants the whole list, not one name per run); with ``"skip"`` warn once, listing them."""
    if not errors:
        return
    listing = "\n".join(f"  {err}" for err in errors)
    if on_bad_file == "error":
        raise BadFileError(f"{len(errors)} of {total} {what} cannot be used:\n{listing}")
    warnings.warn(f"skipping {len(errors)} of {total} {what} that cannot be used:\n{listing}", stacklevel=2)
