"""Parameter transformations ``w = H(u)``: the weights a layer uses are a function of
other, trainable parameters ``u``, and backpropagation reaches ``u`` through ``H``.

All three are ``torch.nn.utils.parametrize`` parametrizations, so the layer keeps its
ordinary ``weight`` attribute (now computed) and its forward is unchanged:

- :func:`mask_weights`  — ``w = u * mask``: a fixed connection pattern (LeNet-5's C3 table);
- :func:`tie_weights`   — ``w_i = u_{g(i)}``: weight sharing, several entries of ``w`` are
  one free parameter (``w1 = w2 = u1``, ``w3 = w4 = u2``), as in a symmetric kernel;
- :func:`hyper_kernel`  — ``w = H_theta(z)``: a small hypernetwork makes the kernel from a
  learned code ``z``; gradients reach both ``z`` and the hypernetwork's ``theta``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize


class Masked(nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return u * self.mask


class Tied(nn.Module):
    """``w.flatten()[i] = u[groups[i]]``; ``u`` has one entry per group."""

    def __init__(self, groups: torch.Tensor) -> None:
        super().__init__()
        groups = torch.as_tensor(groups, dtype=torch.long)
        self.register_buffer("groups", groups)
        self.num_groups = int(groups.max()) + 1
        if torch.unique(groups).numel() != self.num_groups:
            raise ValueError("groups: expected every id in 0..max to be used at least once")

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return u[self.groups]

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        """Start ``u`` at the mean of the entries that will share it."""
        if w.shape != self.groups.shape:
            raise ValueError(f"groups has shape {tuple(self.groups.shape)}, weight {tuple(w.shape)}")
        sums = torch.zeros(self.num_groups, dtype=w.dtype).index_add_(0, self.groups.flatten(), w.flatten())
        counts = torch.bincount(self.groups.flatten(), minlength=self.num_groups).to(w.dtype)
        return sums / counts


class HyperKernel(nn.Module):
    """A two-layer MLP that turns a code ``z`` into a whole weight tensor."""

    def __init__(self, shape: torch.Size, code_size: int, hidden: int) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.code_size = code_size
        self.net = nn.Sequential(
            nn.Linear(code_size, hidden), nn.Tanh(), nn.Linear(hidden, int(torch.Size(shape).numel()))
        )
        fan_in = int(torch.Size(shape[1:]).numel())
        # Make the generated kernels start at the scale of a default conv initialisation.
        nn.init.uniform_(self.net[-1].weight, -(fan_in**-0.5) / hidden**0.5, (fan_in**-0.5) / hidden**0.5)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(self.shape)

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        return torch.randn(self.code_size, dtype=w.dtype)


def mask_weights(module: nn.Module, mask: torch.Tensor, name: str = "weight") -> nn.Module:
    """Keep only the weights where ``mask`` (broadcast to the weight's shape) is nonzero."""
    weight = getattr(module, name)
    mask = torch.broadcast_to(mask.to(weight.dtype), weight.shape).clone()
    parametrize.register_parametrization(module, name, Masked(mask))
    return module


def tie_weights(module: nn.Module, groups: torch.Tensor, name: str = "weight") -> nn.Module:
    """Share weights: entries with the same id in ``groups`` (the weight's shape) are one."""
    parametrize.register_parametrization(module, name, Tied(groups), unsafe=True)
    return module


def symmetric_groups(shape: torch.Size, dims: tuple[int, ...]) -> torch.Tensor:
    """Group ids that tie each weight with its mirror image along ``dims``."""
    index = torch.arange(torch.Size(shape).numel()).view(shape)
    mirrored = torch.flip(index, dims)
    canonical = torch.minimum(index, mirrored)
    return torch.unique(canonical, return_inverse=True)[1]


def hyper_kernel(module: nn.Module, code_size: int = 8, hidden: int = 32, name: str = "weight") -> nn.Module:
    """Replace ``module.<name>`` by the output of a hypernetwork on a learned code."""
    shape = getattr(module, name).shape
    parametrize.register_parametrization(module, name, HyperKernel(shape, code_size, hidden), unsafe=True)
    return module


def free_parameters(module: nn.Module) -> int:
    """Trainable degrees of freedom: masked-out entries of ``u`` do not count."""
    total = sum(p.numel() for p in module.parameters() if p.requires_grad)
    for sub in module.modules():
        if isinstance(sub, Masked):
            total -= int((sub.mask == 0).sum())
    return total
