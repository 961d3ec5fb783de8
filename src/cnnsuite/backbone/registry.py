"""Backbones by name, so configs say ``backbone: lenet5`` rather than a class path."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from ..errors import ConfigError
from .parametrize import apply_parametrizations

_BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str) -> Callable:
    """Class or factory decorator: ``build_backbone(name, ...)`` will call it."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} is registered twice")
        _BACKBONES[name] = factory
        return factory

    return wrap


def list_backbones() -> list[str]:
    return sorted(_BACKBONES)


def build_backbone(name: str, spatial_dims: int, in_channels: int, **kwargs) -> nn.Module:
    """Build a registered backbone; its ``forward`` returns feature maps shallow to deep,
    and it exposes ``out_channels`` and ``strides`` per stage.

    ``parametrize`` (a list of transformations ``w = H(u)`` per stage, see
    :func:`~cnnsuite.backbone.parametrize.apply_parametrizations`) is applied to any staged
    backbone after it is built, so the factories need not know about it."""
    specs = kwargs.pop("parametrize", None) or []
    if name not in _BACKBONES:  # a task registers its own backbones when its package is imported
        from ..contract import registered_tasks

        registered_tasks()
    try:
        factory = _BACKBONES[name]
    except KeyError:
        raise ConfigError(f"backbone={name!r}: expected one of {', '.join(list_backbones())}") from None
    # Only the call's signature is checked here: a TypeError from inside the backbone is a
    # bug and keeps its traceback.
    try:
        inspect.signature(factory).bind(spatial_dims=spatial_dims, in_channels=in_channels, **kwargs)
    except TypeError as err:
        raise ConfigError(f"model.backbone_kwargs for {name!r}: {err} (given: {', '.join(sorted(kwargs))})") from None
    backbone = factory(spatial_dims=spatial_dims, in_channels=in_channels, **kwargs)
    if specs:
        apply_parametrizations(backbone, specs, where="model.backbone_kwargs.parametrize")
    return backbone
