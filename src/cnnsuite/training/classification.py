"""Classification for any dimensionality: image → class, volume → class, clip → class.

The image, volume, video and multispectral classifiers are this one module with different
data, backbone settings and config: ``spatial_dims`` picks 2D or 3D layers all the way down.

``multilabel`` (linked from the datamodule, which decides it from its label file) makes it a
multi-label classifier: one independent sigmoid per class, binary cross-entropy, and a label
predicted where its probability reaches that class's threshold. The thresholds are a buffer
(saved in every checkpoint), chosen again at the end of each validation epoch of a fit: per
class, the one of a 0.05 grid that maximises the class's F1 on the validation predictions.

``class_weights`` weights a multi-label model's positives by how rare each class is (rare
labels are the rule in multi-label data): binary cross-entropy's ``pos_weight`` is each
class's negatives over its positives in the training split, clipped to
:attr:`ClassificationModule.pos_weight_range`, set when a fit starts and saved with the weights.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import ClasswiseWrapper, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MultilabelAveragePrecision,
    MultilabelF1Score,
    MultilabelPrecisionRecallCurve,
)

from ..backbone import build_backbone
from ..data.inputs import Input
from ..errors import ConfigError
from .heads import ClassifierHead
from .present_classes import PresentClassesAccuracy, PresentClassesAUROC, PresentLabelsAveragePrecision, PresentLabelsF1
from .task import TaskModule


class ClassificationModule(TaskModule):
    """Backbone → global pooling → fully connected head → class logits, cross-entropy.

    ``num_classes``, ``in_channels`` and ``class_names`` are linked from the datamodule by
    the CLI, so a folder with 3 or 37 classes needs no edit of the model section;
    ``channel_names`` too, so that a published file's first-layer kernels go to the input
    channels of the same name (``backbone_weights``).

    ``channels_last`` stores activations channels-last (NHWC / NDHWC): oneDNN's
    convolutions run faster that way on CPU (measure it per task: ``cnnsuite bench --sections
    recipe``) and tensor cores prefer it on GPU.

    A multi-label model (``multilabel``) logs ``map_macro``, ``map_micro`` (average precision,
    macro and micro), ``f1_macro``, ``f1_micro`` (at the thresholds the epoch ran with) and
    ``ap/<class>``, and its best checkpoint follows ``val/map_macro`` (the instance's
    ``monitor``).
    """

    monitor = "val/acc"
    mode = "max"
    metric_modes = {"loss": "min", "acc": "max", "f1": "max", "auroc": "max", "map": "max", "ap": "max"}
    #: where a multi-label model's thresholds are chosen among
    threshold_grid = (0.05, 0.95, 19)
    #: the range ``class_weights`` clips BCE's ``pos_weight`` to: a class with a handful of
    #: positives (or none) in training would otherwise dominate the loss
    pos_weight_range = (0.01, 100.0)
    #: the most classes a test confusion matrix is kept for: its state is classes² counts (32 MB
    #: at this many), and the number of classes may be a hand-made checkpoint's say
    confusion_max_classes = 2000
    #: the most classes whose names and counts the drawn confusion matrix writes; past them it is
    #: a map of where the mistakes fall, at a bounded size
    confusion_named_classes = 40

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        class_names: list[str] | None = None,
        channel_names: list[str] | None = None,
        spatial_dims: int = 2,
        backbone: str = "convnet",
        backbone_kwargs: dict | None = None,
        head_hidden: list[int] | None = None,
        head_act: str = "relu",
        dropout: float = 0.0,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        backbone_weights: str | None = None,
        backbone_weights_channels: str = "auto",
        backbone_weights_meta: dict | None = None,
        input_normalisation: dict | None = None,
        multilabel: bool = False,
        class_weights: bool = False,
    ) -> None:
        if num_classes < 2:  # torchmetrics' own error was a traceback
            one = f" (the data's one class, {class_names[0]!r})" if class_names else ""
            raise ConfigError(
                f"model.num_classes={num_classes}{one}: a classifier tells 2 or more classes apart; if that is the "
                "folder holding the class folders, give it as --data.data_dir"
            )
        if class_weights and not multilabel:
            raise ConfigError(
                "model.class_weights=true: weights the positives of each class of a multi-label run; "
                "this run's labels are one a sample"
            )
        super().__init__()
        if multilabel:
            self.monitor = "val/map_macro"

    @property
    def multilabel(self) -> bool:
        return bool(self.hparams.get("multilabel", False))

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
        if self.multilabel:
            self.register_buffer("thresholds", torch.full((hp.num_classes,), 0.5))

    def use_channels_last(self, on: bool) -> None:
        """Store the activations (and the weights) channels-last, or not: what a fit's recipe
        chose for its device (:mod:`cnnsuite.training.recipe`), kept in ``channels_last``."""
        self.hparams.channels_last = on
        self.to(memory_format=self._memory_format if on else torch.contiguous_format)

    @property
    def _memory_format(self) -> torch.memory_format:
        if not self.hparams.channels_last:
            return torch.contiguous_format
        return {2: torch.channels_last, 3: torch.channels_last_3d}.get(
            self.hparams.spatial_dims, torch.contiguous_format
        )

    def configure_losses(self) -> None:
        smoothing = self.hparams.label_smoothing  # torch checks it only at the first step, in a traceback
        if isinstance(smoothing, bool) or not isinstance(smoothing, int | float) or not 0 <= smoothing <= 1:
            raise ConfigError(f"model.label_smoothing={smoothing!r}: expected a fraction from 0 to 1")
        if self.multilabel:
            # pos_weight, when there is one, is the loss's buffer: saved in every checkpoint
            weights = torch.ones(self.hparams.num_classes) if self.hparams.get("class_weights") else None
            self.loss = nn.BCEWithLogitsLoss(pos_weight=weights)
        else:
            self.loss = nn.CrossEntropyLoss(label_smoothing=smoothing)

    def configure_metrics(self, stage: str) -> MetricCollection:
        if self.multilabel:
            return self.configure_multilabel_metrics(stage)
        n = self.hparams.num_classes
        # Training batches come from our own loaders: checking every one's values (a sync per
        # step on a GPU) would cost more than the network's step on a small model.
        metrics = {"acc": MulticlassAccuracy(n, average="micro", validate_args=stage != "train")}
        if stage != "train":
            metrics |= {
                # the classes the split holds (present_classes): one it lacks has no recall or AUROC
                "acc_macro": PresentClassesAccuracy(n, macro=True),
                "f1_macro": MulticlassF1Score(n, average="macro"),
                "auroc": PresentClassesAUROC(n),
                "per_class_acc": ClasswiseWrapper(PresentClassesAccuracy(n), labels=self.class_names, prefix="acc/"),
            }
        if stage == "test":  # not logged (not a scalar): evaluation draws it
            self.test_confusion = MulticlassConfusionMatrix(n) if n <= self.confusion_max_classes else None
        # No compute groups: a ClasswiseWrapper in a group computes from shared state its
        # own inner metric never saw updated (and torchmetrics warns on every epoch).
        return MetricCollection(metrics, prefix=f"{stage}/", compute_groups=False)

    def configure_multilabel_metrics(self, stage: str) -> MetricCollection:
        """Average precision on the probabilities (the returned collection) and F1 on the
        decisions at the thresholds (``<stage>_decision_metrics``); validation also keeps the
        precision-recall curve per class that the next thresholds are chosen on."""
        n = self.hparams.num_classes
        check = stage != "train"
        # Training's AP is binned: constant memory over an epoch of any length.
        binned = None if check else 100
        metrics = {"map_micro": MultilabelAveragePrecision(n, average="micro", thresholds=binned, validate_args=check)}
        decisions = {"f1_micro": MultilabelF1Score(n, average="micro", validate_args=check)}
        if check:
            metrics |= {
                "map_macro": PresentLabelsAveragePrecision(n, macro=True),
                "per_class_ap": ClasswiseWrapper(
                    PresentLabelsAveragePrecision(n), labels=self.class_names, prefix="ap/"
                ),
            }
            decisions |= {"f1_macro": PresentLabelsF1(n, macro=True)}
        if stage == "val":
            self.val_curve = MultilabelPrecisionRecallCurve(n, thresholds=torch.linspace(*self.threshold_grid))
        setattr(self, f"{stage}_decision_metrics", MetricCollection(decisions, prefix=f"{stage}/"))
        return MetricCollection(metrics, prefix=f"{stage}/", compute_groups=False)

    def on_fit_start(self) -> None:
        """With ``class_weights``, BCE's ``pos_weight`` from the training split's targets."""
        if self.hparams.get("class_weights"):
            datamodule = self.trainer.datamodule
            self.set_class_weights(torch.as_tensor(np.stack(datamodule.split_targets("train"))))

    def set_class_weights(self, targets: torch.Tensor) -> None:
        """``pos_weight``: each class's negatives over its positives among multi-hot ``targets``
        ``(samples, classes)``, clipped to :attr:`pos_weight_range`; said once."""
        positives = targets.float().sum(dim=0)
        weights = ((len(targets) - positives) / positives).clamp(*self.pos_weight_range)
        self.loss.pos_weight.copy_(weights)
        named = ", ".join(f"{n} {w:.3g}" for n, w in zip(self.class_names, weights.tolist(), strict=True))
        rank_zero_info(f"class_weights: BCE pos_weight from the {len(targets)} training samples: {named}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x.contiguous(memory_format=self._memory_format)))

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        if self.multilabel:
            smoothing = self.hparams.label_smoothing  # toward 1/2: each label is its own two-class problem
            loss = self.loss(logits, y.float() * (1 - smoothing) + smoothing / 2)
        else:
            loss = self.loss(logits, y)
        self.update_metrics(stage, logits, y, batch)
        self.log_losses(stage, {"loss": loss}, len(y))
        return loss

    def update_metrics(self, stage: str, logits: torch.Tensor, target: torch.Tensor, batch) -> None:
        """Feed one batch to the stage's metrics; tasks with more to score extend this.

        They get probabilities, not logits: torchmetrics softmaxes a batch only when some
        value lies outside [0, 1], so a batch of small logits would be ranked raw by AUROC."""
        probs = self.probabilities(logits.detach().float())
        if stage == "test":  # what tested() gives evaluation's pictures: (probabilities, targets)
            self.keep_test_outcome((probs, target))
        if self.multilabel:
            target = target.long()
            getattr(self, f"{stage}_metrics").update(probs, target)
            getattr(self, f"{stage}_decision_metrics").update(self.decide(probs).long(), target)
            if stage == "val":
                self.val_curve.update(probs, target)
            return
        getattr(self, f"{stage}_metrics").update(probs, target)
        if stage == "test":
            self.update_confusion(probs, target)

    def update_confusion(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        """The test confusion matrix, where one is kept (:attr:`confusion_max_classes`)."""
        if self.test_confusion is not None:
            self.test_confusion.update(probs, target)

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def predict_step(self, batch, batch_idx):
        return self.probabilities(self(batch[0]))

    def decide(self, probs: torch.Tensor) -> torch.Tensor:
        """Which labels a multi-label model predicts: each probability at or above its class's threshold."""
        return probs >= self.thresholds.to(probs.device)

    def _log_metrics(self, stage: str) -> None:
        self.log_epoch_losses(stage)
        collections = [getattr(self, f"{stage}_metrics")]
        if self.multilabel:
            collections.append(getattr(self, f"{stage}_decision_metrics"))
        for metrics in collections:
            values = metrics.compute()
            for key, value in values.items():
                # The progress bar shows the headline numbers, not one per class.
                self.log(key, value, prog_bar=stage != "test" and key.count("/") == 1)
            if stage == "test" and self.multilabel and metrics is collections[0]:
                self.test_class_ap = {k.removeprefix("test/ap/"): float(v) for k, v in values.items() if "/ap/" in k}
            metrics.reset()

    def choose_thresholds(self) -> None:
        """Per class, the grid threshold with the highest F1 on the epoch's validation
        predictions; a class without a positive in validation keeps its threshold."""
        precision, recall, grid = self.val_curve.compute()
        self.val_curve.reset()
        precision, recall = precision[:, : len(grid)], recall[:, : len(grid)]
        # precision is NaN at a threshold nothing reaches: no F1 there
        f1 = (2 * precision * recall / (precision + recall).clamp_min(1e-12)).nan_to_num(0.0)
        best, index = f1.max(dim=1)
        self.thresholds.copy_(torch.where(best > 0, grid.to(self.thresholds)[index], self.thresholds))

    def on_train_epoch_end(self) -> None:
        self._log_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")
        if not self.multilabel:
            return
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self.choose_thresholds()
        self.val_curve.reset()

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        if not self.multilabel and self.test_confusion is not None:
            self.test_confusion.reset()

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    # --- prediction on raw files ----------------------------------------------------------
    @property
    def inference_outputs(self) -> dict[str, str]:
        if self.multilabel:
            return {
                "logits": "one score per class in class_names order, each an independent sigmoid (sigmoid: that "
                "label's probability); a label is predicted where its probability is at least its threshold"
            }
        return {"logits": "class scores before softmax, one per class in class_names order (softmax: probabilities)"}

    def describe_labels(self) -> dict:
        """``multilabel``, and a multi-label model's thresholds by class name."""
        if not self.multilabel:
            return {"multilabel": False}
        return {"multilabel": True, "thresholds": self.named_thresholds()}

    def named_thresholds(self) -> dict[str, float]:
        return dict(zip(self.class_names, self.thresholds.tolist(), strict=True))

    def describe_probabilities(self, probs: torch.Tensor) -> dict:
        """``{"class", "score", "probabilities": {class name: p}}`` for one softmax vector; for a
        multi-label model's sigmoids ``{"labels": [every class at or above its threshold],
        "probabilities", "thresholds"}``."""
        if self.multilabel:
            chosen = self.decide(probs).tolist()
            return {
                "labels": [name for name, yes in zip(self.class_names, chosen, strict=True) if yes],
                "probabilities": dict(zip(self.class_names, probs.tolist(), strict=True)),
                "thresholds": self.named_thresholds(),
            }
        index = int(probs.argmax())
        return {
            "class": self.class_names[index],
            "score": float(probs[index]),
            "probabilities": dict(zip(self.class_names, probs.tolist(), strict=True)),
        }

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities, or a multi-label model's sigmoids, of a batch of logits."""
        return logits.sigmoid() if self.multilabel else logits.softmax(dim=1)

    def describe_outputs(self, outputs: tuple[torch.Tensor, ...], inputs: list[Input]) -> list[dict]:
        return [self.describe_probabilities(p) for p in self.probabilities(outputs[0])]

    def target_text(self, target) -> str:
        """A sample's true labels in words: its class, or its labels joined by ``;``."""
        target = torch.as_tensor(target)
        if target.dim() == 0:
            return self.class_names[int(target)]
        return ";".join(n for n, yes in zip(self.class_names, target.tolist(), strict=True) if yes) or "(none)"

    def prediction_text(self, probs: torch.Tensor) -> str:
        """One sample's predicted labels in words, from its probabilities (:meth:`probabilities`),
        as :meth:`target_text` writes them."""
        if self.multilabel:
            return self.target_text(self.decide(probs).float())
        return self.class_names[int(probs.argmax())]

    def tested_in_words(self, dataset) -> tuple[torch.Tensor, list[str], list[str]]:
        """The test pass's probabilities of every sample of ``dataset`` (:meth:`tested`), and
        each sample's true and predicted labels in words: a multi-label sample is right when
        its whole set of labels is."""
        probs, targets = self.tested(dataset)
        return probs, [self.target_text(t) for t in targets], [self.prediction_text(row) for row in probs]

    def carries(self, target, index: int) -> bool:
        """Whether a sample's target carries class ``index``."""
        target = torch.as_tensor(target)
        return bool(target[index]) if target.dim() else int(target) == index

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
        if self.multilabel:
            said = ", ".join(f"{n} ({prediction['probabilities'][n]:.2f})" for n in prediction["labels"]) or "no label"
        else:
            said = f"{prediction['class']} ({prediction['score']:.2f})"
        fig.suptitle(f"{item.path.name}: {said}", fontsize=10)
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)

    def write_plots(self, out_dir: Path, datamodule) -> list[Path]:
        if self.multilabel:
            return [self._plot_class_ap(Path(out_dir))]
        return self.plot_confusion(Path(out_dir))

    def plot_confusion(self, out_dir: Path) -> list[Path]:
        """``confusion_matrix.png`` of the test split, where one is kept."""
        if self.test_confusion is None:
            return []
        named = len(self.class_names) <= self.confusion_named_classes
        fig, ax = self.test_confusion.plot(labels=self.class_names if named else None, add_text=named)
        ax.set_title("Confusion matrix (test split)")
        if not named:
            ax.set_xticks([])
            ax.set_yticks([])
        side = 0.5 * min(len(self.class_names), self.confusion_named_classes)
        fig.set_size_inches(max(5, side + 2), max(4.5, side + 1.5))
        path = out_dir / "confusion_matrix.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        return [path]

    def _plot_class_ap(self, out_dir: Path) -> Path:
        """A multi-label model's average precision per class on the test split, as bars; a class
        without a positive there has none (its name says so), nor a part in the mean."""
        names = list(self.test_class_ap)
        values = np.array([self.test_class_ap[n] for n in names], dtype=float)
        scored = np.isfinite(values)
        shown = [n if ok else f"{n} (none in test)" for n, ok in zip(names, scored, strict=True)]
        fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(names) + 2), 4))
        ax.bar(range(len(names)), np.where(scored, values, 0.0), color="tab:blue")
        ax.set_xticks(range(len(names)), shown, rotation=60, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("average precision")
        mean = f"{values[scored].mean():.3f}" if scored.any() else "n/a"
        ax.set_title(f"Average precision per class (test split); macro mean {mean}")
        path = out_dir / "class_ap.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        return path
