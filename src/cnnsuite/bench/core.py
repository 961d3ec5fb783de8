"""What every section of ``cnnsuite bench`` shares: the machine, its matmul rate, timing, FLOPs,
building a task's default model and data, and the report.

    cnnsuite bench [--out runs/bench] [--quick] [--tasks TASK ...] [--sections models ...] [--plain DIR]

The bench knows no task by name: it measures the registered tasks (:mod:`cnnsuite.contract`),
each built from its own config as ``cnnsuite fit`` builds it, against the references it
declares, with what its :class:`~cnnsuite.contract.Task` says each section runs for it.

A section is a module of this package (``models``, ``recipe``, ``pipeline``, ``endtoend``, ``scale``) with
``run(tasks, context) -> {task: {key: value}}`` (settings by ``context.pick``) and ``markdown(results) -> str``. Its
figures land in ``bench.json`` under the section's name, flattened as ``<task>.<key>``, and its
table in ``bench.md`` after the machine's. Every comparison is a ratio (ours / reference) under
a key with ``ratio`` in its name: seconds depend on the machine and on whatever else runs on
it, a ratio measured in one process mostly does not. ``bench.json`` is rewritten after each
section, so a long run that fails keeps what it measured.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import resource
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from ..classpath import class_path
from ..contract import LINKED, Task, check_config_classes, registered_tasks, task_named
from ..data import TaskDataModule
from ..errors import ConfigError
from ..jsonout import strict_json
from ..timing import measure, synchronizer
from ..training.callbacks import PreciseBatchNorm
from ..training.runs import output_folder
from ..training.schedules import CosineAnnealingLR
from ..training.task import TaskModule

SECTIONS = ("models", "recipe", "pipeline", "endtoend", "scale")
#: CPU flags that decide how fast convolutions and matmuls can run
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16",
              "amx_tile")  # fmt: skip
#: side of the square fp32 matrices whose product measures the machine's dense rate
MATMUL_SIZE = 2048


def task_names() -> list[str]:
    """Every registered task (:func:`cnnsuite.contract.registered_tasks`), by name."""
    return sorted(registered_tasks())


def task_spec(task: str) -> Task:
    """The registered :class:`~cnnsuite.contract.Task` called ``task``: what the bench knows of
    it (config, classes, references, what each section runs); another name is a
    :class:`~cnnsuite.errors.ConfigError` naming the registered ones."""
    return task_named(task)


def task_config(task: str) -> dict:
    """The task's default config (what ``make train TASK=<task>`` runs): its ``Task.config``,
    naming the task's own classes (:func:`~cnnsuite.contract.check_config_classes`)."""
    spec = task_spec(task)
    config = yaml.safe_load(Path(spec.config).read_text())
    check_config_classes(spec, config)
    return config


def section_of(value) -> dict:
    """A config's ``model``/``data`` entry as ``{"class_path", "init_args"}`` (a bare class
    path is one without arguments; an absent entry, none)."""
    return {"class_path": value} if isinstance(value, str) else dict(value or {})


def config_class(section: dict, base: type, default: type, where: str) -> type:
    """The class a config section names by ``class_path`` (``default`` when it names none), as
    LightningCLI takes it: imported, and a subclass of ``base``."""
    path = section.get("class_path")
    if path is None or path == class_path(default):
        return default
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name, None) if module else None
    except ImportError as err:
        raise ConfigError(f"{where}: class_path {path!r} does not import: {err}") from err
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(f"{where}: class_path {path!r} is not a {base.__name__}")
    return cls


def build(task: str, data_root: str | Path = "data", model: dict | None = None, data: dict | None = None):
    """The task's default model and datamodule as ``cnnsuite fit --config <its config>`` makes
    them: the datamodule class and init arguments of the config's ``data``, then the model of
    its ``model`` with the linked arguments (:data:`cnnsuite.contract.LINKED`: classes, channels)
    taken from the datamodule; ``model``/``data`` override init arguments (a reference backbone,
    another layout). Returns ``(model, datamodule)``; no data is read or written."""
    spec = task_spec(task)
    config = task_config(task)
    data_section, model_section = (section_of(config.get(key)) for key in ("data", "model"))
    data_cls = config_class(data_section, TaskDataModule, spec.datamodule, f"{spec.config}: data")
    model_cls = config_class(model_section, TaskModule, spec.module, f"{spec.config}: model")
    data_args = {**(data_section.get("init_args") or {}), "data_root": str(data_root), **(data or {})}
    datamodule = data_cls(**data_args)
    links = {key: getattr(datamodule, key) for key in LINKED}
    model_args = {**(model_section.get("init_args") or {}), **(model or {})}
    return model_cls(**model_args, **links), datamodule


def from_section(section: dict, first):
    """The class a config section names (``class_path``), called on ``first`` and its ``init_args``."""
    module, _, name = section["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(first, **section.get("init_args", {}))


def make_optimizer(task: str, parameters) -> torch.optim.Optimizer:
    """The optimiser of the task's config (class and init arguments) on ``parameters``."""
    return from_section(task_config(task).get("optimizer") or {"class_path": "torch.optim.AdamW"}, parameters)


def make_scheduler(task: str, optimizer: torch.optim.Optimizer, epochs: int | None = None):
    """The LR scheduler of the task's config on ``optimizer`` (stepped once an epoch, as
    LightningCLI steps it), or None; a schedule that follows the run's length learns ``epochs``
    (under a Trainer it learns ``max_epochs`` when training starts)."""
    section = task_config(task).get("lr_scheduler")
    scheduler = from_section(section, optimizer) if section else None
    if isinstance(scheduler, CosineAnnealingLR) and epochs is not None:
        scheduler.follow(epochs)
    return scheduler


def precise_bn_batches(config: dict) -> int:
    """``num_batches`` of a ``PreciseBatchNorm`` the config's trainer names (0 if none; the
    module then adds its own, :attr:`cnnsuite.training.task.TaskModule.precise_bn_batches`)."""
    for callback in config["trainer"].get("callbacks") or []:
        if callback["class_path"].endswith("PreciseBatchNorm"):
            return callback.get("init_args", {}).get("num_batches", PreciseBatchNorm.DEFAULT_BATCHES)
    return 0


# --- the machine ---------------------------------------------------------------------------
def machine_facts() -> dict:
    """CPU model and SIMD flags, cores, threads, memory, library versions, GPU if any."""
    cpu = _proc_fields("/proc/cpuinfo", ("model name", "flags"))
    flags = set(cpu.get("flags", "").split())
    memory = _proc_fields("/proc/meminfo", ("MemTotal",)).get("MemTotal", "0 kB").split()[0]
    facts = {
        "cpu": cpu.get("model name", platform.processor() or platform.machine()),
        "cpu_flags": [f for f in SIMD_FLAGS if f in flags],
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "memory_gib": round(int(memory) / 2**20, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for package in ("torchvision", "lightning", "monai", "onnxruntime"):
        try:
            facts[package] = importlib.import_module(package).__version__
        except ImportError:
            facts[package] = None
    return facts


def _proc_fields(path: str, keys: tuple[str, ...]) -> dict[str, str]:
    """The first value of each of ``keys`` in a ``key : value`` file of /proc (empty elsewhere)."""
    found: dict[str, str] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() in keys and key.strip() not in found:
            found[key.strip()] = value.strip()
    return found


def matmul_gflops(device: torch.device | str = "cpu", size: int = MATMUL_SIZE, repeats: int = 5) -> float:
    """The machine's dense fp32 rate: ``size``² matrices multiplied, GFLOP/s (median of
    ``repeats``). What a network's FLOPs × throughput is held against."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device) for _ in range(2))
    out = torch.empty_like(a)
    timing = measure(lambda: torch.mm(a, b, out=out), warmup=2, repeats=repeats, min_seconds=0.2,
                     sync=synchronizer(device))  # fmt: skip
    return 2 * size**3 / timing["median"] / 1e9


# --- measuring -----------------------------------------------------------------------------
def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of what ``fn`` runs, as ``torch.utils.flop_counter`` counts them (convolutions,
    matmuls and their backward; element-wise work is not counted)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


# --- the run -------------------------------------------------------------------------------
@dataclass
class BenchContext:
    """What a section gets besides its tasks: where the embedded defaults live (a section
    generates one once when it is missing, by the datamodule's ``prepare_data``), whether the
    run is quick, the machine and its measured matmul rate, the device measured on."""

    data_root: Path
    quick: bool
    machine: dict
    matmul_gflops: float
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: tests only: the fewest steps that still produce every figure
    tiny: bool = False
    #: "<section>.<task>" → the error that stopped its measurement (the other tasks go on)
    failures: dict[str, str] = field(default_factory=dict)
    #: the folder of the plain PyTorch scripts (``<task>.py``) the ``endtoend`` section runs beside
    #: ``cnnsuite fit``; None: the plain side is not measured (see :func:`default_plain`)
    plain: Path | None = field(default_factory=lambda: default_plain())

    def pick(self, full, quick, tiny):
        """A section's settings for this run: ``tiny`` (tests), ``quick`` or ``full``."""
        return tiny if self.tiny else quick if self.quick else full


def default_plain() -> Path | None:
    """``./benchmarks/plain`` where it exists — a source checkout, the bench run from its root
    (``make bench``) — else None: the plain scripts are reference code beside the package, not
    part of it."""
    folder = Path("benchmarks") / "plain"
    return folder.resolve() if folder.is_dir() else None


class CpuLoad:
    """How busy the machine was while a section ran: load averages before and after, and the
    CPUs that *other* processes kept busy on average (all CPU time in /proc/stat less this
    process's and its children's). Figures taken under load are noisier; ratios less so."""

    def __init__(self) -> None:
        self.loadavg = os.getloadavg()
        self.busy, self.own, self.start = _busy_seconds(), _own_seconds(), time.perf_counter()

    def stop(self) -> dict:
        wall = time.perf_counter() - self.start
        others = (_busy_seconds() - self.busy) - (_own_seconds() - self.own)
        return {
            "seconds": round(wall, 1),
            "loadavg_before": [round(v, 2) for v in self.loadavg],
            "loadavg_after": [round(v, 2) for v in os.getloadavg()],
            "other_processes_cpus": round(max(0.0, others) / wall, 2) if wall > 0 else 0.0,
        }


def _busy_seconds() -> float:
    """CPU seconds spent busy by all processes since boot (0 where /proc/stat is missing)."""
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


#: warnings a section's measurements raise by design: the task modules log from training_step
#: outside a Trainer (a no-op), loaders without workers are the defaults, and so on
EXPECTED_WARNINGS = (".*self.log.*", ".*does not have many workers.*", ".*no `val_dataloader`.*", ".*LeafSpec.*")


def run_tasks(section: str, tasks: list[str], measure_task: Callable, settings, context: BenchContext) -> dict:
    """``{task: measure_task(task, settings, context)}`` with each task's time under
    ``section_seconds``, said on stderr as it goes: a section's ``run``."""
    results = {}
    with warnings.catch_warnings():
        for message in EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        for task in tasks:
            start = time.perf_counter()
            try:
                results[task] = measure_task(task, settings, context)
            except Exception as err:  # one task's failure must not cost a long run the others' figures
                traceback.print_exc()
                context.failures[f"{section}.{task}"] = f"{type(err).__name__}: {err}".splitlines()[0]
                print(f"cnnsuite bench: {section}, {task}: failed, going on", file=sys.stderr)
                continue
            results[task]["section_seconds"] = round(time.perf_counter() - start, 1)
            print(f"cnnsuite bench: {section}, {task}: {results[task]['section_seconds']:.0f} s", file=sys.stderr)
    return results


def flatten(results: dict[str, dict]) -> dict[str, object]:
    """``{task: {key: value}}`` → ``{"<task>.<key>": value}``."""
    return {f"{task}.{key}": value for task, figures in results.items() for key, value in figures.items()}


def machine_markdown(machine: dict, matmul: float, settings: dict) -> str:
    rows = [
        ("CPU", machine["cpu"]),
        ("SIMD flags", " ".join(machine["cpu_flags"]) or "none of " + ", ".join(SIMD_FLAGS)),
        ("CPUs (usable / logical)", f"{machine['usable_cpus']} / {machine['logical_cpus']}"),
        ("torch threads", f"{machine['torch_threads']} (OMP_NUM_THREADS={machine['omp_num_threads']})"),
        ("memory", f"{machine['memory_gib']} GiB"),
        ("GPU", machine["gpu"] or "none"),
        ("device measured", settings["device"]),
        (
            "dense fp32 matmul",
            f"{matmul:.1f} GFLOP/s (square matrices of {settings['matmul_size']}, measured in this run)",
        ),
        (
            "versions",
            ", ".join(
                f"{k} {machine[k]}"
                for k in ("python", "torch", "torchvision", "lightning", "monai", "onnxruntime")
                if machine.get(k)
            ),
        ),  # fmt: skip
        ("run", f"{'--quick' if settings['quick'] else 'full'}; tasks: {', '.join(settings['tasks'])}"),
    ]
    lines = ["## Machine", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]
    if settings.get("failures"):
        lines += ["**Not measured** (the run went on without them; the traceback is in its log):", ""]
        lines += [f"- `{where}`: {error}" for where, error in settings["failures"].items()] + [""]
    for name, load in settings["load"].items():
        lines.append(
            f"- section `{name}`: {load['seconds']:.0f} s; other processes kept {load['other_processes_cpus']:.2f} "
            f"CPUs busy on average (load average {load['loadavg_before'][0]:.2f} before, "
            f"{load['loadavg_after'][0]:.2f} after)"
        )
    return "\n".join(lines) + "\n"


def write_report(out: Path, machine: dict, matmul: float, settings: dict, sections: dict, markdowns: dict) -> None:
    """``bench.json`` (machine, settings, each section flattened; a figure that is no number as
    null) and ``bench.md`` (the machine's table first, then each section's own), each written
    whole or not at all."""
    out.mkdir(parents=True, exist_ok=True)
    report = {"machine": {**machine, "matmul_gflops": round(matmul, 2)}, "settings": settings, **sections}
    text = "\n".join(["# cnnsuite bench", "", machine_markdown(machine, matmul, settings), *markdowns.values()])
    for name, content in (("bench.json", strict_json(report, indent=1) + "\n"), ("bench.md", text)):
        partial = out / f".{name}.partial"
        partial.write_text(content)
        partial.replace(out / name)


def load_section(name: str):
    """The section's module, or None when it is not written yet (so a run covers what exists)."""
    try:
        return importlib.import_module(f"cnnsuite.bench.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"cnnsuite.bench.{name}":
            return None
        raise


def bench_main(argv: list[str]) -> None:
    from ..commands import add_out, command_parser

    tasks = task_names()
    parser = command_parser(
        "bench", ckpt=None,
        description="Every task's model against its references, what each training setting buys, its data "
        "pipeline, its end-to-end training and how its cost grows with its data, side by side and against this "
        "machine's matmul rate: DIR/bench.json and DIR/bench.md.",
    )  # fmt: skip
    add_out(parser, "folder for bench.json and bench.md (default runs/bench): a new or empty one, or one bench wrote")
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats and sizes, shorter training, no torch.compile (about 40 minutes on 2 "
                        "cores)")  # fmt: skip
    parser.add_argument("--tasks", nargs="+", choices=tasks, default=tasks, metavar="TASK",
                        help=f"tasks to measure (default all: {', '.join(tasks)})")  # fmt: skip
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="sections to run (default all)")  # fmt: skip
    parser.add_argument("--data_root", default="data", help="where the embedded default data live (default data)")
    parser.add_argument("--plain", type=Path, default=None, metavar="DIR",
                        help="folder of the plain PyTorch scripts (<task>.py) run beside cnnsuite fit in section "
                        "endtoend (default ./benchmarks/plain where it exists, as in a source checkout; without "
                        "one the plain side is not measured)")  # fmt: skip
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: fewest steps
    args = parser.parse_args(argv)
    if args.plain is not None and not args.plain.is_dir():
        parser.error(f"--plain {args.plain}: no such folder")
    # before anything is measured: a folder of the user's own is not written into
    out = output_folder(Path(args.out or "runs/bench"), given=args.out is not None, marker="bench.json")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    machine = machine_facts()
    size = MATMUL_SIZE // 2 if args.tiny else MATMUL_SIZE
    matmul = matmul_gflops(device, size, 2 if args.quick or args.tiny else 5)
    context = BenchContext(Path(args.data_root), args.quick or args.tiny, machine, matmul, device, args.tiny,
                           plain=args.plain.resolve() if args.plain else default_plain())  # fmt: skip
    settings = {"quick": context.quick, "tasks": args.tasks, "sections": args.sections, "device": str(device),
                "matmul_size": size, "load": {}, "missing_sections": [], "failures": context.failures,
                "plain": str(context.plain) if context.plain else None}  # fmt: skip
    sections: dict[str, dict] = {}
    markdowns: dict[str, str] = {}
    for name in args.sections:
        module = load_section(name)
        if module is None:
            settings["missing_sections"].append(name)
            markdowns[name] = f"## {name}\n\nNot measured: `cnnsuite.bench.{name}` is not part of this installation.\n"
            continue
        load = CpuLoad()
        results = module.run(args.tasks, context)
        settings["load"][name] = load.stop()
        sections[name] = flatten(results)
        markdowns[name] = module.markdown(results)
        write_report(out, machine, matmul, settings, sections, markdowns)
        print(f"cnnsuite bench: {name} measured in {settings['load'][name]['seconds']:.0f} s", file=sys.stderr)
    write_report(out, machine, matmul, settings, sections, markdowns)
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")
    if context.failures:
        raise SystemExit(f"cnnsuite bench: not measured: {', '.join(context.failures)}")
