"""Start a backbone from weights another task trained: any task's checkpoint, 2D into 3D.

Every task sits on the same staged backbone, so what a 2D classifier learnt can start a
localizer, a detector or — inflated into 3D kernels — a volume, video or multispectral
classifier. :func:`backbone_state` reads the backbone's tensors out of a file (a
checkpoint is untrusted input: ``weights_only=True`` only); :func:`transfer_backbone` copies
them into a freshly built backbone and says, tensor by tensor, what it did:

- same name, same shape → copied (BatchNorm running statistics included);
- a 2D kernel ``(O, I, kh, kw)`` where the target has ``(O, I, kt, kh, kw)`` → **inflated**
  (I3D, Carreira & Zisserman 2017): repeated ``kt`` times along the new leading spatial axis
  and divided by ``kt``, so a static input (one frame repeated along that axis) gives the 2D
  response wherever the new axis' zero padding does not reach. The target's kernel shape (the
  config) decides ``kt``; any other difference in kernel size is a mismatch;
- the first convolution's input channels, where both sides name them and share a name
  (``channels`` ``auto``, the default) → **mapped by name** (:func:`channel_map`): each target
  channel the source has takes that channel's kernel, unscaled, every other one the mean of the
  source's kernels; R, G and B are Sentinel-2's B04, B03 and B02, as TorchGeo's users map them
  (RGB → 13 bands: B04/B03/B02 take R/G/B; a 13-band file → a band subset: each band its own
  kernel; RGB → BGR: reordered);
- otherwise, the first convolution's input channels differing in count (1 grey → 3 RGB,
  3 → 13 unnamed bands) → **adapted** as ``channels`` says (:func:`adapt_in_channels`; ``auto``:
  ``mean``);
- anything else whose shape does not fit, and names on one side only → listed in the report
  and left at its initialisation; nothing is skipped silently.

A parametrized convolution (``w = H(u)``) stores ``u`` as ``….parametrizations.weight.original``;
it is matched with a plain ``….weight`` of the other side, so a mask ``w = u * mask`` starts from
the source's kernel. A cnnsuite checkpoint's parametrized kernels are given as the ``w = H(u)``
its model computes (:func:`computed_kernels`); elsewhere a ``u`` of another shape (tied or
hypernetwork kernels) is a mismatch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError
from ..trust.untrusted import check_finite_tensors, check_values_stored
from .pretrained import FAMILIES, LAYOUTS, into_backbone_names, published_state, read_weight_file, split_family

#: how :func:`adapt_in_channels` fits a first layer to another input-channel count
ADAPT_MODES = ("mean", "repeat", "first")
#: what ``channels`` of :func:`transfer_backbone` takes: ``auto`` maps channels by name where
#: both sides name them, else adapts them as ``mean``
CHANNEL_MODES = ("auto", *ADAPT_MODES)
#: channel names that stand for others when channels are mapped by name: an RGB image's
#: channels are Sentinel-2's red, green and blue bands
CHANNEL_ALIASES = {"R": "B04", "G": "B03", "B": "B02"}
_PARAMETRIZED = ".parametrizations.weight.original"


def backbone_prefixes() -> list[str]:
    """Where a file keeps the backbone: under each registered task's ``backbone_prefix``
    (``backbone.`` for most), or at the top of a backbone's own state dict (``""``)."""
    from ..contract import registered_tasks

    prefixes = {task.module.backbone_prefix for task in registered_tasks().values()}
    return [*sorted(prefixes, key=len), ""]


def backbone_state(path: str | Path, where: str = "--model.backbone_weights") -> dict[str, torch.Tensor]:
    """The backbone's tensors, keyed as in the backbone's own ``state_dict`` (``stages.0.0.0.weight``).

    ``path`` is a cnnsuite checkpoint of any task (Lightning's ``state_dict`` entry, keys under
    a task's ``backbone_prefix``: :func:`backbone_prefixes`), a plain state dict of a backbone
    (keys ``stages.…``), or a file as torchvision, timm, MONAI or TorchGeo publish it, named
    ``FAMILY:PATH`` or recognised by its tensor names (:mod:`cnnsuite.training.pretrained`). It is
    read without running code (``torch.load(weights_only=True)``, or ``safetensors``). Errors are
    one line naming ``where`` and the file.
    """
    value = str(path)
    family, path = split_family(value, where)
    if not path.is_file():
        raise ConfigError(f"{where} {value}: no such file (expected a checkpoint or a backbone's state dict)")
    content = read_weight_file(path, where)
    if family is not None:
        return published_state(content, family, f"{where} {value}")
    tensors = content.get("state_dict", content) if isinstance(content, dict) else {}
    if isinstance(tensors, dict):
        for prefix in backbone_prefixes():
            start = prefix or "stages."  # a bare state dict must look like a staged backbone's
            found = {
                key[len(prefix) :]: value
                for key, value in tensors.items()
                if isinstance(key, str) and key.startswith(start) and isinstance(value, torch.Tensor)
            }
            if found:
                check_values_stored(found, f"{where} {path}")
                check_finite_tensors(found, f"{where} {path}")
                if any(key.endswith(_PARAMETRIZED) for key in found) and is_checkpoint(content):
                    return computed_kernels(content, f"{where} {path}")
                return found
    published = published_state(content, None, f"{where} {path}")
    if published is not None:
        return published
    expected = ", ".join(f"{prefix or 'stages.'}*" for prefix in backbone_prefixes())
    published = "; ".join(layout.describe() for layout in LAYOUTS)
    raise ConfigError(
        f"{where} {path}: no backbone tensors (expected keys {expected}, or the tensors of a published "
        f"{published} as {', '.join(FAMILIES)} publish them)"
    )


def is_checkpoint(content: object) -> bool:
    """Whether a file's content is a checkpoint ``cnnsuite fit`` wrote (it names its classes)."""
    from ..trust.checkpoint import CLASSES_KEY

    return isinstance(content, dict) and isinstance(content.get(CLASSES_KEY), dict)


def computed_kernels(checkpoint: dict, source: str) -> dict[str, torch.Tensor]:
    """The backbone of a cnnsuite checkpoint whose convolutions are parametrized, each kernel
    the ``w = H(u)`` its model computes: a tied kernel's free entries or a hypernetwork's code
    are no kernel another network can start from. The model is rebuilt as every command
    rebuilds a checkpoint (:func:`~cnnsuite.trust.checkpoint.build_model`), its outline checked
    first as every command checks one it loads."""
    from ..trust.checkpoint import build_model, check_outline

    check_outline(checkpoint, source)
    model = build_model(checkpoint, source)
    backbone = model.get_submodule(model.backbone_prefix.rstrip("."))
    for module in backbone.modules():
        for name in list(getattr(module, "parametrizations", {})):
            parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return {key: value.detach() for key, value in backbone.state_dict().items()}


def source_channel_names(
    path: str | Path, state: dict[str, torch.Tensor], where: str = "--model.backbone_weights"
) -> tuple[str, ...] | None:
    """The names of the input channels of ``state`` (read from ``path`` by :func:`backbone_state`):
    what its family says of its files (``FAMILY:PATH``, :attr:`~cnnsuite.training.pretrained.Family.channels`);
    None (unnamed) for a path named by no family."""
    family, _ = split_family(str(path), where)
    return family.channel_names(state) if family is not None else None


@dataclass
class TransferReport:
    """What :func:`transfer_backbone` did with each tensor (names are the target backbone's)."""

    copied: list[str] = field(default_factory=list)
    #: kernels inflated along a new leading spatial axis (2D → 3D)
    inflated: list[str] = field(default_factory=list)
    #: first-layer kernels whose input channels were adapted (by name or by ``channels``)
    adapted: list[str] = field(default_factory=list)
    #: the first layer's input channels mapped by name: ``(target channel, the source channel
    #: whose kernel it took)``, the source channel None where it took the mean of the source's kernels
    by_name: list[tuple[str, str | None]] = field(default_factory=list)
    #: how the first layer's input channels were adapted, in words (empty: they were not)
    channels: str = ""
    #: ``(name, source shape, target shape)``: left at initialisation
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    #: in the target, not in the source: left at initialisation
    missing: list[str] = field(default_factory=list)
    #: in the source, not in the target
    unused: list[str] = field(default_factory=list)

    @property
    def loaded(self) -> int:
        """How many target tensors now hold transferred values."""
        return len(set(self.copied) | set(self.inflated) | set(self.adapted))

    def summary(self) -> str:
        """A few lines for the log: counts, then every tensor left at its initialisation."""
        total = self.loaded + len(self.mismatched) + len(self.missing)
        lines = [
            f"backbone weights: {self.loaded} of {total} tensors transferred ({len(self.copied)} copied, "
            f"{len(self.inflated)} inflated to a new spatial axis, {len(self.adapted)} with adapted input channels); "
            f"{len(self.mismatched)} mismatched, {len(self.missing)} missing, {len(self.unused)} unused"
        ]
        if self.channels:
            lines.append(f"  first-layer input channels {self.channels}")
        lines += [f"  mismatched, left at init: {n} {list(s)} -> {list(t)}" for n, s, t in self.mismatched]
        if self.missing:
            lines.append(f"  missing from the source, left at init: {', '.join(self.missing)}")
        if self.unused:
            lines.append(f"  in the source only, unused: {', '.join(self.unused)}")
        return "\n".join(lines)


def transfer_backbone(
    backbone: nn.Module,
    state: dict[str, torch.Tensor],
    channels: str = "auto",
    source_names: Sequence[str] | None = None,
    target_names: Sequence[str] | None = None,
) -> TransferReport:
    """Copy ``state`` (from :func:`backbone_state`) into ``backbone`` in place; see the module's
    docstring for the rules. ``source_names`` and ``target_names`` name the first convolution's
    input channels in ``state`` and in ``backbone`` (None: unnamed; a list of another length than
    the kernel's channels does not name them); ``channels`` (:data:`CHANNEL_MODES`) says how
    they are adapted: ``auto`` by name where the names apply (:func:`channel_map`), else as
    ``mean``; ``mean``, ``repeat`` or ``first`` as :func:`adapt_in_channels` says, names unused."""
    if channels not in CHANNEL_MODES:
        raise ConfigError(f"channels={channels!r}: expected one of {', '.join(CHANNEL_MODES)}")
    state = into_backbone_names(state, backbone)
    target = backbone.state_dict()
    convs = _conv_weight_names(backbone)
    first_conv = convs[0] if convs else None
    source = {_plain_name(k): v for k, v in state.items()}
    report = TransferReport()
    picks, why = None, f"by '{channels}'"
    if first_conv is not None and _plain_name(first_conv) in source:
        stem = source[_plain_name(first_conv)]
        source_names = _names_of(source_names, stem)
        target_names = _names_of(target_names, target[first_conv])
        if channels == "auto":
            picks = channel_map(source_names, target_names)
            why = f"by 'mean' ({_unmapped(source_names, target_names)})"
    mode = "mean" if channels == "auto" else channels
    updates = {}
    for name, current in target.items():
        given = value = source.pop(_plain_name(name), None)
        if value is None:
            report.missing.append(name)
            continue
        kinds = []
        if name == first_conv and picks is not None:
            if picks != list(range(value.shape[1])):
                kinds.append("adapted")
            value = map_in_channels(value, picks)
        if value.shape != current.shape:
            value, fitted = _fit_kernel(value, current.shape, name in convs, name == first_conv, mode, name)
            if value is None:
                report.mismatched.append((name, tuple(given.shape), tuple(current.shape)))
                continue
            kinds += fitted
        updates[name] = value
        for kind in kinds or ["copied"]:
            getattr(report, kind).append(name)
        if name == first_conv and picks is not None:
            sources = [None if i is None else source_names[i] for i in picks]
            report.by_name = list(zip(target_names, sources, strict=True))
            report.channels = _describe_map(report.by_name, len(source_names))
        elif name == first_conv and "adapted" in kinds:
            report.channels = f"{stem.shape[1]} -> {current.shape[1]} {why}"
    report.unused = sorted(source)
    backbone.load_state_dict({**target, **updates})
    return report


def channel_map(source_names: Sequence[str] | None, target_names: Sequence[str] | None) -> list[int | None] | None:
    """For each target channel, the index of the source channel of the same name, None where the
    source has none; None where names do not apply: a side unnamed, or no name in common. Names
    are compared as files spell them alike: case aside, ``B4`` as ``B04``, and R, G, B as the
    Sentinel-2 bands they are (:data:`CHANNEL_ALIASES`)."""
    if not source_names or not target_names:
        return None
    index = {}
    for i, name in enumerate(source_names):
        index.setdefault(_canonical(name), i)
    picks = [index.get(_canonical(name)) for name in target_names]
    return picks if any(i is not None for i in picks) else None


def map_in_channels(kernel: torch.Tensor, picks: Sequence[int | None]) -> torch.Tensor:
    """A first-layer kernel ``(O, C_src, *k)`` for ``len(picks)`` input channels: channel ``j``
    takes source channel ``picks[j]``'s kernel unscaled (the band it sees is the same band), or
    the mean of the source's kernels where ``picks[j]`` is None (a band the source never saw; on
    an input where it is zero the response is the source's own)."""
    mean = kernel.mean(dim=1)
    return torch.stack([mean if i is None else kernel[:, i] for i in picks], dim=1)


def _canonical(name: str) -> str:
    name = name.strip().upper()
    name = CHANNEL_ALIASES.get(name, name)
    return f"B0{name[1]}" if re.fullmatch(r"B\d", name) else name


def _names_of(names: Sequence[str] | None, kernel: torch.Tensor) -> list[str] | None:
    """``names`` where they name ``kernel``'s input channels (as many as it has), else None."""
    if names is None or kernel.dim() < 2 or len(names) != kernel.shape[1]:
        return None
    return [str(name) for name in names]


def _unmapped(source_names: list[str] | None, target_names: list[str] | None) -> str:
    """Why channels named so are not mapped by name."""
    if source_names is None:
        return "the source's channels are unnamed"
    if target_names is None:
        return "this backbone's channels are unnamed"
    return f"no channel name in common: source {', '.join(source_names)}; target {', '.join(target_names)}"


def _describe_map(by_name: list[tuple[str, str | None]], source_count: int) -> str:
    found = ", ".join(f"{target} <- {source}" for target, source in by_name if source is not None)
    rest = [target for target, source in by_name if source is None]
    mean = f"; the mean of the source's {source_count} kernels: {', '.join(rest)}" if rest else ""
    return f"by name: {found}{mean}"


def _fit_kernel(
    value: torch.Tensor, shape: torch.Size, is_conv: bool, is_first: bool, channels: str, name: str
) -> tuple[torch.Tensor | None, list[str]]:
    """``value`` made to fit ``shape`` by inflation and/or (first layer only) channel adaptation,
    and which of the two it took; ``None`` where neither makes it fit."""
    kinds = []
    if is_conv and value.dim() + 1 == len(shape) and value.shape[2:] == shape[3:]:
        value = inflate(value, shape[2])
        kinds.append("inflated")
    same_but_inputs = value.dim() == len(shape) and value.shape[:1] + value.shape[2:] == shape[:1] + shape[2:]
    if is_conv and is_first and same_but_inputs and value.shape[1] != shape[1]:
        value = adapt_in_channels(value, shape[1], channels, name)
        kinds.append("adapted")
    return (value, kinds) if value.shape == shape else (None, [])


def inflate(kernel: torch.Tensor, length: int) -> torch.Tensor:
    """``(O, I, *k)`` → ``(O, I, length, *k)``: the kernel repeated along a new leading spatial
    axis and divided by ``length``. On an input constant along that axis the new kernel sums
    ``length`` equal copies of ``kernel / length``: the original response (I3D's recipe)."""
    return kernel.unsqueeze(2).repeat_interleave(length, dim=2) / length


def adapt_in_channels(kernel: torch.Tensor, count: int, mode: str, name: str = "weight") -> torch.Tensor:
    """A first-layer kernel ``(O, C_src, *k)`` for ``count`` input channels.

    - ``mean``: every new channel gets the mean of the source's kernels over its channels,
      scaled by ``C_src / count``. A grey image given as ``count`` equal channels then gives
      exactly the response the source gave to that image as ``C_src`` equal channels
      (``count · mean · C_src/count = sum``): 1 grey → 3 RGB, RGB → 13 bands keep their scale.
    - ``repeat``: the source's channels tiled cyclically (channel ``i`` gets source channel
      ``i mod C_src``), scaled by ``C_src / count`` likewise; each new channel keeps a
      source filter, and the grey-image response is exact when ``count`` is a multiple of ``C_src``.
    - ``first``: the first ``count`` source channels, unscaled (the bands they see are the same
      bands); only when ``count ≤ C_src``.
    """
    source = kernel.shape[1]
    if mode == "mean":
        return kernel.mean(dim=1, keepdim=True).repeat_interleave(count, dim=1) * (source / count)
    if mode == "repeat":
        return kernel[:, torch.arange(count) % source] * (source / count)
    if mode == "first":
        if count > source:
            raise ConfigError(
                f"channels='first': {name} needs {count} input channels, the source has only {source}; "
                "use 'mean' or 'repeat'"
            )
        return kernel[:, :count].clone()
    raise ConfigError(f"channels={mode!r}: expected one of {', '.join(ADAPT_MODES)}")


def _conv_weight_names(backbone: nn.Module) -> list[str]:
    """State-dict names of every convolution's kernel, in module order (the first is the stem)."""
    names = []
    for module_name, module in backbone.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            prefix = f"{module_name}." if module_name else ""
            parametrized = _PARAMETRIZED[1:] in dict(module.named_parameters())
            names.append(prefix + (_PARAMETRIZED[1:] if parametrized else "weight"))
    return names


def _plain_name(name: str) -> str:
    """``….parametrizations.weight.original`` and ``….weight`` name the same kernel."""
    return name[: -len(_PARAMETRIZED)] + ".weight" if name.endswith(_PARAMETRIZED) else name
