"""A hypernetwork whose weights are a function of the input: the lecture notes' case where the
output is a transformation of the input and the weights are that transformation's parameters.

:class:`DynamicFilter` (Jia et al. 2016, "Dynamic Filter Networks") computes ``y = w(x) ⋆ x``:
a small network ``H`` reads the input (each channel's mean over space) and makes one depthwise
kernel per sample and channel, applied to that sample as one grouped convolution over the batch.
:func:`~cnnsuite.backbone.parametrize.hyper_kernel` makes a layer's kernel from a learned code,
the same for every input; here each input gets the kernel its own content calls for. One code
path for 1, 2 and 3 spatial dimensions.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError
from .blocks import IntOrSeq, activation_layer, as_tuple, global_avg_pool


class DynamicFilter(nn.Module):
    """``y = w(x) ⋆ x`` with ``w(x) = H(mean of x over space)``: per sample and channel, a kernel
    of ``kernel_size`` (odd, so the output keeps the input's size) made by a two-layer MLP of
    ``hidden`` units; gradients reach ``H`` through the kernels it makes."""

    def __init__(
        self, spatial_dims: int, channels: int, kernel_size: IntOrSeq = 3, hidden: int = 32, act: str = "tanh"
    ) -> None:
        super().__init__()
        self.spatial_dims, self.channels = spatial_dims, channels
        self.kernel_size = as_tuple(kernel_size, spatial_dims, "kernel_size")
        if any(k % 2 == 0 for k in self.kernel_size):
            raise ConfigError(f"kernel_size={kernel_size}: expected odd sizes, which keep the input's size")
        taps = math.prod(self.kernel_size)
        self.hyper = nn.Sequential(
            global_avg_pool(spatial_dims), nn.Flatten(), nn.Linear(channels, hidden), activation_layer(act),
            nn.Linear(hidden, channels * taps),
        )  # fmt: skip

    def kernels(self, x: torch.Tensor) -> torch.Tensor:
        """The kernels ``H`` makes for each sample of ``x``: ``(N, C, *kernel_size)``."""
        return self.hyper(x).view(len(x), self.channels, *self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = len(x), self.channels
        kernels = self.kernels(x).reshape(n * c, 1, *self.kernel_size)
        conv = getattr(F, f"conv{self.spatial_dims}d")
        padding = tuple(k // 2 for k in self.kernel_size)
        return conv(x.reshape(1, n * c, *x.shape[2:]), kernels, padding=padding, groups=n * c).view_as(x)
