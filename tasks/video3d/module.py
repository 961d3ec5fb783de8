"""What video3d predicts and how it is scored: one class per clip, and per video.

It is the shared :class:`~cnnsuite.classification.ClassificationModule` on ``(N, C, T, H, W)``
clips: with ``spatial_dims: 3`` (the default) the backbone's 3D filters span time as well as
space, so they can respond to motion. ``spatial_dims: 2`` turns it into the single-frame
baseline: a 2D CNN applied to every frame on its own, its logits averaged over the frames.

Scores: ``<stage>/acc`` and the shared metrics per clip; ``<stage>/video_acc`` per video,
from the softmax of all of a video's clips averaged (the clips are the evaluation loader's
uniform clips, aggregated by video index). Evaluation adds a contact sheet of test clips.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from cnnsuite.classification import ClassificationModule

from . import backbones  # noqa: F401  (registers PyTorchVideo's reference backbones)


class VideoAccuracy(Metric):
    """Video-level accuracy: the clips' softmax averaged per video, then argmax.

    Clips are identified by their index in the evaluation dataset, so a clip seen twice (a
    ``DistributedSampler`` pads the ranks with repeats) counts once.
    """

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("probs", "labels", "videos", "clips"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, logits: torch.Tensor, labels: torch.Tensor, videos: torch.Tensor, clips: torch.Tensor) -> None:
        self.probs.append(logits.detach().float().softmax(dim=1))
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
        truth = labels.new_zeros(count).scatter_(0, video_of, labels)
        return (summed.argmax(dim=1) == truth).float().mean()


class VideoClassificationModule(ClassificationModule):
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
            raise ValueError(
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

    def configure_metrics(self, stage: str):
        metrics = super().configure_metrics(stage)
        if stage != "train":
            setattr(self, f"{stage}_video_acc", VideoAccuracy())
        return metrics

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of clips ``(N, C, T, H, W)``."""
        if self.hparams.spatial_dims == 3:
            return super().forward(x)
        n, c, t, h, w = x.shape  # single-frame baseline: each frame alone, logits averaged
        frames = x.transpose(1, 2).reshape(n * t, c, h, w)
        return super().forward(frames).view(n, t, -1).mean(dim=1)

    def update_metrics(self, stage: str, logits: torch.Tensor, target: torch.Tensor, batch) -> None:
        """The shared metrics, plus video accuracy from each clip's video and clip index."""
        super().update_metrics(stage, logits, target, batch)
        if stage != "train":
            videos, clip_ids = batch[2], batch[3]
            getattr(self, f"{stage}_video_acc").update(logits, target, videos, clip_ids)

    def _log_video_acc(self, stage: str) -> None:
        metric = getattr(self, f"{stage}_video_acc")
        self.log(f"{stage}/video_acc", metric.compute(), prog_bar=stage == "val")
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_video_acc("val")

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._log_video_acc("test")

    def write_plots(self, out_dir: Path, datamodule) -> list[Path]:
        paths = super().write_plots(out_dir, datamodule)
        return paths + [self._contact_sheet(Path(out_dir), datamodule.datasets["test"])]

    @torch.no_grad()
    def _contact_sheet(self, out_dir: Path, dataset, rows: int = 8, columns: int = 8, pool: int = 64) -> Path:
        """Frames of test clips (the first clip of each of up to ``pool`` videos), one clip a row
        with its true and predicted class: mistakes first, then one correct clip per class."""
        self.eval()
        first_clip: dict[int, int] = {}
        for index, (video, _) in enumerate(dataset.starts):
            first_clip.setdefault(video, index)
        picked = list(first_clip.values())[:pool]
        items = [dataset[i] for i in picked]
        clips = torch.stack([item[0] for item in items])
        labels = torch.tensor([item[1] for item in items])
        probs = torch.cat([self(chunk.to(self.device)).softmax(1).cpu() for chunk in clips.split(16)])
        predicted = probs.argmax(1)
        wrong = [i for i in range(len(items)) if predicted[i] != labels[i]]
        shown, classes = wrong[: rows // 2], set()
        for i in range(len(items)):
            if len(shown) >= rows:
                break
            if i not in wrong and int(labels[i]) not in classes:
                shown.append(i)
                classes.add(int(labels[i]))
        frames = clips.shape[2]
        cols = min(columns, frames)
        steps = torch.linspace(0, frames - 1, cols).round().long().tolist()
        fig, axes = plt.subplots(len(shown), cols, figsize=(1.1 * cols + 2.2, 1.15 * len(shown)), squeeze=False)
        for row, i in enumerate(shown):
            clip = clips[i]
            clip = (clip - clip.min()) / (clip.max() - clip.min() + 1e-8)
            for col, t in enumerate(steps):
                ax = axes[row, col]
                ax.imshow(clip[:, t].permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray")
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(f"frame {t}", fontsize=8)
            right = predicted[i] == labels[i]
            axes[row, 0].set_ylabel(
                f"{self.class_names[labels[i]]}\n→ {self.class_names[predicted[i]]} ({probs[i, predicted[i]]:.2f})",
                rotation=0,
                ha="right",
                va="center",
                fontsize=8,
                color="green" if right else "red",
            )
        fig.suptitle("test clips: true → predicted (probability); mistakes first, in red", fontsize=9)
        path = out_dir / "contact_sheet.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        return path
