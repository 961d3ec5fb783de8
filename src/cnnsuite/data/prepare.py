"""Materialise an embedded default dataset once, atomically, and remember how it was made.

Every DDP rank may construct a datamodule and call ``prepare_data``; a half-written
folder must never be read. The data is written into a temporary sibling folder and
renamed into place in one step; whoever renames second throws its copy away.

The arguments that generated the data are written beside it (``generation.json``), so a
folder made with other arguments is never taken for this one without a word. A setting added
after a folder was written is absent from its record; the folder was made with what is now
that setting's default, so the record is read with those defaults filled in.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from ..atomic import make_temporary
from ..errors import ConfigError
from .textfiles import parse_json

RECORD = "generation.json"


def prepare_once(
    target: Path, write: Callable[[Path], None], args: dict | None = None, defaults: dict | None = None
) -> Path:
    """Call ``write(folder)`` into a fresh folder and move it to ``target``, unless
    ``target`` already exists; ``args`` (JSON-able) are recorded there and checked on
    every later call (``defaults``: the value of each setting a record may predate).
    Returns ``target``."""
    target, args = Path(target), dict(args or {})
    if target.is_dir():
        check_record(target, args, defaults)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temporary(target.parent, f".{target.name}.", folder=True)
    try:
        write(tmp)
        (tmp / RECORD).write_text(json.dumps(args, sort_keys=True) + "\n")
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def check_record(folder: Path, args: dict, defaults: dict | None = None) -> None:
    """``folder`` must have been generated with ``args``; a setting its record lacks was
    its value in ``defaults``."""
    path = folder / RECORD
    try:
        recorded = parse_json(path.read_text())
    except (OSError, ValueError):
        recorded = None
    if isinstance(recorded, dict):
        recorded = {**json.loads(json.dumps(defaults or {})), **recorded}
    if recorded != json.loads(json.dumps(args)):
        found = "no readable record of how it was generated" if recorded is None else f"was generated with {recorded}"
        raise ConfigError(
            f"{folder}: {found}, expected {args}; delete the folder to generate it again "
            "(or pick another --data.data_root)"
        )
