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

A family also says what its files' input channels are (:attr:`Family.channels`, by the first
convolution's channel count), so that their first-layer kernels go to the task's channels of
the same name: ImageNet files read R, G, B; TorchGeo's all-band Sentinel-2 files the 13 L1C bands
(:data:`SENTINEL2_BANDS`), its RGB ones B04, B03, B02; MONAI's one unnamed channel. A plain path
(no family) has unnamed channels.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch

from ..data.images import IMAGE_CHANNELS
from ..errors import CheckpointError, ConfigError, MissingFileError
from ..trust.untrusted import check_finite, load_weights_only

#: Sentinel-2 L1C's 13 bands in the order TorchGeo's all-band (SSL4EO-S12) files read them: B8A after B08
SENTINEL2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
#: the input channels of the ImageNet files torchvision and timm publish
RGB = IMAGE_CHANNELS[3]


@dataclass(frozen=True)
class Family:
    """A publisher of weight files: what its files are, the kernel dimensions they may have, and
    the names of their input channels by the first convolution's channel count (a count not
    listed: unnamed)."""

    name: str
    files: str
    kernel_dims: tuple[int, ...]
    channels: Mapping[int, tuple[str, ...]] = field(default_factory=dict)

    def channel_names(self, state: Mapping[str, torch.Tensor]) -> tuple[str, ...] | None:
        """The names of the input channels of ``state``'s stem (a file of this family as
        :func:`resnet_state` renamed it); None where they are unnamed."""
        stem = state.get(RESNET_STEM)
        return self.channels.get(stem.shape[1]) if stem is not None and stem.dim() > 1 else None


FAMILIES = {
    family.name: family
    for family in (
        Family("torchvision", "a torchvision ResNet state dict (resnet18-f37072fd.pth)", (2,), {3: RGB}),
        Family("timm", "a timm ResNet checkpoint (model.safetensors, pytorch_model.bin)", (2,), {3: RGB}),
        Family("monai", "a MONAI or MedicalNet ResNet state dict (resnet_18.pth)", (2, 3)),
        Family(
            "torchgeo",
            "a TorchGeo timm ResNet state dict (resnet18_sentinel2_all_moco-59bfdff9.pth)",
            (2,),
            {13: SENTINEL2_BANDS, 3: ("B04", "B03", "B02")},
        ),
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
#: the first convolution's kernel, as :func:`resnet_state` names it
RESNET_STEM = RESNET_NAMES["conv1."] + "weight"
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
