"""recognition2d: which digit is this: one class per image. The task as registered (:mod:`cnnsuite.contract`)."""

from cnnsuite.contract import Task

from .datamodule import RecognitionDataModule
from .module import RecognitionModule

TASK = Task(
    name="recognition2d",
    module=RecognitionModule,
    datamodule=RecognitionDataModule,
    overhead=True,
)
