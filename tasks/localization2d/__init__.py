"""localization2d: one class and one box per image. The task as registered (:mod:`cnnsuite.contract`)."""

from cnnsuite.contract import Task

from .datamodule import LocalizationDataModule
from .module import LocalizationModule

TASK = Task(
    name="localization2d",
    module=LocalizationModule,
    datamodule=LocalizationDataModule,
    references={"torchvision_resnet18": {"model": {"backbone": "torchvision_resnet18", "backbone_kwargs": {}}}},
    quick_budget=True,
    resolution=("data.image_size",),
)
