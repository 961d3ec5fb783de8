"""Residual blocks and the ``resnet`` backbone: shapes and geometry in 1D/2D/3D, the shortcut
really carries the input, gradients reach the stem, torchvision's parameter counts, and bad
``backbone_kwargs`` named by key."""

import pytest
import torch
from torch.nn import functional as F

from cnnsuite.backbone import BasicBlock, Bottleneck, build_backbone, describe_stages, free_parameters
from cnnsuite.errors import ConfigError


@pytest.mark.parametrize(
    "dims,size,kwargs,strides,channels",
    [
        (1, (40,), dict(widths=(4, 8)), [(1,), (2,)], [4, 8]),
        (2, (28, 28), {}, [(1, 1), (2, 2), (4, 4)], [32, 64, 128]),
        (
            2,
            (30, 21),
            dict(widths=(4, 4), blocks=(1, 1), kernel_size=(3, 5), strides=(2, (1, 2))),
            [(2, 2), (2, 4)],
            [4, 4],
        ),
        # video: time keeps its rate through a (1, 2, 2) stride and (1, 3, 3) then (3, 3, 3) kernels
        (
            3,
            (8, 16, 16),
            dict(widths=(4, 8), blocks=(1, 1), kernel_size=(1, 3, 3), strides=(1, (1, 2, 2))),
            [(1, 1, 1), (1, 2, 2)],
            [4, 8],
        ),  # fmt: skip
        (
            3,
            (16, 16, 16),
            dict(widths=(2, 4), block="bottleneck", stem_stride=2, stem_pool="max"),
            [(4, 4, 4), (8, 8, 8)],
            [8, 16],
        ),  # fmt: skip
    ],
)
def test_resnet_shapes_channels_and_strides(dims, size, kwargs, strides, channels):
    backbone = build_backbone("resnet", dims, 3, **kwargs)
    features = backbone(torch.randn(2, 3, *size))
    assert backbone.strides == strides and backbone.out_channels == channels
    for f, c, s in zip(features, channels, strides, strict=True):
        assert f.shape[:2] == (2, c)
        assert tuple(f.shape[2:]) == tuple(-(-n // st) for n, st in zip(size, s, strict=True))


@pytest.mark.parametrize("block,in_channels,stride", [(BasicBlock, 4, 1), (Bottleneck, 16, 1), (BasicBlock, 2, 2)])
def test_a_block_with_a_zeroed_body_passes_its_input_through_the_shortcut(block, in_channels, stride):
    """zero_init_residual zeroes the body's last gamma: the block is then act(shortcut(x)) —
    relu(x) itself when the shortcut is the identity. Dropping the shortcut gives zeros."""
    b = block(2, in_channels, 4, stride=stride, zero_init_residual=True).eval()
    x = torch.randn(3, in_channels, 8, 8)
    y = b(x)
    expected = F.relu(b.shortcut(x))
    torch.testing.assert_close(y, expected)
    if stride == 1 and in_channels == b.out_channels:
        torch.testing.assert_close(y, F.relu(x))
    else:  # a projection: 1×1 conv with the block's stride, then a norm
        assert tuple(b.shortcut[0].kernel_size) == (1, 1) and tuple(b.shortcut[0].stride) == (stride, stride)
    assert y.abs().sum() > 0


def test_the_body_adds_to_the_shortcut():
    b = BasicBlock(1, 4, 4, kernel_size=5).eval()
    x = torch.randn(2, 4, 16)
    torch.testing.assert_close(b(x), F.relu(b.body(x) + x))
    assert b.stride == (1,) and b.out_channels == 4
    assert Bottleneck(3, 4, 4, kernel_size=(3, 1, 1), stride=(1, 2, 2)).stride == (1, 2, 2)


def test_gradients_reach_every_parameter_of_a_deep_resnet():
    backbone = build_backbone("resnet", 2, 1, widths=(4, 4, 8, 8), blocks=(3, 3, 3, 3), zero_init_residual=True)
    backbone(torch.randn(4, 1, 32, 32))[-1].square().mean().backward()
    stem = backbone.stages[0].stem[0].weight
    assert stem.grad is not None and stem.grad.abs().sum() > 0
    assert all(p.grad is not None for p in backbone.parameters())


@pytest.mark.parametrize(
    "block,counts,reference", [("basic", (2, 2, 2, 2), "resnet18"), ("bottleneck", (3, 4, 6, 3), "resnet50")]
)
def test_parameter_count_equals_torchvisions_feature_extractor(block, counts, reference):
    """torchvision's ResNet without its fc: 11,176,512 (ResNet-18) and 23,508,032 (ResNet-50)."""
    import torchvision

    ours = build_backbone(
        "resnet", 2, 3, widths=(64, 128, 256, 512), blocks=counts, block=block, stem_kernel=7, stem_stride=2,
        stem_pool="max",
    )  # fmt: skip
    theirs = getattr(torchvision.models, reference)(weights=None)
    expected = sum(p.numel() for name, p in theirs.named_parameters() if not name.startswith("fc."))
    assert free_parameters(ours) == expected
    assert ours(torch.randn(1, 3, 64, 64))[-1].shape == (1, 512 * (4 if block == "bottleneck" else 1), 2, 2)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(blocks=(2, 2)), r"model.backbone_kwargs.blocks=\[2, 2\]: expected one count per stage \(3 widths\)"),
        (dict(widths=(8, 0)), r"model.backbone_kwargs.widths=\(8, 0\): expected a non-empty list of positive ints"),
        (dict(blocks=2), r"model.backbone_kwargs.blocks=2: expected a non-empty list"),
        (dict(block="dense"), r"model.backbone_kwargs.block='dense': expected one of basic, bottleneck"),
        (dict(strides=(1, 2)), r"model.backbone_kwargs.strides=\(1, 2\): expected one stride per stage \(3\)"),
        (dict(strides=(1, 2, (1, 2))), r"model.backbone_kwargs.strides\[2\]=\[1, 2\]: expected an int or 3 values"),
        (dict(kernel_size=(3, 4, 3)), r"model.backbone_kwargs.kernel_size=\[3, 4, 3\]: expected odd sizes"),
        (dict(stem_kernel=(7, 7)), r"model.backbone_kwargs.stem_kernel=\[7, 7\]: expected an int or 3 values"),
        (dict(stem_channels=0), r"model.backbone_kwargs.stem_channels=0: expected a positive int"),
        (dict(stem_pool="lp"), r"model.backbone_kwargs.stem_pool='lp': expected max, avg or none"),
        (dict(norm="layer"), r"norm='layer': expected one of"),
        (dict(act=5), r"act=5: expected one of relu"),  # not a name: one line, no AttributeError
        (dict(kernel_size=-1), r"model.backbone_kwargs.kernel_size=\[-1, -1, -1\]: expected sizes of 1 or more"),
        (dict(strides=(1, 0, 2)), r"model.backbone_kwargs.strides\[1\]=\[0, 0, 0\]: expected sizes of 1 or more"),
        (dict(stem_stride=0), r"model.backbone_kwargs.stem_stride=\[0, 0, 0\]: expected sizes of 1 or more"),
        (dict(act={"class_path": "torch.nn.ReLU"}), r"act=\{'class_path': 'torch.nn.ReLU'\}: expected one of relu"),
    ],
)
def test_bad_backbone_kwargs_are_named(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        build_backbone("resnet", 3, 1, **kwargs)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(channels=[]), r"channels=\[\]: expected a non-empty list of positive ints, one per stage"),
        (dict(channels="abc"), r"channels='abc': expected a non-empty list of positive ints"),
        (dict(channels=[8, 0]), r"channels=\[8, 0\]: expected a non-empty list of positive ints"),
        (dict(kernel_size="x"), r"kernel_size='x': expected an int or 2 ints, one per axis"),
        (dict(kernel_size=[3, "x"]), r"kernel_size=\[3, 'x'\]: expected an int or 2 ints"),
        (dict(kernel_size=[3.5, 3]), r"kernel_size=\[3.5, 3\]: expected an int or 2 ints"),  # int() rounded it down
        (dict(pool_size=True), r"pool_size=True: expected an int or 2 ints"),
        # a size below 1 reached torch's own RuntimeError (negative dimension, zero stride)
        (dict(kernel_size=-1), r"kernel_size=\[-1, -1\]: expected sizes of 1 or more"),
        (dict(kernel_size=[3, 0]), r"kernel_size=\[3, 0\]: expected sizes of 1 or more"),
        (dict(pool_size=0), r"pool_size=\[0, 0\]: expected sizes of 1 or more"),
    ],
)
def test_bad_convnet_kwargs_are_named(kwargs, message):
    """One line each (no TypeError, IndexError or int() ValueError from inside torch or a head)."""
    with pytest.raises(ConfigError, match=f"^{message}"):
        build_backbone("convnet", 2, 1, **kwargs)


def test_print_config_shows_the_resnet_for_a_3d_task(capsys):
    from conftest import task_config

    from cnnsuite.cli import main

    kwargs = "{widths: [8, 16], blocks: [1, 1], block: bottleneck, kernel_size: [1, 3, 3]}"
    with pytest.raises(SystemExit):
        main(["fit", "--config", task_config("biomedical3d"), "--model.backbone", "resnet",
              "--model.backbone_kwargs", kwargs, "--print_config"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "backbone: resnet" in printed and "block: bottleneck" in printed


def test_a_3d_resnet18_is_monais_in_parameters_and_geometry():
    """The same layout in 3D (7³ stem at stride 2, 3³ max pool, shortcut projections without bias)
    has MONAI's ResNet-18 parameter count and, stage by stage, its shapes, strides and receptive fields."""
    kwargs = dict(widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2), stem_kernel=7, stem_stride=2, stem_pool="max")
    ours = build_backbone("resnet", 3, 1, **kwargs)
    theirs = build_backbone("monai_resnet18", 3, 1, conv1_t_stride=2, bias_downsample=False)
    assert free_parameters(ours) == sum(p.numel() for p in theirs.parameters()) == 33_160_000
    assert describe_stages(ours, (1, 32, 32, 32)) == describe_stages(theirs, (1, 32, 32, 32))


def test_sizes_take_any_whole_number_and_one_pass_over_what_holds_them():
    """A NumPy integer (sizes a caller computed) or a 0-d integer tensor is a whole number, kept as a
    Python int; a 0-d float tensor is one line, and an iterator of sizes is read once."""
    import numpy as np

    from cnnsuite.backbone.blocks import as_tuple

    assert as_tuple(np.int64(3), 2, "kernel_size") == (3, 3)
    assert as_tuple([np.int32(3), torch.tensor(5)], 2, "kernel_size") == (3, 5)
    assert all(type(size) is int for size in as_tuple([np.int64(3), np.int64(1)], 2, "kernel_size"))
    assert as_tuple(iter([3, 5]), 2, "kernel_size") == (3, 5)
    with pytest.raises(ConfigError, match=r"kernel_size=tensor\(3.5000\): expected an int or 2 ints"):
        as_tuple(torch.tensor(3.5), 2, "kernel_size")
    with pytest.raises(ConfigError, match=r"pool_size=np.True_: expected an int or 2 ints"):
        as_tuple(np.True_, 2, "pool_size")
