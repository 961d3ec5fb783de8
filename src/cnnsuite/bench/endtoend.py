"""Section ``endtoend``: what a user waits for, and what they get for it.

**End to end.** ``make train`` — ``cnnsuite fit --config tasks/<task>/config.yaml`` in a fresh
process, progress bar off, the evaluation of ``best.ckpt`` it runs after fit included, the
embedded default already generated — against the plain PyTorch script of the task
(``benchmarks/plain/<task>.py``, also a fresh process): the same network built from the same
config, the same optimiser, scheduler, batch size and augmentation intent, the same train
split decoded once and held in memory as tensors, tested on the same test split with the
same torchmetrics metric. Both run the same pinned number of epochs (:data:`FULL`: the full
default where it fits the bench's time, fewer elsewhere; a cosine schedule's length
follows the epochs on both sides). ``train_time_ratio_vs_plain`` is the wall time of ours over
the plain script's (goal ≤ 1.5); ``test_metric_ours`` and ``test_metric_plain`` sit side by
side (goal: ours at least as good).

**Equal training-time budget.** The default network and a reference network of the task
(see :data:`FULL` ``references`` for which, and :func:`markdown` for why), each trained for
the same wall-clock seconds (Lightning's ``max_time``) through the same task module, Trainer,
datamodule and config — validation off so the whole budget trains — its BatchNorm statistics
recomputed as the suite does before it evaluates, then tested on the test split:
``test_metric_ratio_vs_<reference>`` = ours / the reference's, beside the raw metrics and the
epochs and steps each got.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch

from .core import BenchContext, build, make_optimizer, make_scheduler, precise_bn_batches, task_config

#: the metric each task is judged by (the first of its README's headline metrics)
HEADLINE = {"recognition2d": "test/acc", "localization2d": "test/loc_acc", "detection2d": "test/map",
            "biomedical3d": "test/acc", "video3d": "test/acc", "multispectral3d": "test/acc"}  # fmt: skip
#: where the plain scripts live (a source checkout; an installed wheel has no benchmarks/)
PLAIN = Path(__file__).resolve().parents[3] / "benchmarks" / "plain"


@dataclass(frozen=True)
class Settings:
    """``epochs``: task → epochs both sides of the end-to-end comparison run (a task not
    named is not compared end to end); ``limit_batches``: batches per epoch (tests);
    ``seconds``: the equal training-time budget per network; ``references``: task → the
    reference networks (names of :data:`cnnsuite.bench.models.REFERENCES`) trained within it."""

    epochs: dict[str, int]
    seconds: float
    references: dict[str, tuple[str, ...]] = field(default_factory=dict)
    limit_batches: int | None = None


#: ~12 minutes on the 2-core reference machine. Epochs: recognition2d's full default (30);
#: elsewhere as many as fit. References: the closest to ours in training speed (the one most
#: likely to beat it within an equal budget), one per task.
FULL = Settings(
    epochs={
        "recognition2d": 30,
        "localization2d": 3,
        "detection2d": 1,
        "biomedical3d": 4,
        "video3d": 2,
        "multispectral3d": 4,
    },  # fmt: skip
    seconds=30.0,
    references={
        "localization2d": ("torchvision_resnet18",),
        "detection2d": ("ssdlite320_mobilenet_v3_large",),
        "biomedical3d": ("monai_densenet121",),
        "video3d": ("pytorchvideo_resnet50_stem16",),
        "multispectral3d": ("torchvision_resnet18_bands_as_channels",),
    },
)
QUICK = Settings(epochs={"recognition2d": 5}, seconds=10.0, references={"localization2d": ("torchvision_resnet18",)})
TINY = Settings(epochs={"recognition2d": 1}, seconds=1.0, limit_batches=2)


def run(tasks: list[str], context: BenchContext) -> dict[str, dict]:
    settings = context.pick(FULL, QUICK, TINY)
    data_root = Path(context.data_root).resolve()
    results: dict[str, dict] = {}
    for task in tasks:
        figures: dict = {"test_metric": HEADLINE[task]}
        if task in settings.epochs or settings.references.get(task):
            build(task, data_root)[1].prepare_data()  # the embedded default, generated once, outside the timings
        if task in settings.epochs:
            figures |= end_to_end(task, settings.epochs[task], data_root, settings.limit_batches)
        if settings.references.get(task):
            figures |= equal_budget(task, settings, data_root, context.device)
        if len(figures) > 1:
            results[task] = figures
    return results


# --- end to end ----------------------------------------------------------------------------
def end_to_end(task: str, epochs: int, data_root: Path, limit_batches: int | None) -> dict:
    """Wall time and test metric of ``cnnsuite fit`` (+ its evaluation) and of the plain script,
    each in its own process, for ``epochs`` epochs."""
    metric = HEADLINE[task]
    figures: dict = {"endtoend_epochs": epochs}
    with tempfile.TemporaryDirectory(prefix=f"bench-{task}-") as tmp:
        args = ["--trainer.max_epochs", str(epochs), "--trainer.default_root_dir", f"{tmp}/run",
                "--trainer.enable_progress_bar", "false", "--data.data_root", str(data_root)]  # fmt: skip
        if limit_batches:
            args += ["--trainer.limit_train_batches", str(limit_batches)]
        config = Path(importlib.import_module(f"cnnsuite.tasks.{task}").__file__).parent / "config.yaml"
        seconds = timed([sys.executable, "-m", "cnnsuite", "fit", "--config", str(config), *args], f"{tmp}/ours.log")
        ours = json.loads(Path(f"{tmp}/run/version_0/evaluation/metrics.json").read_text())
        figures |= {"time_s_ours": seconds, "test_metric_ours": ours[metric]}
        if not (PLAIN / f"{task}.py").is_file():
            return figures | {"plain": f"not measured: {PLAIN / task}.py is missing (not a source checkout)"}
        plain_args = ["--epochs", str(epochs), "--data_root", str(data_root), "--out", f"{tmp}/plain.json"]
        if limit_batches:
            plain_args += ["--limit_batches", str(limit_batches)]
        seconds = timed([sys.executable, "-m", f"benchmarks.plain.{task}", *plain_args], f"{tmp}/plain.log",
                        cwd=PLAIN.parents[1])  # fmt: skip
        plain = json.loads(Path(f"{tmp}/plain.json").read_text())
    return figures | {
        "time_s_plain": seconds,
        "plain_train_s": plain["train_seconds"],
        "plain_data_s": plain["data_seconds"],
        "train_time_ratio_vs_plain": figures["time_s_ours"] / seconds,
        "test_metric_plain": plain[metric],
        "test_metric_ratio_vs_plain": ratio(figures["test_metric_ours"], plain[metric]),
    }


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


def ratio(ours: float, reference: float) -> float:
    """ours / reference; a reference that scored 0 makes the ratio infinite (or 1 if both did)."""
    if reference == 0:
        return 1.0 if ours == 0 else math.inf
    return ours / reference


# --- equal training-time budget --------------------------------------------------------------
def equal_budget(task: str, settings: Settings, data_root: Path, device: torch.device) -> dict:
    from .models import REFERENCES

    ours = train_within(task, {}, settings.seconds, data_root, device)
    figures = {"budget_s": settings.seconds, **{f"budget.default.{k}": v for k, v in ours.items()}}
    for name in settings.references[task]:
        reference = train_within(task, REFERENCES[task][name], settings.seconds, data_root, device)
        figures |= {f"budget.{name}.{k}": v for k, v in reference.items()}
        figures[f"test_metric_ratio_vs_{name}"] = ratio(ours["test_metric"], reference["test_metric"])
    return figures


def train_within(task: str, overrides: dict, seconds: float, data_root: Path, device: torch.device) -> dict:
    """The task's model (with ``overrides``: a reference) trained for ``seconds`` of wall clock
    by the Trainer as the config sets it up (optimiser, scheduler, gradient clipping), with no
    validation; BatchNorm statistics recomputed as before an evaluation; then tested."""
    from cnnsuite.callbacks import PreciseBatchNorm

    torch.manual_seed(0)
    model, datamodule = build(task, data_root, **overrides)
    config = task_config(task)
    model.configure_optimizers = lambda: configured_optimizers(task, model)
    with tempfile.TemporaryDirectory(prefix=f"bench-{task}-") as tmp, quiet():
        trainer = L.Trainer(
            max_time=timedelta(seconds=seconds), max_epochs=-1, accelerator=device.type, devices=1,
            gradient_clip_val=config["trainer"].get("gradient_clip_val"), limit_val_batches=0,
            num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=tmp,
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
        "test_metric": metrics[HEADLINE[task]],
        "steps": trainer.global_step,
        "epochs": round(trainer.global_step / max(1, trainer.num_training_batches), 2),
        "fit_s": fit_seconds,
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
#: why each reference was picked for the equal budget (markdown)
WHY = (
    "One reference per task, the one closest to ours in training speed (the models section's figures): the "
    "one most likely to beat ours within an equal budget, so the hardest test; the slower references "
    "(Faster R-CNN, MONAI ResNet-18, X3D) get a few dozen steps in the budget and would be scored on "
    "what little they learnt, and the whole section has to fit about 12 minutes. recognition2d has no "
    "reference network (issue 13 asks for none): the plain script is its comparison, and the models section "
    "measures Lightning's overhead on it."
)


def markdown(results: dict[str, dict]) -> str:
    lines = ["## End to end and accuracy within an equal budget", ""]
    rows = {t: f for t, f in results.items() if "time_s_ours" in f}
    if rows:
        lines += [
            "`make train` (`cnnsuite fit` + its evaluation, in a fresh process, progress bar off) against a plain "
            "PyTorch script (`benchmarks/plain/<task>.py`, a fresh process: the same network, optimiser, scheduler, "
            "batch size and augmentation, the train split decoded once and held in memory as tensors), both for the "
            "same epochs; the test metric of both on the same test split. Goals: time ratio ≤ 1.5, ours' metric at "
            "least the plain script's.",
            "",
            "| task | epochs (both) | ours s | plain s (training) | time ratio | metric | ours | plain | goal |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for task, f in rows.items():
            if "time_s_plain" not in f:
                lines.append(
                    f"| {task} | {f['endtoend_epochs']} | {f['time_s_ours']:.1f} | — | — | {f['test_metric']} | "
                    f"{f['test_metric_ours']:.4f} | — | {f.get('plain', '')} |"
                )
                continue
            misses = []
            if f["train_time_ratio_vs_plain"] > 1.5:
                misses.append(f"time {f['train_time_ratio_vs_plain']:.2f}× > 1.5×")
            if f["test_metric_ours"] < f["test_metric_plain"]:
                misses.append("metric below the plain script's")
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
            "below the plain script's after a short run is within run-to-run spread unless the gap is large: both "
            "start from other random weights and draw other augmentations.",
            "",
        ]
    budget = {t: f for t, f in results.items() if "budget_s" in f}
    if budget:
        lines += [
            "Within an equal training-time budget: ours and a reference network trained for the same wall-clock "
            "seconds (Lightning's `max_time`) through the same task module, datamodule, optimiser and scheduler, "
            "validation off, BatchNorm statistics recomputed as before any evaluation, then tested. Goal: ours at "
            f"least as accurate (ratio ≥ 1). {WHY}",
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
        lines.append("Nothing measured for these tasks in this run (`--quick` compares recognition2d end to end and "
                     "localization2d within a budget).\n")  # fmt: skip
    return "\n".join(lines) + "\n"
