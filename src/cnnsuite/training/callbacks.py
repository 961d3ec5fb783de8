"""Lightning callbacks the tasks' configs can name."""

from __future__ import annotations

from itertools import islice

import lightning as L
import torch
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
    """

    #: training batches recomputed on when neither the config nor the task says otherwise
    DEFAULT_BATCHES = 10

    def __init__(self, num_batches: int = DEFAULT_BATCHES) -> None:
        if num_batches < 1:
            raise ConfigError(f"PreciseBatchNorm.num_batches={num_batches}: expected at least 1")
        self.num_batches = num_batches

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.train_dataloader is None:
            return
        every = [m for m in pl_module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        # frozen layers (a fine-tuning schedule's) keep their statistics and stay in eval mode
        norms = [m for m in every if m.track_running_stats]
        if not norms:
            return
        momenta = {m: m.momentum for m in norms}
        was_training = pl_module.training
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches below
        pl_module.train()
        for m in every:
            m.train(m in norms)
        datamodule = trainer.datamodule
        with torch.no_grad():
            for batch in islice(batches_aside(trainer.train_dataloader), self.num_batches):
                batch = pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
                if isinstance(datamodule, TaskDataModule):  # Lightning's hook skips it outside training
                    batch = datamodule.augment_batch(batch)
                pl_module.forward_for_batchnorm(batch)
        for m, momentum in momenta.items():
            m.momentum = momentum
        if trainer.world_size > 1:
            pool_statistics(norms, trainer.strategy)
        pl_module.train(was_training)


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
