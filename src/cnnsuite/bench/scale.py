"""Section ``scale``: how each task's cost grows with its data.

For every task, its embedded default's training split at each of :attr:`Settings.factors` times
its size (1× and 10×; 100× too in a full run), through each data path the task has:

- ``cache``: the task's default config, decoded once into memory (``data.cache_limit_mb``, or
  MONAI's ``cache: memory``), where it caches;
- ``files``: the raw files decoded every epoch (``cache_limit_mb: 0`` / ``cache: none``; a task
  that never caches has only this one, its default);
- ``shards``: a folder written by ``cnnsuite prepare`` (:mod:`cnnsuite.data.shards`), where the
  task streams one; elsewhere the table says not supported.

A k× split is the 1× training split's ids k times over (validation and test stay as they are):
every path then does k times the work an epoch — the cache decodes and holds k× the items, the
files path decodes k× files, the shards hold k× items on disk — on data any task has, without a
task-specific generator of more samples. The raw files on disk are the 1× ones, read k times.

Each configuration is measured in a fresh process (``python -m cnnsuite.bench.scale JOB OUT``),
so its peak resident memory is its own: building the training dataset (filling a cache), then
``epochs`` passes of at most ``batches`` batches through the task module's own training step
(the task's batch augmentation, forward, loss, backward, the config's optimiser), as the
pipeline section times one step. Per sample seen:

- ``first_s_per_sample``: the first epoch as a whole epoch would cost it: building the dataset
  over every training sample plus the first pass's seconds per sample seen;
- ``later_s_per_sample``: the median of the later passes;
- ``peak_rss_mb``: the peak resident memory from the moment the imports and the model were
  resident (``rss_before_data_mb``) to the end, so a peak of the imports does not hide the
  data's; ``data_memory_mb``: the peak less what was resident before; ``peak_anon_mb`` and
  ``data_anon_mb``: the same of the process's own memory alone, anonymous and shared, with
  what its DataLoader workers hold of their own (:class:`AnonymousPeak`: not the page cache of
  the memory-mapped chunks a prepared folder is read through; ``peak_rss_mb`` is the main
  process's alone, and the jobs keep the config's ``num_workers``, so where there are the cores
  for workers the decoding happens in them); ``disk_mb``: the raw data folder, or the shards;
- ``cached``: whether the training dataset's items were all kept decoded (:func:`all_cached`):
  false on the cache path where a k× split is past ``data.cache_limit_mb`` and so decoded every
  epoch, as the files path is (the table then says so); null where the dataset does not say;
- ``time_exponent`` / ``first_time_exponent`` / ``memory_exponent``: ``k`` of time (an epoch's:
  seconds per sample × samples) ∝ samples\\ :sup:`k` (or of the data's part of peak memory,
  ``data_memory_mb``, floored at :data:`MEMORY_FLOOR_MB`), the log-log slope over the sizes
  (:func:`growth_exponent`): 1 is linear, above 1 superlinear; memory should stay near 0 on the
  files and shards paths, and near 1 where a cache holds the data.

Per task, on its default path: ``time_per_sample_ratio_10x`` (later-epoch seconds per sample at
10× over 1×; goal ≤ :data:`GOAL_TIME_RATIO`), ``peak_memory_ratio_10x`` and
``peak_anon_ratio_10x``.

For a task that declares its :attr:`~cnnsuite.contract.Task.resolution`: its default data path at
1× its samples, with those settings at each of :attr:`Settings.resolutions` times the default's
(2× and 4×): ``resolution.{r}x.*`` (as above, with ``input_shape``, one sample as the loader gives
it) and ``resolution.time_exponent``, ``k`` of later-epoch time per sample ∝ r\\ :sup:`k`.

For a task that declares :attr:`~cnnsuite.contract.Task.scale_throughput`: its data 4× larger
than ``data.cache_limit_mb`` (the limit set to a quarter of the training split's decoded size)
trained through the Trainer for the same epochs and seed from its raw files and from its shards;
``throughput.shards_vs_files_ratio`` (goal ≥ :data:`GOAL_THROUGHPUT_RATIO`) and the test metric of
both (goal: equal).
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..allocator import keep_freed_memory
from ..data import shards
from .core import BenchContext, build, make_optimizer, run_tasks, task_spec
from .endtoend import quiet, train_within


@dataclass(frozen=True)
class Settings:
    """``factors``: the sizes, in times the default's training split (1 first); ``batches``:
    the most batches of one pass; ``epochs``: passes (the first, then later ones);
    ``throughput_epochs``: epochs of the shards-against-files training."""

    factors: tuple[int, ...]
    batches: int
    epochs: int
    throughput_epochs: int
    #: None: the config's batch size (tests shrink it)
    batch_size: int | None = None
    #: None: the whole default training split is 1×; tests cut it to this many samples
    base_samples: int | None = None
    #: the input's resolution, in times the default's (1 first), on the default data path at 1×
    resolutions: tuple[int, ...] = (1, 2, 4)


FULL = Settings(factors=(1, 10, 100), batches=30, epochs=4, throughput_epochs=5)
QUICK = Settings(factors=(1, 10), batches=8, epochs=3, throughput_epochs=2)
TINY = Settings(factors=(1, 10), batches=2, epochs=2, throughput_epochs=1, batch_size=4, base_samples=12,
                resolutions=(1, 2))  # fmt: skip
#: goals: per-sample time at 10× within this factor of 1×; shards at least this many times the files' throughput
GOAL_TIME_RATIO = 1.3
GOAL_THROUGHPUT_RATIO = 2.0
MIB = 2**20
#: the data's part of peak memory counts as at least this many MiB in its growth exponent: a part
#: of 0 or less (the peak's reset lags by a few pages) has no logarithm, and a few batches in
#: flight and the allocator's rounding read flat rather than as a slope
MEMORY_FLOOR_MB = 8.0
#: the longest one configuration may run: past it, a hung job (a forked writer waiting on a lock)
#: is stopped and its task reported as not measured, rather than the bench waiting for ever
JOB_TIMEOUT_S = 1200


def run(tasks: list[str], context: BenchContext) -> dict[str, dict]:
    return run_tasks("scale", tasks, measure_task, context.pick(FULL, QUICK, TINY), context)


# --- what is measured ----------------------------------------------------------------------
def growth_exponent(samples: list[float], values: list[float]) -> float:
    """``k`` of ``value ∝ samples**k``: the least-squares slope of log(value) over log(samples)."""
    if len(samples) < 2:
        raise ValueError("a growth exponent needs at least two sizes")
    return float(np.polyfit(np.log(samples), np.log(values), 1)[0])


def repeated(splits: dict[str, list[str]], factor: int, base: int | None = None) -> dict[str, list[str]]:
    """``splits`` with the training ids (the first ``base`` of them, None: all) ``factor`` times over."""
    return {**splits, "train": splits["train"][:base] * factor}


def data_paths(task: str) -> dict[str, dict | None]:
    """``path → data overrides`` of the task's data paths (``shards``: None where it does not
    stream a prepared folder; its ``data_dir`` is set per size)."""
    spec = task_spec(task)
    params = spec.datamodule.init_parameters()
    if "cache_limit_mb" in params:
        paths: dict[str, dict | None] = {"cache": {}, "files": {"cache_limit_mb": 0}}
    elif "cache" in params:
        paths = {"cache": {}, "files": {"cache": "none"}}
    else:
        paths = {"files": {}}
    paths["shards"] = {} if spec.datamodule.streams_prepared else None
    return paths


def scaled(value, factor: int):
    """A resolution setting (an int, or a list of ints: one per axis) ``factor`` times over."""
    return [v * factor for v in value] if isinstance(value, list | tuple) else value * factor


def resolution_overrides(task: str, model, datamodule, factor: int) -> dict[str, dict]:
    """``{"model": ..., "data": ...}`` init arguments of the task's :attr:`~cnnsuite.contract.Task.resolution`
    keys ``factor`` times their values in the default config (read off its built ``model`` and
    ``datamodule``)."""
    found: dict[str, dict] = {"model": {}, "data": {}}
    for key in task_spec(task).resolution:
        section, _, name = key.partition(".")
        owner = {"model": model, "data": datamodule}[section]
        found[section][name] = scaled(owner.hparams[name], factor)
    return found


def disk_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / MIB


def proc_kb(pid: int | str, name: str, fields: tuple[str, ...]) -> dict[str, int]:
    """``field → kB`` of ``fields`` in the /proc file ``name`` (``status``, ``smaps_rollup``) of
    process ``pid``; OSError where it has none (it ended, or there is no /proc)."""
    lines = Path(f"/proc/{pid}/{name}").read_text().splitlines()
    return {line.split(":")[0]: int(line.split()[1]) for line in lines if line.split(":")[0] in fields}


def memory_mb(*fields: str) -> float:
    """The sum of ``fields`` of this process's /proc status, MiB: ``VmRSS`` (resident now),
    ``VmHWM`` (its peak), ``RssAnon`` and ``RssShmem`` (anonymous and shared memory resident
    now); where there is no /proc, the peak of :func:`resource.getrusage` whatever is asked."""
    try:
        values = proc_kb("self", "status", fields)
        if len(values) < len(fields):
            raise LookupError(fields)
        return sum(values.values()) / 1024
    except (OSError, LookupError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def descendants(pid: int | str = "self") -> list[str]:
    """The ids of ``pid``'s child processes (DataLoader workers), of theirs, and so on: Linux's
    ``/proc/<pid>/task/*/children``; none where there is no such file."""
    found = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            pids = children.read_text().split()
        except OSError:  # the thread or the process ended
            continue
        for child in pids:
            found += [child, *descendants(child)]
    return found


def descendants_mb() -> float:
    """The memory this process's descendants hold that no other process maps, MiB: each one's
    private dirty pages (``Private_Dirty`` of its ``smaps_rollup``: what a loader worker
    allocates, and what it copied of the pages it shares copy-on-write with this process). Not
    its ``RssAnon``, which counts every page a forked worker still shares with this process (a
    decoded cache, the model) as its own, nor the shared memory it hands batches over in, which
    this process maps too."""
    total = 0
    for pid in descendants():
        try:
            total += proc_kb(pid, "smaps_rollup", ("Private_Dirty",)).get("Private_Dirty", 0)
        except OSError:  # it ended
            pass
    return total / 1024


#: the process's own memory, what the kernel cannot drop: anonymous (heap, tensors) and shared
#: (tmpfs: the batches DataLoader workers hand over), not the page cache of mapped files
OWN_MEMORY = ("RssAnon", "RssShmem")


def own_memory_mb() -> float:
    """This process's own memory (:data:`OWN_MEMORY`) and its descendants' (:func:`descendants_mb`), MiB."""
    return memory_mb(*OWN_MEMORY) + descendants_mb()


class AnonymousPeak:
    """The peak of this process's own resident memory (:data:`OWN_MEMORY`: its heap, the tensors
    it holds, shared memory), with its DataLoader workers' (:func:`descendants_mb`), MiB, while
    the ``with`` block runs, sampled every ``interval`` seconds on a thread and once more at the
    end. Linux keeps the peak of all resident memory only (``VmHWM``, of this process alone),
    which counts the pages of memory-mapped files read (a prepared folder's chunks): page cache
    the kernel takes back when it needs it, not memory the data costs."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval, self.stop = interval, threading.Event()
        self.start = self.peak = own_memory_mb()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.stop.wait(self.interval):
            self.peak = max(self.peak, own_memory_mb())

    def __enter__(self) -> AnonymousPeak:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, own_memory_mb())


def reset_peak_memory() -> None:
    """Start this process's peak resident memory (``VmHWM``) again from what it holds now, so
    that the peak of a measurement is not that of the imports before it (Linux's
    ``clear_refs``; elsewhere the peak stays the process's)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def item_bytes(item) -> int:
    """Bytes of the tensors and arrays in one decoded item (nested tuples, lists and dicts)."""
    if isinstance(item, torch.Tensor):
        return item.numel() * item.element_size()
    if isinstance(item, np.ndarray):
        return item.nbytes
    if isinstance(item, dict):
        return sum(item_bytes(v) for v in item.values())
    if isinstance(item, list | tuple):
        return sum(item_bytes(v) for v in item)
    return 0


# --- one configuration, in its own process -----------------------------------------------------
def recording_caches(datamodule, stage: str) -> list:
    """The caches ``datamodule`` hands its ``stage`` dataset from now on
    (:meth:`~cnnsuite.data.TaskDataModule.decoded_cache`), listed as they are made."""
    made, handing = [], datamodule.decoded_cache

    def decoded_cache(asked: str, own=None):
        cache = handing(asked, own)
        if asked != stage:
            return cache

        def keep(*args, **kwargs):
            made.append(cache(*args, **kwargs))
            return made[-1]

        return keep

    datamodule.decoded_cache = decoded_cache
    return made


def all_cached(caches: list) -> bool | None:
    """Whether every item of ``caches`` comes decoded whole, kept in memory or from shards (their
    ``cached``: a cache past ``data.cache_limit_mb`` decodes on every access; one that does not
    say is taken to decode too); None where the dataset took none (it keeps its items its own way)."""
    return all(getattr(cache, "cached", False) for cache in caches) if caches else None


def run_job(job: dict) -> dict:
    """One configuration's figures (``job["kind"]``: ``epochs`` or ``train``), or its shards
    written (``prepare``: LitData forks its writer, and a fork of a process that has run other
    jobs' threads can hang on a lock one of them held), in this process."""
    torch.manual_seed(0)
    if job["kind"] == "prepare":
        write_shards(job["task"], Path(job["data_root"]), Path(job["out"]), job["factor"], job["base_samples"])
        return {}
    if job["kind"] == "train":
        with quiet():
            return train_within(job["task"], {"data": job["data"]}, None, Path(job["data_root"]),
                                torch.device("cpu"), epochs=job["epochs"])  # fmt: skip
    data = {**job["data"], **({"batch_size": job["batch_size"]} if job["batch_size"] else {})}
    model, datamodule = build(job["task"], job["data_root"], model=job.get("model"), data=data)
    optimizer = make_optimizer(job["task"], model.parameters())
    model.train()
    reset_peak_memory()
    rss_before = memory_mb("VmRSS")
    with AnonymousPeak() as anonymous:
        datamodule.setup("fit")
        if datamodule.prepared is None:  # a prepared folder holds its split, grown when it was written
            datamodule.splits = repeated(datamodule.splits, job["factor"], job["base_samples"])
        caches = recording_caches(datamodule, "train")
        start = time.perf_counter()
        samples = len(datamodule.datasets["train"])  # built here: a cache is filled
        build_s = time.perf_counter() - start
        loader = datamodule.train_dataloader()
        epoch_s, seen, shape = [], [], None
        for _ in range(job["epochs"]):
            count, start = 0, time.perf_counter()
            for index, batch in enumerate(loader):
                shape = shape or list(batch[0][0].shape)  # one sample of a batch, or the first image of a list
                optimizer.zero_grad(set_to_none=True)
                model.training_step(datamodule.augment_batch(batch), index).backward()
                optimizer.step()
                count += len(batch[0])
                if index + 1 >= job["batches"]:
                    break
            epoch_s.append(time.perf_counter() - start)
            seen.append(count)
    # the kernel updates the peak from per-thread page counts it syncs now and then: it can lag
    # what /proc reported resident a moment after the reset by a few pages, so the peak is
    # never taken below that
    peak = max(memory_mb("VmHWM"), rss_before)
    return {"train_samples": samples, "build_s": build_s, "epoch_s": epoch_s, "seen": seen,
            "peak_rss_mb": peak, "rss_before_data_mb": rss_before, "peak_anon_mb": anonymous.peak,
            "anon_before_data_mb": anonymous.start, "input_shape": shape,
            "train_cached": all_cached(caches)}  # fmt: skip


def in_fresh_process(job: dict) -> dict:
    """:func:`run_job` in a new Python process: its peak memory is that configuration's alone."""
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        paths = [Path(tmp) / "job.json", Path(tmp) / "out.json"]
        paths[0].write_text(json.dumps(job))
        try:
            done = subprocess.run([sys.executable, "-m", "cnnsuite.bench.scale", *map(str, paths)],
                                  capture_output=True, text=True, timeout=JOB_TIMEOUT_S)  # fmt: skip
        except subprocess.TimeoutExpired as err:
            raise RuntimeError(f"scale job {job} still running after {JOB_TIMEOUT_S} s: stopped") from err
        if done.returncode != 0:
            raise RuntimeError(f"scale job {job} failed (exit status {done.returncode}):\n{done.stderr[-3000:]}")
        return json.loads(paths[1].read_text())


# --- a task ------------------------------------------------------------------------------------
def measure_task(task: str, settings: Settings, context: BenchContext) -> dict:
    data_root = Path(context.data_root).resolve()
    model, datamodule = build(task, data_root)
    datamodule.prepare_data()  # the embedded default, generated once, outside the timings
    raw_mb = disk_mb(datamodule.root)
    paths = data_paths(task)
    figures: dict = {"paths": [p for p, overrides in paths.items() if overrides is not None],
                     "factors": list(settings.factors)}  # fmt: skip
    if paths["shards"] is None:
        figures["shards"] = "not supported: the task does not stream a folder written by cnnsuite prepare"
    common = {"kind": "epochs", "task": task, "data_root": str(data_root), "base_samples": settings.base_samples,
              "batches": settings.batches, "epochs": settings.epochs, "batch_size": settings.batch_size}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix=f"bench-scale-{task}-") as tmp:
        for factor in settings.factors:
            for path, overrides in paths.items():
                if overrides is None:
                    continue
                disk = raw_mb
                if path == "shards":
                    folder = Path(tmp) / f"shards-{factor}x"
                    in_fresh_process({**common, "kind": "prepare", "out": str(folder), "factor": factor})
                    overrides, disk = {"data_dir": str(folder)}, disk_mb(folder)
                start = time.perf_counter()
                job = in_fresh_process({**common, "data": overrides, "factor": factor})
                print(f"cnnsuite bench: scale, {task}, {path} {factor}x: {time.perf_counter() - start:.0f} s",
                      file=sys.stderr)  # fmt: skip
                figures |= {f"{path}.{factor}x.{k}": v for k, v in summarise(job, disk).items()}
        figures |= exponents(figures, settings.factors)
        default = "cache" if "cache" in paths else "files"
        figures["default_path"] = default
        if 10 in settings.factors:
            for key, figure in (("time_per_sample_ratio_10x", "later_s_per_sample"),
                                ("peak_memory_ratio_10x", "peak_rss_mb"),
                                ("peak_anon_ratio_10x", "peak_anon_mb")):  # fmt: skip
                for path in figures["paths"]:
                    figures[f"{path}.{key}"] = figures[f"{path}.10x.{figure}"] / figures[f"{path}.1x.{figure}"]
                figures[key] = figures[f"{default}.{key}"]
        figures["train_samples_1x"] = figures[f"{default}.1x.train_samples"]
        if task_spec(task).resolution and len(settings.resolutions) > 1:
            figures |= resolutions(task, (model, datamodule), paths[default], figures, Path(tmp), settings, common)
        if task_spec(task).scale_throughput and paths["shards"] is not None:
            figures |= throughput(task, data_root, Path(tmp), settings)
    return figures


def resolutions(task: str, default: tuple, path: dict, figures: dict, tmp: Path, settings: Settings,
                common: dict) -> dict:  # fmt: skip
    """The default data path at 1× its samples with the input's resolution ``r`` times the
    default's, for each ``r`` of ``settings.resolutions`` (1×: the size section's figures):
    ``resolution.{r}x.*`` and ``resolution.time_exponent``, ``k`` of time per sample ∝ r^k (2:
    linear in the pixels of a 2D input, 3 in the voxels of a 3D one). A default generated at
    another resolution is written under ``tmp``, outside the timings."""
    kept = ("later_s_per_sample", "first_s_per_sample", "peak_rss_mb", "data_memory_mb", "disk_mb", "input_shape")
    found = {f"resolution.1x.{k}": figures[f"{figures['default_path']}.1x.{k}"] for k in kept}
    for factor in settings.resolutions[1:]:
        overrides = resolution_overrides(task, *default, factor)
        root = Path(common["data_root"])
        datamodule = build(task, root, data=overrides["data"])[1]
        if datamodule.root != default[1].root:  # another default to generate
            root = tmp / "data"
            datamodule = build(task, root, data=overrides["data"])[1]
        datamodule.prepare_data()
        start = time.perf_counter()
        job = in_fresh_process({**common, "data_root": str(root), "data": {**path, **overrides["data"]},
                                "model": overrides["model"], "factor": 1})  # fmt: skip
        print(f"cnnsuite bench: scale, {task}, resolution {factor}x: {time.perf_counter() - start:.0f} s",
              file=sys.stderr)  # fmt: skip
        summary = summarise(job, disk_mb(datamodule.root))
        found |= {f"resolution.{factor}x.{k}": summary[k] for k in kept}
        found[f"resolution.{factor}x.settings"] = {
            f"{section}.{key}": value for section, args in overrides.items() for key, value in args.items()
        }
    found["resolution.factors"] = list(settings.resolutions)
    found["resolution.time_exponent"] = growth_exponent(
        list(settings.resolutions), [found[f"resolution.{r}x.later_s_per_sample"] for r in settings.resolutions]
    )
    return found


def summarise(job: dict, disk: float) -> dict:
    """A job's figures per sample (see the module's docstring)."""
    later = [s / n for s, n in zip(job["epoch_s"][1:], job["seen"][1:], strict=True)]
    return {
        "train_samples": job["train_samples"],
        "build_s": job["build_s"],
        "first_s_per_sample": job["build_s"] / job["train_samples"] + job["epoch_s"][0] / job["seen"][0],
        "later_s_per_sample": statistics.median(later),
        "peak_rss_mb": job["peak_rss_mb"],
        "rss_before_data_mb": job["rss_before_data_mb"],
        "data_memory_mb": job["peak_rss_mb"] - job["rss_before_data_mb"],
        "peak_anon_mb": job["peak_anon_mb"],
        "data_anon_mb": job["peak_anon_mb"] - job["anon_before_data_mb"],
        "disk_mb": disk,
        "input_shape": job["input_shape"],
        "cached": job["train_cached"],
    }


def exponents(figures: dict, factors: tuple[int, ...]) -> dict:
    """Per path, the growth exponents of an epoch's time (first and later) and of the data's part
    of peak memory (``data_memory_mb``, at least :data:`MEMORY_FLOOR_MB`): the whole peak holds the
    imports and the model too, beside which a cache growing in step with the data reads flat."""
    found = {}
    for path in figures["paths"]:
        samples = [figures[f"{path}.{f}x.train_samples"] for f in factors]
        for name, figure in (("time_exponent", "later_s_per_sample"), ("first_time_exponent", "first_s_per_sample")):
            epoch_s = [figures[f"{path}.{f}x.{figure}"] * n for f, n in zip(factors, samples, strict=True)]
            found[f"{path}.{name}"] = growth_exponent(samples, epoch_s)
        data_mb = [max(figures[f"{path}.{f}x.data_memory_mb"], MEMORY_FLOOR_MB) for f in factors]
        found[f"{path}.memory_exponent"] = growth_exponent(samples, data_mb)
    return found


def write_shards(task: str, data_root: Path, out: Path, factor: int, base: int | None) -> None:
    """``cnnsuite prepare`` of the task's default into ``out`` with its training split
    ``factor`` times over (the first ``base`` samples; None: all)."""
    _, datamodule = build(task, data_root)
    datamodule.setup("fit")
    datamodule.splits = repeated(datamodule.splits, factor, base)
    with quiet():
        shards.prepare(datamodule, task, out)


def throughput(task: str, data_root: Path, tmp: Path, settings: Settings) -> dict:
    """The task's 1× data trained from its raw files and from its shards, both with
    ``cache_limit_mb`` a quarter of its training split's decoded size, for the same epochs and seed."""
    _, datamodule = build(task, data_root)
    datamodule.setup("fit")
    ids, read = datamodule.decoder("train")
    decoded_mb = item_bytes(read(0)) * len(ids) / MIB
    limit = decoded_mb / 4
    folder = tmp / "shards-throughput"
    in_fresh_process({"kind": "prepare", "task": task, "data_root": str(data_root), "out": str(folder), "factor": 1,
                      "base_samples": None})  # fmt: skip
    figures = {"throughput.decoded_mb": decoded_mb, "throughput.cache_limit_mb": limit,
               "throughput.epochs": settings.throughput_epochs}  # fmt: skip
    # both sides under the one limit: shards keep as many chunks mapped as it holds
    for side, data in (
        ("files", {"cache_limit_mb": limit}),
        ("shards", {"data_dir": str(folder), "cache_limit_mb": limit}),
    ):
        job = in_fresh_process({"kind": "train", "task": task, "data_root": str(data_root), "data": data,
                                "epochs": settings.throughput_epochs})  # fmt: skip
        figures[f"throughput.{side}.samples_per_s"] = job["train_samples"] * settings.throughput_epochs / job["fit_s"]
        figures[f"throughput.{side}.test_metric"] = job["test_metric"]
    figures["throughput.test_metric"] = task_spec(task).headline
    figures["throughput.shards_vs_files_ratio"] = (
        figures["throughput.shards.samples_per_s"] / figures["throughput.files.samples_per_s"]
    )
    return figures


# --- the report --------------------------------------------------------------------------------
def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g}"


def resolution_markdown(results: dict[str, dict]) -> list[str]:
    """The table of cost as the input's resolution grows, for the tasks that have one."""
    measured = {task: f for task, f in results.items() if "resolution.time_exponent" in f}
    if not measured:
        return []
    lines = [
        "Resolution: each task's default data path at 1× its samples, with the settings that make its input's "
        "resolution (the `resolution` of its task contract) times the default's, the rest as above. k: the exponent "
        "of later-epoch time per sample in the resolution (2: linear in the pixels of a 2D input, 3 in the voxels "
        "of a 3D one).",
        "",
        "| task | resolution | settings | a sample | first ms/sample | later ms/sample | × 1× "
        "| peak RSS MB (data's part) | disk MB | k |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for task, f in measured.items():
        base = f["resolution.1x.later_s_per_sample"]
        for factor in f["resolution.factors"]:
            p = f"resolution.{factor}x."
            settings = ", ".join(f"`{k}` {v}" for k, v in f.get(p + "settings", {}).items()) or "the config's"
            k = f"{f['resolution.time_exponent']:.2f}" if factor == f["resolution.factors"][-1] else ""
            lines.append(
                f"| {task} | {factor}× | {settings} | {'×'.join(map(str, f[p + 'input_shape']))} | "
                f"{_ms(f[p + 'first_s_per_sample'])} | "
                f"{_ms(f[p + 'later_s_per_sample'])} | {f[p + 'later_s_per_sample'] / base:.1f}× | "
                f"{f[p + 'peak_rss_mb']:,.0f} ({f[p + 'data_memory_mb']:,.0f}) | {f[p + 'disk_mb']:,.1f} | {k} |"
            )
    return [*lines, ""]


def markdown(results: dict[str, dict]) -> str:
    lines = [
        "## Cost as the data grows",
        "",
        "Each task's default training split at 1× and 10× its size (100× too without --quick; a k× split is the "
        "1× split's samples k times over, so every path does k× the work an epoch on the same raw files), through "
        "each data path it has: `cache` (its default config: decoded once into memory within "
        "`data.cache_limit_mb`), `files` (`cache_limit_mb: 0`: decoded every epoch) and `shards` (a folder "
        "written by `cnnsuite prepare`, streamed). Each configuration in a fresh process: the training dataset "
        f"built, then {FULL.epochs} passes of up to {FULL.batches} batches ({QUICK.epochs} of {QUICK.batches} with "
        "--quick) through the task module's training step. First epoch: building the dataset (a cache filled) "
        "over every sample plus the first pass, per sample; later: the median of the later passes. Peak RSS: "
        "the process's from the moment its imports and model were resident (Linux's `clear_refs`), those "
        "included; the data's part: that peak less what was resident before any data (for shards, the pages of "
        "the chunks kept memory-mapped, the page cache, up to `data.cache_limit_mb`). Anonymous: the peak of the "
        "process's own memory (`RssAnon` + `RssShmem`, sampled every 20 ms: heap, tensors, shared memory, not "
        "the page cache of mapped files) with its DataLoader workers' (their `Private_Dirty`: what they allocate, "
        "not the pages they share with the process), and its data's part likewise; peak RSS is the main "
        "process's alone. A `cache` row past its limit says so: its split decoded to more than `data.cache_limit_mb`, "
        "so it was decoded every epoch, as on the files path. Disk: the raw files, or the shards. "
        "k: the growth exponent of an epoch's time (or of the data's part of peak memory, at least "
        f"{MEMORY_FLOOR_MB:g} MB) in samples, the log-log slope over the sizes (1: linear). Goal: later-epoch "
        f"time per sample at 10× within {GOAL_TIME_RATIO}× of 1×.",
        "",
        "| task | data | size | train samples | first ms/sample | later ms/sample | peak RSS MB (data's part) "
        "| anonymous MB (data's part) | disk MB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    summary, unsupported = [], []
    for task, f in results.items():
        for path in f["paths"]:
            for factor in f["factors"]:
                p = f"{path}.{factor}x."
                shown = (
                    f"{path} (past its limit: decoded every epoch)"
                    if f[p + "cached"] is False and path == "cache"
                    else path
                )
                lines.append(
                    f"| {task} | {shown} | {factor}× | {f[p + 'train_samples']:,} | "
                    f"{_ms(f[p + 'first_s_per_sample'])} | {_ms(f[p + 'later_s_per_sample'])} | "
                    f"{f[p + 'peak_rss_mb']:,.0f} "
                    f"({f[p + 'data_memory_mb']:,.0f}) | {f[p + 'peak_anon_mb']:,.0f} ({f[p + 'data_anon_mb']:,.0f}) | "
                    f"{f[p + 'disk_mb']:,.1f} |"
                )
        if "shards" in f:
            unsupported.append(task)
        if "time_per_sample_ratio_10x" in f:
            summary.append((task, f))
    lines.append("")
    if unsupported:
        lines += [f"Shards: not supported for {', '.join(unsupported)} (no streaming of a prepared folder yet).", ""]
    if summary:
        lines += [
            "Growth, per data path: the 10× / 1× ratios of later-epoch time per sample, of peak memory and of peak "
            "anonymous memory, and the exponents k (time of a later epoch, of the first epoch, the data's part of "
            "peak memory). The task's default path first.",
            "",
            "| task | data | time/sample 10× / 1× | peak memory 10× / 1× | anonymous 10× / 1× | k later | k first "
            "| k memory | goal |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for task, f in summary:
            order = [f["default_path"]] + [p for p in f["paths"] if p != f["default_path"]]
            for path in order:
                ratio = f[f"{path}.time_per_sample_ratio_10x"]
                shown = f"**{path}**" if path == f["default_path"] else path
                goal = "reached" if ratio <= GOAL_TIME_RATIO else "**not reached**"
                lines.append(
                    f"| {task} | {shown} | {ratio:.2f}× | {f[f'{path}.peak_memory_ratio_10x']:.2f}× | "
                    f"{f[f'{path}.peak_anon_ratio_10x']:.2f}× | "
                    f"{f[f'{path}.time_exponent']:.2f} | {f[f'{path}.first_time_exponent']:.2f} | "
                    f"{f[f'{path}.memory_exponent']:.2f} | {goal} |"
                )
        lines.append("")
    lines += resolution_markdown(results)
    for task, f in results.items():
        if "throughput.shards_vs_files_ratio" not in f:
            continue
        ratio = f["throughput.shards_vs_files_ratio"]
        metric = f["throughput.test_metric"]
        same = f["throughput.shards.test_metric"] == f["throughput.files.test_metric"]
        lines += [
            f"Data 4× larger than `data.cache_limit_mb` ({task}: its training split decodes to "
            f"{f['throughput.decoded_mb']:.1f} MB, the limit set to {f['throughput.cache_limit_mb']:.2f} MB), trained "
            f"through the Trainer for {f['throughput.epochs']} epoch(s) with the same seed, validation off, then "
            f"tested. Goal: shards ≥ {GOAL_THROUGHPUT_RATIO:g}× the files' throughput, the same {metric}.",
            "",
            f"| task | path | samples/s | {metric} |",
            "|---|---|---:|---:|",
            f"| {task} | files | {f['throughput.files.samples_per_s']:,.0f} | "
            f"{f['throughput.files.test_metric']:.4f} |",
            f"| {task} | shards | {f['throughput.shards.samples_per_s']:,.0f} | "
            f"{f['throughput.shards.test_metric']:.4f} |",
            "",
            f"Shards / files: **{ratio:.2f}×** — "
            + ("reached" if ratio >= GOAL_THROUGHPUT_RATIO else "**not reached**")
            + f"; {metric} "
            + ("equal." if same else "**differs**."),
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":  # one job: ``python -m cnnsuite.bench.scale JOB.json OUT.json``
    keep_freed_memory()  # as every cnnsuite command does, so the job measures what `cnnsuite fit` runs
    with quiet():
        result = run_job(json.loads(Path(sys.argv[1]).read_text()))
    Path(sys.argv[2]).write_text(json.dumps(result))
