"""Overload defences through the real proxy: the connection_limit network filter and the
overload manager's global connection limit (the N+1th connection closed and counted, served
again once one closes; two workers each take their share), and the buffer filter (the
upstream sees nothing until the body is whole, 413 over max_request_bytes, per-route
BufferPerRoute)."""

from __future__ import annotations

import re
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.faulty import FaultyUpstream
from tests.integration.support import (
    AccessLog,
    ProxyProcess,
    PyUpstream,
    bootstrap,
    cluster,
    listener,
    route,
    vhost,
    wait_until,
)

pytestmark = pytest.mark.integration

T = "type.googleapis.com/"
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"},
}
BUFFER = "envoy.filters.http.buffer"
BUFFER_TYPE = T + "envoy.extensions.filters.http.buffer.v3.Buffer"
PER_ROUTE_TYPE = T + "envoy.extensions.filters.http.buffer.v3.BufferPerRoute"
LIMIT_TYPE = T + "envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit"
MONITOR_TYPE = (
    T + "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
)
FMT = "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %REQ(USER-AGENT)%\n"
ADMIN = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
_ADMIN = re.compile(r"udsproxy: admin listening on 127\.0\.0\.1:(\d+)")


def _log(lst: dict[str, Any], path: Path) -> None:
    lst["filter_chains"][0]["filters"][0]["typed_config"]["access_log"] = [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": T + "envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": str(path),
                "log_format": {"text_format_source": {"inline_string": FMT}},
            },
        }
    ]


def stats(proc: ProxyProcess) -> dict[str, int]:
    assert wait_until(lambda: _ADMIN.search(proc.stderr()) is not None, 10), proc.stderr()
    m = _ADMIN.search(proc.stderr())
    assert m is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{m.group(1)}/stats", timeout=5) as resp:
        text: str = resp.read().decode()
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.lstrip("-").isdigit():
            out[name] = int(value)
    return out


def _recv_all(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not piece:
            return data
        data += piece


# -- the buffer filter ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def buffered(tmp_path_factory: Any) -> Iterator[tuple[ProxyProcess, FaultyUpstream, AccessLog]]:
    workdir: Path = tmp_path_factory.mktemp("buffer")
    up = FaultyUpstream(str(workdir / "up.sock"))
    py = PyUpstream(str(workdir / "py.sock"))
    log = workdir / "access.log"
    streaming = route("up", prefix="/stream/")
    streaming["typed_per_filter_config"] = {BUFFER: {"@type": PER_ROUTE_TYPE, "disabled": True}}
    small = route("up", prefix="/small/")
    small["typed_per_filter_config"] = {
        BUFFER: {"@type": PER_ROUTE_TYPE, "buffer": {"max_request_bytes": 4}}
    }
    http_filters = [
        {"name": BUFFER, "typed_config": {"@type": BUFFER_TYPE, "max_request_bytes": 64}},
        ROUTER,
    ]
    routes = [streaming, small, route("py", prefix="/py/"), route("up", prefix="/")]
    lst = listener([vhost("all", routes)], name="buf", http_filters=http_filters)
    _log(lst, log)
    config = bootstrap([lst], [cluster("up", up.path), cluster("py", str(workdir / "py.sock"))])
    config["admin"] = ADMIN
    proc = ProxyProcess(config, workdir).start()
    yield proc, up, AccessLog(log)
    assert proc.stop() == 0, proc.stderr()
    up.close()
    py.close()


def _post_head(path: str, length: int, ua: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nUser-Agent: {ua}\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ).encode()


def test_upstream_sees_nothing_until_the_body_is_whole(
    buffered: tuple[ProxyProcess, FaultyUpstream, AccessLog],
) -> None:
    proc, up, log = buffered
    before = stats(proc)
    head = _post_head("/whole", 10, "buf/whole")
    with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as sock:
        sock.sendall(head + b"01234")
        # the proxy has read all of it (head and half the body)...
        rx = "http.buf.downstream_cx_rx_bytes_total"
        want = before.get(rx, 0) + len(head) + 5
        assert wait_until(lambda: stats(proc).get(rx, 0) >= want, 10)
        # ... and took no upstream connection for it
        now = stats(proc)
        assert up.connections == before.get("cluster.up.upstream_cx_total", 0)
        assert now.get("cluster.up.upstream_rq_total", 0) == before.get(
            "cluster.up.upstream_rq_total", 0
        )
        sock.sendall(b"56789")
        reply = _recv_all(sock)
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert up.requests[-1]["path"] == "/whole"
    assert up.requests[-1]["body"] == b"0123456789"
    assert log.wait_for_line("buf/whole") == "200 - via_upstream buf/whole"


def test_a_body_over_max_request_bytes_gets_413(
    buffered: tuple[ProxyProcess, FaultyUpstream, AccessLog],
) -> None:
    proc, up, log = buffered
    before = stats(proc)
    seen = len(up.requests)
    with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as sock:
        sock.sendall(_post_head("/big", 100, "buf/413") + b"x" * 100)
        reply = _recv_all(sock)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in head.lower()
    assert body == b"Payload Too Large"
    assert log.wait_for_line("buf/413") == "413 - request_payload_too_large buf/413"
    after = stats(proc)
    assert (
        after["http.buf.downstream_rq_too_large"]
        == before.get("http.buf.downstream_rq_too_large", 0) + 1
    )
    assert len(up.requests) == seen  # nothing went upstream


def test_per_route_limit_and_disabled(
    buffered: tuple[ProxyProcess, FaultyUpstream, AccessLog],
) -> None:
    proc, up, log = buffered
    # BufferPerRoute.buffer: its own, smaller limit
    with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as sock:
        sock.sendall(_post_head("/small/x", 10, "buf/small") + b"0123456789")
        assert _recv_all(sock).startswith(b"HTTP/1.1 413 ")
    assert log.wait_for_line("buf/small") == "413 - request_payload_too_large buf/small"
    # BufferPerRoute.disabled: the request goes upstream before its body is whole
    seen = len(up.requests)
    with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as sock:
        sock.sendall(_post_head("/stream/x", 100, "buf/stream") + b"y" * 10)
        assert wait_until(lambda: stats(proc).get("cluster.up.upstream_rq_active", 0) == 1, 10)
        assert len(up.requests) == seen  # the upstream is still reading the body
        sock.sendall(b"y" * 90)
        assert _recv_all(sock).startswith(b"HTTP/1.1 200 ")
    assert up.requests[-1]["body"] == b"y" * 100
    assert log.wait_for_line("buf/stream") == "200 - via_upstream buf/stream"


def test_a_chunked_body_is_buffered_whole_and_forwarded(
    buffered: tuple[ProxyProcess, FaultyUpstream, AccessLog],
) -> None:
    proc, _up, log = buffered
    head = (
        b"POST /py/echo HTTP/1.1\r\nHost: t\r\nUser-Agent: buf/chunked\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as sock:
        sock.sendall(head + b"5\r\nhello\r\n")
        sock.sendall(b"6\r\n world\r\n0\r\n\r\n")
        reply = _recv_all(sock)
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert reply.endswith(b"hello world")
    assert log.wait_for_line("buf/chunked") == "200 - via_upstream buf/chunked"
    # over the limit in chunks: 413 once the held body passes 64 bytes
    with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as sock:
        sock.sendall(head.replace(b"buf/chunked", b"buf/chunked-413") + b"40\r\n" + b"z" * 64)
        sock.sendall(b"\r\n1\r\nz\r\n")
        assert _recv_all(sock).startswith(b"HTTP/1.1 413 ")
    line = log.wait_for_line("buf/chunked-413")
    assert line == "413 - request_payload_too_large buf/chunked-413"


def test_expect_100_continue_is_answered_while_buffering(
    buffered: tuple[ProxyProcess, FaultyUpstream, AccessLog],
) -> None:
    proc, up, _log_file = buffered
    head = _post_head("/expect", 4, "buf/expect").replace(
        b"Connection: close\r\n", b"Connection: close\r\nExpect: 100-continue\r\n"
    )
    with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as sock:
        sock.sendall(head)
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"abcd")
        reply = _recv_all(sock)
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert reply.count(b"100 Continue") == 0  # once only
    assert up.requests[-1]["body"] == b"abcd"


# -- connection limits ----------------------------------------------------------------------


def _direct_listener(name: str, address: str = "127.0.0.1") -> dict[str, Any]:
    ok = {
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
    }
    return listener([vhost("all", [ok])], name=name, address=address)


def _limited(name: str, max_connections: int) -> dict[str, Any]:
    lst = _direct_listener(name)
    limit = {
        "name": "envoy.filters.network.connection_limit",
        "typed_config": {
            "@type": LIMIT_TYPE,
            "stat_prefix": name,
            "max_connections": max_connections,
        },
    }
    lst["filter_chains"][0]["filters"].insert(0, limit)
    return lst


def _served(proc: ProxyProcess, name: str) -> socket.socket | None:
    """A keep-alive connection that got one answer, or None if the proxy closed it."""
    sock = socket.create_connection(proc.address(name), timeout=10)
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        data = sock.recv(4096)
    except ConnectionResetError:
        data = b""
    if data.startswith(b"HTTP/1.1 200 "):
        return sock
    sock.close()
    return None


def test_connection_limit_filter_and_global_limit(tmp_path: Path) -> None:
    config = bootstrap([_limited("capped", 2), _direct_listener("free", "127.0.0.2")], [])
    config["admin"] = ADMIN
    config["overload_manager"] = {
        "resource_monitors": [
            {
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {"@type": MONITOR_TYPE, "max_active_downstream_connections": 3},
            }
        ]
    }
    proc = ProxyProcess(config, tmp_path).start()
    held: list[socket.socket] = []
    try:
        held += [s for s in (_served(proc, "capped"), _served(proc, "capped")) if s is not None]
        assert len(held) == 2
        assert _served(proc, "capped") is None  # the filter's max_connections
        s = stats(proc)
        assert s["connection_limit.capped.limited_connections"] == 1
        assert s["connection_limit.capped.active_connections"] == 2
        third = _served(proc, "free")
        assert third is not None
        held.append(third)
        assert _served(proc, "free") is None  # the global limit: 3 in all
        s = stats(proc)
        # the listeners' stat names, by address (Envoy's: the bound port)
        keys = [k for k in s if k.endswith(".downstream_global_cx_overflow")]
        free_key = next(k for k in keys if "127.0.0.2" in k).rsplit(".", 1)[0] + "."
        capped_key = next(k for k in keys if "127.0.0.1" in k).rsplit(".", 1)[0] + "."
        assert s[free_key + "downstream_global_cx_overflow"] == 1, {k: s[k] for k in keys}
        assert s[capped_key + "downstream_global_cx_overflow"] == 0
        assert s[free_key + "downstream_cx_active"] == 1
        assert s[capped_key + "downstream_cx_active"] == 2
        # one closes: both listeners serve again (nothing hangs, the counts went down)
        held.pop(0).close()
        assert wait_until(
            lambda: stats(proc)["connection_limit.capped.active_connections"] == 1, 10
        )
        again = _served(proc, "capped")
        assert again is not None
        held.append(again)
        held.pop(0).close()  # a capped one: the global count has room again
        assert wait_until(
            lambda: stats(proc)["connection_limit.capped.active_connections"] == 1, 10
        )
        fresh = _served(proc, "free")
        assert fresh is not None
        held.append(fresh)
    finally:
        for sock in held:
            sock.close()
        assert proc.stop() == 0, proc.stderr()


def test_two_workers_each_take_their_share(tmp_path: Path) -> None:
    """max_connections 2 over 2 workers: each admits ceil(2/2) = 1."""
    config = bootstrap([_limited("capped", 2)], [])
    config["admin"] = ADMIN
    proc = ProxyProcess(config, tmp_path, "--concurrency", "2").start()
    held: list[socket.socket] = []
    try:
        results = [_served(proc, "capped") for _ in range(4)]
        held = [s for s in results if s is not None]
        assert 1 <= len(held) <= 2  # never more than 2 in all, whichever worker accepts
        s = stats(proc)  # summed over the workers
        assert s["connection_limit.capped.active_connections"] == len(held)
        assert s["connection_limit.capped.limited_connections"] == 4 - len(held)
    finally:
        for sock in held:
            sock.close()
        assert proc.stop() == 0, proc.stderr()
