"""The shared CNN backbone: one code path for 1D, 2D and 3D (``spatial_dims``)."""

from . import references  # noqa: F401  (registers MONAI reference backbones)
from .blocks import ConvBlock, convolve
from .dynamic import DynamicFilter
from .factorised import ConvNet2Plus1D
from .geometry import StageGeometry, check_fits, describe_stages
from .networks import ConvNet, InputAffine, LeNet5, StagedBackbone
from .parametrize import free_parameters, hyper_kernel, mask_weights, symmetric_groups, tie_weights
from .registry import build_backbone, list_backbones, register_backbone
from .residual import BasicBlock, Bottleneck, ResNet

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ConvBlock",
    "ConvNet",
    "ConvNet2Plus1D",
    "DynamicFilter",
    "InputAffine",
    "LeNet5",
    "ResNet",
    "StageGeometry",
    "StagedBackbone",
    "build_backbone",
    "check_fits",
    "convolve",
    "describe_stages",
    "free_parameters",
    "hyper_kernel",
    "list_backbones",
    "mask_weights",
    "register_backbone",
    "symmetric_groups",
    "tie_weights",
]
