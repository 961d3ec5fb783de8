"""What detection2d predicts and how it is scored: many boxes, each with a class and a score.

The network is ours up to the features and torchvision's from there on:

    image → our backbone (stages shallow → deep) → FPN (torchvision.ops) → detector

:class:`BackboneFPN` is the small adapter torchvision's detection models need: it runs the
shared backbone, feeds the chosen stages to ``torchvision.ops.FeaturePyramidNetwork`` and
returns an ``OrderedDict`` of maps with an ``out_channels`` attribute. The detector — FCOS
(default, anchor-free), RetinaNet or Faster R-CNN — brings its own anchors or points, box
coder, losses, resizing/normalisation transform and NMS; none of that is rewritten here.
Anchor sizes follow the pyramid's strides. torchvision's reference detectors
``fasterrcnn_mobilenet_v3_large_320_fpn`` and ``ssdlite320_mobilenet_v3_large`` can be
picked instead (random init, nothing downloaded) to compare against.

Prediction on raw files (``cnnsuite predict``, ``serve``) and export split a one-stage
detector (FCOS, RetinaNet) where torchvision's own ``forward`` splits it: the network —
backbone, FPN and heads, what ONNX export writes — takes the batch the detector's
``transform`` made (resized, normalised, padded) and returns the heads' raw outputs; the
points or anchors, torchvision's ``postprocess_detections`` (box decoding, NMS) and the
mapping back to each image's pixels run outside it, in PyTorch, the same for a torch or an
ONNX Runtime network. Faster R-CNN and the references pick boxes between their stages
(region proposals, then ROI heads), so they cannot be cut at the heads: they predict
through ``forward`` and are not exported.

Scoring is torchmetrics' ``MeanAveragePrecision`` with the ``faster_coco_eval`` backend
(pycocotools' ``COCOeval`` in C++: the same figures, tested against pycocotools, in less of
the time every validation epoch pays): ``map`` (IoU .50:.95), ``map_50``, ``map_75``,
size-bucketed and recall figures and per-class AP as ``test/ap/<class>``. Objects fall in
COCO's size buckets by their annotation's ``area`` (a polygon's, in real exports) as in
pycocotools' own evaluation, not by their box. Evaluation adds a grid of test images with
predicted boxes and a ``predictions.json`` in the COCO results format, both from the test
pass's own detections.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from functools import partial
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.func import functional_call
from torchmetrics import MetricCollection
from torchmetrics.detection import MeanAveragePrecision
from torchvision.models import detection as tvd
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSClassificationHead, FCOSHead, FCOSRegressionHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7
from torchvision.utils import draw_bounding_boxes, make_grid, save_image

from cnnsuite.backbone import StagedBackbone, build_backbone
from cnnsuite.data import BadFileError
from cnnsuite.data.coco import CategoryMap, coco_results
from cnnsuite.data.inputs import Input
from cnnsuite.data.limits import check_sample_size
from cnnsuite.errors import ConfigError
from cnnsuite.training.pretrained import fit_channels
from cnnsuite.training.task import TaskModule
from cnnsuite.use.inspectable import Network, same
from cnnsuite.use.tiles import readable_scale

REFERENCES = ("fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large")
DETECTORS = ("fcos", "retinanet", "fasterrcnn", *REFERENCES)
# Detectors whose class 0 is "background": dataset labels are shifted by one for them.
_BACKGROUND_FIRST = ("fasterrcnn", *REFERENCES)
# The detectors whose network ends at raw head outputs (what prediction runs and export
# writes), with the names of those outputs in torchvision's order.
HEAD_OUTPUTS = {
    "fcos": ("cls_logits", "bbox_regression", "bbox_ctrness"),
    "retinanet": ("cls_logits", "bbox_regression"),
}
# Detections drawn in pictures: those scoring at least this.
DRAW_MIN_SCORE = 0.4
# One colour per class in the prediction plots.
_PALETTE = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#fff"]
# mAP fields that are not one number, or not a score.
_NOT_LOGGED = ("map_per_class", "mar_100_per_class", "classes", "ious", "precision", "recall", "scores")


class BackboneFPN(nn.Module):
    """Our list-returning backbone + torchvision's FPN, as torchvision's detectors want it.

    ``stages`` picks which backbone stages feed the pyramid (default: all but the first,
    whose full-resolution maps cost most and see least). ``extra`` adds coarser levels:
    ``p6p7`` (FCOS/RetinaNet style, two strided convs) or ``pool`` (Faster R-CNN style).
    ``strides`` lists each output level's stride, for sizing anchors.
    """

    def __init__(self, backbone: nn.Module, stages: list[int], out_channels: int, extra: str | None = None) -> None:
        super().__init__()
        n = len(backbone.out_channels)
        bad = [s for s in stages if not -n <= s < n]
        if bad or not stages:
            raise ConfigError(f"model.fpn_stages={stages}: expected indices of the backbone's {n} stages")
        self.body = backbone
        self.stages = [s % n for s in stages]
        blocks = {
            None: None,
            "pool": LastLevelMaxPool(),
            "p6p7": LastLevelP6P7(out_channels, out_channels),
        }
        if extra not in blocks:
            raise ConfigError(f"extra={extra!r}: expected None, 'pool' or 'p6p7'")
        self.fpn = FeaturePyramidNetwork(
            [backbone.out_channels[s] for s in self.stages], out_channels, extra_blocks=blocks[extra]
        )
        self.out_channels = out_channels
        strides = [int(backbone.strides[s][0]) for s in self.stages]
        strides += [strides[-1] * 2 ** (i + 1) for i in range({None: 0, "pool": 1, "p6p7": 2}[extra])]
        self.strides = strides

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(x)
        return self.fpn(OrderedDict((str(s), features[s]) for s in self.stages))


class RawHeads(nn.Module):
    """A one-stage detector up to its heads: the padded, normalised batch → the heads' raw
    outputs (``HEAD_OUTPUTS``), each ``(N, locations × anchors of all levels, …)`` as
    torchvision's ``forward`` has them before ``postprocess_detections``. No control flow
    depends on values, so ``torch.onnx.export(dynamo=True)`` takes it whole."""

    def __init__(self, detector: nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.backbone, self.head, self.names = detector.backbone, detector.head, names

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.head(list(self.backbone(images).values()))
        return tuple(outputs[name] for name in self.names)


class DetectionScores(nn.Module):
    """The padded batch → class scores ``(N, K)`` for Grad-CAM: a one-stage detector's
    per-location class scores (the log of sigmoid(class logit), plus log sigmoid(centerness)
    for FCOS: the detector's own score), best location per class, so the predicted class is
    that of the highest-scoring detection."""

    def __init__(self, heads: RawHeads) -> None:
        super().__init__()
        self.model = heads

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        heads = dict(zip(self.model.names, self.model(images), strict=True))
        scores = nn.functional.logsigmoid(heads["cls_logits"])  # (N, locations, K)
        if "bbox_ctrness" in heads:
            scores = scores + nn.functional.logsigmoid(heads["bbox_ctrness"])
        return scores.amax(dim=1)


def build_detector(
    detector: str,
    num_classes: int,
    in_channels: int,
    backbone: str,
    backbone_kwargs: dict,
    fpn_stages: list[int] | None,
    fpn_channels: int,
    head_convs: int,
    transform: dict,
) -> nn.Module:
    """A torchvision detection model; ``num_classes`` counts the dataset's classes only."""
    if detector not in DETECTORS:
        raise ConfigError(f"model.detector={detector!r}: expected one of {', '.join(DETECTORS)}")
    if detector in REFERENCES:
        if in_channels != 3:
            # The references' MobileNetV3 stem takes RGB: gray images are repeated to 3 channels.
            transform = {**transform, "image_mean": transform["image_mean"][:1] * 3,
                         "image_std": transform["image_std"][:1] * 3}  # fmt: skip
        factory = getattr(tvd, detector)
        if detector.startswith("ssdlite"):
            # SSDlite320 resizes every image to 320x320, as its name says: min/max_size do not apply.
            kw = {"image_mean": transform["image_mean"], "image_std": transform["image_std"]}
        else:
            kw = dict(transform)
        return factory(weights=None, weights_backbone=None, num_classes=num_classes + 1, **kw)

    body = build_backbone(backbone, 2, in_channels, **backbone_kwargs)
    stages = list(fpn_stages) if fpn_stages is not None else list(range(1, len(body.out_channels)))
    extra = {"fcos": "p6p7", "retinanet": "p6p7", "fasterrcnn": "pool"}[detector]
    features = BackboneFPN(body, stages, fpn_channels, extra)
    strides = features.strides
    if detector == "fcos":
        # One point per location; the "anchor" size (= stride) sets each level's box-size range.
        anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
        head = FCOSHead(fpn_channels, 1, num_classes, num_convs=head_convs)
        # torchvision's heads normalise with GroupNorm(32): with 32 FPN channels that is one
        # channel per group, so on a 1x1 level (P7 of a 96-px canvas) every group holds one
        # value, normalised to a constant, and a batch of one image fails outright. 16 groups,
        # as for RetinaNet below, keep two channels in each.
        norm = partial(nn.GroupNorm, 16)
        head.classification_head = FCOSClassificationHead(fpn_channels, 1, num_classes, head_convs, norm_layer=norm)
        head.regression_head = FCOSRegressionHead(fpn_channels, 1, head_convs, norm_layer=norm)
        return tvd.FCOS(features, num_classes, anchor_generator=anchors, head=head, **transform)
    if detector == "retinanet":
        scales = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
        sizes = tuple(tuple(4 * s * k for k in scales) for s in strides)
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(strides))
        head = RetinaNetHead(fpn_channels, anchors.num_anchors_per_location()[0], num_classes,
                             norm_layer=partial(nn.GroupNorm, 16))  # fmt: skip
        return tvd.RetinaNet(features, num_classes, anchor_generator=anchors, head=head, **transform)
    anchors = AnchorGenerator(tuple((4 * s,) for s in strides), ((0.5, 1.0, 2.0),) * len(strides))
    roi_pool = MultiScaleRoIAlign([str(s) for s in features.stages], output_size=7, sampling_ratio=2)
    return tvd.FasterRCNN(
        features, num_classes + 1, rpn_anchor_generator=anchors, box_roi_pool=roi_pool,
        rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=150, box_batch_size_per_image=128, **transform,
    )  # fmt: skip


class DetectionModule(TaskModule):
    """Image → boxes, classes and scores with a torchvision detector on our backbone.

    ``num_classes``, ``in_channels``, ``class_names`` and ``channel_names`` are linked from the datamodule.
    ``min_size``/``max_size`` are the detector's internal resize (torchvision's default of
    800 px would blow a 96 px canvas up 8×); ``image_mean``/``image_std`` its normalisation,
    one value per channel (default: the pretrained ``backbone_weights``' own, else 0.5 and 0.25
    each). Images reach the detector in [0, 1] (``input_normalisation`` is None): its transform
    normalises them.
    """

    monitor = "val/map"
    mode = "max"
    half_weights_on_cpu = False
    backbone_prefix = "detector.backbone.body."
    #: torchvision's loss terms (FCOS's and Faster R-CNN's) and torchmetrics' mAP and mAR family
    metric_modes = {
        **{name: "min" for name in ("loss", "classification", "bbox_regression", "bbox_ctrness")},
        "map": "max", "mar": "max",
    }  # fmt: skip

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        class_names: list[str] | None = None,
        channel_names: list[str] | None = None,
        detector: str = "fcos",
        backbone: str = "convnet",
        backbone_kwargs: dict | None = None,
        fpn_stages: list[int] | None = None,
        fpn_channels: int = 32,
        head_convs: int = 2,
        min_size: int = 96,
        max_size: int = 96,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        backbone_weights: str | None = None,
        backbone_weights_channels: str = "auto",
        backbone_weights_meta: dict | None = None,
        input_normalisation: dict | None = None,
        multilabel: bool = False,
    ) -> None:
        if multilabel:
            raise ConfigError("model.multilabel=true: detection2d has no multi-label mode (each box has one class)")
        for key, value in (("image_mean", image_mean), ("image_std", image_std)):
            if value is not None and len(value) != in_channels:
                raise ConfigError(f"model.{key}={value}: expected {in_channels} values, one per input channel")
        if fpn_channels % 32:
            raise ConfigError(f"model.fpn_channels={fpn_channels}: expected a multiple of 32 (FCOS's group norm)")
        resized = f"model.max_size={max_size}: images resized up to"
        check_sample_size((in_channels, max_size, max_size), "image", resized)
        super().__init__()

    def renormalise_input(self, mean: list[float], std: list[float]) -> str:
        """The detector's transform normalises by the weights' ``mean``/``std``, unless
        ``image_mean``/``image_std`` are set."""
        hp, transform = self.hparams, self.detector.transform
        if hp.image_mean is not None or hp.image_std is not None:
            return f"its mean/std not applied: model.image_mean/image_std are set ({hp.image_mean}, {hp.image_std})"
        transform.image_mean = fit_channels(mean, len(transform.image_mean))
        transform.image_std = fit_channels(std, len(transform.image_std))
        return f"the detector's transform normalises by its mean {transform.image_mean}, std {transform.image_std}"

    def feature_backbone(self) -> nn.Module:
        """Ours (or torchvision's, for its reference detectors) under the FPN: ``backbone.body``;
        SSDlite's feature extractor has no FPN and is the backbone itself."""
        return getattr(self.detector.backbone, "body", self.detector.backbone)

    @property
    def label_offset(self) -> int:
        return 1 if self.hparams.detector in _BACKGROUND_FIRST else 0

    def configure_models(self) -> None:
        hp = self.hparams
        transform = {
            "min_size": hp.min_size,
            "max_size": hp.max_size,
            "image_mean": list(hp.image_mean or [0.5] * hp.in_channels),
            "image_std": list(hp.image_std or [0.25] * hp.in_channels),
        }
        self.detector = build_detector(
            hp.detector, hp.num_classes, hp.in_channels, hp.backbone, hp.backbone_kwargs or {},
            hp.fpn_stages, hp.fpn_channels, hp.head_convs, transform,
        )  # fmt: skip
        # The same thresholds whatever the detector: Faster R-CNN keeps them in its ROI heads.
        owner = getattr(self.detector, "roi_heads", self.detector)
        for name in ("score_thresh", "nms_thresh", "detections_per_img"):
            setattr(owner, name, hp[name])

    def configure_losses(self) -> None:
        """The detector computes its own losses (classification, box regression, …)."""

    def configure_metrics(self, stage: str) -> MetricCollection:
        if stage == "train":
            return MetricCollection({})  # training is scored by its losses; mAP needs eval mode
        metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=stage == "test",
                                      backend="faster_coco_eval")  # fmt: skip
        return MetricCollection({"map": metric}, prefix=f"{stage}/", compute_groups=False)

    # --- the network ----------------------------------------------------------------
    def check_input(self, item: Input) -> None:
        """An image the detector's resize (shorter side to ``min_size`` unless the longer passes
        ``max_size``) would bring under one pixel on a side: a 3000x20 strip at ``max_size`` 64
        is 64x0, and interpolation fails for the whole batch. Computed as torchvision's
        ``GeneralizedRCNNTransform`` computes it; SSDlite's fixed 320x320 takes any image."""
        transform = self.detector.transform
        if getattr(transform, "fixed_size", None):
            return
        height, width = item.sample.shape[-2:]
        sides = torch.tensor([height, width], dtype=torch.float32)
        scale = float(torch.min(transform.min_size[-1] / sides.min(), transform.max_size / sides.max()))
        if min(math.floor(height * scale), math.floor(width * scale)) < 1:
            raise BadFileError(
                f"{item.path}: {width}x{height} pixels, resized to under one pixel across by model.min_size "
                f"{transform.min_size[-1]} and model.max_size {transform.max_size}; expected sides at most "
                f"{transform.max_size}:1 apart"
            )

    def _prepare(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.hparams.detector in REFERENCES and self.hparams.in_channels == 1:
            return [image.expand(3, -1, -1) for image in images]
        return images

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Detections per image: ``boxes`` (x1, y1, x2, y2 in the image's pixels), ``labels``
        (0…K-1, the datamodule's), ``scores``."""
        return self.own_detections(self.detector(self._prepare(images)))

    def own_detections(self, detections: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        """torchvision's detections as this task gives them: labels 0…K-1 (the datamodule's),
        and no box without area. FCOS and RetinaNet clip boxes to the image and keep those
        clipped flat (Faster R-CNN drops them): a box past an image's edge came back as a line
        along it, with a score."""
        own = []
        for out in detections:
            boxes = out["boxes"]
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            own.append({**{k: v[keep] for k, v in out.items()}, "labels": out["labels"][keep] - self.label_offset})
        return own

    def forward_for_batchnorm(self, batch) -> None:
        """The backbone and FPN hold the BatchNorm layers (the heads use GroupNorm); a
        detector in train mode would want targets and compute losses."""
        image_list, _ = self.detector.transform(self._prepare(batch[0]))
        self.detector.backbone(image_list.tensors)

    def training_step(self, batch, batch_idx):
        images, targets = batch
        # Crowd regions are not objects to learn; they only excuse detections when scoring.
        targets = [
            {"boxes": t["boxes"][t["iscrowd"] == 0], "labels": t["labels"][t["iscrowd"] == 0] + self.label_offset}
            for t in targets
        ]
        losses = self.detector(self._prepare(images), targets)
        loss = sum(losses.values())
        # losses are means: averaging them over the ranks is right (F1 or mAP would not be)
        self.log_losses("train", {"loss": loss, **losses}, len(images))
        return loss

    def _evaluate(self, batch, stage: str) -> None:
        images, targets = batch
        predictions = self(images)
        truth = [{k: t[k] for k in ("boxes", "labels", "iscrowd", "area")} for t in targets]
        getattr(self, f"{stage}_metrics").update(predictions, truth)
        if stage == "test":
            ids = [t["image_id"] for t in targets]
            self.keep_test_outcome([{"image_id": i, **p} for i, p in zip(ids, predictions, strict=True)])

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def predict_step(self, batch, batch_idx):
        """Per image ``{"image_id", "boxes", "labels", "scores"}``; see
        :func:`cnnsuite.data.coco.coco_results` for the COCO results format."""
        images, targets = batch
        return [{"image_id": t["image_id"], **p} for p, t in zip(self(images), targets, strict=True)]

    def _log_metrics(self, stage: str) -> None:
        metrics = getattr(self, f"{stage}_metrics")
        values = metrics.compute()
        metrics.reset()
        prefix = f"{stage}/"
        if float(values[f"{prefix}map"]) == -1:  # COCO's "no object to score" (detections alone score 0)
            data = getattr(self.trainer.datamodule, "root", "the data")
            raise ConfigError(
                f"{data}: the {stage} images hold no annotated object, so mAP has nothing to score; "
                "evaluate on images with objects"
            )
        for key, value in values.items():
            name = key.removeprefix(prefix)
            if name in _NOT_LOGGED or value.numel() != 1 or float(value) == -1:
                continue  # -1: "no object of this size" in COCO's bookkeeping, not a score
            self.log(key, value, prog_bar=stage == "val" and name in ("map", "map_50"))
        if stage == "test":  # per-class AP: only the test metric computes it (class_metrics=True)
            classes = values[f"{prefix}classes"].reshape(-1).tolist()
            scored = dict(zip(classes, values[f"{prefix}map_per_class"].reshape(-1).tolist(), strict=True))
            for label, name in enumerate(self.class_names):  # -1 or none: no object of the class to score
                ap = scored.get(label, -1)
                self.log(f"{prefix}ap/{name}", ap if ap != -1 else math.nan)

    def on_train_epoch_end(self) -> None:
        self.log_epoch_losses("train")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    # --- prediction on raw files ----------------------------------------------------
    def inspection_network(self, input_dims: int) -> Network:
        """Our backbone inside torchvision's detector (``detector.backbone.body``), on the
        detector's resized and normalised batch; Grad-CAM of the best location's class score
        for the one-stage detectors (:class:`DetectionScores`), on the deepest stage feeding
        the pyramid; none for Faster R-CNN, whose class scores come after proposals are picked."""
        backbone = self.feature_backbone()
        if not isinstance(backbone, StagedBackbone):
            raise ConfigError(
                f"model.detector={self.hparams.detector!r} carries torchvision's own backbone; "
                "inspect looks inside cnnsuite's backbones (model.backbone)"
            )
        stage = max(self.detector.backbone.stages)
        if self.hparams.detector not in HEAD_OUTPUTS:
            about = (
                f"no Grad-CAM: model.detector={self.hparams.detector!r} scores classes only after picking "
                "region proposals, so no one class score comes from the backbone's maps "
                f"({' and '.join(HEAD_OUTPUTS)} have one)"
            )
            return Network(backbone, same, None, "", stage, about)
        scores = DetectionScores(self.inference_network())
        return Network(backbone, same, scores, "model.backbone.body.stages", stage,
                       "log score of the highest-scoring detection")  # fmt: skip

    def inference_network(self) -> nn.Module:
        """Backbone, FPN and heads (:class:`RawHeads`): what prediction runs and export writes.
        Only a one-stage detector can be cut there."""
        names = HEAD_OUTPUTS.get(self.hparams.detector)
        if names is None:
            raise ConfigError(
                f"model.detector={self.hparams.detector!r}: only {' and '.join(HEAD_OUTPUTS)} can be exported "
                "(network up to the heads' raw outputs, decoding and NMS outside); this detector picks region "
                "proposals between its stages, so no network ends at its heads"
            )
        return RawHeads(self.detector, names)

    @property
    def inference_outputs(self) -> dict[str, str]:
        """Name → meaning of each output of :meth:`inference_network` (export writes them)."""
        rows = "(batch, locations of all pyramid levels × anchors per location, levels concatenated"
        meanings = {
            "cls_logits": f"{rows}, classes): class logits, sigmoid gives each class's score",
            "bbox_regression": f"{rows}, 4): box offsets from each location's point or anchor "
            "(torchvision's box coder for this detector)",
            "bbox_ctrness": f"{rows}, 1): centerness logit; FCOS's score is sqrt(sigmoid(class) × sigmoid(this))",
        }
        return {name: meanings[name] for name in HEAD_OUTPUTS.get(self.hparams.detector, ())}

    def inference_dynamic_shapes(self, batch: torch.export.Dim) -> dict[int, object]:
        """Batch, height and width free: the transform pads each batch to its largest resized
        image, rounded up to a multiple of ``size_divisible`` (32), so a batch of wide images is
        wider than tall. Padding every batch to one size instead would change the detections:
        the heads' GroupNorm statistics take in the padded area."""
        step = self.detector.transform.size_divisible
        return {0: batch, 2: step * torch.export.Dim("rows", min=1), 3: step * torch.export.Dim("columns", min=1)}

    def describe_labels(self) -> dict:
        """``decoding``: what ``predict`` does with the raw head outputs (torchvision's
        ``postprocess_detections``), with this model's numbers, for a program that runs the
        exported file: the levels the location axis concatenates, each location's anchors or
        point, the box coder, the thresholds and NMS. Faster R-CNN exports nothing to decode."""
        if self.hparams.detector not in HEAD_OUTPUTS:
            return {}
        detector, fcos = self.detector, self.hparams.detector == "fcos"
        generator = detector.anchor_generator
        coder = (
            "FCOS's linear coder: with the anchor's centre (cx, cy), width w and height h, the box is "
            "(cx - d0 w, cy - d1 h, cx + d2 w, cy + d3 h) for bbox_regression (d0, d1, d2, d3)"
            if fcos
            else "torchvision's BoxCoder with weights (1, 1, 1, 1): centre cx + d0 w, cy + d1 h, size "
            "w exp(d2), h exp(d3) (d2, d3 clamped at log(1000 / 16)), as corners"
        )
        score = "sqrt(sigmoid(cls_logits) × sigmoid(bbox_ctrness))" if fcos else "sigmoid(cls_logits)"
        return {
            "decoding": {
                "levels": [
                    {"stride": stride, "anchors": base.tolist()}
                    for stride, base in zip(detector.backbone.strides, generator.cell_anchors, strict=True)
                ],
                "locations": "level by level, in the order of levels; within a level row by row of its grid "
                "(ceil(padded height / stride) rows, ceil(padded width / stride) columns), and at each location "
                "its anchors in the order given; a location at row i and column j shifts each anchor (x1, y1, x2, "
                "y2) by (j sx, i sy, j sx, i sy), where sx = padded width // columns and sy = padded height // rows",
                "box": coder,
                "score": f"{score}, per location and class",
                "score_thresh": detector.score_thresh,
                "topk_candidates": detector.topk_candidates,
                "nms_thresh": detector.nms_thresh,
                "detections_per_img": detector.detections_per_img,
                "steps": "per level, the (location, class) scores above score_thresh, at most topk_candidates "
                "best of them, each box clipped to the resized image (before padding); then over all levels "
                "together, per class, non-maximum suppression of boxes overlapping a better one by an IoU above "
                "nms_thresh, and the detections_per_img best kept; to pixels: x times the image's width / its "
                "resized width, y times its height / its resized height; boxes without area (x2 <= x1 or "
                "y2 <= y1) dropped",
                "class": "the class axis's index in class_names",
            }
        }

    def describe_batch_inputs(self) -> str:
        hp, transform = self.hparams, self.detector.transform
        return (
            f"each image resized (bilinear) so that its shorter side is {hp.min_size} px unless its longer side would "
            f"pass {hp.max_size} px (scale = min({hp.min_size} / shorter side, {hp.max_size} / longer side), each "
            "side floor(side × scale), torch.nn.functional.interpolate with align_corners=False and no "
            f"antialiasing), normalised per channel by mean {transform.image_mean} and std "
            f"{transform.image_std}, then zero-padded at the bottom and right to the batch's largest size rounded "
            f"up to a multiple of {transform.size_divisible} (torchvision's GeneralizedRCNNTransform); boxes are "
            "decoded and scaled back to each image's own size outside the network"
        )

    def batch_inputs(self, samples: list[torch.Tensor]) -> torch.Tensor:
        """The images (each its own size) resized, normalised and padded into one batch by the
        detector's own ``transform``, as ``forward`` does, outside the exported network."""
        images, _ = self.detector.transform(self._prepare(samples))
        return images.tensors

    def synthetic_inputs(self, datamodule, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Random images of the detector's own canvas (``min_size`` square; any image becomes at
        most that after its transform), prepared by :meth:`batch_inputs` as files are: the
        data's images differ in size, the network's input need not."""
        hp = self.hparams
        images = torch.rand(size, hp.in_channels, hp.min_size, hp.min_size, generator=generator)
        return self.batch_inputs(list(images))

    @torch.no_grad()
    def predict_inputs(self, inputs: list[Input], network=None) -> list[dict]:
        """One-stage detectors go through the network and :meth:`describe_outputs`; the others
        through ``forward`` (they have no network to replace, so ``network`` is refused)."""
        if self.hparams.detector in HEAD_OUTPUTS:
            return super().predict_inputs(inputs, network)
        if network is not None:
            self.inference_network()  # raises, saying why
        self.eval()
        return [self.describe_detections(d) for d in self([item.sample.to(self.device) for item in inputs])]

    def describe_outputs(self, outputs: tuple[torch.Tensor, ...], inputs: list[Input]) -> list[dict]:
        """torchvision's own decoding of the raw head outputs, as the detector's ``forward``
        does it: points or anchors for the padded batch, ``postprocess_detections`` (score
        threshold, top-k per level, box decoding, NMS), boxes scaled back to each input's size.

        What that needs from the batch is only its geometry — each image's size after the
        resize, the padded size, each pyramid level's grid — so the transform and the
        backbone run on ``meta`` tensors: shapes are worked out, nothing is computed.
        """
        samples = self._prepare([item.sample for item in inputs])
        batch, _ = self.detector.transform([sample.to("meta") for sample in samples])
        weights = {**dict(self.detector.backbone.named_parameters()), **dict(self.detector.backbone.named_buffers())}
        levels = functional_call(
            self.detector.backbone, {k: v.to("meta") for k, v in weights.items()}, (batch.tensors,)
        ).values()
        grids = [torch.empty(0, 0, *level.shape[-2:]) for level in levels]  # what the anchor generator reads
        anchors = self.detector.anchor_generator(batch, grids)
        locations = [grid.shape[-2] * grid.shape[-1] for grid in grids]
        per_location = outputs[0].shape[1] // sum(locations)  # anchors per location (1 for FCOS's points)
        counts = [n * per_location for n in locations]
        head_outputs = {
            name: list(output.split(counts, dim=1))
            for name, output in zip(HEAD_OUTPUTS[self.hparams.detector], outputs, strict=True)
        }
        split_anchors = [list(a.split(counts)) for a in anchors]
        detections = self.detector.postprocess_detections(head_outputs, split_anchors, batch.image_sizes)
        original_sizes = [tuple(sample.shape[-2:]) for sample in samples]
        detections = self.detector.transform.postprocess(detections, batch.image_sizes, original_sizes)
        return [self.describe_detections(d) for d in self.own_detections(detections)]

    def describe_detections(self, detections: dict[str, torch.Tensor]) -> dict:
        """``{"detections": [{"class", "score", "box": [x1, y1, x2, y2]}, ...]}``, best first,
        boxes in the input image's pixels."""
        order = detections["scores"].argsort(descending=True, stable=True)
        boxes, labels, scores = (detections[k][order].tolist() for k in ("boxes", "labels", "scores"))
        return {
            "detections": [
                {"class": self.class_names[label], "score": score, "box": box}
                for box, label, score in zip(boxes, labels, scores, strict=True)
            ]
        }

    def render_prediction(self, item: Input, prediction: dict, path: Path) -> None:
        """The image with its detections drawn as evaluation's ``predictions.png`` draws
        them (on ``view``, a copy no larger than the picture); the title says how many scored
        too low to be drawn."""
        found = prediction["detections"]
        index = {name: i for i, name in enumerate(self.class_names)}
        view = item.view  # a copy of the image no larger than the picture: boxes are scaled onto it
        scale = torch.tensor([view.shape[-1] / item.meta["width"], view.shape[-2] / item.meta["height"]] * 2)
        picture, below = self.draw_detections(
            view,
            torch.tensor([d["box"] for d in found], dtype=torch.float32).reshape(-1, 4) * scale,
            torch.tensor([index[d["class"]] for d in found], dtype=torch.int64),
            torch.tensor([d["score"] for d in found], dtype=torch.float32),
        )
        fig, ax = plt.subplots(figsize=(4, 4.4))
        ax.imshow(picture.permute(1, 2, 0).numpy())
        ax.axis("off")
        ax.set_title(
            f"{item.path.name}: {len(found) - below} detections, score ≥ {DRAW_MIN_SCORE:g}\n"
            f"({below} below, not drawn)",
            fontsize=9,
        )
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)

    # --- evaluation outputs ---------------------------------------------------------
    def write_plots(self, out_dir: Path, datamodule) -> list[Path]:
        """``predictions.png`` (test images with predicted boxes, classes, scores) and
        ``predictions.json`` (every test detection, COCO results format), from the test pass's
        own detections (:meth:`keep_test_outcome`): the split is not predicted again, and only
        the images drawn are read again."""
        out_dir = Path(out_dir)
        dataset = datamodule.datasets["test"]
        predictions = self.tested(dataset)
        categories = getattr(datamodule, "categories", None) or CategoryMap(
            list(range(self.hparams.num_classes)), self.class_names
        )
        (out_dir / "predictions.json").write_text(json.dumps(coco_results(predictions, categories)))
        return [self.draw_predictions(out_dir / "predictions.png", dataset, predictions)]

    def draw_detections(
        self,
        image: torch.Tensor,
        boxes: torch.Tensor,
        labels: torch.Tensor,
        scores: torch.Tensor,
        truth: torch.Tensor | None = None,
        min_score: float = DRAW_MIN_SCORE,
    ) -> tuple[torch.Tensor, int]:
        """``(picture, how many detections scored below min_score)``: ``image`` ``(C, H, W)`` in
        [0, 1] as RGB uint8, small images enlarged so labels read, the true boxes (``truth``)
        in thin white, the detections scoring ≥ ``min_score`` in a colour per class, labelled
        ``class score``."""
        font = str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf")
        rgb = (image * 255).round().to(torch.uint8).expand(3, -1, -1)
        scale = readable_scale(*rgb.shape[1:])
        rgb = rgb.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
        if truth is not None and len(truth):
            rgb = draw_bounding_boxes(rgb, truth * scale, colors="white", width=1)
        keep = scores >= min_score
        if keep.any():  # torchvision warns about an empty list of boxes
            classes, kept = labels[keep].tolist(), scores[keep].tolist()
            colors = [_PALETTE[c % len(_PALETTE)] for c in classes]
            rgb = draw_bounding_boxes(
                rgb, boxes[keep] * scale, labels=[f"{self.class_names[c]} {p:.2f}" for c, p in
                zip(classes, kept, strict=True)], colors=colors, width=2, font=font, font_size=12,
                label_colors="black", label_background_colors=colors, fill_labels=True,
            )  # fmt: skip
        return rgb, int((~keep).sum())

    def draw_predictions(
        self, path: Path, dataset, predictions: list[dict], count: int = 16, min_score: float = DRAW_MIN_SCORE
    ) -> Path:
        """A grid of the first ``count`` test images: the true boxes in thin white, the
        predictions with score ≥ ``min_score`` in a colour per class, labelled ``class score``."""
        tiles = []
        for index in range(min(count, len(dataset))):
            image, target = dataset[index]
            pred = predictions[index]
            tile, _ = self.draw_detections(
                image, pred["boxes"], pred["labels"], pred["scores"], target["boxes"], min_score
            )
            tiles.append(tile)
        side = max(max(t.shape[1] for t in tiles), max(t.shape[2] for t in tiles))
        tiles = [nn.functional.pad(t, (0, side - t.shape[2], 0, side - t.shape[1])) for t in tiles]
        save_image(make_grid([t.float() / 255 for t in tiles], nrow=4, padding=4, pad_value=1.0), path)
        return path
