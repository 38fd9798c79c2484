"""Whether a new downstream connection may stay: the listener's
``envoy.filters.network.connection_limit`` filter and the overload manager's
``global_downstream_max_connections`` monitor, both counted per worker process.

With ``--concurrency N`` each worker admits its share, ceil(limit / N), as the circuit
breakers do: the kernel spreads connections over the workers, so a worker may turn one away
while another has room (the total never exceeds N * ceil(limit / N)).

A connection over a limit is closed at once, before any byte of it is read: Envoy's
``listener.<address>.downstream_global_cx_overflow`` for the global limit (Envoy closes it
before it becomes a connection: nothing else counts it), ``connection_limit.<stat_prefix>.
limited_connections`` for the filter (then the listener's ``downstream_cx_total`` and
``downstream_cx_destroy`` count it, as Envoy's do). The filter's ``delay`` keeps such a
connection open, unread, that long before closing it (slows down a client that retries).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from udsproxy.config.schema import ConnectionLimit
    from udsproxy.stats.store import ListenerStats, StatsStore

__all__ = ["Admission", "GlobalConnections", "share"]


class _Runtime(Protocol):
    def get(self, key: str) -> str | None: ...


def share(limit: int, workers: int) -> int:
    """One worker's part of a limit: ceil(limit / workers)."""
    return -(-limit // max(1, workers))


class GlobalConnections:
    """This worker's downstream connections on all listeners, against the overload manager's
    max_active_downstream_connections (0: no limit). Owned by the server: survives reloads."""

    __slots__ = ("active", "limit")

    def __init__(self, limit: int = 0) -> None:
        self.active = 0
        self.limit = limit


class Admission:
    """One listener's admission check, built with its context when a limit applies."""

    __slots__ = (
        "counters",
        "delay",
        "gauges",
        "glob",
        "loop",
        "max_connections",
        "runtime",
        "runtime_default",
        "runtime_key",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        glob: GlobalConnections | None,
        limit: ConnectionLimit | None,
        store: StatsStore,
        runtime: _Runtime | None,
        workers: int,
    ) -> None:
        self.loop = loop
        self.glob = glob
        self.runtime = runtime
        self.max_connections = 0  # 0: no connection_limit filter
        self.delay = 0.0
        self.runtime_key: str | None = None
        self.runtime_default = True
        self.counters: dict[str, int] = {}
        self.gauges: dict[str, int] = {}
        if limit is not None:
            self.max_connections = share(limit.max_connections, workers)
            self.delay = limit.delay
            self.runtime_key = limit.runtime_key
            self.runtime_default = limit.runtime_default
            # in the store: a reloaded listener sees the connections the old one admitted
            stats = store.filter_stats(f"connection_limit.{limit.stat_prefix}.")
            self.counters = stats.counter_set("limited_connections")
            self.gauges = stats.gauge_set("active_connections")

    def admit(self, transport: asyncio.Transport, ls: ListenerStats) -> bool:
        """Count the new connection in, or close it (False). ``ls``: the listener's stats (the
        server renames them once the port is bound)."""
        glob = self.glob
        if glob is not None and glob.limit and glob.active >= glob.limit:
            ls.downstream_global_cx_overflow += 1
            transport.close()
            return False
        limit = self.max_connections
        if limit:
            if self.gauges["active_connections"] >= limit and self._enabled():
                self.counters["limited_connections"] += 1
                ls.downstream_cx_total += 1
                ls.downstream_cx_destroy += 1
                if self.delay > 0:
                    transport.pause_reading()
                    self.loop.call_later(self.delay, transport.close)
                else:
                    transport.close()
                return False
            self.gauges["active_connections"] += 1
        if glob is not None:
            glob.active += 1
        return True

    def release(self) -> None:
        """An admitted connection closed."""
        if self.max_connections:
            self.gauges["active_connections"] -= 1
        if self.glob is not None:
            self.glob.active -= 1

    def _enabled(self) -> bool:
        """runtime_enabled: the runtime key's boolean, else its default_value."""
        key, runtime = self.runtime_key, self.runtime
        if key is None or runtime is None:
            return self.runtime_default
        value = runtime.get(key)
        if value is None:
            return self.runtime_default
        return value.strip().lower() in ("true", "1", "yes", "on")
