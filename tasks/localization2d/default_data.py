"""localization2d's embedded default data: one real handwritten digit (scikit-learn's scans,
from the digit tasks' shared split) at a random place and scale on a 64×64 canvas cluttered
with fragments of other digits (too small or cut to be one), bright strokes and noise, so the
brightest blob is not the answer. :meth:`LocalizationDataModule.write_default` writes it once
as PNGs plus ``labels.csv`` and the split lists under ``data/localization2d/``, read back by
the CSV reader a user's folder goes through.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from cnnsuite.data.digits import draw_digit_size, ink_box, upscaled

# Changing these needs a fresh --data.data_root: the default is written once.
DEFAULT_CANVAS_SIZE = 64
DEFAULT_DIGIT_HEIGHT = (16, 44)
DEFAULT_CANVASES_PER_SCAN = {"train": 3, "val": 1, "test": 1}
DEFAULT_SEED = 20260110


def compose_canvas(
    rng: np.random.Generator, scans: np.ndarray, scan: int, pool: list[int], size: int = DEFAULT_CANVAS_SIZE
) -> tuple[np.ndarray, list[float]]:
    """A ``size``² canvas holding scan ``scan`` as its one digit; returns ``(uint8 image,
    box x1y1x2y2)``. The box is the tight box of the digit's ink (pixels above a quarter of
    its peak) after upscaling.

    Clutter, drawn from the same split's scans (``pool``) so no test scan reaches a
    training canvas: 2–4 fragments (a corner of another scan, at most 5×5 of its 8×8 cells),
    1–2 strokes and noise. The digit's brightness varies (55–100 %) while the strokes are at
    full brightness: the brightest blob is not the answer. Layers are combined by maximum.
    """
    canvas = np.clip(rng.normal(18, 8, (size, size)), 0, 255).astype(np.float32)
    h, w = draw_digit_size(rng, DEFAULT_DIGIT_HEIGHT)
    cell = h / 8
    for _ in range(rng.integers(2, 5)):
        other = scans[int(pool[rng.integers(len(pool))])]
        rows, cols = rng.integers(2, 6, size=2)
        top, left = rng.integers(0, 9 - rows), rng.integers(0, 9 - cols)
        piece = other[top : top + rows, left : left + cols]
        ph, pw = max(2, int(rows * cell)), max(2, int(cols * cell * w / h))
        patch = upscaled(piece, ph, pw)
        y0, x0 = rng.integers(0, size - ph + 1), rng.integers(0, size - pw + 1)
        np.maximum(canvas[y0 : y0 + ph, x0 : x0 + pw], patch, out=canvas[y0 : y0 + ph, x0 : x0 + pw])
    strokes = Image.new("L", (size, size))
    draw = ImageDraw.Draw(strokes)
    for _ in range(rng.integers(1, 3)):
        x, y = rng.uniform(0, size, 2)
        angle, length = rng.uniform(0, np.pi), rng.uniform(6, 18)
        end = (x + length * np.cos(angle), y + length * np.sin(angle))
        draw.line([(x, y), end], fill=int(rng.integers(200, 256)), width=int(rng.integers(1, 4)))
    np.maximum(canvas, np.asarray(strokes, np.float32), out=canvas)

    patch = upscaled(scans[scan], h, w) * rng.uniform(0.55, 1.0)
    x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
    np.maximum(canvas[y0 : y0 + h, x0 : x0 + w], patch, out=canvas[y0 : y0 + h, x0 : x0 + w])
    return np.clip(canvas, 0, 255).astype(np.uint8), ink_box(patch, x0, y0)
