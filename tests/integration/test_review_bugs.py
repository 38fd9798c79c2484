"""Data-path bugs found in review (issue 10, item 3), each against a real proxy and upstream.

- streamed request bodies count in ``upstream_cx_tx_bytes_total`` (bytes on the wire, framing
  included, as Envoy counts them);
- a client that closes before its response is logged 0 DC ``downstream_remote_disconnect``;
- a request rejected in the middle of its body (a bad chunk size) is logged once, 400 DPE;
- an invalid Host value (``a b``, ``a{}``...) is a 400 DPE ``http.invalid_authority``, never
  forwarded.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import SockPaths
from .support import (
    AccessLog,
    InProcessProxy,
    PyUpstream,
    RawConn,
    single_route_config,
    unlink_quietly,
    wait_until,
)

pytestmark = pytest.mark.integration

Inproc = Callable[[dict[str, Any]], InProcessProxy]

# Envoy's default format plus %RESPONSE_CODE_DETAILS% (what the flags alone do not say)
_FORMAT = (
    '"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% '
    '%RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% "%REQ(USER-AGENT)%"\n'
)


def _config(socket_path: str, log: Path) -> dict[str, Any]:
    cfg = single_route_config(socket_path, log)
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    hcm["typed_config"]["access_log"][0]["typed_config"]["log_format"] = {
        "text_format_source": {"inline_string": _FORMAT}
    }
    return cfg


# --------------------------------------------------------------------------------------------
# 1. upstream_cx_tx_bytes_total counts streamed request bodies


class _CountingUpstream:
    """A raw HTTP/1.1 upstream on a Unix socket: counts every byte it reads for one request
    (Content-Length or chunked), then answers 200 and closes."""

    def __init__(self, path: str) -> None:
        self.path = path
        unlink_quietly(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.received: list[int] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self._one(conn)

    def _one(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head = data.split(b"\r\n\r\n", 1)[0].lower()
        chunked = b"transfer-encoding: chunked" in head
        length = 0
        for line in head.split(b"\r\n"):
            if line.startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        want = len(head) + 4 + length
        while (data[-5:] != b"0\r\n\r\n") if chunked else (len(data) < want):
            piece = conn.recv(65536)
            if not piece:
                break
            data += piece
        self.received.append(len(data))
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    def close(self) -> None:
        self.sock.close()
        unlink_quietly(self.path)


@pytest.fixture
def counting_upstream(sock_path: SockPaths) -> Iterator[_CountingUpstream]:
    up = _CountingUpstream(sock_path("count"))
    yield up
    up.close()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_streamed_request_body_counts_in_upstream_tx_bytes(
    framing: str, counting_upstream: _CountingUpstream, inproc: Inproc, tmp_path: Path
) -> None:
    """The head goes first, the body after the upstream connection is up: the body is streamed
    (not part of the first write), and every byte the upstream reads is counted."""
    p = inproc(single_route_config(counting_upstream.path))
    body = b"x" * 10_000
    if framing == "chunked":
        framed = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:4000], body[4000:]))
        head = b"Transfer-Encoding: chunked\r\n"
        pieces = [framed[:2000], framed[2000:], b"0\r\n\r\n"]
    else:
        head = b"Content-Length: %d\r\n" % len(body)
        pieces = [body[:4000], body[4000:]]
    with RawConn(p.address(), 5) as conn:
        conn.send(b"POST /up HTTP/1.1\r\nHost: a\r\n" + head + b"\r\n")
        time.sleep(0.3)  # the proxy has connected and sent the head
        for piece in pieces:
            conn.send(piece)
            time.sleep(0.05)
        response = conn.read_response()
    assert response.status == 200 and response.body == b"ok"
    assert wait_until(lambda: bool(counting_upstream.received), 5)
    stats = p.server.clusters["hugo"].stats
    assert counting_upstream.received[0] > len(body)
    assert stats.upstream_cx_tx_bytes_total == counting_upstream.received[0]


# --------------------------------------------------------------------------------------------
# 2. a client gone before its response: 0 DC


@pytest.mark.parametrize("how", ["fin", "reset"])
def test_client_gone_before_the_response_is_0_dc(
    how: str, py_upstream: PyUpstream, inproc: Inproc, tmp_path: Path
) -> None:
    """The upstream answers 200 after the client has gone. Envoy's connection manager does not
    half-close: the client's FIN is its disconnect, as a reset is."""
    log = tmp_path / "access.log"
    p = inproc(_config(py_upstream.socket_path, log))
    ua = f"gone-{how}"
    sock = socket.create_connection(p.address())
    sock.sendall(b"GET /py/slow?ms=400 HTTP/1.1\r\nHost: a\r\nUser-Agent: %s\r\n\r\n" % ua.encode())
    time.sleep(0.1)
    if how == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
    time.sleep(0.6)  # the upstream's 200 has come (or would have)
    p.stop()
    line = AccessLog(log).wait_for_line(f'"{ua}"')
    assert line == f'"GET /py/slow?ms=400 HTTP/1.1" 0 DC downstream_remote_disconnect "{ua}"'


def test_client_half_close_after_a_pipelined_pair_is_a_disconnect(
    py_upstream: PyUpstream, inproc: Inproc, tmp_path: Path
) -> None:
    """shutdown(SHUT_WR) with two requests outstanding: nothing is answered, both end 0 DC."""
    log = tmp_path / "access.log"
    p = inproc(_config(py_upstream.socket_path, log))
    req = b"GET /py/slow?ms=300&half=%d HTTP/1.1\r\nHost: a\r\n\r\n"
    with RawConn(p.address(), 5) as conn:
        conn.send(req % 1 + req % 2)
        conn.sock.shutdown(socket.SHUT_WR)
        assert conn.read_until_eof() == b""
    p.stop()
    for i in (1, 2):
        line = AccessLog(log).wait_for_line(f"&half={i} ")
        assert " 0 DC downstream_remote_disconnect " in line, line


# --------------------------------------------------------------------------------------------
# 3. rejected in the middle of the body: one log line, 400 DPE


@pytest.mark.parametrize("when", ["streaming", "whole"])
def test_bad_chunk_size_mid_body_is_logged_400_dpe(
    when: str, py_upstream: PyUpstream, inproc: Inproc, tmp_path: Path
) -> None:
    """streaming: the request is already on its way upstream when its bad chunk comes; whole:
    head and bad chunk arrive together."""
    log = tmp_path / "access.log"
    p = inproc(_config(py_upstream.socket_path, log))
    ua = f"bad-chunk-{when}"
    head = (
        b"POST /py/sha256 HTTP/1.1\r\nHost: a\r\nUser-Agent: %s\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" % ua.encode()
    )
    with RawConn(p.address(), 5) as conn:
        if when == "streaming":
            conn.send(head + b"5\r\nhello\r\n")
            time.sleep(0.3)
            conn.send(b"zz\r\n")
        else:
            conn.send(head + b"5\r\nhello\r\nzz\r\n")
        response = conn.read_response()
        assert response.status == 400 and response.body == b"Bad Request"
        assert conn.closed_by_peer()
    p.stop()
    lines = AccessLog(log).find(f'"{ua}"')
    assert lines == [f'"POST /py/sha256 HTTP/1.1" 400 DPE http1.codec_error "{ua}"'], lines


# --------------------------------------------------------------------------------------------
# 4. an invalid Host: 400 DPE http.invalid_authority, never forwarded


@pytest.mark.parametrize(
    "host",
    [b"a b", b"a{}", b"a\"b", b"a<b>", b"a\\b", b"a^b", b"a`b", b"a|b", b"a/b", b"a?b", b"a#b",
     b"\xc3\xa9.example"],
)  # fmt: skip
def test_invalid_host_is_400_dpe(
    host: bytes, py_upstream: PyUpstream, inproc: Inproc, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    p = inproc(_config(py_upstream.socket_path, log))
    before = len(py_upstream.requests())
    with RawConn(p.address(), 5) as conn:
        conn.send(b"GET /py/headers HTTP/1.1\r\nUser-Agent: bad-host\r\nHost: %s\r\n\r\n" % host)
        response = conn.read_response()
        assert response.status == 400 and response.body == b"Bad Request"
        assert conn.closed_by_peer()
    p.stop()
    assert len(py_upstream.requests()) == before  # never forwarded
    # rejected in its head, like Envoy's codec errors: logged without the request's headers
    assert AccessLog(log).lines() == ['"- - HTTP/1.1" 400 DPE http.invalid_authority "-"']


@pytest.mark.parametrize(
    "host",
    [b"a", b"example.com:8080", b"[::1]:80", b"[fe80::1%25eth0]", b"127.0.0.1",
     b"user@h", b"strangebutlegal$-%&'()*+,;=~_!"],
)  # fmt: skip
def test_valid_hosts_are_forwarded(
    host: bytes, py_upstream: PyUpstream, inproc: Inproc, tmp_path: Path
) -> None:
    p = inproc(_config(py_upstream.socket_path, tmp_path / "access.log"))
    with RawConn(p.address(), 5) as conn:
        conn.send(b"GET /py/headers HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
        response = conn.read_response()
    assert response.status == 200, response
    assert f'["host", "{host.decode()}"]' in response.body.decode()
