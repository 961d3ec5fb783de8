"""How a fit runs on its GPU — the precision of its arithmetic and the layout of its
activations — chosen by timing a few training steps each way before training.

Which way is fastest depends on the card (bfloat16 tensor cores from Ampere on) and on the
network: a small convnet's step is bound by kernel launches, where neither bfloat16 nor
channels-last buys anything, a large one's by arithmetic, where both do. A fixed choice per
task would be right on one card and wrong on the next, so ``cnnsuite fit`` on one CUDA device
(``--recipe auto``, the default) times the configured model's full training step (forward,
loss, backward, optimiser, through its own ``training_step``) on a synthetic batch of the
configured size, each candidate's timings taking turns with the others':

- ``trainer.precision`` ``32-true`` and ``bf16-mixed`` (where the card computes in bfloat16);
- ``model.channels_last`` as configured and the other way (where the module has it).

It trains with the fastest, if that beats the configured step by at least :data:`MARGIN` (the
timings of a few steps vary by a few per cent), its weights stay finite, and its first loss is
within :data:`LOSS_TOLERANCE` of the configured step's from the same weights (a faster step that
computes something else is no recipe); else as configured. The choice is one line on the
console and an entry of ``recipe.json`` in the run's folder.

Every checkpoint of a fit on one GPU keeps the precision it trains in, and a resumed run goes on
with it, untimed. A config that sets ``trainer.precision`` (or plugins, or ``deterministic``)
chooses for itself, and so does ``--recipe configured``. On a CPU each task's config is its
recipe, measured there (``cnnsuite bench --sections recipe``). A run of several processes keeps
its config too: each process would time its own steps and could choose otherwise than the others.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.utilities import rank_zero_info

from ..jsonout import strict_json
from ..timing import measure_side_by_side, synchronizer
from .rng import rng_states, set_rng_states

#: how much faster than the configured step another recipe must be to be chosen
MARGIN = 1.05
#: how far another recipe's first loss may be from the configured step's, relative to it
LOSS_TOLERANCE = 0.05
#: the precision of a config that sets none (Lightning's default)
FULL_PRECISION = "32-true"
#: the mixed precision timed, and what its autocast computes in
MIXED_PRECISIONS = {"bf16-mixed": torch.bfloat16}
#: where a checkpoint keeps the precision its run chose
CHECKPOINT_KEY = "cnnsuite_recipe"
#: Lightning's words when a module logs outside a Trainer, as these steps do
LOG_WITHOUT_TRAINER = ".*self.log.*trainer.* reference is not registered"


@dataclass(frozen=True)
class Recipe:
    """A way to train: Lightning's ``trainer.precision`` and the module's
    ``channels_last`` (None: the module has no such setting)."""

    precision: str = FULL_PRECISION
    channels_last: bool | None = None

    def __str__(self) -> str:
        layout = {True: ", channels_last", False: ", contiguous", None: ""}[self.channels_last]
        return self.precision + layout


def channels_last_of(model: L.LightningModule) -> bool | None:
    """The module's ``channels_last`` setting, or None where it has none to change."""
    if not hasattr(model, "use_channels_last"):
        return None
    return bool(model.hparams.get("channels_last", False))


def candidates(configured: Recipe, bf16: bool) -> list[Recipe]:
    """The configured recipe first, then every other combination of the precisions and
    layouts this model and device have."""
    precisions = [configured.precision] + (["bf16-mixed"] if bf16 and configured.precision != "bf16-mixed" else [])
    layouts = [configured.channels_last]
    if configured.channels_last is not None:
        layouts.append(not configured.channels_last)
    return [Recipe(precision, layout) for precision in precisions for layout in layouts]


def configured_optimizer(model: L.LightningModule) -> torch.optim.Optimizer:
    """The optimiser ``model.configure_optimizers()`` makes (the config's ``optimizer:``), out of
    any of the shapes Lightning takes: one, a dict, a list, or lists of optimisers and schedulers."""
    made = model.configure_optimizers()
    while not isinstance(made, torch.optim.Optimizer):
        if isinstance(made, dict):
            made = made["optimizer"]
        elif isinstance(made, (list, tuple)) and made:
            made = made[0]
        else:
            raise TypeError(f"{type(model).__name__}.configure_optimizers() gave no optimiser: {made!r}")
    return made


def optimizer_like(optimizer: torch.optim.Optimizer, model: torch.nn.Module, copied: torch.nn.Module):
    """A new optimiser of ``optimizer``'s class and settings over ``copied``'s parameters, each
    in the group its original in ``model`` is in. LightningCLI makes the config's optimiser once,
    over the model's own parameters, and hands that same one to every call of
    ``configure_optimizers``, a copy's too: stepping it would leave the copy's weights as they were."""
    twin = {id(original): new for original, new in zip(model.parameters(), copied.parameters(), strict=True)}
    groups = [{**group, "params": [twin[id(p)] for p in group["params"]]} for group in optimizer.param_groups]
    return type(optimizer)(groups)  # each group holds every setting; the defaults hold some no init takes


class ModelStep:
    """One full training step of ``model`` on ``batch`` through its own ``training_step`` and
    ``optimizer``; calling it runs the step. ``autocast``: the forward and loss under
    ``torch.autocast`` to that dtype, as Lightning's ``*-mixed`` precisions run them."""

    def __init__(self, model: L.LightningModule, batch, optimizer: torch.optim.Optimizer, autocast: torch.dtype | None):
        self.model, self.batch, self.optimizer, self.autocast = model, batch, optimizer, autocast

    def loss(self) -> torch.Tensor:
        with torch.autocast(self.model.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            return self.model.training_step(self.batch, 0)

    def __call__(self) -> None:
        self.loss().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)  # the gradients go between steps, not held to the next

    @classmethod
    def of_copy(cls, model: L.LightningModule, optimizer, recipe: Recipe, batch, device: torch.device) -> ModelStep:
        """The step of a copy of ``model`` on ``device`` under ``recipe``, with an optimiser like
        ``model``'s own ``optimizer``: ``model`` itself is not touched."""
        copied = copy.deepcopy(model)
        copied.__dict__.pop("configure_optimizers", None)  # LightningCLI's, bound to the copy: a cycle
        copied.to(device).train()
        if recipe.channels_last is not None:
            copied.use_channels_last(recipe.channels_last)
        return cls(copied, batch, optimizer_like(optimizer, model, copied), MIXED_PRECISIONS.get(recipe.precision))


@dataclass(frozen=True)
class Measured:
    """A recipe's figures: samples per second of its step, its speed over the configured
    recipe's, its first loss relative to the configured step's, and whether its weights stayed
    finite through its timed steps."""

    recipe: Recipe
    samples_per_s: float
    speed_ratio: float
    loss_rel_diff: float
    finite: bool


def pick(measured: list[Measured]) -> tuple[Recipe, str]:
    """The recipe to train with, and why: the fastest that computes what the configured one
    (``measured[0]``) does, if it is at least :data:`MARGIN` faster; else the configured."""
    configured = measured[0].recipe
    fair = [m for m in measured[1:] if m.finite and m.loss_rel_diff <= LOSS_TOLERANCE]
    best = max(fair, key=lambda m: m.speed_ratio, default=None)
    if best is not None and best.speed_ratio >= MARGIN:
        return best.recipe, f"{best.speed_ratio:.2f}x the configured step ({configured})"
    if best is None:
        return configured, "no other way computed the same loss with finite weights"
    return configured, f"no other way was {MARGIN:.2f}x faster (the fastest: {best.recipe}, {best.speed_ratio:.2f}x)"


def bf16_supported(device: torch.device) -> bool:
    """Whether the device computes in bfloat16: every CPU (emulated where it lacks the
    instructions, which a timing then shows), a GPU only from NVIDIA's Ampere on (torch would
    also emulate it on older ones)."""
    if device.type != "cuda":
        return True
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def relative(value: float, reference: float) -> float:
    """|value − reference| / |reference| (the absolute difference where the reference is 0)."""
    return abs(value - reference) / (abs(reference) or 1.0)


@torch.no_grad()
def first_loss(step: ModelStep) -> float:
    """The step's loss before any update, its random draws (dropout, say) the same for every recipe."""
    torch.manual_seed(0)
    return float(step.loss())


def release(device: torch.device) -> None:
    """Hand back what timed copies held: their objects, and on a GPU the cached blocks, so the
    fit starts with the memory it would have had without them."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def time_recipes(
    model: L.LightningModule,
    batch,
    device: torch.device,
    recipes: list[Recipe],
    warmup: int = 2,
    repeats: int = 3,
    min_seconds: float = 0.05,
) -> list[Measured]:
    """Each recipe's step from the same weights on the same ``batch`` (laid out as the training
    loader gives it), timed side by side (``recipes[0]``: the configured one, what the others
    are held against). The process's random state is left as it was, a failure included: a
    seeded run draws the same after choosing its recipe. The copies are freed before it returns."""
    states = rng_states()
    on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    try:
        with on_device, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=LOG_WITHOUT_TRAINER)
            batch = move_data_to_device(batch, device)
            optimizer = configured_optimizer(model)
            steps = {recipe: ModelStep.of_copy(model, optimizer, recipe, batch, device) for recipe in recipes}
            losses = {recipe: first_loss(step) for recipe, step in steps.items()}
            timings = measure_side_by_side(steps, warmup, repeats, min_seconds, synchronizer(device))
            finite = {r: all(bool(torch.isfinite(p).all()) for p in s.model.parameters()) for r, s in steps.items()}
    finally:
        set_rng_states(states)
        steps = None
        release(device)
    size = len(batch[0])
    speeds = {recipe: size / timing["median"] for recipe, timing in timings.items()}
    reference = recipes[0]
    return [
        Measured(
            recipe,
            speeds[recipe],
            speeds[recipe] / speeds[reference],
            relative(losses[recipe], losses[reference]),
            finite[recipe],
        )  # fmt: skip
        for recipe in recipes
    ]


@dataclass(frozen=True)
class Choice:
    """What :func:`choose` found: the recipe to train with, why, and every measurement."""

    device: str
    batch_size: int
    chosen: Recipe
    reason: str
    measured: list[Measured]
    seconds: float

    def line(self) -> str:
        timed = f"; {len(self.measured)} ways timed in {self.seconds:.1f} s" if self.measured else ""
        where = "(recipe.json in the run folder)"
        return f"recipe on {self.device} (--recipe auto): {self.chosen}, {self.reason}{timed} {where}"

    def as_json(self) -> dict:
        return {
            "device": self.device,
            "batch_size": self.batch_size,
            "chosen": asdict(self.chosen),
            "reason": self.reason,
            "measured": [asdict(m) for m in self.measured],
            "seconds": self.seconds,
        }


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "the CPU"


def choose(model: L.LightningModule, datamodule, device: torch.device, benchmark: bool | None = None) -> Choice:
    """Time ``model``'s training step under each of its :func:`candidates` on ``device``
    (copies of it, on a synthetic batch of ``datamodule``'s batch size) and pick one.
    ``benchmark``: the run's ``trainer.benchmark``, cuDNN's choice of kernels during the timing
    as during training (the Trainer sets it only once it is made)."""
    start = time.perf_counter()
    size = datamodule.hparams.batch_size
    batch = datamodule.synthetic_batch(size, torch.Generator().manual_seed(0))
    configured = Recipe(FULL_PRECISION, channels_last_of(model))
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = before if benchmark is None else benchmark
    try:
        measured = time_recipes(model, batch, device, candidates(configured, bf16_supported(device)))
    finally:
        torch.backends.cudnn.benchmark = before
    chosen, reason = pick(measured)
    return Choice(device_name(device), size, chosen, reason, measured, time.perf_counter() - start)


def known_precision(recorded: object) -> str | None:
    """The precision a record of a choice (a checkpoint's, a ``recipe.json`` entry's) names, if
    it is one of those this module chooses between; None for anything else it may hold."""
    precision = recorded.get("precision") if isinstance(recorded, dict) else None
    return precision if precision in (FULL_PRECISION, *MIXED_PRECISIONS) else None


def kept(checkpoint: dict, model: L.LightningModule, datamodule, device: torch.device) -> Choice | None:
    """The recipe a resumed run goes on with: the precision its checkpoint was trained in (one
    of the two this module chooses between; anything else a checkpoint says is not taken), the
    layout its model's arguments already carry. None: the checkpoint's run was trained as configured."""
    precision = known_precision(checkpoint.get(CHECKPOINT_KEY))
    if precision is None:
        return None
    reason = "kept from the checkpoint it resumes"
    if precision == "bf16-mixed" and not bf16_supported(device):
        precision, reason = FULL_PRECISION, "the checkpoint's bf16-mixed, which this card does not compute in"
    return Choice(device_name(device), datamodule.hparams.batch_size, Recipe(precision, channels_last_of(model)),
                  reason, [], 0.0)  # fmt: skip


def recorded_starts(run_dir: Path) -> list:
    """The entries of ``recipe.json`` in ``run_dir``, one a start; none where it is missing, or
    is not a JSON list (a file in the run's folder may have been edited by hand)."""
    try:
        starts = json.loads((run_dir / "recipe.json").read_text())
    except (OSError, ValueError):
        return []
    return starts if isinstance(starts, list) else []


def pinned(run_dir: Path) -> list[str]:
    """The options that train another run as the one in ``run_dir`` was: ``--recipe configured``
    with the precision and layout it chose, or as configured where it chose none."""
    starts = recorded_starts(run_dir)  # none: it timed nothing, or its timing failed
    chosen = starts[-1].get("chosen") if starts and isinstance(starts[-1], dict) else None
    precision = known_precision(chosen)
    if precision is None:
        return ["--recipe", "configured"]
    options = ["--recipe", "configured", "--trainer.precision", precision]
    if isinstance(chosen.get("channels_last"), bool):
        options += ["--model.init_args.channels_last", str(chosen["channels_last"]).lower()]
    return options


def apply(recipe: Recipe, model: L.LightningModule) -> None:
    """Lay ``model``'s activations out as ``recipe`` says (its precision is the Trainer's)."""
    if recipe.channels_last is not None and recipe.channels_last != channels_last_of(model):
        model.use_channels_last(recipe.channels_last)


class RecipeRecord(L.Callback):
    """Writes a fit's :class:`Choice`, if it made one, to ``recipe.json`` in the run's folder (a
    list with one entry a start, strict JSON), and the precision the run trains in into every
    checkpoint, chosen or not: a resumed run goes on with it (:func:`kept`) rather than timing
    again, also where the options that set it (``--seeds``' pinned ones) are not given again."""

    def __init__(self, choice: Choice | None) -> None:
        self.choice = choice

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = {"precision": trainer.precision}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.choice is None or stage != "fit" or not trainer.is_global_zero or trainer.log_dir is None:
            return
        run_dir = Path(trainer.log_dir)
        starts = [*recorded_starts(run_dir), self.choice.as_json()]
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "recipe.json").write_text(strict_json(starts, indent=2) + "\n")
        rank_zero_info(self.choice.line())
