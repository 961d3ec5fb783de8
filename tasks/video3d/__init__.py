"""video3d: one class per video, told by its motion. The task as registered (:mod:`cnnsuite.contract`)."""

from cnnsuite.contract import Task

from .datamodule import VideoDataModule
from .module import VideoClassificationModule

TASK = Task(
    name="video3d",
    module=VideoClassificationModule,
    datamodule=VideoDataModule,
    references={
        # X3D-XS and X3D-S share their widths and depths (they differ in clip length and size,
        # which here are the task's): one network
        "pytorchvideo_x3d_s": {"model": {"backbone": "pytorchvideo_x3d", "backbone_kwargs": {}}},
        "pytorchvideo_resnet50_stem16": {
            "model": {"backbone": "pytorchvideo_resnet", "backbone_kwargs": {"model_depth": 50, "stem_dim_out": 16}}
        },
    },
    # the ResNet, the reference closest to ours in training speed: X3D would get too few steps
    # within the budget
    budget_references=("pytorchvideo_resnet50_stem16",),
    # decoding a clip from its file costs more than a training step on it: where shards pay most
    scale_throughput=True,
    resolution=("data.frame_size",),
)
