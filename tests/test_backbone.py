"""The seed's concepts, each checked against its definition."""

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest
import scipy.signal
import torch
from torch import nn
from torch.nn import functional as F

from cnnsuite.backbone import (
    ConvBlock,
    DynamicFilter,
    build_backbone,
    convolve,
    describe_stages,
    free_parameters,
    hyper_kernel,
    list_backbones,
    register_backbone,
    symmetric_groups,
    tie_weights,
)
from cnnsuite.backbone.blocks import activation_layer, conv_layer, norm_layer
from cnnsuite.errors import ConfigError
from cnnsuite.training.heads import ClassifierHead


def cross_correlation_loop(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``y[o, i] = b[o] + sum_c sum_j w[o, c, j] x[c, i + j]`` at every position ``i`` where the
    kernel fits, for any number of axes: the notes' definition, written out."""
    kernel = w.shape[2:]
    positions = [n - k + 1 for n, k in zip(x.shape[1:], kernel, strict=True)]
    y = torch.empty(w.shape[0], *positions)
    for i in itertools.product(*map(range, positions)):
        window = x[(slice(None), *(slice(a, a + k) for a, k in zip(i, kernel, strict=True)))]
        y[(slice(None), *i)] = (w * window).sum(dim=tuple(range(1, w.dim()))) + b
    return y


@pytest.mark.parametrize("size,kernel", [((11,), (3,)), ((5, 6), (2, 3)), ((4, 5, 6), (2, 3, 1))])
def test_a_block_is_the_cross_correlation_then_the_non_linearity(size, kernel):
    """The filter of every block (and of every network built of them) is the cross-correlation
    ``y_i = sum_j w_j x_{i+j}``, over all input channels, plus its bias, in 1D, 2D and 3D."""
    block = ConvBlock(len(size), 2, 3, kernel_size=kernel, padding=0, norm="none", act="tanh")
    x = torch.randn(1, 2, *size)
    conv = block[0]
    expected = torch.tanh(cross_correlation_loop(x[0], conv.weight.detach(), conv.bias.detach()))
    torch.testing.assert_close(block(x)[0].detach(), expected)


@pytest.mark.parametrize("size,kernel", [((12,), (4,)), ((7, 8), (3, 2)), ((5, 6, 7), (2, 3, 2))])
def test_true_convolution_flips_the_kernel(size, kernel):
    """``y_i = sum_j w_j x_{i-j}`` along every axis: SciPy's convolve is the textbook definition,
    and it differs from the cross-correlation unless the kernel is symmetric."""
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=size), rng.normal(size=kernel)
    y = convolve(torch.tensor(x)[None, None], torch.tensor(w)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(y, scipy.signal.convolve(x, w, mode="valid"))
    assert not np.allclose(y, scipy.signal.correlate(x, w, mode="valid"))


@pytest.mark.parametrize(
    "size,kernel,stride,padding,expected",
    [
        ((32, 32), 5, 1, 0, (28, 28)),
        ((32, 32), (3, 7), 1, 0, (30, 26)),  # non-square kernel
        ((32, 31), (3, 5), (2, 1), (1, 2), (16, 31)),  # per-axis stride and padding
        ((9, 9, 9), (1, 3, 3), (1, 2, 2), 0, (9, 4, 4)),
    ],
)
def test_output_size_follows_floor_formula(size, kernel, stride, padding, expected):
    dims = len(size)
    block = ConvBlock(dims, 2, 4, kernel_size=kernel, stride=stride, padding=padding, norm="none")
    out = block(torch.randn(1, 2, *size))
    assert tuple(out.shape[2:]) == expected
    k = (kernel,) * dims if isinstance(kernel, int) else kernel
    s = (stride,) * dims if isinstance(stride, int) else stride
    p = (padding,) * dims if isinstance(padding, int) else padding
    assert expected == tuple((n + 2 * pp - kk) // ss + 1 for n, kk, ss, pp in zip(size, k, s, p, strict=True))


@pytest.mark.parametrize(
    "order,layers,bias",
    [
        ("NCAP", ["BatchNorm2d", "Conv2d", "ReLU", "MaxPool2d"], True),  # the notes' order
        ("CNAP", ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"], False),
        ("CPNA", ["Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU"], False),
        ("CAPN", ["Conv2d", "ReLU", "MaxPool2d", "BatchNorm2d"], True),  # norm after pooling
        ("CANP", ["Conv2d", "ReLU", "BatchNorm2d", "MaxPool2d"], True),
    ],
)
def test_block_order_puts_norm_before_or_after_pooling(order, layers, bias):
    """The notes' four layers in any order. The norm sees the input's channels before the
    filter and the filter's after it; the filter's bias goes only where the norm directly
    after it would take it away again, and stays a threshold where a ReLU lies between."""
    block = ConvBlock(2, 3, 4, norm="batch", pool="max", order=order)
    assert [type(m).__name__ for m in block] == layers
    norm, conv = block[layers.index("BatchNorm2d")], block[layers.index("Conv2d")]
    assert norm.num_features == (3 if order.startswith("N") else 4)
    assert (conv.bias is not None) == bias
    assert block(torch.randn(2, 3, 8, 8)).shape == (2, 4, 4, 4) and block.stride == (2, 2)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("kind", ["batch", "instance", "group"])
def test_each_normalisation_standardises_over_its_own_axes(kind, dims):
    """Batch norm: each channel over the batch and space; instance norm: each sample's channel over
    space; group norm: each sample's group of channels (12 channels: 6 groups, the largest divisor
    of 12 up to 8) over the group and space. Then mean 0 and variance 1 (affine starts at 1, 0)."""
    norm = norm_layer(dims, kind, 12).train()
    x = torch.randn(4, 12, *(5,) * dims, dtype=torch.float64) * 3 + 2
    y = norm.double()(x)
    # one row per statistic, the values it standardises along the last axis
    rows = {"batch": y.transpose(0, 1).reshape(12, -1), "instance": y.flatten(2), "group": y.reshape(4, 6, -1)}[kind]
    torch.testing.assert_close(rows.mean(-1), torch.zeros_like(rows[..., 0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(rows.var(-1, unbiased=False), torch.ones_like(rows[..., 0]), atol=1e-3, rtol=0)
    assert norm_layer(dims, "none", 12)(x) is x


@pytest.mark.parametrize("channels,groups", [(16, 8), (8, 8), (12, 6), (4, 4), (7, 7), (9, 3)])
def test_group_norm_takes_the_largest_divisor_of_the_channels_up_to_8(channels, groups):
    assert norm_layer(2, "group", channels).num_groups == groups


@pytest.mark.parametrize("name", ["relu", "tanh", "sigmoid", "gelu", "silu", "elu", "leakyrelu"])
def test_every_non_linearity_is_torchs(name):
    x = torch.linspace(-3, 3, 61)
    reference = {"leakyrelu": F.leaky_relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}.get(name)
    expected = (reference or getattr(F, name))(x)
    torch.testing.assert_close(activation_layer(name.upper())(x), expected)


def test_block_order_names_every_letter_once():
    with pytest.raises(ValueError, match="order="):
        ConvBlock(2, 1, 4, order="CNA")
    with pytest.raises(ValueError, match="order='CCAP': expected each of the letters C, N, A, P once"):
        ConvBlock(2, 1, 4, order="CCAP")  # four letters, one of them twice and N missing


def test_instance_norm_learns_a_scale_and_shift_as_batch_and_group_norms_do():
    assert norm_layer(2, "instance", 4).affine


@pytest.mark.parametrize("kernel", [(3, 3, 3), (3, 1, 7), (3, 3, 5), (5, 1, 1)])
def test_a_2plus1d_pair_has_about_the_weights_of_its_3d_filter(kernel):
    """Tran et al.'s width ``M`` gives the spatial ``1×kh×kw`` and temporal ``t×1×1`` pair about
    the weights of one ``t×kh×kw`` filter, never more, for kernels that are not cubic too."""
    backbone = build_backbone(
        "convnet2plus1d", spatial_dims=3, in_channels=16, channels=(32,), kernel_size=kernel, norm="none"
    )
    spatial, temporal = backbone.stages[0][0]
    assert spatial[0].weight.shape[2:] == (1, *kernel[1:]) and temporal[0].weight.shape[2:] == (kernel[0], 1, 1)
    pair = spatial[0].weight.numel() + temporal[0].weight.numel()
    full = 16 * 32 * math.prod(kernel)
    assert 0.95 * full <= pair <= full


def test_a_2plus1d_stem_strides_time_once_and_each_stage_pools_once():
    """``stem_stride`` ``(T, H, W)``: space on the first spatial convolution, time on the first
    temporal one (not both); a stage of two blocks pools after its last."""
    backbone = build_backbone(
        "convnet2plus1d",
        spatial_dims=3,
        in_channels=2,
        channels=(4, 4),
        blocks_per_stage=2,
        kernel_size=(3, 3, 5),
        stem_stride=(2, 1, 2),
    )
    spatial, temporal = backbone.stages[0][0]
    assert (spatial[0].stride, temporal[0].stride) == ((1, 1, 2), (2, 1, 1))
    maps = backbone(torch.randn(1, 2, 8, 12, 16))
    assert [tuple(m.shape[2:]) for m in maps] == [(2, 6, 4), (1, 3, 2)]


@pytest.mark.parametrize(
    "name,dims,size,kwargs",
    [
        ("convnet", 2, 40, dict(channels=(4, 8))),
        ("convnet", 3, 48, dict(channels=(4, 8))),
        ("resnet", 2, 64, dict(widths=(4, 8))),
        ("lenet5", 2, 128, {}),
    ],
)
def test_shifting_the_input_shifts_every_map(name, dims, size, kwargs):
    """Weight sharing finds a motif wherever it lies: the input shifted by the deepest stage's
    stride shifts each stage's maps by that shift over the stage's own stride, wherever a
    map's receptive field stays clear of the borders' padding."""
    torch.manual_seed(0)
    backbone = build_backbone(name, spatial_dims=dims, in_channels=1, **kwargs).eval()
    geometry = describe_stages(backbone, (1, *(size,) * dims))
    shift = geometry[-1].stride
    big = torch.randn(1, 1, *(size + s for s in shift))
    first = big[(..., *(slice(0, size) for _ in shift))]
    second = big[(..., *(slice(s, s + size) for s in shift))]
    with torch.no_grad():
        maps = zip(geometry, backbone(first), backbone(second), strict=True)
    for stage, a, b in maps:
        steps = [s // j for s, j in zip(shift, stage.stride, strict=True)]
        margins = [-(-r // j) for r, j in zip(stage.receptive_field, stage.stride, strict=True)]
        # b at i is a at i + step, over the positions whose windows lie inside both crops.
        a_in = a[(..., *(slice(m + t, n - m) for m, t, n in zip(margins, steps, a.shape[2:], strict=True)))]
        b_in = b[(..., *(slice(m, n - m - t) for m, t, n in zip(margins, steps, b.shape[2:], strict=True)))]
        assert a_in.numel() > 0, f"stage {stage.index}: no map position clear of the borders"
        torch.testing.assert_close(b_in, a_in)


def test_lp_pooling_is_the_p_norm_of_each_window():
    block = ConvBlock(2, 1, 1, kernel_size=1, norm="none", act="relu", pool="lp", lp_p=3.0, order="CAPN")
    pool = block[2]
    x = torch.rand(1, 1, 4, 4)
    expected = x.view(1, 1, 2, 2, 2, 2).permute(0, 1, 2, 4, 3, 5).pow(3).sum((-1, -2)).pow(1 / 3)
    torch.testing.assert_close(pool(x), expected)


@pytest.mark.parametrize("p", [1.0, 2.0, 2.5, 3.0])
@pytest.mark.parametrize("size,window", [((12,), (3,)), ((6, 4), (3, 2)), ((4, 6, 2), (2, 3, 1))])
def test_lp_pooling_is_the_norm_of_negative_values_too(size, window, p):
    """``(sum |x|^p)^(1/p)``: the absolute value matters wherever the pool meets negative values
    (a tanh before it, or the pool before the non-linearity, as in ``CPNA``); an odd or fractional
    ``p`` must give the norm, not a NaN or a negative number. A window of zeros (a ReLU's dead
    patch) keeps a zero gradient. In 1D, 2D and 3D."""
    block = ConvBlock(len(size), 1, 1, kernel_size=1, norm="none", act="tanh", pool="lp", pool_size=window,
                      lp_p=p, order="CPNA")  # fmt: skip
    pool = block[1]
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    windows = x
    for axis, k in enumerate(window):
        windows = windows.unfold(2 + axis, k, k)
    expected = windows.abs().pow(p).flatten(2 + len(size)).sum(-1).pow(1 / p)
    torch.testing.assert_close(pool(x), expected)
    zeros = torch.zeros(1, 1, *size, requires_grad=True)
    pool(zeros).sum().backward()
    assert torch.equal(zeros.grad, torch.zeros_like(zeros))


@pytest.mark.parametrize("p", [0.5, 0, -2, float("inf"), float("nan"), "2", True])
def test_an_lp_pool_whose_p_is_not_a_norm_is_a_config_error(p):
    with pytest.raises(ConfigError, match=r"^lp_p=.*: expected a number >= 1"):
        ConvBlock(2, 1, 1, pool="lp", lp_p=p)
    ConvBlock(2, 1, 1, pool="max", lp_p=0.5)  # no Lp pool, no check


def test_lenet5_has_the_1998_parameter_count():
    """61,706 with C3 fully connected (the common variant); 60,806 free parameters with
    the paper's C3 connection table (the paper says about 60,000)."""
    for table, expected in ((False, 61_706), (True, 60_806)):
        backbone = build_backbone("lenet5", spatial_dims=2, in_channels=1, c3_table=table)
        head = ClassifierHead(2, backbone.out_channels[-1], 10, hidden=(84,), act="tanh")
        model = nn.Sequential(backbone, head)
        assert free_parameters(model) == expected
        features = backbone(torch.randn(2, 1, 32, 32))
        assert [tuple(f.shape[1:]) for f in features] == [(6, 14, 14), (16, 5, 5), (120, 1, 1)]
        assert head(features).shape == (2, 10)
    # The notes' LeNet: 5x5 filters, tanh, and average pooling with subsampling.
    backbone = build_backbone("lenet5", spatial_dims=2, in_channels=1)
    assert [[type(m).__name__ for m in stage] for stage in backbone.stages] == [
        ["Conv2d", "Identity", "Tanh", "AvgPool2d"],
        ["Conv2d", "Identity", "Tanh", "AvgPool2d"],
        ["Conv2d", "Identity", "Tanh", "Identity"],
    ]
    assert {stage[0].kernel_size for stage in backbone.stages} == {(5, 5)}


def test_the_classifier_is_several_fully_connected_layers():
    """The notes' classifier: each ``hidden`` width a fully connected layer and its
    non-linearity, then the logits; (120, 84) is LeNet-5's C5-to-F6-to-output path doubled."""
    head = ClassifierHead(2, 16, 10, hidden=(120, 84), act="tanh")
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 120), (120, 84), (84, 10)]
    assert [type(m).__name__ for m in head.net[2:]] == ["Linear", "Tanh", "Linear", "Tanh", "Linear"]
    assert free_parameters(head) == 16 * 120 + 120 + 120 * 84 + 84 + 84 * 10 + 10
    x = torch.randn(3, 16, 5, 5)
    assert head([x]).shape == (3, 10)
    # the layers see each map's mean over space, wherever on the map a feature lies
    torch.testing.assert_close(head([x]), head.net[2:](x.mean((2, 3))))


def test_c3_table_keeps_masked_connections_at_zero_through_training():
    backbone = build_backbone("lenet5", spatial_dims=2, in_channels=1, c3_table=True)
    conv = backbone.stages[1][0]
    optimizer = torch.optim.SGD(backbone.parameters(), lr=0.5)
    backbone(torch.randn(4, 1, 32, 32))[-1].square().mean().backward()
    optimizer.step()
    # C3 map 0 sees S2 maps 0, 1, 2 only.
    assert conv.weight[0, 3:].abs().sum() == 0 and conv.weight[0, :3].abs().sum() > 0


# LeCun et al. 1998, Table I as the paper prints it: one row per S2 map, an X under each C3 map it feeds.
PAPER_TABLE_I = """
X . . . X X X . . X X X X . X X
X X . . . X X X . . X X X X . X
X X X . . . X X X . . X . X X X
. X X X . . X X X X . . X . X X
. . X X X . . X X X X . X X . X
. . . X X X . . X X X X . X X X
"""


def test_c3_table_is_the_papers_table_i():
    """Each C3 map answers to exactly the S2 maps Table I connects it to: changing one S2 map
    changes the C3 maps in that map's row of the table and no other."""
    table = torch.tensor([[c == "X" for c in row.split()] for row in PAPER_TABLE_I.strip().splitlines()])
    conv = build_backbone("lenet5", spatial_dims=2, in_channels=1, c3_table=True).stages[1][0]
    x = torch.randn(1, 6, 5, 5)
    with torch.no_grad():
        for s2 in range(6):
            bumped = x.clone()
            bumped[:, s2] += torch.randn(5, 5)
            changed = (conv(bumped) - conv(x))[0].abs().flatten(1).amax(-1) > 0
            assert changed.tolist() == table[s2].tolist(), f"S2 map {s2}"


@pytest.mark.parametrize("dims,size", [(2, (40, 36)), (3, (16, 20, 24))])
def test_backbone_features_shallow_to_deep_2d_and_3d(dims, size):
    backbone = build_backbone("convnet", spatial_dims=dims, in_channels=3, channels=(8, 16, 32))
    features = backbone(torch.randn(2, 3, *size))
    assert backbone.out_channels == [8, 16, 32]
    assert backbone.strides == [(2,) * dims, (4,) * dims, (8,) * dims]
    for f, c, s in zip(features, backbone.out_channels, backbone.strides, strict=True):
        assert f.shape[:2] == (2, c)
        assert tuple(f.shape[2:]) == tuple(n // st for n, st in zip(size, s, strict=True))
    # the same LeNet code makes a 3D network
    lenet3d = build_backbone("lenet5", spatial_dims=3, in_channels=1)
    assert lenet3d(torch.randn(1, 1, 32, 32, 32))[-1].shape == (1, 120, 1, 1, 1)


def test_registry_errors_name_the_key():
    assert {"convnet", "lenet5"} <= set(list_backbones())
    with pytest.raises(ValueError, match="backbone='nope'"):
        build_backbone("nope", 2, 1)
    # a second package's backbone of the same name would silently replace the first one under configs that name it
    with pytest.raises(ValueError, match="backbone 'lenet5' is registered twice"):
        register_backbone("lenet5")(nn.Identity)
    assert not isinstance(build_backbone("lenet5", spatial_dims=2, in_channels=1), nn.Identity)
    with pytest.raises(ValueError, match="kernel_size"):
        ConvBlock(3, 1, 1, kernel_size=(3, 3))
    with pytest.raises(ValueError, match="spatial_dims=4"):
        ConvBlock(4, 1, 1)


def test_weight_sharing_ties_entries_and_gradients_reach_u():
    """w = H(u): a mirror-symmetric kernel has w1 = w3 = u1; one step keeps them equal."""
    conv = nn.Conv1d(1, 1, 3, bias=False)
    tie_weights(conv, symmetric_groups(conv.weight.shape, dims=(2,)))
    u = conv.parametrizations.weight.original
    assert u.numel() == 2  # three weights, two free parameters
    conv(torch.randn(2, 1, 8)).sum().backward()
    assert u.grad is not None and u.grad.abs().sum() > 0
    torch.optim.SGD([u], lr=0.1).step()
    w = conv.weight.flatten()
    assert w[0] == w[2] and w[0] != w[1]


@pytest.mark.parametrize("dims", [2, 3])
def test_hypernetwork_makes_the_kernel_and_learns_it(dims):
    conv = conv_layer(dims, 1, 4, 3, bias=False)
    hyper_kernel(conv, code_size=4, hidden=16)
    hyper = conv.parametrizations.weight[0]
    z = conv.parametrizations.weight.original
    torch.testing.assert_close(conv.weight, hyper(z))
    x = torch.randn(8, 1, *(6,) * dims)
    target = getattr(F, f"conv{dims}d")(x, torch.randn(4, 1, *(3,) * dims))
    optimizer = torch.optim.Adam(conv.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        optimizer.zero_grad()
        loss = F.mse_loss(conv(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert z.grad is not None and hyper.net[0].weight.grad is not None
    assert losses[-1] < 0.2 * losses[0]


@pytest.mark.parametrize(
    "name,dims,channels,kwargs",
    [
        ("monai_resnet18", 3, [64, 128, 256, 512], {}),
        ("monai_resnet18", 3, [64, 128, 256, 512], {"no_max_pool": True}),  # its stem then strides 2, not 4
        ("monai_densenet121", 3, [1024], {}),
        ("torchvision_resnet18", 2, [64, 128, 256, 512], {}),  # its first convolution takes 13 bands
        ("torchvision_mobilenet_v3_large", 2, [16, 24, 40, 80, 160, 960], {}),
        ("torchvision_mobilenet_v3_small", 2, [16, 16, 24, 40, 96, 576], {}),
    ],
)
def test_reference_networks_follow_the_backbone_contract(name, dims, channels, kwargs):
    bands = 13 if name.startswith("torchvision") else 2
    backbone = build_backbone(name, spatial_dims=dims, in_channels=bands, **kwargs)
    # measuring a network's strides runs it in eval mode; it is handed back to train in training mode
    assert all(module.training for module in backbone.modules())
    features = backbone(torch.randn(2, bands, *(32,) * dims))
    assert backbone.out_channels == channels == [f.shape[1] for f in features]
    if kwargs.get("no_max_pool"):  # MONAI's own forward skips the pool it still holds
        assert backbone.strides[0] == (1,) * dims
    for f, stride in zip(features, backbone.strides, strict=True):
        assert tuple(f.shape[2:]) == tuple(32 // s for s in stride)


def shift_by_offset(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Signals ``x`` lifted by +2 or -2, and ``y``: ``x`` shifted one step right where it was
    lifted, left where lowered. One transformation of ``x``, its parameter read from ``x``."""
    x = torch.randn(n, 1, 24, generator=generator)
    up = torch.rand(n, 1, 1, generator=generator) < 0.5
    x = x + torch.where(up, 2.0, -2.0)
    return x, torch.where(up, torch.roll(x, 1, -1), torch.roll(x, -1, -1))


def test_a_hypernetwork_reading_the_input_learns_the_transformation_a_fixed_kernel_cannot():
    """The notes' hypernetworks: the weights of one network are the output of another, where
    ``ŷ`` is a transformation of ``x``. A kernel made from each input learns to shift each signal
    its own way; one fixed kernel for all, trained alike, can only blur the two shifts together."""
    errors = {}
    for name, network in (("dynamic", DynamicFilter(1, 1, 3)), ("fixed", nn.Conv1d(1, 1, 3, padding=1))):
        torch.manual_seed(0)
        generator = torch.Generator().manual_seed(1)
        optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
        for _ in range(200):
            x, y = shift_by_offset(32, generator)
            loss = F.mse_loss(network(x)[..., 1:-1], y[..., 1:-1])  # the borders see padding
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        x, y = shift_by_offset(256, torch.Generator().manual_seed(2))
        with torch.no_grad():
            errors[name] = F.mse_loss(network(x)[..., 1:-1], y[..., 1:-1]).item()
    assert errors["dynamic"] < errors["fixed"] / 20, errors


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_a_dynamic_filter_applies_each_samples_kernels_to_that_sample(dims):
    """Each sample is filtered with the kernels made from it, as if alone: the batch's grouped
    convolution mixes no sample's kernels into another's."""
    kernel = (3, 5, 1)[:dims]  # each axis its own size and padding
    net = DynamicFilter(dims, 2, kernel)
    x = torch.randn(3, 2, *(6,) * dims)
    together = net(x)
    assert together.shape == x.shape
    for i in range(3):
        kernels = net.kernels(x[i : i + 1])[0]
        padding = tuple(k // 2 for k in kernel)
        alone = getattr(F, f"conv{dims}d")(x[i : i + 1], kernels.unsqueeze(1), padding=padding, groups=2)
        torch.testing.assert_close(together[i : i + 1], alone)
    with pytest.raises(ValueError, match=r"kernel_size=4: expected odd sizes"):
        DynamicFilter(dims, 2, 4)
    if dims > 1:
        with pytest.raises(ValueError, match=r"kernel_size=\[3, 4(, 1)?\]: expected odd sizes"):
            DynamicFilter(dims, 2, [3, 4] + [1] * (dims - 2))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_a_block_keeps_the_size_at_stride_1_or_refuses_an_even_kernel(dims):
    """An odd kernel at stride 1 keeps each map's size; an even one has no centre, and its
    ``k // 2`` padding grew each map by one, so it is refused there (not at a larger stride)."""
    x = torch.randn(1, 1, *(8,) * dims)
    assert ConvBlock(dims, 1, 1, kernel_size=5, norm="none")(x).shape[2:] == (8,) * dims
    with pytest.raises(ValueError, match=r"kernel_size=\[4(, 4)*\]: expected odd sizes where the stride is 1"):
        ConvBlock(dims, 1, 1, kernel_size=4)
    assert ConvBlock(dims, 1, 1, kernel_size=4, stride=2, norm="none")(x).shape[2:] == (5,) * dims
    assert ConvBlock(dims, 1, 1, kernel_size=4, padding=0, norm="none")(x).shape[2:] == (5,) * dims


def test_precise_batchnorm_recomputes_the_statistics_of_the_training_batches():
    from types import SimpleNamespace

    from lightning.pytorch.plugins.precision import Precision

    from cnnsuite.data import TaskDataModule
    from cnnsuite.training.callbacks import PreciseBatchNorm
    from cnnsuite.training.classification import ClassificationModule

    class Shifted(TaskDataModule):
        """Training augments each batch on the device: the statistics are those of augmented batches."""

        def augment_batch(self, batch):
            return [batch[0] + 1, batch[1]]

    model = ClassificationModule(num_classes=2, backbone="convnet", backbone_kwargs={"channels": [4]})
    model.eval()
    bn = model.backbone.stages[0][0][1]
    bn.running_mean.fill_(5.0)  # stale statistics of "another network"
    batches = [(torch.randn(4, 1, 8, 8) + 2, torch.zeros(4, dtype=torch.long)) for _ in range(3)]
    trainer = SimpleNamespace(sanity_checking=False, train_dataloader=batches, world_size=1,
                              datamodule=Shifted.__new__(Shifted), precision_plugin=Precision())  # fmt: skip
    PreciseBatchNorm(num_batches=3).on_validation_epoch_start(trainer, model)
    conv = model.backbone.stages[0][0][0]
    with torch.no_grad():
        expected = torch.cat([conv(x + 1) for x, _ in batches]).mean(dim=(0, 2, 3))
    torch.testing.assert_close(bn.running_mean, expected, rtol=1e-4, atol=1e-5)
    assert not model.training


def test_precise_batchnorm_over_no_batch_is_a_config_error():
    """Zero batches would reset every BatchNorm's statistics and average nothing into them."""
    from cnnsuite.errors import ConfigError
    from cnnsuite.training.callbacks import PreciseBatchNorm

    with pytest.raises(ConfigError, match=r"^PreciseBatchNorm.num_batches=0: expected at least 1$"):
        PreciseBatchNorm(num_batches=0)


def test_a_backbone_a_task_registers_is_found_in_a_process_that_has_not_imported_the_task():
    """A task's own backbones register when its package is imported; a config (or a checkpoint's
    hyper-parameters) naming one is built in a process that may not have imported it yet."""
    code = (
        "from cnnsuite.backbone import build_backbone\n"
        "try:\n    build_backbone('pytorchvideo_x3d', 2, 3)\n"
        "except ValueError as err:\n    print(err)\n"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "backbone 'pytorchvideo_x3d': spatial_dims=2, but PyTorchVideo's networks are 3D" in shown  # found
