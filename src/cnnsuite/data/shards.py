"""Data larger than memory: a task's decoded items written once as LitData shards, then streamed.

``cnnsuite prepare`` builds a task's datamodule as ``fit`` would, decides its split as ``setup``
does, and writes, per split, the items its datasets decode from raw files before any random
augmentation (what :class:`~cnnsuite.data.cache.DecodedCache` would keep in memory) with
LitData's writer: ``OUT/train``, ``OUT/val``, ``OUT/test``. Beside them :data:`RECORD` says
what they are: the task, the datamodule's class and hyper-parameters, the split, the ids of the
items in shard order, class names, channels, the preprocessing state learnt from the training
split, what the task learnt of each sample that its datasets need before reading one (its
``sample_facts``: a video's duration and frame rate), the sha256 of every shard file and one
content hash over all of it.

An item is what the task's dataset decodes of one raw file, before any random draw of an
epoch (a crop, a clip, a flip): a tensor, or a dict or list of tensors and numbers (an image
with its boxes, a video's frames with their timestamps), which LitData stores field by field.

``--data.data_dir OUT`` (a local folder, or an ``s3://`` URL of one: LitData reads both) makes a
datamodule take its split, classes and preprocessing from the record and read each item from a
``litdata.StreamingDataset`` of the split's shards in place of decoding its raw file.

Why random access into the ``StreamingDataset`` rather than LitData's own shuffling and
``StreamingDataLoader``: the training order stays the suite's (:mod:`cnnsuite.data.resumable`:
drawn from the run's seed and epoch, sharded per DDP rank, its position in every checkpoint), so
a run resumes exactly in the middle of an epoch, the same seed draws the same batches from shards
as from raw files, and evaluation is item for item the raw path's. The price is reads in a random
order, which LitData's defaults are not made for:

- each read decodes its item alone (``batch_decode=0``): LitData's default decodes a window of up
  to 256 neighbours for the next reads to take, which a random order throws away at almost every
  read;
- a local split's chunks stay memory-mapped, as many as ``data.cache_limit_mb`` holds
  (:class:`StreamedItems`): LitData keeps four, and a random order over more maps a chunk again
  at almost every read;
- on object storage LitData reads each item by index with ranged GETs of its chunk (its
  ``on_demand_bytes``, on for reads by index: two requests an item, nothing kept), since a chunk
  it downloaded whole would be deleted as soon as a read moved to another chunk, which a random
  order does at almost every read. So a folder on object storage is copied once under
  ``<data_root>/cache/prepared``, each shard hashed there (:func:`check_shards`: every start
  downloads them all anyway until their hashes are known), and streamed from there as a local one; a later
  start copies only the shards whose object changed. Where the copy would not fit on the local
  disk the items are read from the bucket as LitData does, its copies of the splits'
  ``index.json`` kept under ``<data_root>/cache/litdata`` beside the suite's other caches (not
  LitData's ``~/.lightning/chunks``).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import TypeVar

from lightning.pytorch.utilities import rank_zero_warn

from ..classpath import class_path
from ..errors import ConfigError
from .cache import MIB
from .splits import STAGES

#: the record beside the shards
RECORD = "cnnsuite-prepared.json"
#: the size of one shard file (LitData's chunk)
CHUNK_BYTES = "64MB"
#: the chunks of a local folder LitData keeps memory-mapped at once by default
LITDATA_MAPPED_CHUNKS = 4
#: the disk space a local copy of a prepared folder on object storage leaves free, at least
MIRROR_HEADROOM_MB = 1024
#: the most input channels a record may give (hyperspectral cubes have a few hundred bands)
MAX_CHANNELS = 1024

T = TypeVar("T")


def is_url(location: str) -> bool:
    """Whether ``location`` names object storage (``s3://...``) rather than a local path."""
    return "://" in str(location)


def is_prepared(location: str | None) -> bool:
    """Whether ``location`` (``data.data_dir``) is a prepared folder: a URL (raw files are read
    from local folders only), or a folder holding :data:`RECORD`."""
    return location is not None and (is_url(location) or (Path(location) / RECORD).is_file())


class PreparedFiles:
    """The files of a prepared folder, read in place: a local folder, an ``s3://`` URL (through
    LitData's S3 client: the credentials and endpoint it streams the shards with, from the
    environment, ``~/.aws`` or a Lightning data connection; made once, as making one takes a
    good part of a second), or another scheme LitData reads (``gs://``, ...), fetched whole by
    its downloader."""

    def __init__(self, location: str) -> None:
        self.location = location.rstrip("/") if is_url(location) else location
        self._client = None

    def _s3(self, name: str) -> tuple:
        """(client, bucket, key) of ``name`` on S3."""
        if self._client is None:
            from litdata.streaming.client import S3Client

            self._client = S3Client().client
        bucket, _, prefix = self.location.removeprefix("s3://").partition("/")
        return self._client, bucket, f"{prefix}/{name}".lstrip("/")

    def open(self, name: str):
        """A binary stream of ``name``."""
        if not is_url(self.location):
            return (Path(self.location) / name).open("rb")
        if self.location.startswith("s3://"):
            client, bucket, key = self._s3(name)
            return client.get_object(Bucket=bucket, Key=key)["Body"]
        from litdata.streaming.downloader import get_downloader

        with tempfile.TemporaryDirectory() as tmp:
            local = str(Path(tmp) / Path(name).name)
            get_downloader(self.location, tmp, []).download_file(f"{self.location}/{name}", local)
            return io.BytesIO(Path(local).read_bytes())

    def read(self, name: str) -> bytes:
        with self.open(name) as stream:
            return stream.read()

    def sha256(self, name: str) -> str:
        """The sha256 of ``name``, read in blocks: a 64 MB shard is never held whole."""
        digest = hashlib.sha256()
        with self.open(name) as stream:
            while block := stream.read(1 << 20):
                digest.update(block)
        return digest.hexdigest()

    def download(self, name: str, dest: Path) -> None:
        """An ``s3://`` folder's ``name`` as the local file ``dest``, whole or not at all: boto3's
        managed transfer (ranged GETs in parallel, retried) writes a temporary file beside it and
        renames it at the end."""
        client, bucket, key = self._s3(name)
        client.download_file(bucket, key, str(dest))

    def is_empty(self) -> bool:
        """Whether nothing is stored under the folder yet (an ``s3://`` prefix: one LIST request)."""
        if not is_url(self.location):
            folder = Path(self.location)
            return not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))
        client, bucket, prefix = self._s3("")
        return not client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("KeyCount")

    def upload(self, path: Path, name: str) -> None:
        """The local file ``path`` stored as ``name`` (an ``s3://`` folder: multipart where large)."""
        client, bucket, key = self._s3(name)
        client.upload_file(str(path), bucket, key)

    def version(self, name: str) -> list | None:
        """What changes when ``name`` changes, without reading it: a local file's size and
        modification time, an S3 object's size and ETag (one HEAD request); None where unknown."""
        if not is_url(self.location):
            stat = (Path(self.location) / name).stat()
            return [stat.st_size, stat.st_mtime_ns]
        if self.location.startswith("s3://"):
            client, bucket, key = self._s3(name)
            head = client.head_object(Bucket=bucket, Key=key)
            return [head["ContentLength"], head["ETag"]]
        return None


def _fetch_errors() -> tuple[type[BaseException], ...]:
    """What reading, writing or moving a local file or an object can raise for reasons outside
    the suite: a missing or unreadable file, a full disk, a bucket or key that is not there,
    credentials refused, a transfer that failed after its retries."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    return OSError, BotoCoreError, ClientError, Boto3Error


def content_hash(items: dict[str, list[str]], files: dict[str, str]) -> str:
    """sha256 over the items' ids of every split and each shard file's name and sha256."""
    digest = hashlib.sha256(json.dumps(items, sort_keys=True).encode())
    for name in sorted(files):
        digest.update(f"{name}\0{files[name]}\n".encode())
    return digest.hexdigest()


def read_record(files: PreparedFiles) -> dict:
    """The record of a prepared folder; one that does not read is one line naming it."""
    location = files.location
    try:
        data = files.read(RECORD)
    except _fetch_errors() as err:
        raise ConfigError(f"{location}/{RECORD}: cannot be read ({first_line(err)})") from err
    try:
        record = json.loads(data)
    except ValueError as err:
        raise ConfigError(f"{location}/{RECORD}: not a record written by cnnsuite prepare ({err})") from err
    if not isinstance(record, dict):
        raise ConfigError(f"{location}/{RECORD}: not a record written by cnnsuite prepare (not a JSON object)")
    check_record(record, f"{location}/{RECORD}")
    return record


def check_record(record: dict, where: str) -> None:
    """A record comes from a folder anyone may have written (or edited, its sha256 computed
    again): each field the datamodule takes from it must be what cnnsuite prepare writes, or
    the run stops here in one line naming the field, not with a traceback minutes later (or a
    26 GB allocation for ``channels: 100000``). Targets are class indices below the number of
    class names (-1: a detection image without objects), or 0/1 lists of that length."""
    names = record.get("class_names")
    count = len(names) if _ids(names) else 0
    multilabel = record.get("multilabel") is True

    def target(t) -> bool:
        if multilabel:
            return isinstance(t, list) and len(t) == count and all(v in (0, 1) for v in t)
        return type(t) is int and -1 <= t < count

    expected = {
        "task": (lambda v: isinstance(v, str), "a task name"),
        "datamodule": (lambda v: isinstance(v, str), "a class path"),
        "hyper_parameters": (lambda v: isinstance(v, dict), "an object of the datamodule's arguments"),
        "items": (_stages, "train, val and test lists of ids"),
        "splits": (_stages, "train, val and test lists of ids"),
        "class_names": (lambda v: _ids(v) and len(v) > 0, "a list of class names"),
        "channels": (lambda v: type(v) is int and 1 <= v <= MAX_CHANNELS, f"a whole number from 1 to {MAX_CHANNELS}"),
        "multilabel": (lambda v: type(v) is bool, "true or false"),
        "targets": (
            lambda v: isinstance(v, dict) and all(map(target, v.values())),
            f"an object of class indices below {count} ({count} 0/1 values each, multi-label)",
        ),  # fmt: skip
        "preprocessing": (
            lambda v: isinstance(v, dict) and {type(v.get(k)) for k in ("values", "tensors")} == {dict},
            "an object of values and tensors",
        ),  # fmt: skip
        "files": (
            lambda v: isinstance(v, dict) and all(isinstance(h, str) for h in v.values()),
            "an object of shard names and their sha256",
        ),  # fmt: skip
        "sha256": (lambda v: isinstance(v, str), "a sha256"),
    }
    for key, (ok, what) in expected.items():
        if key not in record:
            raise ConfigError(f"{where}: not a record written by cnnsuite prepare (no {key})")
        if not ok(record[key]):
            shown = json.dumps(record[key])
            raise ConfigError(f"{where}: {key} is {shown if len(shown) <= 60 else shown[:57] + '...'}, expected {what}")
    unlabelled = [i for ids in record["items"].values() for i in ids if i not in record["targets"]]
    if unlabelled:
        raise ConfigError(f"{where}: items lists {unlabelled[0]!r}, which targets does not: expected a target for each")


def _ids(value) -> bool:
    return isinstance(value, list) and all(isinstance(i, str) for i in value)


def _stages(value) -> bool:
    return isinstance(value, dict) and set(value) == set(STAGES) and all(_ids(v) for v in value.values())


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
    when = {name: _read_shard(stored, name, stored.version) for name in files} if known is not None else {}
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
            found[name] = _read_shard(stored, name, stored.sha256)
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
    except _fetch_errors() as err:  # the bucket's side or the copy's disk: the reason says which
        raise ConfigError(
            f"{stored.location}: shard {name} of {RECORD} cannot be copied into {mirror} ({first_line(err)})"
        ) from err
    return PreparedFiles(str(mirror)).sha256(name)


def _read_shard(stored: PreparedFiles, name: str, read: Callable[[str], T]) -> T:
    """``read(name)``; a shard that cannot be read is one line naming it."""
    try:
        return read(name)
    except _fetch_errors() as err:
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


def first_line(err: BaseException) -> str:
    """An error's message as one line: object stores' clients explain over many."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


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


def tensors_to_json(state: dict) -> dict:
    """``{"values": ..., "tensors": ...}``: a datamodule's preprocessing state as JSON, its tensors
    as (nested) lists of numbers; :func:`tensors_from_json` gives it back."""
    import torch

    tensors = {k: v.tolist() for k, v in state.items() if isinstance(v, torch.Tensor)}
    return {"values": {k: v for k, v in state.items() if k not in tensors}, "tensors": tensors}


def tensors_from_json(state: dict) -> dict:
    import torch

    return {**state["values"], **{k: torch.tensor(v) for k, v in state["tensors"].items()}}


class StreamedItems:
    """One split's decoded items, read from its shards: what a dataset keeps in place of a
    :class:`~cnnsuite.data.cache.DecodedCache`. The ``StreamingDataset`` is opened in the
    process that reads first (each DataLoader worker its own).

    A local split's chunk files are read in place, memory-mapped: ``mapped_mb`` bounds the
    chunks mapped at once (their pages are the kernel's page cache, which it takes back under
    pressure, but they count in the process's resident memory). LitData keeps four mapped and
    maps another one, dropping the oldest, when a read needs it: in a random order over more
    chunks than that nearly every read maps one, which costs more than the read itself."""

    cached = True  # every item comes whole, as a cache's do

    def __init__(
        self, location: str, stage: str, ids: list[str], mapped_mb: float = 0, fetched: str | None = None
    ) -> None:
        self.url, self.ids, self._dataset = f"{location.rstrip('/')}/{stage}", ids, None
        self.mapped_mb = mapped_mb
        self.fetched = fetched  # LitData's cache folder for object storage

    def __len__(self) -> int:
        return len(self.ids)

    def kept_chunks(self) -> int:
        """How many chunks stay mapped: the split's, within ``mapped_mb`` (at least LitData's
        four). Object storage keeps LitData's own setting, which there also decides how many
        chunks it fetches ahead."""
        if is_url(self.url):
            return LITDATA_MAPPED_CHUNKS
        chunks = list(Path(self.url).glob("*.bin"))
        largest = max((c.stat().st_size for c in chunks), default=0)
        if not largest or self.mapped_mb * MIB >= largest * len(chunks):  # all fit (an inf limit too)
            return max(LITDATA_MAPPED_CHUNKS, len(chunks))
        return max(LITDATA_MAPPED_CHUNKS, int(self.mapped_mb * MIB // largest))

    def __getitem__(self, index: int):
        if self._dataset is None:
            from litdata import StreamingDataset

            kept = self.kept_chunks()
            # LitData maps max(4, max_pre_download) chunks of a local folder at once
            options = {"max_pre_download": kept} if kept > LITDATA_MAPPED_CHUNKS else {}
            if is_url(self.url) and self.fetched is not None:
                options["cache_dir"] = self.fetched
            self._dataset = StreamingDataset(self.url, batch_decode=0, **options)
        entry = self._dataset[index]
        # bytes (a memoryview back), or a string in folders written before ids were bytes
        found = entry["id"] if isinstance(entry["id"], str) else bytes(entry["id"]).decode()
        if found != self.ids[index]:
            raise ConfigError(f"{self.url}: item {index} is {found!r}, its record says {self.ids[index]}")
        return entry["item"]


def write_shards(out: Path, stage: str, ids: list[str], read) -> dict[str, str]:
    """``read(i)`` of each of ``ids`` as ``{"id", "item"}`` into ``out/stage`` with LitData's
    ``BinaryWriter``, the writer ``litdata.optimize`` runs, here in this process: the shards hold
    the items in ``ids``' order, and no process is forked from one whose readers hold locks
    (GDAL's, for GeoTIFFs, deadlock a forked writer); returns ``{file name relative to out: sha256}``."""
    from litdata.streaming.writer import BinaryWriter

    folder = out / stage
    if ids:
        folder.mkdir(parents=True, exist_ok=True)
        writer = BinaryWriter(str(folder), chunk_bytes=CHUNK_BYTES)
        for index, sample_id in enumerate(ids):
            # as bytes: LitData stores a string that names a file (an id relative to the working
            # folder, when that is the data's) as the file's contents
            writer.add_item(index, {"id": sample_id.encode(), "item": read(index)})
        writer.done()
        writer.merge()
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@contextmanager
def _undone_on_failure(out: Path):
    """Writing the splits' folders and :data:`RECORD` into the new or empty folder ``out`` (made
    here when missing): whatever stops the writing (a full disk, Ctrl-C, a bug) removes them,
    and ``out`` if it was made here, so freeing space and running ``cnnsuite prepare`` again just
    works (a folder left half-written would be refused as not empty). Nothing else in ``out`` is
    touched. A write that fails is one line naming ``out``."""
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException as err:
        (out / RECORD).unlink(missing_ok=True)
        for stage in STAGES:
            shutil.rmtree(out / stage, ignore_errors=True)
        if made and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        if isinstance(err, OSError):
            raise ConfigError(f"{out}: cannot write the prepared folder ({err.strerror or err}); "
                              "nothing written was kept") from None  # fmt: skip
        raise


def _json_target(target):
    """A class index, or a multi-hot vector as a list."""
    return target.tolist() if hasattr(target, "tolist") else target


def prepare(datamodule, task: str, out: str | Path) -> str:
    """Write ``datamodule``'s decoded items of every split and :data:`RECORD` into ``out`` (a new
    or empty folder, or an empty ``s3://`` prefix), as the module docstring says; returns the
    record's location. The datamodule's class :attr:`~cnnsuite.data.TaskDataModule.streams_prepared`
    (``prepare_main`` checks it).

    For ``s3://`` the folder is written under ``<data_root>/cache/prepared`` first, where a run
    on this machine keeps its local copy of that URL (:func:`check_shards`), then uploaded, the
    record last: a prefix without a record is not a prepared folder, and a run here after the
    upload finds every shard's hash and copy already kept."""
    if is_url(str(out)):
        return _prepare_onto(datamodule, task, str(out).rstrip("/"))
    out = Path(out).expanduser().resolve()
    if not PreparedFiles(str(out)).is_empty():
        raise ConfigError(f"--out {out}: not empty; cnnsuite prepare writes into a new or empty folder")
    return str(_write_prepared(datamodule, task, out))


def _prepare_onto(datamodule, task: str, url: str) -> str:
    """:func:`prepare` into an empty ``s3://`` prefix."""
    if not url.startswith("s3://"):
        raise ConfigError(f"--out {url}: cnnsuite prepare writes a local folder or an s3:// prefix")
    stored = PreparedFiles(url)
    try:
        if not stored.is_empty():
            raise ConfigError(f"--out {url}: not empty; cnnsuite prepare writes under a new or empty prefix")
    except _fetch_errors() as err:
        raise ConfigError(f"--out {url}: cannot be listed ({first_line(err)})") from err
    local = datamodule.kept_for(url, "prepared")
    shutil.rmtree(local, ignore_errors=True)  # a copy of what the URL held before: it holds nothing now
    record = json.loads(_write_prepared(datamodule, task, local).read_text())
    for name in [*record["files"], RECORD]:
        try:
            stored.upload(local / name, name)
        except _fetch_errors() as err:
            raise ConfigError(f"{url}/{name}: cannot be uploaded ({first_line(err)}); delete the prefix and "
                              "run cnnsuite prepare again") from err  # fmt: skip
    versions = {name: _read_shard(stored, name, stored.version) for name in record["files"]}
    write_verified(datamodule.kept_for(url, "shards-verified", ".json"),
                   {name: [*versions[name], sha] for name, sha in record["files"].items()})  # fmt: skip
    return f"{url}/{RECORD}"


def _write_prepared(datamodule, task: str, out: Path) -> Path:
    """The shards and the record of :func:`prepare` written into the local folder ``out``."""
    source = datamodule.hparams.get("data_dir")
    if source is not None and is_prepared(source):
        raise ConfigError(f"--data.data_dir {source}: already a prepared folder; give the raw data's folder")
    datamodule.prepare_data()
    datamodule.setup("fit")
    items, files = {}, {}
    with _undone_on_failure(out):
        for stage in STAGES:
            items[stage], read = datamodule.decoder(stage)
            files |= write_shards(out, stage, items[stage], read)
        path = out / RECORD
        path.write_text(json.dumps(_record(datamodule, task, items, files), indent=1, allow_nan=False) + "\n")
    return path


def _record(datamodule, task: str, items: dict[str, list[str]], files: dict[str, str]) -> dict:
    """:data:`RECORD`'s contents for the shards ``files`` holding the splits' ``items``."""
    targets = dict(datamodule.samples())
    held = {i: None for ids in datamodule.splits.values() for i in ids}  # the split's samples, in order
    return {
        "task": task,
        "datamodule": class_path(datamodule),
        "hyper_parameters": {k: datamodule.hparams.get(k) for k in datamodule.init_parameters() if k != "data_dir"},
        "raw_data_dir": datamodule.hparams.get("data_dir"),
        "splits": datamodule.splits,
        "items": items,
        "targets": {i: _json_target(targets[i]) for i in held},
        "class_names": list(datamodule.class_names),
        "channels": datamodule.in_channels,
        "multilabel": datamodule.multilabel,
        "preprocessing": tensors_to_json(datamodule.preprocessing_state()),
        "sample_facts": {i: facts for i, facts in datamodule.sample_facts().items() if i in held},
        "files": files,
        "sha256": content_hash(items, files),
    }


def prepare_main(argv: list[str]) -> None:
    """``cnnsuite prepare``: a task's datamodule built from its config's data section and the
    ``--data.*`` options, as ``fit`` builds it, written by :func:`prepare`."""
    import yaml

    from ..commands import add_out, command_parser
    from ..contract import task_named
    from ..trust.checkpoint import data_options

    parser = command_parser(
        "prepare",
        "Write a task's data once as LitData shards of its decoded items (train/val/test as fit splits it) with "
        f"{RECORD}: the split, classes, preprocessing state and a content hash. Train from them with "
        "cnnsuite fit --data.data_dir OUT (a local folder or an s3:// URL of one).",
        ckpt=None,
        epilog="Any other --data.KEY VALUE is a setting of the task's datamodule, as for cnnsuite fit.",
    )
    parser.add_argument("--task", required=True, help="the task whose data it is, by its registered name "
                        "(a task that streams prepared data; the others say so)")  # fmt: skip
    parser.add_argument("--config", help="the config whose data section builds the datamodule (default: the task's)")
    parser.add_argument("--data.data_dir", dest="data_dir", default=None,
                        help="the raw data's folder (only read); default: the task's embedded default")  # fmt: skip
    parser.add_argument("--data.data_root", dest="data_root", default=None,
                        help="where an embedded default is (generated when missing) and the suite's caches "
                        "(default: data)")  # fmt: skip
    parser.set_defaults(num_workers=None)  # how a run loads is its own, not the record's
    add_out(
        parser,
        "where the shards and the record are written: a new or empty folder, or an empty s3:// "
        "prefix (uploaded, and kept as this machine's copy under <data_root>/cache) (required)",
    )
    args, extra = parser.parse_known_args(argv)
    if args.out is None:
        parser.error("the following arguments are required: --out")
    task = task_named(args.task)
    config_path = Path(args.config or task.config)
    try:
        section = (yaml.safe_load(config_path.read_text()) or {}).get("data") or {}
    except (OSError, yaml.YAMLError, AttributeError) as err:
        raise ConfigError(f"{config_path}: not a readable config ({err})") from err
    cls = task.datamodule
    if not cls.streams_prepared:
        raise ConfigError(f"--task {args.task}: {args.task} does not stream a prepared folder (streams_prepared)")
    named = section.get("class_path", class_path(cls))
    if named != class_path(cls):
        raise ConfigError(f"{config_path}: data.class_path {named} is not {args.task}'s datamodule")
    init_args = {**section.get("init_args", {}), **data_options(args, extra, parser)}
    unknown = sorted(set(init_args) - set(cls.init_parameters()))
    if unknown:
        raise ConfigError(f"--data.{unknown[0]}: not a setting of {cls.__name__}")
    record = prepare(cls(**init_args), args.task, args.out)
    folder = record.removesuffix(f"/{RECORD}")
    print(f"{record}: train with cnnsuite fit --config {config_path} --data.data_dir {folder}")
