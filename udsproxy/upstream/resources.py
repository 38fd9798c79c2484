"""A cluster's circuit breakers (Envoy's ResourceManager): what it has open and in flight,
against its thresholds, in this worker process.

The pool counts connections (opening or open), pending requests and active requests (with
HTTP/1.1, one per busy connection); the router counts retries. The pool and the router ask
before they take one; an overflow fails fast (503 UO) except for connections, where the request
waits for one to free. Envoy's limits are per process; with ``--concurrency N`` each worker
gets a share: ceil(threshold / N), so a cluster never has less than its threshold in all and at
most N - 1 more (README, "Circuit breakers").
"""

from __future__ import annotations

import math

from udsproxy.config.schema import CircuitBreakerThresholds

__all__ = ["Resources"]

_NAMES = ("cx_open", "cx_pool_open", "rq_pending_open", "rq_open", "rq_retry_open")


class Resources:
    __slots__ = (
        "cx",
        "max_connections",
        "max_pending",
        "max_requests",
        "max_retries",
        "pending",
        "retries",
        "rq",
        "track_remaining",
    )

    def __init__(
        self,
        max_connections: int = 1024,
        max_pending: int = 1024,
        max_requests: int = 1024,
        max_retries: int = 3,
        track_remaining: bool = False,
    ) -> None:
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.max_requests = max_requests
        self.max_retries = max_retries
        self.track_remaining = track_remaining
        self.cx = 0  # connections opening or open
        self.pending = 0  # requests waiting for a connection
        self.rq = 0  # requests on a connection
        self.retries = 0  # requests in a retry (backing off or retrying)

    @classmethod
    def for_worker(cls, t: CircuitBreakerThresholds, workers: int) -> Resources:
        def share(limit: int) -> int:
            return math.ceil(limit / workers) if workers > 1 else limit

        return cls(
            share(t.max_connections),
            share(t.max_pending_requests),
            share(t.max_requests),
            share(t.max_retries),
            t.track_remaining,
        )

    def dump_gauges(self, prefix: str, gauges: dict[str, int]) -> None:
        """circuit_breakers.<priority>.*: 1 while a limit is reached (summed over workers: the
        number of workers at it), and the room left when track_remaining is set."""
        opened = (
            self.cx >= self.max_connections,
            False,  # max_connection_pools: unlimited (refused)
            self.pending >= self.max_pending,
            self.rq >= self.max_requests,
            self.retries >= self.max_retries,
        )
        for name, value in zip(_NAMES, opened, strict=True):
            gauges[prefix + name] = int(value)
        if self.track_remaining:
            gauges[prefix + "remaining_cx"] = max(self.max_connections - self.cx, 0)
            gauges[prefix + "remaining_pending"] = max(self.max_pending - self.pending, 0)
            gauges[prefix + "remaining_rq"] = max(self.max_requests - self.rq, 0)
            gauges[prefix + "remaining_retries"] = max(self.max_retries - self.retries, 0)
