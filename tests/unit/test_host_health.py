"""A host's health flags, the cluster's healthy set and the panic threshold (no sockets)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator

import pytest

from udsproxy.config.schema import Cluster as ClusterConfig
from udsproxy.config.schema import Endpoint, Pipe
from udsproxy.upstream.cluster import Cluster, Host
from udsproxy.upstream.health import (
    FAILED_ACTIVE_HC,
    FAILED_OUTLIER_CHECK,
    PENDING_ACTIVE_HC,
    flag_text,
    flags_from_stats,
    flags_to_stats,
    health_status,
    panic,
)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def cluster(
    loop: asyncio.AbstractEventLoop, n: int, weights: tuple[int, ...] = (), **kw: object
) -> Cluster:
    weights = weights or (1,) * n
    endpoints = tuple(
        Endpoint(address=Pipe(path=f"/tmp/h{i}.sock"), load_balancing_weight=weights[i])
        for i in range(n)
    )
    return Cluster(ClusterConfig(name="c", endpoints=endpoints, **kw), loop)  # type: ignore[arg-type]


def picks(c: Cluster, n: int, avoid: Host | None = None) -> Counter[str]:
    out: Counter[str] = Counter()
    for _ in range(n):
        host = c.pick(avoid)
        out[host.text if host else "-"] += 1
    return out


def test_flag_text_is_envoys() -> None:
    assert flag_text(0) == "healthy"
    assert flag_text(FAILED_OUTLIER_CHECK) == "/failed_outlier_check"
    assert flag_text(FAILED_ACTIVE_HC | FAILED_OUTLIER_CHECK) == (
        "/failed_active_hc/failed_outlier_check"
    )
    assert flag_text(PENDING_ACTIVE_HC) == "/pending_active_hc"
    assert health_status(FAILED_OUTLIER_CHECK) == {
        "eds_health_status": "HEALTHY",
        "failed_outlier_check": True,
    }


def test_flags_survive_the_sum_over_workers() -> None:
    a: dict[str, int] = {"rq_total": 1}
    b: dict[str, int] = {"rq_total": 2}
    flags_to_stats(FAILED_OUTLIER_CHECK, a)
    flags_to_stats(FAILED_OUTLIER_CHECK | FAILED_ACTIVE_HC, b)
    summed = {k: a.get(k, 0) + b.get(k, 0) for k in a.keys() | b.keys()}
    assert flags_from_stats(summed) == FAILED_OUTLIER_CHECK | FAILED_ACTIVE_HC
    assert summed == {"rq_total": 3}  # the flags' counts are taken out


def test_panic_rule() -> None:
    assert not panic(1, 1, 50)
    assert panic(0, 1, 50)
    assert not panic(0, 1, 0)  # 0 disables panic
    assert panic(4, 10, 50) and not panic(5, 10, 50)
    # overprovisioned (x1.4) to 100 %: never panic, whatever the threshold
    assert not panic(8, 10, 100) and panic(7, 10, 100)


def test_plain_round_robin_and_avoid(loop: asyncio.AbstractEventLoop) -> None:
    c = cluster(loop, 3)
    a, b, _ = c.hosts
    assert [h.text for h in (c.pick(), c.pick(), c.pick(), c.pick())] == [
        "/tmp/h0.sock", "/tmp/h1.sock", "/tmp/h2.sock", "/tmp/h0.sock",
    ]  # fmt: skip
    assert c.pick(avoid=b) is not b  # h1's turn: the next one instead
    assert picks(c, 300, avoid=a)["/tmp/h0.sock"] == 0
    one = cluster(loop, 1)
    assert one.pick(avoid=one.hosts[0]) is one.hosts[0]  # nothing else: the same host


def test_unhealthy_host_leaves_the_rotation(loop: asyncio.AbstractEventLoop) -> None:
    c = cluster(loop, 3)
    assert c.healthy_count == 3
    c.hosts[1].health_flags |= FAILED_OUTLIER_CHECK
    c.health_changed()
    assert c.healthy_count == 2
    assert picks(c, 100) == {"/tmp/h0.sock": 50, "/tmp/h2.sock": 50}
    assert c.stats.lb_healthy_panic == 0
    c.hosts[1].health_flags = 0
    c.health_changed()
    assert len(picks(c, 30)) == 3


def test_panic_spreads_over_every_host(loop: asyncio.AbstractEventLoop) -> None:
    c = cluster(loop, 3)
    for host in c.hosts[:2]:
        host.health_flags |= FAILED_ACTIVE_HC
    c.health_changed()  # 1 of 3 healthy: 33 % < 50 %
    assert picks(c, 30) == {"/tmp/h0.sock": 10, "/tmp/h1.sock": 10, "/tmp/h2.sock": 10}
    assert c.stats.lb_healthy_panic == 30


def test_one_endpoint_never_locks_itself_out_by_default(loop: asyncio.AbstractEventLoop) -> None:
    c = cluster(loop, 1)
    c.hosts[0].health_flags = FAILED_OUTLIER_CHECK
    c.health_changed()
    assert c.pick() is c.hosts[0]  # panic: 503 UF from the connect, never UH
    off = cluster(loop, 1, healthy_panic_threshold=0.0)
    off.hosts[0].health_flags = FAILED_OUTLIER_CHECK
    off.health_changed()
    assert off.pick() is None  # panic disabled: no healthy upstream (UH)


def test_pending_active_hc_is_never_picked(loop: asyncio.AbstractEventLoop) -> None:
    c = cluster(loop, 2)
    for host in c.hosts:
        host.health_flags = PENDING_ACTIVE_HC
    c.health_changed()
    assert c.pick() is None  # excluded, even from panic
    c.hosts[0].health_flags = 0
    c.health_changed()
    assert picks(c, 4) == {"/tmp/h0.sock": 4}


def test_weights_hold_among_the_healthy(loop: asyncio.AbstractEventLoop) -> None:
    c = cluster(loop, 3, weights=(3, 1, 5))
    c.hosts[2].health_flags = FAILED_OUTLIER_CHECK
    c.health_changed()
    assert picks(c, 400) == {"/tmp/h0.sock": 300, "/tmp/h1.sock": 100}


class _Conn:
    def __init__(self) -> None:
        self.draining = False
        self.closed = False

    def is_open(self) -> bool:
        return not self.closed

    def close(self) -> None:
        self.closed = True


def test_going_unhealthy_drains_the_hosts_connections(loop: asyncio.AbstractEventLoop) -> None:
    c = cluster(loop, 2)
    host = c.hosts[0]
    idle, busy = _Conn(), _Conn()
    host.pool.idle.append(idle)
    host.pool.busy.add(busy)
    host.health_flags = FAILED_OUTLIER_CHECK
    c.health_changed()
    assert idle.closed and not host.pool.idle  # idle ones close now
    assert busy.draining and not busy.closed  # busy ones once their request is done
    fresh = _Conn()
    host.pool.busy.add(fresh)
    c.health_changed()  # still unhealthy: no second drain
    assert not fresh.draining
