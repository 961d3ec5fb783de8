"""Classification for any dimensionality: image → class, volume → class, clip → class.

The image, volume, video and multispectral classifiers are this one module with different
data, backbone settings and config: ``spatial_dims`` picks 2D or 3D layers all the way down.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import nn
from torchmetrics import ClasswiseWrapper, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)

from ..backbone import build_backbone
from ..data.inputs import Input
from .heads import ClassifierHead
from .task import TaskModule


class ClassificationModule(TaskModule):
    """Backbone → global pooling → fully connected head → class logits, cross-entropy.

    ``num_classes``, ``in_channels`` and ``class_names`` are linked from the datamodule by
    the CLI, so a folder with 3 or 37 classes needs no edit of the model section.

    ``channels_last`` stores activations channels-last (NHWC / NDHWC): oneDNN's
    convolutions run faster that way on CPU (a 3D CNN trained 2.2× faster here) and
    tensor cores prefer it on GPU.
    """

    monitor = "val/acc"
    mode = "max"
    metric_modes = {"loss": "min", "acc": "max", "f1_macro": "max", "auroc": "max"}

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        class_names: list[str] | None = None,
        spatial_dims: int = 2,
        backbone: str = "convnet",
        backbone_kwargs: dict | None = None,
        head_hidden: list[int] | None = None,
        head_act: str = "relu",
        dropout: float = 0.0,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        backbone_weights: str | None = None,
        backbone_weights_channels: str = "mean",
    ) -> None:
        super().__init__()

    def configure_models(self) -> None:
        hp = self.hparams
        self.backbone = build_backbone(hp.backbone, hp.spatial_dims, hp.in_channels, **(hp.backbone_kwargs or {}))
        self.head = ClassifierHead(
            hp.spatial_dims,
            self.backbone.out_channels[-1],
            hp.num_classes,
            hidden=hp.head_hidden or (),
            act=hp.head_act,
            dropout=hp.dropout,
        )
        if hp.channels_last:
            self.to(memory_format=self._memory_format)

    @property
    def _memory_format(self) -> torch.memory_format:
        if not self.hparams.channels_last:
            return torch.contiguous_format
        return {2: torch.channels_last, 3: torch.channels_last_3d}.get(
            self.hparams.spatial_dims, torch.contiguous_format
        )

    def configure_losses(self) -> None:
        self.loss = nn.CrossEntropyLoss(label_smoothing=self.hparams.label_smoothing)

    def configure_metrics(self, stage: str) -> MetricCollection:
        n = self.hparams.num_classes
        # Training batches come from our own loaders: checking every one's values (a sync per
        # step on a GPU) would cost more than the network's step on a small model.
        metrics = {"acc": MulticlassAccuracy(n, average="micro", validate_args=stage != "train")}
        if stage != "train":
            metrics |= {
                "acc_macro": MulticlassAccuracy(n, average="macro"),
                "f1_macro": MulticlassF1Score(n, average="macro"),
                "auroc": MulticlassAUROC(n, average="macro"),
                "per_class_acc": ClasswiseWrapper(
                    MulticlassAccuracy(n, average=None), labels=self.class_names, prefix="acc/"
                ),
            }
        if stage == "test":
            # Not logged (not a scalar): evaluation draws it.
            self.test_confusion = MulticlassConfusionMatrix(n)
        # No compute groups: a ClasswiseWrapper in a group computes from shared state its
        # own inner metric never saw updated (and torchmetrics warns on every epoch).
        return MetricCollection(metrics, prefix=f"{stage}/", compute_groups=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x.contiguous(memory_format=self._memory_format)))

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = self.loss(logits, y)
        self.update_metrics(stage, logits, y, batch)
        self.log_losses(stage, {"loss": loss}, len(y))
        return loss

    def update_metrics(self, stage: str, logits: torch.Tensor, target: torch.Tensor, batch) -> None:
        """Feed one batch to the stage's metrics; tasks with more to score extend this.

        They get probabilities, not logits: torchmetrics softmaxes a batch only when some
        value lies outside [0, 1], so a batch of small logits would be ranked raw by AUROC."""
        probs = logits.detach().float().softmax(dim=1)
        getattr(self, f"{stage}_metrics").update(probs, target)
        if stage == "test":
            self.test_confusion.update(probs, target)

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def predict_step(self, batch, batch_idx):
        return self(batch[0]).softmax(dim=1)

    def _log_metrics(self, stage: str) -> None:
        self.log_epoch_losses(stage)
        metrics = getattr(self, f"{stage}_metrics")
        values = metrics.compute()
        for key, value in values.items():
            # The progress bar shows the headline numbers, not one per class.
            self.log(key, value, prog_bar=stage != "test" and key.count("/") == 1)
        metrics.reset()

    def on_train_epoch_end(self) -> None:
        self._log_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_start(self) -> None:
        self.test_confusion.reset()

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    # --- prediction on raw files ----------------------------------------------------------
    @property
    def inference_outputs(self) -> dict[str, str]:
        return {"logits": "class scores before softmax, one per class in class_names order (softmax: probabilities)"}

    def describe_probabilities(self, probs: torch.Tensor) -> dict:
        """``{"class", "score", "probabilities": {class name: p}}`` for one softmax vector."""
        index = int(probs.argmax())
        return {
            "class": self.class_names[index],
            "score": float(probs[index]),
            "probabilities": dict(zip(self.class_names, probs.tolist(), strict=True)),
        }

    def describe_outputs(self, outputs: tuple[torch.Tensor, ...], inputs: list[Input]) -> list[dict]:
        return [self.describe_probabilities(p) for p in outputs[0].softmax(dim=1)]

    def render_prediction(self, item: Input, prediction: dict, path: Path) -> None:
        """The input (its ``view`` if it has one) titled with the predicted class: an image as
        it is, a volume as its three middle slices."""
        view = (item.view if item.view is not None else item.sample).float()
        view = (view - view.min()) / (view.max() - view.min() + 1e-8)
        if view.dim() == 4:  # (C, D, H, W): the middle slice across each axis, first channel
            volume = view[0]
            planes = [volume.select(axis, volume.shape[axis] // 2) for axis in range(3)]
        else:
            planes = [view.permute(1, 2, 0).squeeze(-1)]
        fig, axes = plt.subplots(1, len(planes), figsize=(3 * len(planes), 3.4), squeeze=False)
        for ax, plane in zip(axes.flat, planes, strict=True):
            ax.imshow(plane.numpy(), cmap="gray")
            ax.axis("off")
        fig.suptitle(f"{item.path.name}: {prediction['class']} ({prediction['score']:.2f})", fontsize=10)
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)

    def write_plots(self, out_dir: Path, datamodule) -> list[Path]:
        fig, ax = self.test_confusion.plot(labels=self.class_names)
        ax.set_title("Confusion matrix (test split)")
        fig.set_size_inches(max(5, 0.5 * len(self.class_names) + 2), max(4.5, 0.5 * len(self.class_names) + 1.5))
        path = Path(out_dir) / "confusion_matrix.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        return [path]
