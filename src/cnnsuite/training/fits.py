"""Whether a model can take its data, asked before any data is read: a network that does not
fit its samples (a kernel or a stride larger than what is left of the input) is named with its
settings at once, from the command line and from a checkpoint alike, not after minutes of data
preparation or as a traceback from a convolution."""

from __future__ import annotations

import torch

from ..backbone import StagedBackbone
from ..backbone.geometry import check_fits
from ..data import TaskDataModule
from ..data.limits import check_sample_size
from ..errors import ConfigError
from .task import TaskModule


def check_model_fits_data(model: TaskModule, datamodule: TaskDataModule) -> None:
    """Run the model on a zero batch of the data's sample shape, before any data is read or
    written: a network that cannot take the data (a kernel or a stride larger than what
    is left of the input) fails here with its settings named, not after minutes of data
    preparation — a staged backbone first by :func:`~cnnsuite.backbone.geometry.check_fits`,
    which names the stage, the layer and the map it meets. The batch becomes
    ``example_input_array``, so the model summary shows each layer's input and output sizes."""
    shape = datamodule.input_shape
    if shape is None:
        return
    check_sample_size(shape, datamodule.pixel_kind)  # before the zero batch below allocates it
    backbone = model.feature_backbone()
    if backbone.strides:  # the usual misfit, said in the network's terms (every backbone has strides)
        stride = tuple(backbone.strides[-1])
        if len(shape) - 1 < len(stride):  # more axes in the network than in the samples (a 2D layout, a 3D model)
            raise ConfigError(
                f"the data's samples of shape {tuple(shape)} have {len(shape) - 1} spatial axes where the model's "
                f"network has {len(stride)}: give model.spatial_dims {len(shape) - 1}, or data settings that make "
                f"{len(stride)}D samples"
            )
        size = tuple(shape[1:])[-len(stride) :]
        if any(s < k for s, k in zip(size, stride, strict=True)):
            raise ConfigError(
                f"the data's samples of shape {tuple(shape)} are {'x'.join(map(str, size))} where the backbone's "
                f"total stride is {'x'.join(map(str, stride))}: use larger samples (data.*) or fewer or gentler "
                "pooling stages (model.backbone_kwargs)"
            )
    if isinstance(backbone, StagedBackbone) and len(shape) == backbone.spatial_dims + 1:
        # a kernel or window larger than the map it meets, named by stage and layer
        check_fits(backbone, shape, where=f"model.backbone_kwargs (model.backbone={model.hparams.get('backbone')!r})")
    example = torch.zeros(2, *shape)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    except RuntimeError as err:
        settings = {k: model.hparams[k] for k in ("backbone", "backbone_kwargs") if k in model.hparams}
        reason = str(err).strip().splitlines()[0]
        raise ConfigError(
            f"the model {settings} cannot take the data's samples of shape {tuple(shape)}: {reason}"
        ) from None
    finally:
        model.train(training)
    model.example_input_array = example
