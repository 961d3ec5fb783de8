"""The spectrum-only baseline on multispectral3d's data, so the 3D CNN's figure means something.

    python -m cnnsuite.tasks.multispectral3d.baselines [--data_root data] [--data_dir DIR]

Scores on the test split of the default run (same files, same split, same seed) a majority
guess and a logistic regression on each patch's mean spectrum (standardised per band on the
training split): what a model can do without seeing any spatial pattern. The space-only
baseline and the 2D reference are the task's own CNN with another ``data.layout`` (README).
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .datamodule import MultispectralDataModule


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_root", default="data")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data = MultispectralDataModule(data_dir=args.data_dir, data_root=args.data_root, seed=args.seed)
    data.prepare_data()
    splits, labels = data._decide_splits(), dict(data.list_samples())

    def table(stage: str) -> tuple[np.ndarray, np.ndarray]:
        ids = splits[stage]
        x = np.stack([data.reader(data.root / i).mean(axis=(1, 2)) for i in ids])
        return x, np.array([labels[i] for i in ids])

    (x_train, y_train), (x_test, y_test) = table("train"), table("test")
    spectrum = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x_train, y_train)
    scores = {
        "majority class": float((y_test == np.bincount(y_train).argmax()).mean()),
        "mean spectrum (logistic regression)": float(spectrum.score(x_test, y_test)),
    }
    for name, value in scores.items():
        print(f"test accuracy, {name}: {value:.4f}")
    return scores


if __name__ == "__main__":
    main()
