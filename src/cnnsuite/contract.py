"""The task contract: a task is the one unit of extension, and the commands loop over tasks.

A task package declares one :class:`Task` — its model and datamodule classes, its default
config, what the bench measures it against — and registers it under the entry-point group
``cnnsuite.tasks`` of its distribution::

    [project.entry-points."cnnsuite.tasks"]
    mytask = "my_package.mytask:TASK"

The six built-in tasks are registered so in cnnsuite's own ``pyproject.toml``; a user's task
package installed with pip is found the same way and is a task like ours. The rest of what a
command needs from a task is a method of its classes. Those of :data:`OWN_METHODS` have no
default — the networks, losses and metrics; the default data, samples and datasets; how a raw file
is read (``read_input``), a prediction described (``describe_outputs``) and an export's
preprocessing told (``describe_preprocessing``) — and a task that lacks one is refused when it
loads (:func:`load_task`). The others have a default in the base classes: how to find the
backbone (:meth:`~cnnsuite.training.task.TaskModule.feature_backbone`) and where its weights sit
in a checkpoint (``backbone_prefix``), what Grad-CAM scores
(:meth:`~cnnsuite.training.task.TaskModule.inspection_network`), what an export's channels are
(``describe_channels``), the direction of each logged metric (``metric_modes``).

Trust follows registration: a checkpoint may rebuild only the classes of registered tasks
(:func:`trusted_classes`, looked up by :func:`trusted_class`); nothing else it names is ever
imported.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path

from .classpath import class_path
from .data import TaskDataModule
from .errors import ConfigError
from .training.task import TaskModule

#: the entry-point group tasks are registered under
GROUP = "cnnsuite.tasks"
#: what a datamodule knows when it is constructed and its model is given (the CLI links them);
#: ``multilabel``: whether its samples may carry several labels (decided from its label file);
#: ``input_normalisation``: its fixed per-channel ``{"mean", "std"}`` of [0, 1] values, or None
#: where the statistics are the data's own (what pretrained weights' normalisation is mapped from);
#: ``channel_names``: what its input channels are (None: unnamed), for weight files mapped by name
LINKED = ("num_classes", "in_channels", "class_names", "multilabel", "input_normalisation", "channel_names")
#: the methods the base classes leave to every task (theirs raise NotImplementedError): checked when
#: a task loads, so that a task package missing one is named before a command half runs
OWN_METHODS = {
    TaskModule: ("configure_models", "configure_losses", "configure_metrics", "describe_outputs", "render_prediction"),
    TaskDataModule: ("write_default", "list_samples", "make_dataset", "read_input", "describe_preprocessing"),
}


@dataclass(frozen=True)
class Task:
    """What a task declares (see the module's docstring)."""

    #: the task's name: its entry point's name, and its run folders' (``runs/<name>``)
    name: str
    module: type[TaskModule]
    datamodule: type[TaskDataModule]
    #: the default config (``make train TASK=<name>``); by default ``config.yaml`` beside the
    #: model class's module
    config: Path | None = None
    #: reference networks the bench measures the default against: name → init arguments that
    #: make it from the default config (``{"model": {...}, "data": {...}}``)
    references: Mapping[str, Mapping] = field(default_factory=dict)
    #: whether the bench measures Lightning's overhead over a plain loop on this task (its
    #: batches must be ``(x, labels)`` and its model's output logits)
    overhead: bool = False
    #: epochs ``cnnsuite fit`` and the task's plain script each train in the bench's end-to-end
    #: comparison (None: its config's ``trainer.max_epochs``, what ``make train`` trains; 0: not
    #: compared end to end)
    endtoend_epochs: int | None = None
    #: the references (names in ``references``) the bench trains within an equal training-time
    #: budget beside the default network; None: the first of ``references``
    budget_references: tuple[str, ...] | None = None
    #: what ``cnnsuite bench --quick`` keeps of the end-to-end section for this task: the epochs
    #: of its end-to-end comparison (0: none) ...
    quick_endtoend_epochs: int = 0
    #: ... and whether its budget references are trained within the quick run's shorter budget
    quick_budget: bool = False
    #: whether the bench's scale section trains this task from prepared shards against its raw
    #: files with a cache of a quarter of the data (the throughput of data larger than the cache)
    scale_throughput: bool = False
    #: the init arguments that set the resolution of the task's input, as dotted keys
    #: (``data.image_size``, ``model.min_size``), each an int or a list of ints: the bench's
    #: scale section multiplies them by 2 and 4 (none: the task has no resolution to scale)
    resolution: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.config is None:
            folder = Path(sys.modules[self.module.__module__].__file__).parent
            object.__setattr__(self, "config", folder / "config.yaml")

    @property
    def headline(self) -> str:
        """The test metric that sums the task up: its monitored key, on the test split."""
        return on_test_split(self.module.monitor)


def on_test_split(key: str) -> str:
    """A logged key's metric on the test split: ``val/acc`` → ``test/acc``."""
    return "test/" + key.partition("/")[2]


#: the distribution whose own tasks are the built-in ones
OWN_DISTRIBUTION = "cnnsuite"
_only_built_in = False


def task_entry_points() -> list:
    """The entry points registered under :data:`GROUP`, sorted by name, none loaded yet (only
    cnnsuite's own inside :func:`only_built_in_tasks`)."""
    points = entry_points(group=GROUP)
    if _only_built_in:
        points = [p for p in points if p.dist is not None and p.dist.name == OWN_DISTRIBUTION]
    return sorted(points, key=lambda p: p.name)


@contextmanager
def only_built_in_tasks() -> Iterator[None]:
    """The registry as cnnsuite's own package registers it, for what cnnsuite writes about
    itself (``make docs``): a user's task package installed beside it is not described there."""
    global _only_built_in
    registered_tasks.cache_clear()
    _only_built_in = True
    try:
        yield
    finally:
        _only_built_in = False
        registered_tasks.cache_clear()


def load_task(point) -> Task:
    """The :class:`Task` an entry point registers. A registration that does not load, or loads
    something other than a :class:`Task` of its own name, is an error naming it."""
    try:
        task = point.load()
    except Exception as err:  # a user's package may be broken in any way
        reason = f"{type(err).__name__}: {err}"
        raise ConfigError(f"task {point.name!r} ({point.value}) does not load: {reason}") from err
    if not isinstance(task, Task) or task.name != point.name:
        raise ConfigError(f"task {point.name!r} ({point.value}): expected a cnnsuite.contract.Task of that name")
    if not (issubclass(task.module, TaskModule) and issubclass(task.datamodule, TaskDataModule)):
        raise ConfigError(f"task {point.name!r}: its module must be a TaskModule, its datamodule a TaskDataModule")
    missing = [
        f"{cls.__name__}.{name}"
        for cls, base in ((task.module, TaskModule), (task.datamodule, TaskDataModule))
        for name in OWN_METHODS[base]
        if getattr(cls, name) is getattr(base, name)
    ]
    if missing:
        listed = ", ".join(missing[:-1]) + " and " + missing[-1] if len(missing) > 1 else missing[0]
        raise ConfigError(
            f"task {point.name!r}: {listed} {'are' if len(missing) > 1 else 'is'} not implemented; a task implements "
            "every method its base classes leave to it (docs/guide.md, Your own task)"
        )
    if not task.datamodule.default_name:  # else its default data would be data_root itself, every task's folder
        raise ConfigError(
            f"task {point.name!r}: {task.datamodule.__name__}.default_name is empty; expected the name of the "
            "folder under data_root that its embedded default is written to"
        )
    extensions = task.datamodule.input_extensions
    # a bare string's letters would each end a name; an ending without its dot ("png") a word's end
    if (
        not isinstance(extensions, (tuple, list))
        or not extensions
        or not all(isinstance(e, str) and e.startswith(".") and len(e) > 1 for e in extensions)
    ):
        raise ConfigError(
            f"task {point.name!r}: {task.datamodule.__name__}.input_extensions is {extensions!r}; expected the file "
            "endings predict takes from a folder, a tuple of one or more such as ('.png', '.jpg')"
        )
    for key in task.resolution:
        section, _, name = key.partition(".")
        if section not in ("model", "data") or not name:
            expected = "expected model.<argument> or data.<argument>"
            raise ConfigError(f"task {point.name!r}: resolution key {key!r}, {expected}")
    return task


def check_config_classes(task: Task, config: object) -> None:
    """A task's config (``config``, its file's YAML) must name the task's own model and
    datamodule classes (:func:`names_class`): a copied config whose class paths were not renamed
    would train or bench the other task under this one's name."""
    for section, cls in (("model", task.module), ("data", task.datamodule)):
        named = config.get(section) if isinstance(config, dict) else None
        named = named.get("class_path") if isinstance(named, dict) else None
        if isinstance(named, str) and not names_class(named, cls):
            raise ConfigError(
                f"task {task.name}: {task.config}: {section}.class_path {named}; expected {class_path(cls)}, "
                f"the class its Task declares"
            )


def names_class(path: str, cls: type) -> bool:
    """Whether a config's ``class_path`` names ``cls``: by any dotted path that imports it (its
    module's, or the package's that exports it, which jsonargparse writes for a short name), or
    by its short name, as LightningCLI resolves it."""
    if not isinstance(path, str) or path == cls.__name__:
        return path == cls.__name__
    module, _, name = path.rpartition(".")
    try:
        return bool(module) and getattr(importlib.import_module(module), name, None) is cls
    except Exception:  # a path that does not import is LightningCLI's to name
        return False


@cache
def registered_tasks() -> dict[str, Task]:
    """name → :class:`Task`, for every task registered under :data:`GROUP` that loads, sorted by
    name. One that does not load (a user's package, broken) is left out with a warning naming
    it, so that it does not take every other task down with it; asked for by name
    (:func:`task_named`), it is its error."""
    tasks = {}
    for point in task_entry_points():
        try:
            tasks[point.name] = load_task(point)
        except ConfigError as err:
            warnings.warn(f"{err}; left out of the registered tasks", stacklevel=2)
    return tasks


def task_named(name: str, option: str = "--task") -> Task:
    """The registered task ``name``; a task registered under that name that does not load is
    its own error, and any other name one naming the tasks there are (``option`` says where the
    name was given)."""
    tasks = registered_tasks()
    if name in tasks:
        return tasks[name]
    for point in task_entry_points():
        if point.name == name:
            load_task(point)  # raises what keeps it from loading
    raise ConfigError(f"{option} {name!r}: expected one of {', '.join(sorted(tasks))}")


def trusted_classes() -> dict[str, type]:
    """Class path → class, for the model and datamodule class of every registered task: the
    only classes a checkpoint may rebuild."""
    return {class_path(cls): cls for task in registered_tasks().values() for cls in (task.module, task.datamodule)}


def trusted_class(name: str) -> type | None:
    """The class of :func:`trusted_classes` whose path is ``name``, or None. The tasks whose
    package holds ``name`` are looked at first, so that rebuilding a checkpoint imports its own
    task and not every task's libraries (MONAI, PyAV, rasterio: a second at each evaluation);
    the other registered tasks are loaded only when none of those has it."""
    for point in task_entry_points():
        if name.startswith(point.module + "."):
            task = load_task(point)
            found = {class_path(cls): cls for cls in (task.module, task.datamodule)}
            if name in found:
                return found[name]
    return trusted_classes().get(name)


def task_of(cls: type) -> Task | None:
    """The registered task whose model or datamodule class ``cls`` is, if any."""
    return next((t for t in registered_tasks().values() if cls in (t.module, t.datamodule)), None)
