"""Reference networks behind our backbone contract, for comparison runs.

They are built with random weights (nothing is downloaded; ``model.backbone_weights`` fills them
from the files their libraries publish: :mod:`cnnsuite.training.pretrained`) and lose their classifier:
a :class:`~cnnsuite.training.heads.ClassifierHead` sits on their features like on ours, so a config
can swap ``backbone: convnet`` for ``monai_resnet18`` and compare like with like. MONAI's ResNet-18
and DenseNet-121, torchvision's ResNet-18, ResNet-50 and MobileNetV3 (Large, Small) are registered
here; tasks register others (a video task: PyTorchVideo's) with the same tools.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn

from ..classpath import class_path
from ..errors import ConfigError
from .networks import StagedBackbone
from .registry import register_backbone


class ForeignStage(nn.Sequential):
    """Foreign layers with the geometry our backbone contract reports (``stride`` per axis,
    relative to the stage's input)."""

    def __init__(self, *layers: nn.Module, out_channels: int, stride: tuple[int, ...]) -> None:
        super().__init__(*layers)
        self.out_channels, self.stride = out_channels, tuple(stride)


def measured_backbone(stages: Sequence[nn.Module], in_channels: int, probe: tuple[int, ...]) -> StagedBackbone:
    """A :class:`StagedBackbone` of foreign stages whose channels and strides are read off one
    dry run on a zero input of spatial size ``probe`` (in eval mode: batch-norm statistics
    stay untouched)."""
    x, shapes = torch.zeros(1, in_channels, *probe), []
    modes = [stage.training for stage in stages]
    with torch.no_grad():
        for stage in stages:
            x = stage.eval()(x)
            shapes.append(x.shape)
    for stage, mode in zip(stages, modes, strict=True):
        stage.train(mode)
    wrapped, previous = [], probe
    for stage, shape in zip(stages, shapes, strict=True):
        stride = tuple(p // s for p, s in zip(previous, shape[2:], strict=True))
        wrapped.append(ForeignStage(stage, out_channels=shape[1], stride=stride))
        previous = tuple(shape[2:])
    return StagedBackbone(len(probe), wrapped)


@register_backbone("monai_resnet18")
def monai_resnet18(spatial_dims: int = 3, in_channels: int = 1, **kwargs) -> StagedBackbone:
    """MONAI's ResNet-18 (Hara et al.'s 3D ResNets); stages are its layer1..layer4."""
    from monai.networks.nets import ResNet, resnet18

    _check_kwargs(
        "monai_resnet18",
        ResNet,
        kwargs,
        fixed=("block", "layers", "block_inplanes", "spatial_dims", "n_input_channels", "num_classes"),
    )
    net = resnet18(spatial_dims=spatial_dims, n_input_channels=in_channels, num_classes=1, **kwargs)
    # MONAI builds its max pool even with no_max_pool=True, and skips it in its own forward
    maxpool, pool = (nn.Identity(), 1) if net.no_max_pool else (net.maxpool, 2)
    stem_stride = tuple(stride * pool for stride in net.conv1.stride)  # conv1_t_stride may differ per axis
    stem = (net.conv1, net.bn1, net.act, maxpool)
    stages = [ForeignStage(*stem, net.layer1, out_channels=_width(net.layer1), stride=stem_stride)]
    for layer in (net.layer2, net.layer3, net.layer4):
        stages.append(ForeignStage(layer, out_channels=_width(layer), stride=(2,) * spatial_dims))
    return StagedBackbone(spatial_dims, stages)


@register_backbone("monai_densenet121")
def monai_densenet121(spatial_dims: int = 3, in_channels: int = 1, **kwargs) -> StagedBackbone:
    """MONAI's DenseNet-121; one stage, its whole feature extractor (stride 32). Its kwargs are
    :class:`monai.networks.nets.DenseNet`'s: DenseNet121's own ``pretrained`` would download
    torchvision's 2D weights, which a config or a checkpoint's hyper-parameters must not make it do."""
    from monai.networks.nets import DenseNet, DenseNet121

    _check_kwargs("monai_densenet121", DenseNet, kwargs, fixed=("spatial_dims", "in_channels", "out_channels"))
    net = DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=1, **kwargs)
    width = net.class_layers.out.in_features
    stage = ForeignStage(net.features, nn.ReLU(), out_channels=width, stride=(32,) * spatial_dims)
    return StagedBackbone(spatial_dims, [stage])


@register_backbone("torchvision_resnet18")
def torchvision_resnet18(spatial_dims: int = 2, in_channels: int = 3, **kwargs) -> StagedBackbone:
    """torchvision's 2D ResNet-18 with its first convolution taking ``in_channels`` (13 bands,
    one grey channel, ...), as TorchGeo trains EuroSAT; stages are its layer1..layer4."""
    return _torchvision_resnet("resnet18", spatial_dims, in_channels, **kwargs)


@register_backbone("torchvision_resnet50")
def torchvision_resnet50(spatial_dims: int = 2, in_channels: int = 3, **kwargs) -> StagedBackbone:
    """torchvision's 2D ResNet-50 (bottleneck blocks, 256 … 2048 channels), first convolution
    taking ``in_channels``; stages are its layer1..layer4."""
    return _torchvision_resnet("resnet50", spatial_dims, in_channels, **kwargs)


def _torchvision_resnet(arch: str, spatial_dims: int, in_channels: int, **kwargs) -> StagedBackbone:
    if spatial_dims != 2:
        raise ConfigError(f"model.spatial_dims={spatial_dims}: torchvision_{arch} is a 2D network")
    import torchvision

    _check_kwargs(f"torchvision_{arch}", torchvision.models.ResNet, kwargs, fixed=("block", "layers"))
    net = getattr(torchvision.models, arch)(weights=None, **kwargs)
    net.conv1 = nn.Conv2d(in_channels, net.conv1.out_channels, kernel_size=7, stride=2, padding=3, bias=False)
    stem = (net.conv1, net.bn1, net.relu, net.maxpool)
    stages = [ForeignStage(*stem, net.layer1, out_channels=_width(net.layer1), stride=(4, 4))]
    for layer in (net.layer2, net.layer3, net.layer4):
        stages.append(ForeignStage(layer, out_channels=_width(layer), stride=(2, 2)))
    return StagedBackbone(2, stages)


@register_backbone("torchvision_mobilenet_v3_large")
def torchvision_mobilenet_v3_large(spatial_dims: int = 2, in_channels: int = 3, **kwargs) -> StagedBackbone:
    """torchvision's MobileNetV3-Large, first convolution taking ``in_channels``; its stages are
    the feature maps torchvision's detection backbones take (16, 24, 40, 80, 160, 960 channels
    at strides 2 … 32)."""
    return _torchvision_mobilenet("mobilenet_v3_large", spatial_dims, in_channels, **kwargs)


@register_backbone("torchvision_mobilenet_v3_small")
def torchvision_mobilenet_v3_small(spatial_dims: int = 2, in_channels: int = 3, **kwargs) -> StagedBackbone:
    """torchvision's MobileNetV3-Small, first convolution taking ``in_channels``; stages as
    :func:`torchvision_mobilenet_v3_large`'s (16, 16, 24, 40, 96, 576 channels)."""
    return _torchvision_mobilenet("mobilenet_v3_small", spatial_dims, in_channels, **kwargs)


def _torchvision_mobilenet(arch: str, spatial_dims: int, in_channels: int, **kwargs) -> StagedBackbone:
    """Stages split where torchvision's ``_mobilenet_extractor`` takes its feature maps: after the
    stem, after each block that strides (``_is_cn``) and after the last convolution, so a
    detector on our stages sees the maps torchvision's sees."""
    if spatial_dims != 2:
        raise ConfigError(f"model.spatial_dims={spatial_dims}: torchvision_{arch} is a 2D network")
    import torchvision

    features = getattr(torchvision.models, arch)(weights=None, **kwargs).features
    stem = features[0][0]
    features[0][0] = nn.Conv2d(
        in_channels, stem.out_channels, stem.kernel_size, stride=stem.stride, padding=stem.padding, bias=False
    )
    ends = [0] + [i for i, block in enumerate(features) if getattr(block, "_is_cn", False)] + [len(features) - 1]
    starts = [0] + [end + 1 for end in ends[:-1]]
    stages = [nn.Sequential(*features[start : end + 1]) for start, end in zip(starts, ends, strict=True)]
    return measured_backbone(stages, in_channels, probe=(64, 64))


def _check_kwargs(name: str, cls: type, kwargs: dict, fixed: Sequence[str]) -> None:
    """``model.backbone_kwargs`` the library's class does not take are a one-line ``ConfigError``:
    most often a task config's kwargs for its own backbone, kept when the command line names a
    reference one."""
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self", *fixed}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ConfigError(
            f"model.backbone_kwargs for {name!r}: {', '.join(unknown)}: not arguments of "
            f"{class_path(cls)} (it takes {', '.join(sorted(allowed))}); "
            "a config's kwargs of another backbone are dropped with --model.backbone_kwargs '{}'"
        )


def _width(layer: nn.Sequential) -> int:
    last = layer[-1]
    return (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features
