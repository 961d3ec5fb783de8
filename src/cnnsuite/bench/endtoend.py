"""Section ``endtoend``: what a user waits for, and what they get for it.

**End to end.** ``make train`` — ``cnnsuite fit --config <the task's config>`` in a fresh
process, progress bar off, the evaluation of ``best.ckpt`` it runs after fit included, the
embedded default already generated — against the plain PyTorch script of the task, also a
fresh process under the same malloc settings (:mod:`cnnsuite.allocator`): the same network
built from the same config, the same optimiser, scheduler, batch size and augmentation intent,
the same train split decoded once and held in memory as tensors, tested on the same test
split with the same torchmetrics metric. Both train the default config's epochs, as ``make
train`` does, unless the task declares others (:attr:`cnnsuite.contract.Task.endtoend_epochs`;
``quick_endtoend_epochs`` with ``--quick``; a cosine schedule's length follows the epochs on
both sides).
Each side runs ``repeats`` times (2 in a full run), in the order ours, plain, then plain, ours,
and keeps its shortest run: another process taking the cores for a while lengthens a run, never
shortens one, and the alternation spreads a slow drift of the machine over both sides.
``train_time_ratio_vs_plain`` is the wall time of ours over the plain script's (goal ≤ 1.1);
``test_metric_ours`` and ``test_metric_plain`` sit side by side (goal: ours at least as good).
The metric is the task's headline (:attr:`cnnsuite.contract.Task.headline`).

The plain scripts are reference code beside the package, not part of it: the script of a task
is ``<task>.py`` in the folder given by ``cnnsuite bench --plain DIR`` (by default
``./benchmarks/plain`` where it exists, as in a source checkout), run as a file::

    python DIR/<task>.py --epochs K --data_root ROOT --out result.json [--limit_batches B]

writing a JSON object with ``train_seconds``, ``data_seconds``, the headline metric and the
``device`` it trained on (``cpu`` where it says none). With no folder, or no script of the task
in it, the plain side is said to be not measured and ours is measured alone; a script that
trained on another kind of device than ``cnnsuite fit`` here (the plain scripts of a source
checkout train on a GPU where there is one, as ``fit`` does) gets no ratio, its row says so.

**Equal training-time budget.** The default network and reference networks of the task (the
ones it declares for it: :attr:`cnnsuite.contract.Task.budget_references`; with ``--quick``
only where it declares ``quick_budget``), each trained for the same wall-clock seconds
(Lightning's ``max_time``) through the same task module, Trainer, datamodule and config —
validation off so the whole budget trains — its BatchNorm statistics recomputed as the suite
does before it evaluates, then tested on the test split: ``test_metric_ratio_vs_<reference>``
= ours / the reference's (the reference's / ours for a headline better lower), beside the raw
metrics and the epochs and steps each got.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch

from ..contract import Task
from ..errors import ConfigError
from .core import BenchContext, build, make_optimizer, make_scheduler, precise_bn_batches, task_config, task_spec


@dataclass(frozen=True)
class Settings:
    """``seconds``: the equal training-time budget per network; ``quick``: each task's
    ``quick_*`` declarations decide what runs (:class:`cnnsuite.contract.Task`), not its full
    ones; ``max_epochs``: at most this many end-to-end epochs, ``limit_batches``: batches per
    epoch (tests); ``repeats``: runs of each side of the end-to-end comparison, the shortest kept."""

    seconds: float
    quick: bool = False
    max_epochs: int | None = None
    limit_batches: int | None = None
    repeats: int = 1


#: the most ``make train`` may take over the plain script's time for the same training
TIME_GOAL = 1.1

FULL = Settings(seconds=30.0, repeats=2)
QUICK = Settings(seconds=10.0, quick=True)
TINY = Settings(seconds=1.0, quick=True, max_epochs=1, limit_batches=2)


def endtoend_epochs(task: Task, settings: Settings) -> int:
    """The epochs of the task's end-to-end comparison in this run (0: not compared)."""
    epochs = task.quick_endtoend_epochs if settings.quick else task.endtoend_epochs
    if epochs is None:
        epochs = (task_config(task.name).get("trainer") or {}).get("max_epochs")
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
            raise ConfigError(f"task {task.name!r}: its config {task.config} gives no trainer.max_epochs to compare "
                              "end to end; declare Task.endtoend_epochs")  # fmt: skip
    return min(epochs, settings.max_epochs) if settings.max_epochs is not None else epochs


def budget_references(task: Task, settings: Settings) -> tuple[str, ...]:
    """The references trained within the equal budget in this run: those the task declares
    for it (by default the first of its references); none in a quick run unless it asks."""
    if settings.quick and not task.quick_budget:
        return ()
    names = tuple(task.references)[:1] if task.budget_references is None else tuple(task.budget_references)
    unknown = [name for name in names if name not in task.references]
    if unknown:
        raise ConfigError(f"task {task.name!r}: budget_references {unknown} are not among its references "
                          f"({', '.join(task.references) or 'none'})")  # fmt: skip
    return names


def run(tasks: list[str], context: BenchContext) -> dict[str, dict]:
    settings = context.pick(FULL, QUICK, TINY)
    data_root = Path(context.data_root).resolve()
    results: dict[str, dict] = {}
    for task in tasks:
        spec = task_spec(task)
        epochs, references = endtoend_epochs(spec, settings), budget_references(spec, settings)
        if not (epochs or references):  # nothing compared in this run: no entry
            continue
        figures: dict = {"test_metric": spec.headline, "test_metric_mode": spec.module.mode}
        build(task, data_root)[1].prepare_data()  # the embedded default, generated once, outside the timings
        if epochs:
            figures |= end_to_end(task, epochs, data_root, settings.limit_batches, context.plain, settings.repeats,
                                  context.device.type)  # fmt: skip
        if references:
            figures |= equal_budget(task, references, settings, data_root, context.device)
        results[task] = figures
    return results


# --- end to end ----------------------------------------------------------------------------
def plain_script(task: str, plain: Path | None) -> Path | str:
    """The task's plain script in ``plain``, or why there is none to run."""
    if plain is None:
        return (
            "not measured: no folder of plain scripts (cnnsuite bench --plain DIR; a source checkout has "
            "benchmarks/plain)"
        )
    script = Path(plain) / f"{task}.py"
    return script if script.is_file() else f"not measured: {script} is missing"


def end_to_end(
    task: str,
    epochs: int,
    data_root: Path,
    limit_batches: int | None,
    plain: Path | None,
    repeats: int = 1,
    device: str = "cpu",
) -> dict:
    """Wall time and test metric of ``cnnsuite fit`` (+ its evaluation) and of the plain script
    (``<task>.py`` in the folder ``plain``), each in its own process, for ``epochs`` epochs;
    each side ``repeats`` times, ours and plain in turn and the order reversed every other
    round, the shortest run of each kept (its metric with it). ``device``: the kind of device
    ``cnnsuite fit`` trains on here; a plain script that trained on another (its JSON's
    ``device``, the CPU where it says none) gets its times and metric but no ratio."""
    spec = task_spec(task)
    metric = spec.headline
    figures: dict = {"endtoend_epochs": epochs}
    script = plain_script(task, plain)
    sides = {"ours": lambda run: fit_once(spec, epochs, data_root, limit_batches, run)}
    if isinstance(script, Path):
        sides["plain"] = lambda run: plain_once(script, epochs, data_root, limit_batches, run)
    runs: dict[str, list[tuple[float, dict]]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory(prefix=f"bench-{task}-") as tmp:
        for round_ in range(max(1, repeats)):
            for side in list(sides)[:: -1 if round_ % 2 else 1]:
                folder = Path(tmp, f"{side}-{round_}")
                folder.mkdir()
                runs[side].append(sides[side](folder))
    seconds, ours = min(runs["ours"], key=lambda run: run[0])
    figures |= {
        "time_s_ours": seconds,
        "time_s_ours_all": [t for t, _ in runs["ours"]],
        "test_metric_ours": ours[metric],
    }
    if "plain" not in runs:
        return figures | {"plain": script}
    seconds, plain_result = min(runs["plain"], key=lambda run: run[0])
    plain_device = torch.device(plain_result.get("device", "cpu")).type
    if plain_device != device:
        return figures | {
            "time_s_plain": seconds,
            "time_s_plain_all": [t for t, _ in runs["plain"]],
            "plain_device": plain_device,
            "test_metric_plain": plain_result[metric],
            "plain": f"not comparable: the plain script trained on the {plain_device}, cnnsuite fit on the {device}",
        }
    return figures | {
        "time_s_plain": seconds,
        "time_s_plain_all": [t for t, _ in runs["plain"]],
        "plain_train_s": plain_result["train_seconds"],
        "plain_data_s": plain_result["data_seconds"],
        "train_time_ratio_vs_plain": figures["time_s_ours"] / seconds,
        "test_metric_plain": plain_result[metric],
        "test_metric_ratio_vs_plain": ratio(figures["test_metric_ours"], plain_result[metric], spec.module.mode),
    }


def fit_once(spec: Task, epochs: int, data_root: Path, limit_batches: int | None, folder: Path) -> tuple[float, dict]:
    """Seconds of one ``cnnsuite fit`` of the task's config (its evaluation included) run in
    ``folder``, and the metrics its evaluation wrote."""
    args = ["--trainer.max_epochs", str(epochs), "--trainer.default_root_dir", f"{folder}/run",
            "--trainer.enable_progress_bar", "false", "--data.data_root", str(data_root)]  # fmt: skip
    if limit_batches:
        args += ["--trainer.limit_train_batches", str(limit_batches)]
    command = [sys.executable, "-m", "cnnsuite", "fit", "--config", str(spec.config), *args]
    seconds = timed(command, f"{folder}/ours.log")
    return seconds, json.loads(Path(f"{folder}/run/version_0/evaluation/metrics.json").read_text())


def plain_once(
    script: Path, epochs: int, data_root: Path, limit_batches: int | None, folder: Path
) -> tuple[float, dict]:
    """Seconds of one run of the plain ``script`` in ``folder``, and the JSON it wrote."""
    args = ["--epochs", str(epochs), "--data_root", str(data_root), "--out", f"{folder}/plain.json"]
    if limit_batches:
        args += ["--limit_batches", str(limit_batches)]
    seconds = timed([sys.executable, str(script), *args], f"{folder}/plain.log")
    return seconds, json.loads(Path(f"{folder}/plain.json").read_text())


def timed(command: list[str], log: str, cwd: Path | None = None) -> float:
    """Seconds ``command`` ran (its output in ``log``); a failure raises with the log's tail."""
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=os.environ.copy()).returncode
    seconds = time.perf_counter() - start
    if code != 0:
        tail = Path(log).read_text()[-3000:]
        raise RuntimeError(f"{' '.join(command)} failed (exit status {code}):\n{tail}")
    return seconds


def ratio(ours: float, reference: float, mode: str = "max") -> float:
    """How many times better ours scored, above 1 where it did better: ours / reference for a
    metric better higher (``mode`` max), reference / ours for one better lower (an error).
    A denominator of 0 makes the ratio infinite (or 1 where both scored 0)."""
    better, worse = (ours, reference) if mode == "max" else (reference, ours)
    if worse == 0:
        return 1.0 if better == 0 else math.inf
    return better / worse


# --- equal training-time budget --------------------------------------------------------------
def equal_budget(
    task: str, references: tuple[str, ...], settings: Settings, data_root: Path, device: torch.device
) -> dict:
    """The default network and each of ``references`` (names of the task's references), each
    trained within ``settings.seconds`` and tested (:func:`train_within`)."""
    spec = task_spec(task)
    declared = spec.references
    ours = train_within(task, {}, settings.seconds, data_root, device)
    figures = {"budget_s": settings.seconds, **{f"budget.default.{k}": v for k, v in ours.items()}}
    for name in references:
        reference = train_within(task, declared[name], settings.seconds, data_root, device)
        figures |= {f"budget.{name}.{k}": v for k, v in reference.items()}
        figures[f"test_metric_ratio_vs_{name}"] = ratio(ours["test_metric"], reference["test_metric"], spec.module.mode)
    return figures


def train_within(
    task: str, overrides: dict, seconds: float | None, data_root: Path, device: torch.device, epochs: int = -1
) -> dict:
    """The task's model (with ``overrides``: a reference, another data path) trained for
    ``seconds`` of wall clock (None: no limit) or ``epochs`` (-1: no limit), whichever ends
    first, by the Trainer as the config sets it up (optimiser, scheduler, gradient clipping),
    with no validation; BatchNorm statistics recomputed as before an evaluation; then tested."""
    from cnnsuite.training.callbacks import PreciseBatchNorm

    # every generator a task draws from: PyTorchVideo's clip sampler draws from Python's random
    L.seed_everything(0, verbose=False)
    model, datamodule = build(task, data_root, **overrides)
    config = task_config(task)
    model.configure_optimizers = lambda: configured_optimizers(task, model)
    with tempfile.TemporaryDirectory(prefix=f"bench-{task}-") as tmp, quiet():
        trainer = L.Trainer(
            max_time=None if seconds is None else timedelta(seconds=seconds), max_epochs=epochs,
            accelerator=device.type, devices=1, gradient_clip_val=config["trainer"].get("gradient_clip_val"),
            limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp,
        )  # fmt: skip
        start = time.perf_counter()
        trainer.fit(model, datamodule=datamodule)
        fit_seconds = time.perf_counter() - start
        # what the suite runs before each validation (the config's PreciseBatchNorm, else the module's)
        if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            batches = precise_bn_batches(config) or model.precise_bn_batches
            PreciseBatchNorm(batches).on_validation_epoch_start(trainer, model)
        metrics = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    return {
        "test_metric": metrics[task_spec(task).headline],
        "steps": trainer.global_step,
        "epochs": round(trainer.global_step / max(1, trainer.num_training_batches), 2),
        "fit_s": fit_seconds,
        "train_samples": len(datamodule.datasets["train"]),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def configured_optimizers(task: str, model: torch.nn.Module):
    optimizer = make_optimizer(task, model.parameters())
    scheduler = make_scheduler(task, optimizer)
    return optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler}


class quiet:
    """Lightning's notices (GPU available, workers, ``max_time`` reached) and the task modules'
    logging outside a logger stay out of the bench's output."""

    def __enter__(self):
        self.warnings = warnings.catch_warnings()
        self.warnings.__enter__()
        warnings.simplefilter("ignore")
        self.logger = logging.getLogger("lightning.pytorch")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)
        self.warnings.__exit__(*exc)


# --- the report --------------------------------------------------------------------------------
#: why these references are the ones trained within the budget (markdown)
WHY = (
    "Each task names the references trained here (`Task.budget_references`): the one closest to ours in "
    "training speed (the models section's figures), the one most likely to beat ours within an equal budget, "
    "so the hardest test; a slower reference gets few steps in the budget and would be scored on what little "
    "it learnt. A task with no reference network has no row here: the plain script is its comparison."
)


def repeats_sentence(rows: dict[str, dict]) -> str:
    """How many times each side ran, and which run counts."""
    runs = max(len(f.get("time_s_ours_all", [])) for f in rows.values())
    if runs < 2:
        return ""
    return f"Each side ran {runs} times, in turn (ours, plain, then plain, ours), its shortest run kept. "


def markdown(results: dict[str, dict]) -> str:
    lines = ["## End to end and accuracy within an equal budget", ""]
    rows = {t: f for t, f in results.items() if "time_s_ours" in f}
    if rows:
        lines += [
            "`make train` (`cnnsuite fit` + its evaluation, in a fresh process, progress bar off) against a plain "
            "PyTorch script (`<task>.py` of `--plain DIR`, `benchmarks/plain/` in a source checkout; a fresh "
            "process with the same malloc settings: the same network, optimiser, scheduler, "
            "batch size and augmentation, the train split decoded once and held in memory as tensors), both for the "
            f"same epochs; the test metric of both on the same test split. {repeats_sentence(rows)}"
            f"Goals: time ratio ≤ {TIME_GOAL}, ours' metric at least the plain script's.",
            "",
            "| task | epochs (both) | ours s | plain s (training) | time ratio | metric | ours | plain | goal |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for task, f in rows.items():
            if "train_time_ratio_vs_plain" not in f:
                lines.append(
                    f"| {task} | {f['endtoend_epochs']} | {f['time_s_ours']:.1f} | — | — | {f['test_metric']} | "
                    f"{f['test_metric_ours']:.4f} | — | {f.get('plain', '')} |"
                )
                continue
            misses = []
            if not f["train_time_ratio_vs_plain"] <= TIME_GOAL:
                misses.append(f"time {f['train_time_ratio_vs_plain']:.2f}× > {TIME_GOAL}×")
            metric_ratio = ratio(f["test_metric_ours"], f["test_metric_plain"], f.get("test_metric_mode", "max"))
            if math.isnan(metric_ratio):  # a diverged side: every comparison with NaN is false
                misses.append("a metric that is no number")
            elif metric_ratio < 1:
                misses.append("metric worse than the plain script's")
            lines.append(
                f"| {task} | {f['endtoend_epochs']} | {f['time_s_ours']:.1f} | {f['time_s_plain']:.1f} "
                f"({f['plain_train_s']:.1f}) | **{f['train_time_ratio_vs_plain']:.2f}** | {f['test_metric']} | "
                f"{f['test_metric_ours']:.4f} | {f['test_metric_plain']:.4f} | "
                f"{'not reached: ' + '; '.join(misses) if misses else 'reached'} |"
            )
        lines += [
            "",
            "Where the time goal is missed, the difference is what the suite does that the plain script does not: "
            "decode (and augment) every sample on every epoch through its loader (see the pipeline section), "
            "validate and recompute BatchNorm statistics after each epoch, write checkpoints and logs, then "
            "evaluate `best.ckpt` with plots and a report. With few epochs the fixed costs (starting "
            "the process, checking files, building caches, evaluation) weigh more than in a full run. A metric "
            "worse than the plain script's after a short run is within run-to-run spread unless the gap is large: both "
            "start from other random weights and draw other augmentations.",
            "",
        ]
    budget = {t: f for t, f in results.items() if "budget_s" in f}
    if budget:
        lines += [
            "Within an equal training-time budget: ours and a reference network trained for the same wall-clock "
            "seconds (Lightning's `max_time`) through the same task module, datamodule, optimiser and scheduler, "
            "validation off, BatchNorm statistics recomputed as before any evaluation, then tested. Goal: ours at "
            f"least as accurate (ratio ≥ 1; the reference's / ours for a metric better lower). {WHY}",
            "",
            "| task | budget s | network | steps (epochs) | metric | value | ratio ours / reference | goal |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for task, f in budget.items():
            names = ["default"] + [k.removeprefix("test_metric_ratio_vs_") for k in f if
                                   k.startswith("test_metric_ratio_vs_") and not k.endswith("_vs_plain")]  # fmt: skip
            for name in names:
                value = f[f"test_metric_ratio_vs_{name}"] if name != "default" else None
                goal = "" if value is None else "reached" if value >= 1 else "**not reached**"
                shown = "**default**" if name == "default" else name
                lines.append(
                    f"| {task} | {f['budget_s']:.0f} | {shown} | {f[f'budget.{name}.steps']} "
                    f"({f[f'budget.{name}.epochs']:.2f}) | {f['test_metric']} | {f[f'budget.{name}.test_metric']:.4f} "
                    f"| {'' if value is None else f'**{value:.2f}**'} | {goal} |"
                )
        lines.append("")
    if not rows and not budget:
        lines.append(
            "Nothing measured for these tasks in this run (`--quick` compares only the tasks that declare "
            "`quick_endtoend_epochs` end to end, and those that declare `quick_budget` within a budget).\n"
        )
    return "\n".join(lines) + "\n"
