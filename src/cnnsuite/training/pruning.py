"""The Lightning callback that lets Optuna prune a sweep's trial (:mod:`cnnsuite.training.sweep`)."""

from __future__ import annotations

from pathlib import Path

from optuna_integration import PyTorchLightningPruningCallback


class TrialPruning(PyTorchLightningPruningCallback):
    """optuna-integration's pruning callback, reporting the value that picks the run's best
    checkpoint (the task's monitor as the run resolved it: a multi-label classifier's included),
    and recording the trial's run folder."""

    def __init__(self, trial) -> None:
        super().__init__(trial, monitor="")

    def on_fit_start(self, trainer, pl_module) -> None:
        super().on_fit_start(trainer, pl_module)
        self.monitor = trainer.checkpoint_callback.monitor
        self._trial.set_user_attr("run", str(Path(trainer.log_dir).resolve()))  # found again from any folder
