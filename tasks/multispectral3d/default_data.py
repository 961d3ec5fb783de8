"""The embedded default of multispectral3d: Sentinel-2-like 13-band patches of land cover.

Each class is a *material* (a reflectance spectrum) seen with a *pattern* (a spatial
texture). Four land materials — green vegetation, dry vegetation, bare soil, built-up — are
scaled to the same mean reflectance over the bands, and each is seen with three patterns:
smooth (a coarse random field), rows (field furrows, any orientation) and clumps (a fine
grain of crowns, stones or roofs). Water and snow, smooth, complete the set.

So some classes differ only in spectral shape (same pattern, same brightness: pasture and
bare soil) and some only in spatial pattern (same spectrum: pasture, annual crop, forest):
a model of the mean spectrum alone, or of the brightness image alone, cannot tell them
apart; a spectral-spatial filter can. The pattern only modulates brightness around 1, so it
leaves the mean spectrum unchanged. Each patch varies: overall brightness (illumination,
moisture) ±25 %, a smooth distortion of its spectrum, and pixel noise.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from cnnsuite.errors import ConfigError

#: EuroSAT-MS's band order: B01 … B12, then B8A
BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A")
#: centre wavelengths (nm) of the bands above, for plots
WAVELENGTHS = (443, 490, 560, 665, 705, 740, 783, 842, 945, 1375, 1610, 2190, 865)

# Reflectance (0-1) at the bands in wavelength order B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12:
# typical library spectra (USGS/ASTER shapes); B10 (cirrus, 1375 nm) sees almost nothing of the ground.
_SPECTRA = {
    "water": (0.060, 0.055, 0.045, 0.025, 0.020, 0.015, 0.012, 0.010, 0.009, 0.006, 0.002, 0.004, 0.003),
    "snow": (0.90, 0.92, 0.90, 0.88, 0.86, 0.84, 0.82, 0.78, 0.76, 0.65, 0.05, 0.08, 0.06),
    "green": (0.030, 0.040, 0.080, 0.040, 0.120, 0.300, 0.400, 0.440, 0.450, 0.420, 0.010, 0.220, 0.110),
    "dry": (0.050, 0.070, 0.100, 0.130, 0.170, 0.220, 0.250, 0.270, 0.280, 0.280, 0.010, 0.330, 0.240),
    "soil": (0.070, 0.090, 0.130, 0.200, 0.230, 0.250, 0.265, 0.280, 0.290, 0.300, 0.015, 0.360, 0.320),
    "builtup": (0.120, 0.130, 0.140, 0.150, 0.155, 0.160, 0.165, 0.170, 0.172, 0.170, 0.010, 0.200, 0.190),
}
_LAND_MEAN = 0.18  # every land material's mean reflectance over the 13 bands
_WAVELENGTH_ORDER = tuple(sorted(range(len(BANDS)), key=lambda i: WAVELENGTHS[i]))

#: class → (material, pattern)
CLASSES = {
    "Pasture": ("green", "smooth"),
    "AnnualCrop": ("green", "rows"),
    "Forest": ("green", "clumps"),
    "HerbaceousVegetation": ("dry", "smooth"),
    "HarvestedField": ("dry", "rows"),
    "Shrubland": ("dry", "clumps"),
    "BareSoil": ("soil", "smooth"),
    "PloughedField": ("soil", "rows"),
    "StonyGround": ("soil", "clumps"),
    "Industrial": ("builtup", "smooth"),
    "Highway": ("builtup", "rows"),
    "Residential": ("builtup", "clumps"),
    "SeaLake": ("water", "smooth"),
    "Snow": ("snow", "smooth"),
}


def spectrum(material: str) -> np.ndarray:
    """The material's reflectance in file band order; land materials at one mean brightness."""
    in_wavelength_order = np.asarray(_SPECTRA[material])
    values = np.empty(len(BANDS))
    values[list(_WAVELENGTH_ORDER)] = in_wavelength_order
    if material not in ("water", "snow"):
        values *= _LAND_MEAN / values.mean()
    return values


def _unit(field: np.ndarray) -> np.ndarray:
    return (field - field.mean()) / (field.std() + 1e-8)


def pattern(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A zero-mean, unit-variance texture of ``size`` × ``size`` pixels."""
    if kind == "smooth":
        return _unit(gaussian_filter(rng.normal(size=(size, size)), sigma=6.0, mode="wrap"))
    if kind == "clumps":
        return _unit(gaussian_filter(rng.normal(size=(size, size)), sigma=1.0, mode="wrap"))
    if kind == "rows":
        angle, period = rng.uniform(0, np.pi), rng.uniform(5.0, 9.0)
        y, x = np.mgrid[:size, :size]
        phase = 2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + rng.uniform(0, 2 * np.pi)
        wobble = 0.3 * _unit(gaussian_filter(rng.normal(size=(size, size)), sigma=4.0, mode="wrap"))
        return _unit(np.sin(phase) + wobble)
    raise ConfigError(f"pattern {kind!r}: expected smooth, rows or clumps")


def patch(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``(13, size, size)`` uint16 patch of class ``name``, reflectance × 10,000 (as L1C)."""
    material, kind = CLASSES[name]
    bands = len(BANDS)
    # A smooth distortion of the spectrum (within-class variation): ±4 % that varies slowly with wavelength.
    distortion = np.empty(bands)
    distortion[list(_WAVELENGTH_ORDER)] = gaussian_filter(rng.normal(size=bands), sigma=2.0, mode="nearest")
    signature = spectrum(material) * (1 + 0.04 * distortion / (distortion.std() + 1e-8))
    brightness = rng.uniform(0.75, 1.25)
    texture = 1 + 0.3 * pattern(kind, size, rng)
    cube = signature[:, None, None] * brightness * texture[None]
    cube *= 1 + 0.03 * rng.normal(size=cube.shape)  # pixel-level variation
    cube += rng.normal(scale=0.002, size=cube.shape)  # sensor noise
    return np.clip(cube * 10_000, 0, 65_535).astype(np.uint16)
