"""Trivial multi-label predictors scored as a multi-label model is, so that a task's README can
set its model's mAP beside what needs no network: the label-frequency prior (every sample
scores each class at its training frequency) and one logistic regression a class on a few
global features of each sample (a task's ``baselines.py`` chooses them: band means, an
intensity histogram). Both are scored with torchmetrics' ``MultilabelAveragePrecision``,
macro and micro, as the model's ``test/map_macro`` and ``test/map_micro`` are."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torchmetrics.classification import MultilabelAveragePrecision


def logistic_regression(x_train: np.ndarray, y_train: np.ndarray):
    """A logistic regression on standardised features, fitted to ``y_train``."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x_train, y_train)


def multilabel_scores(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, features: str
) -> dict[str, float]:
    """``{"<predictor>, <macro|micro> mAP": value}`` of the label-frequency prior and of one
    logistic regression a class on ``features`` (the name the table gives them), trained on
    ``(x_train, y_train)`` (multi-hot targets) and scored on the test split."""
    frequency = y_train.mean(axis=0)
    prior = np.broadcast_to(frequency, y_test.shape)
    # A class that is always or never present in training has nothing to separate: its frequency.
    regression = np.stack(
        [
            logistic_regression(x_train, column).predict_proba(x_test)[:, 1] if 0 < frequency[c] < 1 else prior[:, c]
            for c, column in enumerate(y_train.T)
        ],
        axis=1,
    )
    target = torch.from_numpy(np.asarray(y_test)).long()
    scores = {}
    for name, predicted in (("label frequency", prior), (f"{features} (logistic regression)", regression)):
        for average in ("macro", "micro"):
            metric = MultilabelAveragePrecision(num_labels=y_test.shape[1], average=average)
            scores[f"{name}, {average} mAP"] = float(metric(torch.tensor(predicted, dtype=torch.float32), target))
    return scores
