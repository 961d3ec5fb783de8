"""Trivial baselines on biomedical3d's data, so the CNN's figure means something.

    python -m cnnsuite.tasks.biomedical3d.baselines [--data_root data] [--data_dir DIR]

Scores on the test split of the run (same files, same split, same seed) what a model can do
without seeing where the bright voxels are, i.e. without a lesion's 3D shape:

- single-label data (the embedded default): a majority-class guess and a gradient-boosted
  classifier on global intensity statistics of each raw volume (mean, standard deviation,
  extremes and percentiles);
- multi-label data (a ``labels.csv`` with ``a;b`` cells): the label-frequency prior and one
  logistic regression a class on each volume's intensity histogram, in macro and micro mAP
  (:mod:`cnnsuite.training.baselines`).
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier

from cnnsuite.training.baselines import multilabel_scores

from .datamodule import Biomedical3DDataModule
from .readers import LoadVolumed

PERCENTILES = (1, 5, 25, 50, 75, 95, 99, 99.9)
#: the intensity histogram of a volume: the share of its voxels in each bin of z-scores
HISTOGRAM_BINS = np.linspace(-3, 6, 37)


def intensity_features(volume: np.ndarray) -> np.ndarray:
    values = volume.ravel().astype(np.float64)
    z = (values - values.mean()) / (values.std() + 1e-8)
    return np.concatenate([[values.mean(), values.std(), values.min(), values.max()], np.percentile(z, PERCENTILES)])


def intensity_histogram(volume: np.ndarray) -> np.ndarray:
    values = volume.ravel().astype(np.float64)
    z = (values - values.mean()) / (values.std() + 1e-8)
    return np.histogram(np.clip(z, HISTOGRAM_BINS[0], HISTOGRAM_BINS[-1]), HISTOGRAM_BINS)[0] / len(z)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_root", default="data")
    parser.add_argument("--data_dir", default=None, help="a folder with labels.csv (default: the embedded default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data = Biomedical3DDataModule(data_dir=args.data_dir, data_root=args.data_root, seed=args.seed)
    data.prepare_data()
    splits, labels = data.decide_splits(), dict(data.list_samples())
    load = LoadVolumed()
    features = intensity_histogram if data.multilabel else intensity_features

    def table(stage: str):
        ids = splits[stage]
        x = np.stack([features(load({"image": str(data.root / i)})["image"].numpy()) for i in ids])
        return x, np.array([labels[i] for i in ids])

    (x_train, y_train), (x_test, y_test) = table("train"), table("test")
    if data.multilabel:
        scores = multilabel_scores(x_train, y_train, x_test, y_test, "intensity histogram")
    else:
        majority = np.bincount(y_train).argmax()
        scores = {
            "majority class": float((y_test == majority).mean()),
            "intensity statistics (gradient boosting)": float(
                GradientBoostingClassifier(random_state=args.seed).fit(x_train, y_train).score(x_test, y_test)
            ),
        }
    for name, value in scores.items():
        print(f"test {'' if data.multilabel else 'accuracy, '}{name}: {value:.4f}")
    return scores


if __name__ == "__main__":
    main()
