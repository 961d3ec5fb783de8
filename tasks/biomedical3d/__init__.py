"""biomedical3d: one class per volume (CT, MRI). The task as registered (:mod:`cnnsuite.contract`)."""

from cnnsuite.contract import Task

from .datamodule import Biomedical3DDataModule
from .module import Biomedical3DModule

TASK = Task(
    name="biomedical3d",
    module=Biomedical3DModule,
    datamodule=Biomedical3DDataModule,
    references={
        name: {"model": {"backbone": name, "backbone_kwargs": {}}} for name in ("monai_densenet121", "monai_resnet18")
    },
    # DenseNet-121, the reference closest to ours in training speed: the slower ResNet-18 would
    # get too few steps within the budget
    budget_references=("monai_densenet121",),
    # reading and preprocessing a volume costs more than the training step on it: where shards pay
    scale_throughput=True,
    resolution=("data.spatial_size",),
)
