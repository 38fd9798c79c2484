"""Slow clients (issue 12): request_headers_timeout on by default, max_requests_per_connection on
the connection manager, and a configurable delayed_close_timeout. Raw sockets against the
in-process proxy and the Python upstream on a Unix socket."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .support import AccessLog, InProcessProxy, PyUpstream, RawConn, get, wait_until
from .test_timeouts import config, counters

pytestmark = pytest.mark.integration

Inproc = Callable[[dict[str, Any]], InProcessProxy]

_STAT = "http.ingress_http."


def active(p: InProcessProxy) -> int:
    """The listener's open downstream connections (a gauge)."""

    async def read() -> int:
        value: int = p.server.raw_stats()[1][_STAT + "downstream_cx_active"]
        return value

    result: int = p.loop_thread.run(read())
    return result


def test_a_half_head_is_answered_408_and_closed_and_0s_turns_the_timeout_off(
    inproc: Inproc, py_upstream: PyUpstream, tmp_path: Path
) -> None:
    """What the 10 s default does (at a short timeout, to be fast); 0s turns it off."""
    log = tmp_path / "access.log"
    p = inproc(config(py_upstream, log, request_headers_timeout="0.1s"))
    with RawConn(p.address(), 5) as conn:
        conn.send(b"GET /py/x HTTP/1.1\r\nHost: a\r\n")
        response = conn.read_response()
        assert response.status == 408 and response.header("connection") == "close"
        assert conn.closed_by_peer()
    assert get(p.address(), "/py/plain").status == 200
    assert counters(p)[_STAT + "downstream_rq_header_timeout"] == 1
    p.stop()
    lines = AccessLog(log).lines()
    assert "- 408 - request_header_timeout - 22 ua=-" in lines, lines

    off = {
        "request_headers_timeout": "0s",
        "common_http_protocol_options": {"idle_timeout": "0.3s"},
    }
    p = inproc(config(py_upstream, **off))
    with RawConn(p.address(), 5) as conn:
        conn.send(b"GET /py/x HTTP/1.1\r\nHost: a\r\n")
        assert conn.closed_by_peer()  # by the idle timeout, without a response
    stats = counters(p)
    assert stats[_STAT + "downstream_rq_header_timeout"] == 0
    assert stats[_STAT + "downstream_cx_idle_timeout"] == 1


def test_max_requests_per_connection_closes_after_the_nth(
    inproc: Inproc, py_upstream: PyUpstream, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    options = {"common_http_protocol_options": {"max_requests_per_connection": 2}}
    p = inproc(config(py_upstream, log, **options))
    with RawConn(p.address(), 5) as conn:
        conn.send(b"GET /py/a HTTP/1.1\r\nHost: a\r\nUser-Agent: first\r\n\r\n")
        first = conn.read_response()
        assert first.status == 200 and first.header("connection") is None
        conn.send(b"POST /py/b HTTP/1.1\r\nHost: a\r\nUser-Agent: second\r\n")
        conn.send(b"Content-Length: 3\r\n\r\nabc")
        second = conn.read_response()
        assert second.status == 200 and second.header("connection") == "close"
        assert conn.closed_by_peer()
    with RawConn(p.address(), 5) as conn:  # one request is under the limit: kept alive
        conn.send(b"GET /py/c HTTP/1.1\r\nHost: a\r\nUser-Agent: third\r\n\r\n")
        third = conn.read_response()
        assert third.status == 200 and third.header("connection") is None
        assert not conn.closed_by_peer(0.2)
    stats = counters(p)
    assert stats[_STAT + "downstream_cx_max_requests_reached"] == 1
    assert stats[_STAT + "downstream_cx_total"] == 2
    p.stop()
    lines = AccessLog(log).lines()
    for agent in ("first", "second", "third"):
        assert f"{'POST' if agent == 'second' else 'GET'} 200 - via_upstream - " in "\n".join(
            line for line in lines if line.endswith(f"ua={agent}")
        ), lines


def test_max_requests_per_connection_of_one_disables_keep_alive(
    inproc: Inproc, py_upstream: PyUpstream
) -> None:
    options = {"common_http_protocol_options": {"max_requests_per_connection": 1}}
    p = inproc(config(py_upstream, **options))
    for _ in range(3):
        with RawConn(p.address(), 5) as conn:
            conn.send(b"GET /py/a HTTP/1.1\r\nHost: a\r\n\r\n")
            response = conn.read_response()
            assert response.status == 200 and response.header("connection") == "close"
            assert conn.closed_by_peer()
    assert counters(p)[_STAT + "downstream_cx_max_requests_reached"] == 3


def _bad_request_then_hold(p: InProcessProxy) -> RawConn:
    """A malformed request (answered 400, then a delayed close where one is configured), whose
    client reads the response and the FIN but does not close its side."""
    conn = RawConn(p.address(), 5)
    conn.send(b"GARBAGE\r\n\r\n")
    assert conn.read_response().status == 400
    return conn


@pytest.mark.parametrize("delay", [None, "0.1s"])
def test_delayed_close_timeout_closes_a_client_that_does_not(
    inproc: Inproc, py_upstream: PyUpstream, delay: str | None
) -> None:
    """Envoy's default (1 s, unset) and a short one: the proxy sends its FIN, keeps reading and
    discarding, and closes the socket when the timeout runs out."""
    fields = {} if delay is None else {"delayed_close_timeout": delay}
    p = inproc(config(py_upstream, **fields))
    with _bad_request_then_hold(p) as conn:
        assert conn.closed_by_peer()  # the FIN: the proxy reads on, waiting for ours
        conn.send(b"late bytes, discarded")
        assert wait_until(
            lambda: counters(p)[_STAT + "downstream_cx_delayed_close_timeout"] == 1, 5
        )
    stats = counters(p)
    assert stats[_STAT + "downstream_cx_destroy_local"] == 1
    assert active(p) == 0


def test_delayed_close_timeout_zero_closes_at_once(inproc: Inproc, py_upstream: PyUpstream) -> None:
    p = inproc(config(py_upstream, delayed_close_timeout="0s"))
    with _bad_request_then_hold(p) as conn:
        assert conn.closed_by_peer()
        # closed, not lingering: gone without the client closing, and no delayed-close count
        assert wait_until(lambda: active(p) == 0, 5)
    stats = counters(p)
    assert stats[_STAT + "downstream_cx_delayed_close_timeout"] == 0
    assert stats[_STAT + "downstream_cx_destroy_local"] == 1


def test_a_client_that_closes_first_ends_the_delayed_close(
    inproc: Inproc, py_upstream: PyUpstream
) -> None:
    p = inproc(config(py_upstream, delayed_close_timeout="60s"))
    with _bad_request_then_hold(p) as conn:
        assert conn.closed_by_peer()
    assert wait_until(lambda: active(p) == 0, 5)
    assert counters(p)[_STAT + "downstream_cx_delayed_close_timeout"] == 0
