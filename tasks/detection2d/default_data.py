"""detection2d's embedded default data: canvases of real handwritten digits (scikit-learn's
scans, upscaled to varied sizes, a few per canvas, sometimes overlapping a little).
:meth:`DetectionDataModule.write_default` writes them once as PNGs with COCO files.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import box_iou

from cnnsuite.data.digits import draw_digit_size, ink_box, upscaled

# The embedded default: how many canvases per split, their side, digits per canvas and
# digit heights in pixels. Changing them needs a fresh --data.data_root (written once).
DEFAULT_CANVASES = {"train": 1600, "val": 150, "test": 300}
DEFAULT_CANVAS_SIZE = 96
DEFAULT_DIGITS_PER_CANVAS = (2, 5)
DEFAULT_DIGIT_HEIGHT = (16, 36)
DEFAULT_MAX_IOU = 0.15  # "sometimes overlapping a little"
DEFAULT_SEED = 20260105


def compose_canvas(
    rng: np.random.Generator,
    scans: np.ndarray,
    digits: np.ndarray,
    pool: list[int],
    size: int = DEFAULT_CANVAS_SIZE,
) -> tuple[np.ndarray, list[list[float]], list[int]]:
    """A ``size``² canvas with a few real digit scans from ``pool`` (indices into ``scans``)
    at random places and heights; returns ``(uint8 image, boxes x1y1x2y2, digit labels)``.

    A box is the tight box of the digit's ink (pixels above a quarter of its peak) after
    upscaling. Digits are combined by maximum, so a small overlap hides no stroke.
    """
    canvas = np.zeros((size, size), np.float32)
    boxes: list[list[float]] = []
    labels: list[int] = []
    low, high = DEFAULT_DIGITS_PER_CANVAS
    for _ in range(rng.integers(low, high + 1)):
        for _attempt in range(30):
            scan = int(pool[rng.integers(len(pool))])
            h, w = draw_digit_size(rng, DEFAULT_DIGIT_HEIGHT)
            patch = upscaled(scans[scan], h, w)
            x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            box = ink_box(patch, x0, y0)
            if not boxes or box_iou(torch.tensor([box]), torch.tensor(boxes)).max() <= DEFAULT_MAX_IOU:
                break
        else:
            continue  # no room left for another digit on this canvas
        region = canvas[y0 : y0 + h, x0 : x0 + w]
        np.maximum(region, patch, out=region)
        boxes.append(box)
        labels.append(int(digits[scan]))
    noisy = canvas + rng.normal(0, 10, canvas.shape)  # sensor noise on a dark page
    return np.clip(noisy, 0, 255).astype(np.uint8), boxes, labels
