"""detection2d: many boxes and classes per image. The task as registered (:mod:`cnnsuite.contract`)."""

from cnnsuite.contract import Task

from .datamodule import DetectionDataModule
from .module import DetectionModule

TASK = Task(
    name="detection2d",
    module=DetectionModule,
    datamodule=DetectionDataModule,
    references={
        name: {"model": {"detector": name}}
        for name in ("fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large")
    },
    # SSDlite, the reference closest to ours in training speed: Faster R-CNN would get too few
    # steps within the budget to be scored on more than what little it learnt
    budget_references=("ssdlite320_mobilenet_v3_large",),
    # the detector's own resize of the images (the canvases are what they are)
    resolution=("model.min_size", "model.max_size"),
)
