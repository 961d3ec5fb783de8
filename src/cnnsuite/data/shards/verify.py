"""A prepared folder's shards checked against its record, hashed once per version of each file,
and a folder on object storage copied once to this machine."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import TypeVar

from lightning.pytorch.utilities import rank_zero_warn

from ...atomic import make_temporary
from ...errors import ConfigError
from ..cache import MIB
from ..folders import leaves_folder
from ..textfiles import parse_json
from .record import RECORD, content_hash
from .storage import PreparedFiles, fetch_errors, first_line, is_url

#: the disk space a local copy of a prepared folder on object storage leaves free, at least
MIRROR_HEADROOM_MB = 1024
#: the LitData formats the fields of cnnsuite prepare's items are stored in (``no_header_*`` with
#: ``:<dtype index>``): each decodes its bytes as data; LitData's others include ``pickle`` (and
#: formats falling back to it), which runs what a shard holds, and decoders of whole files (video,
#: PDF, meshes)
SAFE_FORMATS = frozenset(
    {"bytes", "tensor", "no_header_tensor", "numpy", "no_header_numpy", "int", "float", "bool", "str", "json"}
)
#: the containers an item's fields may be nested in (LitData's ``data_spec``, a pytree spec)
SAFE_NODES = frozenset({None, "builtins.dict", "builtins.list", "builtins.tuple"})
#: the item loader cnnsuite prepare's writer names, and its index's settings that stay unset
INDEX_LOADER = "PyTreeLoader"
INDEX_UNSET = ("compression", "encryption", "ipc_compression")

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
    the mirror, or the folder itself, once each split's LitData index says what cnnsuite prepare
    writes (:func:`_check_index`). A local folder's files must be its own: no symbolic links."""
    files, location = record["files"], stored.location
    for name in files:  # prepare writes POSIX names of files in the folder
        if not PurePosixPath(name).parts or "\\" in name or leaves_folder(name) or _linked(location, name):
            raise ConfigError(f"{location}/{RECORD}: shard {name!r} is not a file inside the prepared folder")
    with _one_at_a_time(verified):
        streamed_from = _check_shards(stored, record, verified, mirror)
    source = stored if streamed_from == location else PreparedFiles(streamed_from)
    for stage, ids in record["items"].items():
        if ids:
            _check_index(source, stage, record, location)
    return streamed_from


def _linked(location: str, name: str) -> bool:
    """Whether the local file ``name`` of a prepared folder is, or is reached through, a symbolic
    link, or is not a regular file where something is there (a FIFO, a device): the folder's
    files are read as its own, and a link to ``/dev/zero`` would keep its hashing reading."""
    if is_url(location):
        return False
    parts = PurePosixPath(name).parts
    steps = [Path(location, *parts[:end]) for end in range(1, len(parts) + 1)]  # each folder down, then the file
    return any(step.is_symlink() for step in steps) or (steps[-1].exists() and not steps[-1].is_file())


def _check_index(stored: PreparedFiles, stage: str, record: dict, location: str) -> None:
    """A split's LitData index, read once its sha256 matched the record, must say what cnnsuite
    prepare writes: LitData believes it, and it names the files a read opens and the decoder of
    each field of an item. A sha256 only shows the folder is as its record says; a hand-made
    folder's record hashes whatever it holds, so an index naming LitData's ``pickle`` format (code
    run at the first read) or a chunk outside the split is refused here, in one line."""
    name = f"{stage}/index.json"
    if name not in record["files"]:
        raise ConfigError(f"{location}/{RECORD}: its files do not list {name}; run cnnsuite prepare again")
    try:
        index = parse_json(read_shard(stored, name, stored.read))
    except ValueError as err:
        raise ConfigError(f"{location}/{name}: not JSON ({err})") from err
    problem = _index_problem(index, stage, record["files"], len(record["items"][stage]))
    if problem:
        raise ConfigError(f"{location}/{name}: {problem}, which cnnsuite prepare does not write; run it again")


def _index_problem(index, stage: str, files: dict, items: int) -> str | None:
    """What in a split's LitData index is not what cnnsuite prepare writes (its chunks hold the
    split's ``items``, one each); None where all is."""
    config = index.get("config") if isinstance(index, dict) else None
    chunks = index.get("chunks") if isinstance(index, dict) else None
    if not isinstance(config, dict) or not isinstance(chunks, list):
        return "not a LitData index (an object of config and chunks)"
    formats = config.get("data_format")
    if not isinstance(formats, list) or not all(map(_safe_format, formats)):
        return f"data_format is {formats!r}, formats outside {sorted(SAFE_FORMATS)}"
    if config.get("item_loader") != INDEX_LOADER:
        return f"item_loader is {config.get('item_loader')!r}, not {INDEX_LOADER}"
    for key in INDEX_UNSET:
        if config.get(key) is not None:
            return f"{key} is {config[key]!r}"
    nodes = _spec_nodes(config.get("data_spec"))
    if nodes is None:
        return "data_spec is not a pytree spec"
    if not nodes <= SAFE_NODES:
        return f"data_spec nests items in {sorted(map(str, nodes - SAFE_NODES))}, not dicts, lists and tuples"
    for chunk in chunks:
        filename = chunk.get("filename") if isinstance(chunk, dict) else None
        if not isinstance(filename, str) or f"{stage}/{filename}" not in files or "/" in filename:
            return f"a chunk is {filename!r}, not a file of {stage}/ its record lists"
    sizes = [chunk.get("chunk_size") for chunk in chunks]
    bad = next((n for n in sizes if type(n) is not int or n < 0), None)
    if bad is not None:
        return f"a chunk's chunk_size is {bad!r}, not a count of items"
    if sum(sizes) != items:  # else LitData fails at the first read past its last item, mid-epoch, in a traceback
        return f"its chunks hold {sum(sizes)} items, where the record lists {items} for {stage}"
    return None


def _safe_format(name) -> bool:
    base, _, dtype = name.partition(":") if isinstance(name, str) else ("", "", "")
    return base in SAFE_FORMATS and (not dtype or dtype.isdigit())


def _spec_nodes(spec) -> set | None:
    """The container types named in LitData's ``data_spec`` (a serialised pytree spec: ``[version,
    {"type", "context", "children_spec"}]``); None where it is not one."""
    try:
        found, todo = set(), [parse_json(spec)[1]]
        while todo:
            node = todo.pop()
            found.add(node["type"])
            todo.extend(node["children_spec"])
        return found
    except (TypeError, ValueError, KeyError, IndexError):
        return None


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
    if content_hash(record, found) != record["sha256"]:
        changed = [name for name in files if files[name] != found[name]]
        what = f"shards {', '.join(changed)} differ" if changed else "edited, or written by another version"
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
        found = parse_json(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def write_verified(path: Path, entries: dict) -> None:
    """``name → [size, mtime_ns, sha256]`` of shards that matched their record, written whole at
    once (DDP ranks start together); a data_root that cannot be written keeps hashing them."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temporary(path.parent, f".{path.name}.", ".tmp")  # the umask's mode, as the shards'
        tmp.write_text(json.dumps(entries))
        tmp.replace(path)
    except OSError:
        if tmp is not None:  # a full disk: no half-written file left beside it
            tmp.unlink(missing_ok=True)
