"""Lightning callbacks the tasks' configs can name."""

from __future__ import annotations

from itertools import islice

import lightning as L
import torch
from torch.optim.swa_utils import update_bn


class PreciseBatchNorm(L.Callback):
    """Recompute BatchNorm statistics on training batches before each validation.

    BatchNorm's running averages trail the weights; while the weights still move fast
    they can describe a network that no longer exists, and the model in eval mode
    collapses (measured on biomedical3d: 0.34 validation accuracy from running averages,
    0.95 from statistics recomputed at the same weights). "Precise BN" (Wu & Johnson,
    2021; used by PyTorchVideo's recipes) recomputes them as a plain average over
    ``num_batches`` training batches, with ``torch.optim.swa_utils.update_bn``.
    """

    def __init__(self, num_batches: int = 50) -> None:
        if num_batches < 1:
            raise ValueError(f"PreciseBatchNorm.num_batches={num_batches}: expected at least 1")
        self.num_batches = num_batches

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.train_dataloader is None:
            return
        batches = islice(trainer.train_dataloader, self.num_batches)
        with torch.no_grad():
            update_bn(batches, pl_module, device=pl_module.device)  # leaves the module in eval mode, as found
