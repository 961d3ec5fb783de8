"""Parameter transformations ``w = H(u)``: the weights a layer uses are a function of
other, trainable parameters ``u``, and backpropagation reaches ``u`` through ``H``.

All three are ``torch.nn.utils.parametrize`` parametrizations, so the layer keeps its
ordinary ``weight`` attribute (now computed) and its forward is unchanged:

- :func:`mask_weights`  — ``w = u * mask``: a fixed connection pattern (LeNet-5's C3 table);
- :func:`tie_weights`   — ``w_i = u_{g(i)}``: weight sharing, several entries of ``w`` are
  one free parameter (``w1 = w2 = u1``, ``w3 = w4 = u2``), as in a symmetric kernel;
- :func:`hyper_kernel`  — ``w = H_theta(z)``: a small hypernetwork makes the kernel from a
  learned code ``z``; gradients reach both ``z`` and the hypernetwork's ``theta``.

:func:`apply_parametrizations` applies them to a staged backbone's convolutions from a
config (``model.backbone_kwargs.parametrize``), stage by stage.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError


class Masked(nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return u * self.mask


class Tied(nn.Module):
    """``w.flatten()[i] = u[groups[i]]``; ``u`` has one entry per group."""

    def __init__(self, groups: torch.Tensor) -> None:
        super().__init__()
        groups = torch.as_tensor(groups, dtype=torch.long, device="cpu")  # see symmetric_groups
        self.register_buffer("groups", groups)
        self.num_groups = int(groups.max()) + 1
        if torch.unique(groups).numel() != self.num_groups:
            raise ValueError("groups: expected every id in 0..max to be used at least once")

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return u[self.groups]

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        """Start ``u`` at the mean of the entries that will share it."""
        if w.shape != self.groups.shape:
            raise ValueError(f"groups has shape {tuple(self.groups.shape)}, weight {tuple(w.shape)}")
        groups = self.groups.flatten().to(w.device)
        sums = torch.zeros(self.num_groups, dtype=w.dtype, device=w.device).index_add_(0, groups, w.flatten())
        counts = torch.bincount(self.groups.flatten(), minlength=self.num_groups).to(w.device, w.dtype)
        return sums / counts


class HyperKernel(nn.Module):
    """A two-layer MLP that turns a code ``z`` into a whole weight tensor."""

    def __init__(self, shape: torch.Size, code_size: int, hidden: int) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.code_size = code_size
        self.net = nn.Sequential(
            nn.Linear(code_size, hidden), nn.Tanh(), nn.Linear(hidden, int(torch.Size(shape).numel()))
        )
        fan_in = int(torch.Size(shape[1:]).numel())
        # Make the generated kernels start at the scale of a default conv initialisation.
        nn.init.uniform_(self.net[-1].weight, -(fan_in**-0.5) / hidden**0.5, (fan_in**-0.5) / hidden**0.5)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(self.shape)

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        return torch.randn(self.code_size, dtype=w.dtype)


def mask_weights(module: nn.Module, mask: torch.Tensor, name: str = "weight") -> nn.Module:
    """Keep only the weights where ``mask`` (broadcast to the weight's shape) is nonzero."""
    weight = getattr(module, name)
    mask = torch.broadcast_to(mask.to(weight.dtype), weight.shape).clone()
    parametrize.register_parametrization(module, name, Masked(mask))
    return module


def tie_weights(module: nn.Module, groups: torch.Tensor, name: str = "weight") -> nn.Module:
    """Share weights: entries with the same id in ``groups`` (the weight's shape) are one."""
    parametrize.register_parametrization(module, name, Tied(groups), unsafe=True)
    return module


def symmetric_groups(shape: torch.Size, dims: tuple[int, ...]) -> torch.Tensor:
    """Group ids that tie each weight with its mirror images along each of ``dims``: a kernel
    symmetric under every one of those mirrors (a 3×3 mirrored along both axes keeps 2×2
    free values: centre, edge centres along each axis, corners). Index maps are worked out on
    the CPU whatever the default device: a model sized on the meta device (a checkpoint's,
    before it is built) needs their values."""
    canonical = torch.arange(torch.Size(shape).numel(), device="cpu").view(shape)
    for dim in dims:  # the smallest index of each entry's orbit under the mirrors
        canonical = torch.minimum(canonical, torch.flip(canonical, (dim,)))
    return torch.unique(canonical, return_inverse=True)[1]


def hyper_kernel(module: nn.Module, code_size: int = 8, hidden: int = 32, name: str = "weight") -> nn.Module:
    """Replace ``module.<name>`` by the output of a hypernetwork on a learned code."""
    shape = getattr(module, name).shape
    parametrize.register_parametrization(module, name, HyperKernel(shape, code_size, hidden), unsafe=True)
    return module


def free_parameters(module: nn.Module) -> int:
    """Trainable degrees of freedom: masked-out entries of a trainable ``u`` do not count (a frozen
    ``u`` counts none of its entries)."""
    total = sum(p.numel() for p in module.parameters() if p.requires_grad)
    for sub in module.modules():
        if not parametrize.is_parametrized(sub):
            continue
        for chain in sub.parametrizations.values():
            if chain.original.requires_grad:
                total -= sum(int((m.mask == 0).sum()) for m in chain if isinstance(m, Masked))
    return total


def tied_channel_groups(shape: torch.Size, groups: int) -> torch.Tensor:
    """Group ids that tie kernels across ``groups`` contiguous groups of input channels:
    ``w[o, g*m + i] = u[o, i]`` with ``m = in_channels / groups``, so every group of input
    channels is filtered with the same kernels (one free kernel where there were ``groups``)."""
    out, per_group, *kernel = shape[0], shape[1] // groups, *shape[2:]
    base = torch.arange(out * per_group * int(torch.Size(kernel).numel()), device="cpu").view(out, per_group, *kernel)
    return base.repeat(1, groups, *(1,) * len(kernel))


#: connection tables by name (``table: lenet5_c3``), filled by the networks that define them
#: (:mod:`cnnsuite.backbone.networks` adds LeNet-5's C3 table)
NAMED_TABLES: dict[str, Sequence[Sequence[int]]] = {}


def connection_mask(table: Sequence[Sequence[int]], shape: torch.Size) -> torch.Tensor:
    """``mask[o, i] = 1`` where input channel ``i`` feeds output channel ``o`` (one list of
    input channels per output channel), broadcast over the kernel."""
    mask = torch.zeros(shape[0], shape[1])
    for out, ins in enumerate(table):
        mask[out, list(ins)] = 1
    return mask.view(shape[0], shape[1], *(1,) * (len(shape) - 2))


#: ``kind`` → the keys an entry of ``parametrize`` may give besides ``stage`` and ``kind``
KINDS = {
    "symmetric": ("axes",),
    "tie_channels": ("groups",),
    "connection_table": ("table",),
    "hyper": ("code_size", "hidden"),
}


def apply_parametrizations(backbone: nn.Module, specs: Sequence[dict], where: str = "parametrize") -> nn.Module:
    """Apply each entry of ``specs`` to every convolution of the stages it names.

    An entry is ``{stage: int | [int, ...] | "all", kind: ..., ...}`` with ``kind`` one of

    - ``symmetric`` (``axes``: spatial axes, default all): mirror-symmetric kernels, tied by
      :func:`tie_weights` (a k-wide axis keeps ⌈k/2⌉ free values);
    - ``tie_channels`` (``groups``): kernels shared across groups of input channels
      (:func:`tied_channel_groups`);
    - ``connection_table`` (``table``: one list of input channels per output channel, or a
      name such as ``lenet5_c3``): a fixed connection pattern, ``w = u * mask``;
    - ``hyper`` (``code_size``, ``hidden``): kernels made by a hypernetwork (:func:`hyper_kernel`).

    Everything is checked before anything changes: a pattern that does not fit a layer is a
    :class:`~cnnsuite.errors.ConfigError` naming the entry, the stage and the layer, not a
    shape error later.
    """
    stages = getattr(backbone, "stages", None)
    if stages is None:
        raise ConfigError(
            f"{where}: {type(backbone).__name__} has no stages to parametrize (use convnet, lenet5, resnet)"
        )
    plan = []
    for number, spec in enumerate(specs):
        at = f"{where}[{number}]"
        if not isinstance(spec, dict) or spec.get("kind") not in KINDS:
            raise ConfigError(f"{at}={spec!r}: expected a mapping with kind: one of {', '.join(KINDS)}")
        kind = spec["kind"]
        unknown = set(spec) - {"stage", "kind", *KINDS[kind]}
        if unknown:
            expected = ", ".join(KINDS[kind])
            raise ConfigError(f"{at}: unknown keys {sorted(unknown)} for kind {kind}; expected {expected}")
        for index in _stage_indices(spec.get("stage", "all"), len(stages), at):
            convs = [(n, m) for n, m in stages[index].named_modules() if isinstance(m, nn.modules.conv._ConvNd)]
            for name, conv in convs:
                layer = f"{at}: stage {index}, conv {name or '0'} (weight {tuple(conv.weight.shape)})"
                plan.append((conv, _transformation(kind, spec, conv, layer), layer))
    seen: dict[int, str] = {}
    for conv, _, layer in plan:
        if parametrize.is_parametrized(conv, "weight") or id(conv) in seen:
            raise ConfigError(f"{layer}: already transformed{' by ' + seen[id(conv)] if id(conv) in seen else ''}; "
                             "one transformation per layer")  # fmt: skip
        seen[id(conv)] = layer.split(":")[0]
    for conv, transform, _ in plan:
        transform(conv)
    return backbone


def _stage_indices(stage: object, count: int, at: str) -> list[int]:
    if stage == "all":
        return list(range(count))
    indices = [stage] if isinstance(stage, int) else stage
    if not isinstance(indices, list | tuple) or not all(isinstance(i, int) and -count <= i < count for i in indices):
        raise ConfigError(f"{at}: stage={stage!r}: expected 'all' or stage indices in 0..{count - 1}")
    return [i % count for i in indices]


def _table_fits(table: object, outputs: int, inputs: int) -> bool:
    """One non-empty list of input channels in ``0..inputs-1`` per output channel."""
    if not isinstance(table, list | tuple) or len(table) != outputs:
        return False
    return all(isinstance(ins, list | tuple) and ins and all(isinstance(i, int) and 0 <= i < inputs for i in ins)
               for ins in table)  # fmt: skip


def _transformation(kind: str, spec: dict, conv: nn.Module, layer: str):
    """The function that parametrizes ``conv`` as ``spec`` asks, after checking that it fits."""
    shape = conv.weight.shape
    dims = len(shape) - 2
    if kind == "symmetric":
        axes = spec.get("axes", list(range(dims)))
        if not isinstance(axes, list | tuple) or not all(isinstance(a, int) and -dims <= a < dims for a in axes):
            raise ConfigError(f"{layer}: axes={axes!r}: expected spatial axes in 0..{dims - 1}")
        groups = symmetric_groups(shape, dims=tuple(2 + a % dims for a in axes))
        return lambda m: tie_weights(m, groups)
    if kind == "tie_channels":
        count = spec.get("groups")
        if not isinstance(count, int) or count < 1 or shape[1] % count:
            raise ConfigError(f"{layer}: groups={count!r}: expected a divisor of its {shape[1]} input channels")
        groups = tied_channel_groups(shape, count)
        return lambda m: tie_weights(m, groups)
    if kind == "connection_table":
        table = spec.get("table")
        table = NAMED_TABLES.get(table, table) if isinstance(table, str) else table
        if not _table_fits(table, shape[0], shape[1]):
            raise ConfigError(f"{layer}: table: expected {shape[0]} lists (one per output channel) of input channels "
                             f"in 0..{shape[1] - 1}, or one of {', '.join(NAMED_TABLES)}")  # fmt: skip
        mask = connection_mask(table, shape)
        return lambda m: mask_weights(m, mask)
    code_size, hidden = spec.get("code_size", 8), spec.get("hidden", 32)
    if not all(isinstance(v, int) and v > 0 for v in (code_size, hidden)):
        raise ConfigError(f"{layer}: code_size={code_size!r}, hidden={hidden!r}: expected positive integers")
    return lambda m: hyper_kernel(m, code_size, hidden)
