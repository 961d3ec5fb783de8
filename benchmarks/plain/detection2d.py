"""detection2d in plain PyTorch: FCOS on our backbone + FPN, the canvases held in memory.

    python benchmarks/plain/detection2d.py [--epochs 8] [--data_root data]

The detector computes its own losses (torchvision's FCOS); as the suite, labels are shifted by
the detector's label offset, crowd boxes are left out of training, and gradients are clipped
to the config's norm. No augmentation (the suite has none for this task). Scored with
torchmetrics' ``MeanAveragePrecision`` (the faster_coco_eval backend), as ``test/map`` is.
"""

from __future__ import annotations

from pathlib import Path

import torch
from common import (
    fit,
    load,
    main,
    shuffled_batches,
)
from torchmetrics.detection import MeanAveragePrecision

TASK = "detection2d"


def run(epochs: int | None = None, data_root: str | Path = "data", seed: int = 0, limit_batches: int | None = None):
    loaded = load(TASK, epochs, data_root, seed)
    (images, targets), (test_images, test_targets), model = loaded.train, loaded.test, loaded.model
    batch_size, offset = loaded.batch_size, model.label_offset
    train_targets = [
        {"boxes": t["boxes"][t["iscrowd"] == 0], "labels": t["labels"][t["iscrowd"] == 0] + offset} for t in targets
    ]

    def epoch_batches():
        for i in shuffled_batches(len(images), batch_size):
            yield [images[j] for j in i], [train_targets[j] for j in i]

    def loss_of(batch):
        return sum(model.detector(*batch).values())

    result = fit(loaded, epoch_batches, loss_of, limit_batches)
    model.eval()
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval")
    with torch.no_grad():
        for first in range(0, len(test_images), batch_size):
            truth = [
                {k: t[k].cpu() for k in ("boxes", "labels", "iscrowd")}
                for t in test_targets[first : first + batch_size]
            ]
            found = model(test_images[first : first + batch_size])
            metric.update([{k: v.cpu() for k, v in f.items()} for f in found], truth)
    scores = metric.compute()
    return result | {"test/map": float(scores["map"]), "test/map_50": float(scores["map_50"])}


if __name__ == "__main__":
    main(run, __doc__.splitlines()[0])
