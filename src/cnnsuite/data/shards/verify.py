"""A prepared folder's shards checked against its record, hashed once per version of each file,
and a folder on object storage copied once to this machine."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import TypeVar

from lightning.pytorch.utilities import rank_zero_warn

from ...errors import ConfigError
from ..cache import MIB
from .record import RECORD, content_hash
from .storage import PreparedFiles, fetch_errors, first_line

#: the disk space a local copy of a prepared folder on object storage leaves free, at least
MIRROR_HEADROOM_MB = 1024

T = TypeVar("T")


def check_shards(stored: PreparedFiles, record: dict, verified: Path | None = None, mirror: Path | None = None) -> str:
    """The shards of a prepared folder must be those its record was written with: every file hashed
    (read once, in blocks). ``verified``: where the sha256 of the folder's shards is kept with
    what identifies each file's version (a local file's size and modification time, an S3
    object's size and ETag), so that a later run hashes only the files that changed since (a
    folder of 100 GB is otherwise read whole, or downloaded whole, at every start, by every
    process); processes checking one folder at once (DDP ranks) take turns (:func:`_one_at_a_time`).

    ``mirror``: a local folder that each shard of object storage is downloaded to and hashed in,
    where every shard's version is known and the copies fit on its disk with
    :data:`MIRROR_HEADROOM_MB` to spare; a later run copies only what changed, and the mirror
    keeps nothing the record does not name. Returns where the shards are to be streamed from:
    the mirror, or the folder itself."""
    files, location = record["files"], stored.location
    for name in files:
        parts = PurePosixPath(name).parts
        if not parts or PurePosixPath(name).is_absolute() or ".." in parts or "\\" in name:
            raise ConfigError(f"{location}/{RECORD}: shard {name!r} is not a file inside the prepared folder")
    with _one_at_a_time(verified):
        return _check_shards(stored, record, verified, mirror)


@contextmanager
def _one_at_a_time(verified: Path | None):
    """Holds a lock beside ``verified`` while a folder is checked, so processes that start
    together (DDP ranks, several runs on one data_root) check it one after another: the first
    hashes (and copies) it, the others find its hashes kept. Where the lock cannot be made (a
    data_root that cannot be written) nothing is held, as nothing is kept there either."""
    from filelock import FileLock

    lock = None
    if verified is not None:
        try:
            verified.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(verified.with_name(verified.name + ".lock"))
            lock.acquire()
        except OSError:
            lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _check_shards(stored: PreparedFiles, record: dict, verified: Path | None, mirror: Path | None) -> str:
    files, location = record["files"], stored.location
    known = read_verified(verified) if verified is not None else None
    when = {name: read_shard(stored, name, stored.version) for name in files} if known is not None else {}
    # the shards whose version is that of a hash kept by an earlier run
    hashed = {name: str(entry[-1]) for name, entry in (known or {}).items()
              if name in files and when[name] and isinstance(entry, list) and entry[:-1] == when[name]}  # fmt: skip
    mirrored = mirror is not None and all(when.get(n) for n in files) and _fits(location, mirror, files, hashed, when)
    found = {}
    for name in files:
        copy = mirror / name if mirrored else None
        if name in hashed and (copy is None or _same_size(copy, when[name][0])):
            found[name] = hashed[name]
        elif copy is None:
            found[name] = read_shard(stored, name, stored.sha256)
        else:
            found[name] = _copied(stored, name, mirror)
            if found[name] != files[name]:
                copy.unlink()  # the copy only ever holds what the record names
    if content_hash(record["items"], found) != record["sha256"]:
        changed = [name for name in files if files[name] != found[name]]
        what = f"shards {', '.join(changed)} differ" if changed else "its ids or file list were edited"
        raise ConfigError(f"{location}: content sha256 does not match {RECORD} ({what}); run cnnsuite prepare again")
    kept = {name: [*when[name], found[name]] for name in files if when.get(name)}
    if known is not None and kept != known:
        write_verified(verified, kept)
    if not mirrored:
        return location
    for path in [p for p in mirror.rglob("*") if p.is_file()]:
        if path.relative_to(mirror).as_posix() not in files:  # a shard the bucket no longer holds, a cut copy
            path.unlink(missing_ok=True)
    return str(mirror)


def _copied(stored: PreparedFiles, name: str, mirror: Path) -> str:
    """``name`` downloaded into the local copy ``mirror``; its sha256, read back from there."""
    try:
        (mirror / name).parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{mirror}: the local copy cannot be written ({first_line(err)})") from err
    try:
        stored.download(name, mirror / name)
    except fetch_errors() as err:  # the bucket's side or the copy's disk: the reason says which
        raise ConfigError(
            f"{stored.location}: shard {name} of {RECORD} cannot be copied into {mirror} ({first_line(err)})"
        ) from err
    return PreparedFiles(str(mirror)).sha256(name)


def read_shard(stored: PreparedFiles, name: str, read: Callable[[str], T]) -> T:
    """``read(name)``; a shard that cannot be read is one line naming it."""
    try:
        return read(name)
    except fetch_errors() as err:
        raise ConfigError(f"{stored.location}: shard {name} of {RECORD} cannot be read ({first_line(err)})") from err


def _same_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


def _fits(location: str, mirror: Path, files: dict, hashed: dict, when: dict) -> bool:
    """Whether ``mirror`` holds every shard already, or copying into it what it lacks leaves
    :data:`MIRROR_HEADROOM_MB` free on its disk; where not, one line says the shards are streamed
    from object storage instead."""
    missing = sum(when[n][0] for n in files if not (n in hashed and _same_size(mirror / n, when[n][0])))
    if not missing:
        return True
    where = next(p for p in (mirror, *mirror.parents) if p.exists())
    if shutil.disk_usage(where).free - missing >= MIRROR_HEADROOM_MB * MIB:
        return True
    rank_zero_warn(
        f"{location}: copying its shards ({missing / MIB:,.0f} MiB) into {mirror} would leave under "
        f"{MIRROR_HEADROOM_MB:,} MiB free on that disk; streamed from object storage instead, item by item "
        "(slower: two requests an item)"
    )
    return False


def read_verified(path: Path) -> dict:
    """What :func:`write_verified` kept in ``path``; nothing where it is missing or unreadable."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def write_verified(path: Path, entries: dict) -> None:
    """``name → [size, mtime_ns, sha256]`` of shards that matched their record, written whole at
    once (DDP ranks start together); a data_root that cannot be written keeps hashing them."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
            json.dump(entries, tmp)
        Path(tmp.name).replace(path)
    except OSError:
        if tmp is not None:  # a full disk: no half-written file left beside it
            Path(tmp.name).unlink(missing_ok=True)
