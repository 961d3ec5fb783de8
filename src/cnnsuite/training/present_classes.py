"""Scores per class, and their means, over the classes a split holds.

torchmetrics scores a class that has no sample in the targets as 0 (one-vs-rest AUROC warns
that the value is meaningless, then averages it in), so a test split lacking one class of
three read a macro AUROC a third below its two classes' mean, and the absent class's
accuracy read 0. Such a class has no score: here it is NaN (written as ``null`` in
``metrics.json``, see :mod:`cnnsuite.jsonout`), and a macro mean is taken over the classes
present, as scikit-learn's ``roc_auc_score`` and ``balanced_accuracy_score`` take them.
"""

from __future__ import annotations

import torch
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MultilabelAveragePrecision,
    MultilabelF1Score,
)
from torchmetrics.utilities import dim_zero_cat


class OverPresentClasses:
    """A torchmetrics metric computed per class (``average=None``), NaN for a class without a
    sample in what it was updated with (:meth:`support`), or (``macro``) the mean of the others."""

    macro: bool

    def support(self) -> torch.Tensor:
        """How many samples of each class (a label's positives, multi-label) the targets held."""
        raise NotImplementedError

    def scored(self) -> torch.Tensor:
        """Which classes have a score: those with a sample."""
        return self.support() > 0

    def compute(self) -> torch.Tensor:
        values = super().compute().float()
        present = self.scored().to(values.device)
        values = torch.where(present, values, torch.nan)
        if not self.macro:
            return values
        return values[present].mean() if present.any() else values.new_tensor(torch.nan)


class PresentClassesAccuracy(OverPresentClasses, MulticlassAccuracy):
    """Each class's accuracy (its recall), or their mean: balanced accuracy."""

    def __init__(self, num_classes: int, macro: bool = False, **kwargs) -> None:
        super().__init__(num_classes, average=None, **kwargs)
        self.macro = macro

    def support(self) -> torch.Tensor:
        return self.tp + self.fn


class PresentClassesAUROC(OverPresentClasses, MulticlassAUROC):
    """Each class's one-vs-rest AUROC, or their mean; a class that is every sample has no
    'rest' to rank below it, so no AUROC either (a split of one class has none at all, where
    torchmetrics reads 0)."""

    def __init__(self, num_classes: int, macro: bool = True, **kwargs) -> None:
        super().__init__(num_classes, average=None, **kwargs)
        self.macro = macro

    def support(self) -> torch.Tensor:
        return torch.bincount(dim_zero_cat(self.target).long(), minlength=self.num_classes)

    def scored(self) -> torch.Tensor:
        support = self.support()
        return (support > 0) & (support < support.sum())


class PresentLabelsAveragePrecision(OverPresentClasses, MultilabelAveragePrecision):
    """Each label's average precision, or their mean, over the labels with a positive."""

    def __init__(self, num_labels: int, macro: bool = False, **kwargs) -> None:
        super().__init__(num_labels, average=None, **kwargs)
        self.macro = macro

    def support(self) -> torch.Tensor:
        return (dim_zero_cat(self.target) == 1).sum(dim=0)


class PresentLabelsF1(OverPresentClasses, MultilabelF1Score):
    """Each label's F1 at the decisions, or their mean, over the labels a sample carries or the
    model decided on: one decided on where no sample carries it scores 0, as its false
    positives earn; one neither carried nor decided on has no F1."""

    def __init__(self, num_labels: int, macro: bool = False, **kwargs) -> None:
        super().__init__(num_labels, average=None, **kwargs)
        self.macro = macro

    def support(self) -> torch.Tensor:
        return self.tp + self.fn

    def scored(self) -> torch.Tensor:
        return self.tp + self.fn + self.fp > 0
