"""What localization2d predicts and how it is scored: one class and one box per image.

    image → shared backbone → deepest map → average pool to a grid × grid map → FC → box
    image → crop of the predicted box → the crop's own backbone → global pool → FC → class

The two heads look differently on purpose. *Where* the object is is exactly what global
pooling throws away: an average over all positions is the same wherever the object sits, and
a regressor on it can only recover position from zero-padding artefacts. The box head
therefore keeps a coarse ``box_grid``² map (4×4 by default) and regresses from it with fully
connected layers, the classic "localization as regression" head. ``box_grid: 1`` is global
pooling, kept as a setting so the difference can be measured (README). *Which* object it is
does not depend on where it is, but clutter around it does sway a class read from the whole
image: the class is read from the box (``class_head``): from the image inside it, as R-CNN
classifies a region (``crop``, :class:`CropClassifierHead`), or from the box's cells on a
backbone map, as Fast R-CNN (``roi``, :class:`RoIClassifierHead`); ``global`` pools the whole
deepest map as recognition2d does.

The box head is valid by construction: it predicts the centre with a sigmoid (inside the
image) and the width and height with a sigmoid (between 0 and the image's size), and
``x1 = cx - w/2 < x2 = cx + w/2``. Boxes are in fractions of the input's width and height.

Losses: cross-entropy for the class, plus ``l1_weight`` × L1 on the corners and
``iou_weight`` × GIoU (or CIoU) loss from ``torchvision.ops``: L1 pulls every coordinate,
the IoU loss scores the overlap the metric scores, and still has a gradient when the boxes
do not overlap (GIoU's enclosing-box term).

Scoring: ``acc`` (class), ``miou`` (mean IoU of predicted and true box), ``loc_acc`` (class
right and IoU ≥ 0.5: ILSVRC's top-1 localization), ``gt_known_loc`` (IoU ≥ 0.5 whatever the
class) and per-class ``acc/<class>`` and ``loc_acc/<class>``. Evaluation adds a grid of test
images with both boxes (mistakes first), an IoU histogram and the confusion matrix.
"""

from __future__ import annotations

import copy
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import nn
from torchmetrics import ClasswiseWrapper, Metric, MetricCollection
from torchvision.ops import box_iou, clip_boxes_to_image, complete_box_iou_loss, generalized_box_iou_loss, roi_align
from torchvision.utils import draw_bounding_boxes

from cnnsuite.backbone import build_backbone
from cnnsuite.backbone.blocks import activation_layer
from cnnsuite.data import Input
from cnnsuite.errors import ConfigError
from cnnsuite.training.classification import ClassificationModule
from cnnsuite.use.inspectable import Network
from cnnsuite.use.tiles import draw_tiles, mistakes_first, readable_scale

BOX_LOSSES = {"giou": generalized_box_iou_loss, "ciou": complete_box_iou_loss}


def paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of ``a[i]`` with ``b[i]`` (boxes ``x1, y1, x2, y2``), one value per pair."""
    return box_iou(a, b).diagonal() if len(a) else a.new_zeros(0)


class MeanIoU(Metric):
    """Mean IoU of each predicted box with its true box (one box per image)."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred_boxes: torch.Tensor, target_boxes: torch.Tensor) -> None:
        iou = paired_iou(pred_boxes.float(), target_boxes.float())
        self.total += iou.sum().double()
        self.count += len(iou)

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp(min=1)).float()


class LocalizationAccuracy(Metric):
    """Share of images whose box has IoU ≥ ``threshold`` with the truth and, with
    ``need_class``, whose class is right too (ILSVRC's top-1 localization accuracy; without
    it, "GT-known" localization). ``num_classes`` gives one value per true class instead, NaN
    for a class without an image (it has no score; see :mod:`cnnsuite.training.present_classes`)."""

    higher_is_better = True
    full_state_update = False

    def __init__(
        self, threshold: float = 0.5, need_class: bool = True, num_classes: int | None = None, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.threshold, self.need_class, self.num_classes = threshold, need_class, num_classes
        size = num_classes or 1
        self.add_state("correct", torch.zeros(size, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(size, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self, preds: torch.Tensor, target: torch.Tensor, pred_boxes: torch.Tensor, target_boxes: torch.Tensor
    ) -> None:
        """``preds``: class probabilities (N, K); ``target``: true classes (N,)."""
        hit = paired_iou(pred_boxes.float(), target_boxes.float()) >= self.threshold
        if self.need_class:
            hit &= preds.argmax(dim=1) == target
        index = target if self.num_classes else torch.zeros_like(target)
        self.correct.index_add_(0, index, hit.long())
        self.count.index_add_(0, index, torch.ones_like(index))

    def compute(self) -> torch.Tensor:
        value = self.correct.float() / self.count.clamp(min=1)
        return torch.where(self.count > 0, value, torch.nan) if self.num_classes else value[0]


class BoxHead(nn.Module):
    """Deepest feature map → ``grid``² average pooling → fully connected → a valid box
    ``x1, y1, x2, y2`` in fractions of the input (see the module's docstring)."""

    def __init__(self, in_channels: int, grid: int = 4, hidden: int = 128, act: str = "relu") -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.AdaptiveAvgPool2d(grid),
            nn.Flatten(),
            nn.Linear(in_channels * grid * grid, hidden),
            # Without it Adam's first steps, all of one sign over grid² × channels inputs,
            # drove the hidden units (and the sigmoids after them) into saturation.
            nn.LayerNorm(hidden),
            activation_layer(act),
            nn.Linear(hidden, 4),
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return decode_boxes(self.net(features[-1]))


class RoIClassifierHead(nn.Module):
    """Class logits from the features *inside* a box: ``roi_align`` (torchvision.ops) cuts
    the box out of one backbone stage's map as a ``size``² grid, then fully connected
    layers classify it, as Fast R-CNN's box head does. Clutter outside the box cannot sway it.
    """

    def __init__(
        self, in_channels: int, num_classes: int, stage: int, size: int = 4, hidden: int = 128, act: str = "relu",
        dropout: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.stage, self.size = stage, size
        layers = [
            nn.Flatten(),
            nn.Linear(in_channels * size * size, hidden),
            nn.LayerNorm(hidden),
            activation_layer(act),
        ]
        layers += [nn.Dropout(dropout)] if dropout else []
        self.net = nn.Sequential(*layers, nn.Linear(hidden, num_classes))

    def forward(self, features: list[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        """``boxes``: one per image, in fractions of the input (the map covers the input)."""
        fmap = features[self.stage]
        height, width = fmap.shape[-2:]
        rois = boxes * boxes.new_tensor([width, height, width, height])
        # boxes.shape[0], not len(): torch.export would fix the batch size at the traced one
        index = torch.arange(boxes.shape[0], device=boxes.device, dtype=boxes.dtype)[:, None]
        crops = roi_align(fmap, torch.cat([index, rois], dim=1).to(fmap.dtype), self.size, sampling_ratio=2,
                          aligned=True)  # fmt: skip
        return self.net(crops)


class CropClassifierHead(nn.Module):
    """Class logits from the *image* inside a box, as R-CNN classifies a region: the box,
    squared about its centre and widened by ``margin`` (a digit keeps its shape and its
    edges), is resampled out of the input (``roi_align`` at stride 1) as a ``size``² crop and
    classified by its own ``backbone`` and ``head``. A small object is read at the
    resolution it has in the image, not from the few cells it covers on a strided map.
    The crop network is not the box's backbone: its BatchNorm statistics are those of crops,
    not of whole images."""

    def __init__(self, backbone: nn.Module, head: nn.Module, size: int = 32, margin: float = 0.1) -> None:
        super().__init__()
        self.backbone, self.head, self.size, self.margin = backbone, head, size, margin

    def forward(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """``boxes``: one per image, in fractions of the input."""
        height, width = image.shape[-2:]
        pixels = boxes * boxes.new_tensor([width, height, width, height])
        centre = (pixels[:, :2] + pixels[:, 2:]) / 2
        half = (pixels[:, 2:] - pixels[:, :2]).amax(dim=1, keepdim=True) * (1 + self.margin) / 2
        index = torch.arange(boxes.shape[0], device=boxes.device, dtype=boxes.dtype)[:, None]
        rois = torch.cat([index, centre - half, centre + half], dim=1).to(image.dtype)
        crops = roi_align(image, rois, self.size, sampling_ratio=2, aligned=True)
        return self.head(self.backbone(crops))


def draw_boxes(image: torch.Tensor, boxes: torch.Tensor, labels: list[str], colours: list[str], scale: int = 2):
    """``image`` (C, H, W, any range: stretched to its own minimum and maximum) as RGB uint8,
    enlarged ``scale`` times (nearest neighbour), with ``boxes`` (pixels of ``image``, x1y1x2y2)
    drawn in ``colours`` and labelled with ``labels``; evaluation's grid and prediction's
    pictures draw through it."""
    image = image.float()
    image = ((image - image.min()) / (image.max() - image.min() + 1e-8) * 255).to(torch.uint8)
    image = image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
    image = nn.functional.interpolate(image[None].float(), scale_factor=scale, mode="nearest")[0].to(torch.uint8)
    return draw_bounding_boxes(image, boxes.float() * scale, labels=labels, colors=colours, width=1)


def decode_boxes(raw: torch.Tensor) -> torch.Tensor:
    """``(N, 4)`` unconstrained numbers → boxes with the centre and the size in (0, 1)."""
    centre, size = raw[:, :2].sigmoid(), raw[:, 2:].sigmoid()
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


class LocalizationModule(ClassificationModule):
    """Image → (class logits, box). ``num_classes``, ``in_channels`` and ``class_names`` are
    linked from the datamodule; the class head's settings are the classification module's."""

    monitor = "val/loc_acc"
    mode = "max"
    half_weights_on_cpu = False
    metric_modes = {**ClassificationModule.metric_modes, "miou": "max", "loc_acc": "max", "gt_known_loc": "max"}

    def __init__(
        self,
        spatial_dims: int = 2,
        class_head: str = "crop",
        roi_stage: int = -2,
        roi_size: int = 4,
        crop_size: int = 32,
        box_grid: int = 4,
        box_hidden: int = 128,
        box_loss: str = "giou",
        l1_weight: float = 5.0,
        iou_weight: float = 2.0,
        **kwargs,
    ) -> None:
        """The box head's settings; the rest are the shared classifier's (``backbone``,
        ``backbone_kwargs``, ``head_hidden``, ``dropout``, ...)."""
        if spatial_dims != 2:
            raise ConfigError(f"model.spatial_dims={spatial_dims}: localization2d boxes are 2D")
        if box_loss not in BOX_LOSSES:
            raise ConfigError(f"model.box_loss={box_loss!r}: expected one of {', '.join(BOX_LOSSES)}")
        if class_head not in ("roi", "crop", "global"):
            raise ConfigError(f"model.class_head={class_head!r}: expected 'roi', 'crop' or 'global'")
        if box_grid < 1:
            raise ConfigError(f"model.box_grid={box_grid}: expected at least 1 (1 is global pooling)")
        if class_head == "crop" and crop_size < 1:
            raise ConfigError(f"model.crop_size={crop_size}: expected the crop's side in pixels, at least 1")
        if kwargs.get("multilabel"):
            raise ConfigError(
                "model.multilabel=true: localization2d has no multi-label mode (one class and box an image)"
            )
        super().__init__(spatial_dims=spatial_dims, **kwargs)

    def configure_models(self) -> None:
        super().configure_models()
        hp = self.hparams
        self.box_head = BoxHead(self.backbone.out_channels[-1], hp.box_grid, hp.box_hidden, hp.head_act)
        if hp.class_head == "roi":
            stages = len(self.backbone.out_channels)
            if not -stages <= hp.roi_stage < stages:
                raise ConfigError(f"model.roi_stage={hp.roi_stage}: expected an index of the {stages} backbone stages")
            hidden = (hp.head_hidden or [hp.box_hidden])[0]
            self.head = RoIClassifierHead(self.backbone.out_channels[hp.roi_stage], hp.num_classes, hp.roi_stage,
                                          hp.roi_size, hidden, hp.head_act, hp.dropout)  # fmt: skip
        elif hp.class_head == "crop":
            crop_backbone = build_backbone(hp.backbone, 2, hp.in_channels, **(hp.backbone_kwargs or {}))
            self.head = CropClassifierHead(crop_backbone, self.head, hp.crop_size)

    def load_backbone_weights(self) -> None:
        """``backbone_weights`` start the crop's network too: it is the same backbone, and
        what a file's features know of the objects helps read their class most."""
        super().load_backbone_weights()
        if self.hparams.get("backbone_weights") and self.hparams.class_head == "crop":
            self.head.backbone.load_state_dict(self.backbone.state_dict())

    def renormalise_input(self, mean: list[float], std: list[float]) -> str:
        """The crop's network sees the weights' normalisation as the backbone does."""
        said = super().renormalise_input(mean, std)
        input_map = getattr(self.backbone, "input_map", None)
        if self.hparams.class_head == "crop" and input_map is not None:
            self.head.backbone.input_map = copy.deepcopy(input_map)
        return said

    def configure_losses(self) -> None:
        super().configure_losses()
        self.box_iou_loss = BOX_LOSSES[self.hparams.box_loss]

    def configure_metrics(self, stage: str) -> MetricCollection:
        metrics = super().configure_metrics(stage)
        metrics.add_metrics(
            {
                "miou": MeanIoU(),
                "loc_acc": LocalizationAccuracy(),
                "gt_known_loc": LocalizationAccuracy(need_class=False),
            }
        )
        if stage == "test":
            per_class = LocalizationAccuracy(num_classes=self.hparams.num_classes)
            metrics.add_metrics({"per_class_loc_acc": ClasswiseWrapper(per_class, self.class_names, "loc_acc/")})
        return metrics

    def inspection_network(self, input_dims: int) -> Network:
        """The RoI class head reads stage ``roi_stage``: Grad-CAM looks there (the deepest
        stage only places the box, whose gradient the class score does not see). The crop
        head reads no stage of this backbone: no Grad-CAM."""
        network = super().inspection_network(input_dims)
        if self.hparams.class_head == "roi":
            network.cam_stage = self.hparams.roi_stage % len(network.backbone.stages)
        elif self.hparams.class_head == "crop":
            network.scores = None
            network.about_cam = (
                "no Grad-CAM: model.class_head='crop' reads the class from the box's crop of the image with "
                "its own network; the backbone shown only places the box"
            )
        return network

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(class logits (N, K), boxes (N, 4) x1y1x2y2 in fractions of the input)``."""
        features = self.backbone(x.contiguous(memory_format=self._memory_format))
        boxes = self.box_head(features)
        if self.hparams.class_head == "global":
            return self.head(features), boxes
        # The class loss does not move the box: the box head answers to the box losses alone.
        return self.head(x if self.hparams.class_head == "crop" else features, boxes.detach()), boxes

    def losses(
        self, logits: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, target_boxes: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The three terms and their weighted sum under ``loss``."""
        hp = self.hparams
        terms = {
            "loss_cls": self.loss(logits, labels),
            "loss_l1": nn.functional.l1_loss(boxes, target_boxes),
            f"loss_{hp.box_loss}": self.box_iou_loss(boxes, target_boxes, reduction="mean"),
        }
        terms["loss"] = (
            terms["loss_cls"] + hp.l1_weight * terms["loss_l1"] + hp.iou_weight * terms[f"loss_{hp.box_loss}"]
        )
        return terms

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, labels, target_boxes = batch
        logits, boxes = self(x)
        terms = self.losses(logits, boxes, labels, target_boxes)
        probs = logits.detach().float().softmax(dim=1)
        # the box as predict gives it, clipped to the image: scored and drawn as the user gets it
        given = boxes.detach().float().clamp(0, 1)
        # By keyword: each metric takes the arguments its update() names (torchmetrics filters).
        getattr(self, f"{stage}_metrics").update(
            preds=probs, target=labels, pred_boxes=given, target_boxes=target_boxes
        )
        if stage == "test":
            self.update_confusion(probs, labels)
            scores, predicted = probs.max(dim=1)
            # labels, true boxes, predicted classes, scores, predicted boxes
            self.keep_test_outcome((labels, target_boxes.float(), predicted, scores, given))
        self.log_losses(stage, terms, len(labels))
        return terms["loss"]

    def predict_step(self, batch, batch_idx):
        """``{"probs", "boxes"}``; boxes in fractions of the input's width and height."""
        logits, boxes = self(batch[0])
        return {"probs": logits.softmax(dim=1), "boxes": boxes}

    # --- prediction on raw files ----------------------------------------------------------
    @property
    def inference_outputs(self) -> dict[str, str]:
        return {
            **super().inference_outputs,
            "boxes": "(batch, 4): the box x1, y1, x2, y2 in fractions of the input's width and height "
            "(multiply by the original image's width, height, width, height for pixels; predict's box is then "
            "clipped to the image: x to [0, width], y to [0, height])",
        }

    def describe_outputs(self, outputs: tuple[torch.Tensor, ...], inputs: list[Input]) -> list[dict]:
        """The class as the shared classifier describes it, and ``box``: ``x1, y1, x2, y2`` in
        pixels of the original file (the network's fractions of its input, times the file's
        width and height: the input is the whole image resized), clipped to the image, where
        a box outside it would point at nothing."""
        logits, boxes = outputs
        predictions = []
        for probs, box, item in zip(logits.softmax(dim=1), boxes, inputs, strict=True):
            width, height = item.meta["width"], item.meta["height"]
            pixels = clip_boxes_to_image(box[None] * box.new_tensor([width, height, width, height]), (height, width))
            predictions.append({**self.describe_probabilities(probs), "box": pixels[0].tolist()})
        return predictions

    def render_prediction(self, item: Input, prediction: dict, path: Path) -> None:
        """The file's image with the predicted box, labelled ``class score``; the picture's
        image (``view``) may be a smaller copy of the file's, the box is scaled onto it."""
        image = item.view
        height, width = image.shape[-2:]
        box = (
            torch.tensor([prediction["box"]])
            * torch.tensor([width, height] * 2)
            / torch.tensor([item.meta["width"], item.meta["height"]] * 2)
        )
        label = f"{prediction['class']} {prediction['score']:.2f}"
        drawn = draw_boxes(image, box, [label], ["yellow"], readable_scale(height, width))
        fig, ax = plt.subplots(figsize=(drawn.shape[2] / 100, drawn.shape[1] / 100 + 0.3))
        ax.imshow(drawn.permute(1, 2, 0).numpy())
        ax.axis("off")
        ax.set_title(item.path.name, fontsize=9)
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)

    # --- evaluation pictures ------------------------------------------------------------------
    def write_plots(self, out_dir: Path, datamodule) -> list[Path]:
        """The test pass's own outcomes (:meth:`keep_test_outcome`), so that the split is not
        predicted again for its pictures; only the images shown are read again."""
        out_dir = Path(out_dir)
        dataset = datamodule.datasets["test"]
        labels, truth, predicted, scores, boxes = self.tested(dataset)
        ious = paired_iou(boxes, truth)
        return [
            *super().write_plots(out_dir, datamodule),
            self._plot_predictions(out_dir, dataset, labels, truth, predicted, scores, boxes, ious),
            self._plot_iou_histogram(out_dir, ious),
        ]

    def _plot_predictions(self, out_dir, dataset, labels, truth, predicted, scores, boxes, ious, count=32) -> Path:
        """Test images with the true box (green) and the predicted one (red where the
        localization is wrong, else yellow), labelled ``true->predicted score`` (ASCII: the
        drawing font has no arrow); mistakes (wrong class or IoU < 0.5) first."""
        right = (predicted == labels) & (ious >= 0.5)
        tiles = []
        for i in mistakes_first(right.tolist(), count):
            image = dataset[i][0]
            size = torch.tensor([image.shape[2], image.shape[1]] * 2, dtype=torch.float32)
            label = f"{self.class_names[labels[i]]}->{self.class_names[predicted[i]]} {scores[i]:.2f}"
            colour = "yellow" if right[i] else "red"
            drawn = draw_boxes(image, torch.stack([truth[i], boxes[i]]) * size, ["", label], ["lime", colour])
            tiles.append(drawn.permute(1, 2, 0).numpy() / 255)
        return draw_tiles(
            [tiles[r : r + 8] for r in range(0, len(tiles), 8)], out_dir / "predictions.png",
            "test images: true box (green), predicted box: true->predicted score (mistakes first, red)", 1.5,
        )  # fmt: skip

    def _plot_iou_histogram(self, out_dir: Path, ious: torch.Tensor) -> Path:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        ax.hist(ious.numpy(), bins=20, range=(0, 1), color="#4363d8")
        ax.axvline(0.5, color="red", linestyle="--", label="IoU 0.5 (localized)")
        ax.set_xlabel("IoU of predicted and true box")
        ax.set_ylabel("test images")
        ax.set_title(f"IoU on the test split (mean {float(ious.mean()) if len(ious) else 0:.3f})")
        ax.legend()
        path = out_dir / "iou_histogram.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        return path
