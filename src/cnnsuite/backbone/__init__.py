"""The shared CNN backbone: one code path for 1D, 2D and 3D (``spatial_dims``)."""

from . import references  # noqa: F401  (registers MONAI reference backbones)
from .blocks import ConvBlock, convolve
from .factorised import ConvNet2Plus1D
from .networks import ConvNet, LeNet5, StagedBackbone
from .parametrize import free_parameters, hyper_kernel, mask_weights, symmetric_groups, tie_weights
from .registry import build_backbone, list_backbones, register_backbone

__all__ = [
    "ConvBlock",
    "ConvNet",
    "ConvNet2Plus1D",
    "LeNet5",
    "StagedBackbone",
    "build_backbone",
    "convolve",
    "free_parameters",
    "hyper_kernel",
    "list_backbones",
    "mask_weights",
    "register_backbone",
    "symmetric_groups",
    "tie_weights",
]
