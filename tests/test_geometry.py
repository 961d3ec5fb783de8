"""Feature-map geometry: shapes, cumulative strides and receptive fields per stage, checked by
hand and against the gradient's footprint; windows that do not fit are named before a forward."""

import pytest
import torch

from cnnsuite.backbone import build_backbone, check_fits, describe_stages, hyper_kernel


def test_lenet5_geometry_by_hand():
    """C1 5×5 → r=5; S2 2×2/2 → r=6, j=2; C3 → 6+4·2=14; S4 → 14+1·2=16, j=4; C5 → 16+4·4=32."""
    stages = describe_stages(build_backbone("lenet5", 2, 1), (1, 32, 32))
    assert [g.index for g in stages] == [0, 1, 2]
    assert [g.out_shape for g in stages] == [(6, 14, 14), (16, 5, 5), (120, 1, 1)]
    assert [g.stride for g in stages] == [(2, 2), (4, 4), (4, 4)]
    assert [g.receptive_field for g in stages] == [(6, 6), (16, 16), (32, 32)]
    assert [g.parameters for g in stages] == [6 * 25 + 6, 16 * 6 * 25 + 16, 120 * 16 * 25 + 120]
    # masked connections are not free parameters; a hypernetwork-made kernel runs on meta too
    lenet = build_backbone("lenet5", 2, 1, c3_table=True)
    hyper_kernel(lenet.stages[2][0], code_size=4, hidden=8)
    stages = describe_stages(lenet, (1, 32, 32))
    assert stages[1].parameters == 1516 and stages[2].out_shape == (120, 1, 1)
    assert stages[2].parameters == 4 + (4 * 8 + 8) + (8 * 120 * 16 * 25 + 120 * 16 * 25) + 120


def test_3d_convnet_with_per_axis_kernels_and_pools():
    """Two 1×3×5 convs then a 1×2×2 pool per stage: per axis r = 2k-1, then +1 (j=2);
    stage 1 adds 2·(k-1)·2 + 1·2 at j=4. Axis 0 never grows: k=1 and pool 1."""
    backbone = build_backbone(
        "convnet", 3, 2, channels=(4, 8), kernel_size=(1, 3, 5), pool_size=(1, 2, 2), norm="none", act="tanh"
    )
    stages = describe_stages(backbone, (2, 5, 12, 20))
    assert [g.out_shape for g in stages] == [(4, 5, 6, 10), (8, 5, 3, 5)]
    assert [g.stride for g in stages] == [(1, 2, 2), (1, 4, 4)]
    assert [g.receptive_field for g in stages] == [(1, 6, 10), (1, 16, 28)]


@pytest.mark.parametrize(
    "reference,block,counts,field,channels",
    [
        ("torchvision_resnet18", "basic", (2, 2, 2, 2), 435, 512),
        ("torchvision_resnet50", "bottleneck", (3, 4, 6, 3), 427, 2048),
    ],
)
def test_resnet_layout_matches_the_published_geometry(reference, block, counts, field, channels):
    """torchvision's ResNet-18 and ResNet-50 layouts: stride 32 at the end and the receptive field
    of each stage the same for our resnet and for torchvision's own network behind the backbone
    contract (ResNet-50's "v1.5": a bottleneck's stride sits on its 3×3 filter, not its first 1×1)."""
    kwargs = dict(widths=(64, 128, 256, 512), blocks=counts, block=block, stem_kernel=7, stem_stride=2, stem_pool="max")
    ours = describe_stages(build_backbone("resnet", 2, 3, **kwargs), (3, 64, 64))
    theirs = describe_stages(build_backbone(reference, 2, 3), (3, 64, 64))
    assert ours == theirs
    assert ours[-1].stride == (32, 32) and ours[-1].receptive_field == (field, field)
    assert ours[-1].out_shape == (channels, 2, 2)


def footprint(backbone, shape, stage):
    """Extent per axis of the input pixels that reach the central unit of ``stage``'s output."""
    x = torch.randn(1, *shape, dtype=torch.float64, requires_grad=True)
    out = backbone(x)[stage]
    centre = tuple(n // 2 for n in out.shape[2:])
    out[(0, slice(None), *centre)].sum().backward()
    reached = x.grad[0].abs().sum(0).nonzero()
    return tuple(int(hi - lo + 1) for lo, hi in zip(reached.min(0).values, reached.max(0).values, strict=True))


@pytest.mark.parametrize(
    "name,dims,shape,kwargs",
    [
        ("lenet5", 2, (1, 32, 32), {}),
        (
            "convnet",
            3,
            (1, 9, 40, 40),
            dict(channels=(2, 2), kernel_size=(1, 3, 5), pool="avg", pool_size=(1, 2, 2), norm="none", act="tanh"),
        ),
        ("resnet", 2, (1, 72, 72), dict(widths=(2, 2, 2), blocks=(1, 2, 1), act="tanh", norm="none")),
        (
            "resnet",
            1,
            (1, 120),
            dict(widths=(2, 2), blocks=(1, 1), block="bottleneck", kernel_size=5, act="tanh", norm="none"),
        ),
        ("convnet2plus1d", 3, (1, 16, 24, 24), dict(channels=(2, 2), pool="avg", act="tanh", norm="none")),
    ],
)
def test_receptive_field_is_the_gradients_footprint(name, dims, shape, kwargs):
    """With smooth activations, average pooling and no normalisation (batch norm would mix
    every position) every input pixel inside the receptive field reaches the unit: the
    recurrence must match the footprint exactly, residual shortcuts (a strided 1×1
    projection) included."""
    backbone = build_backbone(name, dims, shape[0], **kwargs).double()
    for g in describe_stages(backbone, shape):
        assert footprint(backbone, shape, g.index) == g.receptive_field


def test_describe_stages_computes_nothing_and_changes_nothing():
    backbone = build_backbone(
        "resnet", 3, 1, widths=(4, 8), blocks=(1, 1), kernel_size=(1, 3, 3), strides=(1, (1, 2, 2))
    )
    bn = backbone.stages[0].stem[1]
    before = bn.running_mean.clone(), int(bn.num_batches_tracked)
    stages = describe_stages(backbone, (1, 6, 16, 16))
    assert [g.out_shape for g in stages] == [tuple(f.shape[1:]) for f in backbone(torch.randn(2, 1, 6, 16, 16))]
    backbone.eval()  # the forward above updated the statistics; describe must not have
    bn.running_mean.copy_(before[0])
    bn.num_batches_tracked.fill_(before[1])
    describe_stages(backbone, (1, 6, 16, 16))
    assert torch.equal(bn.running_mean, before[0]) and int(bn.num_batches_tracked) == before[1]
    assert all(p.device.type == "cpu" for p in backbone.parameters())


def test_too_deep_a_network_for_the_input_is_named_before_any_forward():
    backbone = build_backbone("convnet", 2, 1, channels=(4,) * 5)  # 28 → 14 → 7 → 3 → 1 → ?
    with pytest.raises(ValueError) as err:
        describe_stages(backbone, (1, 28, 28))
    assert str(err.value) == (
        "model.backbone_kwargs: stage 4, block 1 (max pool 2×2) meets a 1×1 feature map at input size 1×28×28; "
        "use fewer stages, smaller kernels or strides, or a larger input"
    )
    check_fits(backbone, (1, 32, 32))  # 32 → 16 → 8 → 4 → 2 → 1 fits


def test_a_kernel_larger_than_the_map_is_named_with_its_stage():
    with pytest.raises(ValueError, match=r"^data: stage 2 \(conv 5×5\) meets a 4×4 feature map at input size 1×28×28;"):
        check_fits(build_backbone("lenet5", 2, 1), (1, 28, 28), where="data")
    # per axis: a 3×1×1 temporal filter without padding would need 3 frames
    backbone = build_backbone("lenet5", 3, 1, kernel_size=(3, 1, 1), pool="none")
    with pytest.raises(ValueError, match=r"stage 0 \(conv 3×1×1\) meets a 2×8×8 feature map at input size 1×2×8×8"):
        check_fits(backbone, (1, 2, 8, 8))
    with pytest.raises(ValueError, match="expected channels and 3 spatial sizes"):
        check_fits(backbone, (1, 8, 8))


def test_a_kernel_larger_than_its_map_at_the_tasks_input_is_refused_before_training(tmp_path):
    """LeNet-5 on 28×28 digits: C5's 5×5 kernel meets S4's 4×4 map (the total stride, 4, fits)."""
    from conftest import fit

    with pytest.raises(ValueError, match=r"model\.backbone_kwargs \(model\.backbone='lenet5'\): stage 2 "
                                         r"\(conv 5×5\) meets a 4×4 feature map at input size 1×28×28"):  # fmt: skip
        fit("recognition2d", tmp_path, "--model.backbone", "lenet5", "--model.backbone_kwargs", "{}",
            "--data.image_size", "28", "--trainer.fast_dev_run", "true")  # fmt: skip


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("kernel,stride,padding", [(3, 2, 0), (3, 2, 1), (2, 2, 0), (3, 3, 1), (5, 2, 2)])
def test_a_pools_output_size_is_pytorchs_in_floor_and_ceil_mode(kernel, stride, padding, ceil_mode):
    """The windows of a network's stages give each map's size as PyTorch computes it, with
    ceil_mode too (torchvision's and MONAI's networks use it): a last window that would start in
    the padding alone is dropped."""
    from torch import nn

    from cnnsuite.backbone.geometry import stage_windows

    pool = nn.MaxPool1d(kernel, stride, padding, ceil_mode=ceil_mode)
    (window,) = stage_windows(nn.Sequential(pool), 1)
    for n in range(kernel, 20):
        assert window.apply((n,)) == tuple(pool(torch.zeros(1, 1, n)).shape[2:]), n


@pytest.mark.parametrize("dims", [2, 3])
def test_lenet5_flops_by_hand(dims):
    """Each stage's FLOPs in the inspection table are 2 × (output positions × output maps × weights
    per map) of its convolution, in 2D and 3D: C1 28^d·6·5^d, C3 10^d·16·6·5^d, C5 1·120·16·5^d."""
    from cnnsuite.use.inspection import stage_flops

    backbone = build_backbone("lenet5", dims, 1).eval()
    k = 5**dims
    expected = [2 * 28**dims * 6 * 1 * k, 2 * 10**dims * 16 * 6 * k, 2 * 1 * 120 * 16 * k]
    assert stage_flops(backbone, torch.zeros(1, 1, *(32,) * dims)) == expected


def test_a_dilated_window_widens_the_field_by_its_extent():
    """A dilation ``d`` makes a ``k``-wide window span ``d(k-1)+1`` inputs: the size and receptive
    field follow PyTorch's formula and the gradient's footprint (foreign stages may dilate)."""
    from torch import nn

    from cnnsuite.backbone import StagedBackbone
    from cnnsuite.backbone.references import ForeignStage

    stage = ForeignStage(
        nn.Conv2d(1, 1, (3, 5), dilation=(2, 1)), nn.Tanh(), nn.Conv2d(1, 1, 3, stride=2, dilation=3), nn.Tanh(),
        nn.AvgPool2d(2), out_channels=1, stride=(4, 4),
    )  # fmt: skip
    backbone = StagedBackbone(2, [stage]).double()
    (g,) = describe_stages(backbone, (1, 41, 40))
    # rows: 41 - 4 = 37, then (37 - 7) // 2 + 1 = 16, pooled 8; columns: 40 - 4 = 36, 15, 7
    assert g.out_shape == (1, 8, 7) and g.stride == (4, 4)
    # rows: 1 + 4 = 5, + 6 = 11 (jump 2), + 2 = 13; columns: 1 + 4 = 5, + 6 = 11, + 2 = 13
    assert g.receptive_field == (13, 13) == footprint(backbone, (1, 41, 40), 0)


def test_a_same_padded_window_keeps_the_size_even_with_an_even_kernel_and_labels_its_stride():
    """``padding="same"`` with an even window pads one side more than the other: the size is kept,
    which halving the extent in whole numbers would not give. A stride other than 1 or the window's
    own is named in the label the fit errors quote; a stage of one block names no block."""
    from torch import nn

    from cnnsuite.backbone.geometry import stage_windows

    conv = nn.Conv1d(1, 1, 4, padding="same")
    (window,) = stage_windows(nn.Sequential(conv), 1)
    assert window.apply((9,)) == tuple(conv(torch.zeros(1, 1, 9)).shape[2:]) == (9,)
    (strided,) = stage_windows(nn.Sequential(nn.Conv2d(1, 1, 3, stride=2)), 2)
    assert strided.label() == "conv 3×3 stride 2×2"
    (inner,) = stage_windows(nn.Sequential(nn.Sequential(nn.Conv2d(1, 1, 3))), 2)
    assert inner.where == ""
