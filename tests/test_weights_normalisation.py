"""Pretrained weights see their input normalised as they were trained: the publisher's record of
the weights (mean, std, input size, classes) is read from torchvision or beside a timm file, kept
in the checkpoint and the export's JSON, and the task's fixed normalisation is mapped onto it
inside the network."""

import json
import re

import pytest
import torch
import torchvision
from conftest import fit
from test_pretrained import randomise_batchnorm, resnet_stages
from torchvision.transforms import v2

from cnnsuite.training.classification import ClassificationModule
from cnnsuite.training.pretrained import weights_metadata
from cnnsuite.trust.checkpoint import rebuild_for_inference
from cnnsuite.use.export import export

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
SYMMETRIC = {"mean": [0.5] * 3, "std": [0.5] * 3}


@pytest.fixture
def imagenet_file(tmp_path):
    """torchvision's ResNet-18 with random weights, saved under the file name torchvision publishes
    its ImageNet weights as."""
    library = torchvision.models.resnet18()
    randomise_batchnorm(library)
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(library.state_dict(), path)
    return library.eval(), path


def test_torchvision_and_timm_record_what_their_weights_expect(tmp_path, imagenet_file, monkeypatch):
    _, path = imagenet_file
    record = {"weights": "torchvision:ResNet18_Weights.IMAGENET1K_V1", **IMAGENET, "input_size": [224],
              "categories": 1000}  # fmt: skip
    assert weights_metadata(f"torchvision:{path}") == record
    assert weights_metadata(str(path)) == record  # the file name says which weights they are
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    path.rename(tmp_path / "hub" / "checkpoints" / path.name)
    assert weights_metadata("torchvision:ResNet18_Weights.IMAGENET1K_V1") == record

    timm_dir = tmp_path / "timm"
    timm_dir.mkdir()
    (timm_dir / "model.safetensors").touch()
    assert weights_metadata(f"timm:{timm_dir / 'model.safetensors'}") is None  # no config.json beside it
    cfg = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2], "input_size": [3, 160, 160], "tag": "a1_in1k"}
    (timm_dir / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 1000,
                                                      "pretrained_cfg": cfg}))  # fmt: skip
    assert weights_metadata(f"timm:{timm_dir / 'model.safetensors'}") == {
        "weights": "timm:resnet18.a1_in1k", "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2], "input_size": [160, 160],
        "categories": 1000,
    }  # fmt: skip
    other = tmp_path / "mine.pth"
    other.touch()
    assert weights_metadata(f"torchvision:{other}") is None and weights_metadata(str(other)) is None


def test_a_backbone_from_imagenet_weights_sees_the_tasks_input_as_imagenet_normalised(imagenet_file, caplog):
    """A task that feeds [-1, 1] pixels gets, from an ImageNet file, the library's features of the
    same pixels normalised by ImageNet's mean and std; rebuilt from its hyper-parameters without
    the file (as a checkpoint is), it maps the input the same way."""
    caplog.set_level("INFO")
    library, path = imagenet_file
    kwargs = {"num_classes": 2, "in_channels": 3, "backbone": "torchvision_resnet18", "input_normalisation": SYMMETRIC}
    task = ClassificationModule(**kwargs, backbone_weights=f"torchvision:{path}").eval()
    assert task.hparams.backbone_weights_meta["mean"] == IMAGENET["mean"]
    assert "are mapped onto its mean [0.485, 0.456, 0.406]" in caplog.text
    pixels = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        theirs = resnet_stages(library, v2.Normalize(**IMAGENET)(pixels))[-1]
        ours = task.feature_backbone()(v2.Normalize(**SYMMETRIC)(pixels))[-1]
    assert (theirs - ours).abs().max().item() <= 1e-5

    rebuilt = ClassificationModule(**{**task.hparams, "backbone_weights": None}).eval()
    rebuilt.load_state_dict(task.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.feature_backbone()(v2.Normalize(**SYMMETRIC)(pixels))[-1], ours)
    plain = ClassificationModule(**kwargs).eval()
    plain.load_state_dict(task.state_dict())
    with torch.no_grad():  # without the weights' record the same tensors see another input
        assert not torch.allclose(plain.feature_backbone()(v2.Normalize(**SYMMETRIC)(pixels))[-1], ours)


def test_a_task_with_its_own_statistics_keeps_them(imagenet_file, caplog):
    caplog.set_level("INFO")
    _, path = imagenet_file
    task = ClassificationModule(num_classes=2, in_channels=3, backbone="torchvision_resnet18",
                                backbone_weights=str(path))  # fmt: skip
    assert task.feature_backbone().input_map is None
    assert "its mean/std not applied: this task normalises by its data's own statistics" in caplog.text


def test_a_gray_task_takes_the_mean_of_the_rgb_statistics(imagenet_file):
    _, path = imagenet_file
    gray = {"mean": [0.5], "std": [0.5]}
    task = ClassificationModule(num_classes=2, in_channels=1, backbone="torchvision_resnet18",
                                backbone_weights=str(path), input_normalisation=gray)  # fmt: skip
    affine = task.feature_backbone().input_map
    mean, std = sum(IMAGENET["mean"]) / 3, sum(IMAGENET["std"]) / 3
    assert affine.scale.flatten().tolist() == pytest.approx([0.5 / std])
    assert affine.shift.flatten().tolist() == pytest.approx([(0.5 - mean) / std])


def test_a_detector_normalises_by_the_weights_unless_told_otherwise(imagenet_file):
    from cnnsuite.tasks.detection2d.module import DetectionModule

    _, path = imagenet_file
    kwargs = {"num_classes": 2, "in_channels": 3, "backbone": "torchvision_resnet18", "fpn_stages": [1, 2, 3],
              "backbone_weights": str(path)}  # fmt: skip
    transform = DetectionModule(**kwargs).detector.transform
    assert (transform.image_mean, transform.image_std) == (IMAGENET["mean"], IMAGENET["std"])
    own = DetectionModule(**kwargs, image_mean=[0.5] * 3, image_std=[0.25] * 3).detector.transform
    assert (own.image_mean, own.image_std) == ([0.5] * 3, [0.25] * 3)


def test_a_run_from_imagenet_weights_keeps_their_record_in_its_checkpoint_and_export(
    tmp_path, imagenet_file, image_folder
):
    _, path = imagenet_file
    run = fit("recognition2d", tmp_path, "--data.data_dir", str(image_folder), "--data.channels", "3",
              "--data.batch_size", "8", "--model.init_args.backbone", "torchvision_resnet18",
              "--model.init_args.backbone_kwargs", "{}",
              "--model.init_args.backbone_weights", f"torchvision:{path}", "--trainer.max_epochs", "1",
              "--evaluate", "false")  # fmt: skip
    ckpt = run / "checkpoints" / "best.ckpt"
    model, _ = rebuild_for_inference(ckpt)
    assert model.hparams.backbone_weights is None  # the file is never read again
    assert model.hparams.input_normalisation == SYMMETRIC
    assert model.feature_backbone().input_map is not None
    out = tmp_path / "model.onnx"
    _, info = export(ckpt, "onnx", out)
    assert info["backbone_weights"]["weights"] == "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    assert json.loads((tmp_path / "model.onnx.json").read_text())["backbone_weights"]["std"] == IMAGENET["std"]


@pytest.mark.parametrize(
    ("meta", "named"),
    [
        ({"mean": ["a", "b", "c"], "std": [0.2] * 3}, "backbone_weights_meta.mean=['a', 'b', 'c']"),
        (
            {"mean": [0.5] * 3, "std": [0.2, 0, 0.2]},
            "backbone_weights_meta.std=[0.2, 0, 0.2]: expected numbers above 0",
        ),
        ("imagenet", "backbone_weights_meta='imagenet': expected a mapping"),
    ],
)
def test_a_weights_record_given_by_hand_that_is_not_numbers_is_a_config_error(meta, named):
    """``model.backbone_weights_meta`` may be given in a config: a mean or std that is not numbers
    (or a std of 0) is refused naming the key, not a traceback from the affine map."""
    from cnnsuite.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(named)):
        ClassificationModule(num_classes=2, in_channels=3, input_normalisation=SYMMETRIC, backbone_weights_meta=meta)


def test_a_single_number_for_the_weights_mean_and_std_serves_every_channel():
    task = ClassificationModule(
        num_classes=2, in_channels=3, input_normalisation=SYMMETRIC, backbone_weights_meta={"mean": 0.5, "std": 0.25}
    )
    x = torch.rand(1, 3, 8, 8)
    assert torch.allclose(task.feature_backbone().input_map(x), (x * 0.5 + 0.5 - 0.5) / 0.25, atol=1e-6)
