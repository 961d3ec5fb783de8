"""recognition2d in plain PyTorch: the default network on the digit scans held in memory.

    python benchmarks/plain/recognition2d.py [--epochs 30] [--data_root data]

The augmentation is the suite's own ``BatchRandomAffine``: a random affine per image (±10°,
±10 % shift, 0.9–1.1 zoom) drawn per sample and applied to the whole batch by one ``grid_sample``.
"""

from __future__ import annotations

from pathlib import Path

from common import main, train_classifier

from cnnsuite.data.augment import BatchRandomAffine

TASK = "recognition2d"


#: the suite's own batch augmentation, with recognition2d's settings
augment = BatchRandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))


def run(epochs: int | None = None, data_root: str | Path = "data", seed: int = 0, limit_batches: int | None = None):
    return train_classifier(TASK, epochs, data_root, seed, augment, limit_batches)


if __name__ == "__main__":
    main(run, __doc__.splitlines()[0])
