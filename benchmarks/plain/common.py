"""What the plain PyTorch scripts share: the task's own network, optimiser and scheduler from its
config, the data decoded once into tensors, an epoch loop, batch-level augmentation on tensors.

These scripts are the reference ``cnnsuite bench`` holds ``make train`` against: what a skeptical
engineer would write to train the same network on the same data, with no Lightning, no per-epoch
decoding and no per-sample transforms. They borrow from cnnsuite only what makes the comparison
fair: the network (the task module's class, built from ``tasks/<task>/config.yaml``, so the
layers are identical), its loss, the split (the datamodule decides it, so train and test files
are the same), the test split's preprocessing (each file decoded once, before training), and
the process's malloc settings (:func:`cnnsuite.allocator.keep_freed_memory`, which every
``cnnsuite`` command applies): without them glibc hands each step's freed activations back to
the kernel, and the script's time would measure page faults, varying from run to run
with the heap's layout, instead of the training.
Validation, checkpoints, logging and metrics during training are left out: they are what the
suite adds, and what the ratio measures.

On a machine with a GPU they train where ``cnnsuite fit`` does (``accelerator: auto``): the model
and both decoded splits move to it once, so batches and their augmentation are drawn there, and
training runs under bf16 autocast where the GPU has bfloat16 (the AMP idiom; ``fit``'s GPU recipe
picks its precision by measurement). Scores are computed on the CPU, as torchmetrics' states are.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy

from cnnsuite.allocator import keep_freed_memory
from cnnsuite.bench.core import build, make_optimizer, make_scheduler, precise_bn_batches, task_config

#: how many samples the decoder batches together (memory only; the tensors are the same)
DECODE_BATCH = 256


# --- data --------------------------------------------------------------------------------
@dataclass
class Loaded:
    """A plain run's starting point: the task's default model and datamodule (its config, the
    CLI's links; the embedded default generated if missing, the split decided as ``make train``
    decides it), the epochs to train, the train and test splits decoded once (lists of fields,
    see :func:`decode_once`) and the seconds all that took."""

    task: str
    model: nn.Module
    datamodule: object
    epochs: int
    train: list
    test: list
    data_seconds: float
    device: torch.device

    @property
    def batch_size(self) -> int:
        return self.datamodule.hparams.batch_size


def load(task: str, epochs: int | None, data_root: str | Path, seed: int) -> Loaded:
    """Seed, build, decode both splits once; ``epochs`` None: the config's ``max_epochs``.
    Every generator is seeded, as ``seed_everything`` does for ``cnnsuite fit``: a task's data
    may draw from Python's random (PyTorchVideo's clip sampler does)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    start = time.perf_counter()
    model, datamodule = build(task, data_root)
    datamodule.prepare_data()
    datamodule.setup("fit")
    train, test = decode_once(datamodule, "train"), decode_once(datamodule, "test")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, train, test = model.to(device), to_device(train, device), to_device(test, device)
    epochs = epochs or task_config(task)["trainer"]["max_epochs"]
    return Loaded(task, model, datamodule, epochs, train, test, time.perf_counter() - start, device)


def to_device(value, device: torch.device):
    """``value`` (a tensor, or lists, tuples and mappings of them) on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {key: to_device(item, device) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_device(item, device) for item in value)
    return value


def fit(
    loaded: Loaded,
    epoch_batches: Callable[[], Iterator],
    loss_of: Callable[[object], torch.Tensor],
    limit_batches: int | None = None,
) -> dict:
    """Train (:func:`train_epochs`), recompute BatchNorm statistics as the suite does before it
    evaluates, and start the run's result: what every plain script reports besides its metrics."""
    with autocast(loaded.device):
        train_seconds = train_epochs(loaded.task, loaded.model, loaded.epochs, epoch_batches, loss_of, limit_batches)
        recompute_batchnorm(loaded.model, epoch_batches(), precise_batchnorm_batches(loaded.task, loaded.model))
    return {
        "task": loaded.task,
        "epochs": loaded.epochs,
        "train_samples": len(loaded.train[0]),
        "test_samples": len(loaded.test[0]),
        "data_seconds": loaded.data_seconds,
        "train_seconds": train_seconds,
        "device": loaded.device.type,
    }


def autocast(device: torch.device):
    """bf16 autocast on a GPU that has bfloat16, else nothing (fp32, as the CPU configs train)."""
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def decode_once(datamodule, stage: str) -> list:
    """Every sample of the ``stage`` split through the *test* split's preprocessing (resize,
    normalisation; no random augmentation), batched by the datamodule's own collate: a list
    of fields, each one tensor (or one list, for detection's images and targets)."""
    dataset = datamodule.make_dataset(datamodule.splits[stage], "test")
    loader = DataLoader(dataset, batch_size=DECODE_BATCH, collate_fn=type(datamodule).collate_fn)
    fields: list[list] = []
    for batch in loader:
        batch = batch if isinstance(batch, (tuple, list)) else (batch,)
        fields = fields or [[] for _ in batch]
        for field, value in zip(fields, batch, strict=True):
            field.append(value)
    return [torch.cat(f) if isinstance(f[0], torch.Tensor) else [v for part in f for v in part] for f in fields]


def shuffled_batches(count: int, batch_size: int) -> list[torch.Tensor]:
    """One epoch's sample indices, shuffled, in batches (the last one may be short, as the
    suite's loader does not drop it)."""
    return list(torch.randperm(count).split(batch_size))


# --- training ----------------------------------------------------------------------------
def optimiser_and_scheduler(task: str, model: nn.Module, epochs: int):
    """The optimiser and LR scheduler of the task's config (the scheduler steps once an epoch,
    over ``epochs`` where its length follows the run)."""
    optimizer = make_optimizer(task, model.parameters())
    return optimizer, make_scheduler(task, optimizer, epochs)


def gradient_clip(task: str) -> float | None:
    """``trainer.gradient_clip_val`` of the task's config (clipping the gradients' norm)."""
    return task_config(task)["trainer"].get("gradient_clip_val")


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work: a timer read before it would stop early."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_epochs(
    task: str,
    model: nn.Module,
    epochs: int,
    epoch_batches: Callable[[], Iterator],
    loss_of: Callable[[object], torch.Tensor],
    limit_batches: int | None = None,
) -> float:
    """``epochs`` passes of ``epoch_batches()`` (each batch: ``loss_of(batch)``, backward, an
    optimiser step; the first ``limit_batches`` only, if given), the scheduler stepped after
    each; returns the seconds it took."""
    optimizer, scheduler = optimiser_and_scheduler(task, model, epochs)
    clip = gradient_clip(task)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for batch in islice(epoch_batches(), limit_batches):
            loss = loss_of(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
    synchronize(next(model.parameters()).device)
    return time.perf_counter() - start


def precise_batchnorm_batches(task: str, model) -> int:
    """How many training batches the suite recomputes BatchNorm statistics on: the config's
    ``PreciseBatchNorm`` callback, else the module's default."""
    return precise_bn_batches(task_config(task)) or model.precise_bn_batches


@torch.no_grad()
def recompute_batchnorm(model, batches: Iterator, count: int) -> None:
    """BatchNorm statistics as a plain average over ``count`` training batches, in train mode:
    the running averages trail the weights, and the suite does this before it evaluates (see
    ``cnnsuite.training.callbacks.PreciseBatchNorm``), so the plain script does it once, at the end."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for batch in islice(batches, count):
        model.forward_for_batchnorm(batch)
    for m, momentum in momenta.items():
        m.momentum = momentum


# --- batch-level augmentation ------------------------------------------------------------
def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Each sample of ``x`` (N, C, H, W) resampled through its own 2×3 affine map ``theta``
    (output → input, in [-1, 1] coordinates), bilinear, zeros outside: one ``grid_sample``
    for the whole batch instead of one transform per sample."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def uniform(n: int, low: float, high: float, device: torch.device | None = None) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, device=device)


def resized_crop_thetas(
    n: int, scale: tuple[float, float], ratio: tuple[float, float] = (3 / 4, 4 / 3), device: torch.device | None = None
):
    """Random crops of ``scale`` of the area and ``ratio`` width/height, resized back to the
    full frame, one per sample (torchvision's ``RandomResizedCrop``), on ``device``."""
    area = uniform(n, *scale, device)
    aspect = torch.exp(uniform(n, math.log(ratio[0]), math.log(ratio[1]), device))
    width, height = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)
    cx, cy = (1 - width) * uniform(n, -1, 1, device), (1 - height) * uniform(n, -1, 1, device)
    zero = torch.zeros(n, device=device)
    return torch.stack([torch.stack([width, zero, cx], 1), torch.stack([zero, height, cy], 1)], 1)


def random_flips_and_turns(x: torch.Tensor, flip_dims: tuple[int, ...], planes: tuple[tuple[int, int], ...],
                           turns: tuple[int, ...]) -> torch.Tensor:  # fmt: skip
    """Each sample flipped along each of ``flip_dims`` with probability ½ and turned in each of
    ``planes`` by a number of quarter turns drawn from ``turns`` (0 leaves it)."""
    x, n, device = x.clone(), len(x), x.device
    for dim in flip_dims:
        chosen = torch.rand(n, device=device) < 0.5
        x[chosen] = x[chosen].flip(dim)
    for plane in planes:
        k = torch.tensor(turns, device=device)[torch.randint(len(turns), (n,), device=device)]
        for quarter in set(turns) - {0}:
            chosen = k == quarter
            x[chosen] = torch.rot90(x[chosen], quarter, dims=plane)
    return x


# --- classification: recognition2d, biomedical3d, multispectral3d (video3d adds clips) -----
@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The network's outputs for ``x`` (a tensor, or a tuple of them), in eval mode,
    ``batch_size`` samples at a time."""
    model.eval()
    outputs = [model(chunk) for chunk in x.split(batch_size)]
    if isinstance(outputs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outputs, strict=True))
    return torch.cat(outputs)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """``test/acc`` as the suite scores it: torchmetrics' micro accuracy."""
    return float(MulticlassAccuracy(logits.shape[1], average="micro")(logits.float().softmax(1).cpu(), y.cpu()))


def train_classifier(
    task: str,
    epochs: int | None,
    data_root: str | Path,
    seed: int,
    augment: Callable[[torch.Tensor], torch.Tensor],
    limit_batches: int | None = None,
) -> dict:
    """The task's classifier trained on the train split held in memory, ``augment`` applied to
    each batch, then scored on the test split: ``{"test/acc", "train_seconds", ...}``."""
    loaded = load(task, epochs, data_root, seed)
    (x, y), (x_test, y_test), model = loaded.train, loaded.test, loaded.model

    def epoch_batches():
        return ((augment(x[i]), y[i]) for i in shuffled_batches(len(x), loaded.batch_size))

    def loss_of(batch):
        return model.loss(model(batch[0]), batch[1])

    result = fit(loaded, epoch_batches, loss_of, limit_batches)
    return result | {"test/acc": accuracy(predict(model, x_test, loaded.batch_size), y_test)}


def main(run: Callable[..., dict], description: str) -> None:
    """``python benchmarks/plain/<task>.py --epochs K [--data_root data] [--out result.json]``:
    trains, tests, prints the result as JSON (and writes it to ``--out``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--epochs", type=int, default=None, help="default: the config's trainer.max_epochs")
    parser.add_argument("--data_root", default="data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit_batches", type=int, default=None, help="batches per epoch (default: all)")
    parser.add_argument("--out", default=None, help="also write the result to this JSON file")
    args = parser.parse_args()
    keep_freed_memory()
    result = run(epochs=args.epochs, data_root=args.data_root, seed=args.seed, limit_batches=args.limit_batches)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
