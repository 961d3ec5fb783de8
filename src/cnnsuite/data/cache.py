"""Decode once, keep in memory: the cache of decoded samples the file-based tasks share.

Decoding a PNG, a GeoTIFF or an H.264 video every epoch costs more than a small network's
training step on it: a loader decoding every epoch cannot feed the model.
Where a split's decoded samples fit in ``cache_limit_mb`` (the datamodules' init argument),
they are decoded once, when the split's dataset is built, and every epoch reads them from
memory; random augmentation always runs afterwards, so it still differs every epoch. A
larger split (a user's ImageNet-sized folder) is decoded every epoch as before, so memory
never grows past the limit; ``cache_limit_mb: 0`` turns caching off. Such a split is what
``cnnsuite prepare`` is for: its decoded items written once as shards and streamed
(:mod:`cnnsuite.data.shards`; a dataset asks its datamodule's ``decoded_cache`` which it gets).

Items are decoded in the main process, before any DataLoader worker starts: workers then
share them (copy-on-write under ``fork``) rather than each decoding its own copy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from lightning.pytorch.utilities import rank_zero_info

from ..errors import ConfigError

T = TypeVar("T")
MIB = 2**20


def check_cache_limit(value: float) -> float:
    """``data.cache_limit_mb`` must be a number of MiB, 0 or more (``inf``: no limit); not NaN,
    which every comparison with a size would call false."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigError(f"data.cache_limit_mb={value!r}: expected a size in MiB, 0 or more (0: no cache)")
    return float(value)


def fits_cache(nbytes: float, limit_mb: float) -> bool:
    """Whether items of ``nbytes`` decoded are kept in memory under ``data.cache_limit_mb``."""
    return limit_mb > 0 and nbytes <= limit_mb * MIB


def say_over_limit(what: str, nbytes: float, limit_mb: float) -> None:
    """The one line a split too large for ``data.cache_limit_mb`` says (none when caching is off)."""
    if limit_mb > 0:
        rank_zero_info(
            f"{what}: {nbytes / MIB:,.0f} MiB decoded, over data.cache_limit_mb={limit_mb:g}; decoded again "
            "every epoch (cnnsuite prepare writes it once as shards to stream instead)"
        )


class DecodedCache(Generic[T]):
    """``read(i)`` for ``i`` in ``range(count)``: all decoded once and kept, when their total
    size (``nbytes``, estimated before decoding) is within ``limit_mb``; else ``read`` runs on
    every access. ``what`` names the split in the one line said when it is too large."""

    def __init__(self, read: Callable[[int], T], count: int, nbytes: int, limit_mb: float, what: str) -> None:
        self.read, self.count = read, count
        self.items: list[T] | None = None
        if fits_cache(nbytes, limit_mb):
            self.items = [read(i) for i in range(count)]
        else:
            say_over_limit(what, nbytes, limit_mb)

    @property
    def cached(self) -> bool:
        return self.items is not None

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> T:
        return self.items[index] if self.items is not None else self.read(index)
