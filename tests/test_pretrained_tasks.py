"""Every task from a ResNet-18 file in torchvision's published layout (``resnet18-f37072fd.pth``):
the 2D tasks in ``torchvision_resnet18``, the 3D ones in ``monai_resnet18`` (kernels inflated),
multispectral3d's bands as channels (the RGB stem adapted to 13 bands)."""

from pathlib import Path

import pytest
import torch
import torchvision

from cnnsuite.backbone import build_backbone
from cnnsuite.contract import only_built_in_tasks, registered_tasks
from cnnsuite.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
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
    with only_built_in_tasks():  # every one of ours; a user's task package installed beside them is theirs to test
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


@pytest.mark.parametrize(
    ("name", "dims"), [("torchvision_resnet18", 2), ("monai_resnet18", 3), ("monai_densenet121", 3)]
)
def test_another_backbones_kwargs_are_one_line_naming_them(name, dims):
    """A task's config keeps its own backbone's kwargs when the command line names a reference
    backbone: the error names them and says how to drop them."""
    with pytest.raises(
        ConfigError, match=r"model.backbone_kwargs for '\w+': channels, pool: not arguments of .*'\{\}'"
    ):
        build_backbone(name, dims, 1, channels=[8, 16], pool="max")


@pytest.mark.parametrize(
    ("name", "dims", "kwargs"),
    [("monai_densenet121", 3, {"pretrained": True}), ("torchvision_resnet18", 2, {"weights": "IMAGENET1K_V1"})],
)
def test_no_backbone_kwarg_makes_a_reference_download_weights(name, dims, kwargs, monkeypatch):
    """``backbone_kwargs`` come from configs and from checkpoints' hyper-parameters: none may
    make a library fetch a file (MONAI's DenseNet121 took ``pretrained`` and downloaded
    torchvision's weights into ~/.cache). Weights are given as files, by --model.backbone_weights."""
    import monai.networks.nets.densenet
    import torch.hub

    def no_download(*args, **kwargs):
        raise AssertionError("a download was started")

    for module in (torch.hub, monai.networks.nets.densenet):  # MONAI imported torch.hub's function
        monkeypatch.setattr(module, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    with pytest.raises(ConfigError, match=rf"model.backbone_kwargs for '{name}': {next(iter(kwargs))}: not arguments"):
        build_backbone(name, dims, 1, **kwargs)


def test_the_benchmarks_digits_file_is_torchvisions_layout_and_round_trips(tmp_path):
    """``benchmarks/pretrained.py`` writes recognition2d's grey ResNet-18 as torchvision's RGB
    ``resnet18`` state dict; read back into a grey backbone it gives the same features."""
    import importlib.util

    from cnnsuite.tasks.recognition2d.module import RecognitionModule

    from cnnsuite.training.transfer import backbone_state, transfer_backbone

    spec = importlib.util.spec_from_file_location("bench_pretrained", ROOT / "benchmarks" / "pretrained.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    torch.manual_seed(0)
    source = RecognitionModule(num_classes=10, in_channels=1, backbone="torchvision_resnet18").eval()
    torch.save({"state_dict": source.state_dict()}, tmp_path / "run.ckpt")
    file = bench.torchvision_file(tmp_path / "run.ckpt", tmp_path / "resnet18-digits.pth")
    assert torch.load(file, weights_only=True)["conv1.weight"].shape == (64, 3, 7, 7)
    target = build_backbone("torchvision_resnet18", 2, 1).eval()
    report = transfer_backbone(target, backbone_state(f"torchvision:{file}"))
    assert report.missing == [] and report.mismatched == [] and report.adapted == ["stages.0.0.weight"]
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        for a, b in zip(source.feature_backbone()(x), target(x), strict=True):
            assert (a - b).abs().max().item() <= 1e-5


def test_monai_resnet18_reports_its_stem_stride_per_axis():
    """video3d's stem keeps every frame (stride 1 in time, 2 in space): the reported strides say
    so, and they are the feature maps' own."""
    backbone = build_backbone("monai_resnet18", 3, 3, conv1_t_stride=[1, 2, 2], bias_downsample=False)
    assert [tuple(s) for s in backbone.strides] == [(2, 4, 4), (4, 8, 8), (8, 16, 16), (16, 32, 32)]
    with torch.no_grad():
        assert backbone.eval()(torch.zeros(1, 3, 16, 64, 64))[-1].shape[2:] == (1, 2, 2)


def test_a_clip_shorter_than_monai_resnet18s_stride_is_one_line(tmp_path, capsys):
    """video3d's 8-frame clips through MONAI's ResNet-18 (total stride 16 in time): one line naming
    both, exit status 2, before any data is written."""
    from cnnsuite.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(ROOT / "tasks" / "video3d" / "config.yaml"),
              "--model.backbone", "monai_resnet18",
              "--model.backbone_kwargs", "{conv1_t_stride: [1, 2, 2], bias_downsample: false}",
              "--data.data_root", str(tmp_path / "data"),
              "--trainer.default_root_dir", str(tmp_path / "runs")])  # fmt: skip
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "are 8x32x32 where the backbone's total stride is 16x32x32" in err[-1] and "Traceback" not in "".join(err)
    assert not (tmp_path / "data").exists()
