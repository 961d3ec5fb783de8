"""Weight files as the field publishes them — torchvision, timm, MONAI (MedicalNet) and TorchGeo —
into our reference backbones.

``model.backbone_weights`` names such a file as ``FAMILY:PATH`` (``torchvision:resnet18-f37072fd.pth``,
``timm:model.safetensors``, ``monai:resnet_18.pth``, ``torchgeo:resnet18_sentinel2_all_moco-59bfdff9.pth``),
as a published weights name — ``torchvision:ResNet18_Weights.IMAGENET1K_V1`` and
``torchgeo:ResNet18_Weights.SENTINEL2_ALL_MOCO`` (the file torch's hub cache holds for those weights),
``timm:resnet18.a1_in1k`` (the one the Hugging Face hub cache holds) — which is never downloaded,
or as a plain ``PATH`` whose tensor names are one of the published layouts below. The family says
what the file must be (a 2D or 3D ResNet, a torchvision MobileNetV3, a MONAI DenseNet), so a file of
another family is refused in one line rather than half-loaded. A file is read without running code:
``.safetensors`` with ``safetensors``, anything else with ``torch.load(weights_only=True)``.

All four families publish their ResNets under torchvision's names (``conv1``, ``bn1``,
``layer1`` … ``layer4``, ``fc``; MedicalNet adds DataParallel's ``module.``), and our reference
backbones (``torchvision_resnet18``/``50``, ``monai_resnet18``) hold those modules in their stages;
torchvision's MobileNetV3 and MONAI's DenseNet keep their blocks under ``features``. Each layout
(:data:`LAYOUTS`) is told by tensor names only its files have, and its explicit map renames the file
into the backbone's own names. Whatever it does not rename (the classifier: ``fc.*``,
``classifier.*``, ``class_layers.*``) keeps its name, and
:func:`~cnnsuite.training.transfer.transfer_backbone` lists it as unused; copying, 2D → 3D
inflation and input-channel adaptation are that function's.

A family also says what its files' input channels are (:attr:`Family.channels`, by the first
convolution's channel count), so that their first-layer kernels go to the task's channels of
the same name: ImageNet files read R, G, B; TorchGeo's all-band Sentinel-2 files the 13 L1C bands
(:data:`SENTINEL2_BANDS`), its RGB ones B04, B03, B02; MONAI's one unnamed channel. A plain path
(no family) has unnamed channels.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch

from ..data.images import IMAGE_CHANNELS
from ..errors import CheckpointError, ConfigError, MissingFileError
from ..trust.untrusted import check_finite_tensors, check_values_stored, load_weights_only

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
        its keys renamed by :data:`RESNET_NAMES`); None where they are unnamed."""
        stem = state.get(RESNET_STEM)
        return self.channels.get(stem.shape[1]) if stem is not None and stem.dim() > 1 else None


FAMILIES = {
    family.name: family
    for family in (
        Family(
            "torchvision",
            "a torchvision ResNet or MobileNetV3 state dict (resnet18-f37072fd.pth, mobilenet_v3_large-8738ca79.pth)",
            (2,),
            {3: RGB},
        ),
        Family("timm", "a timm ResNet checkpoint (model.safetensors, pytorch_model.bin)", (2,), {3: RGB}),
        Family("monai", "a MONAI or MedicalNet ResNet, or a MONAI DenseNet, state dict (resnet_18.pth)", (2, 3)),
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
#: the first convolution's kernel, under its name after :data:`RESNET_NAMES`
RESNET_STEM = RESNET_NAMES["conv1."] + "weight"
_DATA_PARALLEL = "module."


def mobilenet_v3_names(stages: tuple[tuple[int, ...], ...]) -> dict[str, str]:
    """torchvision's MobileNetV3 ``features.N.`` → ``stages.i.0.j.`` of our reference backbone,
    where ``stages[i][j]`` is ``N``."""
    return {f"features.{n}.": f"stages.{i}.0.{j}." for i, blocks in enumerate(stages) for j, n in enumerate(blocks)}


@dataclass(frozen=True)
class Layout:
    """A published network's tensor names: the name prefixes that mark its files (``marks``), its
    first convolution's kernel (``stem``), the map of its module names into our reference
    backbone's (``names``), and the families that publish it."""

    name: str
    marks: tuple[str, ...]
    stem: str
    names: dict[str, str]
    families: tuple[str, ...]

    def fits(self, tensors: dict[str, torch.Tensor]) -> bool:
        return self.stem in tensors and all(any(key.startswith(mark) for key in tensors) for mark in self.marks)

    def describe(self) -> str:
        return f"{self.name} ({', '.join(mark + '*' if mark.endswith('.') else mark for mark in self.marks)})"


#: The layouts a published file may have, each with its map into our reference backbones:
#: torchvision's ResNet names (kept by timm, MONAI and TorchGeo) into ``torchvision_resnet18``/``50``
#: and ``monai_resnet18``; torchvision's MobileNetV3 ``features.N`` into the stages of
#: ``torchvision_mobilenet_v3_large``/``_small`` (split where torchvision's detection backbones take
#: their feature maps); MONAI's DenseNet ``features`` into ``monai_densenet121``'s one stage.
LAYOUTS = (
    Layout("ResNet", ("conv1.weight", "layer1."), "conv1.weight", RESNET_NAMES, tuple(FAMILIES)),
    Layout(
        "MobileNetV3-Large",
        ("features.15.block.", "features.16.0.weight"),
        "features.0.0.weight",
        mobilenet_v3_names(((0,), (1, 2), (3, 4), (5, 6, 7), (8, 9, 10, 11, 12, 13), (14, 15, 16))),
        ("torchvision",),
    ),
    Layout(
        "MobileNetV3-Small",
        ("features.11.block.", "features.12.0.weight"),
        "features.0.0.weight",
        mobilenet_v3_names(((0,), (1,), (2,), (3, 4), (5, 6, 7, 8, 9), (10, 11, 12))),
        ("torchvision",),
    ),
    Layout(
        "MONAI DenseNet",
        ("features.denseblock1.denselayer1.layers.",),
        "features.conv0.weight",
        {"features.": "stages.0.0."},
        ("monai",),
    ),
)


def split_family(value: str, where: str) -> tuple[Family | None, Path]:
    """``FAMILY:PATH`` → ``(family, PATH)``; a plain path (or an existing file whose name has a
    colon) → ``(None, path)``. ``FAMILY:NAME`` with a published weights name (:data:`NAMED_WEIGHTS`)
    is the file a cache holds for it. An unknown ``FAMILY`` is a one-line ``ConfigError``."""
    found = re.fullmatch(r"([a-z][a-z0-9_]*):(.+)", value, re.S)
    if found is None or Path(value).exists():
        return None, Path(value)
    name, path = found.groups()
    if name not in FAMILIES:
        raise ConfigError(f"{where} {value}: {name}: unknown weights family; expected one of {', '.join(FAMILIES)}")
    named = NAMED_WEIGHTS.get(name)
    if named is not None and re.fullmatch(named[0], path) and not Path(path).exists():
        return FAMILIES[name], named[1](path, f"{where} {value}")
    return FAMILIES[name], Path(path)


def cached_file(file: Path, url: str, source: str) -> Path:
    """``file``, where a cache keeps what ``url`` serves; nothing is downloaded: when it is not
    there, a one-line ``MissingFileError`` naming ``source`` says which file to put where."""
    if not file.is_file():
        raise MissingFileError(f"{source}: {file} is not there and nothing is downloaded; put {url} there")
    return file


def torchvision_hub_file(name: str, source: str) -> Path:
    """The file torch's hub cache holds for torchvision's weights ``name``
    (``ResNet18_Weights.IMAGENET1K_V1``): ``<torch.hub.get_dir()>/checkpoints/<its URL's file name>``,
    where torchvision itself would have saved it."""
    from torchvision.models import get_weight

    try:
        weights = get_weight(name)
    except (ValueError, KeyError):  # an unknown enum, or an unknown member of a known one
        raise ConfigError(f"{source}: not a torchvision weights name (like ResNet18_Weights.IMAGENET1K_V1)") from None
    return cached_file(_hub_checkpoint(weights.url), weights.url, source)


#: TorchGeo's Sentinel-2 weights for timm's ResNet-18/50 (``torchgeo.models.ResNet18_Weights``,
#: ``ResNet50_Weights``) → their URLs, as TorchGeo publishes them (TorchGeo is not a dependency).
TORCHGEO_WEIGHTS = {
    "ResNet18_Weights.SENTINEL2_ALL_MOCO": "https://hf.co/torchgeo/resnet18_sentinel2_all_moco/resolve/5b8cddc9a14f3844350b7f40b85bcd32aed75918/resnet18_sentinel2_all_moco-59bfdff9.pth",
    "ResNet18_Weights.SENTINEL2_RGB_MOCO": "https://hf.co/torchgeo/resnet18_sentinel2_rgb_moco/resolve/e1c032e7785fd0625224cdb6699aa138bb304eec/resnet18_sentinel2_rgb_moco-e3a335e3.pth",
    "ResNet18_Weights.SENTINEL2_RGB_SECO": "https://hf.co/torchgeo/resnet18_sentinel2_rgb_seco/resolve/f8dcee692cf7142163b55a5c197d981fe0e717a0/resnet18_sentinel2_rgb_seco-cefca942.pth",
    "ResNet50_Weights.SENTINEL2_ALL_CLOSP": "https://huggingface.co/DarthReca/CLOSP-Visual/resolve/3bb8677c21dac56bea2dd7baa08d7871272db440/closp-rn_s2_encoder-183922a5.pth",
    "ResNet50_Weights.SENTINEL2_ALL_DECUR": "https://huggingface.co/torchgeo/decur/resolve/eba7ae5945d482a4319be046d34b552db5dd9950/rn50_ssl4eo-s12_ms_decur_ep100-fc6b09ff.pth",
    "ResNet50_Weights.SENTINEL2_ALL_DINO": "https://hf.co/torchgeo/resnet50_sentinel2_all_dino/resolve/d7f14bf5530d70ac69d763e58e77e44dbecfec7c/resnet50_sentinel2_all_dino-d6c330e9.pth",
    "ResNet50_Weights.SENTINEL2_ALL_GEOCLOSP": "https://huggingface.co/DarthReca/CLOSP-Visual/resolve/3bb8677c21dac56bea2dd7baa08d7871272db440/geoclosp-rn_s2_encoder-94c37f4a.pth",
    "ResNet50_Weights.SENTINEL2_ALL_MOCO": "https://hf.co/torchgeo/resnet50_sentinel2_all_moco/resolve/da4f3c9dbe09272eb902f3b37f46635fa4726879/resnet50_sentinel2_all_moco-df8b932e.pth",
    "ResNet50_Weights.SENTINEL2_ALL_SOFTCON": "https://huggingface.co/wangyi111/softcon/resolve/62ff465b2e7467dbfc70758ec1e9d08ab87fc46b/B13_rn50_softcon.pth",
    "ResNet50_Weights.SENTINEL2_ALL_SECO_ECO": "https://hf.co/torchgeo/seco-eco/resolve/3ede08c40f70534eb1132057ee338b99e54319f0/resnet50_sentinel2_all_seco_eco-a273eb78.pth",
    "ResNet50_Weights.SENTINEL2_ALL_NDVI_SECO_ECO": "https://hf.co/torchgeo/seco-eco-ndvi/resolve/134eb071d078874edf4c70cb6c4ea62dbe924190/resnet50_sentinel2_all_ndvi_seco_eco-3a74b167.pth",
    "ResNet50_Weights.SENTINEL2_MI_MS_SATLAS": "https://hf.co/torchgeo/satlas/resolve/081d6607431bf36bdb59c223777cbb267131b8f2/sentinel2_resnet50_mi_ms-da5413d2.pth",
    "ResNet50_Weights.SENTINEL2_MI_RGB_SATLAS": "https://hf.co/torchgeo/satlas/resolve/081d6607431bf36bdb59c223777cbb267131b8f2/sentinel2_resnet50_mi_rgb-e79bb7fe.pth",
    "ResNet50_Weights.SENTINEL2_RGB_MOCO": "https://hf.co/torchgeo/resnet50_sentinel2_rgb_moco/resolve/efd9723b59a88e9dc1420dc1e96afb25b0630a3c/resnet50_sentinel2_rgb_moco-2b57ba8b.pth",
    "ResNet50_Weights.SENTINEL2_RGB_SECO": "https://hf.co/torchgeo/resnet50_sentinel2_rgb_seco/resolve/fbd07b02a8edb8fc1035f7957160deed4321c145/resnet50_sentinel2_rgb_seco-018bf397.pth",
    "ResNet50_Weights.SENTINEL2_SI_MS_SATLAS": "https://hf.co/torchgeo/satlas/resolve/081d6607431bf36bdb59c223777cbb267131b8f2/sentinel2_resnet50_si_ms-1f454cc6.pth",
    "ResNet50_Weights.SENTINEL2_SI_RGB_SATLAS": "https://hf.co/torchgeo/satlas/resolve/081d6607431bf36bdb59c223777cbb267131b8f2/sentinel2_resnet50_si_rgb-45fc6972.pth",
}


def torchgeo_hub_file(name: str, source: str) -> Path:
    """The file torch's hub cache holds for TorchGeo's weights ``name``
    (``ResNet18_Weights.SENTINEL2_ALL_MOCO``): TorchGeo's ``get_state_dict`` saves them where
    torchvision saves its own, ``<torch.hub.get_dir()>/checkpoints/<its URL's file name>``."""
    url = TORCHGEO_WEIGHTS.get(name)
    if url is None:
        raise ConfigError(
            f"{source}: not a TorchGeo Sentinel-2 ResNet weights name; expected one of {', '.join(TORCHGEO_WEIGHTS)}"
        )
    return cached_file(_hub_checkpoint(url), url, source)


def timm_hub_file(name: str, source: str) -> Path:
    """The file the Hugging Face hub cache holds for timm's weights ``name`` (``resnet18.a1_in1k``):
    timm keeps them in the hub repository ``timm/<name>`` and reads its ``model.safetensors``
    (else ``pytorch_model.bin``) from the snapshot ``refs/main`` names (``main`` when there is no
    ref), under ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``
    (``huggingface_hub``'s own rule; it is not imported, so nothing can be fetched)."""
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface"
    repo = Path(os.environ.get("HF_HUB_CACHE") or Path(home) / "hub").expanduser() / f"models--timm--{name}"
    refs = repo / "refs" / "main"
    snapshot = repo / "snapshots" / (refs.read_text().strip() if refs.is_file() else "main")
    files = [snapshot / "model.safetensors", snapshot / "pytorch_model.bin"]
    file = next((file for file in files if file.is_file()), files[0])
    return cached_file(file, f"https://huggingface.co/timm/{name}/resolve/main/{file.name}", source)


def _hub_checkpoint(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps what ``url`` serves."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


#: Families whose weights are also named, not only given as a file: a ``NAME`` matching the
#: pattern (and not an existing path) is the file its resolver finds in a cache.
NAMED_WEIGHTS = {
    "torchvision": (r"\w+_Weights\.\w+", torchvision_hub_file),
    "torchgeo": (r"ResNet\d+_Weights\.\w+", torchgeo_hub_file),
    # timm's ``architecture.tag``; a tag that is a weight file's suffix makes it a file name
    "timm": (r"[a-z0-9_]+\.(?!(?:safetensors|bin|pth|pt|ckpt)$)[a-z0-9_]+", timm_hub_file),
}


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


def published_state(content: object, family: Family | None, source: str) -> dict[str, torch.Tensor] | None:
    """The tensors of a published file renamed into our reference backbones' names by the map of
    its layout (:data:`LAYOUTS`, the first whose marks its tensor names carry); the rest keep
    theirs. ``None`` when ``family`` is not given and the file fits no layout; with a ``family``,
    a file that is not what that family publishes is a one-line ``CheckpointError`` naming ``source``."""
    tensors = content.get("state_dict", content) if isinstance(content, dict) else {}
    tensors = {k: v for k, v in tensors.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if tensors and all(key.startswith(_DATA_PARALLEL) for key in tensors):
        tensors = {key[len(_DATA_PARALLEL) :]: value for key, value in tensors.items()}
    layouts = [layout for layout in LAYOUTS if family is None or family.name in layout.families]
    layout = next((layout for layout in layouts if layout.fits(tensors)), None)
    if layout is None:
        if family is None:
            return None
        first = ", ".join(list(tensors)[:3]) or "no tensors"
        expected = "; ".join(layout.describe() for layout in layouts)
        raise CheckpointError(
            f"{source}: not {family.files}: its tensors fit none of {expected} (its keys begin {first})"
        )
    stem = tensors[layout.stem]
    if family is not None and stem.dim() - 2 not in family.kernel_dims:
        other = "monai" if stem.dim() == 5 else "torchvision"
        raise CheckpointError(
            f"{source}: {layout.stem} is a {stem.dim() - 2}D kernel {list(stem.shape)}, "
            f"not {family.files}; name it as {other}:PATH"
        )
    check_values_stored(tensors, source)
    check_finite_tensors(tensors, source)
    return {_rename(key, layout.names): value for key, value in tensors.items()}


def _rename(key: str, names: dict[str, str]) -> str:
    for theirs, ours in names.items():
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
    from ..data.textfiles import parse_json

    try:
        content = parse_json(config.read_text(encoding="utf-8"))
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
