"""Envoy's stats: collected per worker (store), summed across workers, rendered (render)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_BUCKETS", "Histogram", "Snapshot"]

# Envoy's default histogram buckets (ms)
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000,
    600000, 1800000, 3600000,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Histogram:
    bounds: tuple[float, ...]
    counts: tuple[int, ...]  # per bucket, not cumulative; len(bounds) + 1 (last: overflow)
    sum: float
    count: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    counters: dict[str, int]
    gauges: dict[str, int]
    histograms: dict[str, Histogram]
