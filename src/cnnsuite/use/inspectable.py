"""What ``cnnsuite inspect`` looks at in a task's model: its backbone, how a model input
reaches it, and which class score Grad-CAM differentiates.

Each task answers through :meth:`~cnnsuite.training.task.TaskModule.inspection_network` (the default
fits a classifier whose ``forward`` gives class logits); :mod:`cnnsuite.use.inspection` draws
whatever it is given and knows no task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..backbone import StagedBackbone


class ClassScores(nn.Module):
    """The backbone's input batch → class scores ``(N, K)``, the one tensor Grad-CAM wants:
    ``model``'s forward (its first output, where it returns more); ``frames``: the backbone is
    2D on video clips, so a frame enters as a one-frame clip."""

    def __init__(self, model: nn.Module, frames: bool = False) -> None:
        super().__init__()
        self.model, self.frames = model, frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x.unsqueeze(2) if self.frames else x)
        return out[0] if isinstance(out, (tuple, list)) else out


def same(x: torch.Tensor) -> torch.Tensor:
    return x


def middle_frame(clips: torch.Tensor) -> torch.Tensor:
    return clips[:, :, clips.shape[2] // 2]


@dataclass
class Network:
    """What inspect looks at in a task's model.

    ``to_backbone``: the model's input batch → the backbone's; ``scores``: the backbone's input
    batch → class scores, for Grad-CAM (None: no CAM, ``about_cam`` says why); ``stages_name``:
    the name of ``backbone.stages`` in ``scores``; ``cam_stage``: the deepest stage the class
    score reads; ``about_cam``: what the differentiated score is."""

    backbone: StagedBackbone
    to_backbone: Callable[[torch.Tensor], torch.Tensor]
    scores: nn.Module | None
    stages_name: str
    cam_stage: int
    about_cam: str

    def cam_layer(self, stage: int) -> str:
        return f"{self.stages_name}.{stage}"
