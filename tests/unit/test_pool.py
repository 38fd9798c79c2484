"""The connection pool on its own: fake connections, a fake loop, connects the test completes.

``ConnPool`` knows no stream and no socket: a waiter is anything with ``on_pool_ready`` and
``on_pool_failure``, a connection anything with ``reusable``/``is_open``/``close``. Each connect
the pool starts is a coroutine collected here; the test decides when (and how) it ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from tests.unit.fakes import FakeLoop
from udsproxy.stats.store import ClusterStats
from udsproxy.upstream.pool import ConnPool, PoolOverflow
from udsproxy.upstream.resources import Resources


class Conn:
    """A pooled connection as the pool sees it; its close leaves the pool, as the real one's."""

    count = 0

    def __init__(self, pool: ConnPool) -> None:
        Conn.count += 1
        self.name = f"c{Conn.count}"
        self.pool = pool
        self.closed = False
        self.idle_since = 0.0
        self.reusable = True

    def is_open(self) -> bool:
        return not self.closed

    def close(self) -> None:
        self.closed = True
        self.pool.forget(self)

    def __repr__(self) -> str:
        return self.name


class Waiter:
    def __init__(self) -> None:
        self.conn: Conn | None = None
        self.exc: BaseException | None = None

    def on_pool_ready(self, conn: Any) -> None:
        assert self.conn is None and self.exc is None, "served twice"
        self.conn = conn

    def on_pool_failure(self, exc: BaseException) -> None:
        assert self.conn is None and self.exc is None, "served twice"
        self.exc = exc


class Pool:
    """A pool whose connects wait in ``connects`` until ``connect_ok``/``connect_fail``."""

    def __init__(self, **limits: Any) -> None:
        self.loop = FakeLoop()
        self.stats = ClusterStats()
        self.connects: list[Coroutine[Any, Any, None]] = []
        self._outcomes: list[BaseException | None] = []
        loop: asyncio.AbstractEventLoop = self.loop  # type: ignore[assignment]
        idle = limits.pop("idle_timeout", 0.0)
        resources = Resources(**limits) if limits else None  # the cluster's circuit breakers
        self.pool = ConnPool(
            loop,
            self._connect,
            self.connects.append,
            self.stats,
            idle_timeout=idle,
            resources=resources,
        )

    async def _connect(self) -> Conn:
        exc = self._outcomes.pop(0)
        if exc is not None:
            raise exc
        return Conn(self.pool)

    def _finish(self, outcome: BaseException | None) -> None:
        self._outcomes.append(outcome)
        coro = self.connects.pop(0)  # the oldest connect ends first
        with pytest.raises(StopIteration):
            coro.send(None)

    def connect_ok(self) -> None:
        self._finish(None)

    def connect_fail(self, exc: BaseException) -> None:
        self._finish(exc)

    def take(self, fresh: bool = False) -> Waiter:
        """A waiter that asked for a connection (served now or queued)."""
        w = Waiter()
        self.pool.new_stream(w, fresh)
        return w

    def close(self) -> None:
        for coro in self.connects:
            coro.close()


@pytest.fixture
def pool():
    made: list[Pool] = []

    def factory(**limits: Any) -> Pool:
        p = Pool(**limits)
        made.append(p)
        return p

    yield factory
    for p in made:
        p.close()


def served(p: Pool, n: int) -> list[Conn]:
    """``n`` waiters, each served by a new connection; the connections are busy."""
    waiters = [p.take() for _ in range(n)]
    for _ in range(n):
        p.connect_ok()
    conns = [w.conn for w in waiters]
    assert all(c is not None for c in conns)
    return conns  # type: ignore[return-value]


def test_a_waiter_without_an_idle_connection_queues_and_a_connect_starts(pool):
    p = pool()
    w = Waiter()
    assert p.pool.new_stream(w) is w  # queued: the caller cancels it if it goes away
    assert len(p.connects) == 1 and p.pool.connecting == 1 and p.pool.total == 1
    assert (p.stats.upstream_rq_pending_total, p.stats.upstream_rq_pending_active) == (1, 1)
    p.connect_ok()
    assert w.conn is not None and p.pool.busy == {w.conn}
    assert p.pool.connecting == 0 and p.stats.upstream_rq_pending_active == 0


def test_idle_connections_are_reused_most_recent_first(pool):
    p = pool()
    c1, c2 = served(p, 2)
    p.pool.release(c1)
    p.pool.release(c2)
    assert list(p.pool.idle) == [c1, c2] and not p.pool.busy
    w = Waiter()
    assert p.pool.new_stream(w) is None  # served at once
    assert w.conn is c2 and p.take().conn is c1
    assert not p.connects and p.stats.upstream_rq_pending_total == 2  # only the first two waited


def test_an_idle_connection_that_is_no_longer_open_is_skipped(pool):
    p = pool()
    c1, c2 = served(p, 2)
    p.pool.release(c1)
    p.pool.release(c2)
    c2.closed = True  # the upstream closed it; the pool has not heard yet
    assert p.take().conn is c1
    w = p.take()  # nothing open left idle: a new connection
    assert w.conn is None and len(p.connects) == 1 and not p.pool.idle


def test_waiters_are_served_in_order_as_connections_connect(pool):
    p = pool()
    w1, w2, w3 = p.take(), p.take(), p.take()
    assert len(p.connects) == 3  # one connect per waiter
    p.connect_ok()
    p.connect_ok()
    assert w1.conn is not None and w2.conn is not None and w3.conn is None
    assert p.stats.upstream_rq_pending_active == 1
    p.connect_ok()
    assert w3.conn is not None and len({w1.conn, w2.conn, w3.conn}) == 3


def test_a_released_connection_serves_the_first_waiter(pool):
    p = pool()
    (c1,) = served(p, 1)
    w2, w3 = p.take(), p.take()
    p.pool.release(c1)  # frees up before either connect ends
    assert w2.conn is c1 and w3.conn is None and p.pool.busy == {c1}
    p.connect_ok()  # w2's connect ends: it serves w3
    assert w3.conn is not None and w3.conn is not c1
    p.connect_ok()  # nobody waits any more: it goes idle
    assert len(p.pool.idle) == 1 and p.stats.upstream_rq_pending_active == 0


def test_cancel_takes_the_waiter_out_and_its_connection_goes_idle(pool):
    p = pool()
    w = p.take()
    p.pool.cancel(w)
    assert not p.pool.pending
    assert p.stats.upstream_rq_cancelled == 1 and p.stats.upstream_rq_pending_active == 0
    p.connect_ok()
    assert w.conn is None and len(p.pool.idle) == 1 and not p.pool.busy
    p.pool.cancel(w)  # not queued (any more): nothing to count
    assert p.stats.upstream_rq_cancelled == 1


def test_cancel_of_one_waiter_keeps_the_others_in_order(pool):
    p = pool()
    w1, w2, w3 = p.take(), p.take(), p.take()
    p.pool.cancel(w2)
    for _ in range(3):
        p.connect_ok()
    assert w1.conn is not None and w2.conn is None and w3.conn is not None
    assert len(p.pool.idle) == 1 and p.stats.upstream_rq_pending_active == 0


def test_a_connect_failure_fails_one_waiter(pool):
    p = pool()
    w1, w2 = p.take(), p.take()
    err = ConnectionRefusedError(111, "refused")
    p.connect_fail(err)
    assert w1.exc is err and w2.exc is None and w2.conn is None
    assert p.stats.upstream_rq_pending_active == 1 and p.pool.connecting == 1
    p.connect_ok()
    assert w2.conn is not None and p.stats.upstream_rq_pending_active == 0


def test_a_connect_failure_after_the_waiter_left_fails_nobody(pool):
    p = pool()
    w = p.take()
    p.pool.cancel(w)
    p.connect_fail(OSError(2, "gone"))
    assert w.exc is None and p.pool.total == 0 and p.stats.upstream_rq_pending_active == 0


def test_max_connections_makes_waiters_wait_for_a_release(pool):
    p = pool(max_connections=1)
    (c1,) = served(p, 1)
    w2, w3 = p.take(), p.take()
    assert not p.connects and p.stats.upstream_cx_overflow == 2
    p.pool.release(c1)
    assert w2.conn is c1 and w3.conn is None
    p.pool.release(c1)
    assert w3.conn is c1 and p.pool.total == 1


def test_a_closed_busy_connection_lets_a_new_one_open_at_max_connections(pool):
    p = pool(max_connections=1)
    (c1,) = served(p, 1)
    w2 = p.take()
    assert not p.connects
    c1.close()  # the upstream went away mid-request
    assert len(p.connects) == 1
    p.connect_ok()
    assert w2.conn is not None and w2.conn is not c1 and p.pool.total == 1


def test_a_released_connection_that_cannot_be_reused_is_replaced(pool):
    p = pool(max_connections=1)
    (c1,) = served(p, 1)
    w2 = p.take()
    c1.reusable = False  # e.g. "Connection: close" from the upstream
    p.pool.release(c1)
    assert c1.closed and w2.conn is None and len(p.connects) == 1  # one connect, not two
    p.connect_ok()
    assert w2.conn is not None and p.pool.total == 1


def test_max_pending_overflow_fails_the_waiter_at_once(pool):
    p = pool(max_pending=1)
    w1 = p.take()
    w2 = Waiter()
    assert p.pool.new_stream(w2) is None  # not queued: nothing to cancel
    assert isinstance(w2.exc, PoolOverflow)
    assert p.stats.upstream_rq_pending_overflow == 1
    assert p.stats.upstream_rq_pending_total == 1 and len(p.connects) == 1
    p.connect_ok()
    assert w1.conn is not None


def test_max_pending_does_not_apply_to_an_idle_connection(pool):
    p = pool(max_pending=1)
    (c,) = served(p, 1)
    p.pool.release(c)
    p.pool.resources.max_pending = 0
    assert p.take().conn is c
    w = p.take()
    assert isinstance(w.exc, PoolOverflow) and not p.connects


def test_draining_closes_idle_connections_now_and_busy_ones_when_released(pool):
    p = pool()
    c1, c2 = served(p, 2)
    p.pool.release(c1)
    p.pool.drain()
    assert c1.closed and not p.pool.idle and not c2.closed
    p.pool.release(c2)
    assert c2.closed and not p.pool.idle and p.pool.total == 0


def test_idle_connections_expire_after_the_idle_timeout(pool):
    p = pool(idle_timeout=10.0)
    c1, c2, c3 = served(p, 3)
    p.pool.release(c1)  # at 1000
    p.loop.advance(5.0)
    p.pool.release(c2)  # at 1005
    p.pool.release(c3)
    assert p.take().conn is c3  # taken again: it is not idle, so it does not expire
    p.loop.advance(5.0)
    assert c1.closed and not c2.closed and list(p.pool.idle) == [c2]
    assert p.stats.upstream_cx_idle_timeout == 1
    p.loop.advance(4.9)
    assert not c2.closed
    p.loop.advance(0.2)
    assert c2.closed and not p.pool.idle and not c3.closed
    assert p.stats.upstream_cx_idle_timeout == 2


def test_no_idle_timer_without_an_idle_timeout(pool):
    p = pool()
    (c1,) = served(p, 1)
    p.pool.release(c1)
    assert not p.loop.timers
    p.loop.advance(3600.0)
    assert not c1.closed and list(p.pool.idle) == [c1]


def test_close_idle_cancels_the_timer(pool):
    p = pool(idle_timeout=10.0)
    (c1,) = served(p, 1)
    p.pool.release(c1)
    (timer,) = p.loop.timers
    p.pool.close_idle()
    assert c1.closed and timer.cancelled


def test_fresh_skips_idle_connections(pool):
    # the retry after a stale keep-alive connection: the others in the pool may be stale too
    p = pool()
    (c1,) = served(p, 1)
    p.pool.release(c1)
    w = p.take(fresh=True)
    assert w.conn is None and len(p.connects) == 1 and list(p.pool.idle) == [c1]
    p.connect_ok()
    assert w.conn is not None and w.conn is not c1 and list(p.pool.idle) == [c1]


def test_an_idle_connection_that_closes_leaves_the_pool(pool):
    p = pool()
    c1, c2 = served(p, 2)
    p.pool.release(c1)
    p.pool.release(c2)
    c1.close()  # the upstream closed it while idle
    assert list(p.pool.idle) == [c2] and p.pool.total == 1


def test_a_draining_pool_still_serves_the_waiters_it_has(pool):
    # a host retired (DNS) or a cluster replaced (reload) while a request waits for its connect
    p = pool()
    w = p.take()
    p.pool.drain()
    p.connect_ok()
    assert w.conn is not None and not w.conn.closed
    assert p.stats.upstream_rq_pending_active == 0
    p.pool.release(w.conn)  # nobody waits now: draining closes it
    assert w.conn.closed and not p.pool.idle


def test_a_connect_failure_at_max_connections_starts_a_connect_for_the_next_waiter(pool):
    p = pool(max_connections=1)
    a, b = p.take(), p.take()
    assert len(p.connects) == 1
    p.connect_fail(ConnectionRefusedError(111, "refused"))
    assert isinstance(a.exc, ConnectionRefusedError) and b.exc is None
    assert len(p.connects) == 1  # b's own connect
    p.connect_ok()
    assert b.conn is not None


def test_a_connection_closed_before_its_first_use_fails_the_waiter(pool):
    p = pool()

    async def closed_at_once() -> Conn:
        c = Conn(p.pool)
        c.closed = True  # the upstream accepted and closed (eof before any request)
        return c

    p.pool._connect = closed_at_once  # type: ignore[method-assign]
    w = p.take()
    with pytest.raises(StopIteration):
        p.connects.pop(0).send(None)
    assert isinstance(w.exc, ConnectionResetError)
    assert p.stats.upstream_rq_pending_active == 0 and not p.pool.busy and not p.pool.connecting


# -- circuit breakers: the cluster's counts stay exact on every way a connection leaves ---------


def test_idle_expiry_and_close_idle_count_connections_out(pool):
    p = pool(idle_timeout=1.0, max_connections=2)
    res = p.pool.resources
    a, b = served(p, 2)
    p.pool.release(a)
    p.pool.release(b)
    assert (res.cx, res.rq) == (2, 0)
    p.loop.advance(2.0)  # both expire
    assert res.cx == 0
    w1, w2 = p.take(), p.take()
    assert len(p.connects) == 2  # room for two again, not one at a time
    p.connect_ok()
    p.connect_ok()
    p.pool.release(w1.conn)
    p.pool.release(w2.conn)
    p.pool.close_idle()  # a host going unhealthy, or leaving DNS
    assert (res.cx, res.rq, res.pending) == (0, 0, 0)


def test_a_fresh_try_at_max_connections_closes_an_idle_one_to_make_room(pool):
    # the stale keep-alive retry may not take the idle connections: one of them makes room
    p = pool(max_connections=2)
    res = p.pool.resources
    (a,) = served(p, 1)
    p.pool.release(a)
    res.cx = 2  # another host of the cluster holds the other connection
    w = p.take(fresh=True)
    assert a.closed and len(p.connects) == 1 and res.cx == 2
    p.connect_ok()
    assert w.conn is not None and w.conn is not a
