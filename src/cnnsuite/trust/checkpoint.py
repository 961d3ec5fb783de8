"""A checkpoint is untrusted input: load it without running code, rebuild only our classes.

``torch.load(weights_only=True)`` stops pickled code, but a checkpoint also *names* the
classes that rebuild its run (``cnnsuite_classes``) and gives them arguments. Were those
names imported and called as they stand, a hand-made file could call any function with
arguments of its choice (importing ``cnnsuite.__main__`` alone runs the CLI). So a name
is only ever looked up among the model and datamodule classes of registered tasks
(:mod:`cnnsuite.contract`: ours, and a user's own task packages installed with pip); nothing
the file names is imported, and the check comes before any call.

Its arguments are checked against the class's signature by jsonargparse before the class is
called (types and names; nothing is imported or instantiated by the check), its networks are
sized on the meta device before they take memory (they must take the weights the file holds),
and every failure to build the model or load its weights is one :class:`CheckpointError`
naming the file.

What a checkpoint holds defines a run (classes, sizes, preprocessing, its split); it never
says where anything is read or written on this machine: a datamodule rebuilt from it takes
its locations and loading settings (:meth:`~cnnsuite.data.TaskDataModule.local_hparams`)
from the user (``data``), else from the class's defaults. The one path every command takes
is :func:`build_model` (the model, its weights checked) and :func:`rebuild` /
:func:`rebuild_for_inference` (with its datamodule); resuming a fit checks the file through
:func:`resume_arguments`, the same checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from jsonargparse import ArgumentParser
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ..classpath import class_path
from ..contract import task_of, trusted_classes
from ..contract import trusted_class as registered_class
from ..data import TaskDataModule
from ..data.labels import OneLabelExpected
from ..data.shards import is_prepared
from ..data.splits import check_splits, load_splits
from ..data.textfiles import parse_yaml
from ..errors import CheckpointError, ConfigError, MissingFileError, StateError, describe_unknown
from ..jsonout import first_non_finite
from ..training.fits import check_model_fits_data
from ..training.rng import check_rng_states
from ..training.task import META_CHECK, TaskModule
from .untrusted import check_finite_tensors, check_values_stored, load_weights_only

#: the key under which :class:`~cnnsuite.training.task.TaskModule` records its run's classes
CLASSES_KEY = "cnnsuite_classes"


def trusted_class(name: object, base: type, source: object) -> type:
    """The class of a registered task called ``name`` (:func:`~cnnsuite.contract.trusted_classes`)
    that is a ``base``; anything else is refused, naming ``source`` (the checkpoint) and what
    was expected."""
    cls = registered_class(name) if isinstance(name, str) else None
    if cls is None or not issubclass(cls, base):
        allowed = sorted(p for p, c in trusted_classes().items() if issubclass(c, base))
        raise CheckpointError(
            f"{source}: names {name!r} as its {base.__name__}; refused, only registered tasks' classes are rebuilt "
            f"({', '.join(allowed)})"
        )
    return cls


def load_checkpoint(ckpt_path: str | Path) -> dict:
    """The checkpoint's contents, loaded with ``weights_only=True`` (no code runs); tensors are
    memory-mapped, so a look at its entries does not read the weights. Its outline is checked:
    the classes it records, hyper-parameters as mappings, a ``state_dict`` of tensors."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such checkpoint file")
    checkpoint = load_weights_only(path, f"{path}: cannot load as a checkpoint", mmap=True)
    check_outline(checkpoint, path)
    return checkpoint


def check_outline(checkpoint: object, source: object) -> None:
    """A checkpoint's outline, before anything in it is used (:func:`load_checkpoint`, and a
    checkpoint a model starts from): the classes it records, a ``state_dict`` of tensors each
    value stored once, and entries (the ``state_dict``'s ``_metadata`` among them) that read as
    large as they are."""
    classes = checkpoint.get(CLASSES_KEY) if isinstance(checkpoint, dict) else None
    if not isinstance(classes, dict) or "datamodule" not in classes or "model" not in classes:
        raise CheckpointError(f"{source}: not a checkpoint written by cnnsuite fit (no '{CLASSES_KEY}' entry)")
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{source}: its 'state_dict' is {describe(state)}, expected the model's tensors by name")
    wrong = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if wrong:
        raise CheckpointError(
            f"{source}: its 'state_dict' holds {describe(state[wrong[0]])} at {wrong[0]!r}, not a tensor"
        )
    check_values_stored(state, source)
    # load_state_dict reads the weights' _metadata too (each module's version, compared with a number)
    check_walkable([{k: v for k, v in checkpoint.items() if k != "state_dict"}, getattr(state, "_metadata", None)],
                   source)  # fmt: skip


#: how many times more values than it holds a checkpoint's entries may come to when read in full
#: (each list, tuple, mapping, key and item counted), past a floor no real one comes near, and
#: the deepest they may nest
MAX_EXPANSION, EXPANSION_FLOOR = 16, 1 << 20
MAX_DEPTH = 64


def check_walkable(value: object, source: object) -> None:
    """What reads a checkpoint's entries (the arguments' checks, jsonargparse, the JSON writer,
    Lightning's state) walks each list and mapping as often as it is referenced, and by
    recursion. A pickle stores an object once however often it is referenced: thirty lists each
    holding the next twice are 2 KB that read as 2^30 values, and a list inside a list 50,000
    deep ends Python's recursion. Each object is measured once here (the values it comes to
    and how deep it nests), so the walk costs what the file holds, and a file whose entries come
    to :data:`MAX_EXPANSION` times more values than they hold (past :data:`EXPANSION_FLOOR`),
    or nest past :data:`MAX_DEPTH` levels, is refused. A long split list holds as many values
    as it comes to, however long. A tensor that repeats stored values (a view of one stored zero
    passing for a billion) is refused too: what reads it (``tolist()`` of a datamodule's state, an
    optimiser's state cast to its parameter's dtype) holds every value it passes for. So a tensor
    comes to its values at each reference, and its storage is held once: one stored tensor named
    under a thousand keys is a thousand times its values to read."""
    measured: dict[int, tuple[int, int]] = {}  # id → (values, levels below)
    stored: set[int] = set()  # the storages of the tensors met
    held = 0  # what the file holds: each object once, and each further reference to one
    deep = CheckpointError(f"{source}: its entries nest lists or mappings more than {MAX_DEPTH} deep; expected a "
                           "checkpoint written by cnnsuite fit")  # fmt: skip

    def measure(item: object, depth: int) -> tuple[int, int]:
        nonlocal held
        if isinstance(item, torch.Tensor) and item.numel() * item.element_size() > item.untyped_storage().nbytes():
            raise CheckpointError(
                f"{source}: its entries hold a tensor of {item.numel():,} values where the file stores "
                f"{item.untyped_storage().nbytes():,} bytes of them (a view repeating stored values); expected a "
                "checkpoint written by cnnsuite fit"
            )
        if isinstance(item, torch.Tensor):  # its values, read in full; its storage's held once, however many use it
            storage = item.untyped_storage()
            held += 1 if storage.data_ptr() in stored else storage.nbytes() // item.element_size() + 1
            stored.add(storage.data_ptr())
            return item.numel() + 1, 0
        if not isinstance(item, dict | list | tuple):
            held += 1
            return 1, 0
        if depth >= MAX_DEPTH:  # a cycle ends here too
            raise deep
        held += 1  # the object, or one more reference to it: what the file spends on it here
        if id(item) not in measured:
            values, below = 1, 0
            for child in (x for pair in item.items() for x in pair) if isinstance(item, dict) else item:
                count, levels = measure(child, depth + 1)
                values, below = values + count, max(below, levels + 1)
            measured[id(item)] = values, below
        values, below = measured[id(item)]
        if depth + below >= MAX_DEPTH:  # an object measured before, met again deeper
            raise deep
        return values, below

    values, _ = measure(value, 0)
    if values > max(EXPANSION_FLOOR, MAX_EXPANSION * held):
        raise CheckpointError(
            f"{source}: its entries come to {values:,} values when read in full, where it holds {held:,} (lists, "
            "mappings or tensors referenced over and over); expected a checkpoint written by cnnsuite fit"
        )


def describe(value: object) -> str:
    """A short name for what a checkpoint holds where something else was expected."""
    return "missing" if value is None else f"a {type(value).__name__}" if not isinstance(value, dict) else "empty"


def init_args(hparams: object, source: object, what: str = "hyper_parameters") -> dict:
    """Saved hyperparameters as keyword arguments; Lightning's private ``_class_path`` and
    ``_instantiator`` entries are dropped (we never call what they name)."""
    if not isinstance(hparams, dict) or not all(isinstance(k, str) for k in hparams):
        raise CheckpointError(f"{source}: its '{what}' must be a mapping of argument names, found {describe(hparams)}")
    return {k: v for k, v in hparams.items() if not k.startswith("_")}


def signature_parser(cls: type) -> ArgumentParser:
    """A parser of ``cls.__init__``'s arguments, under ``args``, as jsonargparse reads them (a
    ``**kwargs`` followed into the parent class's)."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "args", fail_untyped=False, sub_configs=False)
    return parser


#: the items of a list jsonargparse is given to check (see :func:`typical_items`)
CHECKED_ITEMS = 64


def typical_items(value: object, key: str, source: object) -> object:
    """``value`` with each list of more than :data:`CHECKED_ITEMS` plain values (strings,
    numbers) cut to its first items and the first item of each other type among the rest: what
    jsonargparse finds of those holds for every item of their types. It checks a list in time
    quadratic in its length (it copies the list for each item), so a checkpoint of many classes,
    real or hand-made, would be refused or loaded only after a long wait. A list that long of
    lists or mappings is no argument of a model or a datamodule."""
    if isinstance(value, dict):
        return {k: typical_items(v, f"{key}.{k}", source) for k, v in value.items()}
    if not isinstance(value, list) or len(value) <= CHECKED_ITEMS:
        return [typical_items(v, key, source) for v in value] if isinstance(value, list) else value
    if any(isinstance(v, (list, dict)) for v in value):
        raise CheckpointError(f"{source}: its {key} is a list of {len(value):,} items holding lists or mappings")
    kept, types = value[:CHECKED_ITEMS], {type(v) for v in value[:CHECKED_ITEMS]}
    for item in value[CHECKED_ITEMS:]:
        if type(item) not in types:
            kept.append(item)
            types.add(type(item))
    return kept


def check_signature(cls: type, args: dict, source: object, what: str) -> None:
    """``args`` must be arguments of ``cls.__init__``, each of its declared type. jsonargparse
    checks them as it checks a config (no class is imported or instantiated: a ``class_path``
    inside a ``dict`` argument stays a dict, one in a typed argument is a type error), long
    lists by their :func:`typical_items`."""
    parser, typical = signature_parser(cls), typical_items(args, what, source)  # its refusal names the source once
    try:
        parser.parse_object({"args": typical}, defaults=False)
    except Exception as err:  # jsonargparse's ArgumentError, or a type's own error on a strange value
        lines = [line.strip() for line in str(err).strip().splitlines()]
        given = next((line for line in lines if line.startswith("Given value type")), "")
        reason = " ".join(filter(None, [*lines[:2], given])).replace('Parser key "args.', 'key "')
        reason = reason.replace("Group 'args' does not accept option", "unknown argument")
        raise CheckpointError(f"{source}: its {what} do not fit {cls.__name__}: {reason}") from None


def check_rebuildable(model: TaskModule) -> None:
    """Refuse, before it trains, a model whose checkpoints :func:`check_signature` would refuse:
    every hyper-parameter it records (the arguments the CLI links from the data among them)
    and, where it loads ``backbone_weights``, the ``backbone_weights_channels`` and
    ``backbone_weights_meta`` recorded with them must be arguments of its class. A task's own
    model that takes fewer would train, then fail at its evaluation and at every later load."""
    recorded = set(init_args(dict(model.hparams), class_path(model)))
    if "backbone_weights" in recorded:
        recorded |= {"backbone_weights_channels", "backbone_weights_meta"}
    missing = sorted(recorded - set(signature_parser(type(model)).get_defaults()["args"].keys()))
    if missing:
        raise ConfigError(
            f"{class_path(model)} does not take {', '.join(missing)}, which its checkpoints record and are rebuilt "
            "from: a task's model takes every argument the CLI links from its data, and one that takes "
            "backbone_weights takes backbone_weights_channels and backbone_weights_meta too"
        )
    check_sized_on_meta(model)


class _Sized(Exception):
    """Ends a build once its networks were made on the meta device."""


def check_sized_on_meta(model: TaskModule) -> None:
    """A checkpoint's networks are first made on the meta device (:func:`build_model`), where a
    tensor has a shape and no values: a model whose ``configure_models`` needs values there (an
    index map worked out with tensor ops on the default device) would train, then never load.
    Its networks are made on the meta device once before it trains, and the build stopped."""

    def stop(_shape: TaskModule) -> None:
        raise _Sized

    token = META_CHECK.set(stop)
    try:
        type(model)(**init_args(dict(model.hparams), class_path(model)))
    except _Sized:
        return
    except Exception as err:
        raise ConfigError(
            f"{class_path(model)}: its networks cannot be made on the meta device, as its checkpoints' are before "
            f"they take memory ({one_line(err)}); work out index maps and other values on the CPU"
        ) from err
    finally:
        META_CHECK.reset(token)


def model_arguments(checkpoint: dict, source: object) -> tuple[type[TaskModule], dict]:
    """``(model class, its arguments)`` from the checkpoint, both checked. ``backbone_weights``
    is dropped: the file the run started from is never read again (the checkpoint's own
    weights follow)."""
    classes = checkpoint[CLASSES_KEY]
    model_cls = trusted_class(classes["model"], TaskModule, source)
    hparams = checkpoint.get("hyper_parameters")
    named = hparams.get("_class_path") if isinstance(hparams, dict) else None  # Lightning's own record
    if named is not None and trusted_class(named, TaskModule, source) is not model_cls:
        raise CheckpointError(f"{source}: its hyper-parameters name {named!r}, its classes {classes['model']!r}")
    args = init_args(checkpoint.get("hyper_parameters", {}), source)
    check_signature(model_cls, args, source, "hyper_parameters")
    if args.get("backbone_weights"):
        args["backbone_weights"] = None
    return model_cls, args


def build_model(checkpoint: dict, source: object) -> TaskModule:
    """The checkpoint's model with its weights, in eval mode. Anything in the file that keeps
    the model from being built (a value the network cannot use, a tensor of the wrong shape,
    a missing one), non-finite weights or a non-finite number among its arguments (a NaN
    normalisation mean of its backbone's weights metadata would make every prediction NaN) is
    one :class:`CheckpointError`."""
    model_cls, args = model_arguments(checkpoint, source)
    bad = first_non_finite(args)
    if bad is not None:
        raise CheckpointError(f"{source}: its hyper_parameters hold a non-finite number (NaN or infinity) at {bad}")

    def fits_weights(shape: TaskModule) -> None:
        """The networks, sized on the meta device, must take the file's weights, as the real
        load will: networks wider than the weights are refused before they take memory. Widths
        of a million channels in a file of a few kilobytes would take all of it, and minutes of
        random initialisation, before the load failed. Weights of what is not built yet
        (losses, metrics) wait for that load."""
        own = shape.state_dict().keys()
        try:
            shape.load_state_dict({k: v for k, v in checkpoint["state_dict"].items() if k in own}, assign=True)
        except Exception as err:
            raise CheckpointError(f"{source}: its weights do not fit {model_cls.__name__}: {one_line(err)}") from err

    token = META_CHECK.set(fits_weights)
    try:
        model = model_cls(**args)
    except CheckpointError:
        raise
    except Exception as err:  # the arguments are the file's: whatever they break, the file is at fault
        raise CheckpointError(
            f"{source}: its hyper_parameters do not build {model_cls.__name__}: {one_line(err)}"
        ) from err
    finally:
        META_CHECK.reset(token)
    try:
        model.on_load_checkpoint(checkpoint)
        model.load_state_dict(checkpoint["state_dict"])
    except Exception as err:
        raise CheckpointError(f"{source}: its weights do not fit {model_cls.__name__}: {one_line(err)}") from err
    try:
        check_finite_tensors(model.state_dict(), source)
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    model.eval()
    return model


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__


@dataclass(frozen=True)
class Resumed:
    """What a fit resumed from ``ckpt_path`` takes from it (:func:`resume_arguments`): the model
    (``model_class``, one of ours, and its checked arguments), the run's ``splits`` (None where
    the file holds none) and the datamodule arguments that define the run (``data_args``:
    sizes, augmentation, batch size; where the data is, how it loads and what an embedded
    default is generated with are the command's)."""

    ckpt_path: str
    model_class: str
    model_args: dict
    splits: dict | None
    data_args: dict


def resume_arguments(ckpt_path: str | Path, data_class: str | None, data: dict) -> Resumed:
    """What resuming a fit from ``ckpt_path`` takes from it: the file is checked as
    :func:`build_model` checks it (classes, arguments, weights), and only then are the class
    path (one of ours) and the checked arguments given to LightningCLI.
    ``data_class``: the resumed command's datamodule class, which must be the run's: another
    task's model would meet batches it does not take (two tasks on one embedded dataset have
    the same classes). ``data``: its arguments, which must name the data of a run on the
    user's own (:func:`check_source_given`): the config's default data would otherwise be read,
    and the weights of the run's classes fail to load after the run's ``splits.json`` was replaced."""
    checkpoint = load_checkpoint(ckpt_path)
    data_cls = trusted_class(checkpoint[CLASSES_KEY]["datamodule"], TaskDataModule, ckpt_path)
    if data_class is not None and data_class != class_path(data_cls):
        run, given = (task_of(c) for c in (data_cls, registered_class(data_class)))
        raise CheckpointError(
            f"--ckpt_path {ckpt_path}: a checkpoint of {run.name if run else data_cls.__name__}, where this run's "
            f"data is {given.name if given else data_class}'s; resume it with its own task's config"
        )
    model = build_model(checkpoint, ckpt_path)
    check_optimizer_states(checkpoint, ckpt_path)
    check_resumed_states(checkpoint, ckpt_path)
    check_source_given(checkpoint, data_cls, data, ckpt_path)
    _, args = model_arguments(checkpoint, ckpt_path)
    splits = datamodule_state(checkpoint, data_cls, ckpt_path).get("splits")
    # what an embedded default is generated with stays the command's: a file does not choose what is written
    run_data = run_data_arguments(checkpoint, data_cls, ckpt_path)
    run_data = {k: v for k, v in run_data.items() if k not in data_cls.generation_hparams}
    return Resumed(str(ckpt_path), class_path(model), args, splits, run_data)


def check_optimizer_states(checkpoint: dict, source: object) -> None:
    """What torch's ``Optimizer.load_state_dict`` takes from a resumed checkpoint: per optimiser
    a ``state`` and ``param_groups``, each group its ``params`` (indices) and a number for its
    ``lr``. A damaged one failed inside torch (``KeyError: 'params'``, a ``TypeError`` at the
    first step) with a traceback."""

    def group_ok(group) -> bool:
        if not isinstance(group, dict) or not isinstance(group.get("params"), list):
            return False
        lr = group.get("lr", 0.0)
        numeric = isinstance(lr, int | float | torch.Tensor) and not isinstance(lr, bool)
        return numeric and all(type(i) is int for i in group["params"])

    states = checkpoint.get("optimizer_states", [])
    for number, state in enumerate(states if isinstance(states, list) else [None]):
        groups = state.get("param_groups") if isinstance(state, dict) else None
        if (
            not isinstance(state, dict)
            or not isinstance(state.get("state"), dict)
            or not isinstance(groups, list)
            or not all(map(group_ok, groups))
        ):
            raise CheckpointError(
                f"{source}: its optimizer state {number} is not one torch can resume (a state and param groups of "
                "params and a numeric lr); resume from another checkpoint, or start the run again"
            )


def check_resumed_states(checkpoint: dict, source: object) -> None:
    """What a resumed fit restores from the entries this suite writes besides the weights and
    the optimiser: the random generators' states (tried on generators of their own), the
    training metrics' running states and the loader's place in its epoch. A damaged one
    failed inside the fit, with a traceback, after the run's folder was made."""

    def refuse(what: str, detail: str) -> None:
        raise CheckpointError(
            f"{source}: its {what} cannot be resumed ({detail}); resume from another checkpoint, or start the run again"
        )

    if "rng_states" in checkpoint:
        try:
            check_rng_states(checkpoint["rng_states"])
        except Exception as err:  # whatever Python, NumPy or torch make of a damaged state
            refuse("rng_states", one_line(err))

    def tensors(value) -> bool:
        return isinstance(value, torch.Tensor) or (isinstance(value, list) and all(map(tensors, value)))

    def metric(saved) -> bool:
        state = saved.get("state") if isinstance(saved, dict) else None
        return isinstance(state, dict) and all(map(tensors, state.values())) and type(saved.get("updates")) is int

    saved = checkpoint.get("train_metric_states", {})
    groups = [saved.get(k, {}) for k in ("metrics", "losses")] if isinstance(saved, dict) else [None]
    if not all(isinstance(g, dict) and all(map(metric, g.values())) for g in groups):
        refuse("train_metric_states", "expected metrics and losses, each a state of tensors and a count of updates")
    loaders = checkpoint
    for key in ("loops", "fit_loop", "state_dict", "combined_loader"):  # Lightning's own entries up to it
        loaders = loaders.get(key) if isinstance(loaders, dict) else None
    place = ("seed", "epoch", "batches")  # each loader's, or nothing where it keeps no place
    if loaders is not None and (not isinstance(loaders, list) or not all(
        isinstance(d, dict) and (not d or all(type(d.get(k)) is int for k in place)) for d in loaders
    )):  # fmt: skip
        refuse("loops.fit_loop.state_dict.combined_loader", "expected each loader's seed, epoch and batches, or none")


def shown(value: object) -> str:
    """A string a checkpoint records (a data folder, a class name), for a message: as it is, or
    quoted as a Python string where it holds a newline or an escape sequence, which would print a
    line of the file's choosing or be obeyed by the terminal."""
    return str(value) if str(value).isprintable() else repr(value)


def check_source_given(checkpoint: dict, data_cls: type[TaskDataModule], data: dict, ckpt_path, also: str = "") -> bool:
    """Whether ``data`` (the datamodule arguments given) names where the data is. A run that
    read the user's own data is used again only on data the user names: a checkpoint does not
    choose what is read, and without a source the config's embedded default would be.
    ``also``: what else the command accepts, for the error."""
    given = any(data.get(k) is not None for k in data_cls.source_hparams if k != "split_file")
    recorded = recorded_source(checkpoint, data_cls)
    if recorded and not given:
        options = " ".join(f"--data.{k} {shown(v)}" for k, v in recorded.items())
        raise CheckpointError(
            f"{ckpt_path}: its run read your own data; a checkpoint does not choose what is read: give {options} "
            f"(or where that data is now{also})"
        )
    return given


def data_arguments(checkpoint: dict, data_cls: type[TaskDataModule], data: dict, source: object) -> dict:
    """The datamodule's arguments: what defines the run from the checkpoint, where data lives
    and how it is loaded (``local_hparams``) from the user's ``data`` only, else the defaults."""
    local = set(data_cls.local_hparams())
    unknown = sorted(set(data) - set(data_cls.init_parameters()))
    if unknown:  # a typo, not a setting the checkpoint holds
        raise ConfigError(describe_unknown(f"data.{unknown[0]}", sorted(f"data.{k}" for k in local)))
    refused = sorted(set(data) - local)
    if refused:
        raise ConfigError(
            f"--data.{refused[0]}: comes from the checkpoint, which defines the run; "
            f"only {', '.join(sorted(local))} may be given"
        )
    return {**run_data_arguments(checkpoint, data_cls, source), **{k: v for k, v in data.items() if v is not None}}


def run_data_arguments(checkpoint: dict, data_cls: type[TaskDataModule], source: object) -> dict:
    """The datamodule arguments the checkpoint records that define the run (all but its
    ``local_hparams``, which are never taken from a file), checked against the class."""
    recorded = init_args(checkpoint.get("datamodule_hyper_parameters", {}), source, "datamodule_hyper_parameters")
    args = {k: v for k, v in recorded.items() if k not in set(data_cls.local_hparams())}
    check_signature(data_cls, args, source, "datamodule_hyper_parameters")
    return args


def follow_model(model: TaskModule, data_cls: type[TaskDataModule], args: dict) -> dict:
    """``args`` with the model's label mode and channels where the datamodule takes them: a
    multi-label model reads other data multi-label too, a single-label one refuses several
    labels a sample (``multilabel``); a model of RGB images reads gray ones as RGB, and the
    other way round, as ``predict`` reads them (``channels``)."""
    params = data_cls.init_parameters()
    if "multilabel" in params:
        args = {**args, "multilabel": bool(model.hparams.get("multilabel", False))}
    # a prepared folder holds its images decoded: its channels are its record's, checked against the model's
    if "channels" in params and model.hparams.get("in_channels") is not None and not is_prepared(args.get("data_dir")):
        args = {**args, "channels": model.hparams["in_channels"]}
    return args


def add_data_options(parser) -> None:
    """``--data.data_dir``, ``--data.data_root`` and ``--data.num_workers`` on an argparse
    ``parser`` of a command that rebuilds a checkpoint's datamodule; a task's own local
    settings (``--data.cache_dir`` ...) are taken too (:func:`data_options`)."""
    parser.add_argument(
        "--data.data_dir", dest="data_dir", default=None,
        help="the data: the run's own folder scores its test split; another folder of the run's classes, or of "
        "some of them, is tested whole (needed for a run on your own folder: a checkpoint does not choose what "
        "is read)",
    )  # fmt: skip
    parser.add_argument(
        "--data.data_root", dest="data_root", default=None,
        help="where an embedded default dataset is (generated again when missing; default: data)",
    )  # fmt: skip
    parser.add_argument(
        "--data.num_workers", dest="num_workers", type=workers_option, default=None,
        help="loader processes: auto (the default: the usable cores less one, at most 8; none on 2 cores) or a count",
    )  # fmt: skip


def workers_option(text: str) -> int | str:
    """``--data.num_workers``: ``auto`` or a whole number (the datamodule checks its range)."""
    return text if text == "auto" else int(text)


def data_options(args, extra: list[str], parser) -> dict:
    """The ``--data.*`` settings of :func:`add_data_options`, plus any ``--data.KEY VALUE`` left
    in ``extra`` (values read as YAML: ``4`` is a number); anything else in ``extra`` is an error."""
    import yaml

    data = {k: getattr(args, k) for k in ("data_dir", "data_root", "num_workers")}
    rest = list(extra)
    while rest:
        option = rest.pop(0)
        key, _, value = option.partition("=")
        if not key.startswith("--data.") or len(key) == len("--data."):
            parser.error(f"unrecognized arguments: {' '.join([option, *rest])}")
        if not _:
            if not rest:
                parser.error(f"{key}: expected a value")
            value = rest.pop(0)
        try:
            data[key.removeprefix("--data.")] = parse_yaml(value)
        except yaml.YAMLError as err:  # a value cut short: "[" or "{a"
            parser.error(f"{key}: {value!r} is not a value ({getattr(err, 'problem', None) or 'not YAML'})")
    return {k: v for k, v in data.items() if v is not None}


def recorded_source(checkpoint: dict, data_cls: type[TaskDataModule]) -> dict:
    """The data the run read, as the checkpoint records it (named to the user, never opened)."""
    recorded = checkpoint.get("datamodule_hyper_parameters")
    recorded = recorded if isinstance(recorded, dict) else {}
    return {k: recorded.get(k) for k in data_cls.source_hparams if k != "split_file" and recorded.get(k) is not None}


def rebuild(
    ckpt_path: str | Path, run_dir: str | Path | None = None, data: dict | None = None
) -> tuple[TaskModule, TaskDataModule]:
    """``(model with the checkpoint's weights, datamodule holding the run's split)``.

    ``data`` is the user's say on where the data is and how it is loaded (``data_dir``,
    ``data_root``, ``num_workers`` ...: the datamodule's ``local_hparams``); the checkpoint has
    none. Without a ``data_dir``, the data is the embedded default (generated again under the
    user's ``data_root`` when missing); a checkpoint of a run on the user's own folder is then
    refused, naming the folder it records and the option to give. A folder that holds every
    sample of the run's test split is the run's data (moved, grown since, or with training files
    gone): its test split is scored. Any other folder of the run's classes, or of some of them in
    any order (labelled by name: :func:`follow_model_classes`), is other data, tested whole
    (``datamodule.tests_other_data``).

    The split comes from the checkpoint (the datamodule's state), else — for checkpoints
    written before it travelled inside them — from ``splits.json`` in ``run_dir``; with
    neither, evaluation would score on a split re-derived from today's files, so it fails.
    """
    data = {k: v for k, v in (data or {}).items() if v is not None}
    checkpoint = load_checkpoint(ckpt_path)
    model = build_model(checkpoint, ckpt_path)
    data_cls = trusted_class(checkpoint[CLASSES_KEY]["datamodule"], TaskDataModule, ckpt_path)
    data_args = follow_model(model, data_cls, data_arguments(checkpoint, data_cls, data, ckpt_path))
    also = "; another folder of the run's classes, or of some of them, is tested whole"
    given = check_source_given(checkpoint, data_cls, data, ckpt_path, also)
    try:
        datamodule = data_cls(**data_args)
    except OneLabelExpected as err:  # the model asks for one label a sample, not a setting of the user's
        raise ConfigError(f"{err.sample}: {err.holds}, but {ckpt_path} is of a single-label model: it gives one class "
                          "a sample; evaluate it on data of one label a sample") from None  # fmt: skip
    if given:  # a user's folder may lack some of the model's classes, or order them otherwise
        follow_model_classes(datamodule, model.class_names, ckpt_path)
        run_read = recorded_source(checkpoint, data_cls).get("data_dir")
        datamodule.read_elsewhere = run_read != datamodule.hparams.get("data_dir")
    check_matches(model.class_names, model.hparams.get("in_channels"), datamodule, ckpt_path)
    check_model_takes_its_data(model, datamodule, ckpt_path)
    state = datamodule_state(checkpoint, data_cls, ckpt_path)
    split_file = Path(run_dir) / "splits.json" if run_dir is not None else None
    if state.get("splits") is not None:
        splits = state["splits"]
    elif split_file is not None and split_file.is_file():
        splits = load_splits(split_file)
    elif given:
        splits = None
    else:
        raise CheckpointError(
            f"{ckpt_path}: holds no train/val/test split and {split_file or 'its run folder'} does not exist; "
            "evaluating on a split re-derived from today's files could score training samples"
        )
    if splits is not None:
        check_splits(splits, f"{ckpt_path}: its split")
    unknown = datamodule.unknown_ids(splits) if given and splits is not None else {}
    if given and (splits is None or "test" in unknown):
        datamodule.tests_other_data = True
        from_file(ckpt_path, "datamodule state", datamodule.restore_preprocessing, state)
        datamodule.splits = {"train": [], "val": [], "test": [i for i, _ in datamodule.samples()]}
        warn_of_seen_names(datamodule, splits)
        return model, datamodule
    if unknown:  # the run's test split all there, training files gone: the run's data
        splits = {stage: [i for i in ids if i not in set(unknown.get(stage, ()))] for stage, ids in splits.items()}
    if not given:
        check_generated_here(datamodule, ckpt_path)
    datamodule.prepare_data()  # an embedded default is generated again on a new machine
    from_file(ckpt_path, "datamodule state", datamodule.load_state_dict, {**state, "splits": splits})
    return model, datamodule


def check_generated_here(datamodule: TaskDataModule, source: object) -> None:
    """An embedded default missing under ``data_root`` is generated again as the checkpoint's run
    made it, which the file may ask only as the task's own default: its settings (``default_size:
    10000000``) would have this machine write whatever it asks. Other settings are used where
    that data was generated here already."""
    changed = datamodule.generation_changes
    if changed and not datamodule.root.exists():
        settings = " ".join(f"--data.{k} {v}" for k, v in changed.items())
        raise CheckpointError(
            f"{source}: its run trained on the embedded default generated with {settings}, which is not under "
            f"{datamodule.hparams.data_root}; a checkpoint does not choose what is generated: give --data.data_root "
            f"where it is, or generate it there once (cnnsuite fit with {settings})"
        )


def datamodule_state(checkpoint: dict, data_cls: type[TaskDataModule], source: object) -> dict:
    """The datamodule's state a checkpoint holds (the run's split, what preprocessing learnt from
    its training data), ``{}`` where it holds none. A non-finite number in it (a band's mean of
    NaN) passes every weight check and would reach every prediction and an export's JSON: the
    file is refused, naming where the number is."""
    state = checkpoint.get(data_cls.__qualname__, {})
    if not isinstance(state, dict):
        return {}
    numbers = {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in state.items() if k != "splits"}
    bad = first_non_finite(numbers)
    if bad:
        raise CheckpointError(f"{source}: its datamodule state holds a non-finite number (NaN or infinity) at {bad}")
    return state


#: class names a line lists, at most
SHOWN_CLASSES = 12


def follow_model_classes(datamodule: TaskDataModule, names: list[str], source: object) -> None:
    """The data labelled by the model's classes where its own are some of them
    (:meth:`~cnnsuite.data.TaskDataModule.follow_classes`), said with the classes it lacks: the
    report scores those n/a. A class of the data the model does not know is refused by name."""
    found = list(datamodule.class_names)
    unknown = [c for c in found if c not in names]
    if unknown and datamodule.prepared is None:  # a prepared folder's classes are check_matches' to say
        listed = ", ".join(map(shown, names[:SHOWN_CLASSES])) + (", …" if len(names) > SHOWN_CLASSES else "")
        raise ConfigError(
            f"{datamodule.root}: its class{'es' if len(unknown) > 1 else ''} {', '.join(unknown[:SHOWN_CLASSES])}"
            f"{', …' if len(unknown) > SHOWN_CLASSES else ''} {'are' if len(unknown) > 1 else 'is'} not among the "
            f"{len(names)} classes {source} was trained on ({listed}); evaluate it on a folder of those classes, "
            "or of some of them"
        )
    datamodule.follow_classes(names)
    if datamodule.class_names != found:
        lacking = [c for c in names if c not in found]
        rank_zero_info(
            f"{datamodule.root}: its classes {found} labelled as the classes {source} was trained on, by name"
            + (f"; it has no {', '.join(map(shown, lacking))}: scored n/a" if lacking else "")
        )


def warn_of_seen_names(datamodule: TaskDataModule, splits: dict | None) -> None:
    """Other data, tested whole, whose files bear the names of samples the run trained or
    validated on: said, for a folder of the run's own with test files gone would score them."""
    seen = {i for stage in ("train", "val") for i in (splits or {}).get(stage, [])}
    named = sum(i in seen for i in datamodule.splits["test"])
    if named:
        rank_zero_warn(
            f"{datamodule.root}: tested whole as other data (the run's test split is not all there), and {named} of "
            f"its {len(datamodule.splits['test'])} samples have the names of samples the run trained or validated on: "
            "if it is the run's own folder, those are scored too"
        )


def from_file(source: object, what: str, call, *args):
    """``call(*args)`` on what a checkpoint holds: an error it makes, past the checks that name
    a user's mistake (``ValueError``), is the file's, in one line."""
    try:
        return call(*args)
    except ValueError:
        raise
    except StateError as err:
        raise CheckpointError(f"{source}: its {what} cannot be used: {err}") from None
    except Exception as err:
        raise CheckpointError(f"{source}: its {what} cannot be used: {one_line(err)}") from err


def rebuild_for_inference(ckpt_path: str | Path) -> tuple[TaskModule, TaskDataModule]:
    """``(model, datamodule)`` ready to read and predict raw files, from the checkpoint alone.

    The datamodule gets the run's preprocessing settings but none of its data: its source
    and other local arguments (:meth:`~cnnsuite.data.TaskDataModule.local_hparams`) take their
    defaults, so nothing is listed, generated or read, and a checkpoint predicts on a machine
    that never saw the training data. Class names and channels are the model's; what
    preprocessing learnt from the training data comes from the checkpoint (``restore_preprocessing``).
    """
    checkpoint = load_checkpoint(ckpt_path)
    model = build_model(checkpoint, ckpt_path)
    data_cls = trusted_class(checkpoint[CLASSES_KEY]["datamodule"], TaskDataModule, ckpt_path)
    data_args = follow_model(model, data_cls, data_arguments(checkpoint, data_cls, {}, ckpt_path))
    datamodule = from_file(ckpt_path, "datamodule_hyper_parameters", lambda: data_cls(**data_args))
    datamodule.class_names = list(model.class_names)
    datamodule.in_channels = model.hparams.get("in_channels", datamodule.in_channels)
    state = datamodule_state(checkpoint, data_cls, ckpt_path)
    from_file(ckpt_path, "datamodule state", datamodule.restore_preprocessing, state)
    check_model_takes_its_data(model, datamodule, ckpt_path)
    return model, datamodule


def check_model_takes_its_data(model: TaskModule, datamodule: TaskDataModule, ckpt_path: str | Path) -> None:
    """The checkpoint's network must take the samples its own data settings make, as ``fit``
    checks a config's (:func:`~cnnsuite.training.fits.check_model_fits_data`): an edited
    ``image_size`` below the backbone's total stride is one line naming the file, not a
    convolution's traceback at the first prediction."""
    try:
        check_model_fits_data(model, datamodule)
    except ConfigError as err:
        raise CheckpointError(f"{ckpt_path}: {err}") from None


def check_matches(expected: list[str], channels: int | None, datamodule: TaskDataModule, source: object) -> None:
    """The data must mean what the model learnt: the same class names (``expected``), in the
    same order (an edited label list with as many classes would otherwise remap every label),
    and the same number of input channels (``channels``; None: not recorded)."""
    found = list(datamodule.class_names)
    if found != expected and sorted(found) == sorted(expected):
        raise ConfigError(
            f"{datamodule.root}: classes {found} are the {len(expected)} classes {source} was trained on, in another "
            f"order ({expected}): its outputs would be read as other classes"
        )
    if found != expected:
        differ = [f"{what}: {', '.join(map(shown, names))}" for what, names in (
            ("not in the data", [c for c in expected if c not in found]),
            ("not trained on", [c for c in found if c not in expected])) if names]  # fmt: skip
        raise ConfigError(
            f"{datamodule.root}: classes {found} do not match the {len(expected)} classes {expected} "
            f"that {source} was trained on ({'; '.join(differ)})"
        )
    if channels is not None and channels != datamodule.in_channels:
        raise ConfigError(
            f"{datamodule.root}: images have {datamodule.in_channels} channels, {source} expects {channels}"
        )
