"""Fine-tuning schedule: freeze the backbone, train the heads, then unfreeze it at a lower rate.

A backbone transferred from another task (:mod:`cnnsuite.training.transfer`) already computes useful
features; fresh heads on top of it send large, noisy gradients at first, which would wreck
them. So the heads train alone for ``unfreeze_at_epoch`` epochs, then the backbone joins — all
of it, or only from stage ``from_stage`` on (early stages hold the most generic features) —
with a learning rate ``backbone_lr_factor`` times the heads'. From a config::

    trainer:
      callbacks:
        - class_path: cnnsuite.training.finetune.BackboneSchedule
          init_args: {unfreeze_at_epoch: 3, from_stage: 1, backbone_lr_factor: 0.1}

Why not Lightning's ``BackboneFinetuning``: it has no ``from_stage``; it grows the backbone's
rate every epoch by a function of its own (×2 by default) rather than letting the configured
scheduler drive both; and its ``unfreeze_and_add_param_group`` finds parameters "already in
the optimizer" by comparing *values* (``torch.equal``), while the CLI's optimizer holds every
parameter from the start — so the backbone would be skipped with a warning and train at the
heads' rate. This callback builds on ``BaseFinetuning`` (whose state restores the optimizer's
parameter groups when a run resumes) and:

- takes the backbone out of the configured optimizer when the fit starts, and adds the
  unfrozen part back as a new parameter group, found by identity, with group 0's settings and
  every learning rate in it (``lr``, ``initial_lr``, ``max_lr``…) scaled by the factor; the LR
  schedulers' per-group lists (``base_lrs``…) get the scaled entry too, so the configured
  schedule drives the backbone at the same ratio;
- keeps the BatchNorm layers of frozen stages in eval mode with ``track_running_stats`` off:
  their statistics stay those of the source task, as the frozen weights expect (``freeze``
  with ``train_bn=True`` would leave them learning and drifting);
- reapplies the frozen/trainable state at ``on_train_start`` too, so a run resumed past the
  unfreezing epoch (or in the middle of one) trains what it trained before.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.optim import Optimizer

from ..errors import ConfigError
from .callbacks import batch_norms
from .task import TaskModule


def find_backbone(pl_module: L.LightningModule) -> nn.Module:
    """The module's feature backbone: a task's ``feature_backbone()`` (which may sit deep inside
    its network), else, for any other LightningModule, its ``backbone`` module (Lightning's
    ``BackboneFinetuning`` convention)."""
    if isinstance(pl_module, TaskModule):
        return pl_module.feature_backbone()
    backbone = getattr(pl_module, "backbone", None)  # Lightning's convention for any LightningModule
    if isinstance(backbone, nn.Module):
        return backbone
    raise ConfigError(
        f"BackboneSchedule: {type(pl_module).__name__} has no 'backbone' module and is no cnnsuite TaskModule "
        "(whose feature_backbone() names it)"
    )


class BackboneSchedule(BaseFinetuning):
    """Heads alone for ``unfreeze_at_epoch`` epochs, then the backbone's stages from
    ``from_stage`` on at ``backbone_lr_factor`` × the heads' learning rate (stages before it
    stay frozen, BatchNorm statistics included). ``unfreeze_at_epoch: 0`` trains the backbone
    from the start, at the lower rate."""

    def __init__(self, unfreeze_at_epoch: int = 5, from_stage: int = 0, backbone_lr_factor: float = 0.1) -> None:
        super().__init__()
        for key, value in (("unfreeze_at_epoch", unfreeze_at_epoch), ("from_stage", from_stage)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"BackboneSchedule.{key}={value!r}: expected an integer >= 0")
        if not isinstance(backbone_lr_factor, int | float) or not 0 < backbone_lr_factor < math.inf:
            raise ConfigError(f"BackboneSchedule.backbone_lr_factor={backbone_lr_factor!r}: expected a number > 0")
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.from_stage = from_stage
        self.backbone_lr_factor = float(backbone_lr_factor)

    def _parts(self, pl_module: L.LightningModule) -> tuple[list[nn.Module], list[nn.Module]]:
        """``(stages that stay frozen, stages the schedule unfreezes)``."""
        backbone = find_backbone(pl_module)
        if self.from_stage == 0:
            return [], [backbone]
        stages = getattr(backbone, "stages", None)
        if stages is None or self.from_stage >= len(stages):
            count = "no stages" if stages is None else f"{len(stages)} stages (0..{len(stages) - 1})"
            raise ConfigError(f"BackboneSchedule.from_stage={self.from_stage}: the backbone has {count}")
        return list(stages[: self.from_stage]), list(stages[self.from_stage :])

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        self._parts(pl_module)  # a bad from_stage fails before any training
        self.freeze(find_backbone(pl_module), train_bn=False)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Restore the parameter groups of a resumed run, else take the backbone out of the
        configured optimizers: it comes back as a group of its own when it is unfrozen."""
        resumed = self._restarting and bool(self._internal_optimizer_metadata)
        super().on_fit_start(trainer, pl_module)
        if resumed:
            return
        backbone = {id(p) for p in find_backbone(pl_module).parameters()}
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in backbone]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(pl_module, trainer.current_epoch)

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        unfrozen = self._apply(pl_module, epoch)
        present = {id(p) for group in optimizer.param_groups for p in group["params"]}
        params = [p for part in unfrozen for p in part.parameters() if id(p) not in present]
        if params:
            self._add_group(pl_module.trainer, optimizer, params)

    def _apply(self, pl_module: L.LightningModule, epoch: int) -> list[nn.Module]:
        """Freeze or unfreeze for ``epoch``; frozen BatchNorm layers go to eval mode. Returns
        the unfrozen stages (none before ``unfreeze_at_epoch``)."""
        frozen, unfreezing = self._parts(pl_module)
        if epoch < self.unfreeze_at_epoch:
            frozen, unfreezing = frozen + unfreezing, []
        self.make_trainable(unfreezing)
        for part in unfreezing:
            part.train(pl_module.training)
        for part in frozen:
            for norm in batch_norms(part):
                norm.eval()
        return unfreezing

    def _add_group(self, trainer: L.Trainer, optimizer: Optimizer, params: list) -> None:
        """A group with group 0's settings and every learning rate in it scaled by the factor;
        the schedulers of ``optimizer`` get the scaled entry in each per-group list."""
        factor = self.backbone_lr_factor
        scaled = {
            key: value * factor if key.endswith("lr") and isinstance(value, int | float | torch.Tensor) else value
            for key, value in optimizer.param_groups[0].items()
            if key != "params"
        }
        groups = len(optimizer.param_groups)
        optimizer.add_param_group({**scaled, "params": params})
        for config in trainer.lr_scheduler_configs:
            if getattr(config.scheduler, "optimizer", None) is not optimizer:
                continue
            for key, value in vars(config.scheduler).items():
                if key.endswith("lrs") and isinstance(value, list) and len(value) == groups:
                    value.append(value[0] * factor)
