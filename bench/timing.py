"""Shared benchmark helpers: interleaved median timing and result rows."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(
    variants: dict[str, Callable[[], object]], repeats: int
) -> dict[str, float]:
    """Median seconds per variant; the variants alternate within each repeat."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for rep in range(repeats + 1):  # repeat 0 warms caches and is dropped
        for name in names if rep % 2 else reversed(names):
            start = time.perf_counter()
            variants[name]()
            if rep:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def row(
    name: str, ratio: float, target: str, meets: bool | None, **extra: object
) -> dict:
    """One result row ``{"name", "ratio", "target", "meets", ...}``.

    ``meets`` is None for an informational row (target ``"info"``): a cost measured for
    reference that is not ours to change.
    """
    return {
        "name": name,
        "ratio": round(ratio, 2),
        "target": target,
        "meets": None if meets is None else bool(meets),
        **extra,
    }
