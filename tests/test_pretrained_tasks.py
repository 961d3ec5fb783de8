"""Every task from a ResNet-18 file in torchvision's published layout (``resnet18-f37072fd.pth``):
the 2D tasks in ``torchvision_resnet18``, the 3D ones in ``monai_resnet18`` (kernels inflated),
multispectral3d's bands as channels (the RGB stem adapted to 13 bands)."""

import pytest
import torch
import torchvision

from cnnsuite.backbone import build_backbone
from cnnsuite.contract import registered_tasks
from cnnsuite.errors import ConfigError

RESNET3D = {"conv1_t_stride": 2, "bias_downsample": False}
#: task → the module's settings that make it a ResNet-18 of its kind (the README's commands)
SETTINGS = {
    "recognition2d": {"backbone": "torchvision_resnet18"},
    "localization2d": {"backbone": "torchvision_resnet18"},
    "detection2d": {"backbone": "torchvision_resnet18"},
    "biomedical3d": {"backbone": "monai_resnet18", "backbone_kwargs": RESNET3D},
    "video3d": {"backbone": "monai_resnet18", "backbone_kwargs": {**RESNET3D, "conv1_t_stride": [1, 2, 2]}},
    "multispectral3d": {"backbone": "torchvision_resnet18", "spatial_dims": 2, "in_channels": 13},
}


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18-f37072fd.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


@pytest.mark.parametrize("task", sorted(SETTINGS))
def test_every_task_starts_from_a_torchvision_resnet18_file_and_logs_it(task, torchvision_file, caplog):
    assert set(SETTINGS) == set(registered_tasks())
    caplog.set_level("INFO")
    module = registered_tasks()[task].module
    model = module(num_classes=3, backbone_weights=f"torchvision:{torchvision_file}", **SETTINGS[task])
    assert "0 mismatched, 0 missing, 2 unused" in caplog.text
    assert "in the source only, unused: fc.bias, fc.weight" in caplog.text
    library = torch.load(torchvision_file, weights_only=True)
    ours = model.feature_backbone().state_dict()
    inflated = ours["stages.3.0.1.conv2.weight"]
    assert torch.allclose(inflated.sum(2) if inflated.dim() == 5 else inflated, library["layer4.1.conv2.weight"])


@pytest.mark.parametrize(("name", "dims"), [("torchvision_resnet18", 2), ("monai_resnet18", 3)])
def test_another_backbones_kwargs_are_one_line_naming_them(name, dims):
    """A task's config keeps its own backbone's kwargs when the command line names a reference
    backbone: the error names them and says how to drop them."""
    with pytest.raises(
        ConfigError, match=r"model.backbone_kwargs for '\w+': channels, pool: not arguments of .*'\{\}'"
    ):
        build_backbone(name, dims, 1, channels=[8, 16], pool="max")
