"""``cnnsuite inspect``: look inside a trained network, for every task.

    cnnsuite inspect --ckpt runs/<task>/version_0/checkpoints/best.ckpt [--input FILE] [--out DIR]

The lecture notes say a CNN learns a hierarchy: the first layer's filters are edge and blob
detectors, early stages respond to small local patterns, later stages to larger composite
ones, each seeing a wider receptive field. These pictures and the table make that visible on
a checkpoint (default folder ``<run folder>/inspection/``):

- ``filters.png``: the first convolution's kernels (3D kernels as slices along the first
  spatial axis, one filter a row);
- ``activations_stage<i>.png``: every stage's feature maps for one sample (a test sample, or
  ``--input`` read as ``cnnsuite predict`` reads it);
- ``top_samples.png``: for the deepest stage's most active channels, the test samples that
  excite each most;
- ``gradcam.png``: Grad-CAM (MONAI's ``GradCAM``) of the predicted class on the stage the
  class score is computed from, over the input;
- ``stages.md`` / ``stages.json`` (and printed): per stage, output shape, stride, receptive
  field and parameters (:func:`~cnnsuite.backbone.geometry.describe_stages`) and FLOPs per
  sample (``torch.utils.flop_counter.FlopCounterMode``).

3D inputs and maps (volumes, clips, spectral cubes) are shown by their slices along the first
spatial axis (depth, time or band). What differs between tasks — which module is the backbone,
what it takes, which class score Grad-CAM differentiates — each task says
(:meth:`~cnnsuite.training.task.TaskModule.inspection_network`, :mod:`cnnsuite.use.inspectable`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from monai.visualize import GradCAM
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.utils.data import DataLoader, Subset
from torch.utils.flop_counter import FlopCounterMode
from torchvision.utils import make_grid

from ..backbone import StagedBackbone
from ..backbone.geometry import describe_stages
from ..data import TaskDataModule
from ..errors import ConfigError
from ..jsonout import strict_json
from ..training.runs import default_output, output_folder, run_folder
from ..training.task import TaskModule
from ..trust.checkpoint import data_options, rebuild
from .inspectable import Network
from .predict import Predictor, device_for

#: test samples looked at for ``top_samples.png`` (spread evenly over the test split)
MAX_SAMPLES = 512
#: feature maps drawn per stage, channels of the deepest stage in ``top_samples.png``, samples per channel
MAPS_PER_STAGE, TOP_CHANNELS, TOP_PER_CHANNEL = 16, 4, 6
#: first-layer filters drawn at most
MAX_FILTERS = 64


# --- what is inspected: the task says (TaskModule.inspection_network) ---------------------
def network_of(model: TaskModule, input_dims: int) -> Network:
    """The backbone, its input and the class score of ``model``, whose input batches have
    ``input_dims`` axes: the task's own answer (:meth:`~cnnsuite.training.task.TaskModule.inspection_network`)."""
    return model.inspection_network(input_dims)


def model_batch(model: TaskModule, inputs) -> torch.Tensor:
    """A loader's first batch element as the model's input tensor: tasks that batch inside the
    model (a detector's list of images of any size) go through ``batch_inputs``."""
    return inputs if torch.is_tensor(inputs) else model.batch_inputs(list(inputs))


# --- the sample and the test split -----------------------------------------------------------
def held_out_batches(datamodule: TaskDataModule, max_samples: int) -> Iterator:
    """The model-input part (``batch[0]``) of test batches over up to ``max_samples`` samples
    spread evenly over the test split (split files are often sorted by class)."""
    dataset = datamodule.datasets["test"]
    if len(dataset) == 0:
        raise ConfigError(f"{datamodule.root}: the run's test split is empty; give a sample with --input")
    picked = np.unique(np.linspace(0, len(dataset) - 1, min(len(dataset), max_samples)).astype(int)).tolist()
    loader = DataLoader(
        Subset(dataset, picked), batch_size=datamodule.hparams.batch_size, collate_fn=type(datamodule).collate_fn
    )
    for batch in loader:
        yield batch[0]


def read_sample(ckpt_path: Path, path: Path, model: TaskModule) -> torch.Tensor:
    """``path`` as ``cnnsuite predict`` reads it, as a batch of one model input (a video's
    middle clip); a file that cannot be read raises a one-line error naming it."""
    item = Predictor(ckpt_path, accelerator="cpu").read(path)
    batch = model.batch_inputs([item.sample])
    middle = len(batch) // 2
    return batch[middle : middle + 1]


# --- pictures ----------------------------------------------------------------------------------
def unit(x: torch.Tensor) -> torch.Tensor:
    """``x`` scaled to [0, 1] (a constant map becomes 0)."""
    x = x.detach().float()
    low, high = x.min(), x.max()
    if high - low <= 1e-6 * max(float(high.abs()), float(low.abs()), 1e-12):  # constant but for rounding
        return torch.zeros_like(x)
    return (x - low) / (high - low)


def middle_slice(x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """``(C, *spatial)`` → ``(C, H, W)``: a 3D map's middle slice along its first spatial
    axis; a 1D map as one row."""
    if spatial_dims == 3:
        return x[:, x.shape[1] // 2]
    return x[:, None] if spatial_dims == 1 else x


def picture(x: torch.Tensor, spatial_dims: int) -> np.ndarray:
    """One input or map ``(C, *spatial)`` as an image: 3 channels as RGB, one as grey, others
    as their mean; scaled to [0, 1]."""
    plane = middle_slice(x.detach().float().cpu(), spatial_dims)
    plane = plane if plane.shape[0] == 3 else plane.mean(dim=0, keepdim=True)
    return unit(plane).permute(1, 2, 0).squeeze(-1).numpy()


def _show(ax, image: np.ndarray, title: str | None = None, **kw) -> None:
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest", **kw)
    ax.set_xticks([]), ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def first_conv(backbone: nn.Module) -> _ConvNd:
    conv = next((m for m in backbone.modules() if isinstance(m, _ConvNd)), None)
    if conv is None:
        raise ConfigError("the backbone has no convolution: no filters to show")
    return conv


def filter_grid(weight: torch.Tensor, spatial_dims: int) -> tuple[torch.Tensor, str]:
    """First-layer kernels ``(out, in, *kernel)`` as one image ``(3, H, W)`` and how they are
    shown: 1 or 3 input channels as grey or RGB, more as their mean; each filter scaled to its
    own range; a 3D kernel as its slices along the first spatial axis, left to right, one filter
    a row (several columns of filters when there are many)."""
    w = weight.detach().float().cpu()[:MAX_FILTERS]
    count, inputs = w.shape[:2]
    shown = {1: "grey", 3: "RGB"}.get(inputs, f"mean of the {inputs} input channels")
    if inputs not in (1, 3):
        w = w.mean(dim=1, keepdim=True)
    w = torch.stack([unit(f) for f in w])
    if spatial_dims == 3:
        depth = w.shape[2]
        per_column = math.ceil(count / math.ceil(count / 8))  # at most 8 filters a column
        columns = math.ceil(count / per_column)
        # each filter's slices and a blank tile that parts it from the next column of filters
        tiles = torch.ones(columns * per_column, depth + 1, w.shape[1], *w.shape[3:])
        tiles[:count, :depth] = w.transpose(1, 2)
        # row r, column c holds filter c * per_column + r: filters read down the columns
        tiles = tiles.view(columns, per_column, depth + 1, *tiles.shape[2:]).transpose(0, 1).flatten(0, 2)
        grid = make_grid(tiles, nrow=columns * (depth + 1), padding=1, pad_value=1.0)
        shown += f";\n{depth} slices along the first spatial axis left to right, one filter a row"
    else:
        tiles = w[:, :, None] if spatial_dims == 1 else w
        grid = make_grid(tiles, nrow=max(1, math.ceil(math.sqrt(count))), padding=1, pad_value=1.0)
    return grid, shown


def plot_filters(backbone: StagedBackbone, path: Path) -> Path:
    conv = first_conv(backbone)
    grid, shown = filter_grid(conv.weight, backbone.spatial_dims)
    kernel = "×".join(map(str, conv.weight.shape[2:]))
    height, width = grid.shape[1:]
    fig, ax = plt.subplots(figsize=(6, max(2.5, min(14, 6 * height / width))))
    _show(ax, grid.permute(1, 2, 0).numpy())
    shown_count = min(conv.out_channels, MAX_FILTERS)
    ax.set_title(
        f"first layer: {shown_count} of {conv.out_channels} filters on {conv.in_channels} input channel(s), kernel "
        f"{kernel}\nshown as {shown}; each filter scaled to its own range (black low, white high)",
        fontsize=8,
    )
    return _save(fig, path)


def plot_activations(x: torch.Tensor, features: list[torch.Tensor], rows: list[dict], out_dir: Path) -> list[Path]:
    """One picture per stage (``rows``: :func:`stage_rows`): the sample, then the first feature
    maps, each scaled to its own range."""
    spatial_dims = x.dim() - 1
    paths = []
    for feature, row in zip(features, rows, strict=True):
        index = row["index"]
        shown = min(MAPS_PER_STAGE, feature.shape[0])
        columns = 8
        rows = math.ceil((shown + 1) / columns)
        fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.3, rows * 1.45), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        _show(axes.flat[0], picture(x, spatial_dims), "input")
        for channel in range(shown):
            _show(axes.flat[channel + 1], picture(feature[channel : channel + 1], spatial_dims), f"ch {channel}")
        where = " (middle slice along the first spatial axis)" if spatial_dims == 3 else ""
        fig.suptitle(
            f"stage {index}: maps {_by(feature.shape)}, stride {_by(row['stride'])}, receptive field "
            f"{_by(row['receptive_field'])}\nfirst {shown} of {feature.shape[0]} channels{where}, each scaled to its "
            "own range",
            fontsize=9,
        )
        fig.tight_layout()
        paths.append(_save(fig, out_dir / f"activations_stage{index}.png"))
    return paths


@torch.no_grad()
def top_samples(model: TaskModule, network: Network, batches: Iterator, device) -> dict:
    """Over the test batches: each deepest-stage channel's mean activation, and per sample the
    peak (max over the map) of every channel with a picture of the sample."""
    peaks, means, pictures = [], [], []
    for inputs in batches:
        x = network.to_backbone(model_batch(model, inputs).to(device))
        deepest = network.backbone(x)[-1].flatten(2).float()
        peaks.append(deepest.amax(dim=2).cpu())
        means.append(deepest.mean(dim=2).cpu())
        pictures += [picture(sample, x.dim() - 2) for sample in x]
    peaks, means = torch.cat(peaks), torch.cat(means)
    channels = means.mean(dim=0).argsort(descending=True)[:TOP_CHANNELS].tolist()
    return {
        "channels": channels,
        "mean_activation": [float(means[:, c].mean()) for c in channels],
        "samples": [peaks[:, c].argsort(descending=True)[:TOP_PER_CHANNEL].tolist() for c in channels],
        "peaks": peaks,
        "pictures": pictures,
        "count": len(pictures),
    }


def plot_top_samples(top: dict, stage: int, path: Path) -> Path:
    rows, columns = len(top["channels"]), TOP_PER_CHANNEL
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.4, rows * 1.55), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row, (channel, mean, samples) in enumerate(zip(top["channels"], top["mean_activation"], top["samples"],
                                                         strict=True)):  # fmt: skip
        for column, sample in enumerate(samples):
            _show(axes[row, column], top["pictures"][sample], f"max {float(top['peaks'][sample, channel]):.2f}")
        axes[row, 0].axis("on")
        axes[row, 0].set_ylabel(f"ch {channel}\nmean {mean:.2f}", fontsize=8)
    fig.suptitle(
        f"stage {stage} (deepest): the {rows} channels with the highest mean activation over {top['count']} test "
        f"samples;\neach row: the samples that excite the channel most (max over its map)",
        fontsize=9,
    )
    fig.tight_layout()
    return _save(fig, path)


# --- Grad-CAM ----------------------------------------------------------------------------------
def cam_stage(network: Network, rows: list[dict]) -> int:
    """The stage Grad-CAM weighs: the deepest the class score reads whose map is more than one
    position (a 1×1 map, as LeNet-5's C5, locates nothing)."""
    stage = network.cam_stage
    while stage > 0 and all(n == 1 for n in rows[stage]["out_shape"][1:]):
        stage -= 1
    return stage


def grad_cam(network: Network, x: torch.Tensor, stage: int) -> tuple[torch.Tensor, int, float]:
    """``(map (1, 1, *spatial of x) in [0, 1], class index, its score)``: MONAI's Grad-CAM of
    the predicted class on ``stage``, upsampled to the input's size."""
    scores = network.scores.eval()  # MONAI's hooks put the module back in the mode they find it in
    with torch.no_grad():
        logits = scores(x)
    index = int(logits[0].argmax())
    cam = GradCAM(scores, target_layers=network.cam_layer(stage), postprocessing=unit)
    with torch.enable_grad():
        result = cam(x, class_idx=index)
    return result.detach().cpu(), index, float(logits[0, index])


def plot_grad_cam(x: torch.Tensor, cam: torch.Tensor, title: str, path: Path, slices: int = 6) -> Path:
    """The input, and the map over it: a 2D input whole, side by side; a 3D one by ``slices``
    slices along its first spatial axis, one a column."""
    x, cam = x.detach().float().cpu(), cam[0]
    if x.dim() == 4:
        depth = x.shape[1]
        picked = np.unique(np.linspace(0, depth - 1, min(slices, depth)).round().astype(int)).tolist()
        planes = [(x[:, d], cam[:, d], f"slice {d} of {depth}") for d in picked]
    else:
        planes = [(middle_slice(x, x.dim() - 1), middle_slice(cam, cam.dim() - 1), "")]
    flat = len(planes) == 1
    fig, axes = plt.subplots(1 if flat else 2, 2 if flat else len(planes), figsize=(2.2 * max(2, len(planes)),
                             2.6 if flat else 4.6), squeeze=False)  # fmt: skip
    for column, (image, heat, name) in enumerate(planes):
        shown, over = (axes[0, 0], axes[0, 1]) if flat else (axes[0, column], axes[1, column])
        grey = picture(image, 2)
        _show(shown, grey, "input" if flat else name)
        _show(over, grey, "Grad-CAM over the input" if flat else None)
        over.imshow(heat[0].numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
    if not flat:
        axes[0, 0].set_ylabel("input", fontsize=8)
        axes[1, 0].set_ylabel("Grad-CAM over it", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_no_cam(x: torch.Tensor, reason: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4.5, 4.8))
    _show(ax, picture(x, x.dim() - 1))
    ax.set_title("\n".join(_wrap(reason, 60)), fontsize=8)
    return _save(fig, path)


# --- the table ---------------------------------------------------------------------------------
@torch.no_grad()
def stage_flops(backbone: StagedBackbone, x: torch.Tensor) -> list[int]:
    """FLOPs of each stage on one sample (``FlopCounterMode``: a multiply-add counts 2;
    convolutions and matrix products, not activations or pooling)."""
    flops = []
    for stage in backbone.stages:
        with FlopCounterMode(display=False) as counter:
            x = stage(x)
        flops.append(int(counter.get_total_flops()))
    return flops


def stage_rows(backbone: StagedBackbone, x: torch.Tensor) -> list[dict]:
    """One row per stage for ``x`` (a batch of one)."""
    geometry = describe_stages(backbone, tuple(x.shape[1:]))
    return [
        {**asdict(geo), "flops": flops}
        for geo, flops in zip(geometry, stage_flops(backbone, x), strict=True)
    ]  # fmt: skip


def stages_markdown(rows: list[dict], input_shape: tuple[int, ...]) -> str:
    lines = [
        f"Backbone stages for one input of shape {_by(input_shape)} (channels × spatial); stride and receptive "
        "field per spatial axis in input pixels; FLOPs per sample (multiply-add = 2, convolutions and matrix "
        "products).",
        "",
        "| stage | output shape | stride | receptive field | parameters | FLOPs |",
        "|---:|---|---|---|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['index']} | {_by(row['out_shape'])} | {_by(row['stride'])} | {_by(row['receptive_field'])} "
            f"| {row['parameters']:,} | {_flops(row['flops'])} |"
        )
    total_params, total_flops = sum(r["parameters"] for r in rows), sum(r["flops"] for r in rows)
    lines.append(f"| all | | | | {total_params:,} | {_flops(total_flops)} |")
    return "\n".join(lines) + "\n"


def _flops(n: int) -> str:
    for unit_, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit_}"
    return str(n)


def _by(sizes) -> str:
    return "×".join(str(int(s)) for s in sizes)


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + len(word) >= width:
            lines.append(line)
            line = ""
        line = f"{line} {word}".strip()
    return [*lines, line]


# --- the command -------------------------------------------------------------------------------
def inspect(
    ckpt_path: str | Path,
    out_dir: str | Path,
    input_path: str | Path | None = None,
    max_samples: int = MAX_SAMPLES,
    accelerator: str = "auto",
    data: dict | None = None,
    given: bool = True,
) -> dict:
    """Write the pictures and the table of ``ckpt_path`` into ``out_dir`` (see the module's
    docstring); returns what ``stages.json`` holds. ``data``: where the run's data is (see
    :func:`~cnnsuite.trust.checkpoint.rebuild`); ``given``: the user named ``out_dir``
    (:func:`~cnnsuite.training.runs.output_folder`)."""
    if max_samples < 1:
        raise ConfigError(f"--max_samples {max_samples}: expected at least 1")
    ckpt_path, out_dir = Path(ckpt_path), Path(out_dir)
    model, datamodule = rebuild(ckpt_path, run_folder(ckpt_path), data)
    device = device_for(accelerator)
    model.to(device).eval()
    if input_path is not None:
        sample, source = read_sample(ckpt_path, Path(input_path), model), str(input_path)
    else:
        sample, source = model_batch(model, next(held_out_batches(datamodule, 1))[:1]), "the first test sample"
    network = network_of(model, sample.dim())
    x = network.to_backbone(sample.to(device))
    datamodule.check_writes_outside("out", out_dir)
    output_folder(out_dir, given, marker="stages.json")

    rows = stage_rows(network.backbone, x)
    with torch.no_grad():
        features = [f[0].cpu() for f in network.backbone(x)]
    plot_filters(network.backbone, out_dir / "filters.png")
    plot_activations(x[0].cpu(), features, rows, out_dir)
    top = top_samples(model, network, held_out_batches(datamodule, max_samples), device)
    plot_top_samples(top, rows[-1]["index"], out_dir / "top_samples.png")

    stage = cam_stage(network, rows)
    cam_facts: dict = {"stage": stage, "score": network.about_cam}
    if network.scores is None:
        plot_no_cam(x[0].cpu(), network.about_cam, out_dir / "gradcam.png")
    else:
        cam, index, score = grad_cam(network, x, stage)
        name = model.class_names[index]
        cam_facts |= {"class": name, "class_score": score}
        title = (
            f"Grad-CAM of the predicted class '{name}' (score {score:.2f}: {network.about_cam})\n"
            f"on stage {stage} ({_by(rows[stage]['out_shape'])} maps), input: {Path(source).name}"
        )
        plot_grad_cam(x[0], cam[0:1], title, out_dir / "gradcam.png")
    report = {
        "checkpoint": str(ckpt_path),
        "sample": source,
        "input_shape": list(x.shape[1:]),
        "stages": [{k: list(v) if isinstance(v, tuple) else v for k, v in row.items()} for row in rows],
        "gradcam": cam_facts,
        "top_samples": {
            "stage": rows[-1]["index"],
            "test_samples": top["count"],
            "channels": top["channels"],
            "mean_activation": top["mean_activation"],
        },
    }
    (out_dir / "stages.json").write_text(strict_json(report, indent=1) + "\n")
    (out_dir / "stages.md").write_text(stages_markdown(rows, tuple(x.shape[1:])))
    return report


def inspect_main(argv: list[str]) -> None:
    from ..commands import add_accelerator, add_data, add_out, command_parser

    parser = command_parser(
        "inspect",
        description="Look inside a checkpoint's network: first-layer filters, each stage's feature maps for one "
        "sample, the test samples that excite the deepest channels, Grad-CAM of the predicted class, and a table "
        "of stage shapes, strides, receptive fields, parameters and FLOPs (stages.md, stages.json).",
    )
    parser.add_argument(
        "--input", default=None,
        help="a file to look at, read as cnnsuite predict reads it (default: the run's first test sample)",
    )  # fmt: skip
    add_out(parser, "output folder (default: <run folder>/inspection, else ./inspection)")
    parser.add_argument(
        "--max_samples", type=int, default=MAX_SAMPLES,
        help=f"test samples searched for top_samples.png (default {MAX_SAMPLES})",
    )  # fmt: skip
    add_accelerator(parser)
    add_data(parser)
    args, extra = parser.parse_known_args(argv)
    data = data_options(args, extra, parser)
    out_dir = Path(args.out) if args.out else default_output(args.ckpt, "inspection")
    inspect(args.ckpt, out_dir, args.input, args.max_samples, args.accelerator, data, bool(args.out))
    print((out_dir / "stages.md").read_text())
    print(f"inspection: {out_dir}/ (filters.png, activations_stage*.png, top_samples.png, gradcam.png, stages.md, "
          "stages.json)")  # fmt: skip
