"""Upstream failures: Envoy's local replies and flags, and nothing ever hangs."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from .conftest import SockPaths
from .support import (
    UC_BODY,
    UF_BODY,
    UT_BODY,
    AccessLog,
    InProcessProxy,
    NginxInstance,
    ProxyProcess,
    PyUpstream,
    Site,
    envoy_log_re,
    get,
    single_route_config,
)

pytestmark = pytest.mark.integration

Inproc = Callable[[dict[str, Any]], InProcessProxy]


def _assert_uf(resp: Any) -> None:
    assert resp.status == 503
    assert resp.body == UF_BODY
    assert resp.header("content-type") == "text/plain"
    assert resp.header("content-length") == str(len(UF_BODY))
    assert resp.header("server") == "envoy"


@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_nginx_down_is_503_uf(
    how: str,
    make_nginx: Callable[..., NginxInstance],
    inproc: Inproc,
    tmp_path: Path,
    user_agent: str,
) -> None:
    """killed: SIGKILL leaves the socket file (connect: ECONNREFUSED); stopped: nginx's graceful
    stop unlinks it (connect: ENOENT). Both are 503 UF, logged with the socket as upstream host."""
    ngx = make_nginx(how)
    log_path = tmp_path / "access.log"
    p = inproc(single_route_config(ngx.socket_path, log_path))
    host, port = p.address()
    assert get(p.address(), "/index.html").status == 200  # a pooled connection now exists

    if how == "killed":
        ngx.kill()
        assert Path(ngx.socket_path).exists()
    else:
        ngx.stop()
        assert not Path(ngx.socket_path).exists()

    for _ in range(2):
        _assert_uf(get(p.address(), "/index.html", headers={"User-Agent": user_agent}))
    p.stop()  # flushes the access log

    lines = AccessLog(log_path).find(user_agent)
    assert len(lines) == 2, lines
    expected = envoy_log_re(
        path="/index.html",
        status=503,
        flags="UF",
        sent=len(UF_BODY),
        service_time="-",
        user_agent=user_agent,
        authority=f"{host}:{port}",
        upstream=ngx.socket_path,  # Envoy logs the host it failed to connect to
    )
    for line in lines:
        assert expected.match(line), line


def _fast_uf(p: InProcessProxy) -> float:
    t0 = time.monotonic()
    resp = get(p.address(), "/index.html", timeout=10)
    elapsed = time.monotonic() - t0
    _assert_uf(resp)
    return elapsed


def test_missing_socket_file_is_503_uf_at_once(inproc: Inproc, sock_path: SockPaths) -> None:
    path = sock_path("missing")
    assert not Path(path).exists()
    p = inproc(single_route_config(path, connect_timeout="5s"))
    assert _fast_uf(p) < 1.0  # not the 5 s connect timeout


def test_refused_socket_is_503_uf_at_once(inproc: Inproc, sock_path: SockPaths) -> None:
    path = sock_path("refused")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)  # a socket file with nobody listening: ECONNREFUSED
    try:
        p = inproc(single_route_config(path, connect_timeout="5s"))
        assert _fast_uf(p) < 1.0
    finally:
        s.close()


def test_full_backlog_is_503_uf_at_once(inproc: Inproc, sock_path: SockPaths) -> None:
    """A listener that never accepts, its backlog full: connect() fails with EAGAIN at once."""
    path = sock_path("backlog")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(0)
    fillers: list[socket.socket] = []
    try:
        for _ in range(64):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.setblocking(False)
            fillers.append(c)
            try:
                c.connect(path)
            except BlockingIOError:
                break
        else:
            pytest.fail("could not fill the listen backlog")
        p = inproc(single_route_config(path, connect_timeout="5s"))
        assert _fast_uf(p) < 1.0
    finally:
        for c in fillers:
            c.close()
        server.close()


def test_idle_pooled_connections_closed_by_nginx(
    make_nginx: Callable[..., NginxInstance], inproc: Inproc, site: Site
) -> None:
    """nginx closes idle keep-alive connections after 1 s; the proxy's pool (idle_timeout 60 s)
    still holds them. The next requests must succeed: a client never sees the pool's stale
    connection."""
    ngx = make_nginx("short-keepalive", keepalive_timeout="1s")
    p = inproc(single_route_config(ngx.socket_path))
    host, port = p.address()

    def fetch(path: str) -> tuple[int, int]:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, len(resp.read())
        finally:
            conn.close()

    paths = ["/index.html", "/files/100k.bin", "/index.html", "/files/1m.bin"]
    expected = [(200, site.sizes[x]) for x in paths]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(fetch, paths)) == expected  # several pooled connections
        time.sleep(2.0)  # nginx has closed them all by now
        assert list(pool.map(fetch, paths)) == expected
    time.sleep(1.5)
    assert [fetch(x) for x in paths] == expected


def test_nginx_keepalive_requests_limit(
    make_nginx: Callable[..., NginxInstance], inproc: Inproc, site: Site
) -> None:
    """nginx closes a connection after 3 requests (Connection: close); the client's connection
    to the proxy carries on."""
    ngx = make_nginx("few-requests", keepalive_requests=3)
    p = inproc(single_route_config(ngx.socket_path))
    host, port = p.address()
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        sock = None
        for _ in range(10):
            conn.request("GET", "/index.html")
            resp = conn.getresponse()
            assert (resp.status, len(resp.read())) == (200, 612)
            sock = sock or conn.sock
            assert conn.sock is sock
    finally:
        conn.close()


def test_route_timeout_is_504_ut(
    proxy: ProxyProcess, proxy_log: AccessLog, user_agent: str
) -> None:
    t0 = time.monotonic()
    resp = get(proxy.address(), "/py/slow?ms=3000", headers={"User-Agent": user_agent})
    elapsed = time.monotonic() - t0
    assert resp.status == 504
    assert resp.body == UT_BODY
    assert resp.header("content-type") == "text/plain"
    assert 0.9 < elapsed < 2.5  # the route's 1 s timeout
    line = proxy_log.wait_for_line(user_agent)
    assert f'"GET /py/slow?ms=3000 HTTP/1.1" 504 UT 0 {len(UT_BODY)} ' in line, line


@pytest.mark.parametrize("path", ["/py/bad-cl", "/py/nul-header"])
def test_malformed_upstream_response_is_502_upe(
    proxy: ProxyProcess, proxy_log: AccessLog, user_agent: str, path: str
) -> None:
    resp = get(proxy.address(), path, headers={"User-Agent": user_agent})
    assert resp.status == 502
    assert b"hello" not in resp.body and resp.body != b"ok"  # never relayed
    line = proxy_log.wait_for_line(user_agent)
    assert f'"GET {path} HTTP/1.1" 502 UPE ' in line, line


def test_upstream_closes_before_headers_is_503_uc(
    proxy: ProxyProcess, proxy_log: AccessLog, user_agent: str
) -> None:
    resp = get(proxy.address(), "/py/drop", method="POST", headers={"User-Agent": user_agent})
    assert resp.status == 503
    assert resp.body == UC_BODY
    line = proxy_log.wait_for_line(user_agent)
    assert '"POST /py/drop HTTP/1.1" 503 UC ' in line, line


def test_upstream_connection_close_keeps_client_connection(proxy: ProxyProcess) -> None:
    host, port = proxy.address()
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", "/py/close")
        first = conn.getresponse()
        assert (first.status, first.read()) == (200, b"closing\n")
        sock = conn.sock
        assert sock is not None, "upstream's Connection: close leaked to the client"
        conn.request("GET", "/py/next")
        second = conn.getresponse()
        assert (second.status, second.read()) == (200, b"GET /py/next\n")
        assert conn.sock is sock
    finally:
        conn.close()


def test_max_requests_per_connection(inproc: Inproc, sock_path: SockPaths) -> None:
    up = PyUpstream(sock_path("maxreq"))
    try:
        p = inproc(single_route_config(up.socket_path, max_requests_per_connection=2))
        host, port = p.address()
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            for i in range(7):
                conn.request("GET", f"/r{i}")
                resp = conn.getresponse()
                assert (resp.status, resp.read()) == (200, f"GET /r{i}\n".encode())
        finally:
            conn.close()
        per_conn: dict[int, int] = {}
        for r in up.requests():
            per_conn[r["conn"]] = per_conn.get(r["conn"], 0) + 1
        assert sum(per_conn.values()) == 7
        assert max(per_conn.values()) <= 2, per_conn
    finally:
        up.close()


def test_upstream_connections_are_pooled(inproc: Inproc, sock_path: SockPaths) -> None:
    up = PyUpstream(sock_path("pooled"))
    try:
        p = inproc(single_route_config(up.socket_path))
        for i in range(10):  # ten client connections, one after the other
            assert get(p.address(), f"/seq{i}").status == 200
        conns = {r["conn"] for r in up.requests()}
        assert len(conns) <= 2, f"{len(conns)} upstream connections for 10 sequential requests"
    finally:
        up.close()
