"""localization2d in plain PyTorch: the class-and-box network on the canvases held in memory.

    python benchmarks/plain/localization2d.py [--epochs 16] [--data_root data]

The loss is the module's own (cross-entropy + L1 + GIoU, weighted as configured). The
augmentation is the suite's own ``BatchBoxAffine`` on the batch tensor: a random shift (±10 %)
and zoom (0.85–1.15) per image by one ``grid_sample``, the box moved with it, drawn again when
it would leave the image.
"""

from __future__ import annotations

from pathlib import Path

import torch
from cnnsuite.tasks.localization2d.module import LocalizationAccuracy, MeanIoU
from common import (
    fit,
    load,
    main,
    predict,
    shuffled_batches,
)

from cnnsuite.data.augment import BatchBoxAffine

TASK = "localization2d"


def run(epochs: int | None = None, data_root: str | Path = "data", seed: int = 0, limit_batches: int | None = None):
    loaded = load(TASK, epochs, data_root, seed)
    (x, labels, boxes), (x_test, labels_test, boxes_test), model = loaded.train, loaded.test, loaded.model
    # the suite's own batch augmentation (shifts and zooms, boxes moved along; boxes in pixels)
    augment = BatchBoxAffine(0.1, (0.85, 1.15), loaded.datamodule.hparams.hflip)
    size = torch.tensor([x.shape[-1], x.shape[-2]] * 2, dtype=torch.float32, device=x.device)

    def epoch_batches():
        for i in shuffled_batches(len(x), loaded.batch_size):
            images, moved = augment(x[i], boxes[i] * size)
            yield images, moved / size, labels[i]

    def loss_of(batch):
        images, target_boxes, target = batch
        return model.losses(*model(images), target, target_boxes)["loss"]

    result = fit(loaded, epoch_batches, loss_of, limit_batches)
    logits, predicted = (part.float().cpu() for part in predict(model, x_test, loaded.batch_size))
    labels_test, boxes_test = labels_test.cpu(), boxes_test.cpu()
    loc_acc = LocalizationAccuracy()(logits.softmax(1), labels_test, predicted, boxes_test)
    return result | {"test/loc_acc": float(loc_acc), "test/miou": float(MeanIoU()(predicted, boxes_test))}


if __name__ == "__main__":
    main(run, __doc__.splitlines()[0])
