"""Strict JSON for files other programs read: no ``NaN`` or ``Infinity``, which Python's
``json`` writes by default and every other JSON parser refuses."""

from __future__ import annotations

import json
import math


def finite_or_none(value: object) -> object:
    """``value`` with every non-finite float replaced by ``None`` (``null``): a metric that is
    undefined on the data (an AUROC with one class present, say) is written as unknown."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def strict_json(value: object, **kwargs) -> str:
    """``json.dumps`` of ``value`` with non-finite floats as ``null``."""
    return json.dumps(finite_or_none(value), allow_nan=False, **kwargs)


def first_non_finite(value: object, where: str = "") -> str | None:
    """The key path of the first non-finite float in ``value`` (nested dicts and lists), or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else where or "value"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, item in items:
        found = first_non_finite(item, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def shown_metric(value: float) -> str:
    """A metric as people read it (the report, the terminal): ``n/a`` where the data leaves it
    undefined (a class the split lacks, an AUROC of one class), as JSON has it ``null``."""
    return f"{value:.4f}" if math.isfinite(value) else "n/a"
