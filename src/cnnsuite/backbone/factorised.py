"""A factorised (2+1)D CNN: every 3D filter split into a spatial and a temporal one.

Tran et al. (2018, "A Closer Look at Spatiotemporal Convolutions") replace a ``t×k×k``
convolution by a ``1×k×k`` spatial convolution into ``M`` maps followed by a ``t×1×1``
temporal one, with a non-linearity between them; ``M`` is chosen so the pair has about the
parameters of the full 3D filter. The network is :class:`~cnnsuite.backbone.ConvNet`'s
VGG-style layout with each block made of two :class:`ConvBlock` s — twice the
non-linearities for the same parameter count, and motion modelled by its own filters.
Axes are ``(T, H, W)``, as in ``Conv3d`` on ``(N, C, T, H, W)`` clips.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..errors import ConfigError
from .blocks import ConvBlock, IntOrSeq, as_tuple
from .networks import StagedBackbone, stacked_stages
from .registry import register_backbone


def factorised_width(in_channels: int, out_channels: int, t: int, area: int) -> int:
    """Tran et al.'s ``M = floor(t k² N_in N_out / (k² N_in + t N_out))``, with the spatial
    kernel's area ``kh kw`` for ``k²``: the (2+1)D pair then has about as many weights as one
    ``t×kh×kw`` filter, and never more."""
    return max(1, (t * area * in_channels * out_channels) // (area * in_channels + t * out_channels))


@register_backbone("convnet2plus1d")
class ConvNet2Plus1D(StagedBackbone):
    """ConvNet with (2+1)D blocks: ``1×k×k`` spatial then ``t×1×1`` temporal convolution.

    ``kernel_size`` is ``(t, k, k)`` (an int means ``t = k``); ``pool_size`` and
    ``stem_stride`` are per axis ``(T, H, W)``, e.g. ``[1, 2, 2]`` to keep time at full rate.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 3,
        channels: Sequence[int] = (32, 64, 128),
        blocks_per_stage: int = 1,
        kernel_size: IntOrSeq = 3,
        norm: str = "batch",
        act: str = "relu",
        pool: str = "max",
        pool_size: IntOrSeq = 2,
        lp_p: float = 2.0,
        order: str = "CNAP",
        stem_stride: IntOrSeq = 1,
    ) -> None:
        if spatial_dims != 3:
            raise ConfigError(f"spatial_dims={spatial_dims}: a (2+1)D network needs 3 axes (T, H, W)")
        t, kh, kw = as_tuple(kernel_size, 3, "kernel_size")
        stem_t, *stem_hw = as_tuple(stem_stride, 3, "stem_stride")
        common = dict(norm=norm, act=act, lp_p=lp_p, order=order)

        def block(width: int, out: int, first: bool, last: bool) -> nn.Module:
            mid = factorised_width(width, out, t, kh * kw)
            spatial = ConvBlock(3, width, mid, (1, kh, kw), stride=(1, *stem_hw) if first else 1, pool="none", **common)
            temporal = ConvBlock(3, mid, out, (t, 1, 1), stride=(stem_t, 1, 1) if first else 1,
                                 pool=pool if last else "none", pool_size=pool_size, **common)  # fmt: skip
            return nn.Sequential(spatial, temporal)

        stages = stacked_stages(in_channels, channels, blocks_per_stage, block)
        super().__init__(3, stages)
