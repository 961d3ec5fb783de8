"""The convolutional block of the lecture notes, for 1, 2 or 3 spatial dimensions.

A block is a sequence of four kinds of layer, in an order the caller chooses:

- ``N`` normalisation (batch, group, instance, or none),
- ``C`` filter: a convolution (cross-correlation, as in every deep-learning library),
  with a kernel shape, stride and padding given per axis, so kernels need not be
  square or cubic,
- ``A`` non-linearity (ReLU, Tanh, ...),
- ``P`` pooling (max, average, or Lp-norm with a configurable ``p``).

The order is a string such as ``"CNAP"`` (the default: filter, norm, non-linearity,
pool) or ``"CAPN"`` (normalisation after pooling). One code path serves every
dimensionality: layer classes are looked up by ``spatial_dims``, as MONAI's factories do.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.pooling import _LPPoolNd

from ..errors import ConfigError

IntOrSeq = int | Sequence[int]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BATCHNORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_INSTANCENORM = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_MAXPOOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_AVGPOOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
_ADAPTIVE_AVGPOOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "leakyrelu": nn.LeakyReLU,
}
NORMS = ("batch", "group", "instance", "none")
POOLS = ("max", "avg", "lp", "none")


def as_tuple(value: IntOrSeq, spatial_dims: int, key: str, least: int = 1) -> tuple[int, ...]:
    """Expand an int to one value per axis, or check that a sequence has one per axis. Sizes
    are whole numbers (an int, a NumPy integer, a 0-d integer tensor; Python ints out): a bool,
    a string or a fraction (``3.5``, which ``int`` would round down) is refused naming ``key``,
    and so is a size below ``least`` (0 for a padding), which torch's layers meet only with
    their own traceback (a negative dimension, a zero stride)."""

    def whole(v: object) -> int | None:
        if isinstance(v, bool | str | bytes):
            return None
        try:
            return operator.index(v)
        except TypeError:
            return None

    if (size := whole(value)) is not None:
        return _at_least((size,) * spatial_dims, key, least)
    try:
        sizes = None if isinstance(value, str | bytes) else [whole(v) for v in value]
    except TypeError:  # not iterable (a float, a 0-d float tensor)
        sizes = None
    if sizes is None or None in sizes:
        raise ConfigError(f"{key}={value!r}: expected an int or {spatial_dims} ints, one per axis")
    if len(sizes) != spatial_dims:
        raise ConfigError(f"{key}={sizes}: expected an int or {spatial_dims} values, one per axis")
    return _at_least(tuple(sizes), key, least)


def _at_least(sizes: tuple[int, ...], key: str, least: int) -> tuple[int, ...]:
    if any(s < least for s in sizes):
        raise ConfigError(f"{key}={list(sizes)}: expected sizes of {least} or more, one per axis")
    return sizes


def _check_dims(spatial_dims: int) -> None:
    if spatial_dims not in _CONV:
        raise ConfigError(f"spatial_dims={spatial_dims}: expected 1, 2 or 3")


def conv_layer(spatial_dims: int, *args, **kwargs) -> nn.Module:
    _check_dims(spatial_dims)
    return _CONV[spatial_dims](*args, **kwargs)


def norm_layer(spatial_dims: int, kind: str, channels: int, groups: int = 8) -> nn.Module:
    """A normalisation layer; ``group`` falls back to fewer groups when channels are few."""
    _check_dims(spatial_dims)
    if kind == "batch":
        return _BATCHNORM[spatial_dims](channels)
    if kind == "instance":
        return _INSTANCENORM[spatial_dims](channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(_largest_divisor(channels, groups), channels)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"norm={kind!r}: expected one of {', '.join(NORMS)}")


def _largest_divisor(channels: int, at_most: int) -> int:
    return max(g for g in range(1, min(channels, at_most) + 1) if channels % g == 0)


def activation_layer(kind: str) -> nn.Module:
    if not isinstance(kind, str) or kind.lower() not in ACTIVATIONS:  # a config may give a number or a mapping
        raise ConfigError(f"act={kind!r}: expected one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[kind.lower()]()


def pool_layer(spatial_dims: int, kind: str, size: IntOrSeq, p: float = 2.0) -> nn.Module:
    """Max, average or Lp-norm pooling (``(sum |x|^p)^(1/p)`` over each window)."""
    _check_dims(spatial_dims)
    size = as_tuple(size, spatial_dims, "pool_size")
    if kind == "max":
        return _MAXPOOL[spatial_dims](size)
    if kind == "avg":
        return _AVGPOOL[spatial_dims](size)
    if kind == "lp":
        return LpNormPool(spatial_dims, p, size)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"pool={kind!r}: expected one of {', '.join(POOLS)}")


class LpNormPool(_LPPoolNd):
    """The Lp norm of each window, ``(sum |x|^p)^(1/p)``, for 1, 2 or 3 spatial dimensions.

    PyTorch's ``LPPool`` raises ``x`` itself to the power ``p``: the norm only for inputs that are
    never negative or an even ``p``; an odd or fractional ``p`` on negative values gives NaN or a
    negative "norm". A window of zeros has a zero gradient (the ReLU masks ``0^(1/p)``'s infinite
    slope, as in PyTorch's own)."""

    def __init__(self, spatial_dims: int, p: float, kernel_size: tuple[int, ...]) -> None:
        if isinstance(p, bool) or not isinstance(p, int | float) or not 1 <= p < math.inf:
            raise ConfigError(f"lp_p={p!r}: expected a number >= 1 (an Lp norm; pool: max is p = infinity)")
        super().__init__(float(p), kernel_size)
        self.spatial_dims = spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = getattr(F, f"avg_pool{self.spatial_dims}d")
        mean = pool(x.abs().pow(self.norm_type), self.kernel_size, self.stride, ceil_mode=self.ceil_mode)
        return F.relu(mean).mul(math.prod(self.kernel_size)).pow(1.0 / self.norm_type)


def global_avg_pool(spatial_dims: int) -> nn.Module:
    _check_dims(spatial_dims)
    return _ADAPTIVE_AVGPOOL[spatial_dims](1)


class ConvBlock(nn.Sequential):
    """Normalisation, filter, non-linearity and pooling in the order ``order`` names.

    ``out_channels`` and ``stride`` (the product of the convolution's and the pool's
    per-axis strides) let a network built from blocks report its feature-map geometry.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrSeq = 3,
        stride: IntOrSeq = 1,
        padding: IntOrSeq | str = "same_if_unit_stride",
        norm: str = "batch",
        act: str = "relu",
        pool: str = "none",
        pool_size: IntOrSeq = 2,
        lp_p: float = 2.0,
        order: str = "CNAP",
    ) -> None:
        _check_dims(spatial_dims)
        if sorted(order) != sorted("CNAP"):
            raise ConfigError(f"order={order!r}: expected each of the letters C, N, A, P once")
        kernel_size = as_tuple(kernel_size, spatial_dims, "kernel_size")
        stride = as_tuple(stride, spatial_dims, "stride")
        if padding == "same_if_unit_stride":
            # Keep the size at stride 1; otherwise let the stride shrink it. An even kernel has
            # no centre: its k // 2 would grow each map by one, a silent misalignment (MONAI's
            # same padding refuses it too).
            if any(k % 2 == 0 and s == 1 for k, s in zip(kernel_size, stride, strict=True)):
                raise ConfigError(
                    f"kernel_size={list(kernel_size)}: expected odd sizes where the stride is 1 (an even kernel has "
                    "no centre to keep the map's size by)"
                )
            padding = tuple(k // 2 for k in kernel_size)
        elif not isinstance(padding, str):
            padding = as_tuple(padding, spatial_dims, "padding", least=0)
        # Normalisation sees the convolution's output channels wherever it sits, except
        # before the filter, where it sees the input.
        norm_channels = in_channels if order.index("N") < order.index("C") else out_channels
        layers = {
            "C": conv_layer(
                spatial_dims,
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=padding,
                bias=not _norm_cancels_bias(order, norm, pool),
            ),
            "N": norm_layer(spatial_dims, norm, norm_channels),
            "A": activation_layer(act),
            "P": pool_layer(spatial_dims, pool, pool_size, lp_p),
        }
        super().__init__(*(layers[letter] for letter in order))
        self.spatial_dims = spatial_dims
        self.out_channels = out_channels
        pool_stride = (1,) * spatial_dims if pool == "none" else as_tuple(pool_size, spatial_dims, "pool_size")
        self.stride = tuple(s * q for s, q in zip(stride, pool_stride, strict=True))


def _norm_cancels_bias(order: str, norm: str, pool: str) -> bool:
    """Whether a normalisation after the filter makes the filter's bias redundant.

    A per-channel constant passes through max and average pooling, batch and instance norms
    subtract it again with the mean, and the norm's own shift takes its place (the convention
    for group norm too). A non-linearity (or an Lp pool) between the filter and the norm makes
    the bias a learnt threshold, which ``CAPN`` needs as much as a block without a norm."""
    between = order[order.index("C") + 1 : order.index("N")]  # empty when N comes first
    return (
        norm != "none"
        and order.index("C") < order.index("N")
        and "A" not in between
        and ("P" not in between or pool != "lp")
    )


def convolve(x: torch.Tensor, kernel: torch.Tensor, padding: IntOrSeq | str = 0) -> torch.Tensor:
    """True (mathematical) convolution ``y_i = sum_j w_j x_{i-j}``.

    Deep-learning "convolutions" compute the cross-correlation ``y_i = sum_j w_j x_{i+j}``;
    a true convolution is the cross-correlation with the kernel flipped along every
    spatial axis. ``x`` is ``(N, C_in, *spatial)`` and ``kernel`` ``(C_out, C_in, *k)``.
    """
    spatial_dims = kernel.dim() - 2
    _check_dims(spatial_dims)
    flipped = torch.flip(kernel, dims=tuple(range(2, kernel.dim())))
    return getattr(F, f"conv{spatial_dims}d")(x, flipped, padding=padding)
