"""Heads that sit on a backbone's list of feature maps."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..backbone.blocks import activation_layer, global_avg_pool


class ClassifierHead(nn.Module):
    """The classifier of the notes: global pooling of the deepest map, then fully
    connected layers (``hidden`` widths, e.g. LeNet-5's F6 = ``(84,)``) and the logits.

    Global average pooling makes the head independent of the input size; on LeNet-5's
    C5 (already 1×1) it is the identity.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        hidden: Sequence[int] = (),
        act: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [global_avg_pool(spatial_dims), nn.Flatten()]
        width = in_channels
        for h in hidden:
            layers += [nn.Linear(width, h), activation_layer(act)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.net(features[-1])
