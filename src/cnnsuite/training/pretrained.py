"""Weight files as the field publishes them — torchvision, timm, MONAI (MedicalNet) and TorchGeo —
into our reference backbones.

``model.backbone_weights`` names such a file as ``FAMILY:PATH`` (``torchvision:resnet18-f37072fd.pth``,
``timm:model.safetensors``, ``monai:resnet_18.pth``, ``torchgeo:resnet18_sentinel2_all_moco-59bfdff9.pth``),
``torchvision:ResNet18_Weights.IMAGENET1K_V1`` (the file torch's hub cache holds for those weights),
or as a plain ``PATH`` whose tensor names are torchvision's ResNet layout. The family says what the
file must be (a 2D or 3D ResNet), so a file of another family is refused in one line rather than
half-loaded. A file is read without running code: ``.safetensors`` with ``safetensors``, anything
else with ``torch.load(weights_only=True)``.

All four families publish their ResNets under torchvision's names (``conv1``, ``bn1``,
``layer1`` … ``layer4``, ``fc``; MedicalNet adds DataParallel's ``module.``), and our reference
backbones (``torchvision_resnet18``/``50``, ``monai_resnet18``) hold those modules in their stages,
so one explicit map (:data:`RESNET_NAMES`) renames the file into the backbone's own names.
Whatever it does not rename (the classifier ``fc.*``) keeps its name, and
:func:`~cnnsuite.training.transfer.transfer_backbone` lists it as unused; copying, 2D → 3D
inflation and input-channel adaptation are that function's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from ..errors import CheckpointError, ConfigError, MissingFileError
from ..trust.untrusted import check_finite, load_weights_only


@dataclass(frozen=True)
class Family:
    """A publisher of weight files: what its files are, and the kernel dimensions they may have."""

    name: str
    files: str
    kernel_dims: tuple[int, ...]


FAMILIES = {
    family.name: family
    for family in (
        Family("torchvision", "a torchvision ResNet state dict (resnet18-f37072fd.pth)", (2,)),
        Family("timm", "a timm ResNet checkpoint (model.safetensors, pytorch_model.bin)", (2,)),
        Family("monai", "a MONAI or MedicalNet ResNet state dict (resnet_18.pth)", (2, 3)),
        Family("torchgeo", "a TorchGeo timm ResNet state dict (resnet18_sentinel2_all_moco-59bfdff9.pth)", (2,)),
    )
}

#: torchvision's ResNet module names (kept by timm, MONAI and TorchGeo) → the stages of our
#: reference ResNets: stage 0 is ``(conv1, bn1, relu, maxpool, layer1)``, stages 1–3 ``(layerN,)``.
RESNET_NAMES = {
    "conv1.": "stages.0.0.",
    "bn1.": "stages.0.1.",
    "layer1.": "stages.0.4.",
    "layer2.": "stages.1.0.",
    "layer3.": "stages.2.0.",
    "layer4.": "stages.3.0.",
}
_DATA_PARALLEL = "module."


def split_family(value: str, where: str) -> tuple[Family | None, Path]:
    """``FAMILY:PATH`` → ``(family, PATH)``; a plain path (or an existing file whose name has a
    colon) → ``(None, path)``. ``torchvision:NAME`` with a weights name is the file in torch's hub
    cache (:func:`torchvision_hub_file`). An unknown ``FAMILY`` is a one-line ``ConfigError``."""
    found = re.fullmatch(r"([a-z][a-z0-9_]*):(.+)", value, re.S)
    if found is None or Path(value).exists():
        return None, Path(value)
    name, path = found.groups()
    if name not in FAMILIES:
        raise ConfigError(f"{where} {value}: {name}: unknown weights family; expected one of {', '.join(FAMILIES)}")
    if name == "torchvision" and re.fullmatch(r"\w+_Weights\.\w+", path) and not Path(path).exists():
        return FAMILIES[name], torchvision_hub_file(path, where)
    return FAMILIES[name], Path(path)


def torchvision_hub_file(name: str, where: str) -> Path:
    """The file torch's hub cache holds for torchvision's weights ``name``
    (``ResNet18_Weights.IMAGENET1K_V1``): ``<torch.hub.get_dir()>/checkpoints/<its URL's file name>``,
    where torchvision itself would have saved it. Nothing is downloaded: when the file is not
    there, a one-line ``MissingFileError`` says which file to put where."""
    from torchvision.models import get_weight

    try:
        weights = get_weight(name)
    except (ValueError, KeyError):  # an unknown enum, or an unknown member of a known one
        raise ConfigError(
            f"{where} torchvision:{name}: not a torchvision weights name (like ResNet18_Weights.IMAGENET1K_V1)"
        ) from None
    file = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    if not file.is_file():
        raise MissingFileError(
            f"{where} torchvision:{name}: {file} is not there and nothing is downloaded; put {weights.url} there"
        )
    return file


def read_weight_file(path: Path, where: str) -> object:
    """The file's content, read without running code: a ``.safetensors`` file with ``safetensors``,
    anything else with ``torch.load(weights_only=True)``. A damaged, truncated or code-carrying
    file is a one-line ``BadFileError`` naming ``where`` and the file."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as err:  # safetensors' own error type, or OSError, for a damaged file
            detail = " ".join(str(err).split()) or type(err).__name__
            raise CheckpointError(f"{where} {path}: not a readable safetensors file ({detail})") from None
    return load_weights_only(
        path, f"{where} {path}: not a checkpoint or state dict of tensors; torch.load(weights_only=True) refused it"
    )


def resnet_state(content: object, family: Family | None, source: str) -> dict[str, torch.Tensor] | None:
    """The tensors of a published ResNet file renamed into our reference backbones' names
    (:data:`RESNET_NAMES`); the rest keep theirs. ``None`` when ``family`` is not given and the
    file is not in torchvision's ResNet layout; with a ``family``, a file that is not what that
    family publishes is a one-line ``CheckpointError`` naming ``source``."""
    tensors = content.get("state_dict", content) if isinstance(content, dict) else {}
    tensors = {k: v for k, v in tensors.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if tensors and all(key.startswith(_DATA_PARALLEL) for key in tensors):
        tensors = {key[len(_DATA_PARALLEL) :]: value for key, value in tensors.items()}
    if "conv1.weight" not in tensors or not any(key.startswith("layer1.") for key in tensors):
        if family is None:
            return None
        first = ", ".join(list(tensors)[:3]) or "no tensors"
        raise CheckpointError(
            f"{source}: not {family.files}: no conv1.weight and layer1.* ResNet tensors (its keys begin {first})"
        )
    stem = tensors["conv1.weight"]
    if family is not None and stem.dim() - 2 not in family.kernel_dims:
        other = "monai" if stem.dim() == 5 else "torchvision"
        raise CheckpointError(
            f"{source}: conv1.weight is a {stem.dim() - 2}D kernel {list(stem.shape)}, "
            f"not {family.files}; name it as {other}:PATH"
        )
    check_finite(tensors, source)
    return {_rename(key): value for key, value in tensors.items()}


def _rename(key: str) -> str:
    for theirs, ours in RESNET_NAMES.items():
        if key.startswith(theirs):
            return ours + key[len(theirs) :]
    return key


def weights_metadata(value: str) -> dict | None:
    """What the publisher says its weights expect, for ``model.backbone_weights`` ``value``:
    ``{"weights", "mean", "std", "input_size", "categories"}`` (the name of the weights, the
    per-channel normalisation of [0, 1] pixels they were trained with, their input size and
    how many classes their classifier had), or ``None`` where the file says nothing.

    - ``torchvision:NAME`` or a file under torchvision's own file name (``resnet18-f37072fd.pth``,
      with or without the family): torchvision's own record of those weights (their
      ``transforms()`` and ``meta``); weights whose transform keeps normalisation inside the
      model (detection) were trained on ImageNet's.
    - ``timm:FILE``: the ``config.json`` timm saves beside it (``pretrained_cfg``).

    Only numbers and names are taken: nothing here is a path that is ever opened again."""
    family, path = split_family(value, "model.backbone_weights")
    if family is not None and family.name == "timm":
        return _timm_metadata(path.with_name("config.json"))
    if family is not None and family.name != "torchvision":
        return None
    weights = _torchvision_weights().get(path.name)
    if weights is None:
        return None
    transforms = weights.transforms()
    crop = getattr(transforms, "crop_size", None)
    return {
        "weights": f"torchvision:{type(weights).__name__}.{weights.name}",
        "mean": list(getattr(transforms, "mean", IMAGENET_MEAN)),
        "std": list(getattr(transforms, "std", IMAGENET_STD)),
        "input_size": list(crop) if crop else None,
        "categories": len(weights.meta.get("categories") or []),
    }


#: the per-channel normalisation of ImageNet's RGB pixels in [0, 1]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def fit_channels(values: list[float], count: int) -> list[float]:
    """Per-channel ``values`` of the weights for ``count`` input channels: as they are when the
    counts agree, else their mean for every channel (RGB statistics for a gray image)."""
    if len(values) == count:
        return list(values)
    return [sum(values) / len(values)] * count


def _torchvision_weights() -> dict:
    """Each torchvision weights' file name (its URL's last part) → those weights."""
    from torchvision.models import get_model_weights, list_models

    return {
        Path(urlparse(weights.url).path).name: weights
        for model in list_models()
        for weights in get_model_weights(model)
    }


def _timm_metadata(config: Path) -> dict | None:
    """``pretrained_cfg`` of the ``config.json`` timm writes beside its weights; ``None`` when
    there is none, or it is not what timm writes (it is only ever read, as JSON)."""
    import json

    try:
        content = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    cfg = content.get("pretrained_cfg") if isinstance(content, dict) else None
    if not isinstance(cfg, dict) or not _numbers(cfg.get("mean")) or not _numbers(cfg.get("std")):
        return None
    size = cfg.get("input_size")
    return {
        "weights": f"timm:{content.get('architecture', '?')}.{cfg.get('tag', '?')}",
        "mean": [float(v) for v in cfg["mean"]],
        "std": [float(v) for v in cfg["std"]],
        "input_size": [int(v) for v in size[1:]] if _numbers(size) else None,
        "categories": int(content.get("num_classes") or 0),
    }


def _numbers(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, int | float) for v in value)


#: a published ResNet block's layers → those of our :class:`~cnnsuite.backbone.ResNet`'s blocks
#: (basic: conv, norm, act, conv, norm; bottleneck: three of each; the projection shortcut)
_BLOCK_NAMES = {"conv1": "body.0", "bn1": "body.1", "conv2": "body.3", "bn2": "body.4", "conv3": "body.6",
                "bn3": "body.7", "downsample.0": "shortcut.0", "downsample.1": "shortcut.1"}  # fmt: skip
_REFERENCE_KEY = re.compile(r"stages\.(?:0\.(?P<stem>[01])|(?P<stage>\d)\.(?:4|0)\.(?P<block>\d+))\.(?P<rest>.+)")


def into_backbone_names(state: dict[str, torch.Tensor], backbone: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``state`` in ``backbone``'s names. A published ResNet file arrives in the reference
    backbones' names (:data:`RESNET_NAMES`); our own :class:`~cnnsuite.backbone.ResNet` built in
    torchvision's layout (``widths: [64, 128, 256, 512]``, ``stem_kernel: 7``, ``stem_stride: 2``,
    ``stem_pool: max``) holds the same layers under its own names (``stages.0.stem``,
    ``stages.N.blockB.body.K``), in 2D or, inflated, in 3D. Any other backbone, and any key of
    another form (our own checkpoints), keeps its names."""
    from ..backbone import ResNet

    if not isinstance(backbone, ResNet):
        return state
    return {_our_resnet_name(key): value for key, value in state.items()}


def _our_resnet_name(key: str) -> str:
    found = _REFERENCE_KEY.fullmatch(key)
    if found is None:
        return key
    if found["stem"] is not None:
        return f"stages.0.stem.{found['stem']}.{found['rest']}"
    stage, rest = int(found["stage"]), found["rest"]
    if (stage == 0) != (key.split(".")[2] == "4"):  # stage 0's blocks sit after the stem, at index 4
        return key
    layer = next((layer for layer in _BLOCK_NAMES if rest.startswith(f"{layer}.")), None)
    if layer is None:
        return key
    return f"stages.{stage}.block{found['block']}.{_BLOCK_NAMES[layer]}{rest[len(layer) :]}"
