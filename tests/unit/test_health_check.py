"""Active health checks (udsproxy.upstream.health_check) without sockets: a real Cluster on the
fake loop, each check's connection an UpstreamConnection on a FakeTransport, responses fed as
bytes. Envoy's state machine (first check, thresholds, immediate failure, retriable statuses,
timeouts, PENDING_ACTIVE_HC), its intervals and jitter bounds, the workers' turns, the request
it sends, and that closing the cluster leaves no timer."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from tests.unit.fakes import FakeLoop, FakeTransport
from udsproxy.config import schema
from udsproxy.upstream.cluster import Cluster, Host
from udsproxy.upstream.connection import UpstreamConnection
from udsproxy.upstream.health import ACTIVE_HC_TIMEOUT, FAILED_ACTIVE_HC, PENDING_ACTIVE_HC
from udsproxy.upstream.health_check import (
    CHANGE_PENDING,
    CHANGED,
    UNCHANGED,
    HealthChecker,
    request_head,
)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
DOWN = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
CHECK = schema.HealthCheck(
    timeout=1.0,
    interval=5.0,
    unhealthy_threshold=3,
    healthy_threshold=2,
    no_traffic_interval=60.0,
    no_traffic_healthy_interval=60.0,
    unhealthy_interval=5.0,
    unhealthy_edge_interval=5.0,
    healthy_edge_interval=5.0,
    path="/healthz",
)


class Checked:
    """A cluster with health checks on the fake loop; ``host(i)``'s session's connection is a
    FakeTransport that the test answers."""

    def __init__(self, check: schema.HealthCheck = CHECK, hosts: int = 1, **kw: Any) -> None:
        self.loop = FakeLoop()
        endpoints = kw.pop("endpoints", None) or tuple(
            schema.Endpoint(address=schema.Pipe(path=f"/nonexistent/{i}")) for i in range(hosts)
        )
        config = schema.Cluster(name="hugo", endpoints=endpoints, health_check=check, **kw)
        loop: asyncio.AbstractEventLoop = self.loop  # type: ignore[assignment]
        self.cluster = Cluster(config, loop, workers=kw.get("workers", 1))
        checker = self.cluster.checker
        assert checker is not None
        self.checker = checker
        self.checker.rng = random.Random(7)
        self.transports: dict[Host, FakeTransport] = {}

    def host(self, i: int = 0) -> Host:
        return self.cluster.hosts[i]

    def attach(self, i: int = 0) -> FakeTransport:
        """The host's check connection, open (as if connected)."""
        host = self.host(i)
        session = self.checker.sessions[host]
        conn = UpstreamConnection(self.checker.owner)
        transport = FakeTransport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        session.conn = conn
        self.transports[host] = transport
        return transport

    def next_delay(self, i: int = 0) -> float:
        timer = self.checker.sessions[self.host(i)].timer
        assert timer is not None
        return float(timer.when) - self.loop.now  # type: ignore[arg-type]

    def check(self, answer: bytes | None, i: int = 0) -> bytes:
        """Run the host's next check; answer it (None: no answer). The request sent."""
        self.loop.advance(self.next_delay(i))
        transport = self.transports[self.host(i)]
        sent = transport.take()
        if answer is not None:
            conn = self.checker.sessions[self.host(i)].conn
            assert conn is not None
            conn.data_received(answer)
        return sent

    def stats(self) -> dict[str, int]:
        hc = self.cluster.stats.health_check
        assert hc is not None
        return {name: getattr(hc, name) for name in (*hc.COUNTERS, *hc.GAUGES)}


@pytest.fixture
def checked() -> Iterator[Checked]:
    c = Checked()
    c.cluster.start()
    c.attach()
    yield c
    c.cluster.close()
    c.loop.close()


def test_a_host_starts_failed_and_its_first_pass_makes_it_healthy(checked: Checked) -> None:
    host = checked.host()
    assert host.health_flags == FAILED_ACTIVE_HC
    assert checked.next_delay() == 0  # the first check goes at once (no initial_jitter)
    request = checked.check(OK)
    assert request == b"GET /healthz HTTP/1.1\r\nhost: hugo\r\nuser-agent: Envoy/HC\r\n\r\n"
    assert host.health_flags == 0  # one pass is enough the first time (Envoy)
    assert checked.stats() == {
        "attempt": 1, "success": 1, "failure": 0, "passive_failure": 0, "network_failure": 0,
        "verify_cluster": 0, "healthy": 1,
    }  # fmt: skip
    assert checked.cluster.pick() is host


def test_an_unexpected_status_fails_the_host_at_once(checked: Checked) -> None:
    host = checked.host()
    checked.check(OK)
    checked.check(DOWN)
    assert host.health_flags == FAILED_ACTIVE_HC
    stats = checked.stats()
    assert (stats["failure"], stats["network_failure"], stats["healthy"]) == (1, 0, 0)
    # healthy_threshold (2) passes in a row bring it back; a failure in between restarts
    checked.check(OK)
    assert host.health_flags == FAILED_ACTIVE_HC
    checked.check(DOWN)
    checked.check(OK)
    assert host.health_flags == FAILED_ACTIVE_HC
    checked.check(OK)
    assert host.health_flags == 0
    assert checked.stats()["healthy"] == 1


def test_network_failures_need_unhealthy_threshold_in_a_row(checked: Checked) -> None:
    host = checked.host()
    checked.check(OK)
    session = checked.checker.sessions[host]
    for n in range(1, 3):
        checked.check(None)
        session.conn.connection_lost(None)  # type: ignore[union-attr]  # reset mid-check
        assert host.health_flags == 0, n
        checked.attach()
    checked.check(OK)  # a pass resets the count
    for _ in range(3):
        checked.check(None)
        session.conn.connection_lost(None)  # type: ignore[union-attr]
        checked.attach()
    assert host.health_flags == FAILED_ACTIVE_HC
    stats = checked.stats()
    assert (stats["failure"], stats["network_failure"]) == (5, 5)


def test_retriable_statuses_count_towards_the_threshold() -> None:
    c = Checked(replace(CHECK, retriable_statuses=((503, 504),), unhealthy_threshold=2))
    c.cluster.start()
    c.attach()
    c.check(OK)
    c.check(DOWN)
    assert c.host().health_flags == 0
    c.check(DOWN)
    assert c.host().health_flags == FAILED_ACTIVE_HC
    assert c.stats()["network_failure"] == 0
    c.cluster.close()
    c.loop.close()


def test_a_timeout_aborts_the_connection_and_counts_as_network(checked: Checked) -> None:
    host = checked.host()
    checked.check(OK)
    transport = checked.transports[host]
    for _ in range(3):
        checked.check(None)
        checked.loop.advance(CHECK.timeout)  # no answer within timeout
        assert transport.aborted
        transport = checked.attach()
    assert host.health_flags == FAILED_ACTIVE_HC | ACTIVE_HC_TIMEOUT
    assert checked.stats()["network_failure"] == 3
    checked.check(DOWN)  # failing for another reason clears the timeout flag
    assert host.health_flags == FAILED_ACTIVE_HC


def test_a_connection_is_reused_unless_reuse_connection_is_false() -> None:
    for reuse in (True, False):
        c = Checked(replace(CHECK, reuse_connection=reuse))
        c.cluster.start()
        transport = c.attach()
        c.check(OK)
        assert transport.closed is (not reuse)
        session = c.checker.sessions[c.host()]
        assert (session.conn is not None) is reuse
        c.cluster.close()
        c.loop.close()


def test_a_connect_failure_is_a_network_failure() -> None:
    c = Checked(replace(CHECK, unhealthy_threshold=1))
    c.cluster.start()
    c.loop.advance(0)  # the first check: no connection yet, a connect starts
    c.loop.run_tasks()  # the pipe does not exist: refused at once
    assert c.host().health_flags == FAILED_ACTIVE_HC
    assert c.stats()["network_failure"] == 1
    c.cluster.close()
    c.loop.close()


def test_pending_active_hc_keeps_a_host_out_until_its_first_check() -> None:
    c = Checked(ignore_new_hosts_until_first_hc=True)
    host = c.host()
    assert host.health_flags == FAILED_ACTIVE_HC | PENDING_ACTIVE_HC
    assert c.cluster.pick() is None  # excluded, even in panic
    c.cluster.start()
    c.attach()
    c.check(DOWN)  # the first check's end clears it, pass or fail
    assert host.health_flags == FAILED_ACTIVE_HC
    assert c.cluster.pick() is host  # one host, unhealthy: panic routes to it
    c.cluster.close()
    c.loop.close()


def test_no_healthy_host_and_no_panic_picks_none() -> None:
    c = Checked(healthy_panic_threshold=0.0)
    c.cluster.start()
    c.attach()
    assert c.cluster.pick() is None  # not checked yet: unhealthy
    c.check(OK)
    assert c.cluster.pick() is c.host()
    c.check(DOWN)
    assert c.cluster.pick() is None
    c.cluster.close()
    c.loop.close()


def test_intervals_follow_traffic_and_transitions(checked: Checked) -> None:
    checker = checked.checker
    # no traffic yet: no_traffic_interval (no_traffic_healthy_interval once passing)
    assert checker.interval(True, UNCHANGED, 1) == 60.0
    assert checker.interval(False, CHANGED, 1) == 60.0
    checked.cluster.stats.upstream_cx_total = 1  # a connection for a request
    assert checker.interval(True, UNCHANGED, 1) == 5.0
    c2 = replace(
        CHECK, unhealthy_interval=7.0, unhealthy_edge_interval=3.0, healthy_edge_interval=2.0
    )
    checker.config = c2
    assert checker.interval(True, UNCHANGED, 1) == 5.0
    assert checker.interval(True, CHANGE_PENDING, 1) == 2.0
    assert checker.interval(False, CHANGED, 1) == 7.0
    assert checker.interval(False, CHANGE_PENDING, 1) == 3.0
    checked.cluster.stats.upstream_cx_total = 0  # reset counters: the traffic is remembered
    assert checker.interval(True, UNCHANGED, 1) == 5.0


def test_jitter_bounds(checked: Checked) -> None:
    checker = checked.checker
    checked.cluster.stats.upstream_cx_total = 1
    checker.config = replace(CHECK, interval=1.0, interval_jitter=0.2)
    seen = {checker.interval(True, UNCHANGED, 1) for _ in range(2000)}
    assert min(seen) == 1.0 and max(seen) == 1.199  # [interval, interval + jitter), in ms
    checker.config = replace(CHECK, interval=1.0, interval_jitter_percent=50)
    seen = {checker.interval(True, UNCHANGED, 1) for _ in range(2000)}
    assert min(seen) == 1.0 and max(seen) == 1.499
    checker.config = replace(CHECK, interval=1.0, interval_jitter=0.1, interval_jitter_percent=10)
    seen = {checker.interval(True, UNCHANGED, 2) for _ in range(4000)}
    assert min(seen) >= 2.0 and max(seen) < 2.0 + 0.2 + 0.1  # both add, on the scaled interval
    checker.config = replace(CHECK, initial_jitter=0.5)
    seen = {checker.initial_delay() for _ in range(2000)}
    assert min(seen) == 0.0 and max(seen) == 0.499


def test_workers_take_turns() -> None:
    """Worker i of N: first check at once, then after i + 1 intervals, then every N."""
    for worker in (0, 1):
        c = Checked(replace(CHECK, no_traffic_interval=5.0, no_traffic_healthy_interval=5.0))
        c.checker.worker, c.checker.workers = worker, 2
        c.cluster.start()
        c.attach()
        assert c.next_delay() == 0
        c.check(OK)
        assert c.next_delay() == 5.0 * (worker + 1)
        c.check(OK)
        assert c.next_delay() == 10.0
        c.cluster.close()
        c.loop.close()


def test_close_leaves_no_timer_and_aborts_the_check(checked: Checked) -> None:
    checked.check(OK)
    checked.check(None)  # in flight: a timeout timer and the interval to come
    transport = checked.transports[checked.host()]
    checked.cluster.drain()
    assert transport.aborted
    assert all(t.cancelled for t in checked.loop.timers if t.cb.__name__ != "_expire")
    assert all(
        s.timer is None and s.timeout_timer is None for s in checked.checker.sessions.values()
    )


def test_request_head_host_and_headers() -> None:
    check = replace(
        CHECK,
        method="HEAD",
        host="svc.local",
        request_headers_to_add=(
            schema.HeaderValueOption(key="x-a", value="1"),
            schema.HeaderValueOption(
                key="user-agent", value="probe", append_action="OVERWRITE_IF_EXISTS_OR_ADD"
            ),
            schema.HeaderValueOption(key="x-b", value="2", append_action="OVERWRITE_IF_EXISTS"),
            schema.HeaderValueOption(key="x-a", value="3", append_action="ADD_IF_ABSENT"),
            schema.HeaderValueOption(key="x-e", value=""),
        ),
        request_headers_to_remove=("x-nothing",),
    )
    assert request_head(check, "svc.local") == (
        b"HEAD /healthz HTTP/1.1\r\nhost: svc.local\r\nx-a: 1\r\nuser-agent: probe\r\n\r\n"
    )
    removed = replace(CHECK, request_headers_to_remove=("user-agent",))
    assert request_head(removed, "h") == b"GET /healthz HTTP/1.1\r\nhost: h\r\n\r\n"
    # the Host: the endpoint's health_check_config.hostname, then the check's host, then the
    # cluster's name
    endpoints = (
        schema.Endpoint(address=schema.Pipe(path="/x/a"), health_check_hostname="ep.local"),
        schema.Endpoint(address=schema.Pipe(path="/x/b")),
        schema.Endpoint(address=schema.Pipe(path="/x/c"), disable_active_health_check=True),
    )
    c = Checked(replace(CHECK, host="svc.local"), endpoints=endpoints)
    heads = [s.head[0].split(b"\r\n")[1] for s in c.checker.sessions.values()]
    assert heads == [b"host: ep.local", b"host: svc.local"]
    assert c.host(2).health_flags == 0  # never checked: healthy
    c.loop.close()


def test_verify_cluster() -> None:
    c = Checked(replace(CHECK, service_name_matcher=schema.StringMatcher(prefix="hugo")))
    c.cluster.start()
    c.attach()
    c.check(
        b"HTTP/1.1 200 OK\r\nx-envoy-upstream-healthchecked-cluster: hugo-1\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    assert c.host().health_flags == 0
    c.check(OK)  # no header: compared as "" (Envoy), no match: failed at once
    assert c.host().health_flags == FAILED_ACTIVE_HC
    assert c.stats()["verify_cluster"] == 2
    c.cluster.close()
    c.loop.close()


def test_warm_waits_for_every_first_check() -> None:
    async def run() -> None:
        c = Checked(hosts=2)
        checker: HealthChecker = c.checker
        assert not await checker.warm(0.01)
        c.cluster.start()
        c.attach(0)
        c.attach(1)
        c.loop.advance(0)  # both first checks go out
        conns = [checker.sessions[c.host(i)].conn for i in (0, 1)]
        conns[0].data_received(OK)  # type: ignore[union-attr]
        assert not await checker.warm(0.01)
        conns[1].data_received(DOWN)  # type: ignore[union-attr]
        assert await checker.warm(0.01)
        c.cluster.close()
        c.loop.close()

    asyncio.run(run())
