"""Feature-map geometry of a staged backbone: shape, stride and receptive field per stage.

The lecture notes' quantities, for any :class:`~cnnsuite.backbone.StagedBackbone` in 1D,
2D or 3D — our convnet, LeNet-5, the (2+1)D net, the resnet, and the foreign reference nets:

- output shape: the stages run on a ``meta`` tensor (shapes only, no arithmetic);
- cumulative stride and receptive field: the standard recurrence over the convolutions and
  poolings along the main path, ``r += (k - 1) d j``, ``j *= s`` (``k`` kernel, ``d``
  dilation, ``s`` stride, ``j`` the jump between neighbouring outputs in input pixels),
  starting from ``r = j = 1``. A residual shortcut never widens the field, so submodules
  named ``shortcut`` (ours) or ``downsample`` (torchvision, MONAI) are skipped.

:func:`check_fits` walks the same layers at the task's input size and refuses, in one line
naming the stage and the input size, a window larger than the (padded) map it would meet —
before a forward pass could fail with a bare shape error.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.pooling import _AvgPoolNd, _LPPoolNd, _MaxPoolNd

from ..errors import ConfigError
from .parametrize import free_parameters

SHORTCUT_NAMES = ("shortcut", "downsample")


@dataclass(frozen=True)
class StageGeometry:
    """One stage's output. ``index`` counts from 0, as ``backbone.stages``, the feature list and
    ``model.backbone_kwargs.parametrize`` do; ``stride`` and ``receptive_field`` are per axis and
    measured in input pixels/voxels; ``parameters`` counts the stage's free parameters
    (:func:`~cnnsuite.backbone.free_parameters`: masked-out weights do not count)."""

    index: int
    out_shape: tuple[int, ...]
    stride: tuple[int, ...]
    receptive_field: tuple[int, ...]
    parameters: int


@dataclass(frozen=True)
class Window:
    """A convolution or pooling window on the main path, per axis."""

    where: str  # e.g. "block 1" or "stem"; "" when the stage is a single block
    kind: str  # "conv", "max pool", "avg pool", "lp pool"
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    ceil_mode: bool = False

    def label(self) -> str:
        text = f"{self.kind} {_by(self.kernel)}"
        if self.stride not in ((1,) * len(self.stride), self.kernel):  # a pool's stride is its window by default
            text += f" stride {_by(self.stride)}"
        return text

    def extent(self) -> tuple[int, ...]:
        """The window's span on its input, dilation included."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation, strict=True))

    def pads(self, size: tuple[int, ...]) -> tuple[int, ...]:
        if self.padding == "valid":
            return (0,) * len(size)
        if self.padding == "same":  # PyTorch allows it at stride 1 only: the output keeps the size
            return tuple((e - 1) / 2 for e in self.extent())
        return self.padding

    def apply(self, size: tuple[int, ...]) -> tuple[int, ...]:
        """Output size by PyTorch's formula ``floor((n + 2p - e) / s) + 1`` (ceil for ceil_mode)."""
        rounding = math.ceil if self.ceil_mode else math.floor
        out = []
        for n, p, e, s in zip(size, self.pads(size), self.extent(), self.stride, strict=True):
            o = rounding((n + 2 * p - e) / s) + 1
            if self.ceil_mode and (o - 1) * s >= n + p:  # the last window must start inside the input
                o -= 1
            out.append(int(o))
        return tuple(out)


def stage_windows(stage: nn.Module, spatial_dims: int) -> list[Window]:
    """The stage's convolutions and poolings along its main path, in forward order.

    Children are visited in registration order, which is forward order for every block here
    and in torchvision's and MONAI's ResNets; residual shortcuts are skipped.
    """
    # A stage that holds a filter itself (a ConvBlock, a foreign stem) is one block; otherwise
    # its children are blocks, named by position ("block 1") or by name ("stem", "pool").
    children = [child for _, child in stage.named_children()]
    single_block = len(children) <= 1 or any(isinstance(child, _ConvNd) for child in children)
    windows = []
    for path, layer in _walk(stage):
        where = "" if single_block else _block_name(path.split(".")[0])
        windows.append(_window(layer, spatial_dims, where))
    return windows


def describe_stages(backbone: nn.Module, input_shape: Sequence[int]) -> list[StageGeometry]:
    """Shape, cumulative stride, receptive field and parameters of every stage's output for
    one sample of ``input_shape`` = ``(C, *spatial)`` (no batch axis)."""
    check_fits(backbone, input_shape)
    shapes = _meta_shapes(backbone, tuple(input_shape))
    spatial_dims = backbone.spatial_dims
    field, jump = (1,) * spatial_dims, (1,) * spatial_dims
    result = []
    for index, (stage, shape) in enumerate(zip(backbone.stages, shapes, strict=True)):
        for w in stage_windows(stage, spatial_dims):
            field = tuple(r + (e - 1) * j for r, e, j in zip(field, w.extent(), jump, strict=True))
            jump = tuple(j * s for j, s in zip(jump, w.stride, strict=True))
        result.append(StageGeometry(index, shape, jump, field, free_parameters(stage)))
    return result


def check_fits(backbone: nn.Module, input_shape: Sequence[int], where: str = "model.backbone_kwargs") -> None:
    """Raise a one-line ValueError if some window of ``backbone`` would not fit the feature map
    it meets at ``input_shape`` = ``(C, *spatial)``: a kernel or pooling window larger than the
    padded map, or a stride that leaves an axis with no output."""
    spatial_dims = backbone.spatial_dims
    if len(input_shape) != spatial_dims + 1:
        raise ConfigError(
            f"input shape {_by(input_shape)}: expected channels and {spatial_dims} spatial sizes for this backbone"
        )
    size = tuple(int(n) for n in input_shape[1:])
    for index, stage in enumerate(backbone.stages):
        for w in stage_windows(stage, spatial_dims):
            out = w.apply(size)
            if min(out) < 1:
                place = f"stage {index}, {w.where}" if w.where else f"stage {index}"
                raise ConfigError(
                    f"{where}: {place} ({w.label()}) meets a {_by(size)} feature map at input size "
                    f"{_by(input_shape)}; use fewer stages, smaller kernels or strides, or a larger input"
                )
            size = out


def _walk(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    if _is_window(module):
        yield prefix, module
        return
    for name, child in module.named_children():
        if name in SHORTCUT_NAMES:
            continue
        yield from _walk(child, f"{prefix}.{name}" if prefix else name)


def _is_window(module: nn.Module) -> bool:
    conv = isinstance(module, _ConvNd) and not module.transposed
    return conv or isinstance(module, _MaxPoolNd | _AvgPoolNd | _LPPoolNd)


def _window(layer: nn.Module, spatial_dims: int, where: str) -> Window:
    def axes(value) -> tuple[int, ...]:
        return tuple(value) if isinstance(value, Sequence) else (int(value),) * spatial_dims

    if isinstance(layer, _ConvNd):
        padding = layer.padding if isinstance(layer.padding, str) else axes(layer.padding)
        return Window(where, "conv", axes(layer.kernel_size), axes(layer.stride), padding, axes(layer.dilation))
    kind = {_MaxPoolNd: "max pool", _AvgPoolNd: "avg pool", _LPPoolNd: "lp pool"}
    kind = next(label for cls, label in kind.items() if isinstance(layer, cls))
    kernel = axes(layer.kernel_size)
    stride = axes(layer.stride) if layer.stride else kernel
    padding = axes(getattr(layer, "padding", 0))
    dilation = axes(getattr(layer, "dilation", 1))
    return Window(where, kind, kernel, stride, padding, dilation, bool(getattr(layer, "ceil_mode", False)))


def _block_name(name: str) -> str:
    """``"1"`` (a Sequential's child 1) and ``"block1"`` → ``"block 1"``; counts from 0, like stages."""
    if name.isdigit():
        return f"block {name}"
    return re.sub(r"^block(\d+)$", r"block \1", name)


def _meta_shapes(backbone: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every stage's output shape (without batch), from a forward pass on ``meta`` tensors:
    parameters and buffers are swapped for meta stand-ins, so nothing is computed or changed."""
    state = {
        name: torch.empty_like(t, device="meta")
        for name, t in (*backbone.named_parameters(), *backbone.named_buffers())
    }
    # A batch of 2: batch norm in training mode refuses one value per channel.
    dtype = next((p.dtype for p in backbone.parameters()), torch.get_default_dtype())
    x = torch.empty(2, *input_shape, device="meta", dtype=dtype)
    features = functional_call(backbone, state, (x,), strict=False, tie_weights=False)
    return [tuple(f.shape[1:]) for f in features]


def _by(sizes: Sequence) -> str:
    return "×".join(str(s) for s in sizes)
