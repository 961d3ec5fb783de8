"""MONAI's reference networks behind our backbone contract, for comparison runs.

They are built with random weights (nothing is downloaded) and lose their classifier:
a :class:`~cnnsuite.heads.ClassifierHead` sits on their features like on ours, so a config
can swap ``backbone: convnet`` for ``monai_resnet18`` and compare like with like.
"""

from __future__ import annotations

from torch import nn

from .networks import StagedBackbone
from .registry import register_backbone


class _Stage(nn.Sequential):
    """Foreign layers with the geometry our backbone contract reports."""

    def __init__(self, *layers: nn.Module, spatial_dims: int, out_channels: int, stride: int) -> None:
        super().__init__(*layers)
        self.out_channels, self.stride = out_channels, (stride,) * spatial_dims


@register_backbone("monai_resnet18")
def monai_resnet18(spatial_dims: int = 3, in_channels: int = 1, **kwargs) -> StagedBackbone:
    """MONAI's ResNet-18 (Hara et al.'s 3D ResNets); stages are its layer1..layer4."""
    from monai.networks.nets import resnet18

    net = resnet18(spatial_dims=spatial_dims, n_input_channels=in_channels, num_classes=1, **kwargs)
    stem_stride = net.conv1.stride[0] * (1 if isinstance(net.maxpool, nn.Identity) else 2)
    stem = (net.conv1, net.bn1, net.act, net.maxpool)
    stages = [_Stage(*stem, net.layer1, spatial_dims=spatial_dims, out_channels=_width(net.layer1), stride=stem_stride)]
    for layer in (net.layer2, net.layer3, net.layer4):
        stages.append(_Stage(layer, spatial_dims=spatial_dims, out_channels=_width(layer), stride=2))
    return StagedBackbone(spatial_dims, stages)


@register_backbone("monai_densenet121")
def monai_densenet121(spatial_dims: int = 3, in_channels: int = 1, **kwargs) -> StagedBackbone:
    """MONAI's DenseNet-121; one stage, its whole feature extractor (stride 32)."""
    from monai.networks.nets import DenseNet121

    net = DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=1, **kwargs)
    width = net.class_layers.out.in_features
    stage = _Stage(net.features, nn.ReLU(), spatial_dims=spatial_dims, out_channels=width, stride=32)
    return StagedBackbone(spatial_dims, [stage])


def _width(layer: nn.Sequential) -> int:
    last = layer[-1]
    return (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features
