"""Timing helpers. Medians, not means: two cores shared with other jobs make single runs noisy."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def timed_ms(fn: Callable[[], T]) -> tuple[float, T]:
    """(wall milliseconds, result) of one call."""
    start = time.perf_counter()
    result = fn()
    return (time.perf_counter() - start) * 1000.0, result


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of `repeats` calls after `warmup` untimed ones (first calls pay lazy setup)."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        fn()
    return statistics.median(timed_ms(fn)[0] for _ in range(repeats))


def medians(samples: list[dict[str, float]]) -> dict[str, float]:
    """Per-key median over a list of {stage: ms} dicts (keys missing in a sample are skipped there)."""
    keys = dict.fromkeys(k for sample in samples for k in sample)
    return {k: statistics.median(s[k] for s in samples if k in s) for k in keys}
