"""multispectral3d: one class per multispectral patch (Sentinel-2 bands).

The task as registered (:mod:`cnnsuite.contract`)."""

from cnnsuite.contract import Task

from .datamodule import MultispectralDataModule
from .module import MultispectralModule

TASK = Task(
    name="multispectral3d",
    module=MultispectralModule,
    datamodule=MultispectralDataModule,
    references={
        # the 13 bands as the channels of a 2D image, as TorchGeo trains EuroSAT
        "torchvision_resnet18_bands_as_channels": {
            "model": {"spatial_dims": 2, "backbone": "torchvision_resnet18", "backbone_kwargs": {}},
            "data": {"layout": "channels"},
        }
    },
    # reading a GeoTIFF patch costs about as much as the training step on it
    scale_throughput=True,
    # the embedded default's patches, generated at the size asked
    resolution=("data.default_patch",),
)
