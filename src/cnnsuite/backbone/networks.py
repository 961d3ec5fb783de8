"""Backbones made of :class:`ConvBlock` stages, each returning features shallow to deep.

Every backbone here follows one contract: ``forward(x)`` returns a list with one
feature map per stage, and the module exposes ``out_channels`` and ``strides`` (the
cumulative stride of each stage's output per axis), so heads — a classifier on the last
map, an FPN on all of them — need not know which backbone they sit on. Stacking stages is
what lets the network learn a hierarchy: early stages respond to edges and blobs, later
ones to combinations of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .blocks import ConvBlock, IntOrSeq
from .parametrize import NAMED_TABLES, connection_mask, mask_weights
from .registry import register_backbone


class InputAffine(nn.Module):
    """``x * scale + shift`` per channel: an input normalised one way (``(x - mean) / std``)
    made into the same input normalised another way, inside the network, so the data pipeline,
    prediction on files and the exported network's preprocessing stay what the task's are.
    Its buffers are not saved (``persistent=False``): whoever builds it rebuilds it from the
    two normalisations."""

    def __init__(self, scale: list[float], shift: list[float], spatial_dims: int) -> None:
        super().__init__()
        shape = (len(scale),) + (1,) * spatial_dims
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).reshape(shape), persistent=False)
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32).reshape(shape), persistent=False)

    @classmethod
    def between(cls, mean: list[float], std: list[float], to_mean: list[float], to_std: list[float],
                spatial_dims: int) -> InputAffine:  # fmt: skip
        """From ``(v - mean) / std`` to ``(v - to_mean) / to_std`` of the same values ``v``."""
        scale = [s / t for s, t in zip(std, to_std, strict=True)]
        shift = [(m - tm) / t for m, tm, t in zip(mean, to_mean, to_std, strict=True)]
        return cls(scale, shift, spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift

    def extra_repr(self) -> str:
        return f"scale={self.scale.flatten().tolist()}, shift={self.shift.flatten().tolist()}"


class StagedBackbone(nn.Module):
    """A sequence of stages; the output of every stage is one feature map.

    A stage reports its geometry through ``out_channels`` and ``stride`` attributes (as a
    :class:`ConvBlock` does); otherwise they are read off the ConvBlocks inside it.
    """

    def __init__(self, spatial_dims: int, stages: Sequence[nn.Module]) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.stages = nn.ModuleList(stages)
        #: what the input passes before the first stage (:class:`InputAffine`, when pretrained
        #: weights expect another normalisation than the data's); none by default
        self.input_map: nn.Module | None = None
        self.out_channels: list[int] = []
        self.strides: list[tuple[int, ...]] = []
        total = (1,) * spatial_dims
        for stage in self.stages:
            if hasattr(stage, "stride"):
                parts = [stage]
            else:
                parts = [m for m in stage.modules() if isinstance(m, ConvBlock)]
            for part in parts:
                total = tuple(t * s for t, s in zip(total, part.stride, strict=True))
            self.out_channels.append(parts[-1].out_channels)
            self.strides.append(total)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.input_map is not None:
            x = self.input_map(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def stacked_stages(
    in_channels: int, channels: Sequence[int], blocks_per_stage: int, block: Callable[[int, int, bool, bool], nn.Module]
) -> list[nn.Sequential]:
    """The stages of a plain network: for each width of ``channels``, ``blocks_per_stage``
    blocks made by ``block(width in, width out, first, last)``, where ``first`` is the network's
    first block (it takes the stem's stride) and ``last`` a stage's last (it pools)."""
    if isinstance(channels, int | str) or not channels or not all(isinstance(c, int) and c >= 1 for c in channels):
        raise ConfigError(f"channels={channels!r}: expected a non-empty list of positive ints, one per stage")
    if blocks_per_stage < 1:
        raise ConfigError(f"blocks_per_stage={blocks_per_stage}: expected at least 1")
    stages, width = [], in_channels
    for index, out in enumerate(channels):
        blocks = []
        for b in range(blocks_per_stage):
            blocks.append(block(width, out, index == 0 and b == 0, b == blocks_per_stage - 1))
            width = out
        stages.append(nn.Sequential(*blocks))
    return stages


@register_backbone("convnet")
class ConvNet(StagedBackbone):
    """A plain VGG-style CNN: ``blocks_per_stage`` blocks per stage, the last one pooling.

    ``channels`` gives the width of each stage; the number of stages is its length.
    Kernel shape, pooling kind and the N/C/A/P order apply to every block.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128),
        blocks_per_stage: int = 2,
        kernel_size: IntOrSeq = 3,
        norm: str = "batch",
        act: str = "relu",
        pool: str = "max",
        pool_size: IntOrSeq = 2,
        lp_p: float = 2.0,
        order: str = "CNAP",
        stem_stride: IntOrSeq = 1,
    ) -> None:
        common = dict(kernel_size=kernel_size, norm=norm, act=act, lp_p=lp_p, order=order)

        def block(width: int, out: int, first: bool, last: bool) -> nn.Module:
            stride = stem_stride if first else 1
            return ConvBlock(spatial_dims, width, out, stride=stride, pool=pool if last else "none",
                             pool_size=pool_size, **common)  # fmt: skip

        stages = stacked_stages(in_channels, channels, blocks_per_stage, block)
        super().__init__(spatial_dims, stages)


# LeNet-5's C3 connection table (LeCun et al. 1998, Table I): which of S2's six maps
# feed each of C3's sixteen. Six maps see 3 contiguous inputs, nine see 4, one sees all.
LENET5_C3_TABLE = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)  # fmt: skip
NAMED_TABLES["lenet5_c3"] = LENET5_C3_TABLE


@register_backbone("lenet5")
class LeNet5(StagedBackbone):
    """LeNet-5's feature extractor (1998 layout) for a 32×32 (or 32³) input.

    C1: 6 maps, 5×5 filters → S2: 2×2 subsampling → C3: 16 maps, 5×5 → S4: 2×2
    subsampling → C5: 120 maps, 5×5, which on a 32×32 input is 1×1, i.e. fully
    connected. F6 (84 units) and the classifier are the head's ``hidden=(84,)``.

    The defaults are the paper's tanh and average pooling with no normalisation;
    ``act``, ``pool`` and ``norm`` turn it into a modern LeNet-style net. With
    ``c3_table=True`` C3 keeps only the paper's partial connections, expressed as the
    parameter transformation ``w = u * mask`` so the masked weights stay exactly zero.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        widths: Sequence[int] = (6, 16, 120),
        kernel_size: IntOrSeq = 5,
        act: str = "tanh",
        pool: str = "avg",
        norm: str = "none",
        order: str = "CNAP",
        c3_table: bool = False,
    ) -> None:
        c1, c3, c5 = widths
        common = dict(kernel_size=kernel_size, padding=0, act=act, norm=norm, order=order)
        stages = [
            ConvBlock(spatial_dims, in_channels, c1, pool=pool, **common),
            ConvBlock(spatial_dims, c1, c3, pool=pool, **common),
            ConvBlock(spatial_dims, c3, c5, pool="none", **common),
        ]
        super().__init__(spatial_dims, stages)
        if c3_table:
            if (c1, c3) != (6, 16):
                raise ConfigError(f"c3_table=True needs widths (6, 16, ...), got {tuple(widths)}")
            conv = next(m for m in stages[1].modules() if isinstance(m, nn.modules.conv._ConvNd))
            mask_weights(conv, connection_mask(LENET5_C3_TABLE, conv.weight.shape))
