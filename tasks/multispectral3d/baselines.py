"""The baselines on multispectral3d's data that give the 3D CNN's figure its meaning.

    python -m cnnsuite.tasks.multispectral3d.baselines [--data_root data] [--data_dir DIR]
    python -m cnnsuite.tasks.multispectral3d.baselines --default bigearthnet

Scored on the test split of the default run (same files, same split, same seed), with each
patch's mean spectrum (its band means, standardised per band on the training split) as the
only feature: what a model can do without seeing any spatial pattern.

Single-label data: accuracy of a majority guess and of a logistic regression. Multi-label data
(the ``bigearthnet`` default, BigEarthNet-S2): macro and micro mAP (torchmetrics'
``MultilabelAveragePrecision``, as the CNN's ``test/map_macro`` and ``test/map_micro``) of the
label-frequency prior (every patch scores each class at its training frequency) and of one
logistic regression a class. The space-only baseline and the 2D reference are the task's own
CNN with another ``data.layout`` (README).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torchmetrics.classification import MultilabelAveragePrecision

from .datamodule import DEFAULTS, MultispectralDataModule


def band_means(x_train: np.ndarray, y_train: np.ndarray):
    """A logistic regression on standardised band means, fitted to ``y_train``."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x_train, y_train)


def single_label_scores(x_train, y_train, x_test, y_test) -> dict[str, float]:
    return {
        "majority class": float((y_test == np.bincount(y_train).argmax()).mean()),
        "mean spectrum (logistic regression)": float(band_means(x_train, y_train).score(x_test, y_test)),
    }


def multilabel_scores(x_train, y_train, x_test, y_test) -> dict[str, float]:
    frequency = y_train.mean(axis=0)
    prior = np.broadcast_to(frequency, y_test.shape)
    # A class that is always or never present in training has nothing to separate: its frequency.
    regression = np.stack(
        [
            band_means(x_train, column).predict_proba(x_test)[:, 1] if 0 < frequency[c] < 1 else prior[:, c]
            for c, column in enumerate(y_train.T)
        ],
        axis=1,
    )
    target = torch.from_numpy(y_test).long()
    scores = {}
    for name, predicted in (("label frequency", prior), ("band means (logistic regression)", regression)):
        for average in ("macro", "micro"):
            metric = MultilabelAveragePrecision(num_labels=y_test.shape[1], average=average)
            scores[f"{name}, {average} mAP"] = float(metric(torch.tensor(predicted, dtype=torch.float32), target))
    return scores


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_root", default="data")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--default", choices=DEFAULTS, default="eurosat", help="the embedded default to score")
    parser.add_argument("--default_size", type=int, default=100)
    parser.add_argument("--default_patch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data = MultispectralDataModule(
        data_dir=args.data_dir,
        data_root=args.data_root,
        seed=args.seed,
        default=args.default,
        default_size=args.default_size,
        default_patch=args.default_patch,
    )
    data.prepare_data()
    splits, labels = data._decide_splits(), dict(data.list_samples())

    def table(stage: str) -> tuple[np.ndarray, np.ndarray]:
        ids = splits[stage]
        x = np.stack([data.reader(data.root / i).mean(axis=(1, 2)) for i in ids])
        return x, np.array([labels[i] for i in ids])

    (x_train, y_train), (x_test, y_test) = table("train"), table("test")
    score = multilabel_scores if data.multilabel else single_label_scores
    scores = score(x_train, y_train, x_test, y_test)
    for name, value in scores.items():
        print(f"test {'' if data.multilabel else 'accuracy, '}{name}: {value:.4f}")
    return scores


if __name__ == "__main__":
    main()
