"""Retries at the router's seam, on fake transports and a fake loop: what reaches the client,
what the breakers count, and when the per-try timeout runs. (Found by review; each test failed
before its fix.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.unit.fakes import Harness
from tests.unit.test_router_seam import Upstream
from udsproxy.codec import http1
from udsproxy.config import schema
from udsproxy.upstream.cluster import Cluster, Host
from udsproxy.upstream.resources import Resources

REQ = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
R503 = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 3\r\n\r\nbad"
R200 = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


_made: list[Harness] = []


@pytest.fixture(autouse=True)
def _close_loops() -> Iterator[None]:
    yield
    while _made:
        _made.pop().loop.close()  # the connects the fake loop collected and never ran


def retrying(
    *, per_try_timeout: float = 0.0, num_retries: int = 2, res: Resources | None = None
) -> tuple[Harness, Cluster, Host]:
    policy = schema.RetryPolicy(
        retry_on=("5xx",), num_retries=num_retries, per_try_timeout=per_try_timeout
    )
    route = schema.Route(
        match=schema.RouteMatch(prefix="/"),
        route=schema.RouteAction(cluster="hugo", retry_policy=policy),
    )
    h = Harness(routes=(route,))
    _made.append(h)
    cluster = h.ctx.clusters["hugo"]
    (host,) = cluster.hosts
    if res is not None:
        cluster.resources = host.pool.resources = res
    return h, cluster, host


def test_a_retried_response_never_reaches_the_client_and_the_breakers_balance() -> None:
    res = Resources(max_retries=3)
    h, _, host = retrying(res=res)
    h.feed(REQ)
    first = Upstream(host).connected()
    first.respond(R503)
    assert h.transport.take() == b"" and first.transport.aborted
    assert res.retries == 1
    h.loop.advance(1.0)  # the back-off (at most 25 ms)
    Upstream(host).connected().respond(R200)
    out = h.transport.take()
    assert out.startswith(b"HTTP/1.1 200") and out.count(b"HTTP/1.1") == 1
    first.lost()
    assert (res.rq, res.pending, res.retries, res.cx) == (0, 0, 0, 1)


def test_no_retry_once_a_1xx_went_downstream() -> None:
    h, cluster, host = retrying()
    h.feed(REQ)
    Upstream(host).connected().respond(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + R503)
    out = h.transport.take()
    assert out.startswith(b"HTTP/1.1 103") and b"HTTP/1.1 503" in out
    assert cluster.stats.upstream_rq_retry == 0


def test_the_client_leaving_during_the_back_off_cancels_it() -> None:
    res = Resources()
    h, _, host = retrying(res=res)
    h.feed(REQ)
    Upstream(host).connected().respond(R503)
    assert res.retries == 1
    h.conn.connection_lost(None)
    assert all(t.cancelled for t in h.loop.timers) and res.retries == 0
    h.loop.advance(1.0)
    assert host.pool.connecting == 0  # no retry started for a client that left


def test_per_try_timeout_does_not_cut_a_response_under_way() -> None:
    h, _, host = retrying(per_try_timeout=1.0)
    h.feed(REQ)
    up = Upstream(host).connected()
    up.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
    assert h.transport.take().endswith(b"half")
    h.loop.advance(1.5)  # longer than the per-try timeout: the route timeout alone applies
    assert not h.transport.aborted and not up.transport.aborted
    up.respond(b"-rest!")
    assert h.transport.take() == b"-rest!"


def test_per_try_timeout_starts_with_the_connection_not_in_the_pool_queue() -> None:
    h, _, host = retrying(per_try_timeout=1.0, num_retries=0)
    h.feed(REQ)
    s: Any = h.conn.active
    assert s.upstream.waiting  # its connect is still under way
    h.loop.advance(1.5)
    assert h.transport.take() == b""  # waiting for a connection is not the try's time
    Upstream(host).connected()
    h.loop.advance(1.5)
    out = h.transport.take()
    assert out.startswith(b"HTTP/1.1 504") and s.response_code_details == "upstream_per_try_timeout"


def test_the_retried_reply_is_made_once_per_reply() -> None:
    reply = http1.transport_failure("TLS error: one")
    other = http1.transport_failure("TLS error: two")
    assert http1.retried(reply) is http1.retried(reply)
    assert b"retried and the latest reset reason" in http1.retried(reply).body
    assert http1.retried(other).body.endswith(b"TLS error: two")
