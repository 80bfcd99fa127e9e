"""Summary statistics for latency samples.

Percentiles use the nearest-rank method on the sorted samples: with few samples a
p99 is simply the slowest one, which is the honest reading (no interpolation that
invents values between two measurements).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any


def percentile(samples: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile: the smallest sample with at least ``fraction`` at or below."""
    if not samples:
        raise ValueError("no samples")
    if not 0.0 < fraction <= 1.0:
        raise ValueError("fraction must be in (0, 1]")
    ordered = sorted(samples)
    rank = math.ceil(fraction * len(ordered))
    return ordered[max(rank, 1) - 1]


def median(samples: Sequence[float]) -> float:
    if not samples:
        raise ValueError("no samples")
    return float(statistics.median(samples))


@dataclass(frozen=True)
class Summary:
    """Seconds, as measured; the report converts to milliseconds for display."""

    count: int
    p50: float
    p95: float
    p99: float
    minimum: float
    maximum: float
    mean: float

    @classmethod
    def of(cls, samples: Iterable[float]) -> Summary:
        values = list(samples)
        if not values:
            raise ValueError("no samples")
        return cls(
            count=len(values),
            p50=median(values),
            p95=percentile(values, 0.95),
            p99=percentile(values, 0.99),
            minimum=min(values),
            maximum=max(values),
            mean=statistics.fmean(values),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ratio(slow: float, fast: float) -> float:
    """How many times faster ``fast`` is than ``slow`` (inf when ``fast`` is 0)."""
    if fast <= 0:
        return math.inf
    return slow / fast
