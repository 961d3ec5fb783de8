"""Residual stages (He et al. 2016, "Deep Residual Learning"), for 1, 2 or 3 spatial dimensions.

A residual block learns a correction ``F(x)`` to its input and outputs ``act(F(x) + x)``:
the identity path lets gradients reach early layers unchanged, which is what lets a network
go deeper than a VGG-style stack of plain blocks. When the block changes the number of
channels or the resolution, the shortcut becomes a projection (a ``1×…×1`` convolution with
the block's stride, then a normalisation) so the two paths can be added.

- :class:`BasicBlock`: two ``k×k`` convolutions (ResNet-18/34);
- :class:`Bottleneck`: ``1×1`` down to ``width``, ``k×k`` at ``width``, ``1×1`` up to
  ``4 × width`` (ResNet-50 and deeper; the stride sits on the ``k×k`` filter, as in
  torchvision's "ResNet v1.5").

Kernels and strides are per axis, e.g. kernel ``(1, 3, 3)`` and stride ``(1, 2, 2)`` for
video, where time keeps its rate. Layers come from the same helpers as :class:`ConvBlock`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .blocks import ConvBlock, IntOrSeq, activation_layer, as_tuple, conv_layer, norm_layer
from .networks import StagedBackbone
from .registry import register_backbone

BLOCKS = ("basic", "bottleneck")
KEY = "model.backbone_kwargs"


class ResidualBlock(nn.Module):
    """``act(body(x) + shortcut(x))``; subclasses build ``body``.

    ``out_channels`` and ``stride`` (per axis) report the block's geometry to
    :class:`StagedBackbone`; the shortcut is registered after the body so that a walk over
    the children in order follows the main path (see :mod:`.geometry`).
    """

    expansion = 1

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        width: int,
        kernel_size: IntOrSeq = 3,
        stride: IntOrSeq = 1,
        norm: str = "batch",
        act: str = "relu",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.kernel_size = as_tuple(kernel_size, spatial_dims, f"{KEY}.kernel_size")
        if any(k % 2 == 0 for k in self.kernel_size):
            raise ConfigError(
                f"{KEY}.kernel_size={list(self.kernel_size)}: expected odd sizes "
                "(a residual block must keep the map's size for the addition)"
            )
        self.stride = as_tuple(stride, spatial_dims, f"{KEY}.strides")
        self.norm, self.act_kind = norm, act
        self.out_channels = width * self.expansion
        self.body = self.make_body(in_channels, width)
        if in_channels == self.out_channels and all(s == 1 for s in self.stride):
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                self.conv(in_channels, self.out_channels, 1, self.stride),
                norm_layer(spatial_dims, norm, self.out_channels),
            )
        self.act = activation_layer(act)
        if zero_init_residual:
            # The body's last normalisation (or, without one, its last filter) starts at zero,
            # so the block starts as its shortcut (Goyal et al. 2017; torchvision's option).
            last = next(m for m in reversed(self.body) if getattr(m, "weight", None) is not None)
            nn.init.zeros_(last.weight)

    def make_body(self, in_channels: int, width: int) -> nn.Sequential:
        raise NotImplementedError

    def conv(self, in_channels: int, out_channels: int, kernel: IntOrSeq, stride: IntOrSeq = 1) -> nn.Module:
        """A convolution that keeps the size at stride 1; its bias is the normalisation's shift."""
        kernel = as_tuple(kernel, self.spatial_dims, f"{KEY}.kernel_size")
        padding = tuple(k // 2 for k in kernel)
        return conv_layer(
            self.spatial_dims,
            in_channels,
            out_channels,
            kernel,
            stride=stride,
            padding=padding,
            bias=self.norm == "none",
        )

    def normalised(self, channels: int) -> nn.Module:
        return norm_layer(self.spatial_dims, self.norm, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class BasicBlock(ResidualBlock):
    """Two ``k×k`` filters at ``width`` channels; the first carries the stride."""

    def make_body(self, in_channels: int, width: int) -> nn.Sequential:
        return nn.Sequential(
            self.conv(in_channels, width, self.kernel_size, self.stride),
            self.normalised(width),
            activation_layer(self.act_kind),
            self.conv(width, width, self.kernel_size),
            self.normalised(width),
        )


class Bottleneck(ResidualBlock):
    """``1×1`` to ``width``, ``k×k`` (with the stride) at ``width``, ``1×1`` to ``4 × width``."""

    expansion = 4

    def make_body(self, in_channels: int, width: int) -> nn.Sequential:
        return nn.Sequential(
            self.conv(in_channels, width, 1),
            self.normalised(width),
            activation_layer(self.act_kind),
            self.conv(width, width, self.kernel_size, self.stride),
            self.normalised(width),
            activation_layer(self.act_kind),
            self.conv(width, width * self.expansion, 1),
            self.normalised(width * self.expansion),
        )


class ResidualStage(nn.Sequential):
    """Named layers (``stem``, ``pool``, ``block0``, ``block1``, ...) whose geometry is read off their
    ``stride`` attributes; ``out_channels`` is the last block's."""

    def __init__(self, spatial_dims: int, layers: OrderedDict[str, nn.Module]) -> None:
        super().__init__(layers)
        self.stride = (1,) * spatial_dims
        for layer in layers.values():
            step = as_tuple(layer.stride, spatial_dims, "stride")
            self.stride = tuple(a * b for a, b in zip(self.stride, step, strict=True))
        self.out_channels = list(layers.values())[-1].out_channels


@register_backbone("resnet")
class ResNet(StagedBackbone):
    """A ResNet: a stem, then one stage per entry of ``widths`` with ``blocks`` residual blocks.

    ``blocks`` defaults to 2 per stage. The stem (a :class:`ConvBlock` of ``stem_channels``,
    ``stem_kernel``, ``stem_stride``, then an optional ``stem_pool`` of ``3×…×3`` with stride
    2) sits in the first stage; each stage's first block carries the stage's stride
    (``strides``: default 1 for the first stage and 2 after). The defaults suit small inputs
    (a 28×28 digit, a 32³ volume): a ``3×3`` stem at stride 1 and no pool. torchvision's
    ResNet-18 is ``widths=[64, 128, 256, 512], blocks=[2, 2, 2, 2], stem_kernel=7,
    stem_stride=2, stem_pool=max``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        widths: Sequence[int] = (32, 64, 128),
        blocks: Sequence[int] | None = None,
        block: str = "basic",
        kernel_size: IntOrSeq = 3,
        strides: Sequence[IntOrSeq] | None = None,
        stem_channels: int | None = None,
        stem_kernel: IntOrSeq = 3,
        stem_stride: IntOrSeq = 1,
        stem_pool: str = "none",
        norm: str = "batch",
        act: str = "relu",
        zero_init_residual: bool = False,
    ) -> None:
        widths = _positive_ints(widths, "widths")
        blocks = (2,) * len(widths) if blocks is None else _positive_ints(blocks, "blocks")
        if len(blocks) != len(widths):
            raise ConfigError(f"{KEY}.blocks={list(blocks)}: expected one count per stage ({len(widths)} widths)")
        if block not in BLOCKS:
            raise ConfigError(f"{KEY}.block={block!r}: expected one of {', '.join(BLOCKS)}")
        if strides is None:
            strides = [1] + [2] * (len(widths) - 1)
        if isinstance(strides, int | str) or len(strides) != len(widths):
            raise ConfigError(
                f"{KEY}.strides={strides!r}: expected one stride per stage ({len(widths)}), int or per axis"
            )
        if stem_pool not in ("max", "avg", "none"):
            raise ConfigError(f"{KEY}.stem_pool={stem_pool!r}: expected max, avg or none")
        block_class = {"basic": BasicBlock, "bottleneck": Bottleneck}[block]
        stem_channels = widths[0] if stem_channels is None else stem_channels
        if not isinstance(stem_channels, int) or stem_channels < 1:
            raise ConfigError(f"{KEY}.stem_channels={stem_channels!r}: expected a positive int")
        first = OrderedDict(
            stem=ConvBlock(
                spatial_dims,
                in_channels,
                stem_channels,
                as_tuple(stem_kernel, spatial_dims, f"{KEY}.stem_kernel"),
                stride=as_tuple(stem_stride, spatial_dims, f"{KEY}.stem_stride"),
                norm=norm,
                act=act,
            )
        )
        if stem_pool != "none":
            first["pool"] = _stem_pool(spatial_dims, stem_pool)
        stages, channels = [], stem_channels
        for index, (width, count, stride) in enumerate(zip(widths, blocks, strides, strict=True)):
            layers = first if index == 0 else OrderedDict()
            stride = as_tuple(stride, spatial_dims, f"{KEY}.strides[{index}]")
            for b in range(count):
                layers[f"block{b}"] = block_class(
                    spatial_dims,
                    channels,
                    width,
                    kernel_size,
                    stride=stride if b == 0 else 1,
                    norm=norm,
                    act=act,
                    zero_init_residual=zero_init_residual,
                )
                channels = layers[f"block{b}"].out_channels
            stages.append(ResidualStage(spatial_dims, layers))
        super().__init__(spatial_dims, stages)


def _stem_pool(spatial_dims: int, kind: str) -> nn.Module:
    """torchvision's overlapping stem pool: window 3, stride 2, padding 1 on every axis."""
    return getattr(nn, f"{'Max' if kind == 'max' else 'Avg'}Pool{spatial_dims}d")(3, stride=2, padding=1)


def _positive_ints(values: Sequence[int], key: str) -> tuple[int, ...]:
    if isinstance(values, int | str) or not values or not all(isinstance(v, int) and v >= 1 for v in values):
        raise ConfigError(f"{KEY}.{key}={values!r}: expected a non-empty list of positive ints, one per stage")
    return tuple(values)
