"""Section ``recipe``: what each training setting buys on this machine, task by task.

A recipe is how a task trains on a device: the precision of its arithmetic, the memory layout
of its activations, whether its network is compiled. Each is a setting (``trainer.precision``,
``model.channels_last`` where the task module has it), and which way is faster depends on the
machine — a CPU with AVX512-BF16 or AMX runs bfloat16 convolutions in hardware, one without
emulates them; a GPU's tensor cores want bfloat16 and channels-last — and on the network. So
it is measured per task, on the device the bench runs on, before a config is changed.

For every task, one full training step of its default model on one synthetic batch (the
``models`` section's :class:`~cnnsuite.bench.models.TrainingStep`: forward, loss, backward,
optimiser), in variants whose timings take turns:

- ``configured``: the task's config as it is (fp32);
- ``bf16``: the forward and loss under ``torch.autocast`` to bfloat16, as Lightning's
  ``trainer.precision: bf16-mixed`` runs a step;
- ``flipped``: ``model.channels_last`` the other way (tasks whose module has it), and
  ``bf16_flipped``: both;
- ``compile``: each network the module holds through ``torch.compile`` (full runs only; its
  compile time is counted apart, in ``compile_seconds``).

Figures per task: ``train_samples_per_s_<variant>``; ``speed_ratio_<variant>`` over
``configured`` (above 1: faster); ``finite_weights_<variant>``, whether its weights are still
finite after its timed steps (a step whose gradients overflow, or that hits a faulty kernel,
poisons them: such a variant is never the fastest); ``fastest``; ``bf16_loss_rel_diff``, the
first step's loss under bf16 against fp32 from the same weights on the same batch (a faster
step that computes something else is no recipe); and ``eval_speed_ratio_bf16``, the forward
that validation and prediction run (``inference_network()`` in eval mode) under bf16 over fp32.

A ratio says what a setting buys per step, not whether training keeps its accuracy with it: a
setting enters a task's config once its seeds reach the same metric with it
(``cnnsuite fit --seeds``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..timing import measure_side_by_side, synchronizer
from ..training.recipe import bf16_supported, relative
from .core import BenchContext, build, run_tasks
from .models import TrainingStep, _fmt, network_batch


@dataclass(frozen=True)
class Settings:
    """``warmup`` steps, then ``repeats`` timings of at least ``min_seconds`` each (median
    kept); ``compile``: whether the compiled variant runs; ``batch_size`` None: the config's."""

    warmup: int
    repeats: int
    min_seconds: float
    compile: bool
    batch_size: int | None = None


FULL = Settings(warmup=2, repeats=5, min_seconds=0.3, compile=True)
QUICK = Settings(warmup=1, repeats=3, min_seconds=0.2, compile=False)
TINY = Settings(warmup=1, repeats=1, min_seconds=0.0, compile=False, batch_size=2)

#: the variants of the markdown table, in its order
VARIANTS = ("configured", "bf16", "flipped", "bf16_flipped", "compile")


def run(tasks: list[str], context: BenchContext) -> dict[str, dict]:
    return run_tasks("recipe", tasks, measure_task, context.pick(FULL, QUICK, TINY), context)


def measure_task(task: str, settings: Settings, context: BenchContext) -> dict:
    model, datamodule = build(task, context.data_root)
    size = settings.batch_size or datamodule.hparams.batch_size
    batch = datamodule.synthetic_batch(size, torch.Generator().manual_seed(0))
    layout = model.hparams.get("channels_last")
    bf16 = bf16_supported(context.device)
    steps = variant_steps(task, batch, context, layout, settings.compile, bf16)
    figures: dict = {"batch_size": size, "channels_last": layout}
    if bf16:
        with torch.no_grad():
            fp32_loss, bf16_loss = (float(steps[name].loss()) for name in ("configured", "bf16"))
        figures["bf16_loss_rel_diff"] = relative(bf16_loss, fp32_loss)
    if "compile" in steps:
        figures["compile_seconds"] = timed_once(steps["compile"], synchronizer(context.device))
    timings = measure_side_by_side(
        steps, settings.warmup, settings.repeats, settings.min_seconds, synchronizer(context.device)
    )
    speeds = {name: size / timing["median"] for name, timing in timings.items()}
    figures |= {f"train_samples_per_s_{name}": speed for name, speed in speeds.items()}
    figures |= {f"speed_ratio_{name}": speed / speeds["configured"] for name, speed in speeds.items()}
    finite = {name: all(bool(torch.isfinite(p).all()) for p in step.model.parameters()) for name, step in steps.items()}
    figures |= {f"finite_weights_{name}": ok for name, ok in finite.items()}
    figures["fastest"] = max((name for name in speeds if finite[name]), key=speeds.get, default=None)
    return figures | (eval_ratio(steps["configured"].model, batch, settings, context) if bf16 else {})


def variant_steps(
    task: str, batch, context: BenchContext, layout: bool | None, compile: bool, bf16: bool = True
) -> dict[str, TrainingStep]:
    """The training step of each variant, from the same initial weights: ``layout`` is the
    configured ``model.channels_last`` (None: the module has no such setting, nothing flips);
    the bf16 variants only where the device has bfloat16."""

    def step(autocast=None, flip=False, compiled=False) -> TrainingStep:
        overrides = {"model": {"channels_last": not layout}} if flip else {}
        return TrainingStep(task, overrides, batch, context, autocast=autocast, compile=compiled)

    steps = {"configured": step()} | ({"bf16": step(torch.bfloat16)} if bf16 else {})
    if layout is not None:
        steps["flipped"] = step(flip=True)
        if bf16:
            steps["bf16_flipped"] = step(torch.bfloat16, flip=True)
    if compile:
        steps["compile"] = step(compiled=True)
    return steps


def eval_ratio(model, batch, settings: Settings, context: BenchContext) -> dict:
    """The eval-mode forward of ``inference_network()`` under bf16 autocast over fp32."""
    model.eval()
    network, inputs = model.inference_network().eval(), network_batch(model, batch, context.device)

    def forward(autocast: bool):
        def run() -> None:
            with torch.no_grad(), torch.autocast(context.device.type, dtype=torch.bfloat16, enabled=autocast):
                network(inputs)

        return run

    timings = measure_side_by_side({"fp32": forward(False), "bf16": forward(True)}, settings.warmup,
                                   settings.repeats, settings.min_seconds, synchronizer(context.device))  # fmt: skip
    return {"eval_speed_ratio_bf16": timings["fp32"]["median"] / timings["bf16"]["median"]}


def timed_once(step: TrainingStep, sync) -> float:
    """Seconds of ``step``'s first call: the compilation, and one step."""
    start = time.perf_counter()
    step()
    if sync:
        sync()
    return time.perf_counter() - start


def ratio_cell(figures: dict, variant: str) -> str:
    """A variant's speed ratio, flagged where its weights did not stay finite."""
    ratio = figures.get(f"speed_ratio_{variant}")
    if ratio is None:
        return "—"
    return f"{ratio:.2f}×" + ("" if figures[f"finite_weights_{variant}"] else " (weights non-finite)")


def markdown(results: dict[str, dict]) -> str:
    lines = [
        "## Recipe",
        "",
        "What each training setting buys per step on this device, per task: one full training step of the default "
        "model (forward, loss, backward, optimiser) on one synthetic batch, the variants' timings taking turns. "
        "Speed ratios over the task's configured step (fp32; above 1: faster). bf16: forward and loss under "
        "`torch.autocast` to bfloat16 (Lightning's `bf16-mixed`); flipped: `model.channels_last` the other way. "
        "Non-finite: the variant's weights were no longer finite after its timed steps (never the fastest). Loss "
        "difference: the first step's loss under bf16 against fp32, same weights and batch. Eval bf16: the "
        "eval-mode forward (validation, prediction) under bf16 over fp32. A ratio is speed only: a setting enters "
        "a config once the task's seeds keep their metric with it.",
        "",
        "| task | channels_last | fp32 samples/s | bf16 | flipped | bf16 + flipped | compile | fastest | "
        "bf16 loss difference | eval bf16 |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for task, f in results.items():
        cells = " | ".join(ratio_cell(f, name) for name in VARIANTS[1:])
        layout = {True: "on", False: "off", None: "—"}[f["channels_last"]]
        loss = "—" if "bf16_loss_rel_diff" not in f else f"{f['bf16_loss_rel_diff']:.1e}"
        evaluation = "—" if "eval_speed_ratio_bf16" not in f else f"{f['eval_speed_ratio_bf16']:.2f}×"
        lines.append(
            f"| {task} | {layout} | {_fmt(f['train_samples_per_s_configured'])} | {cells} | {f['fastest'] or '—'} | "
            f"{loss} | {evaluation} |"
        )
    if not any("compile_seconds" in f for f in results.values()):
        lines += ["", "torch.compile is not measured with --quick."]
    return "\n".join(lines) + "\n"
