"""Trivial baselines on biomedical3d's data, so the CNN's figure means something.

    python -m cnnsuite.tasks.biomedical3d.baselines [--data_root data]

Scores on the test split of the default run (same files, same split) a majority-class
guess and a gradient-boosted classifier on global intensity statistics of each raw volume
(mean, standard deviation, extremes and percentiles): what a model can do without seeing
where the bright voxels are, i.e. without the lesion's 3D shape.
"""

from __future__ import annotations

import argparse

import nibabel as nib
import numpy as np
from sklearn.ensemble import GradientBoostingClassifier

from .datamodule import Biomedical3DDataModule

PERCENTILES = (1, 5, 25, 50, 75, 95, 99, 99.9)


def intensity_features(volume: np.ndarray) -> np.ndarray:
    values = volume.ravel().astype(np.float64)
    z = (values - values.mean()) / (values.std() + 1e-8)
    return np.concatenate([[values.mean(), values.std(), values.min(), values.max()], np.percentile(z, PERCENTILES)])


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_root", default="data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data = Biomedical3DDataModule(data_root=args.data_root, seed=args.seed)
    data.prepare_data()
    splits, labels = data._decide_splits(), dict(data.list_samples())

    def table(stage: str):
        ids = splits[stage]
        x = np.stack([intensity_features(np.asarray(nib.load(data.root / i).dataobj)) for i in ids])
        return x, np.array([labels[i] for i in ids])

    (x_train, y_train), (x_test, y_test) = table("train"), table("test")
    majority = np.bincount(y_train).argmax()
    scores = {
        "majority class": float((y_test == majority).mean()),
        "intensity statistics (gradient boosting)": float(
            GradientBoostingClassifier(random_state=args.seed).fit(x_train, y_train).score(x_test, y_test)
        ),
    }
    for name, value in scores.items():
        print(f"test accuracy, {name}: {value:.4f}")
    return scores


if __name__ == "__main__":
    main()
