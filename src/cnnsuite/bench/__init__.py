"""``cnnsuite bench``: speed figures of every task, as ratios, in ``bench.json`` and ``bench.md``
(see :mod:`cnnsuite.bench.core`)."""

from ..timing import measure
from .core import BenchContext, bench_main, build, count_flops

__all__ = ["BenchContext", "bench_main", "build", "count_flops", "measure"]
