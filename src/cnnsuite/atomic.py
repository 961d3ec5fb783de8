"""Temporary names beside a target, for files and folders written whole or not at all.

A writer fills a temporary file or folder in the target's own folder and renames it into
place: a rename within a folder is atomic on POSIX, so a reader (another DDP rank, a resumed
run, a killed writer's successor) sees the old target or the new one, never half of one.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def make_temporary(parent: Path, prefix: str, suffix: str = "", folder: bool = False) -> Path:
    """A new, empty file (or ``folder``) of a random name in ``parent``, with the mode the umask
    gives any new one: :mod:`tempfile`'s are private to their owner (0o600, 0o700), which the
    file or folder renamed from it would keep, unreadable to the rest of a group sharing runs."""
    for _ in range(100):
        path = Path(parent) / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            if folder:
                os.mkdir(path, 0o777)
            else:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{parent}: no free temporary name starting {prefix}")
