"""localization2d in plain PyTorch: the class-and-box network on the canvases held in memory.

    python -m benchmarks.plain.localization2d [--epochs 16] [--data_root data]

The loss is the module's own (cross-entropy + L1 + GIoU, weighted as configured). The suite's
augmentation — a random shift (±10 %) and zoom (0.85–1.15) per image, the box moved with it —
is drawn per sample and applied to the batch by one ``grid_sample``; the boxes, fractions of
the image, move by the same map and are clipped to it (the suite instead draws again when the
box would leave the image).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from cnnsuite.tasks.localization2d.module import LocalizationAccuracy, MeanIoU

from benchmarks.plain.common import (
    affine_thetas,
    decode_once,
    load_task,
    main,
    precise_batchnorm_batches,
    predict,
    recompute_batchnorm,
    shuffled_batches,
    train_epochs,
    warp,
)
from cnnsuite.bench.core import task_config

TASK = "localization2d"


def augment(x: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shifted and zoomed images and their boxes. ``theta`` maps output to input coordinates
    (in [-1, 1]): ``in = A·out + t``, so a box corner moves to ``A⁻¹·(in - t)``."""
    theta = affine_thetas(len(x), degrees=0, translate=0.1, scale=(0.85, 1.15))
    zoom, shift = theta[:, 0, 0, None], theta[:, :, 2].repeat(1, 2)
    moved = ((boxes * 2 - 1) - shift) / zoom
    return warp(x, theta), ((moved + 1) / 2).clamp(0, 1)


def run(epochs: int | None = None, data_root: str | Path = "data", seed: int = 0, limit_batches: int | None = None):
    torch.manual_seed(seed)
    start = time.perf_counter()
    model, datamodule = load_task(TASK, data_root)
    epochs = epochs or task_config(TASK)["trainer"]["max_epochs"]
    x, labels, boxes = decode_once(datamodule, "train")
    x_test, labels_test, boxes_test = decode_once(datamodule, "test")
    batch_size = datamodule.hparams.batch_size

    def epoch_batches():
        for i in shuffled_batches(len(x), batch_size):
            yield *augment(x[i], boxes[i]), labels[i]

    def loss_of(batch):
        images, target_boxes, target = batch
        return model.losses(*model(images), target, target_boxes)["loss"]

    data_seconds = time.perf_counter() - start
    train_seconds = train_epochs(TASK, model, epochs, epoch_batches, loss_of, limit_batches)
    recompute_batchnorm(model, epoch_batches(), precise_batchnorm_batches(TASK, model))
    logits, predicted = predict(model, x_test, batch_size)
    loc_acc = LocalizationAccuracy()(logits.softmax(1), labels_test, predicted, boxes_test)
    return {
        "task": TASK,
        "epochs": epochs,
        "train_samples": len(x),
        "test_samples": len(x_test),
        "data_seconds": data_seconds,
        "train_seconds": train_seconds,
        "test/loc_acc": float(loc_acc),
        "test/miou": float(MeanIoU()(predicted, boxes_test)),
    }


if __name__ == "__main__":
    main(run, __doc__.splitlines()[0])
