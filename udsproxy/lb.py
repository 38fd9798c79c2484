"""Weighted round robin as a precomputed schedule: one cycle of picks, built when the host set
changes (config time, DNS answers), so a pick stays one index step.

The cycle interleaves hosts the way nginx's smooth weighted round robin does (weights 5, 1, 1
give a a b a c a a, not a a a a a b c), which spreads a heavy host's turns like Envoy's
EDF scheduler. Equal weights give the hosts themselves, in order: plain round robin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

__all__ = ["MAX_CYCLE", "schedule"]

T = TypeVar("T")

# Longest cycle kept. Weights whose (gcd-reduced) sum is larger are scaled down to it, each
# host keeping at least one turn: the ratios then hold to within 1/MAX_CYCLE of the total.
MAX_CYCLE = 4096


def schedule(items: Sequence[tuple[T, int]]) -> tuple[T, ...]:
    """One cycle of picks for (item, weight) pairs; weights are >= 1."""
    if not items:
        return ()
    weights = [max(int(w), 1) for _, w in items]
    if len(set(weights)) == 1:
        return tuple(item for item, _ in items)
    g = math.gcd(*weights)
    weights = [w // g for w in weights]
    total = sum(weights)
    if total > MAX_CYCLE:
        weights = [max(1, w * MAX_CYCLE // total) for w in weights]
        total = sum(weights)
    current = [0] * len(weights)
    out: list[T] = []
    for _ in range(total):
        best = 0
        for i, w in enumerate(weights):
            current[i] += w
            if current[i] > current[best]:
                best = i
        current[best] -= total
        out.append(items[best][0])
    return tuple(out)
