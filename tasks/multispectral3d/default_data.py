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

The multi-label default (:func:`mosaic`) shows several land covers in one patch, as a
BigEarthNet-S2 patch does: 1 to 3 covers of :data:`MOSAIC_CLASSES`, each a region of blobby
shape with its own brightness and spectral distortion. A patch's labels are the covers that
take at least :data:`MIN_SHARE` of its pixels; a smaller remnant is seen but not named, as in
land-cover maps with a minimum mapping unit. The green, soil and built-up covers come with two
or three patterns each, so the mean spectrum tells which materials a patch holds and their
shares, not which covers.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from cnnsuite.errors import ConfigError

#: EuroSAT-MS's band order: B01 … B12, then B8A
BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A")
#: centre wavelengths (nm) of the bands above, for plots
WAVELENGTHS = (443, 490, 560, 665, 705, 740, 783, 842, 945, 1375, 1610, 2190, 865)
#: ground resolution (m) of the bands above
RESOLUTIONS = (60, 10, 10, 10, 20, 20, 20, 10, 60, 60, 20, 20, 20)
#: the bands of BigEarthNet-S2 patches (no cirrus band B10), in wavelength order as its readers list them
BIGEARTHNET_BANDS = tuple(b for b in sorted(BANDS, key=lambda b: WAVELENGTHS[BANDS.index(b)]) if b != "B10")

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


def surface(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Noise-free reflectance ``(13, size, size)`` of land cover ``name``: its material's
    spectrum, distorted, at a random brightness, modulated by its pattern."""
    material, kind = CLASSES[name]
    bands = len(BANDS)
    # A smooth distortion of the spectrum (within-class variation): ±4 % that varies slowly with wavelength.
    distortion = np.empty(bands)
    distortion[list(_WAVELENGTH_ORDER)] = gaussian_filter(rng.normal(size=bands), sigma=2.0, mode="nearest")
    signature = spectrum(material) * (1 + 0.04 * distortion / (distortion.std() + 1e-8))
    brightness = rng.uniform(0.75, 1.25)
    texture = 1 + 0.3 * pattern(kind, size, rng)
    return signature[:, None, None] * brightness * texture[None]


def observe(cube: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Reflectance as the sensor records it: pixel-level variation and sensor noise added."""
    cube = cube * (1 + 0.03 * rng.normal(size=cube.shape))
    return cube + rng.normal(scale=0.002, size=cube.shape)


def digital_numbers(reflectance: np.ndarray) -> np.ndarray:
    """uint16 reflectance × 10,000, as Sentinel-2 L1C products store it."""
    return np.clip(reflectance * 10_000, 0, 65_535).astype(np.uint16)


def patch(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``(13, size, size)`` uint16 patch of class ``name``, reflectance × 10,000 (as L1C)."""
    return digital_numbers(observe(surface(name, size, rng), rng))


#: the land covers of the multi-label default: three green, two soil and two built-up covers
#: that share a material with another, and water
MOSAIC_CLASSES = (
    "Pasture",
    "AnnualCrop",
    "Forest",
    "BareSoil",
    "PloughedField",
    "Industrial",
    "Residential",
    "SeaLake",
)
#: the share of a patch's pixels a cover needs to be one of its labels
MIN_SHARE = 0.10


def mosaic(size: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str], dict[str, float]]:
    """``(reflectance, labels, shares)`` of one multi-label patch: ``(13, size, size)`` float
    reflectance as observed, the covers over :data:`MIN_SHARE` of its pixels (in
    :data:`MOSAIC_CLASSES` order) and every drawn cover's share of the pixels.

    The regions are where each cover's smooth random field is highest, so their borders are
    curved and their shares vary from patch to patch."""
    count = int(rng.integers(1, 4))
    covers = [MOSAIC_CLASSES[i] for i in sorted(rng.choice(len(MOSAIC_CLASSES), count, replace=False))]
    fields = gaussian_filter(rng.normal(size=(count, size, size)), sigma=(0, size / 5, size / 5), mode="reflect")
    region = np.argmax(fields / fields.std(axis=(1, 2), keepdims=True), axis=0)
    cube = np.zeros((len(BANDS), size, size))
    for i, name in enumerate(covers):
        cube = np.where(region == i, surface(name, size, rng), cube)
    shares = {name: float((region == i).mean()) for i, name in enumerate(covers)}
    labels = [name for name in MOSAIC_CLASSES if shares.get(name, 0.0) >= MIN_SHARE]
    return observe(cube, rng), labels, shares
