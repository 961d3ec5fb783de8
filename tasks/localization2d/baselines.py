"""Trivial baselines on localization2d's data, so the CNN's figures mean something.

    python -m cnnsuite.tasks.localization2d.baselines [--data_root data]

Scores on the test split of the default run (same files, same split) two predictors that do
not learn where the digit is: ``centre`` (the training boxes' mean size in the centre of the
image, majority class) and ``brightest`` (the box of the brightest smoothed region, majority
class). The CNN's figures mean something only well above these.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy import ndimage
from torchvision.ops import box_iou

from cnnsuite.data import image_size, read_image

from .datamodule import LocalizationDataModule


def baseline_scores(datamodule: LocalizationDataModule) -> dict[str, dict[str, float]]:
    """What two trivial predictors score on the test split: ``centre`` (the training boxes'
    mean size in the centre of the image, majority class) and ``brightest`` (the box of the
    brightest smoothed region, majority class). The CNN's figures mean something only well
    above these."""
    datamodule.prepare_data()
    datamodule.setup("test")
    samples = datamodule._load()
    train = [samples[i] for i in datamodule.splits["train"]]
    test = [samples[i] for i in datamodule.splits["test"]]
    majority = int(np.bincount([s.label for s in train]).argmax())
    sizes = []
    for s in train:
        width, height = image_size(datamodule.root / s.file)
        sizes.append(((s.box[2] - s.box[0]) / width, (s.box[3] - s.box[1]) / height))
    mean_w, mean_h = np.mean(sizes, axis=0)
    scores = {}
    for name in ("centre", "brightest"):
        ious, right = [], []
        for s in test:
            image = read_image(datamodule.root / s.file, 1)[0].numpy().astype(np.float32)
            height, width = image.shape
            if name == "centre":
                box = [width * (0.5 - mean_w / 2), height * (0.5 - mean_h / 2),
                       width * (0.5 + mean_w / 2), height * (0.5 + mean_h / 2)]  # fmt: skip
            else:
                box = brightest_region_box(image)
            ious.append(float(box_iou(torch.tensor([box]), torch.tensor([s.box]))[0, 0]))
            right.append(s.label == majority)
        ious, right = np.array(ious), np.array(right)
        scores[name] = {
            "acc": float(right.mean()),
            "miou": float(ious.mean()),
            "loc_acc": float(((ious >= 0.5) & right).mean()),
            "gt_known_loc": float((ious >= 0.5).mean()),
        }
    return scores


def brightest_region_box(image: np.ndarray, sigma: float = 2.0) -> list[float]:
    """The bounding box of the connected region, above half the peak of the smoothed image,
    that holds the brightest smoothed pixel."""
    smooth = ndimage.gaussian_filter(image, sigma)
    regions, _ = ndimage.label(smooth > 0.5 * smooth.max())
    peak = np.unravel_index(int(smooth.argmax()), smooth.shape)
    ys, xs = np.nonzero(regions == regions[peak])
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_root", default="data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    scores = baseline_scores(LocalizationDataModule(data_root=args.data_root, seed=args.seed))
    for name, figures in scores.items():
        print(f"test, {name}: " + ", ".join(f"{key} {value:.4f}" for key, value in figures.items()))
    return scores


if __name__ == "__main__":
    main()
