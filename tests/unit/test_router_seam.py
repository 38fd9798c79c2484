"""The router's one failure path, through fake transports (tests/unit/fakes.py): a try that ends
without a whole response is retried once on a fresh connection, answered locally, or reset.

test_upstream_codec.py covers the malformed responses (502 UPE) and the first retry; these are
the decisions around them: which tries are retried, how often, what the client and the stats see.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Any

import pytest

from tests.unit.fakes import FakeTransport, Harness, complete_connect
from udsproxy.accesslog.formatter import compile_text
from udsproxy.flags import ResponseFlag
from udsproxy.streaminfo import StreamInfo
from udsproxy.upstream.cluster import Host
from udsproxy.upstream.connection import UpstreamConnection
from udsproxy.upstream.resources import Resources

OK_EMPTY = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
RESET = "upstream_reset_before_response_started"  # Envoy's %RESPONSE_CODE_DETAILS%


class Upstream:
    """One upstream connection on a fake transport."""

    def __init__(self, host: Host, requests: int = 0) -> None:
        self.conn = UpstreamConnection(host)
        self.transport = FakeTransport()
        self.conn.connection_made(self.transport)  # type: ignore[arg-type]
        self.conn.requests = requests  # > 0: it served requests before (a reused connection)

    def connected(self) -> Upstream:
        """The connect the pool started ends with this connection."""
        complete_connect(self.conn.host.pool, self.conn)
        return self

    def respond(self, data: bytes) -> None:
        self.conn.data_received(data)

    def lost(self) -> None:
        self.conn.connection_lost(None)


class Proxy:
    def __init__(self) -> None:
        self.h = Harness()
        self.cluster = self.h.ctx.clusters["hugo"]
        self.stats = self.cluster.stats
        (self.host,) = self.cluster.hosts

    def request(self, data: bytes) -> Any:
        self.h.feed(data)
        s = self.h.conn.active
        assert s is not None and s.upstream is not None
        return s

    def reused(self, request: bytes) -> tuple[Any, Upstream]:
        """``request`` sent on a pooled keep-alive connection that served one before."""
        s = self.request(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
        up = Upstream(s.host).connected()
        up.respond(OK_EMPTY)
        assert list(self.host.pool.idle) == [up.conn]
        self.h.transport.take()
        s = self.request(request)
        assert s.upstream.conn is up.conn and s.upstream.reused
        up.transport.take()
        return s, up

    def out(self) -> bytes:
        return self.h.transport.take()

    @property
    def info(self) -> StreamInfo:
        return self.h.recorder.infos[-1]


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    p = Proxy()
    yield p
    p.h.loop.close()


def _connects(p: Proxy) -> int:
    return p.host.pool.connecting


# -- the retry on a stale keep-alive connection ----------------------------------------------------
def test_retry_goes_out_on_a_fresh_connection_and_the_client_sees_one_response(proxy):
    p = proxy
    s, stale = p.reused(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    stale.lost()  # the upstream closed its idle keep-alive as the request went out
    assert s.retried and _connects(p) == 1 and p.out() == b""
    fresh = Upstream(p.host).connected()
    assert fresh.transport.take().startswith(b"GET /2 HTTP/1.1\r\nhost: a\r\n")
    fresh.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    out = p.out()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\nok")
    assert out.count(b"HTTP/1.1") == 1
    assert (p.info.response_code, p.info.response_flags) == (200, 0)
    assert p.info.attempt_count == 2
    # Envoy's pool does this without a retry: neither counted
    assert (p.stats.upstream_rq_retry, p.stats.upstream_rq_retry_success) == (0, 0)
    assert list(p.host.pool.idle) == [fresh.conn]


def test_retry_sends_the_held_request_body_again(proxy):
    p = proxy
    _, stale = p.reused(b"PUT /f HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody")
    stale.lost()
    fresh = Upstream(p.host).connected()
    sent = fresh.transport.take()
    assert sent.startswith(b"PUT /f HTTP/1.1\r\n") and sent.endswith(b"\r\n\r\nbody")


def test_retry_skips_the_other_idle_connections(proxy):
    # they are as old as the stale one: the retry waits for a new connection
    p = proxy
    _, stale = p.reused(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    other = Upstream(p.host, requests=1)
    p.host.pool.busy.add(other.conn)  # as if it had just served a request
    p.host.pool.release(other.conn)
    stale.lost()
    assert list(p.host.pool.idle) == [other.conn] and _connects(p) == 1
    assert other.transport.buffer == b""


def test_post_is_not_retried(proxy):
    p = proxy
    s, stale = p.reused(b"POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody")
    stale.lost()
    out = p.out()
    assert out.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert out.endswith(b"reset reason: connection termination")
    assert not s.retried and _connects(p) == 0
    assert p.info.response_flags == ResponseFlag.UC
    assert p.info.response_code_details == RESET + "{connection_termination}"
    assert p.stats.upstream_rq_retry == 0 and p.stats.upstream_rq_rx_reset == 1


def test_a_request_is_retried_once_only(proxy):
    p = proxy
    s, stale = p.reused(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    stale.lost()
    assert s.retried
    # a connection another stream releases serves the queued retry: it is a reused one too
    second = Upstream(p.host, requests=3)
    p.host.pool.busy.add(second.conn)
    p.host.pool.busy.add(second.conn)  # as if it had just served a request
    p.host.pool.release(second.conn)
    assert s.upstream.conn is second.conn and s.upstream.reused
    second.lost()
    assert p.out().startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert p.info.response_flags == ResponseFlag.UC
    assert p.stats.upstream_rq_retry == 0 and p.stats.upstream_rq_retry_success == 0  # uncounted


def test_close_after_an_interim_response_is_not_retried(proxy):
    # the upstream had answered something: the request may have been acted on
    p = proxy
    s, stale = p.reused(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    stale.respond(b"HTTP/1.1 100 Continue\r\n\r\n")
    stale.lost()
    assert not s.retried
    assert p.out().startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert p.info.response_flags == ResponseFlag.UC


def test_protocol_error_on_a_reused_connection_is_502_not_a_retry(proxy):
    p = proxy
    s, stale = p.reused(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    stale.respond(b"SSH-2.0-OpenSSH_9.2\r\n")
    out = p.out()
    assert out.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert out.endswith(b"reset reason: protocol error")
    assert not s.retried and _connects(p) == 0
    assert p.info.response_flags == ResponseFlag.UPE
    assert p.stats.upstream_cx_protocol_error == 1
    assert stale.transport.aborted and not p.host.pool.idle


# -- after the response started: reset ----------------------------------------------------------
def test_upstream_lost_mid_body_resets_the_client(proxy):
    p = proxy
    s = p.request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    up = Upstream(p.host).connected()
    up.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
    assert p.out().endswith(b"\r\n\r\nhalf")
    up.lost()
    assert p.h.transport.aborted  # the only honest signal: the body is short
    assert not s.retried and p.out() == b""
    assert p.info.response_code == 200 and p.info.response_flags == ResponseFlag.UC
    assert p.info.bytes_sent == 4
    assert p.stats.upstream_rq_rx_reset == 1


# -- the pool's failures ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("exc", "reason", "timeouts"),
    [
        (
            ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
            "immediate connect error: Connection refused",
            0,
        ),
        (TimeoutError(), "connection timeout", 1),
    ],
    ids=["refused", "timeout"],
)
def test_connect_failure_is_503_uf_with_the_reason(proxy, monkeypatch, exc, reason, timeouts):
    p = proxy

    async def connect() -> UpstreamConnection:
        raise exc

    monkeypatch.setattr(p.host.pool, "_connect", connect)
    p.request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    p.h.loop.run_tasks()
    out = p.out()
    assert out.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert out.endswith(b"reset reason: connection failure")
    info = p.info
    assert info.response_flags == ResponseFlag.UF
    assert info.response_code_details == RESET + "{connection_failure}"
    assert info.upstream_transport_failure_reason == reason
    line = compile_text("%UPSTREAM_TRANSPORT_FAILURE_REASON%").format(info)
    assert line == reason.replace(" ", "_")  # Envoy's rendering
    assert p.stats.upstream_cx_connect_fail == 1 and p.host.cx_connect_fail == 1
    assert p.stats.upstream_cx_connect_timeout == timeouts
    assert p.stats.upstream_rq_pending_active == 0


def test_pending_overflow_is_503_uo(proxy):
    p = proxy
    p.host.pool.resources = Resources(max_pending=0)
    p.h.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    out = p.out()
    assert out.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert out.endswith(b"reset reason: overflow")
    assert p.info.response_flags == ResponseFlag.UO
    assert p.info.upstream_transport_failure_reason is None
    assert p.stats.upstream_rq_pending_overflow == 1 and p.stats.upstream_cx_connect_fail == 0
    assert _connects(p) == 0


def test_client_leaving_while_its_request_waits_in_the_pool_cancels_the_waiter(proxy):
    p = proxy
    s = p.request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert s.upstream.waiting and p.stats.upstream_rq_pending_active == 1
    p.h.conn.connection_lost(None)
    assert not p.host.pool.pending
    assert p.stats.upstream_rq_cancelled == 1 and p.stats.upstream_rq_pending_active == 0
    assert p.info.response_flags == ResponseFlag.DC
    up = Upstream(p.host).connected()  # the connect it started still ends: kept for the next
    assert list(p.host.pool.idle) == [up.conn] and up.transport.buffer == b""
