"""A host's HTTP/1.1 connection pool: it hands out connections and knows no stream.

Envoy's ConnPoolImplBase in small: idle connections (LIFO, so hot ones stay hot and cold ones
age out at the bottom), connections being opened, busy ones, and waiters queued for the next
free connection. A waiter is anything with ``on_pool_ready(conn)`` and
``on_pool_failure(exc)``; ``new_stream`` returns it (still queued) or None (served at once), and
``cancel`` takes it back out. The cluster's circuit breakers (``resources``; None: none
configured) are asked before a connection opens, a request waits, or a request takes a
connection.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import os
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from udsproxy.upstream.resources import Resources

__all__ = ["ConnPool", "PoolConnection", "PoolOverflow", "PoolStats", "Waiter"]


class PoolConnection(Protocol):
    closed: bool
    idle_since: float

    @property
    def reusable(self) -> bool: ...

    def is_open(self) -> bool: ...

    def close(self) -> None: ...


class Waiter(Protocol):
    def on_pool_ready(self, conn: Any) -> None: ...

    def on_pool_failure(self, exc: BaseException) -> None: ...


class PoolStats(Protocol):
    """Envoy's cluster counters the pool keeps."""

    upstream_rq_pending_total: int
    upstream_rq_pending_active: int
    upstream_rq_pending_overflow: int
    upstream_rq_cancelled: int
    upstream_cx_idle_timeout: int
    upstream_cx_overflow: int


class PoolOverflow(Exception):
    """No room: max_pending_requests or max_requests reached (a circuit breaker)."""


class ConnPool:
    __slots__ = (
        "_connect",
        "_spawn",
        "_timer",
        "busy",
        "connecting",
        "draining",
        "idle",
        "idle_timeout",
        "loop",
        "pending",
        "resources",
        "stats",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        connect: Callable[[], Coroutine[Any, Any, Any]],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        stats: PoolStats,
        *,
        idle_timeout: float = 0.0,
        resources: Resources | None = None,
    ) -> None:
        self.loop = loop
        self._connect = connect  # opens one connection (raises on failure)
        self._spawn = spawn  # runs a coroutine to completion (keeps a reference)
        self.stats = stats
        self.idle_timeout = idle_timeout
        self.resources = resources  # the cluster's circuit breakers, shared by its pools
        self.idle: collections.deque[Any] = collections.deque()
        self.busy: set[Any] = set()
        self.connecting = 0
        self.pending: collections.deque[Waiter] = collections.deque()
        self.draining = False  # retired host or replaced cluster: nothing goes back to idle
        self._timer: asyncio.TimerHandle | None = None

    @property
    def total(self) -> int:
        return len(self.idle) + len(self.busy) + self.connecting

    def new_stream(self, waiter: Waiter, fresh: bool = False) -> Waiter | None:
        """A connection for ``waiter``: an idle one now (None is returned), or the next one
        free (``waiter`` is returned: it is queued; ``cancel`` it if it goes away). ``fresh``
        skips the idle ones (a retry after a stale keep-alive connection)."""
        res = self.resources
        if res is not None and res.rq >= res.max_requests:
            self._overflow(waiter)
            return None
        if not fresh:
            idle = self.idle
            while idle:
                conn = idle.pop()  # most recently used first
                if conn.is_open():
                    self.busy.add(conn)
                    if res is not None:
                        res.rq += 1
                    waiter.on_pool_ready(conn)
                    return None
                self._closed_idle(conn)  # closing already: out of the pool, and counted out
        if res is not None:
            if res.pending >= res.max_pending:
                self._overflow(waiter)
                return None
            res.pending += 1
        stats = self.stats
        stats.upstream_rq_pending_total += 1
        stats.upstream_rq_pending_active += 1
        self.pending.append(waiter)
        if self.connecting < len(self.pending):
            self._connect_if_allowed()
        return waiter

    def _overflow(self, waiter: Waiter) -> None:
        self.stats.upstream_rq_pending_overflow += 1  # Envoy counts max_requests' here too
        waiter.on_pool_failure(PoolOverflow())

    def _connect_if_allowed(self) -> None:
        """Open a connection unless max_connections is reached; a pool with none opens one
        anyway (Envoy: a request queued here would otherwise have nothing to wait for)."""
        res = self.resources
        if res is not None:
            if res.cx >= res.max_connections and self.total > 0:
                if not self.idle:
                    self.stats.upstream_cx_overflow += 1  # waits for a busy one to be released
                    return
                # idle connections a fresh try may not take (the stale keep-alive retry):
                # the oldest makes room for the new one
                self._closed_idle(self.idle.popleft())
            res.cx += 1
        self.connecting += 1
        self._spawn(self._open())

    def cancel(self, waiter: Waiter) -> None:
        """The waiter went away (the client left) before it had a connection."""
        try:
            self.pending.remove(waiter)
        except ValueError:
            return
        self._unqueue()
        self.stats.upstream_rq_cancelled += 1

    async def _open(self) -> None:
        try:
            conn = await self._connect()
            if not conn.is_open():  # the upstream closed it before it could be used
                raise ConnectionResetError(errno.ECONNRESET, os.strerror(errno.ECONNRESET))
        except Exception as exc:  # any failure to connect fails a waiter, never hangs it
            self.connecting -= 1
            res = self.resources
            if res is not None:
                res.cx -= 1
            if self.pending:
                self._unqueue()
                self.pending.popleft().on_pool_failure(exc)
            self._replace()  # the other waiters, at max_connections, need a connect of their own
            return
        self.connecting -= 1
        self.busy.add(conn)
        res = self.resources
        if res is not None:
            res.rq += 1  # as if busy: release() counts it out
        self.release(conn)

    def _unqueue(self) -> None:
        self.stats.upstream_rq_pending_active -= 1
        res = self.resources
        if res is not None:
            res.pending -= 1

    def release(self, conn: Any) -> None:
        """A connection is free again: the next waiter takes it, or it goes idle (or closes, if
        it cannot be reused)."""
        busy = self.busy
        if conn not in busy:
            conn.close()  # it closed meanwhile: forget() counted it out
            return
        busy.remove(conn)
        res = self.resources
        if res is not None:
            res.rq -= 1
        if not conn.reusable or (self.draining and not self.pending):
            if res is not None:
                res.cx -= 1
            conn.close()  # in neither set now: forget() has nothing to do
            self._replace()
            return
        if self.pending:  # even draining: a waiter queued here has nowhere else to go
            self.busy.add(conn)
            self._unqueue()
            if res is not None:
                res.rq += 1
            self.pending.popleft().on_pool_ready(conn)
            return
        conn.idle_since = self.loop.time()
        self.idle.append(conn)
        if self._timer is None and self.idle_timeout > 0:
            self._timer = self.loop.call_at(conn.idle_since + self.idle_timeout, self._expire)

    def _closed_idle(self, conn: Any) -> None:
        """An idle connection taken out of ``idle`` to close: counted out here, since
        forget() no longer finds it."""
        res = self.resources
        if res is not None:
            res.cx -= 1
        conn.close()

    def _replace(self) -> None:
        """A connection closed while requests wait (at max_connections): open another."""
        if self.connecting < len(self.pending):
            self._connect_if_allowed()

    def forget(self, conn: Any) -> None:
        """A connection closed (idle or busy): it leaves the pool (once, however often told)."""
        res = self.resources
        if conn in self.busy:
            self.busy.remove(conn)
            if res is not None:
                res.rq -= 1
                res.cx -= 1
        elif conn in self.idle:
            self.idle.remove(conn)
            if res is not None:
                res.cx -= 1
        else:
            return
        self._replace()

    def _expire(self) -> None:
        self._timer = None
        deadline = self.loop.time() - self.idle_timeout
        idle = self.idle
        while idle and idle[0].idle_since <= deadline:
            self.stats.upstream_cx_idle_timeout += 1
            self._closed_idle(idle.popleft())
        if idle:
            self._timer = self.loop.call_at(idle[0].idle_since + self.idle_timeout, self._expire)

    def close_idle(self) -> None:
        while self.idle:
            self._closed_idle(self.idle.pop())
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def drain(self) -> None:
        """Busy connections finish their request, then close; idle ones close now."""
        self.draining = True
        self.close_idle()
