"""Materialise an embedded default dataset once, atomically.

Every DDP rank may construct a datamodule and call ``prepare_data``; a half-written
folder must never be read. The data is written into a temporary sibling folder and
renamed into place in one step; whoever renames second throws its copy away.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def prepare_once(target: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(folder)`` into a fresh folder and move it to ``target``, unless
    ``target`` already exists. Returns ``target``."""
    target = Path(target)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
