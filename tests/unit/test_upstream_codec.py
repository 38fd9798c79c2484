"""Upstream responses through a fake upstream transport: framing, HEAD/204/304, interim
responses, and malformed replies that must become 502 UPE and never be relayed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.fakes import FakeTransport, Harness, complete_connect
from udsproxy.flags import ResponseFlag
from udsproxy.upstream.connection import UpstreamConnection

MODES = ["whole", "bytes"]


class Pair:
    def __init__(self, request: bytes = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n") -> None:
        self.h = Harness()
        self.h.feed(request)
        stream = self.h.conn.active
        assert stream is not None and stream.host is not None
        self.host = stream.host
        self.up = UpstreamConnection(stream.host)
        self.up_transport = FakeTransport()
        self.up.connection_made(self.up_transport)  # type: ignore[arg-type]
        complete_connect(stream.host.pool, self.up)
        assert stream.upstream is not None and stream.upstream.conn is self.up
        self.stream = stream

    def respond(self, data: bytes, mode: str) -> bytes:
        if mode == "bytes":
            for i in range(len(data)):
                if self.up.closed:
                    break
                self.up.data_received(data[i : i + 1])
        else:
            self.up.data_received(data)
        return self.h.transport.take()

    @property
    def info(self):
        return self.h.recorder.infos[-1]


@pytest.fixture
def pair() -> Iterator[type[Pair]]:
    made: list[Pair] = []

    def factory(*a: bytes) -> Pair:
        p = Pair(*a)
        made.append(p)
        return p

    yield factory  # type: ignore[misc]
    for p in made:
        p.h.loop.close()


@pytest.mark.parametrize("mode", MODES)
def test_content_length_response_is_relayed_and_connection_pooled(pair, mode):
    p = pair()
    out = p.respond(
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22\r\nContent-Length: 5\r\nConnection: keep-alive"
        b"\r\nX-A: b\r\n\r\nhello",
        mode,
    )
    assert out.startswith(b"HTTP/1.1 200 OK\r\nx-a: b\r\nserver: envoy\r\n")
    assert b"nginx" not in out and b"keep-alive" not in out
    assert b"x-envoy-upstream-service-time: " in out
    assert out.endswith(b"content-length: 5\r\n\r\nhello")
    assert p.info.response_code == 200 and p.info.bytes_sent == 5
    assert p.info.response_code_details == "via_upstream"
    assert list(p.host.pool.idle) == [p.up]


@pytest.mark.parametrize("mode", MODES)
def test_chunked_response_is_rechunked(pair, mode):
    p = pair()
    out = p.respond(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        mode,
    )
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    assert body.endswith(b"0\r\n\r\n")
    decoded = b"".join(body.split(b"\r\n")[i] for i in range(1, len(body.split(b"\r\n")) - 2, 2))
    assert decoded == b"abcde"
    assert p.info.bytes_sent == 5
    assert list(p.host.pool.idle) == [p.up]


@pytest.mark.parametrize("mode", MODES)
def test_head_response_has_no_body(pair, mode):
    p = pair(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    out = p.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 612\r\n\r\n", mode)
    assert out.endswith(b"content-length: 612\r\n\r\n")
    assert p.info.response_code == 200 and p.info.bytes_sent == 0
    assert list(p.host.pool.idle) == [p.up]  # and the connection is reusable


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_have_no_body(pair, status):
    p = pair()
    out = p.respond(b"HTTP/1.1 %d X\r\nETag: x\r\n\r\n" % status, "whole")
    assert out.endswith(b"\r\n\r\n") and b"transfer-encoding" not in out
    assert p.info.response_code == status


def test_interim_103_is_forwarded_and_100_swallowed(pair):
    p = pair()
    out = p.respond(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        "whole",
    )
    assert out.startswith(b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert b"100 Continue" not in out


def test_close_delimited_response_ends_with_the_connection(pair):
    p = pair()
    out = p.respond(b"HTTP/1.1 200 OK\r\n\r\npart1", "whole")
    p.up.connection_lost(None)
    out += p.h.transport.take()
    assert b"transfer-encoding: chunked" in out
    assert out.endswith(b"5\r\npart1\r\n0\r\n\r\n")
    assert p.info.response_code == 200 and p.info.response_flags == 0


BAD_RESPONSES = {
    "conflicting_cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "cl_and_te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bad_status_line": b"HTTP/1.1 2x0 OK\r\n\r\n",
    "nul_in_header": b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "not_http": b"SSH-2.0-OpenSSH_9.2\r\n",
    "bad_chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n",
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", sorted(BAD_RESPONSES))
def test_malformed_upstream_response_is_502_upe(pair, case, mode):
    p = pair()
    out = p.respond(BAD_RESPONSES[case], mode)
    if case == "bad_chunk":
        # headers were already relayed: the only honest thing left is to reset the client
        assert p.h.transport.aborted
    else:
        assert out.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), out
        assert out.endswith(b"reset reason: protocol error")
        assert b"nginx" not in out and b"\x00" not in out
    assert p.info.response_flags & ResponseFlag.UPE
    assert p.up.closed and not p.host.pool.idle


def test_stray_bytes_after_head_response_are_a_protocol_error(pair):
    p = pair(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    p.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "whole")
    assert p.up.closed and not p.host.pool.idle


def test_bytes_after_content_length_body_make_connection_unreusable(pair):
    p = pair()
    out = p.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", "whole")
    out += p.respond(b"okEXTRA", "whole")
    assert out.endswith(b"\r\n\r\nok")
    assert p.up.closed and not p.host.pool.idle


def test_reused_connection_closed_before_response_is_retried_on_a_fresh_one(pair):
    p = pair()
    p.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "whole")
    # second request on the same (now pooled) connection
    p.h.feed(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    s2 = p.h.conn.active
    assert s2 is not None and s2.upstream is not None
    assert s2.upstream.conn is p.up and s2.upstream.reused
    tasks_before = len(p.h.loop.tasks)
    p.up.connection_lost(None)  # nginx closed its idle keep-alive just as we reused it
    assert len(p.h.loop.tasks) == tasks_before + 1  # a fresh connect was started
    assert p.h.transport.buffer == b""  # the client saw nothing
    assert s2.retried


def test_fresh_connection_closed_before_response_is_503_uc(pair):
    p = pair()
    p.up.connection_lost(None)
    out = p.h.transport.take()
    assert out.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert out.endswith(b"reset reason: connection termination")
    assert p.info.response_flags == ResponseFlag.UC


def test_route_timeout_before_response_is_504_ut(pair):
    p = pair()
    p.h.loop.advance(15.1)
    out = p.h.transport.take()
    assert out.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    assert out.endswith(b"\r\n\r\nupstream request timeout")
    assert p.info.response_flags == ResponseFlag.UT
    assert p.up.closed


def test_client_disconnect_is_logged_dc_with_code_0(pair):
    p = pair()
    p.h.conn.connection_lost(None)
    assert p.info.response_code == 0
    assert p.info.response_flags == ResponseFlag.DC
    assert p.up.closed


def test_slow_client_pauses_upstream_reads(pair):
    p = pair()
    p.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", "whole")
    p.h.conn.pause_writing()
    assert not p.up_transport.reading
    p.h.conn.resume_writing()
    assert p.up_transport.reading


def test_second_response_in_the_same_read_is_never_relayed(pair):
    p = pair()
    out = p.respond(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nevil!",
        "whole",
    )
    assert out.endswith(b"\r\n\r\nok")
    assert b"evil" not in out
    assert p.info.response_code == 200 and p.info.response_flags == 0
    assert p.up.closed and not p.host.pool.idle


def test_interim_response_headers_do_not_leak_into_the_final_one(pair):
    p = pair()
    out = p.respond(
        b"HTTP/1.1 103 Early Hints\r\nContent-Length: 5\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "whole",
    )
    final = out.split(b"HTTP/1.1 200 OK\r\n", 1)[1]
    assert b"content-length" not in final and b"transfer-encoding: chunked" in final


def test_unrequested_101_is_a_protocol_error(pair):
    p = pair()
    out = p.respond(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", "whole")
    assert out.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert p.info.response_flags == ResponseFlag.UPE


def test_upload_backpressure_is_released_when_the_stream_ends(pair):
    p = pair(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody")
    p.up.pause_writing()  # the upstream socket backs up
    assert not p.h.transport.reading
    p.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "whole")
    assert p.h.transport.reading  # the next request on this connection can be read


def test_idle_connection_that_saw_eof_is_not_handed_out(pair):
    p = pair()
    p.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "whole")
    assert list(p.host.pool.idle) == [p.up]
    p.up.eof_received()
    assert p.up.closed and not p.host.pool.idle


@pytest.mark.parametrize("mode", MODES)
def test_headers_named_in_the_upstreams_connection_header_are_not_relayed(pair, mode):
    p = pair()
    out = p.respond(
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\nX-End: 1\r\n"
        b"Content-Length: 2\r\n\r\nok",
        mode,
    )
    assert b"x-hop" not in out.lower() and b"x-end: 1\r\n" in out
    assert out.endswith(b"\r\n\r\nok")
    assert list(p.host.pool.idle) == [p.up]  # keep-alive was still honoured


def test_transfer_encoding_not_ending_in_chunked_is_close_delimited(pair):
    # RFC 9112 6.3: a response whose last transfer coding is not chunked ends with the close
    p = pair()
    out = p.respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzzzz", "whole")
    p.up.connection_lost(None)
    out += p.h.transport.take()
    assert p.info.response_code == 200 and p.info.response_flags == 0, p.info.response_flags
    assert out.endswith(b"4\r\nzzzz\r\n0\r\n\r\n")
