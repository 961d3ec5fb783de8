"""The embedded default of biomedical3d: tissue-like volumes with one lesion whose *shape*
is the class — round, elongated (a rod) or flat (a plate).

Every lesion has about the same volume and contrast, at a random place and a random 3D
orientation, so global intensity statistics say almost nothing about the class, and a
single slice cannot tell a rod seen end-on from a round lesion or a plate seen edge-on
from a rod: the network needs 3D context.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.spatial.transform import Rotation

CLASSES = ("round", "elongated", "flat")
# Semi-axes relative to a sphere's radius; each triple has product 1 (equal volume).
_AXES = {"round": (1.0, 1.0, 1.0), "elongated": (0.6, 0.6, 2.78), "flat": (1.6, 1.6, 0.39)}


def lesion_volume(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``(size, size, size)`` float32 volume of class ``label``."""
    # Tissue: smooth random texture (a Gaussian random field) plus scanner noise.
    tissue = gaussian_filter(rng.normal(size=(size,) * 3), sigma=2.0)
    tissue *= 0.3 / tissue.std()
    radius = 4.0 * rng.uniform(0.85, 1.15)
    axes = radius * np.asarray(_AXES[CLASSES[label]])
    margin = axes.max() * 0.6 + 2
    centre = rng.uniform(margin, size - 1 - margin, size=3)
    grid = np.stack(np.meshgrid(*(np.arange(size),) * 3, indexing="ij"), axis=-1) - centre
    local = grid @ Rotation.random(random_state=rng).as_matrix()  # coordinates in the lesion's frame
    lesion = ((local / axes) ** 2).sum(-1) <= 1.0
    contrast = rng.uniform(1.8, 2.4)
    volume = tissue + contrast * gaussian_filter(lesion.astype(np.float64), sigma=0.6)
    volume += rng.normal(scale=0.2, size=volume.shape)
    return (100 + 40 * volume).astype(np.float32)  # a CT-like intensity range
