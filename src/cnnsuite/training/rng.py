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
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
