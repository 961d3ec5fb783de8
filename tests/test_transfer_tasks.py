"""``--model.backbone_weights``: one task's trained backbone starts another's, through the CLI.

The 2D tasks share one backbone family (recognition2d's default is localization2d's backbone;
detection2d's has two blocks a stage, the first of each taking the transferred weights), and a
2D checkpoint starts a 3D task whose backbone has the same widths, its kernels inflated."""

import pytest
import torch
import yaml
from cnnsuite.tasks.biomedical3d.module import Biomedical3DModule
from cnnsuite.tasks.detection2d.module import DetectionModule
from cnnsuite.tasks.localization2d.module import LocalizationModule
from cnnsuite.tasks.multispectral3d.module import MultispectralModule
from cnnsuite.tasks.video3d.module import VideoClassificationModule
from conftest import fit

from cnnsuite.cli import main
from cnnsuite.training.transfer import backbone_state
from cnnsuite.trust.checkpoint import rebuild_for_inference

FAMILY = "{channels: [8, 16], blocks_per_stage: 1, norm: batch, act: relu, pool: max}"


@pytest.fixture(scope="module")
def recognition(tmp_path_factory):
    """A short recognition2d run on the embedded digits with a two-stage member of the family."""
    tmp = tmp_path_factory.mktemp("source")
    run = fit("recognition2d", tmp, "--model.backbone_kwargs", FAMILY, "--trainer.max_epochs", "1",
              "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
              "--evaluate", "false")  # fmt: skip
    return run / "checkpoints" / "last.ckpt"


def transferred(module_class, source, **kwargs):
    """The target task's backbone right after its module was built from ``source``."""
    return module_class(backbone_weights=str(source), **kwargs).feature_backbone()


def same(theirs: dict, source: dict) -> list[str]:
    """The source's tensors that arrived unchanged (the first conv's differs where the target's
    images have other channels: adapted, as a test of its own checks)."""
    return [k for k, v in source.items() if k in theirs and theirs[k].shape == v.shape and torch.equal(theirs[k], v)]


def test_recognition_backbone_starts_localization_and_detection(recognition, caplog):
    caplog.set_level("INFO")
    source = backbone_state(recognition)
    loc = transferred(LocalizationModule, recognition, backbone_kwargs=yaml.safe_load(FAMILY), roi_stage=-1)
    assert loc.state_dict().keys() == source.keys()
    assert all(torch.equal(loc.state_dict()[k], v) for k, v in source.items())
    two_blocks = {**yaml.safe_load(FAMILY), "blocks_per_stage": 2}
    det = transferred(DetectionModule, recognition, backbone_kwargs=two_blocks, fpn_stages=[0, 1])
    # the first block of each stage arrives; the second, absent from the source, is named and left at init
    assert all(torch.equal(det.state_dict()[k], v) for k, v in source.items())
    assert "missing from the source, left at init: stages.0.1.0.weight" in caplog.text


def test_a_parametrized_checkpoint_gives_the_kernels_its_model_computes(tmp_path):
    """A tied or hypernetwork kernel is stored as its free parameters ``u`` (a vector, a code and
    the hypernetwork's weights): transfer crashed on the first one and would have left the others
    at their initialisation. The checkpoint's model is rebuilt and its kernels ``w = H(u)`` start
    the target's plain convolutions."""
    kernels = "[{stage: 0, kind: symmetric, axes: [1]}, {stage: 1, kind: hyper, code_size: 4, hidden: 8}]"
    parametrized = FAMILY[:-1] + f", parametrize: {kernels}}}"
    run = fit("recognition2d", tmp_path, "--model.backbone_kwargs", parametrized, "--trainer.max_epochs", "1",
              "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
              "--evaluate", "false")  # fmt: skip
    ckpt = run / "checkpoints" / "last.ckpt"
    source, _ = rebuild_for_inference(ckpt)
    convs = source.backbone.named_modules()
    kernels = {name: conv.weight.detach() for name, conv in convs if isinstance(conv, torch.nn.modules.conv._ConvNd)}
    loc = transferred(LocalizationModule, ckpt, backbone_kwargs=yaml.safe_load(FAMILY), roi_stage=-1)
    for name, kernel in kernels.items():
        assert torch.equal(loc.get_submodule(name).weight, kernel), name
    # rebuilt, it is checked as every command checks a checkpoint: one whose class names are
    # lists each holding the next twice (2 KB that read as 2^40 values) grew a fit past 4 GB
    checkpoint = torch.load(ckpt, weights_only=True)
    shared = ["a"]
    for _ in range(40):
        shared = [shared, shared]
    checkpoint["hyper_parameters"]["class_names"] = shared
    torch.save(checkpoint, tmp_path / "shared.ckpt")
    with pytest.raises(ValueError, match=r"shared.ckpt: its entries come to [\d,]+ values when read in full, where"):
        transferred(LocalizationModule, tmp_path / "shared.ckpt", backbone_kwargs=yaml.safe_load(FAMILY), roi_stage=-1)


def test_grey_digits_start_an_rgb_task_through_the_channel_mean(recognition):
    with pytest.raises(ValueError, match=r"backbone_weights_channels='average': expected one of auto, mean, repeat"):
        transferred(LocalizationModule, recognition, in_channels=3, backbone_weights_channels="average")
    rgb = transferred(LocalizationModule, recognition, in_channels=3, backbone_kwargs=yaml.safe_load(FAMILY))
    grey = backbone_state(recognition)["stages.0.0.0.weight"]  # (8, 1, 3, 3)
    torch.testing.assert_close(rgb.state_dict()["stages.0.0.0.weight"], grey.expand(8, 3, 3, 3) / 3)


@pytest.mark.parametrize(
    "module_class, kwargs, depth",
    [
        (Biomedical3DModule, {"spatial_dims": 3}, 3),
        (VideoClassificationModule, {}, 3),  # RGB clips: the grey kernels' channel mean, × 1/3
        (MultispectralModule, {"spatial_dims": 3, "backbone_kwargs": {"kernel_size": [5, 3, 3]}}, 5),  # 5 bands deep
    ],
)
def test_a_2d_checkpoint_starts_each_3d_task_with_inflated_kernels(recognition, module_class, kwargs, depth, caplog):
    caplog.set_level("INFO")
    backbone_kwargs = {**yaml.safe_load(FAMILY), **kwargs.pop("backbone_kwargs", {})}
    target = transferred(module_class, recognition, backbone_kwargs=backbone_kwargs, **kwargs).state_dict()
    source = backbone_state(recognition)
    assert f"{len(source)} of {len(source)} tensors transferred" in caplog.text
    kernel2d, kernel3d = source["stages.1.0.0.weight"], target["stages.1.0.0.weight"]  # (16, 8, 3, 3) → 3D
    assert kernel3d.shape == (16, 8, depth, 3, 3)
    torch.testing.assert_close(kernel3d.sum(dim=2), kernel2d)  # a static input gives the 2D response
    torch.testing.assert_close(kernel3d[:, :, 0], kernel2d / depth)


def test_a_checkpoint_of_another_family_or_no_checkpoint_is_a_clear_error(recognition, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", "tasks/localization2d/config.yaml",
              "--model.backbone_weights", str(tmp_path / "no.ckpt"),
              "--trainer.fast_dev_run", "true", "--data.data_root", str(tmp_path / "data")])  # fmt: skip
    assert "model.backbone_weights" in capsys.readouterr().err
    with pytest.raises(
        ValueError, match=r"none of its \d+ backbone tensors fits this backbone \(model.backbone='lenet5'\)"
    ):
        fit("recognition2d", tmp_path, "--model.backbone", "lenet5", "--model.backbone_kwargs", "{}",
            "--model.backbone_weights", str(recognition), "--trainer.fast_dev_run", "true")  # fmt: skip


def test_a_transferred_run_rebuilds_without_its_source_file(tmp_path, recognition):
    """The checkpoint holds the weights: evaluation must not read the file training started from."""
    copy = tmp_path / "source.ckpt"
    copy.write_bytes(recognition.read_bytes())
    run = fit("recognition2d", tmp_path, "--model.backbone_kwargs", FAMILY, "--model.backbone_weights", str(copy),
              "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1", "--evaluate", "false")  # fmt: skip
    copy.unlink()
    model, _ = rebuild_for_inference(run / "checkpoints" / "last.ckpt")
    assert model.hparams.backbone_weights is None


def test_every_task_names_its_input_channels_and_its_model_takes_them():
    """``channel_names`` is linked like ``in_channels``: images are ``L`` or ``R, G, B``, clips
    RGB, volumes and spectral cubes (one channel, the spectrum an axis) unnamed."""
    from cnnsuite.contract import LINKED, registered_tasks

    names = {}
    for name, task in registered_tasks().items():
        data = task.datamodule()
        names[name] = data.channel_names
        assert data.channel_names is None or len(data.channel_names) == data.in_channels, name
        assert "channel_names" in LINKED and task.module(channel_names=data.channel_names).hparams.channel_names == (
            data.channel_names
        ), name
    assert names == {"biomedical3d": None, "detection2d": ["L"], "localization2d": ["L"],
                     "multispectral3d": None, "recognition2d": ["L"], "video3d": ["R", "G", "B"]}  # fmt: skip
    rgb = registered_tasks()["recognition2d"].datamodule(channels=3)
    assert rgb.channel_names == ["R", "G", "B"]
