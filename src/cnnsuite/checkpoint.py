"""A checkpoint is untrusted input: load it without running code, rebuild only our classes.

``torch.load(weights_only=True)`` stops pickled code, but a checkpoint also *names* the
classes that rebuild its run (``cnnsuite_classes``) and gives them arguments. Were those
names imported and called as they stand, a hand-made file could call any function with
arguments of its choice (importing ``cnnsuite.__main__`` alone runs the CLI). So a name
is only ever looked up among cnnsuite's own :class:`~cnnsuite.task.TaskModule` and
:class:`~cnnsuite.data.TaskDataModule` subclasses, found by walking the task packages we
ship; nothing the file names is imported, and the check comes before any call.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from pathlib import Path

from .data import TaskDataModule
from .data.splits import load_splits
from .task import TaskModule, class_path
from .untrusted import load_weights_only

#: the key under which :class:`~cnnsuite.task.TaskModule` records its run's classes
CLASSES_KEY = "cnnsuite_classes"


@cache
def task_classes() -> dict[str, type]:
    """Class path → class, for every cnnsuite subclass of ``TaskModule`` and ``TaskDataModule``."""
    import cnnsuite.tasks

    for info in pkgutil.walk_packages(cnnsuite.tasks.__path__, "cnnsuite.tasks."):
        importlib.import_module(info.name)
    found, stack = {}, [TaskModule, TaskDataModule]
    while stack:
        for sub in stack.pop().__subclasses__():
            stack.append(sub)
            if sub.__module__.split(".")[0] == "cnnsuite":
                found[class_path(sub)] = sub
    return found


def trusted_class(name: object, base: type, source: object) -> type:
    """The cnnsuite subclass of ``base`` called ``name``; anything else is refused, naming
    ``source`` (the checkpoint) and what was expected."""
    cls = task_classes().get(name) if isinstance(name, str) else None
    if cls is None or not issubclass(cls, base):
        allowed = sorted(p for p, c in task_classes().items() if issubclass(c, base))
        raise ValueError(
            f"{source}: names {name!r} as its {base.__name__}; refused, only cnnsuite's own are rebuilt "
            f"({', '.join(allowed)})"
        )
    return cls


def load_checkpoint(ckpt_path: str | Path) -> dict:
    """The checkpoint's contents, loaded with ``weights_only=True`` (no code runs); tensors are
    memory-mapped, so a look at its entries does not read the weights."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    checkpoint = load_weights_only(path, f"{path}: cannot load as a checkpoint", mmap=True)
    classes = checkpoint.get(CLASSES_KEY) if isinstance(checkpoint, dict) else None
    if not isinstance(classes, dict) or "datamodule" not in classes or "model" not in classes:
        raise ValueError(f"{path}: not a checkpoint written by cnnsuite fit (no '{CLASSES_KEY}' entry)")
    return checkpoint


def init_args(hparams: object, source: object) -> dict:
    """Saved hyperparameters as keyword arguments; Lightning's private ``_class_path`` and
    ``_instantiator`` entries are dropped (we never call what they name)."""
    if not isinstance(hparams, dict) or not all(isinstance(k, str) for k in hparams):
        raise ValueError(f"{source}: hyperparameters must be a mapping of argument names")
    return {k: v for k, v in hparams.items() if not k.startswith("_")}


def _model_and_data_class(checkpoint: dict, source: object) -> tuple[TaskModule, type[TaskDataModule]]:
    """The model with the checkpoint's weights (eval mode), and the datamodule class."""
    classes = checkpoint[CLASSES_KEY]
    model_cls = trusted_class(classes["model"], TaskModule, source)
    data_cls = trusted_class(classes["datamodule"], TaskDataModule, source)
    args = init_args(checkpoint.get("hyper_parameters", {}), source)
    if args.get("backbone_weights"):  # the checkpoint's own weights follow: the file it started from is not read
        args["backbone_weights"] = None
    model = model_cls(**args)
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    return model, data_cls


def rebuild(
    ckpt_path: str | Path, run_dir: str | Path | None = None, data_dir: str | Path | None = None
) -> tuple[TaskModule, TaskDataModule]:
    """``(model with the checkpoint's weights, datamodule holding the run's split)``.

    The split comes from the checkpoint (the datamodule's state), else — for checkpoints
    written before it travelled inside them — from ``splits.json`` in ``run_dir``; with
    neither, evaluation would score on a split re-derived from today's files, so it fails.
    ``data_dir`` points the run's datamodule at other data of the same classes instead:
    every sample of it is then the test split.
    """
    checkpoint = load_checkpoint(ckpt_path)
    model, data_cls = _model_and_data_class(checkpoint, ckpt_path)
    data_args = init_args(checkpoint.get("datamodule_hyper_parameters", {}), ckpt_path)
    data_args.pop("split_file", None)  # the split comes from the checkpoint itself
    if data_dir is not None:
        data_args = {**data_args, **dict.fromkeys(data_cls.source_hparams), "data_dir": str(data_dir)}
    datamodule = data_cls(**data_args)
    check_matches(model, datamodule, ckpt_path)
    state = checkpoint.get(data_cls.__qualname__, {})
    if data_dir is not None:
        datamodule.restore_preprocessing(state)
        datamodule.splits = {"train": [], "val": [], "test": [i for i, _ in datamodule.list_samples()]}
        return model, datamodule
    datamodule.prepare_data()  # an embedded default is generated again on a new machine
    split_file = Path(run_dir) / "splits.json" if run_dir is not None else None
    if state.get("splits") is not None:
        datamodule.load_state_dict(state)
    elif split_file is not None and split_file.is_file():
        datamodule.load_state_dict({"splits": load_splits(split_file)})
    else:
        raise ValueError(
            f"{ckpt_path}: holds no train/val/test split and {split_file or 'its run folder'} does not exist; "
            "evaluating on a split re-derived from today's files could score training samples"
        )
    return model, datamodule


def rebuild_for_inference(ckpt_path: str | Path) -> tuple[TaskModule, TaskDataModule]:
    """``(model, datamodule)`` ready to read and predict raw files, from the checkpoint alone.

    The datamodule gets the run's preprocessing settings but none of its data: its source
    arguments (:attr:`~cnnsuite.data.TaskDataModule.source_hparams`) are dropped, so nothing
    is listed, generated or read, and a checkpoint predicts on a machine that never saw the
    training data. Class names and channels are the model's; what preprocessing learnt
    from the training data comes from the checkpoint (``restore_preprocessing``).
    """
    checkpoint = load_checkpoint(ckpt_path)
    model, data_cls = _model_and_data_class(checkpoint, ckpt_path)
    data_args = init_args(checkpoint.get("datamodule_hyper_parameters", {}), ckpt_path)
    datamodule = data_cls(**{**data_args, **dict.fromkeys(data_cls.source_hparams)})
    datamodule.class_names = list(model.class_names)
    datamodule.in_channels = model.hparams.get("in_channels", datamodule.in_channels)
    datamodule.restore_preprocessing(checkpoint.get(data_cls.__qualname__, {}))
    return model, datamodule


def check_matches(model: TaskModule, datamodule: TaskDataModule, source: object) -> None:
    """The data must mean what the model learnt: the same class names, in the same order
    (an edited label list with as many classes would otherwise remap every label), and
    the same number of input channels."""
    expected, found = model.class_names, list(datamodule.class_names)
    if found != expected:
        raise ValueError(
            f"{datamodule.root}: classes {found} do not match the {len(expected)} classes {expected} "
            f"that {source} was trained on"
        )
    channels = model.hparams.get("in_channels")
    if channels is not None and channels != datamodule.in_channels:
        raise ValueError(
            f"{datamodule.root}: images have {datamodule.in_channels} channels, {source} expects {channels}"
        )
