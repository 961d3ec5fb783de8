"""biomedical3d in plain PyTorch: the 3D CNN on the volumes held in memory.

    python benchmarks/plain/biomedical3d.py [--epochs 20] [--data_root data]

Volumes go through MONAI's preprocessing (the datamodule's test transforms) once; the suite's
augmentation — a flip along each axis with probability ½, 1–3 quarter turns with probability
½ in each square plane, an intensity shift of ±0.1 with probability ½ — is drawn per sample
on the batch tensor (N, 1, D, H, W).
"""

from __future__ import annotations

from pathlib import Path

import torch
from common import main, random_flips_and_turns, train_classifier, uniform

TASK = "biomedical3d"


def augment(x: torch.Tensor) -> torch.Tensor:
    size = x.shape[-3:]
    planes = tuple((a - 3, b - 3) for a, b in ((0, 1), (1, 2)) if size[a] == size[b])
    x = random_flips_and_turns(x, flip_dims=(-3, -2, -1), planes=planes, turns=(0, 0, 0, 1, 2, 3))
    shift = uniform(len(x), -0.1, 0.1, x.device) * (torch.rand(len(x), device=x.device) < 0.5)
    return x + shift.view(-1, *[1] * (x.dim() - 1))


def run(epochs: int | None = None, data_root: str | Path = "data", seed: int = 0, limit_batches: int | None = None):
    return train_classifier(TASK, epochs, data_root, seed, augment, limit_batches)


if __name__ == "__main__":
    main(run, __doc__.splitlines()[0])
