"""Backbone weights from one task's file into another task's backbone, 2D into 3D included."""

import pytest
import torch
from torch import nn

from cnnsuite.backbone import build_backbone, mask_weights
from cnnsuite.training.transfer import adapt_in_channels, backbone_state, inflate, transfer_backbone


def convnet(spatial_dims=2, in_channels=1, **kw):
    kw = {"channels": (4, 8), "blocks_per_stage": 1, **kw}
    return build_backbone("convnet", spatial_dims, in_channels, **kw)


def randomise_batchnorm(net: nn.Module) -> None:
    """Running statistics unlike the defaults, so copying them is visible."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.num_batches_tracked.fill_(7)


def test_weights_arrive_between_two_convnets():
    source, target = convnet(), convnet()
    randomise_batchnorm(source)
    report = transfer_backbone(target, source.state_dict())
    for name, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], value), name
    assert sorted(report.copied) == sorted(source.state_dict())
    assert not (report.mismatched or report.missing or report.unused or report.inflated or report.adapted)


def test_mismatches_are_reported_by_name_and_left_at_init():
    source, target = convnet(channels=(4, 8)), convnet(channels=(4, 16))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    report = transfer_backbone(target, source.state_dict())
    mismatched = {name: (s, t) for name, s, t in report.mismatched}
    assert mismatched["stages.1.0.0.weight"] == ((8, 4, 3, 3), (16, 4, 3, 3))
    assert "stages.1.0.1.running_mean" in mismatched
    assert torch.equal(target.state_dict()["stages.1.0.0.weight"], before["stages.1.0.0.weight"])
    assert torch.equal(target.state_dict()["stages.0.0.0.weight"], source.state_dict()["stages.0.0.0.weight"])
    assert "stages.1.0.0.weight" in report.summary()


def test_lenet5_into_convnet_lists_every_name():
    """Different layouts share no tensor names: nothing arrives, and the report says so by name."""
    source = build_backbone("lenet5", 2, 1, norm="batch")
    target = convnet()
    report = transfer_backbone(target, source.state_dict())
    assert report.loaded == 0
    assert sorted(report.missing) == sorted(target.state_dict())
    assert report.unused == sorted(source.state_dict())
    summary = report.summary()
    assert "0 of" in summary and "stages.0.0.0.weight" in summary and "stages.0.0.weight" in summary


def test_parametrized_weights_transfer_like_plain_ones():
    source, target = convnet(), convnet()
    conv = target.stages[0][0][0]
    mask_weights(conv, torch.ones_like(conv.weight))
    report = transfer_backbone(target, source.state_dict())
    assert "stages.0.0.0.parametrizations.weight.original" in report.copied
    assert torch.equal(conv.weight, source.stages[0][0][0].weight)
    # ...and back: a parametrized source into a plain target
    back = convnet()
    transfer_backbone(back, target.state_dict())
    assert torch.equal(back.stages[0][0][0].weight, source.stages[0][0][0].weight)


def save_checkpoint(path, state_dict, **extra):
    torch.save({"state_dict": state_dict, "epoch": 3, **extra}, path)
    return path


@pytest.mark.parametrize("prefix", ["backbone.", "detector.backbone.body."])
def test_backbone_state_from_any_task_checkpoint(tmp_path, prefix):
    net = convnet()
    heads = {"head.fc.weight": torch.zeros(3, 8), "detector.backbone.fpn.inner.0.weight": torch.zeros(2)}
    state = {prefix + k: v for k, v in net.state_dict().items()} | heads
    found = backbone_state(save_checkpoint(tmp_path / "run.ckpt", state))
    assert found.keys() == net.state_dict().keys()
    assert all(torch.equal(found[k], v) for k, v in net.state_dict().items())


def test_backbone_state_from_a_plain_state_dict(tmp_path):
    net = convnet()
    torch.save(net.state_dict(), tmp_path / "backbone.pt")
    assert backbone_state(tmp_path / "backbone.pt").keys() == net.state_dict().keys()


def one_line_error(path) -> str:
    with pytest.raises(ValueError) as info:
        backbone_state(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "--model.backbone_weights" in message
    return message


class Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_missing_foreign_and_code_carrying_files_are_one_line_errors(tmp_path, capsys):
    assert "no such file" in one_line_error(tmp_path / "nowhere.ckpt")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert "weights_only=True" in one_line_error(tmp_path / "notes.txt")
    save_checkpoint(tmp_path / "heads.ckpt", {"head.weight": torch.zeros(2)})
    assert "no backbone tensors" in one_line_error(tmp_path / "heads.ckpt")
    torch.save({"state_dict": {"backbone.stages.0.w": torch.zeros(1)}, "x": Payload()}, tmp_path / "evil.ckpt")
    assert "Unsupported global" in one_line_error(tmp_path / "evil.ckpt")
    assert "pickled code ran" not in capsys.readouterr().out


def test_inflate_keeps_a_static_response():
    """Unit check of I3D's rule on one kernel: a depth-constant input gives the 2D response."""
    kernel, image = torch.randn(2, 3, 3, 3), torch.randn(1, 3, 9, 9)
    inflated = inflate(kernel, 5)
    assert inflated.shape == (2, 3, 5, 3, 3)
    clip = image.unsqueeze(2).expand(-1, -1, 5, -1, -1)
    out = nn.functional.conv3d(clip, inflated)
    torch.testing.assert_close(out[:, :, 0], nn.functional.conv2d(image, kernel), rtol=1e-4, atol=1e-5)


def test_2d_convnet_inflated_into_3d_gives_the_2d_features_on_a_static_clip():
    """A 3×3 2D net into a 3×3×3 3D net: on a 2D image repeated along T, the 3D features at the
    central time index (beyond the reach of T's zero padding) equal the 2D features."""
    torch.manual_seed(0)
    net2d, net3d = convnet(2), convnet(3, kernel_size=3)
    randomise_batchnorm(net2d)
    report = transfer_backbone(net3d, net2d.state_dict())
    assert sorted(report.inflated) == ["stages.0.0.0.weight", "stages.1.0.0.weight"]
    assert not (report.mismatched or report.missing or report.unused)
    net2d.eval(), net3d.eval()
    image = torch.randn(2, 1, 16, 16)
    clip = image.unsqueeze(2).expand(-1, -1, 32, -1, -1)
    with torch.no_grad():
        features2d, features3d = net2d(image), net3d(clip)
    for f2, f3 in zip(features2d, features3d, strict=True):
        torch.testing.assert_close(f3[:, :, f3.shape[2] // 2], f2, rtol=1e-4, atol=1e-5)


def test_other_kernel_sizes_do_not_inflate():
    report = transfer_backbone(convnet(3, kernel_size=3), convnet(2, kernel_size=5).state_dict())
    assert {name for name, _, _ in report.mismatched} >= {"stages.0.0.0.weight", "stages.1.0.0.weight"}
    assert not report.inflated


def first_layer(net, x):
    return net.stages[0][0][0](x)


def test_grey_to_rgb_with_mean_keeps_the_response_to_a_grey_image():
    grey, rgb = convnet(in_channels=1), convnet(in_channels=3)
    report = transfer_backbone(rgb, grey.state_dict(), channels="mean")
    assert report.adapted == ["stages.0.0.0.weight"]
    image = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(first_layer(rgb, image.expand(-1, 3, -1, -1)), first_layer(grey, image))


def test_rgb_to_13_bands_with_mean_and_repeat_keeps_the_grey_response():
    rgb = convnet(in_channels=3)
    image = torch.randn(2, 1, 8, 8)
    for mode, bands in (("mean", 13), ("repeat", 12)):  # repeat: exact for a multiple of 3
        net = convnet(in_channels=bands)
        transfer_backbone(net, rgb.state_dict(), channels=mode)
        torch.testing.assert_close(
            first_layer(net, image.expand(-1, bands, -1, -1)), first_layer(rgb, image.expand(-1, 3, -1, -1))
        )


def test_2d_grey_into_3d_rgb_is_inflated_and_adapted():
    report = transfer_backbone(convnet(3, in_channels=3), convnet(2, in_channels=1).state_dict())
    assert report.inflated[0] == report.adapted[0] == "stages.0.0.0.weight"


def test_2d_rgb_into_3d_rgb_is_inflated_with_each_channel_its_own_kernel():
    """Inflation alone fits a first layer of the same channels: no channel is averaged away."""
    rgb2d, rgb3d = convnet(2, in_channels=3), convnet(3, in_channels=3)
    report = transfer_backbone(rgb3d, rgb2d.state_dict())
    assert "stages.0.0.0.weight" in report.inflated and not report.adapted and not report.channels
    torch.testing.assert_close(rgb3d.stages[0][0][0].weight, inflate(rgb2d.stages[0][0][0].weight, 3))


def test_channel_modes():
    kernel = torch.randn(4, 3, 3, 3)
    assert torch.equal(adapt_in_channels(kernel, 2, "first"), kernel[:, :2])
    torch.testing.assert_close(adapt_in_channels(kernel, 6, "repeat"), torch.cat([kernel, kernel], 1) / 2)
    with pytest.raises(ValueError, match="'first'.*needs 5 input channels"):
        adapt_in_channels(kernel, 5, "first")
    with pytest.raises(ValueError, match="channels='average'"):
        transfer_backbone(convnet(), convnet().state_dict(), channels="average")


def test_named_channels_are_mapped_by_name_with_r_g_b_as_b04_b03_b02():
    rgb = convnet(in_channels=3)
    kernel = rgb.state_dict()["stages.0.0.0.weight"]
    bgr = convnet(in_channels=3)
    report = transfer_backbone(bgr, rgb.state_dict(), source_names=["R", "G", "B"], target_names=["B", "G", "R"])
    assert torch.equal(bgr.state_dict()["stages.0.0.0.weight"], kernel.flip(1)) and report.adapted
    assert report.by_name == [("B", "B"), ("G", "G"), ("R", "R")]
    bands = convnet(in_channels=4)  # spelled as files spell them: B2, b8a
    report = transfer_backbone(bands, rgb.state_dict(), source_names=["R", "G", "B"],
                               target_names=["B2", "B4", "b8a", "B3"])  # fmt: skip
    got = bands.state_dict()["stages.0.0.0.weight"]
    assert torch.equal(got, torch.stack([kernel[:, 2], kernel[:, 0], kernel.mean(1), kernel[:, 1]], 1))
    assert report.by_name == [("B2", "B"), ("B4", "R"), ("b8a", None), ("B3", "G")]
    assert "by name: B2 <- B, B4 <- R, B3 <- G; the mean of the source's 3 kernels: b8a" in report.summary()


def test_channels_without_names_in_common_follow_the_mode():
    rgb, grey = convnet(in_channels=3), convnet(in_channels=1)
    mean = rgb.state_dict()["stages.0.0.0.weight"].sum(1, keepdim=True)  # mean x 3/1
    for names, why in (((["R", "G", "B"], ["L"]), "no channel name in common"), ((None, ["L"]), "unnamed")):
        report = transfer_backbone(grey, rgb.state_dict(), source_names=names[0], target_names=names[1])
        torch.testing.assert_close(grey.state_dict()["stages.0.0.0.weight"], mean)
        assert report.by_name == [] and why in report.summary() and "by 'mean'" in report.summary()
    three = convnet(in_channels=3)
    report = transfer_backbone(three, rgb.state_dict(), source_names=["R", "G", "B"], target_names=["B", "G", "R"],
                               channels="mean")  # fmt: skip
    assert report.by_name == [] and report.copied[0] == "stages.0.0.0.weight"  # a mode given: names are not used


def test_a_backbone_file_with_non_finite_weights_is_a_one_line_error_naming_the_tensor(tmp_path):
    """NaN weights would start every output at NaN without a word."""
    state = convnet().state_dict()
    key = next(k for k in state if k.endswith("weight"))
    state[key] = torch.full_like(state[key], float("nan"))
    torch.save(state, tmp_path / "backbone.pt")
    assert f"non-finite weights (NaN or infinity) in {key}" in one_line_error(tmp_path / "backbone.pt")
