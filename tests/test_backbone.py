"""The seed's concepts, each checked against its definition."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cnnsuite.backbone import (
    ConvBlock,
    build_backbone,
    convolve,
    free_parameters,
    hyper_kernel,
    list_backbones,
    symmetric_groups,
    tie_weights,
)
from cnnsuite.training.heads import ClassifierHead


def test_conv_layer_is_cross_correlation():
    """y_i = sum_j w_j x_{i+j}, written out as a loop."""
    x, w = torch.randn(11), torch.randn(3)
    y = F.conv1d(x.view(1, 1, -1), w.view(1, 1, -1)).flatten()
    expected = torch.stack([sum(w[j] * x[i + j] for j in range(3)) for i in range(9)])
    torch.testing.assert_close(y, expected)


def test_true_convolution_flips_the_kernel():
    """y_i = sum_j w_j x_{i-j}: numpy's convolve is the textbook definition."""
    x, w = np.random.default_rng(0).normal(size=(2, 12))
    w = w[:4]
    y = convolve(torch.tensor(x).view(1, 1, -1), torch.tensor(w).view(1, 1, -1)).flatten()
    np.testing.assert_allclose(y.numpy(), np.convolve(x, w, mode="valid"))
    # ...and it differs from the cross-correlation unless the kernel is symmetric.
    xc = F.conv1d(torch.tensor(x).view(1, 1, -1), torch.tensor(w).view(1, 1, -1)).flatten()
    assert not torch.allclose(xc, y)


def test_2d_cross_correlation_definition():
    x, w = torch.randn(1, 1, 5, 6), torch.randn(1, 1, 2, 3)
    y = F.conv2d(x, w)[0, 0]
    for i in range(4):
        for j in range(4):
            assert torch.isclose(y[i, j], (w[0, 0] * x[0, 0, i : i + 2, j : j + 3]).sum(), atol=1e-6)


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


def test_block_order_puts_norm_before_or_after_pooling():
    before = ConvBlock(2, 1, 4, norm="batch", pool="max", order="CNAP")
    after = ConvBlock(2, 1, 4, norm="batch", pool="max", order="CAPN")
    assert [type(m).__name__ for m in before] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
    assert [type(m).__name__ for m in after] == ["Conv2d", "ReLU", "MaxPool2d", "BatchNorm2d"]
    assert before.stride == after.stride == (2, 2)
    with pytest.raises(ValueError, match="order="):
        ConvBlock(2, 1, 4, order="CNA")


def test_lp_pooling_is_the_p_norm_of_each_window():
    block = ConvBlock(2, 1, 1, kernel_size=1, norm="none", act="relu", pool="lp", lp_p=3.0, order="CAPN")
    pool = block[2]
    x = torch.rand(1, 1, 4, 4)
    expected = x.view(1, 1, 2, 2, 2, 2).permute(0, 1, 2, 4, 3, 5).pow(3).sum((-1, -2)).pow(1 / 3)
    torch.testing.assert_close(pool(x), expected)


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


def test_c3_table_keeps_masked_connections_at_zero_through_training():
    backbone = build_backbone("lenet5", spatial_dims=2, in_channels=1, c3_table=True)
    conv = backbone.stages[1][0]
    optimizer = torch.optim.SGD(backbone.parameters(), lr=0.5)
    backbone(torch.randn(4, 1, 32, 32))[-1].square().mean().backward()
    optimizer.step()
    # C3 map 0 sees S2 maps 0, 1, 2 only.
    assert conv.weight[0, 3:].abs().sum() == 0 and conv.weight[0, :3].abs().sum() > 0


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


def test_hypernetwork_makes_the_kernel_and_learns_it():
    conv = nn.Conv2d(1, 4, 3, bias=False)
    hyper_kernel(conv, code_size=4, hidden=16)
    hyper = conv.parametrizations.weight[0]
    z = conv.parametrizations.weight.original
    torch.testing.assert_close(conv.weight, hyper(z))
    x = torch.randn(8, 1, 6, 6)
    target = F.conv2d(x, torch.randn(4, 1, 3, 3))
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
    "name,dims,channels",
    [
        ("monai_resnet18", 3, [64, 128, 256, 512]),
        ("monai_densenet121", 3, [1024]),
        ("torchvision_resnet18", 2, [64, 128, 256, 512]),  # its first convolution takes 13 bands
        ("torchvision_mobilenet_v3_large", 2, [16, 24, 40, 80, 160, 960]),
        ("torchvision_mobilenet_v3_small", 2, [16, 16, 24, 40, 96, 576]),
    ],
)
def test_reference_networks_follow_the_backbone_contract(name, dims, channels):
    bands = 13 if name.startswith("torchvision") else 2
    backbone = build_backbone(name, spatial_dims=dims, in_channels=bands)
    features = backbone(torch.randn(2, bands, *(32,) * dims))
    assert backbone.out_channels == channels == [f.shape[1] for f in features]
    for f, stride in zip(features, backbone.strides, strict=True):
        assert tuple(f.shape[2:]) == tuple(32 // s for s in stride)


def test_precise_batchnorm_recomputes_the_statistics_of_the_training_batches():
    from types import SimpleNamespace

    from cnnsuite.training.callbacks import PreciseBatchNorm
    from cnnsuite.training.classification import ClassificationModule

    model = ClassificationModule(num_classes=2, backbone="convnet", backbone_kwargs={"channels": [4]})
    model.eval()
    bn = model.backbone.stages[0][0][1]
    bn.running_mean.fill_(5.0)  # stale statistics of "another network"
    batches = [(torch.randn(4, 1, 8, 8) + 2, torch.zeros(4, dtype=torch.long)) for _ in range(3)]
    trainer = SimpleNamespace(sanity_checking=False, train_dataloader=batches, world_size=1, datamodule=None)
    PreciseBatchNorm(num_batches=3).on_validation_epoch_start(trainer, model)
    conv = model.backbone.stages[0][0][0]
    with torch.no_grad():
        expected = torch.cat([conv(x) for x, _ in batches]).mean(dim=(0, 2, 3))
    torch.testing.assert_close(bn.running_mean, expected, rtol=1e-4, atol=1e-5)
    assert not model.training
