"""localization2d in plain PyTorch: the class-and-box network on the canvases held in memory.

    python -m benchmarks.plain.localization2d [--epochs 16] [--data_root data]

The loss is the module's own (cross-entropy + L1 + GIoU, weighted as configured). The suite's
augmentation — a random shift (±10 %) and zoom (0.85–1.15) per image, the box moved with it —
is drawn per sample and applied to the batch by one ``grid_sample``; the boxes, fractions of
the image, move by the same map and are clipped to it (the suite instead draws again when the
box would leave the image).
"""

from __future__ import annotations

from pathlib import Path

import torch
from cnnsuite.tasks.localization2d.module import LocalizationAccuracy, MeanIoU

from benchmarks.plain.common import (
    affine_thetas,
    fit,
    load,
    main,
    predict,
    shuffled_batches,
    warp,
)

TASK = "localization2d"


def augment(x: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shifted and zoomed images and their boxes. ``theta`` maps output to input coordinates
    (in [-1, 1]): ``in = A·out + t``, so a box corner moves to ``A⁻¹·(in - t)``."""
    theta = affine_thetas(len(x), degrees=0, translate=0.1, scale=(0.85, 1.15))
    zoom, shift = theta[:, 0, 0, None], theta[:, :, 2].repeat(1, 2)
    moved = ((boxes * 2 - 1) - shift) / zoom
    return warp(x, theta), ((moved + 1) / 2).clamp(0, 1)


def run(epochs: int | None = None, data_root: str | Path = "data", seed: int = 0, limit_batches: int | None = None):
    loaded = load(TASK, epochs, data_root, seed)
    (x, labels, boxes), (x_test, labels_test, boxes_test), model = loaded.train, loaded.test, loaded.model

    def epoch_batches():
        for i in shuffled_batches(len(x), loaded.batch_size):
            yield *augment(x[i], boxes[i]), labels[i]

    def loss_of(batch):
        images, target_boxes, target = batch
        return model.losses(*model(images), target, target_boxes)["loss"]

    result = fit(loaded, epoch_batches, loss_of, limit_batches)
    logits, predicted = predict(model, x_test, loaded.batch_size)
    loc_acc = LocalizationAccuracy()(logits.softmax(1), labels_test, predicted, boxes_test)
    return result | {"test/loc_acc": float(loc_acc), "test/miou": float(MeanIoU()(predicted, boxes_test))}


if __name__ == "__main__":
    main(run, __doc__.splitlines()[0])
