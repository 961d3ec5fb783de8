"""scikit-learn's handwritten digits (1,797 real 8×8 scans) and their one shared split.

The 2D digit tasks (recognition, localization, detection) all draw from these scans. They share one
split, fixed here and independent of any run's seed, so that a scan in any task's test
set is in no task's training set and transfer between the tasks is not leakage.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from .splits import stratified_split

SPLIT_SEED = 20260101
VAL_FRACTION = 0.1
TEST_FRACTION = 0.2


@cache
def digit_scans() -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (1797, 8, 8) in 0..255, labels int (1797,))``; ships with scikit-learn."""
    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    return images, digits.target.astype(np.int64)


@cache
def digit_split() -> dict[str, list[int]]:
    """Indices of the scans in the shared train/val/test split (stratified by digit)."""
    _, labels = digit_scans()
    ids = [f"{i:04d}" for i in range(len(labels))]
    split = stratified_split(ids, labels.tolist(), VAL_FRACTION, TEST_FRACTION, SPLIT_SEED)
    return {stage: [int(i) for i in names] for stage, names in split.items()}


def draw_digit_size(rng: np.random.Generator, heights: tuple[int, int]) -> tuple[int, int]:
    """A digit's height in pixels, drawn from ``heights`` (both included), and its width,
    70–100 % of it and at least 8: the size a scan is upscaled to on a canvas."""
    height = int(rng.integers(heights[0], heights[1] + 1))
    return height, max(8, int(round(height * rng.uniform(0.7, 1.0))))


def upscaled(scan: np.ndarray, height: int, width: int) -> np.ndarray:
    """A scan (or a piece of one) resized to ``height`` × ``width``, bilinear, as float32 in 0..255."""
    return np.asarray(Image.fromarray(scan).resize((width, height), Image.Resampling.BILINEAR), np.float32)


def ink_box(patch: np.ndarray, left: int, top: int) -> list[float]:
    """The tight box ``x1, y1, x2, y2`` of a digit's ink (its pixels above a quarter of its
    peak) when ``patch`` is placed with its top-left corner at (``left``, ``top``)."""
    ys, xs = np.nonzero(patch > 0.25 * patch.max())
    return [float(left + xs.min()), float(top + ys.min()), float(left + xs.max() + 1), float(top + ys.max() + 1)]
