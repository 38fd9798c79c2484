"""Load balancers: pure, no I/O, over whatever items (hosts) they are given.

Weighted round robin is a precomputed schedule: one cycle of picks, built when the host set
changes (config time, DNS answers, health changes), so a pick stays one index step.

The cycle interleaves hosts the way nginx's smooth weighted round robin does (weights 5, 1, 1
give a a b a c a a, not a a a a a b c), which spreads a heavy host's turns like Envoy's
EDF scheduler. Equal weights give the hosts themselves, in order: plain round robin.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["MAX_CYCLE", "Balancer", "LeastRequest", "Random", "RoundRobin", "other", "schedule"]

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


class Balancer(Generic[T]):
    """What a cluster picks from when it is not plain round robin over all its hosts.

    ``pick(avoid)``: a host; ``avoid`` (a host a retry should not go back to) is only taken
    when it is the only one. None when there is nothing to pick.
    """

    __slots__ = ("items",)

    def __init__(self, items: Sequence[tuple[T, int]]) -> None:
        self.items = tuple(item for item, _ in items)

    def pick(self, avoid: T | None = None) -> T | None:
        raise NotImplementedError

    def _other(self, avoid: T) -> T:
        return other(self.items, avoid)


def other(items: Sequence[T], avoid: T) -> T:
    """Any item but ``avoid`` (the first after it), or ``avoid`` if it is alone: a retry's
    host when the balancer picked the one that failed."""
    n = len(items)
    for k in range(n):
        if items[k] is avoid:
            for j in range(1, n):
                item = items[(k + j) % n]
                if item is not avoid:
                    return item
            break
    return avoid


class RoundRobin(Balancer[T]):
    """Weighted round robin over a schedule (as the cluster's own fast path)."""

    __slots__ = ("_i", "_schedule")

    def __init__(self, items: Sequence[tuple[T, int]]) -> None:
        super().__init__(items)
        self._schedule = schedule(items)
        self._i = 0

    def pick(self, avoid: T | None = None) -> T | None:
        hosts = self._schedule
        if not hosts:
            return None
        i = self._i
        self._i = i + 1 if i + 1 < len(hosts) else 0
        host = hosts[i]
        if host is avoid:
            return self._other(host)
        return host


class Random(Balancer[T]):
    """Envoy's RANDOM: any available host, uniformly (Envoy's random balancer ignores
    weights)."""

    __slots__ = ()

    def pick(self, avoid: T | None = None) -> T | None:
        items = self.items
        n = len(items)
        if not n:
            return None
        i = int(random.random() * n)
        host = items[i]
        if host is avoid and n > 1:
            j = int(random.random() * (n - 1))
            return items[j + 1 if j >= i else j]
        return host


class LeastRequest(Balancer[T]):
    """Envoy's LEAST_REQUEST. Equal weights: the fewest active requests among ``choice_count``
    hosts drawn at random (power of two choices by default). Unequal weights: an earliest
    deadline first schedule whose weights are ``weight / (active + 1)``, each host's weight
    taken anew when it is picked (Envoy's active_request_bias 1.0)."""

    __slots__ = ("_active", "_choices", "_heap", "_now", "_seq", "_weights")

    def __init__(
        self,
        items: Sequence[tuple[T, int]],
        active: Callable[[T], int],
        choice_count: int = 2,
    ) -> None:
        super().__init__(items)
        self._active = active
        self._choices = max(choice_count, 1)
        weights = [max(int(w), 1) for _, w in items]
        self._weights: dict[int, int] | None = None
        self._heap: list[tuple[float, int, int]] = []
        self._now = 0.0
        self._seq = 0
        if len(set(weights)) > 1:
            self._weights = dict(enumerate(weights))
            for i, w in enumerate(weights):
                self._push(i, w / (active(self.items[i]) + 1))

    def _push(self, i: int, weight: float) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (self._now + 1.0 / weight, self._seq, i))

    def _edf(self) -> int:
        deadline, _, i = heapq.heappop(self._heap)
        self._now = deadline
        assert self._weights is not None
        self._push(i, self._weights[i] / (self._active(self.items[i]) + 1))
        return i

    def pick(self, avoid: T | None = None) -> T | None:
        items = self.items
        n = len(items)
        if not n:
            return None
        if self._weights is not None:
            host = items[self._edf()]
            if host is avoid and n > 1:
                host = items[self._edf()]
            return host
        active = self._active
        best = items[int(random.random() * n)]
        if best is avoid and n > 1:
            best = self._other(best)
        least = active(best)
        for _ in range(self._choices - 1):
            host = items[int(random.random() * n)]
            if host is avoid:
                continue
            count = active(host)
            if count < least:
                best, least = host, count
        return best
