"""Section ``pipeline``: can each task's training loader keep its model busy?

For every task, with the task's default config (its ``num_workers``, batch size, caching and
augmentation), in one process:

- **loader**: samples/s out of ``datamodule.train_dataloader()`` alone — the first epoch
  (``loader_cold_samples_per_s``: building the dataset included, so decoding into a cache is
  counted there), then, after it, ``repeats`` passes of at most ``batches`` batches each
  (``loader_samples_per_s``, the median: what every later epoch gets);
- **consumption**: samples/s of the default model's training step (the task's batch
  augmentation on the device, forward, loss, backward, the config's optimiser, through the
  task module's ``training_step``) on a real batch from that loader;
- ``loader_ratio_vs_consumption`` = loader / consumption. The goal is at least :data:`GOAL`:
  with no workers the loader and the step share the process, and a loader twice as fast as
  the step costs a third of an epoch; below 1 the model waits on its data whatever the
  workers. ``loader_cold_ratio_vs_consumption`` says the same of the first epoch.

Measured apart rather than inside a training run, so each side's figure stands alone; in the
same process, so both suffer the same load from whatever else runs on the machine.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from ..timing import measure, synchronizer
from .core import BenchContext, build, make_optimizer, run_tasks


@dataclass(frozen=True)
class Settings:
    """``batches``: the most batches of one timed pass over the loader (a whole epoch when it
    has fewer); ``repeats`` timed passes after the first epoch; ``step_*``: how the training
    step is timed (see :func:`cnnsuite.timing.measure`)."""

    batches: int
    repeats: int
    step_warmup: int
    step_repeats: int
    step_min_seconds: float
    #: None: the config's batch size (tests shrink it)
    batch_size: int | None = None
    #: None: the whole first epoch is the cold pass; tests cap it
    cold_batches: int | None = None


FULL = Settings(batches=40, repeats=5, step_warmup=2, step_repeats=5, step_min_seconds=0.3)
QUICK = Settings(batches=15, repeats=2, step_warmup=1, step_repeats=2, step_min_seconds=0.15)
TINY = Settings(batches=2, repeats=1, step_warmup=1, step_repeats=1, step_min_seconds=0.0, batch_size=4,
                cold_batches=2)  # fmt: skip
#: the goal: the loader at least this many times the model's consumption
GOAL = 2.0


def run(tasks: list[str], context: BenchContext) -> dict[str, dict]:
    return run_tasks("pipeline", tasks, measure_task, context.pick(FULL, QUICK, TINY), context)


def measure_task(task: str, settings: Settings, context: BenchContext) -> dict:
    torch.manual_seed(0)
    data = {"batch_size": settings.batch_size} if settings.batch_size else None
    model, datamodule = build(task, context.data_root, data=data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    figures = {
        "batch_size": datamodule.hparams.batch_size,
        "num_workers": datamodule.num_workers,
        **({"cache": datamodule.hparams.cache} if "cache" in datamodule.hparams else {}),
    }
    start = time.perf_counter()
    loader = datamodule.train_dataloader()  # builds the training dataset (and fills a cache) on first use
    cold_samples, batch = _drain(loader, settings.cold_batches)
    cold_seconds = time.perf_counter() - start
    rates = []
    for _ in range(settings.repeats):
        start = time.perf_counter()
        samples, _ = _drain(loader, settings.batches)
        rates.append(samples / (time.perf_counter() - start))
    figures |= {
        "train_samples": len(loader.dataset),
        "loader_cold_samples_per_s": cold_samples / cold_seconds,
        "loader_samples_per_s": statistics.median(rates),
        "loader_samples_per_s_all": rates,
    }
    figures |= consumption(task, model, datamodule, batch, settings, context)
    figures["loader_ratio_vs_consumption"] = figures["loader_samples_per_s"] / figures["consumption_samples_per_s"]
    figures["loader_cold_ratio_vs_consumption"] = (
        figures["loader_cold_samples_per_s"] / figures["consumption_samples_per_s"]
    )
    return figures


def _drain(loader, limit: int | None) -> tuple[int, object]:
    """Samples out of one pass over ``loader`` (at most ``limit`` batches; the epoch's end
    otherwise), and the first batch."""
    samples, first = 0, None
    for index, batch in enumerate(loader):
        first = batch if first is None else first
        samples += len(batch[0])
        if limit is not None and index + 1 >= limit:
            break
    return samples, first


def consumption(
    task: str, model: torch.nn.Module, datamodule, batch, settings: Settings, context: BenchContext
) -> dict:
    """Samples/s of the model's training step on ``batch`` (a batch as the loader gives it),
    after the datamodule's batch augmentation, as a fit runs it on the device."""
    model.to(context.device).train()
    batch = move_data_to_device(batch, context.device)
    optimizer = make_optimizer(task, model.parameters())

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model.training_step(datamodule.augment_batch(batch), 0).backward()
        optimizer.step()

    timing = measure(step, settings.step_warmup, settings.step_repeats, settings.step_min_seconds,
                     synchronizer(context.device))  # fmt: skip
    return {"consumption_samples_per_s": len(batch[0]) / timing["median"], "train_step_s": timing["median"]}


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def markdown(results: dict[str, dict]) -> str:
    lines = [
        "## Data pipeline",
        "",
        "Samples/s out of each task's training loader alone, with its default config (workers, cache, "
        f"augmentation): the first epoch (cold: building the dataset and any cache included), then the median of "
        f"{FULL.repeats} passes of up to {FULL.batches} batches ({QUICK.repeats} of {QUICK.batches} with --quick). "
        "Consumption: samples/s of the default model's training step on a batch from that loader. "
        f"Ratio: loader / consumption (goal ≥ {GOAL:g}: the loader then costs at most a third of an epoch). "
        "Tasks that decode once into memory (`data.cache_limit_mb`) pay for it in the cold epoch: a cold ratio "
        "below 1 is the one epoch in which the model waits on its data.",
        "",
        "| task | batch | workers | loader samples/s | consumption samples/s | **ratio** | cold samples/s "
        "| cold ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    short = []
    for task, f in results.items():
        ratio = f["loader_ratio_vs_consumption"]
        if ratio < GOAL:
            short.append(f"{task} ({ratio:.2f}×)")
        lines.append(
            f"| {task} | {f['batch_size']} | {f['num_workers']} | {_fmt(f['loader_samples_per_s'])} | "
            f"{_fmt(f['consumption_samples_per_s'])} | **{ratio:.2f}×** | {_fmt(f['loader_cold_samples_per_s'])} | "
            f"{f['loader_cold_ratio_vs_consumption']:.2f}× |"
        )
    lines += [
        "",
        f"Goal: every loader at least {GOAL:g}× its model's consumption — "
        + (
            f"**not reached** for {', '.join(short)}: the model waits on its data there."
            if short
            else "reached on every task measured."
        ),
        "",
    ]
    return "\n".join(lines)
