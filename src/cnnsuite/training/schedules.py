"""Learning-rate schedules whose length is the run's: a config need not repeat ``max_epochs``."""

from __future__ import annotations

import torch


class CosineAnnealingLR(torch.optim.lr_scheduler.CosineAnnealingLR):
    """torch's cosine annealing, with ``T_max`` optional: left out (``None``), it follows the
    run — ``trainer.max_epochs`` stepped once an epoch, or ``trainer.max_steps`` stepped once a
    step when the run is counted in steps — so ``--trainer.max_epochs 50`` anneals over 50 epochs
    instead of bottoming out early and climbing back. A ``T_max`` given is kept as it is.
    :meth:`cnnsuite.training.task.TaskModule.on_train_start` calls :meth:`follow` (so does a resumed run,
    which then anneals over its new length)."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, T_max: int | None = None, eta_min: float = 0.0, last_epoch: int = -1
    ) -> None:
        self.follows_run = T_max is None
        # Not read until the first step() after construction, by which time follow() has run.
        super().__init__(optimizer, T_max=T_max or 1, eta_min=eta_min, last_epoch=last_epoch)

    def get_lr(self) -> list[float]:
        """The cosine at ``last_epoch`` of the current ``T_max``, in closed form. torch's own
        moves each rate on from its last value, the same curve only while ``T_max`` stays put:
        after :meth:`follow` lengthened a resumed run it bent the old curve instead (a run of
        2 epochs resumed to 4 trained its extra epochs at a rate of 0)."""
        return self._get_closed_form_lr()

    def follow(self, length: int) -> None:
        """Anneal over ``length`` steps of this scheduler, unless ``T_max`` was given. The rates
        move onto the new curve at once: a resumed run's optimizer holds the rate its old
        length gave this step, and the next :meth:`step` is an epoch away."""
        if self.follows_run:
            self.T_max = max(1, int(length))
            for group, lr in zip(self.optimizer.param_groups, self._get_closed_form_lr(), strict=True):
                group["lr"] = lr
            self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
