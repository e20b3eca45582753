"""Small, dependency-free statistics for the benchmark: medians, percentiles, ratios, and
the figures written out as JSON."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from typing import Any, Optional


def median(samples: Sequence[float]) -> float:
    return float(statistics.median(samples))


def percentile(samples: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` in 0..1): an observed sample, never an
    interpolation, so p99 of 100 samples is the 99th smallest."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def summary(samples_s: Sequence[float]) -> dict[str, float]:
    """Median, p99, mean and count of durations given in seconds, reported in milliseconds."""
    return {
        "median_ms": round(median(samples_s) * 1e3, 4),
        "p99_ms": round(percentile(samples_s, 0.99) * 1e3, 4),
        "mean_ms": round(statistics.fmean(samples_s) * 1e3, 4),
        "n": len(samples_s),
    }


def ratio(value: Optional[float], floor: Optional[float]) -> Optional[float]:
    """``value / floor``, or ``None`` when either is missing or the floor is zero."""
    if value is None or floor is None or floor <= 0:
        return None
    return round(value / floor, 3)


def write_figures(path: Optional[str], figures: Any) -> None:
    """Write a run's figures as indented JSON to ``path`` (nothing when it is ``None``)."""
    if path:
        with open(path, "w", encoding="utf-8") as out:
            json.dump(figures, out, indent=2)
