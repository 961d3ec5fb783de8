"""Timing a step on a CPU or a GPU: what the bench and a fit's choice of recipe
(:mod:`cnnsuite.training.recipe`) measure with, so that both read a clock the same way."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch


def synchronizer(device: torch.device | str) -> Callable[[], None] | None:
    """What waits for the device's queued work before a clock is read (nothing on CPU)."""
    device = torch.device(device)
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None


def measure(
    fn: Callable[[], object],
    warmup: int = 1,
    repeats: int = 5,
    min_seconds: float = 0.0,
    sync: Callable[[], None] | None = None,
) -> dict:
    """Seconds per call of ``fn``: ``{"median", "all", "number"}``.

    ``warmup`` calls first (first-touch allocations, oneDNN's kernel choice, caches); then
    ``repeats`` timings, each of ``number`` calls in a row, ``number`` chosen from the last
    warm-up call so that one timing lasts at least ``min_seconds`` (a 10 ms step timed alone
    is mostly clock and scheduler noise). The median, not the mean: another process taking
    the cores for a moment spoils one timing, not the figure."""
    return measure_side_by_side({"fn": fn}, warmup, repeats, min_seconds, sync)["fn"]


def measure_side_by_side(
    fns: dict[str, Callable[[], object]],
    warmup: int = 1,
    repeats: int = 5,
    min_seconds: float = 0.0,
    sync: Callable[[], None] | None = None,
) -> dict[str, dict]:
    """:func:`measure` for several functions whose times are compared (ours and a reference):
    their timings take turns, round after round, so that a change of load on a shared machine
    falls on all of them alike instead of on whichever was being timed then."""
    wait = sync or (lambda: None)
    numbers = {}
    for name, fn in fns.items():
        per_call = 0.0
        for _ in range(max(1, warmup)):
            start = time.perf_counter()
            fn()
            wait()
            per_call = time.perf_counter() - start
        numbers[name] = max(1, math.ceil(min_seconds / per_call)) if min_seconds and per_call > 0 else 1
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(numbers[name]):
                fn()
            wait()
            times[name].append((time.perf_counter() - start) / numbers[name])
    return {name: {"median": statistics.median(t), "all": t, "number": numbers[name]} for name, t in times.items()}
