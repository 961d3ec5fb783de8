"""Grids of small pictures drawn as one image on one set of axes.

Evaluation's sheets of test samples (digits, patches, clip frames) are grids of dozens of
small pictures. One matplotlib ``Axes`` per picture costs tens of milliseconds each to make
and to draw, more than the network's test pass on the embedded data; here torchvision's
``make_grid`` puts the grid together, one ``imshow`` shows it, and its labels are the axes'
ticks (a row's or a column's) or text above each tile (a tile's own), each in its own colour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from torchvision.utils import make_grid

from ..data.folders import spread

#: pixels of white around each tile
GAP = 2


def stretched(picture) -> np.ndarray:
    """Pictures ``(..., H, W, C)``, ``C`` 1 (grey) or 3, as RGB in 0..1, stretched over their own
    range (one range for all of them: a clip's frames keep their brightness against each other)."""
    picture = np.asarray(picture, dtype=np.float32)
    if picture.shape[-1] not in (1, 3):
        raise ValueError(f"pictures {picture.shape}: expected a last axis of 1 or 3 channels")
    low, high = picture.min(), picture.max()
    picture = (picture - low) / (high - low + 1e-8)
    return np.repeat(picture, 3, axis=-1) if picture.shape[-1] == 1 else picture


#: pixels on the longer side below which a picture with labels drawn on it is enlarged
READABLE_SIDE = 256


def readable_scale(height: int, width: int) -> int:
    """The whole factor (nearest neighbour: pixels stay square) that enlarges a picture to
    :data:`READABLE_SIDE` pixels or more on its longer side, so that labels drawn on it in a
    font of fixed size can be read; boxes drawn on it are scaled by the same factor."""
    return max(1, math.ceil(READABLE_SIDE / max(height, width)))


def mistakes_first(right: Sequence[bool], count: int) -> list[int]:
    """Which ``count`` samples a sheet of test samples shows: the mistakes (``right`` false),
    then correct samples to fill it, each kind spread over the split. A folder's files come
    sorted by class, so the first correct samples would all be of one class."""
    wrong = spread([i for i, r in enumerate(right) if not r], count)
    return wrong + spread([i for i, r in enumerate(right) if r], count - len(wrong))


def sheet(grid: Sequence[Sequence[np.ndarray | None]], padding: int = GAP) -> np.ndarray:
    """One RGB picture of ``grid[row][column]`` (RGB pictures ``(H, W, 3)`` in 0..1, all of one
    size; None, or a short row's end, leaves its place white), ``padding`` white pixels around
    every tile: torchvision's ``make_grid``."""
    shape = next(tile for row in grid for tile in row if tile is not None).shape
    columns = max(len(row) for row in grid)
    blank = np.ones(shape, dtype=np.float32)
    tiles = []
    for r, row in enumerate(grid):
        for c in range(columns):
            tile = row[c] if c < len(row) else None
            if tile is not None and tile.shape != shape:
                raise ValueError(f"tile ({r}, {c}) is {tile.shape}, the grid's tiles are {shape}")
            tiles.append(blank if tile is None else np.asarray(tile, dtype=np.float32))
    batch = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2)
    return make_grid(batch, nrow=columns, padding=padding, pad_value=1.0).permute(1, 2, 0).numpy()


def draw_tiles(
    grid: Sequence[Sequence[np.ndarray | None]],
    path: Path,
    title: str,
    tile_inches: float,
    row_labels: Sequence[tuple[str, str]] = (),
    column_labels: Sequence[tuple[str, str]] = (),
    tile_labels: Sequence[Sequence[tuple[str, str]]] = (),
    fontsize: float = 8,
    dpi: int = 110,
) -> Path:
    """Write ``grid`` (see :func:`sheet`) to ``path``, each tile ``tile_inches`` wide, with
    ``(text, colour)`` labels: ``row_labels`` left of each row, ``column_labels`` above each
    column, ``tile_labels[row][column]`` above each tile (tiles then stand apart to make room)."""
    height, width = next(tile for row in grid for tile in row if tile is not None).shape[:2]
    padding = max(GAP, round(0.3 * height)) if tile_labels else GAP  # room for a line of text
    picture = sheet(grid, padding)
    rows, columns = len(grid), max(len(row) for row in grid)
    wide = tile_inches * columns
    fig = plt.figure(figsize=(wide, wide * picture.shape[0] / picture.shape[1]))
    ax = fig.add_axes((0, 0, 1, 1))  # the picture fills the figure; saving takes in the labels around it
    ax.imshow(picture, interpolation="nearest")
    centre_x = [padding + c * (width + padding) + width / 2 - 0.5 for c in range(columns)]
    centre_y = [padding + r * (height + padding) + height / 2 - 0.5 for r in range(rows)]
    ax.set_xticks(centre_x[: len(column_labels)], [text for text, _ in column_labels])
    ax.set_yticks(centre_y[: len(row_labels)], [text for text, _ in row_labels])
    for label, (_, colour) in zip(ax.get_xticklabels(), column_labels, strict=True):
        label.set_color(colour)
    for label, (_, colour) in zip(ax.get_yticklabels(), row_labels, strict=True):
        label.set_color(colour)
    ax.xaxis.tick_top()
    ax.tick_params(length=0, labelsize=fontsize)
    for r, row in enumerate(tile_labels):
        above = padding + r * (height + padding) - 1
        for c, (text, colour) in enumerate(row):
            ax.text(centre_x[c], above, text, color=colour, fontsize=fontsize, ha="center", va="bottom")
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path
