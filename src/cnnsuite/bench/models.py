"""Section ``models``: each task's default network against its references, and against the machine.

For every task, on one synthetic batch of the task's input shape and default batch size (the
values do not change the work a network does; the shape does):

- **training**: samples/s of a full step — forward, loss, backward, optimiser step — through
  the task module's own ``training_step`` and the config's optimiser, so that between ours
  and a reference only the network differs; peak memory of that step (weights, optimiser
  state and everything the step allocates); FLOPs per sample of the step
  (3 × the forward's, counted by ``torch.utils.flop_counter``) × samples/s as a share of the
  dense matmul rate measured in the same run. References are built by the same module with
  another backbone or detector; their timings take turns with ours, so a change of load falls
  on both sides of a ratio.
- **inference** of the default network (``inference_network()``, what prediction runs and
  export writes): latency of one sample and samples/s of a batch, eager, ``torch.compile``
  (not in ``--quick``; compile time counted apart) and ONNX Runtime (exported as ``cnnsuite
  export`` does it).
- **Lightning's overhead**, on the tasks that declare ``overhead``: the Trainer running the
  task module over a plain PyTorch loop (forward, cross-entropy, backward, same optimiser),
  from the same weights on the same batches held in memory as tensors, so the loader costs
  next to nothing in both.

The batch is the datamodule's :meth:`~cnnsuite.data.TaskDataModule.synthetic_batch`; the
references are the task's own (:attr:`cnnsuite.contract.Task.references`).

Ratios are ours / reference: ``train_throughput_ratio_vs_<ref>`` above 1 means ours trains
more samples per second; ``peak_memory_ratio_vs_<ref>`` below 1 means ours needs less memory;
``infer_*_speed_ratio_<engine>_vs_eager`` above 1 means the engine is faster;
``lightning_overhead_ratio`` is Lightning's epoch time over the plain loop's (goal ≤ 1.05).
"""

from __future__ import annotations

import copy
import logging
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch.profiler import ProfilerActivity, profile
from torch.utils.data import DataLoader, TensorDataset

from cnnsuite.use.export import OnnxNetwork, max_difference, output_names, output_tuple, trace

from ..timing import measure, measure_side_by_side, synchronizer
from ..training.recipe import ModelStep
from .core import BenchContext, build, count_flops, make_optimizer, run_tasks, task_spec


@dataclass(frozen=True)
class Settings:
    """How long each figure is measured: ``warmup`` steps, then ``repeats`` timings of at least
    ``min_seconds`` each (median kept); ``overhead_epochs`` timed epochs (after one warm-up
    epoch) of ``overhead_batches`` batches for Lightning's overhead."""

    warmup: int
    repeats: int
    min_seconds: float
    compile: bool
    overhead_epochs: int
    overhead_batches: int
    #: None: the task's configured batch size (tests shrink it)
    batch_size: int | None = None


FULL = Settings(warmup=2, repeats=5, min_seconds=0.3, compile=True, overhead_epochs=5, overhead_batches=20)
QUICK = Settings(warmup=1, repeats=2, min_seconds=0.15, compile=False, overhead_epochs=2, overhead_batches=10)
TINY = Settings(
    warmup=1, repeats=1, min_seconds=0.0, compile=False, overhead_epochs=1, overhead_batches=2, batch_size=4
)

#: a training step's FLOPs over its forward's: the backward computes a gradient for the input and
#: one for the weights, each about a forward's work. Counted rather than assumed, the backward
#: of a grouped convolution is overcounted by its group count (torch's counter takes the weight
#: gradient as dense), which would flatter depthwise networks (X3D, SSDlite) several times over.
TRAIN_FLOPS_PER_FORWARD = 3


def run(tasks: list[str], context: BenchContext) -> dict[str, dict]:
    return run_tasks("models", tasks, measure_task, context.pick(FULL, QUICK, TINY), context)


def measure_task(task: str, settings: Settings, context: BenchContext) -> dict:
    spec = task_spec(task)
    _, datamodule = build(task, context.data_root)
    size = settings.batch_size or datamodule.hparams.batch_size
    batch = datamodule.synthetic_batch(size, torch.Generator().manual_seed(0))
    steps = {name: TrainingStep(task, overrides, batch, context)
             for name, overrides in {"default": {}, **spec.references}.items()}  # fmt: skip
    sync = synchronizer(context.device)
    timings = measure_side_by_side(steps, settings.warmup, settings.repeats, settings.min_seconds, sync)
    trained = {name: step.figures(timings[name], context) for name, step in steps.items()}
    del steps  # the references' weights and optimiser states
    figures = {"batch_size": size, **trained.pop("default")}
    for name, reference in trained.items():
        figures |= {f"reference.{name}.{key}": value for key, value in reference.items()}
        figures[f"train_throughput_ratio_vs_{name}"] = figures["train_samples_per_s"] / reference["train_samples_per_s"]
        figures[f"peak_memory_ratio_vs_{name}"] = figures["train_peak_memory_mb"] / reference["train_peak_memory_mb"]
    figures |= inference_figures(task, batch, settings, context)
    if spec.overhead:
        figures |= lightning_overhead(task, size, settings, context)
    return figures


def as_input_of(batch, datamodule):
    """The batch laid out as this datamodule gives it: a reference that reads the same
    samples in another layout (3D bands as the channels of a 2D image, say: ``(N, 1, B, H, W)``
    becomes ``(N, B, H, W)``) is timed on the same values."""
    if not isinstance(batch[0], torch.Tensor) or datamodule.input_shape is None:
        return batch
    return (batch[0].reshape(len(batch[0]), *datamodule.input_shape), *batch[1:])


class TrainingStep(ModelStep):
    """One full training step of the task's model (with ``overrides``: a reference) on
    ``batch``, through the module's ``training_step`` and the config's optimiser; calling it
    runs the step. ``autocast``: the forward and loss under ``torch.autocast`` to that dtype,
    as Lightning's ``*-mixed`` precisions run them; ``compile``: each network the module holds
    (its children with parameters: a classifier's backbone and head, a detector) compiled in
    place, whichever of them its ``training_step`` calls — the module's own ``forward`` may be
    none of them."""

    def __init__(
        self,
        task: str,
        overrides: dict,
        batch,
        context: BenchContext,
        autocast: torch.dtype | None = None,
        compile: bool = False,
    ) -> None:
        torch.manual_seed(0)
        model, datamodule = build(task, context.data_root, **overrides)
        model.to(context.device).train()
        if compile:
            for network in model.children():
                if any(True for _ in network.parameters()):
                    network.compile()
        batch = move_data_to_device(as_input_of(batch, datamodule), context.device)
        super().__init__(model, batch, make_optimizer(task, model.parameters()), autocast)

    def figures(self, timing: dict, context: BenchContext) -> dict:
        """Samples/s from ``timing`` (seconds per step), peak memory, FLOPs and utilisation."""
        size = len(self.batch[0])
        samples_per_s = size / timing["median"]
        with torch.no_grad():
            flops = TRAIN_FLOPS_PER_FORWARD * count_flops(lambda: self.model.training_step(self.batch, 0)) / size
        return {
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "train_samples_per_s": samples_per_s,
            "train_step_s": timing["median"],
            "train_step_s_all": timing["all"],
            "train_peak_memory_mb": peak_memory_bytes(self, self.model, self.optimizer, context.device) / 1e6,
            "train_flops_per_sample": flops,
            "train_utilisation_pct": 100 * flops * samples_per_s / (context.matmul_gflops * 1e9),
        }


def peak_memory_bytes(step, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> int:
    """The most memory one training ``step`` holds at once: on a GPU the allocator's own peak;
    on the CPU, what the model and optimiser hold before it (weights, buffers, optimiser state;
    gradients are freed first) plus the highest running total of the step's allocations and
    frees, in order, as ``torch.profiler`` records them (a process's RSS is too coarse: the
    C allocator keeps freed pages)."""
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in (*model.parameters(), *model.buffers(), *state)}  # fmt: skip
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    changes = sorted(
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
    )
    total = peak = 0
    for _, nbytes in changes:
        total += nbytes
        peak = max(peak, total)
    return sum(storages.values()) + peak


def inference_figures(task: str, batch, settings: Settings, context: BenchContext) -> dict:
    """Latency of one sample and samples/s of the batch through the default model's
    ``inference_network()``: eager, ``torch.compile`` and ONNX Runtime."""
    torch.manual_seed(0)
    model, _ = build(task, context.data_root)
    model.to(context.device).eval()
    network = model.inference_network().eval()
    full, single = network_batch(model, batch, context.device), network_batch(model, batch, context.device, 1)
    size, sync = len(full), synchronizer(context.device)
    figures = {"forward_flops_per_sample": count_flops(lambda: network(full)) / size}

    def timed(engine: str, run) -> None:
        with torch.no_grad():
            one = measure(lambda: run(single), settings.warmup, settings.repeats, settings.min_seconds, sync)
            many = measure(lambda: run(full), settings.warmup, settings.repeats, settings.min_seconds, sync)
        figures[f"infer_latency_ms_{engine}"] = one["median"] * 1e3
        figures[f"infer_samples_per_s_{engine}"] = size / many["median"]
        if engine != "eager":
            figures[f"infer_single_speed_ratio_{engine}_vs_eager"] = (
                figures["infer_latency_ms_eager"] / (figures[f"infer_latency_ms_{engine}"])
            )
            figures[f"infer_batch_speed_ratio_{engine}_vs_eager"] = (
                figures[f"infer_samples_per_s_{engine}"] / figures["infer_samples_per_s_eager"]
            )

    timed("eager", network)
    figures["infer_utilisation_pct_eager"] = (
        100 * figures["forward_flops_per_sample"] * figures["infer_samples_per_s_eager"] / (context.matmul_gflops * 1e9)
    )
    if settings.compile:
        compiled = torch.compile(network)
        start = time.perf_counter()
        with torch.no_grad():  # both shapes compiled before timing: the batch size is dynamic after the second
            compiled(single), compiled(full)
        figures["compile_seconds"] = time.perf_counter() - start
        timed("compile", compiled)
    if context.device.type == "cpu":  # ONNX Runtime runs on the CPU here: no comparison with a GPU's eager
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            onnx = export_onnx(task, model, network, full, Path(folder) / "model.onnx")
            figures["onnx_export_seconds"] = time.perf_counter() - start
            with torch.no_grad():  # a fast file that computes something else would be no figure
                pairs = zip(output_tuple(network(full)), onnx(full), strict=True)
                figures["onnx_max_abs_diff"] = max(max_difference(e, o) for e, o in pairs)
            timed("onnxruntime", onnx)
    return figures


def network_batch(model, batch, device: torch.device, size: int | None = None) -> torch.Tensor:
    """The first ``size`` samples (default all) of ``batch`` as the model's
    ``inference_network()`` takes them, on ``device``: the loader's tensor, or a detector's
    images of any size resized, normalised and padded by its own transform."""
    inputs = move_data_to_device(batch[0][:size], device)
    if isinstance(inputs, torch.Tensor):
        return inputs
    with torch.no_grad():
        return model.batch_inputs(inputs)


def export_onnx(task: str, model, network: torch.nn.Module, batch: torch.Tensor, path: Path):
    """``network`` exported as ``cnnsuite export`` exports it (torch.export with the task's free
    axes, then the dynamo ONNX exporter), loaded into ONNX Runtime."""
    with torch.no_grad():
        names = output_names(model, len(output_tuple(network(batch[:1]))))
    program = trace(network, batch, f"{task}'s default model", model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(program, dynamo=True, input_names=["input"], output_names=names,
                                         verbose=False)  # fmt: skip
    onnx_program.save(path, external_data=False)
    return OnnxNetwork(path)


class EpochClock(L.Callback):
    """The time at each training epoch's start and at the end of training."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.marks.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        self.marks.append(time.perf_counter())


def lightning_overhead(task: str, size: int, settings: Settings, context: BenchContext) -> dict:
    """Epoch time of Lightning's Trainer running the task module (its metrics and logging;
    validation, checkpoints, loggers and progress bar off, so both loops do the same training
    work) over a plain PyTorch loop, same initial weights, same optimiser, same batches held
    in memory. A third loop, plain but through the module's ``training_step`` and epoch-end
    metrics, splits the overhead into the task module's share and the Trainer's.

    The plain loops run before and after the Trainer (the medians take both, so a change of
    load during the run weighs on both sides); the first epoch of each run is a warm-up and
    is not counted; the Trainer's start-up (``fit`` less its epochs) is reported apart, as it
    does not grow with a run."""
    torch.manual_seed(0)
    model, datamodule = build(task, context.data_root)
    count = settings.overhead_batches * size
    data = TensorDataset(*datamodule.synthetic_batch(count, torch.Generator().manual_seed(0)))
    epochs = settings.overhead_epochs + 1

    def loader() -> DataLoader:
        return DataLoader(data, batch_size=size, shuffle=True, generator=torch.Generator().manual_seed(0))

    def plain(through_module: bool) -> list[float]:
        twin = copy.deepcopy(model).to(context.device)
        optimizer = make_optimizer(task, twin.parameters())
        return plain_loop(twin, loader(), optimizer, epochs, context.device, through_module)[1:]

    plain_epochs, module_epochs = plain(False), plain(True)
    clock = EpochClock()
    trained = copy.deepcopy(model)
    trained.configure_optimizers = lambda: make_optimizer(task, trained.parameters())
    quiet = logging.getLogger("lightning.pytorch")  # "GPU available: False ...", tips
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        trainer = L.Trainer(
            max_epochs=epochs, accelerator=context.device.type, devices=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
            callbacks=[clock], default_root_dir=folder,
        )  # fmt: skip
        start = time.perf_counter()
        trainer.fit(trained, train_dataloaders=loader())
        total = time.perf_counter() - start
    quiet.setLevel(level)
    plain_epochs, module_epochs = plain_epochs + plain(False), module_epochs + plain(True)
    lightning_epochs = [b - a for a, b in zip(clock.marks, clock.marks[1:], strict=False)]
    plain_s, module_s = statistics.median(plain_epochs), statistics.median(module_epochs)
    lightning_s = statistics.median(lightning_epochs[1:])
    return {
        "overhead_batches_per_epoch": settings.overhead_batches,
        "plain_loop_epoch_s": plain_s,
        "plain_module_loop_epoch_s": module_s,
        "lightning_epoch_s": lightning_s,
        "lightning_fit_startup_s": total - sum(lightning_epochs),
        "lightning_overhead_ratio": lightning_s / plain_s,
        # what the Trainer adds to each step (hooks, closure, progress tracking): a fixed cost,
        # so its share of an epoch falls as the network's step grows
        "trainer_ms_per_step": 1e3 * (lightning_s - module_s) / settings.overhead_batches,
        "plain_ms_per_step": 1e3 * plain_s / settings.overhead_batches,
        "task_module_overhead_ratio": module_s / plain_s,
        "trainer_overhead_ratio": lightning_s / module_s,
    }


def plain_loop(
    model, loader: DataLoader, optimizer, epochs: int, device: torch.device, through_module: bool = False
) -> list[float]:
    """Seconds of each epoch of forward, cross-entropy, backward and optimiser step; with
    ``through_module``, the module's ``training_step`` (loss and metrics) and its epoch-end
    metrics instead of the bare forward and cross-entropy."""
    model.train()
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for index, (x, y) in enumerate(loader):
            x, y = x.to(device), y.to(device)
            if through_module:
                loss = model.training_step((x, y), index)
            else:
                loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if through_module:
            model.on_train_epoch_end()
        times.append(time.perf_counter() - start)
    return times


# --- the report ------------------------------------------------------------------------------
def reference_names(figures: dict) -> list[str]:
    """The references a task was measured against, in the order it declares them."""
    prefix = "train_throughput_ratio_vs_"
    return [key.removeprefix(prefix) for key in figures if key.startswith(prefix)]


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}g}" if abs(value) < 10**digits else f"{value:,.0f}"


def markdown(results: dict[str, dict]) -> str:
    lines = [
        "## Models",
        "",
        "One synthetic batch of each task's input shape and default batch size; medians of "
        f"{FULL.repeats} timings ({QUICK.repeats} with --quick) after warm-up, one process. Training: a full step "
        "(forward, loss, backward, optimiser) through the task module's own `training_step`, so only the "
        "network differs from a reference; the timings of ours and its references take turns. "
        "Ratio: ours / reference (throughput above 1: ours is faster; "
        "memory below 1: ours needs less). Utilisation: training FLOPs per sample (3 × the forward's) × samples/s "
        "over the matmul rate.",
        "",
        "| task | network | params | train samples/s | throughput ratio | peak memory MB | memory ratio | "
        "train MFLOP/sample | utilisation % |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    slower, compared = [], []
    for task, f in results.items():
        compared += [task] if reference_names(f) else []
        lines.append(
            f"| {task} | **default** | {f['parameters']:,} | {_fmt(f['train_samples_per_s'])} | | "
            f"{_fmt(f['train_peak_memory_mb'])} | | {_fmt(f['train_flops_per_sample'] / 1e6)} | "
            f"{_fmt(f['train_utilisation_pct'], 2)} |"
        )
        for name in reference_names(f):
            r = {k.split(".", 2)[2]: v for k, v in f.items() if k.startswith(f"reference.{name}.")}
            ratio = f[f"train_throughput_ratio_vs_{name}"]
            if ratio < 1:
                slower.append(f"{task} vs {name} ({ratio:.2f}×)")
            lines.append(
                f"| | {name} | {r['parameters']:,} | {_fmt(r['train_samples_per_s'])} | {ratio:.2f}× | "
                f"{_fmt(r['train_peak_memory_mb'])} | {f[f'peak_memory_ratio_vs_{name}']:.2f}× | "
                f"{_fmt(r['train_flops_per_sample'] / 1e6)} | {_fmt(r['train_utilisation_pct'], 2)} |"
            )
    lines.append("")
    alone = [task for task in results if task not in compared]
    verdict = f"**not reached** for {', '.join(slower)}." if slower else f"reached for {', '.join(compared)}."
    lines.append(
        "Goal: each default model at least as fast per sample as every reference — "
        + (verdict if compared else "no task measured has a reference.")
        + (f" No reference to compare: {', '.join(alone)}." if alone and compared else "")
    )
    lines += [
        "",
        "Inference of the default model's `inference_network()` (what prediction runs and export writes): "
        "latency of one sample, samples/s of a batch; ONNX Runtime on the file `cnnsuite export` would write; "
        "speed ratio over eager (above 1: faster). torch.compile's compile time is counted apart.",
        "",
        "| task | eager ms | eager samples/s | compile ms | compile samples/s | compile s | ONNX RT ms | "
        "ONNX RT samples/s | ONNX RT speed ratio (1 / batch) | eager utilisation % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for task, f in results.items():
        onnx = (
            f"{f['infer_single_speed_ratio_onnxruntime_vs_eager']:.2f}× / "
            f"{f['infer_batch_speed_ratio_onnxruntime_vs_eager']:.2f}×"
            if "infer_batch_speed_ratio_onnxruntime_vs_eager" in f
            else "—"
        )
        lines.append(
            f"| {task} | {_fmt(f['infer_latency_ms_eager'])} | {_fmt(f['infer_samples_per_s_eager'])} | "
            f"{_fmt(f.get('infer_latency_ms_compile'))} | {_fmt(f.get('infer_samples_per_s_compile'))} | "
            f"{_fmt(f.get('compile_seconds'))} | {_fmt(f.get('infer_latency_ms_onnxruntime'))} | "
            f"{_fmt(f.get('infer_samples_per_s_onnxruntime'))} | {onnx} | {_fmt(f['infer_utilisation_pct_eager'], 2)} |"
        )
    if not any("compile_seconds" in f for f in results.values()):
        lines += ["", "torch.compile is not measured with --quick."]
    overhead = {task: f for task, f in results.items() if "lightning_overhead_ratio" in f}
    if overhead:
        lines += [
            "",
            "Lightning's overhead: the Trainer running the task module (metrics and logging included) over a plain "
            "PyTorch loop (forward, cross-entropy, backward, optimiser), same weights, same batches held in memory; "
            "median epoch after a warm-up epoch, the plain loops run before and after the Trainer. The middle loop is "
            "plain but goes through the module's `training_step` and epoch-end metrics: it splits the overhead into "
            "the task module's share and the Trainer's.",
            "",
            "| task | batches/epoch | plain s/epoch | plain + module s/epoch | Lightning s/epoch | **ratio** | "
            "module share | Trainer share | Trainer ms/step | Trainer start-up s | goal ≤ 1.05 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for task, f in overhead.items():
            ratio = f["lightning_overhead_ratio"]
            lines.append(
                f"| {task} | {f['overhead_batches_per_epoch']} | {_fmt(f['plain_loop_epoch_s'])} | "
                f"{_fmt(f['plain_module_loop_epoch_s'])} | {_fmt(f['lightning_epoch_s'])} | {ratio:.3f} | "
                f"{f['task_module_overhead_ratio']:.3f} | {f['trainer_overhead_ratio']:.3f} | "
                f"{f['trainer_ms_per_step']:.2f} | {_fmt(f['lightning_fit_startup_s'])} | "
                f"{'reached' if ratio <= 1.05 else '**not reached**'} |"
            )
        missed = {task: f for task, f in overhead.items() if f["lightning_overhead_ratio"] > 1.05}
        if missed:
            steps = "; ".join(f"{task}, {f['trainer_ms_per_step']:.2f} ms on a {f['plain_ms_per_step']:.1f} ms step"
                              for task, f in missed.items())  # fmt: skip
            lines += ["", "Where the goal is missed: the Trainer's cost per step (its hooks, the optimiser closure, "
                      f"progress tracking) does not grow with the network, so it weighs most on the smallest: {steps}. "
                      "The task module's share is its per-step metrics and loss means."]  # fmt: skip
    seconds = sum(f["section_seconds"] for f in results.values())
    lines += ["", f"Measured in {seconds:.0f} s (" + ", ".join(
        f"{task} {f['section_seconds']:.0f} s" for task, f in results.items()) + ").", ""]  # fmt: skip
    return "\n".join(lines)
