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

from cnnsuite.training.baselines import logistic_regression, multilabel_scores

from .datamodule import DEFAULTS, MultispectralDataModule


def single_label_scores(x_train, y_train, x_test, y_test) -> dict[str, float]:
    return {
        "majority class": float((y_test == np.bincount(y_train).argmax()).mean()),
        "mean spectrum (logistic regression)": float(logistic_regression(x_train, y_train).score(x_test, y_test)),
    }


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
    splits, labels = data.decide_splits(), dict(data.list_samples())

    def table(stage: str) -> tuple[np.ndarray, np.ndarray]:
        ids = splits[stage]
        x = np.stack([data.reader(data.root / i).mean(axis=(1, 2)) for i in ids])
        return x, np.array([labels[i] for i in ids])

    (x_train, y_train), (x_test, y_test) = table("train"), table("test")
    if data.multilabel:
        scores = multilabel_scores(x_train, y_train, x_test, y_test, "band means")
    else:
        scores = single_label_scores(x_train, y_train, x_test, y_test)
    for name, value in scores.items():
        print(f"test {'' if data.multilabel else 'accuracy, '}{name}: {value:.4f}")
    return scores


if __name__ == "__main__":
    main()
