"""The HTTP/1.1 codecs on their own: bytes in, events out, no connection, no socket.

The request decoder reports to a fake ``ServerCallbacks`` whose messages record their body and
end; the response decoder to a fake ``ClientCallbacks`` that records each event. Cases are fed
whole and one byte at a time, and followed by trailing data (h11's technique). What the
connections do with the events is tested in test_downstream_codec.py/test_upstream_codec.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from udsproxy.codec import http1
from udsproxy.codec.encode import chunk_head, header_block, request_head, response_head
from udsproxy.codec.request import (
    ERROR,
    OK,
    STOPPED,
    UPGRADE,
    RequestHead,
    decoder_class,
)
from udsproxy.codec.response import MAX_RESPONSE_HEAD, ResponseDecoder

MODES = ["whole", "bytes"]


# -- the request decoder ------------------------------------------------------------------------
class Message(RequestHead):
    """A request as the fake connection keeps it: the head, its body pieces and its end."""

    __slots__ = ("body", "complete")

    def __init__(self) -> None:
        super().__init__()
        self.body: list[bytes] = []
        self.complete = False

    def decode_data(self, data: bytes) -> None:
        assert not self.complete
        self.body.append(data)

    def decode_complete(self) -> None:
        self.complete = True


class Server:
    """A fake ``ServerCallbacks``: every message begun, and those whose head was whole."""

    def __init__(self) -> None:
        self.begun: list[Message] = []
        self.heads: list[Message] = []

    def new_stream(self) -> Message:
        m = Message()
        self.begun.append(m)
        return m

    def on_request_headers(self, s: RequestHead) -> None:
        assert isinstance(s, Message)
        self.heads.append(s)


def codec_stats() -> SimpleNamespace:
    return SimpleNamespace(
        downstream_rq_non_relative_path=0,
        http1_dropped_headers_with_underscores=0,
        http1_requests_rejected_with_underscores_in_headers=0,
    )


class Req:
    def __init__(
        self, max_header_bytes: int = 8192, max_headers_count: int = 100, underscores: str = ""
    ) -> None:
        self.server = Server()
        self.stats = codec_stats()
        cls = decoder_class(underscores)
        self.dec = cls(self.server, max_header_bytes, max_headers_count, self.stats)

    def feed(self, data: bytes, mode: str = "whole") -> int:
        """What ``feed`` reported; one byte at a time stops at the first report but OK, as the
        downstream connection stops reading then."""
        if mode == "whole":
            return self.dec.feed(data)
        for i in range(len(data)):
            result = self.dec.feed(data[i : i + 1])
            if result != OK:
                return result
        return OK

    @property
    def heads(self) -> list[Message]:
        return self.server.heads

    def one(self) -> Message:
        assert len(self.heads) == 1, self.heads
        return self.heads[0]


GET = b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n"
GET2 = b"GET /2 HTTP/1.1\r\nHost: b\r\n\r\n"


@pytest.mark.parametrize("mode", MODES)
def test_get_is_one_complete_message(mode):
    r = Req()
    assert r.feed(GET, mode) == OK
    m = r.one()
    assert (m.method, m.url, m.path, m.authority) == (b"GET", b"/a?b=1", b"/a?b=1", b"example.com")
    assert m.headers == [(b"user-agent", b"t"), (b"accept", b"*/*")]  # Host is kept apart
    assert m.keep_alive and not m.http10 and m.protocol == "HTTP/1.1" and not m.is_head
    assert m.complete and m.body == []
    assert r.dec.cur is None and r.dec.in_head
    assert r.stats.downstream_rq_non_relative_path == 0


@pytest.mark.parametrize("mode", MODES)
def test_pipelined_requests_come_out_in_order(mode):
    r = Req()
    assert r.feed(GET + GET2 + b"HEAD /3 HTTP/1.1\r\nHost: c\r\n\r\n", mode) == OK
    assert [m.path for m in r.heads] == [b"/a?b=1", b"/2", b"/3"]
    assert all(m.complete for m in r.heads)
    assert [m.authority for m in r.heads] == [b"example.com", b"b", b"c"]
    assert r.heads[2].is_head


def test_partial_request_after_a_whole_one_waits_for_the_rest():
    r = Req()
    assert r.feed(GET + b"GET /2 HT") == OK
    assert [m.path for m in r.heads] == [b"/a?b=1"]
    assert r.dec.cur is not None and r.dec.in_head  # begun, head not whole
    assert r.feed(b"TP/1.1\r\nHost: b\r\n\r\n") == OK
    assert [m.path for m in r.heads] == [b"/a?b=1", b"/2"]


@pytest.mark.parametrize("mode", MODES)
def test_bytes_after_a_connection_close_request_are_not_read(mode):
    r = Req()
    data = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    assert r.feed(data + GET2, mode) == STOPPED
    m = r.one()
    assert m.complete and not m.keep_alive
    assert len(r.server.begun) == 1  # no phantom message for the bytes after it
    if mode == "bytes":
        # STOPPED came with the request's last byte; the next read is refused
        assert not r.dec.unread
        assert r.feed(b"G") == STOPPED
    assert r.dec.stopped and r.dec.unread  # the connection closes with a delayed close


def test_connection_close_request_alone_is_stopped_with_nothing_unread():
    r = Req()
    assert r.feed(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n") == STOPPED
    assert r.one().complete and not r.dec.unread
    assert r.feed(b"G") == STOPPED and r.dec.unread  # a later read is refused too


@pytest.mark.parametrize("mode", MODES)
def test_http10_request_is_not_keep_alive_and_needs_no_host(mode):
    r = Req()
    assert r.feed(b"GET / HTTP/1.0\r\n\r\n" + GET2, mode) == STOPPED
    m = r.one()
    assert m.http10 and m.protocol == "HTTP/1.0" and not m.keep_alive and not m.host_seen


@pytest.mark.parametrize("mode", MODES)
def test_content_length_body_then_a_pipelined_request(mode):
    r = Req()
    data = b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world"
    assert r.feed(data + GET2, mode) == OK
    m, m2 = r.heads
    assert m.req_cl == 11 and not m.req_chunked
    assert b"".join(m.body) == b"hello world" and m.complete
    assert not any(name == b"content-length" for name, _ in m.headers)  # the proxy re-frames
    assert m2.path == b"/2" and m2.complete and m2.body == []


@pytest.mark.parametrize("mode", MODES)
def test_chunked_body_is_decoded_then_a_pipelined_request(mode):
    r = Req()
    data = (
        b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    assert r.feed(data + GET2, mode) == OK
    m, m2 = r.heads
    assert m.req_chunked and m.req_cl == -1
    assert b"".join(m.body) == b"hello world" and m.complete
    assert not any(name == b"transfer-encoding" for name, _ in m.headers)
    assert m2.path == b"/2" and m2.complete


def test_body_arrives_as_it_is_read():
    r = Req()
    assert r.feed(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc") == OK
    m = r.one()  # the head is reported before the body is whole
    assert m.body == [b"abc"] and not m.complete and not r.dec.in_head
    assert r.feed(b"def") == OK
    assert m.body == [b"abc", b"def"] and m.complete


# -- header limits ------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_too_many_headers_is_431(mode):
    r = Req(max_headers_count=5)
    head = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(5))
    assert r.feed(head + b"\r\n", mode) == ERROR
    assert r.dec.error is http1.TOO_MANY_HEADERS and r.dec.error.code == 431
    assert r.heads == []  # never reported
    taken = r.dec.take()
    assert taken is r.server.begun[0] and r.dec.take() is None


def test_exactly_max_headers_is_accepted():
    r = Req(max_headers_count=5)
    head = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(4))
    assert r.feed(head + b"\r\n") == OK and r.one().complete


@pytest.mark.parametrize("mode", MODES)
def test_headers_over_the_byte_limit_are_431(mode):
    r = Req(max_header_bytes=1024)
    data = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 1100 + b"\r\n\r\n"
    assert r.feed(data, mode) == ERROR
    assert r.dec.error is http1.HEADERS_TOO_LARGE and r.dec.error.code == 431


def test_long_url_counts_against_the_byte_limit():
    r = Req(max_header_bytes=1024)
    assert r.feed(b"GET /" + b"a" * 1100 + b" HTTP/1.1\r\nHost: a\r\n\r\n") == ERROR
    assert r.dec.error is http1.HEADERS_TOO_LARGE


def test_never_ending_header_line_is_cut_at_the_limit():
    # httptools reports a header only when its line ends: the decoder counts raw bytes too
    r = Req(max_header_bytes=1024)
    assert r.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX: ") == OK
    results = [r.feed(b"a" * 300) for _ in range(4)]
    assert results[-1] == ERROR and r.dec.error is http1.HEADERS_TOO_LARGE


def test_the_limits_apply_to_each_request_not_the_connection():
    r = Req(max_header_bytes=200, max_headers_count=3)
    one = b"GET / HTTP/1.1\r\nHost: a\r\nX-1: " + b"v" * 100 + b"\r\nX-2: w\r\n\r\n"
    assert r.feed(one * 5) == OK
    assert len(r.heads) == 5
    assert r.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 500\r\n\r\n" + b"b" * 500) == OK
    assert r.heads[-1].complete  # a body is not a header


# -- classification -----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_special_headers_are_kept_off_the_forwarded_list(mode):
    r = Req()
    data = (
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nConnection: keep-alive\r\nKeep-Alive: 300\r\n"
        b"TE: trailers\r\nProxy-Connection: x\r\nX-Forwarded-For: 192.0.2.1\r\n"
        b"X-Forwarded-For: 192.0.2.2\r\nX-Forwarded-Proto: https\r\nX-Envoy-Internal: true\r\n"
        b"X-Envoy-Original-Path: /forged\r\nX-Request-Id: abc\r\nExpect: 100-continue\r\n"
        b"Content-Length: 0\r\nX-B: 2\r\n\r\n"
    )
    assert r.feed(data, mode) == OK
    m = r.one()
    # the request id is forwarded as it came; the rest are the proxy's to add or drop
    assert m.headers == [(b"x-a", b"1"), (b"x-request-id", b"abc"), (b"x-b", b"2")]
    assert m.xff == b"192.0.2.1, 192.0.2.2" and m.xfp == b"https"
    assert m.request_id_seen and m.expect_continue and m.req_cl == 0
    assert m.nominated is None  # keep-alive names no header


@pytest.mark.parametrize("mode", MODES)
def test_headers_named_in_connection_are_dropped(mode):
    r = Req()
    data = (
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Secret: 1\r\nConnection: Keep-Alive, X-Secret,"
        b" X-Request-Id\r\nX-Request-Id: abc\r\nX-Keep: yes\r\n\r\n"
    )
    assert r.feed(data, mode) == OK
    m = r.one()
    assert m.nominated == [b"x-secret", b"x-request-id"]
    assert m.headers == [(b"x-keep", b"yes")]  # named before or after Connection
    assert not m.request_id_seen  # the proxy generates one


@pytest.mark.parametrize(
    "host",
    [
        b"example.com",
        b"example.com:8080",
        b"[::1]:80",
        b"user@h",
        b"xn--bcher-kva.example",
        b"a%20b",
    ],
)
def test_valid_host_is_the_authority(host):
    r = Req()
    assert r.feed(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n") == OK
    assert r.one().authority == host


@pytest.mark.parametrize("host", [b"a b", b"a/b", b"a{b", b'a"b', b"a\\b", b"a<b"])
def test_invalid_host_is_400_invalid_authority(host):
    r = Req()
    assert r.feed(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n") == ERROR
    assert r.dec.error is http1.INVALID_AUTHORITY
    assert r.dec.error.details == "http.invalid_authority"


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", http1.BAD_REQUEST),
        (b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", http1.MISSING_HOST),
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", http1.BAD_REQUEST),
        (b"GET ftp://a/x HTTP/1.1\r\nHost: a\r\n\r\n", http1.BAD_REQUEST),
        (b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", http1.BAD_REQUEST),
        (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", http1.BAD_REQUEST),
    ],
    ids=["duplicate_host", "missing_host", "connect", "ftp", "no_host", "star_get"],
)
@pytest.mark.parametrize("mode", MODES)
def test_rejected_heads_name_their_reply(data, reply, mode):
    r = Req()
    assert r.feed(data + GET2, mode) == ERROR
    assert r.dec.error is reply
    assert r.heads == [] and len(r.server.begun) == 1  # nothing after it was parsed


@pytest.mark.parametrize(
    "data",
    [b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", b"GET foo HTTP/1.1\r\nHost: a\r\n\r\n"],
    ids=["nul", "relative"],
)
def test_llhttp_errors_leave_the_reply_to_the_connection(data):
    r = Req()
    assert r.feed(data) == ERROR
    assert r.dec.error is None  # the connection answers 400 http1.codec_error


def test_complete_request_before_a_malformed_one_was_reported():
    r = Req()
    assert r.feed(GET + b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n") == ERROR
    assert [m.path for m in r.heads] == [b"/a?b=1"] and r.heads[0].complete
    assert r.dec.take() is r.server.begun[1]


@pytest.mark.parametrize("mode", MODES)
def test_absolute_form_target_replaces_host(mode):
    r = Req()
    data = b"GET http://Other.example:8080/x?y=1 HTTP/1.1\r\nHost: ignored\r\n\r\n"
    assert r.feed(data, mode) == OK
    m = r.one()
    assert (m.authority, m.path) == (b"Other.example:8080", b"/x?y=1")
    assert m.url == b"http://Other.example:8080/x?y=1"  # as received
    assert r.stats.downstream_rq_non_relative_path == 1


def test_absolute_form_without_path_or_host_header():
    r = Req()
    assert r.feed(b"GET HTTPS://a.example HTTP/1.1\r\n\r\n") == OK
    m = r.one()
    assert (m.authority, m.path) == (b"a.example", b"/") and m.host_seen


def test_options_star_goes_through_as_is():
    r = Req()
    assert r.feed(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n") == OK
    assert r.one().path == b"*"
    assert r.stats.downstream_rq_non_relative_path == 0


@pytest.mark.parametrize("mode", MODES)
def test_h2c_upgrade_is_dropped_and_the_request_kept(mode):
    r = Req()
    data = (
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nX-A: 1\r\n\r\n"
    )
    # llhttp stops at any Upgrade request; the connection sees the upgrade was dropped, and
    # parses what follows with a fresh parser
    assert r.feed(data + GET2, mode) == UPGRADE
    m = r.one()
    assert m.upgrade is None and m.headers == [(b"x-a", b"1")] and m.complete
    assert m.nominated is not None and b"http2-settings" in m.nominated
    rest = r.dec.upgrade_rest if mode == "whole" else GET2
    assert rest == GET2
    r.dec.reset()
    assert r.feed(rest, mode) == OK
    assert [h.path for h in r.heads] == [b"/", b"/2"]


def test_upgrade_without_connection_upgrade_asks_for_nothing():
    r = Req()
    assert r.feed(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n" + GET2) == OK
    assert r.heads[0].upgrade is None and len(r.heads) == 2


@pytest.mark.parametrize("mode", MODES)
def test_websocket_upgrade_stops_the_parser_with_the_rest(mode):
    r = Req()
    data = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    assert r.feed(data + b"\x81\x00frames", mode) == UPGRADE
    assert r.one().upgrade == b"websocket"
    # whole: the bytes after the head; one at a time, the rest is still to be read
    assert r.dec.upgrade_rest == (b"\x81\x00frames" if mode == "whole" else b"")


@pytest.mark.parametrize(
    ("action", "result", "headers"),
    [
        ("ALLOW", OK, [(b"x_a", b"1"), (b"x-b", b"2")]),
        ("DROP_HEADER", OK, [(b"x-b", b"2")]),
        ("REJECT_REQUEST", ERROR, None),
    ],
)
def test_headers_with_underscores(action, result, headers):
    r = Req(underscores=action)
    assert r.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX_A: 1\r\nX-B: 2\r\n\r\n") == result
    if headers is None:
        assert r.dec.error is http1.UNDERSCORE_IN_HEADER
        assert r.stats.http1_requests_rejected_with_underscores_in_headers == 1
    else:
        assert r.one().headers == headers
        assert r.stats.http1_dropped_headers_with_underscores == (action == "DROP_HEADER")


def test_dropped_underscore_headers_still_count_against_the_limit():
    r = Req(max_headers_count=2, underscores="DROP_HEADER")
    assert r.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX_A: 1\r\nX_B: 2\r\n\r\n") == ERROR
    assert r.dec.error is http1.TOO_MANY_HEADERS


# -- the response decoder -----------------------------------------------------------------------
class Client:
    """A fake ``ClientCallbacks``: every event, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def on_response_interim(self, codec: ResponseDecoder) -> None:
        self.events.append(("interim", codec.status, list(codec.headers)))

    def on_response_headers(self, codec: ResponseDecoder) -> None:
        self.events.append(("headers", codec.status, list(codec.headers), codec.content_length))

    def on_response_body(self, data: bytes | memoryview) -> None:
        self.events.append(("body", bytes(data)))

    def on_response_complete(self) -> None:
        self.events.append(("complete",))

    def on_response_upgrade(self, rest: bytes) -> None:
        self.events.append(("upgrade", rest))

    def on_protocol_error(self) -> None:
        self.events.append(("error",))

    @property
    def kinds(self) -> list[object]:
        return [e[0] for e in self.events if e[0] != "body"]

    @property
    def body(self) -> bytes:
        return b"".join(e[1] for e in self.events if e[0] == "body")  # type: ignore[misc]


_ENDS = ("complete", "error", "upgrade")


class Resp:
    def __init__(self, head_request: bool = False, upgrade: bool = False) -> None:
        self.dec = ResponseDecoder()
        self.client = Client()
        self.dec.begin(self.client, head_request, upgrade)

    def feed(self, data: bytes, mode: str = "whole") -> None:
        """One byte at a time stops at the response's end: later bytes reach an idle connection,
        which closes (test_upstream_codec.py)."""
        if mode == "whole":
            self.dec.feed(data)
            return
        for i in range(len(data)):
            self.dec.feed(data[i : i + 1])
            if self.client.events and self.client.events[-1][0] in _ENDS:
                return


@pytest.mark.parametrize("mode", MODES)
def test_content_length_response(mode):
    r = Resp()
    r.feed(
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 5\r\nConnection: keep-alive\r\n"
        b"Keep-Alive: timeout=5\r\nX-A: b\r\n\r\nhello",
        mode,
    )
    assert r.client.events[0] == ("headers", 200, [(b"x-a", b"b")], 5)
    assert r.client.kinds == ["headers", "complete"] and r.client.body == b"hello"
    assert r.dec.keep_alive and r.dec.message_done and not r.dec.close_delimited


def test_content_length_body_in_later_reads_is_relayed_without_the_parser():
    r = Resp()
    r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
    assert r.dec.body_remaining == 8
    r.feed(b"cdef")
    assert r.dec.body_remaining == 4 and r.client.kinds == ["headers"]
    r.feed(b"ghij")
    assert r.client.body == b"abcdefghij" and r.client.kinds == ["headers", "complete"]
    assert r.dec.keep_alive and r.dec.body_remaining == -1


@pytest.mark.parametrize("mode", MODES)
def test_chunked_response(mode):
    r = Resp()
    r.feed(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n",
        mode,
    )
    assert r.client.events[0] == ("headers", 200, [], -1)
    assert r.dec.resp_chunked and r.client.body == b"abcde"
    assert r.client.kinds == ["headers", "complete"] and r.dec.keep_alive


@pytest.mark.parametrize("mode", MODES)
def test_close_delimited_response_never_completes_by_itself(mode):
    r = Resp()
    r.feed(b"HTTP/1.1 200 OK\r\n\r\npart1", mode)
    assert r.client.kinds == ["headers"] and r.client.body == b"part1"
    assert r.dec.close_delimited and not r.dec.message_done


def test_transfer_encoding_not_ending_in_chunked_is_close_delimited():
    r = Resp()
    r.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzzzz")
    assert not r.dec.resp_chunked and r.dec.close_delimited and r.client.body == b"zzzz"


@pytest.mark.parametrize("mode", MODES)
def test_head_response_has_no_body(mode):
    r = Resp(head_request=True)
    r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 612\r\n\r\n", mode)
    assert r.client.events == [("headers", 200, [], 612), ("complete",)]
    assert r.dec.keep_alive and r.dec.message_done


@pytest.mark.parametrize("status", [204, 304])
@pytest.mark.parametrize("mode", MODES)
def test_204_and_304_have_no_body(status, mode):
    r = Resp()
    r.feed(b"HTTP/1.1 %d X\r\nETag: x\r\n\r\n" % status, mode)
    assert r.client.events == [("headers", status, [(b"etag", b"x")], -1), ("complete",)]
    assert r.dec.keep_alive


def test_bytes_after_a_head_response_end_it_and_retire_the_connection():
    # as when they come in a later read (an idle connection's stray bytes close it), and as
    # Envoy's codec, which knows a HEAD response has no body: never relayed, never reused
    r = Resp(head_request=True)
    r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    assert r.client.kinds == ["headers", "complete"] and r.client.body == b""
    assert not r.dec.keep_alive


@pytest.mark.parametrize("mode", MODES)
def test_interim_responses_come_before_the_final_one_and_leave_nothing_behind(mode):
    r = Resp()
    r.feed(
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\nContent-Length: 5\r\n"
        b"Connection: X-Hop\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Hop: 1\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        mode,
    )
    assert r.client.events[:3] == [
        ("interim", 100, []),
        ("interim", 103, [(b"link", b"</s.css>")]),
        ("headers", 200, [(b"x-hop", b"1")], -1),  # the 103's Connection named it, not the 200's
    ]
    assert r.client.body == b"abc" and r.client.kinds[-1] == "complete"
    assert r.dec.resp_chunked and r.dec.keep_alive


@pytest.mark.parametrize("mode", MODES)
def test_unexpected_101_is_a_protocol_error(mode):
    r = Resp()
    r.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", mode)
    assert r.client.events == [("error",)]
    assert not r.dec.upgraded


@pytest.mark.parametrize("mode", MODES)
def test_expected_101_opens_the_tunnel_with_the_rest(mode):
    r = Resp(upgrade=True)
    r.feed(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
        b"Sec-WebSocket-Accept: x\r\n\r\n\x81\x02hi",
        mode,
    )
    assert r.client.events[0] == ("headers", 101, [(b"sec-websocket-accept", b"x")], -1)
    assert r.client.events[1] == ("upgrade", b"\x81\x02hi" if mode == "whole" else b"")
    assert r.dec.upgraded


def test_connection_close_and_nominated_headers():
    r = Resp()
    r.feed(
        b"HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: secret\r\nX-End: 1\r\n"
        b"Content-Length: 2\r\n\r\nok"
    )
    assert r.client.events[0] == ("headers", 200, [(b"x-end", b"1")], 2)
    assert r.client.kinds == ["headers", "complete"] and not r.dec.keep_alive


def test_http10_response_without_keep_alive_is_not_reusable():
    r = Resp()
    r.feed(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert r.client.kinds == ["headers", "complete"] and not r.dec.keep_alive


@pytest.mark.parametrize(
    "extra",
    [b"EXTRA", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nevil!"],
    ids=["junk", "second_response"],
)
def test_bytes_after_a_content_length_response_are_never_relayed(extra):
    r = Resp()
    r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + extra)
    assert r.client.kinds == ["headers", "complete"] and r.client.body == b"ok"
    assert not r.dec.keep_alive  # not reusable: out of step with the upstream


@pytest.mark.parametrize(
    "first",
    [
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["204", "chunked", "empty"],
)
def test_second_response_in_the_same_read_is_never_relayed(first):
    r = Resp()
    r.feed(first + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nevil!")
    assert r.client.kinds == ["headers", "complete"]
    assert b"evil" not in r.client.body and not r.dec.keep_alive


def test_response_head_over_the_limit_is_a_protocol_error():
    r = Resp()
    r.feed(b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_RESPONSE_HEAD)
    assert r.client.events == [("error",)]


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["conflicting_cl", "bad_status", "not_http", "nul"],
)
@pytest.mark.parametrize("mode", MODES)
def test_malformed_head_is_a_protocol_error_before_any_headers(data, mode):
    r = Resp()
    r.feed(data, mode)
    assert r.client.events == [("error",)]


@pytest.mark.parametrize("mode", MODES)
def test_bad_chunk_after_the_headers_is_a_protocol_error(mode):
    r = Resp()
    r.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nxyz\r\n", mode)
    assert r.client.kinds == ["headers", "error"] and r.client.body == b"ok"


def test_one_decoder_reads_each_response_on_its_connection():
    dec = ResponseDecoder()
    assert dec.message_done  # a fresh connection is as reusable as a finished one
    for path_body in (b"one", b"three"):
        client = Client()
        dec.begin(client, False, False)
        assert not dec.message_done and dec.headers == []
        dec.feed(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path_body), path_body))
        assert client.kinds == ["headers", "complete"] and client.body == path_body
    client = Client()
    dec.begin(client, True, False)  # HEAD resets the parser itself
    dec.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")
    dec.begin(client, False, False)
    dec.feed(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert client.kinds == ["headers", "complete", "headers", "complete"]
    assert client.events[2][1] == 201


def test_body_spliced_ends_the_response_and_a_fresh_parser_reads_the_next():
    r = Resp()
    r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    r.dec.body_spliced()  # the 100 bytes went by splice(2)
    assert r.dec.message_done and r.dec.body_remaining == -1
    r.dec.begin(r.client, False, False)
    r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
    assert r.client.kinds == ["headers", "headers", "complete"]


# -- the head encoders --------------------------------------------------------------------------
def test_header_block():
    assert header_block([]) == b""
    assert header_block([(b"a", b"1"), (b"b", b"2")]) == b"a: 1\r\nb: 2\r\n"


def test_chunk_head_is_hex():
    assert chunk_head(255) == b"ff\r\n" and chunk_head(0) == b"0\r\n"


def test_request_head_order_and_framing():
    head = request_head(
        b"POST",
        b"/u?x",
        b"example.com",
        [(b"x-a", b"1"), (b"x-b", b"2")],
        b"x-envoy-expected-rq-timeout-ms: 15000\r\n",
        False,
        5,
        None,
    )
    assert head == (
        b"POST /u?x HTTP/1.1\r\nhost: example.com\r\nx-a: 1\r\nx-b: 2\r\n"
        b"x-envoy-expected-rq-timeout-ms: 15000\r\ncontent-length: 5\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("chunked", "cl", "upgrade", "tail"),
    [
        (True, -1, None, b"transfer-encoding: chunked\r\n\r\n"),
        (False, -1, None, b"\r\n"),
        (False, 0, None, b"content-length: 0\r\n\r\n"),
        (False, -1, b"websocket", b"connection: upgrade\r\nupgrade: websocket\r\n\r\n"),
    ],
)
def test_request_head_framing_and_upgrade(chunked, cl, upgrade, tail):
    head = request_head(b"GET", b"/", b"h", [], b"", chunked, cl, upgrade)
    assert head == b"GET / HTTP/1.1\r\nhost: h\r\n" + tail


def test_request_head_decodes_to_what_was_encoded():
    headers = [(b"x-a", b"1"), (b"accept", b"*/*")]
    r = Req()
    data = request_head(b"PUT", b"/p", b"h:1", headers, b"", True, -1, None)
    assert r.feed(data + b"3\r\nabc\r\n0\r\n\r\n") == OK
    m = r.one()
    assert (m.method, m.path, m.authority, m.headers) == (b"PUT", b"/p", b"h:1", headers)
    assert m.req_chunked and b"".join(m.body) == b"abc"


def test_response_head():
    head = response_head(404, [(b"x-a", b"1")], [b"content-length: 0\r\n", b"server: envoy\r\n"])
    assert head == (
        b"HTTP/1.1 404 Not Found\r\nx-a: 1\r\ncontent-length: 0\r\nserver: envoy\r\n\r\n"
    )
    assert response_head(200, [], []) == b"HTTP/1.1 200 OK\r\n\r\n"
    # a code without a phrase (or outside the table) keeps the space before the empty phrase
    assert response_head(299, [], []) == b"HTTP/1.1 299 \r\n\r\n"
    assert response_head(600, [], []) == b"HTTP/1.1 600 \r\n\r\n"
