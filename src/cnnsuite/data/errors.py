"""Errors a user's files can cause, and how many of them are reported at once."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from ..errors import BadFileError


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
