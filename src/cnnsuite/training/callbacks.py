"""Lightning callbacks the tasks' configs can name."""

from __future__ import annotations

import ast
import math
from itertools import islice

import lightning as L
import torch
from lightning.pytorch.callbacks import RichModelSummary
from lightning.pytorch.utilities.seed import isolate_rng
from torch import nn
from torch.utils.data import DataLoader

from ..data.datamodule import TaskDataModule
from ..errors import ConfigError


class PreciseBatchNorm(L.Callback):
    """Recompute BatchNorm statistics on training batches before each validation.

    BatchNorm's running averages trail the weights; while the weights still move fast
    they can describe a network that no longer exists, and the model in eval mode can
    collapse to one class while the same weights score well in train mode. "Precise BN" (Wu & Johnson,
    2021; used by PyTorchVideo's recipes) recomputes them as a plain average over
    ``num_batches`` training batches — ``torch.optim.swa_utils.update_bn``'s recipe, with
    each batch run through the task's own ``forward_for_batchnorm`` (a detector takes a list
    of images, not ``batch[0]``), augmented as training augments it on the device
    (:meth:`~cnnsuite.data.TaskDataModule.augment_batch`). Every task whose network has
    BatchNorm gets this callback by default (:attr:`cnnsuite.training.task.TaskModule.precise_bn_batches`).

    ``from_training: true`` takes the average over the epoch's last ``num_batches`` training
    steps instead, as they run: no extra forward pass, where the passes above cost a good part
    of an epoch on a small dataset validated often. The statistics then come from weights a few
    optimiser steps apart rather than from the final ones. A validation that does not follow an
    epoch's last step (``val_check_interval`` < 1, a run resumed inside those steps) falls back
    to the extra passes.
    """

    #: training batches recomputed on when neither the config nor the task says otherwise
    DEFAULT_BATCHES = 10

    def __init__(self, num_batches: int = DEFAULT_BATCHES, from_training: bool = False) -> None:
        if num_batches < 1:
            raise ConfigError(f"PreciseBatchNorm.num_batches={num_batches}: expected at least 1")
        self.num_batches = num_batches
        self.from_training = from_training
        self._averaging: dict[nn.Module, float | None] = {}  # layer -> its momentum, while averaging
        self._averaged = False  # the statistics are the average over this epoch's last steps

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._averaged = False

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        last = trainer.num_training_batches
        if self.from_training and math.isfinite(last) and batch_idx == max(0, last - self.num_batches):
            # layers in eval mode (frozen by a fine-tuning schedule) keep their statistics
            self._averaging = start_average([m for m in batch_norms(pl_module) if m.training])

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if self._averaging and batch_idx == trainer.num_training_batches - 1:
            self._averaged = True
            self._stop_averaging()

    def _stop_averaging(self) -> None:
        for m, momentum in self._averaging.items():
            m.momentum = momentum
        self._averaging = {}

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.train_dataloader is None:
            return
        self._stop_averaging()  # a validation inside the averaged steps: the extra passes decide
        every = batch_norms(pl_module)
        # frozen layers (a fine-tuning schedule's) keep their statistics and stay in eval mode
        norms = [m for m in every if m.track_running_stats]
        if not norms:
            return
        if self._averaged:
            self._averaged = False
            if trainer.world_size > 1:
                pool_statistics(norms, trainer.strategy)
            return
        momenta = start_average(norms)
        was_training = pl_module.training
        pl_module.train()
        for m in every:
            m.train(m in norms)
        datamodule = trainer.datamodule
        # The batches' shuffle and augmentation draw random numbers: drawn aside, so that how
        # often a run validates does not change what its training draws. They pass through the
        # precision as the training loop's do (converted, then run in its autocast, if any).
        precision = trainer.precision_plugin
        with torch.no_grad(), isolate_rng(), precision.train_step_context():
            for batch in islice(batches_aside(trainer.train_dataloader), self.num_batches):
                batch = pl_module.transfer_batch_to_device(precision.convert_input(batch), pl_module.device, 0)
                if isinstance(datamodule, TaskDataModule):  # Lightning's hook skips it outside training
                    batch = datamodule.augment_batch(batch)
                pl_module.forward_for_batchnorm(batch)
        for m, momentum in momenta.items():
            m.momentum = momentum
        if trainer.world_size > 1:
            pool_statistics(norms, trainer.strategy)
        pl_module.train(was_training)


def batch_norms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def start_average(norms: list[nn.Module]) -> dict[nn.Module, float | None]:
    """Reset the layers' statistics to become a plain (cumulative) average over the batches
    they see next; their momenta, to restore once those batches are done."""
    momenta = {m: m.momentum for m in norms if m.track_running_stats}
    for m in momenta:
        m.reset_running_stats()
        m.momentum = None
    return momenta


class ValidateLastEpoch(L.Callback):
    """The last epoch validated too, where ``trainer.check_val_every_n_epoch`` would skip it:
    Lightning validates only the epochs that are a multiple of it (a choice it keeps,
    Lightning-AI/pytorch-lightning#4539), so a run of an odd number of epochs validated every
    second would never score its final weights, and one shorter than the interval would write
    no ``best.ckpt``. The interval becomes the largest one up to it that divides
    ``max_epochs`` (1 for a run of 3 or 1 epochs validated every second), decided when the fit
    starts, so a resumed run validates after the same epochs as the whole run. Every task
    gets it when the interval is above 1 (:meth:`cnnsuite.training.task.TaskModule.configure_callbacks`)."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        every, epochs = trainer.check_val_every_n_epoch, trainer.max_epochs
        if every is None or epochs is None or epochs < 1:
            return
        trainer.check_val_every_n_epoch = max(d for d in range(1, every + 1) if epochs % d == 0)


class MonitoredKeysLogged(L.Callback):
    """A monitored key the validation does not log is named before the first training step.
    The task's check of ``checkpoint.monitor`` (:meth:`~cnnsuite.training.task.TaskModule.mode_of`)
    accepts every name a metric's name starts (``acc_`` for ``acc_macro``, ``acc/`` for the
    per-class keys, which the data decides), so a typo such as ``val/acc_mcro`` passes it, and
    Lightning's checkpoint and early stopping say so only after the first validation: an epoch
    or more of training lost. The sanity check's validation logs every ``val/`` key the later
    ones do; at its end each monitored ``val/`` key must be among them (``train/`` keys are
    logged only by training). A run without a sanity check is checked at the end of its first
    validation, before the checkpoint callbacks, which Lightning runs last, look for the key.
    A learning-rate schedule's monitor (``ReduceLROnPlateau``'s) is checked alike, and one read
    after epochs the validation skips (``trainer.check_val_every_n_epoch``) is named at the start
    of fit: Lightning would stop the run after its first epoch."""

    #: logged keys listed in the error, at most
    SHOWN = 12

    def __init__(self) -> None:
        self.checked = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        every = trainer.check_val_every_n_epoch
        for config in trainer.lr_scheduler_configs:
            monitor = config.monitor
            if not (isinstance(monitor, str) and monitor.startswith("val/") and config.strict and every):
                continue
            if config.interval == "epoch" and config.frequency % every:
                read = "after every epoch" if config.frequency == 1 else f"every {config.frequency} epochs"
                raise ConfigError(
                    f"lr_scheduler.monitor {monitor!r} is read {read}, but the validation runs every {every} epochs "
                    f"(trainer.check_val_every_n_epoch); give --trainer.check_val_every_n_epoch 1, or a train/ key"
                )

    def on_sanity_check_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.checked and not trainer.sanity_checking:  # no sanity check ran
            self.check(trainer)

    def check(self, trainer: L.Trainer) -> None:
        self.checked = True
        # the run's values first, the per-class ones (val/acc/<class>) after them
        logged = sorted(
            (key for key in trainer.callback_metrics if key.startswith("val/")), key=lambda k: (k.count("/"), k)
        )
        # the CLI's --checkpoint is the trainer's first ModelCheckpoint
        monitors = [
            (getattr(c, "monitor", None), "checkpoint.monitor" if c is trainer.checkpoint_callback else
             f"{type(c).__name__} monitor")
            for c in trainer.callbacks
        ]  # fmt: skip
        monitors += [
            (config.monitor, "lr_scheduler.monitor") for config in trainer.lr_scheduler_configs if config.strict
        ]
        for monitor, name in monitors:
            if not isinstance(monitor, str) or not monitor.startswith("val/") or monitor in logged:
                continue
            shown = ", ".join(logged[: self.SHOWN]) + (f" … ({len(logged)} in all)" if len(logged) > self.SHOWN else "")
            raise ConfigError(f"{name} {monitor!r}: the validation logs no such value; it logs {shown}")


def batches_aside(loader: DataLoader) -> DataLoader:
    """Training batches that leave the epoch in progress alone. A new iterator over a loader
    with persistent workers restarts those workers, and with them an epoch interrupted by
    ``val_check_interval`` < 1: such a loader is copied, without persistent workers."""
    if not getattr(loader, "persistent_workers", False):
        return loader
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=loader.sampler,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        collate_fn=loader.collate_fn,
        worker_init_fn=loader.worker_init_fn,
        generator=loader.generator,
    )


def pool_statistics(norms: list[nn.Module], strategy) -> None:
    """Every rank recomputed the statistics on its own shard: replace them with those of all
    the shards together (the mean of the means; the variance from the mean of E[x²]), so all
    ranks validate and save one model."""
    for m in norms:
        mean = strategy.reduce(m.running_mean.clone(), reduce_op="mean")
        square = strategy.reduce(m.running_var + m.running_mean**2, reduce_op="mean")
        m.running_mean.copy_(mean)
        m.running_var.copy_(square - mean**2)


class CompactModelSummary(RichModelSummary):
    """Lightning's model summary, narrow enough for a terminal: a staged backbone returns one
    map per stage, which Lightning writes as a list of shapes wrapped over many rows; here it is
    the count and the last (deepest) shape. Rows of what never runs in ``forward`` and holds no
    parameters (the loss and the metrics: no input size was seen) are left out."""

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], *args, **kwargs) -> None:
        columns = dict(summary_data)
        keep = range(len(summary_data[0][1]))
        if "In sizes" in columns:
            keep = [i for i in keep if not (columns["In sizes"][i] == "?" and columns["Params"][i].strip() == "0")]
        data = [
            (name, [compact_sizes(values[i]) if name in ("In sizes", "Out sizes") else values[i] for i in keep])
            for name, values in summary_data
        ]
        RichModelSummary.summarize(data, *args, **kwargs)


def compact_sizes(text: str) -> str:
    """``"[2, 1, 32, 32]"`` → ``"2×1×32×32"``; several shapes (``"[[2, 16, 8, 8], [2, 32, 4, 4]]"``)
    → their count and the last one, ``"2 maps, 2×32×4×4"``. Anything else stays as it is."""
    try:
        sizes = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text

    def is_shape(value: object) -> bool:
        return isinstance(value, list) and all(isinstance(v, int) for v in value)

    if is_shape(sizes):
        return "×".join(map(str, sizes))
    if isinstance(sizes, list) and sizes and all(is_shape(s) for s in sizes):
        return f"{len(sizes)} maps, {'×'.join(map(str, sizes[-1]))}"
    return text
