"""What video3d predicts and how it is scored: one class per clip, and per video.

It is the shared :class:`~cnnsuite.training.classification.ClassificationModule` on ``(N, C, T, H, W)``
clips: with ``spatial_dims: 3`` (the default) the backbone's 3D filters span time as well as
space, so they can respond to motion. ``spatial_dims: 2`` turns it into the single-frame
baseline: a 2D CNN applied to every frame on its own, its logits averaged over the frames.

Scores: ``<stage>/acc`` and the shared metrics per clip; ``<stage>/video_acc`` per video,
from the softmax of all of a video's clips averaged (the clips are the evaluation loader's
uniform clips, aggregated by video index). A multi-label model (several actions a video, as
in Charades) scores ``<stage>/video_map`` instead: the macro mean average precision of each
video's clip sigmoids averaged. Evaluation adds a contact sheet of test clips.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from cnnsuite.data import Input
from cnnsuite.errors import ConfigError
from cnnsuite.training.classification import ClassificationModule
from cnnsuite.training.present_classes import PresentLabelsAveragePrecision
from cnnsuite.use.tiles import draw_tiles, stretched

from . import backbones  # noqa: F401  (registers PyTorchVideo's reference backbones)


class VideoMetric(Metric):
    """A score of whole videos from their clips' probabilities averaged per video.

    Clips are identified by their index in the evaluation dataset, so a clip seen twice (a
    ``DistributedSampler`` pads the ranks with repeats) counts once. Subclasses say how logits
    become probabilities and how the videos' mean probabilities are scored.
    """

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("probs", "labels", "videos", "clips"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score(self, probs: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        """The figure of videos' mean probabilities ``(videos, classes)`` against their targets."""
        raise NotImplementedError

    def update(self, logits: torch.Tensor, labels: torch.Tensor, videos: torch.Tensor, clips: torch.Tensor) -> None:
        self.probs.append(self.probabilities(logits.detach().float()))
        self.labels.append(labels)
        self.videos.append(videos)
        self.clips.append(clips)

    def compute(self) -> torch.Tensor:
        if isinstance(self.probs, list) and not self.probs:  # synchronised over DDP ranks, states are tensors
            return torch.tensor(float("nan"))
        probs, labels, videos, clips = (dim_zero_cat(s) for s in (self.probs, self.labels, self.videos, self.clips))
        _, inverse = torch.unique(clips, return_inverse=True)
        first = torch.full((int(inverse.max()) + 1,), len(clips), device=clips.device)
        first = first.scatter_reduce(0, inverse, torch.arange(len(clips), device=clips.device), "amin")
        probs, labels, videos = probs[first], labels[first], videos[first]
        _, video_of = torch.unique(videos, return_inverse=True)
        count = int(video_of.max()) + 1
        summed = probs.new_zeros(count, probs.shape[1]).index_add_(0, video_of, probs)
        clips_per_video = torch.bincount(video_of, minlength=count).unsqueeze(1)
        truth = labels.new_zeros(count, *labels.shape[1:]).index_copy_(0, video_of, labels)
        return self.score(summed / clips_per_video, truth)


class VideoAccuracy(VideoMetric):
    """Video-level accuracy: the clips' softmax averaged per video, then argmax."""

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=1)

    def score(self, probs: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        return (probs.argmax(dim=1) == truth).float().mean()


class VideoAveragePrecision(VideoMetric):
    """Video-level macro mean average precision of a multi-label model: each class's clip
    sigmoids averaged per video, ranked over the videos; a class no video carries has none and
    is left out of the mean, as the clip-level ``map_macro`` leaves it."""

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid()

    def score(self, probs: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        metric = PresentLabelsAveragePrecision(probs.shape[1], macro=True).to(probs.device)
        metric.update(probs, truth.long())
        return metric.compute()


class VideoClassificationModule(ClassificationModule):
    metric_modes = {**ClassificationModule.metric_modes, "video_acc": "max", "video_map": "max"}

    def __init__(
        self,
        num_classes: int = 8,
        in_channels: int = 3,
        class_names: list[str] | None = None,
        spatial_dims: int = 3,
        **kwargs,
    ) -> None:
        """The shared classifier's arguments (``backbone``, ``backbone_kwargs``, ``head_hidden``,
        ``dropout``, ...), with a video's defaults: RGB clips, 3D filters, the eight motions."""
        if spatial_dims not in (2, 3):
            raise ConfigError(
                f"model.spatial_dims={spatial_dims}: expected 3 (filters over time and space) "
                "or 2 (single-frame baseline)"
            )
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            class_names=class_names,
            spatial_dims=spatial_dims,
            **kwargs,
        )

    @property
    def video_key(self) -> str:
        """The video-level score's name: ``video_map`` for a multi-label model, else ``video_acc``."""
        return "video_map" if self.multilabel else "video_acc"

    def configure_metrics(self, stage: str):
        metrics = super().configure_metrics(stage)
        if stage != "train":
            setattr(self, f"{stage}_video_metric", VideoAveragePrecision() if self.multilabel else VideoAccuracy())
        return metrics

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of clips ``(N, C, T, H, W)``."""
        if self.hparams.spatial_dims == 3:
            return super().forward(x)
        n, c, t, h, w = x.shape  # single-frame baseline: each frame alone, logits averaged
        frames = x.transpose(1, 2).reshape(n * t, c, h, w)
        return super().forward(frames).view(n, t, -1).mean(dim=1)

    def update_metrics(self, stage: str, logits: torch.Tensor, target: torch.Tensor, batch) -> None:
        """The shared metrics, plus the video-level score from each clip's video and clip index."""
        super().update_metrics(stage, logits, target, batch)
        if stage != "train":
            videos, clip_ids = batch[2], batch[3]
            getattr(self, f"{stage}_video_metric").update(logits, target, videos, clip_ids)

    def _log_video_metric(self, stage: str) -> None:
        metric = getattr(self, f"{stage}_video_metric")
        self.log(f"{stage}/{self.video_key}", metric.compute(), prog_bar=stage == "val")
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_video_metric("val")

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._log_video_metric("test")

    def write_plots(self, out_dir: Path, datamodule) -> list[Path]:
        paths = super().write_plots(out_dir, datamodule)
        return paths + [self._contact_sheet(Path(out_dir), datamodule.datasets["test"])]

    def _contact_sheet(self, out_dir: Path, dataset, rows: int = 8, columns: int = 8, pool: int = 64) -> Path:
        """Frames of test clips (the first clip of each of up to ``pool`` videos), one clip a row
        with its true and predicted class as the test pass scored it: mistakes first, then one
        correct clip per class; only the clips shown are read again."""
        probs, truth, predicted = self.tested_in_words(dataset)
        first_clip: dict[int, int] = {}
        for index, (video, _) in enumerate(dataset.starts):
            first_clip.setdefault(video, index)
        picked = list(first_clip.values())[:pool]
        wrong = [i for i in picked if predicted[i] != truth[i]]
        shown, classes = wrong[: rows // 2], set()
        for i in picked:
            if len(shown) >= rows:
                break
            if i not in wrong and truth[i] not in classes:
                shown.append(i)
                classes.add(truth[i])
        right = [i not in wrong for i in shown]
        names = [
            f"{truth[i]}\n→ {predicted[i]}" + ("" if self.multilabel else f" ({probs[i].max():.2f})") for i in shown
        ]
        clips = torch.stack([dataset[i][0] for i in shown])
        path = out_dir / "contact_sheet.png"
        draw_clips(
            clips, names, ["green" if r else "red" for r in right],
            f"test clips: true → predicted{'' if self.multilabel else ' (probability)'}; mistakes first, in red",
            path, columns,
        )  # fmt: skip
        return path

    # --- prediction on raw files ----------------------------------------------------------
    def batch_inputs(self, samples: list[torch.Tensor]) -> torch.Tensor:
        """Every clip of every video in one batch ``(clips, C, T, H, W)``: each input is a video's
        uniform clips (see the datamodule's ``read_input``)."""
        return torch.cat(samples)

    def describe_batch_inputs(self) -> str:
        return (
            "each video's uniform clips concatenated along the first axis; a video's prediction is the mean of "
            f"its clips' {'sigmoids' if self.multilabel else 'softmax'}"
        )

    def describe_outputs(self, outputs: tuple[torch.Tensor, ...], inputs: list[Input]) -> list[dict]:
        """Per video, its clips' probabilities averaged (as ``video_acc`` and ``video_map`` score
        a video) described as the shared classifier does, and ``clips``: each clip's start
        (seconds) and class and score, or a multi-label model's labels."""
        predictions = []
        per_video = self.probabilities(outputs[0]).split([len(item.sample) for item in inputs])
        for probs, item in zip(per_video, inputs, strict=True):
            clips = []
            for start, clip in zip(item.meta["clip_starts"], probs, strict=True):
                described = self.describe_probabilities(clip)
                kept = ("labels",) if self.multilabel else ("class", "score")
                clips.append({"start": start, **{key: described[key] for key in kept}})
            predictions.append({**self.describe_probabilities(probs.mean(dim=0)), "clips": clips})
        return predictions

    def render_prediction(self, item: Input, prediction: dict, path: Path, rows: int = 6) -> None:
        """A contact sheet of the video: its first ``rows`` clips, one a row, each with its start
        and prediction; the title is the video's."""
        clips = prediction["clips"][:rows]
        names = [f"{c['start']:.1f} s\n→ {said(c)}" for c in clips]
        shown = f" (first {rows} of {len(prediction['clips'])} clips)" if len(prediction["clips"]) > rows else ""
        title = f"{item.path.name}: {said(prediction)}{shown}"
        draw_clips(item.sample[: len(clips)], names, ["black"] * len(clips), title, path)


def said(prediction: dict) -> str:
    """A prediction in words: its class and score, or a multi-label model's labels."""
    if "labels" in prediction:
        return ", ".join(prediction["labels"]) or "no label"
    return f"{prediction['class']} ({prediction['score']:.2f})"


def draw_clips(clips: torch.Tensor, names: list[str], colours: list[str], title: str, path: Path, columns: int = 8):
    """Clips ``(N, C, T, H, W)`` one a row, ``columns`` frames of each evenly spread over its time
    axis, each clip stretched to its own range; ``names[i]`` beside row ``i``, in ``colours[i]``.
    Evaluation's contact sheet and prediction's pictures draw through it."""
    frames = clips.shape[2]
    steps = torch.linspace(0, frames - 1, min(columns, frames)).round().long().tolist()
    grid = []
    for clip in clips:
        clip = stretched(clip.permute(1, 2, 3, 0).numpy())  # (T, H, W, 3), one range for the whole clip
        grid.append([clip[t] for t in steps])
    draw_tiles(grid, path, title, 1.1, row_labels=list(zip(names, colours, strict=True)),
               column_labels=[(f"frame {t}", "black") for t in steps])  # fmt: skip
