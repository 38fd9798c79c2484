"""The connection manager's timeouts (issue 11): request_headers_timeout (the slowloris
defence), max_connection_duration with its drain, stream_idle_timeout, and the cluster's
connect_timeout kept apart from the pool's idle timeout. Real clients against the in-process
proxy, the Python upstream on a Unix socket, and small scripted upstreams."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import SockPaths
from .support import (
    FILE_LOG_TYPE,
    UF_BODY,
    AccessLog,
    InProcessProxy,
    PyUpstream,
    RawConn,
    bootstrap,
    cluster,
    get,
    listener,
    route,
    vhost,
)

pytestmark = pytest.mark.integration

Inproc = Callable[[dict[str, Any]], InProcessProxy]

# what these tests read in a log line: the flags, the details and the transport failure reason
_FORMAT = (
    "%REQ(:METHOD)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% "
    "%UPSTREAM_TRANSPORT_FAILURE_REASON% %BYTES_SENT% ua=%REQ(USER-AGENT)%\n"
)


def detail_log(path: Path) -> list[dict[str, Any]]:
    return [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": FILE_LOG_TYPE,
                "path": str(path),
                "log_format": {"text_format_source": {"inline_string": _FORMAT}},
            },
        }
    ]


def logged(lst: dict[str, Any], log: Path) -> dict[str, Any]:
    """``lst`` (support.listener) with the access log of ``detail_log``."""
    hcm = lst["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["access_log"] = detail_log(log)
    return lst


def config(py: PyUpstream, log: Path | None = None, **hcm: Any) -> dict[str, Any]:
    lst = listener([vhost("py", [route("py", prefix="/")])], **hcm)
    return bootstrap([lst if log is None else logged(lst, log)], [cluster("py", py.socket_path)])


def counters(p: InProcessProxy) -> dict[str, int]:
    async def read() -> dict[str, int]:
        raw_counters: dict[str, int] = p.server.raw_stats()[0]
        return raw_counters

    result: dict[str, int] = p.loop_thread.run(read())
    return result


def duration(seconds: str, drain: str | None = "0.3s", **hcm: Any) -> dict[str, Any]:
    """The HCM fields of a max_connection_duration."""
    hcm["common_http_protocol_options"] = {"max_connection_duration": seconds}
    if drain is not None:
        hcm["drain_timeout"] = drain
    return hcm


# -- request_headers_timeout ---------------------------------------------------------------------


def test_request_headers_timeout_answers_a_half_head_with_408_and_closes(
    inproc: Inproc, py_upstream: PyUpstream, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    p = inproc(config(py_upstream, log, request_headers_timeout="0.4s"))
    with RawConn(p.address(), 5) as conn:  # half a head, then silence
        conn.send(b"GET /py/x HTTP/1.1\r\nHost: a\r\nUser-Agent: half\r\n")
        response = conn.read_response()
        assert response.status == 408 and response.body == b"request header timeout"
        assert response.header("connection") == "close"
        assert response.header("content-type") == "text/plain"
        assert conn.closed_by_peer()
    with RawConn(p.address(), 5) as conn:  # one byte: the clock starts at the head's first
        conn.send(b"G")
        assert conn.read_response().status == 408
        assert conn.closed_by_peer()
    with RawConn(p.address(), 5) as conn:  # slowloris: busy, never idle, the head never ends
        for byte in b"GET /py/x HTTP/1.1\r\nHost: a\r\n" + b"X-Pad: " + b"p" * 200:
            if select.select([conn.sock], [], [], 0)[0]:
                break  # answered mid-trickle
            conn.send(bytes([byte]))
            time.sleep(0.02)
        else:
            pytest.fail("a head trickled for 4.6 s was never answered")
        assert conn.read_response().status == 408
    # a normal client is served, on the same listener, meanwhile and after
    assert get(p.address(), "/py/plain").status == 200
    with RawConn(p.address(), 5) as conn:
        time.sleep(0.6)  # idle longer than the timeout before its head: not timed
        conn.send(b"GET /py/a HTTP/1.1\r\nHost: a\r\n")
        time.sleep(0.1)  # a head in two reads, within the timeout
        conn.send(b"\r\n")
        assert conn.read_response().status == 200
        time.sleep(0.6)  # idle between requests: not timed either
        conn.send(b"GET /py/b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert conn.read_response().status == 200
    assert counters(p)["http.ingress_http.downstream_rq_header_timeout"] == 3
    p.stop()
    lines = AccessLog(log).lines()
    timed_out = [line for line in lines if " 408 " in line]
    # Envoy's stream has no method yet (logged "-"), no flag, and the details
    assert timed_out == ["- 408 - request_header_timeout - 22 ua=-"] * 3, lines
    assert sum(" 200 - via_upstream " in line for line in lines) == 3, lines


def test_request_headers_timeout_of_a_head_pipelined_behind_a_slow_request(
    inproc: Inproc, py_upstream: PyUpstream
) -> None:
    """Its clock starts when the request before it is done (Envoy reads it only then)."""
    p = inproc(config(py_upstream, request_headers_timeout="0.4s"))
    with RawConn(p.address(), 10) as conn:
        conn.send(b"GET /py/slow?ms=700 HTTP/1.1\r\nHost: a\r\n\r\nGET /py/b HTTP/1.1\r\nHo")
        t0 = time.monotonic()
        assert conn.read_response().status == 200  # longer than the timeout: no early 408
        second = conn.read_response()
        assert second.status == 408 and second.body == b"request header timeout"
        assert time.monotonic() - t0 > 0.95
    assert counters(p)["http.ingress_http.downstream_rq_header_timeout"] == 1


def test_request_headers_timeout_zero_leaves_a_half_head_to_the_idle_timeout(
    inproc: Inproc, py_upstream: PyUpstream
) -> None:
    # 0s turns off udsproxy's 10 s default
    idle = {"common_http_protocol_options": {"idle_timeout": "0.5s"}}
    p = inproc(config(py_upstream, request_headers_timeout="0s", **idle))
    with RawConn(p.address(), 5) as conn:
        conn.send(b"GET /py/x HTTP/1.1\r\nHost: a\r\n")
        assert conn.closed_by_peer(3)  # closed by the idle timeout, no 408
    stats = counters(p)
    assert stats["http.ingress_http.downstream_rq_header_timeout"] == 0
    assert stats["http.ingress_http.downstream_cx_idle_timeout"] == 1


# -- max_connection_duration ---------------------------------------------------------------------


def test_max_connection_duration_drains_an_idle_connection(
    inproc: Inproc, py_upstream: PyUpstream
) -> None:
    p = inproc(config(py_upstream, **duration("0.3s", drain="0.3s")))
    with RawConn(p.address(), 5) as conn:
        conn.send(b"GET /py/a HTTP/1.1\r\nHost: a\r\n\r\n")
        response = conn.read_response()
        assert response.status == 200 and response.header("connection") is None
        t0 = time.monotonic()
        assert conn.closed_by_peer(3)  # reached at 0.3 s, closed at the drain's end
        assert time.monotonic() - t0 > 0.4
    with RawConn(p.address(), 5) as conn:  # never sent a byte: the same
        assert conn.closed_by_peer(3)
    stats = counters(p)
    assert stats["http.ingress_http.downstream_cx_max_duration_reached"] == 2
    assert stats["http.ingress_http.downstream_cx_idle_timeout"] == 0


def test_max_connection_duration_the_next_response_closes(
    inproc: Inproc, py_upstream: PyUpstream, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    p = inproc(config(py_upstream, log, **duration("0.3s", drain="5s")))
    with RawConn(p.address(), 5) as conn:
        conn.send(b"GET /py/a HTTP/1.1\r\nHost: a\r\n\r\n")
        assert conn.read_response().header("connection") is None
        time.sleep(0.45)  # reached; the drain (5 s) still running
        conn.send(b"GET /py/b HTTP/1.1\r\nHost: a\r\nUser-Agent: last\r\n\r\n")
        response = conn.read_response()
        assert response.status == 200 and response.header("connection") == "close"
        assert conn.closed_by_peer()
    with RawConn(p.address(), 5) as conn:  # a response under way when reached: its own
        conn.send(b"GET /py/slow?ms=600 HTTP/1.1\r\nHost: a\r\n\r\n")
        response = conn.read_response()
        assert response.status == 200 and response.header("connection") == "close"
        assert conn.closed_by_peer()
    with RawConn(p.address(), 5) as conn:  # a local reply too
        conn.send(b"GET /py/a HTTP/1.1\r\nHost: a\r\n\r\n")
        conn.read_response()
        time.sleep(0.45)
        conn.send(b"GET /py/a HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n")
        conn.send(b"Transfer-Encoding: chunked\r\n\r\n")  # refused: 400
        response = conn.read_response()
        assert response.status == 400 and response.header("connection") == "close"
    assert counters(p)["http.ingress_http.downstream_cx_max_duration_reached"] == 3
    p.stop()
    assert "GET 200 - via_upstream - 10 ua=last" in AccessLog(log).lines()


def test_max_connection_duration_drain_end_closes_after_the_response_under_way(
    inproc: Inproc, py_upstream: PyUpstream
) -> None:
    """A response begun before the limit goes out as it was (no `connection: close`); when
    the drain ends under it, the connection closes after it, as Envoy's does."""
    p = inproc(config(py_upstream, **duration("0.2s", drain="0.2s")))
    with RawConn(p.address(), 5) as conn:
        conn.send(b"GET /py/chunked?n=3&size=10 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert conn.read_response().status == 200  # before the limit: kept alive
        time.sleep(0.1)
        conn.send(b"GET /py/slow?ms=500 HTTP/1.1\r\nHost: a\r\n\r\n")
        response = conn.read_response()
        assert response.status == 200 and response.header("connection") == "close"
        assert conn.closed_by_peer()


def test_http1_safe_max_connection_duration(inproc: Inproc, py_upstream: PyUpstream) -> None:
    """No drain timer: an idle connection stays until its next request, answered with
    `connection: close`."""
    hcm = duration("0.2s", drain=None, http1_safe_max_connection_duration=True)
    p = inproc(config(py_upstream, **hcm))
    with RawConn(p.address(), 5) as conn:
        conn.send(b"GET /py/a HTTP/1.1\r\nHost: a\r\n\r\n")
        assert conn.read_response().header("connection") is None
        time.sleep(0.6)  # past the limit and any drain: still open, idle
        assert counters(p)["http.ingress_http.downstream_cx_max_duration_reached"] == 1
        conn.send(b"GET /py/b HTTP/1.1\r\nHost: a\r\n\r\n")
        response = conn.read_response()
        assert response.status == 200 and response.header("connection") == "close"
        assert conn.closed_by_peer()
    assert counters(p)["http.ingress_http.downstream_cx_max_duration_reached"] == 1


# -- stream_idle_timeout ---------------------------------------------------------------------------


@pytest.fixture
def stalling_upstream(sock_path: SockPaths) -> Iterator[str]:
    """A UDS upstream that answers each request with a head and half its body, then stalls."""
    path = sock_path("stall")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf.")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path
    server.close()
    for conn in held:
        conn.close()
    thread.join(5)


def test_stream_idle_timeout_408_before_the_response_reset_after(
    inproc: Inproc, py_upstream: PyUpstream, stalling_upstream: str, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    no_idle = route("py", prefix="/py/patient")
    no_idle["route"]["idle_timeout"] = "0s"  # the route's 0 disables it for its requests
    cfg = bootstrap(
        [
            logged(
                listener(
                    [vhost("py", [no_idle, route("py", prefix="/py"), route("stall", prefix="/")])],
                    stream_idle_timeout="0.3s",
                ),
                log,
            )
        ],
        [cluster("py", py_upstream.socket_path), cluster("stall", stalling_upstream)],
    )
    p = inproc(cfg)
    response = get(p.address(), "/py/slow?ms=1000", headers={"User-Agent": "before"})
    assert response.status == 408 and response.body == b"stream timeout"
    assert get(p.address(), "/py/patient/slow?ms=600").status == 200
    with RawConn(p.address(), 5) as conn:  # before its headers, the HCM's applies
        conn.send(b"GET /py/x HTTP/1.1\r\nHost: a\r\n")
        response = conn.read_response()
        assert response.status == 408 and response.body == b"stream timeout"
        assert conn.closed_by_peer()
    with RawConn(p.address(), 5) as conn:  # headers sent, then nothing: the stream is reset
        conn.send(b"GET /stalled HTTP/1.1\r\nHost: a\r\nUser-Agent: after\r\n\r\n")
        status, _, headers = conn.read_head()
        assert status == 200 and ("content-length", "10") in headers
        assert conn.read_until_eof() == b"half."  # cut short
    stats = counters(p)
    assert stats["http.ingress_http.downstream_rq_idle_timeout"] == 3
    p.stop()
    lines = AccessLog(log).lines()
    assert "GET 408 SI stream_idle_timeout - 14 ua=before" in lines, lines
    assert "- 408 SI stream_idle_timeout - 14 ua=-" in lines, lines
    assert "GET 200 SI stream_idle_timeout - 5 ua=after" in lines, lines  # as Envoy sets it


def test_stream_idle_timeout_zero_disables(inproc: Inproc, py_upstream: PyUpstream) -> None:
    p = inproc(config(py_upstream, stream_idle_timeout="0s"))
    assert get(p.address(), "/py/slow?ms=400").status == 200


# -- connect_timeout, apart from the pool's idle timeout -------------------------------------


@pytest.fixture
def full_backlog_tcp() -> Iterator[tuple[str, int]]:
    """A TCP listener on loopback that never accepts, its accept queue full: the kernel drops
    further SYNs, so a connect neither succeeds nor fails until the client gives up."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    address = server.getsockname()
    fillers: list[socket.socket] = []
    try:
        for _ in range(16):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            fillers.append(c)
            c.settimeout(0.3)
            try:
                c.connect(address)
            except TimeoutError:
                break  # the queue is full
        else:
            pytest.skip("could not fill the TCP accept queue on loopback")
        yield address
    finally:
        for c in fillers:
            c.close()
        server.close()


def tcp_cluster(name: str, address: tuple[str, int], connect_timeout: str) -> dict[str, Any]:
    out = cluster(name, "/unused", connect_timeout=connect_timeout)
    endpoint = {"address": {"socket_address": {"address": address[0], "port_value": address[1]}}}
    out["load_assignment"]["endpoints"][0]["lb_endpoints"] = [{"endpoint": endpoint}]
    return out


def test_tcp_connect_timeout_is_503_uf(
    inproc: Inproc, full_backlog_tcp: tuple[str, int], tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    cfg = bootstrap(
        [logged(listener([vhost("tcp", [route("tcp", prefix="/")])]), log)],
        [tcp_cluster("tcp", full_backlog_tcp, "0.25s")],
    )
    p = inproc(cfg)
    t0 = time.monotonic()
    response = get(p.address(), "/x", headers={"User-Agent": "syn-dropped"}, timeout=10)
    elapsed = time.monotonic() - t0
    assert response.status == 503 and response.body == UF_BODY
    assert 0.2 < elapsed < 3  # the connect timeout, not the route's 15 s nor SYN retries
    stats = counters(p)
    assert stats["cluster.tcp.upstream_cx_connect_timeout"] == 1
    assert stats["cluster.tcp.upstream_cx_connect_fail"] == 1
    p.stop()
    line = AccessLog(log).wait_for_line("ua=syn-dropped")
    assert line.startswith("GET 503 UF upstream_reset_before_response_started"), line
    assert " connection_timeout " in line, line  # (the log writes spaces as _)


def test_connect_timeout_apart_from_the_pool_idle_timeout(
    inproc: Inproc, py_upstream: PyUpstream
) -> None:
    """A short pool idle timeout closes idle connections and is counted as such; a UDS
    connect, immediate, never meets the connect timeout, however short."""
    cfg = bootstrap(
        [listener([vhost("py", [route("py", prefix="/")])])],
        [cluster("py", py_upstream.socket_path, connect_timeout="0.001s", idle_timeout="0.2s")],
    )
    p = inproc(cfg)
    assert get(p.address(), "/py/a").status == 200
    time.sleep(0.5)
    assert get(p.address(), "/py/b").status == 200  # a new connection, opened in time
    stats = counters(p)
    assert stats["cluster.py.upstream_cx_idle_timeout"] == 1
    assert stats["cluster.py.upstream_cx_connect_timeout"] == 0
    assert stats["cluster.py.upstream_cx_total"] == 2
