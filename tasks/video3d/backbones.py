"""PyTorchVideo's reference video networks behind our backbone contract.

``pytorchvideo_x3d`` (Feichtenhofer 2020) and ``pytorchvideo_resnet`` (the 3D ResNet of
PyTorchVideo's "slow" recipes) come from PyTorchVideo's builders with random weights —
nothing is downloaded — and lose their classification head: the task's
:class:`~cnnsuite.training.heads.ClassifierHead` sits on their last feature map as on ours, so a
config compares like with like by changing ``backbone:`` alone. ``backbone_kwargs`` go to the
builder (``create_x3d`` / ``create_resnet``), e.g. ``{width_factor: 1.0, depth_factor: 1.0}``
or ``{model_depth: 50, stem_dim_out: 32}``.
"""

from __future__ import annotations

from torch import nn

from cnnsuite.backbone import StagedBackbone, register_backbone
from cnnsuite.backbone.references import measured_backbone
from cnnsuite.errors import ConfigError

#: Input size of the dry run that reads each stage's channels and stride: (T, H, W).
_PROBE = (4, 64, 64)


def _check(spatial_dims: int, name: str) -> None:
    if spatial_dims != 3:
        raise ConfigError(f"backbone {name!r}: spatial_dims={spatial_dims}, but PyTorchVideo's networks are 3D")


@register_backbone("pytorchvideo_x3d")
def pytorchvideo_x3d(spatial_dims: int = 3, in_channels: int = 3, **kwargs) -> StagedBackbone:
    """X3D from ``pytorchvideo.models.x3d.create_x3d`` (default: X3D-S widths and depths)."""
    from pytorchvideo.models.x3d import create_x3d

    _check(spatial_dims, "pytorchvideo_x3d")
    net = create_x3d(input_channel=in_channels, model_num_class=1, **kwargs)
    return measured_backbone(list(net.blocks[:-1]), in_channels, _PROBE)  # stem, 4 stages; the head dropped


@register_backbone("pytorchvideo_resnet")
def pytorchvideo_resnet(spatial_dims: int = 3, in_channels: int = 3, **kwargs) -> StagedBackbone:
    """3D ResNet from ``pytorchvideo.models.resnet.create_resnet`` (default: ResNet-50)."""
    from pytorchvideo.models.resnet import create_resnet

    _check(spatial_dims, "pytorchvideo_resnet")
    net = create_resnet(input_channel=in_channels, model_num_class=1, **kwargs)
    # stem + res_stage1 as the first stage, as torchvision and MONAI count stages
    stages = [nn.Sequential(net.blocks[0], net.blocks[1]), *net.blocks[2:-1]]
    return measured_backbone(stages, in_channels, _PROBE)
