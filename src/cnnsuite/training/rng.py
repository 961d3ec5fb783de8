"""The random generators' states, saved in a checkpoint as tensors and plain values (Lightning's
own ``_collect_rng_states`` holds NumPy arrays, which ``weights_only=True`` refuses)."""

from __future__ import annotations

import random

import numpy as np
import torch


def rng_states() -> dict:
    """Python's, NumPy's, torch's and CUDA's generator states as tensors and plain values
    (a checkpoint must load with ``weights_only=True``: no NumPy arrays)."""
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict) -> None:
    python, numpy, cpu, cuda = parsed(states)
    random.setstate(python)
    np.random.set_state(numpy)
    torch.set_rng_state(cpu)
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def check_rng_states(states: dict) -> None:
    """Raise what :func:`set_rng_states` would raise on ``states`` (a checkpoint's), setting
    generators of their own: the process's stay as they are, and CUDA is not started."""
    python, numpy, cpu, _ = parsed(states)
    random.Random().setstate(python)
    np.random.RandomState().set_state(numpy)
    torch.Generator().set_state(cpu)


def parsed(states: dict) -> tuple:
    """What :func:`rng_states` took, as Python's, NumPy's and torch's generators take it back,
    and CUDA's list of states."""
    version, state, gauss = states["python"]
    kind, keys, pos, has_gauss, cached = states["numpy"]
    cuda = states["cuda"]
    if not isinstance(cuda, list) or not all(isinstance(s, torch.Tensor) for s in cuda):
        raise TypeError(f"cuda is a {type(cuda).__name__}, expected a list of tensors")
    return (
        (version, tuple(state), gauss),
        (kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached),
        states["torch"],
        cuda,
    )
