"""recognition2d: which digit is this: one class per image. The task as registered (:mod:`cnnsuite.contract`)."""

from cnnsuite.contract import Task

from .datamodule import RecognitionDataModule
from .module import RecognitionModule

TASK = Task(
    name="recognition2d",
    module=RecognitionModule,
    datamodule=RecognitionDataModule,
    # no reference network: the plain script is its comparison, and on it the bench measures
    # Lightning's overhead over a plain loop
    overhead=True,
    quick_endtoend_epochs=5,
    scale_throughput=True,  # the streamed task whose epochs are shortest: the loader's share shows most
    resolution=("data.image_size",),
)
