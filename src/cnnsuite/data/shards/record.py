"""The record beside a prepared folder's shards: what they are, checked before it is believed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ...errors import ConfigError
from ...jsonout import first_non_finite
from ..splits import STAGES, check_splits
from ..textfiles import parse_json
from .storage import PreparedFiles, fetch_errors, first_line, is_url

#: the record beside the shards
RECORD = "cnnsuite-prepared.json"
#: the most input channels a record may give (hyperspectral cubes have a few hundred bands)
MAX_CHANNELS = 1024


def is_prepared(location: str | None) -> bool:
    """Whether ``location`` (``data.data_dir``) is a prepared folder: a URL (raw files are read
    from local folders only), or a folder holding :data:`RECORD`."""
    return location is not None and (is_url(location) or (Path(location) / RECORD).is_file())


def content_hash(record: dict, files: dict[str, str]) -> str:
    """sha256 over all the record says (the task, split, items, targets, class names,
    preprocessing ...) but its shards' hashes and its own, and each shard file's name and
    sha256 in ``files``: a label or a band mean edited in the record is a changed folder too."""
    said = {k: v for k, v in record.items() if k not in ("files", "sha256")}
    digest = hashlib.sha256(json.dumps(said, sort_keys=True).encode())
    for name in sorted(files):
        digest.update(f"{name}\0{files[name]}\n".encode())
    return digest.hexdigest()


def read_record(files: PreparedFiles, targetless: bool = False) -> dict:
    """The record of a prepared folder; one that does not read is one line naming it.
    ``targetless``: a sample's target may be -1 (:attr:`~cnnsuite.data.TaskDataModule.targetless_samples`)."""
    location = files.location
    try:
        data = files.read(RECORD)
    except fetch_errors() as err:
        raise ConfigError(f"{location}/{RECORD}: cannot be read ({first_line(err)})") from err
    try:
        record = parse_json(data)
    except ValueError as err:
        raise ConfigError(f"{location}/{RECORD}: not a record written by cnnsuite prepare ({err})") from err
    if not isinstance(record, dict):
        raise ConfigError(f"{location}/{RECORD}: not a record written by cnnsuite prepare (not a JSON object)")
    check_record(record, f"{location}/{RECORD}", targetless)
    return record


def check_record(record: dict, where: str, targetless: bool = False) -> None:
    """A record comes from a folder anyone may have written (or edited, its sha256 computed
    again): each field the datamodule takes from it must be what cnnsuite prepare writes, or
    the run stops here in one line naming the field, not with a traceback minutes later (or a
    26 GB allocation for ``channels: 100000``). Targets are class indices below the number of
    class names (or -1, no target, where ``targetless``: a detection image without objects), or
    0/1 lists of that length."""
    names = record.get("class_names")
    count = len(names) if _ids(names) else 0
    multilabel = record.get("multilabel") is True

    def target(t) -> bool:
        if multilabel:
            return isinstance(t, list) and len(t) == count and all(v in (0, 1) for v in t)
        return type(t) is int and (-1 if targetless else 0) <= t < count

    expected = {
        "task": (lambda v: isinstance(v, str), "a task name"),
        "datamodule": (lambda v: isinstance(v, str), "a class path"),
        "hyper_parameters": (lambda v: isinstance(v, dict), "an object of the datamodule's arguments"),
        "items": (_stages, "train, val and test lists of ids"),
        "splits": (_stages, "train, val and test lists of ids"),
        "class_names": (lambda v: _ids(v) and len(v) > 0 and len(set(v)) == len(v), "a list of distinct class names"),
        "channels": (lambda v: type(v) is int and 1 <= v <= MAX_CHANNELS, f"a whole number from 1 to {MAX_CHANNELS}"),
        "multilabel": (lambda v: type(v) is bool, "true or false"),
        "targets": (
            lambda v: isinstance(v, dict) and all(map(target, v.values())),
            f"an object of class indices from {-1 if targetless else 0} below {count} ({count} 0/1 values each, "
            "multi-label)",
        ),  # fmt: skip
        "preprocessing": (_preprocessing, "an object of values and tensors (lists of numbers), every number finite"),
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
    # the split a run on the folder (and its checkpoints) records, as any split is checked: a training
    # sample in test is scored as unseen; its items (what is streamed) may repeat its samples
    check_splits(record["splits"], f"{where}: splits")
    stages = {i: s for s in STAGES for i in record["splits"][s]}
    for stage in STAGES:
        outside = [i for i in record["items"][stage] if stages.get(i) != stage]
        if outside:
            raise ConfigError(
                f"{where}: items lists {outside[0]!r} in {stage}, which its splits do not: expected each split's items "
                "among its samples"
            )


def _preprocessing(value) -> bool:
    if not isinstance(value, dict) or {type(value.get(k)) for k in ("values", "tensors")} != {dict}:
        return False
    try:  # each tensor a rectangular (nested) list of numbers
        tensors_from_json(value)
    except (TypeError, ValueError, RuntimeError):
        return False
    return first_non_finite(value) is None


def _ids(value) -> bool:
    return isinstance(value, list) and all(isinstance(i, str) for i in value)


def _stages(value) -> bool:
    return isinstance(value, dict) and set(value) == set(STAGES) and all(_ids(v) for v in value.values())


def tensors_to_json(state: dict) -> dict:
    """``{"values": ..., "tensors": ...}``: a datamodule's preprocessing state as JSON, its tensors
    as (nested) lists of numbers; :func:`tensors_from_json` gives it back."""
    import torch

    tensors = {k: v.tolist() for k, v in state.items() if isinstance(v, torch.Tensor)}
    return {"values": {k: v for k, v in state.items() if k not in tensors}, "tensors": tensors}


def tensors_from_json(state: dict) -> dict:
    import torch

    return {**state["values"], **{k: torch.tensor(v) for k, v in state["tensors"].items()}}
