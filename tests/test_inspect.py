"""cnnsuite inspect: pictures and the stage table of a trained checkpoint, on a 2D task
(recognition2d with LeNet-5) and a 3D task (biomedical3d)."""

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import fit, make_image_folder
from monai.visualize import GradCAM
from PIL import Image
from test_biomedical3d import SMALL, make_volume_folder

from cnnsuite.backbone import build_backbone
from cnnsuite.cli import main
from cnnsuite.trust.checkpoint import rebuild
from cnnsuite.use.inspection import (
    TOP_CHANNELS,
    TOP_PER_CHANNEL,
    cam_stage,
    first_conv,
    grad_cam,
    held_out_batches,
    model_batch,
    network_of,
    stage_rows,
    stages_markdown,
    top_samples,
)

PICTURES = ("filters.png", "top_samples.png", "gradcam.png")


@pytest.fixture(scope="module")
def recognition(tmp_path_factory):
    """A one-epoch recognition2d run on a user folder: ``(image folder, checkpoint)``."""
    tmp = tmp_path_factory.mktemp("recognition")
    folder = make_image_folder(tmp / "images", per_class=10)
    run = fit("recognition2d", tmp, "--data.data_dir", str(folder), "--data.batch_size", "8",
              "--model.backbone", "lenet5", "--model.backbone_kwargs", "{act: relu, pool: max, norm: batch}",
              "--trainer.max_epochs", "1", "--evaluate", "false")  # fmt: skip
    return folder, run / "checkpoints" / "best.ckpt"


@pytest.mark.parametrize(
    "name,dims,size",
    [("convnet", 2, 32), ("lenet5", 2, 32), ("resnet", 3, 16), ("convnet2plus1d", 3, 16),
     ("torchvision_mobilenet_v3_small", 2, 32), ("monai_densenet121", 3, 32)],
)  # fmt: skip
def test_the_filters_shown_are_those_the_input_meets_first(name, dims, size):
    """``filters.png`` shows the lowest-level features of the notes: the convolution that sees
    the input, whatever order the network registers its layers in."""
    backbone = build_backbone(name, spatial_dims=dims, in_channels=3).eval()
    met = []
    for module in backbone.modules():
        if isinstance(module, torch.nn.modules.conv._ConvNd):
            module.register_forward_hook(lambda m, *_: met.append(m))
    backbone(torch.randn(1, 3, *(size,) * dims))
    assert first_conv(backbone) is met[0]


def check_pictures(out, stages):
    names = [*PICTURES, *(f"activations_stage{i}.png" for i in range(stages))]
    for name in names:
        with Image.open(out / name) as image:
            image.verify()  # a complete, valid PNG
    assert sorted(p.name for p in out.glob("activations_stage*.png")) == sorted(names[len(PICTURES) :])


def first_sample(ckpt, folder):
    model, datamodule = rebuild(ckpt, ckpt.parent.parent, {"data_dir": folder})
    sample = model_batch(model, next(held_out_batches(datamodule, 1))[:1])
    return model, sample


def test_inspect_a_2d_checkpoint(recognition, tmp_path, capsys):
    folder, ckpt = recognition
    main(["inspect", "--ckpt", str(ckpt), "--data.data_dir", str(folder), "--out", str(tmp_path),
          "--max_samples", "20"])  # fmt: skip
    model, sample = first_sample(ckpt, folder)
    backbone = model.backbone
    check_pictures(tmp_path, len(backbone.stages))
    report = json.loads((tmp_path / "stages.json").read_text())
    with torch.no_grad():
        features = backbone(sample)
    assert report["input_shape"] == list(sample.shape[1:]) == [3, 32, 32]
    assert [row["index"] for row in report["stages"]] == list(range(len(backbone.stages)))
    assert [row["stride"] for row in report["stages"]] == [list(s) for s in backbone.strides]
    assert [row["out_shape"] for row in report["stages"]] == [list(f.shape[1:]) for f in features]
    assert all(row["flops"] > 0 and row["parameters"] > 0 for row in report["stages"])
    # LeNet-5's C5 is 1x1 on a 32x32 input: Grad-CAM weighs C3's 5x5 maps instead
    assert report["gradcam"]["stage"] == 1 and report["gradcam"]["class"] in ("cat", "dog", "owl")
    assert report["top_samples"]["test_samples"] == 6  # the whole (small) test split
    printed = capsys.readouterr().out
    assert "| stage | output shape | stride | receptive field | parameters | FLOPs |" in printed
    assert (tmp_path / "stages.md").read_text() in printed


def test_inspect_an_input_file(recognition, tmp_path):
    folder, ckpt = recognition
    image = folder / "owl" / "4.png"
    main(["inspect", "--ckpt", str(ckpt), "--input", str(image), "--data.data_dir", str(folder), "--out", str(tmp_path),
          "--max_samples", "4"])  # fmt: skip
    report = json.loads((tmp_path / "stages.json").read_text())
    assert report["sample"] == str(image) and report["top_samples"]["test_samples"] == 4
    check_pictures(tmp_path, 3)


def test_grad_cam_has_the_input_size(recognition):
    folder, ckpt = recognition
    model, sample = first_sample(ckpt, folder)
    network = network_of(model, sample.dim())
    stage = cam_stage(network, stage_rows(network.backbone, sample))
    cam, index, score = grad_cam(network, sample, stage)
    assert cam.shape == (1, 1, 32, 32)
    assert 0 <= float(cam.min()) and float(cam.max()) <= 1
    assert index == int(model(sample).argmax()) and score == pytest.approx(float(model(sample).max()), abs=1e-5)
    # hottest where the class evidence is largest: MONAI's own scaling maps the largest to 0
    raw = GradCAM(network.scores, target_layers=network.cam_layer(stage), postprocessing=lambda x: x)
    evidence = raw(sample, class_idx=index).detach().flatten()
    assert float(evidence[cam.flatten().argmax()]) == pytest.approx(float(evidence.max()))


def test_a_2d_backbone_on_clips_is_shown_the_middle_frame_as_a_one_frame_clip():
    """A single-frame baseline on video: inspect hands its 2D backbone the clip's middle frame,
    and Grad-CAM's class score puts that frame back as a clip of one frame for the model, whose
    first output is the class logits."""
    from cnnsuite.use.inspectable import ClassScores, middle_frame

    clips = torch.arange(5.0).view(1, 1, 5, 1, 1).expand(2, 3, 5, 4, 4)
    frame = middle_frame(clips)
    assert frame.shape == (2, 3, 4, 4) and bool((frame == 2).all())
    seen = []

    def model(x):
        seen.append(x)
        return torch.ones(len(x), 7), torch.zeros(len(x), 4)

    assert ClassScores(model, frames=True)(frame).shape == (2, 7)
    assert torch.equal(seen[0], clips[:, :, 2:3])


def test_grad_cam_weighs_the_deepest_stage_whose_map_has_more_than_one_position():
    """A 1×1 map locates nothing: Grad-CAM steps back to the stage before it, and no further;
    a map one position high and several wide still locates along its width."""
    network = SimpleNamespace(cam_stage=2)
    rows = [{"out_shape": [4, 8, 8]}, {"out_shape": [8, 1, 1]}, {"out_shape": [16, 1, 1]}]
    assert cam_stage(network, rows) == 0
    rows[1]["out_shape"] = [8, 1, 3]
    assert cam_stage(network, rows) == 1
    assert cam_stage(SimpleNamespace(cam_stage=1), [{"out_shape": [4, 3, 3]}, {"out_shape": [8, 2, 2]}]) == 1


def test_errors_are_one_line(recognition, tmp_path, capsys):
    folder, ckpt = recognition
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", "--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"cnnsuite inspect: error: {tmp_path / 'missing.ckpt'}: no such checkpoint file"

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", "--ckpt", str(ckpt), "--input", str(broken), "--data.data_dir", str(folder),
              "--out", str(tmp_path)])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"cnnsuite inspect: error: {broken}")


def test_inspect_a_3d_checkpoint(tmp_path):
    folder = make_volume_folder(tmp_path / "user")
    run = fit("biomedical3d", tmp_path, *SMALL, "--data.data_dir", str(folder), "--trainer.max_epochs", "1",
              "--data.batch_size", "4", "--evaluate", "false")  # fmt: skip
    ckpt = run / "checkpoints" / "best.ckpt"
    main(["inspect", "--ckpt", str(ckpt), "--data.data_dir", str(folder)])
    out = run / "inspection"  # the default: beside the run's checkpoints
    model, sample = first_sample(ckpt, folder)
    check_pictures(out, 2)
    report = json.loads((out / "stages.json").read_text())
    assert report["input_shape"] == [1, 16, 16, 16]
    assert [row["stride"] for row in report["stages"]] == [list(s) for s in model.backbone.strides]
    assert [row["out_shape"] for row in report["stages"]] == [[4, 8, 8, 8], [8, 4, 4, 4]]
    network = network_of(model, sample.dim())
    cam, _, _ = grad_cam(network, sample, network.cam_stage)
    assert cam.shape == (1, 1, 16, 16, 16)


def test_top_samples_are_the_most_active_channels_and_the_samples_exciting_each_most():
    """``top_samples.png`` shows the deepest stage's channels of highest mean activation, most
    active first, and for each the samples whose map peaks highest, highest first."""
    generator = torch.Generator().manual_seed(0)
    samples, channels = 9, 6
    # channel c's maps lie near 10 c: its mean orders the channels; the peak at (0, 0) orders the samples
    maps = (10.0 * torch.arange(channels)).view(1, channels, 1, 1).repeat(samples, 1, 3, 3)
    peaks = torch.rand(samples, channels, generator=generator)
    maps[:, :, 0, 0] += peaks
    network = SimpleNamespace(to_backbone=lambda x: x, backbone=lambda x: [x])
    top = top_samples(None, network, iter([maps[:4], maps[4:]]), "cpu")
    assert top["channels"] == list(range(channels - 1, channels - 1 - TOP_CHANNELS, -1))
    assert top["mean_activation"] == sorted(top["mean_activation"], reverse=True)
    for channel, picked in zip(top["channels"], top["samples"], strict=True):
        assert picked == peaks[:, channel].argsort(descending=True)[:TOP_PER_CHANNEL].tolist()
    assert top["count"] == samples


def test_the_stages_table_puts_each_value_under_its_heading():
    """``stages.md`` is read by its headings: each stage's shape, stride, receptive field and
    parameters in their own columns, and the last row the parameters' total."""
    rows = [
        {"index": 0, "out_shape": (6, 14, 14), "stride": (2, 2), "receptive_field": (6, 6), "parameters": 156,
         "flops": 10},
        {"index": 1, "out_shape": (16, 5, 5), "stride": (4, 4), "receptive_field": (14, 14), "parameters": 2416,
         "flops": 20},
    ]  # fmt: skip
    lines = stages_markdown(rows, (1, 32, 32)).splitlines()
    heading = [cell.strip() for cell in lines[2].strip("|").split("|")]
    table = [dict(zip(heading, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[4:]]
    assert [row["stride"] for row in table[:2]] == ["2×2", "4×4"]
    assert [row["receptive field"] for row in table[:2]] == ["6×6", "14×14"]
    assert [row["output shape"] for row in table[:2]] == ["6×14×14", "16×5×5"]
    assert [row["parameters"] for row in table] == ["156", "2,416", "2,572"]
