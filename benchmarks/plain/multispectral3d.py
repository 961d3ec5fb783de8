"""multispectral3d in plain PyTorch: the spectral-spatial 3D CNN on the 13-band patches held in memory.

    python benchmarks/plain/multispectral3d.py [--epochs 10] [--data_root data]

Patches are normalised per band with the training split's statistics (the datamodule's test
preprocessing) once; the suite's augmentation — up-down and left-right flips, each with
probability ½, and with probability ½ one to three quarter turns, per patch — is drawn per
sample on the batch tensor (N, 1, bands, H, W).
"""

from __future__ import annotations

from pathlib import Path

from common import main, random_flips_and_turns, train_classifier

TASK = "multispectral3d"


def augment(x):
    return random_flips_and_turns(x, flip_dims=(-2, -1), planes=((-2, -1),), turns=(0, 0, 0, 1, 2, 3))


def run(epochs: int | None = None, data_root: str | Path = "data", seed: int = 0, limit_batches: int | None = None):
    return train_classifier(TASK, epochs, data_root, seed, augment, limit_batches)


if __name__ == "__main__":
    main(run, __doc__.splitlines()[0])
