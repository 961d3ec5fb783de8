"""``cnnsuite prepare``: a task's decoded items written once as shards, with their record."""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
from contextlib import contextmanager
from pathlib import Path

from ...classpath import class_path
from ...errors import ConfigError
from ..folders import expand_home, lies_within
from ..splits import STAGES
from ..textfiles import parse_yaml
from .record import RECORD, content_hash, is_prepared, tensors_to_json
from .storage import PreparedFiles, fetch_errors, first_line, is_url
from .verify import read_shard, write_verified

#: the size of one shard file (LitData's chunk)
CHUNK_BYTES = "64MB"


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
    or empty folder, or an empty ``s3://`` prefix), as :mod:`cnnsuite.data.shards` says; returns the
    record's location. The datamodule's class :attr:`~cnnsuite.data.TaskDataModule.streams_prepared`
    (``prepare_main`` checks it).

    For ``s3://`` the folder is written under ``<data_root>/cache/prepared`` first, where a run
    on this machine keeps its local copy of that URL (:func:`check_shards`), then uploaded, the
    record last: a prefix without a record is not a prepared folder, and a run here after the
    upload finds every shard's hash and copy already kept."""
    if is_url(str(out)):
        return _prepare_onto(datamodule, task, str(out).rstrip("/"))
    out = expand_home(out, "--out").resolve()
    if lies_within(out, datamodule.root):  # its shards would be listed as samples of the data
        data = Path(datamodule.root).expanduser().resolve()
        raise ConfigError(f"--out {out}: inside the data folder {data}, which is only read; name a folder outside it")
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
    except fetch_errors() as err:
        raise ConfigError(f"--out {url}: cannot be listed ({first_line(err)})") from err
    local = datamodule.kept_for(url, "prepared")
    shutil.rmtree(local, ignore_errors=True)  # a copy of what the URL held before: it holds nothing now
    record = json.loads(_write_prepared(datamodule, task, local).read_text())
    for name in [*record["files"], RECORD]:
        try:
            stored.upload(local / name, name)
        except fetch_errors() as err:
            raise ConfigError(f"{url}/{name}: cannot be uploaded ({first_line(err)}); delete the prefix and "
                              "run cnnsuite prepare again") from err  # fmt: skip
    versions = {name: read_shard(stored, name, stored.version) for name in record["files"]}
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
    record = {
        "task": task,
        "datamodule": class_path(datamodule),
        "hyper_parameters": {k: datamodule.hparams.get(k) for k in datamodule.init_parameters() if k != "data_dir"},
        "raw_data_dir": datamodule.hparams.get("data_dir"),
        # each split's samples once, the split a run on the folder records; the items, what is
        # streamed, may repeat them (the bench's larger data)
        "splits": {stage: list(dict.fromkeys(ids)) for stage, ids in datamodule.splits.items()},
        "items": items,
        "targets": {i: _json_target(targets[i]) for i in held},
        "class_names": list(datamodule.class_names),
        "channels": datamodule.in_channels,
        "multilabel": datamodule.multilabel,
        "preprocessing": tensors_to_json(datamodule.preprocessing_state()),
        "sample_facts": {i: facts for i, facts in datamodule.sample_facts().items() if i in held},
        "files": files,
    }
    return record | {"sha256": content_hash(record, files)}


def data_section(config_path: Path) -> dict:
    """The config's ``data`` section, ``{"class_path"?, "init_args"}`` (either may be left
    out or empty), each part checked to be a mapping, as LightningCLI has them."""
    import yaml

    try:
        config = parse_yaml(config_path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{config_path}: not a readable config ({' '.join(str(err).split())})") from err

    def mapping(key: str, value) -> dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{config_path}: {key} is {json.dumps(value, default=str)[:60]}, expected a mapping")
        return value

    def given(value) -> dict:  # left out or left empty: nothing
        return {} if value is None else value

    section = mapping("data", given(mapping("the config", given(config)).get("data")))
    return {**section, "init_args": mapping("data.init_args", given(section.get("init_args")))}


def prepare_main(argv: list[str]) -> None:
    """``cnnsuite prepare``: a task's datamodule built from its config's data section and the
    ``--data.*`` options, as ``fit`` builds it, written by :func:`prepare`."""

    from ...commands import add_out, command_parser
    from ...contract import names_class, task_named
    from ...trust.checkpoint import data_options

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
    section = data_section(config_path)
    cls = task.datamodule
    if not cls.streams_prepared:
        raise ConfigError(f"--task {args.task}: {args.task} does not stream a prepared folder (streams_prepared)")
    named = section.get("class_path", class_path(cls))
    if not names_class(named, cls):  # as fit resolves it: a short name, or where its package exports it
        raise ConfigError(f"{config_path}: data.class_path {named} is not {args.task}'s datamodule")
    given = data_options(args, extra, parser)
    init_args = {**section["init_args"], **given}
    unknown = sorted(set(init_args) - set(cls.init_parameters()))
    if unknown:
        raise ConfigError(f"--data.{unknown[0]}: not a setting of {cls.__name__}")
    record = prepare(cls(**init_args), args.task, args.out)
    folder = record.removesuffix(f"/{RECORD}")
    # a run on the folder must give the settings it was decoded and split with, not the run's own
    own = {*cls.local_hparams(), *cls.source_hparams, *cls.after_decoding_hparams}
    options = [f"--data.{k} {shlex.quote(v if isinstance(v, str) else json.dumps(v))}"
               for k, v in given.items() if k not in own]  # fmt: skip
    command = " ".join(["cnnsuite fit --config", shlex.quote(str(config_path)), "--data.data_dir",
                        shlex.quote(folder), *options])  # fmt: skip
    print(f"{record}: train with {command}")
