"""Parameter transformations ``w = H(u)`` asked for in ``model.backbone_kwargs.parametrize``:
tied weights get the summed gradient of the entries they stand for, the free-parameter count
falls by what the pattern ties or masks, patterns that do not fit are named, and a 2D and a
3D task train with them through the CLI."""

import json

import pytest
import torch
from conftest import fit, task_config
from torch.nn.utils import parametrize

from cnnsuite.backbone import build_backbone, free_parameters, register_backbone
from cnnsuite.backbone.parametrize import Tied, symmetric_groups, tie_weights


def convs(backbone, stage):
    return [m for m in backbone.stages[stage].modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]


@pytest.mark.parametrize(
    "dims,spec",
    [
        (2, {"stage": 0, "kind": "symmetric", "axes": [1]}),  # left-right mirror
        (3, {"stage": 1, "kind": "symmetric"}),  # mirrored along every axis
        (2, {"stage": 1, "kind": "tie_channels", "groups": 4}),
        (3, {"stage": [0, 1], "kind": "tie_channels", "groups": 2}),
    ],
)
def test_gradient_reaching_u_is_the_sum_over_the_tied_weights(dims, spec):
    torch.manual_seed(0)
    backbone = build_backbone("convnet", dims, 2, channels=(4, 8), blocks_per_stage=1, parametrize=[spec])
    conv = convs(backbone, spec["stage"] if isinstance(spec["stage"], int) else spec["stage"][-1])[0]
    tied = next(p for p in conv.parametrizations.weight if isinstance(p, Tied))
    u = conv.parametrizations.weight.original
    with parametrize.cached():  # the very w the forward uses
        w = conv.weight
        loss = backbone(torch.randn(2, 2, *(8,) * dims))[-1].square().mean()
        grad_u, grad_w = torch.autograd.grad(loss, [u, w])
    summed = torch.zeros_like(u).index_add_(0, tied.groups.flatten(), grad_w.flatten())
    torch.testing.assert_close(grad_u, summed)
    assert grad_w.abs().sum() > 0
    if spec["kind"] == "tie_channels":  # contiguous groups of input channels see the same kernels
        chunks = w.detach().chunk(spec["groups"], dim=1)
        assert all(torch.equal(chunk, chunks[0]) for chunk in chunks)
    else:  # the kernel is its own mirror image along each axis named
        axes = [2 + a for a in spec.get("axes", range(dims))]
        assert all(torch.equal(w.detach(), w.detach().flip(a)) for a in axes)


def test_tied_weights_start_at_the_mean_of_the_entries_they_stand_for():
    """Tying keeps the kernel's scale: each free value starts at the mean of the weights it ties."""
    conv = torch.nn.Conv2d(2, 3, 3)
    before = conv.weight.detach().clone()
    groups = symmetric_groups(before.shape, (2, 3))
    tie_weights(conv, groups)
    means = torch.zeros(int(groups.max()) + 1).index_add_(0, groups.flatten(), before.flatten())
    means /= torch.bincount(groups.flatten())
    torch.testing.assert_close(conv.weight.detach(), means[groups])


def test_free_parameters_fall_as_the_pattern_says():
    plain = build_backbone("convnet", 2, 4, channels=(8,), blocks_per_stage=1)
    weights = 8 * 4 * 3 * 3  # the one conv's weight; BatchNorm adds 16

    def free(*specs):
        return free_parameters(build_backbone("convnet", 2, 4, channels=(8,), blocks_per_stage=1, parametrize=specs))

    assert free_parameters(plain) == weights + 16
    assert free({"stage": 0, "kind": "symmetric", "axes": [1]}) == 8 * 4 * 3 * 2 + 16  # a 3-wide row keeps 2
    assert free({"stage": 0, "kind": "symmetric"}) == 8 * 4 * 2 * 2 + 16  # 3×3 mirrored both ways keeps 2×2
    assert free({"stage": 0, "kind": "tie_channels", "groups": 4}) == weights // 4 + 16
    table = [[0], [1], [2], [3], [0, 1], [2, 3], [0, 1, 2, 3], [0, 3]]  # 14 of 32 channel pairs
    assert free({"stage": 0, "kind": "connection_table", "table": table}) == 14 * 9 + 16
    # a hypernetwork replaces the kernel by a code and its own two layers
    assert (
        free({"stage": 0, "kind": "hyper", "code_size": 4, "hidden": 8})
        == 4 + (4 * 8 + 8) + (8 * weights + weights) + 16
    )


def test_frozen_weights_are_not_free_parameters_masked_or_not():
    """A frozen layer has no free parameters: its masked-out entries are not taken off a second time."""
    lenet = build_backbone("lenet5", 2, 1, c3_table=True)
    c3 = convs(lenet, 1)[0]
    c3.parametrizations.weight.original.requires_grad_(False)
    assert free_parameters(lenet) == (6 * 25 + 6) + 16 + (120 * 16 * 25 + 120)  # C1, C3's bias, C5
    for parameter in lenet.parameters():
        parameter.requires_grad_(False)
    assert free_parameters(lenet) == 0


def test_named_table_is_lenet5s_c3():
    """``table: lenet5_c3`` from the config is the paper's table: LeNet-5's 60,806 free parameters."""
    by_flag = build_backbone("lenet5", 2, 1, c3_table=True)
    by_config = build_backbone("lenet5", 2, 1, parametrize=[{"stage": 1, "kind": "connection_table",
                                                             "table": "lenet5_c3"}])  # fmt: skip
    assert free_parameters(by_flag) == free_parameters(by_config)
    assert torch.equal(convs(by_flag, 1)[0].parametrizations.weight[0].mask,
                       convs(by_config, 1)[0].parametrizations.weight[0].mask)  # fmt: skip


@pytest.mark.parametrize(
    "spec,message",
    [
        (
            {"stage": 1, "kind": "tie_channels", "groups": 3},
            r"stage 1, conv 0\.0 \(weight \(8, 4, 3, 3\)\): groups=3: "
            r"expected a divisor of its 4 input channels",
        ),
        ({"stage": 0, "kind": "connection_table", "table": [[0]]}, r"stage 0.*table: expected 4 lists"),
        ({"stage": 0, "kind": "connection_table", "table": [[0], [1], [2], [5]]}, r"input channels in 0\.\.1"),
        ({"stage": 0, "kind": "symmetric", "axes": [2]}, r"axes=\[2\]: expected spatial axes in 0\.\.1"),
        ({"stage": 2, "kind": "hyper"}, r"stage=2: expected 'all' or stage indices in 0\.\.1"),
        ({"stage": 0, "kind": "rotate"}, r"expected a mapping with kind: one of symmetric"),
        ({"stage": 0, "kind": "hyper", "size": 3}, r"unknown keys \['size'\] for kind hyper"),
    ],
)
def test_patterns_that_do_not_fit_are_named(spec, message):
    with pytest.raises(ValueError, match=r"model\.backbone_kwargs\.parametrize\[0\].*" + message):
        build_backbone("convnet", 2, 2, channels=(4, 8), blocks_per_stage=1, parametrize=[spec])


def test_one_transformation_per_layer_and_staged_backbones_only():
    with pytest.raises(ValueError, match=r"parametrize\[1\]: stage 0.*already transformed by .*parametrize\[0\]"):
        build_backbone("convnet", 2, 2, channels=(4,), parametrize=[{"stage": 0, "kind": "symmetric"},
                                                                    {"stage": "all", "kind": "hyper"}])  # fmt: skip
    with pytest.raises(ValueError, match="already transformed"):  # C3 already carries its table
        build_backbone("lenet5", 2, 1, c3_table=True, parametrize=[{"stage": 1, "kind": "symmetric"}])
    register_backbone("test_unstaged")(lambda spatial_dims, in_channels: torch.nn.Conv2d(in_channels, 4, 3))
    with pytest.raises(ValueError, match="Conv2d has no stages to parametrize"):
        build_backbone("test_unstaged", 2, 1, parametrize=[{"stage": 0, "kind": "symmetric"}])


def test_print_config_shows_the_transformations(capsys):
    from cnnsuite.cli import main

    kwargs = "{act: relu, pool: max, norm: batch, parametrize: [{stage: 0, kind: symmetric, axes: [1]}]}"
    with pytest.raises(SystemExit):
        main(["fit", "--config", task_config("recognition2d"), "--model.backbone_kwargs", kwargs, "--print_config"])
    printed = capsys.readouterr().out
    assert "parametrize:" in printed and "kind: symmetric" in printed


def test_a_2d_task_trains_with_tied_and_hypernetwork_kernels(tmp_path):
    """recognition2d: mirror-symmetric C1 kernels, the paper's C3 table from the config and a
    hypernetwork-made C5; the checkpoint evaluates, and C1 is still symmetric after training."""
    transformations = ("{stage: 0, kind: symmetric, axes: [1]}, {stage: 1, kind: connection_table, table: lenet5_c3}, "
                       "{stage: 2, kind: hyper, code_size: 8, hidden: 4}")  # fmt: skip
    kwargs = f"{{act: relu, pool: max, norm: batch, parametrize: [{transformations}]}}"
    run = fit("recognition2d", tmp_path, "--model.backbone", "lenet5", "--model.backbone_kwargs", kwargs,
              "--trainer.max_epochs", "2")  # fmt: skip
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert metrics["test/acc"] > 0.5  # chance is 0.1
    from cnnsuite.trust.checkpoint import rebuild_for_inference

    model, _ = rebuild_for_inference(run / "checkpoints" / "best.ckpt")
    c1 = convs(model.backbone, 0)[0].weight
    torch.testing.assert_close(c1, c1.flip(-1))


def test_a_3d_task_trains_with_kernels_tied_across_channel_groups(tmp_path):
    kwargs = "{channels: [8, 16], blocks_per_stage: 1, parametrize: [{stage: 1, kind: tie_channels, groups: 2}]}"
    run = fit("biomedical3d", tmp_path, "--model.backbone_kwargs", kwargs, "--trainer.max_epochs", "1",
              "--data.default_size", "60", "--data.spatial_size", "[16, 16, 16]", "--data.batch_size", "8")  # fmt: skip
    assert (run / "evaluation" / "metrics.json").is_file()
    weight = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    u = weight["backbone.stages.1.0.0.parametrizations.weight.original"]
    assert u.shape[0] == 16 * 8 // 2 * 27  # one kernel per (output channel, channel within a group)
