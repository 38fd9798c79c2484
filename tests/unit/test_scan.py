"""The C scanner (udsproxy/codec/_scan.c) against llhttp: the same bytes, the same answers.

The scanner is the codecs' fast path in the compiled form. It may decline any input (llhttp then
reads it), but what it takes must come out exactly as llhttp's path makes it. Each case is fed
to one decoder with the scanner and one without, whole, one byte at a time, and pipelined
behind a request the scanner takes, and everything the decoders report is compared: the
messages and all their fields, the result codes, the errors. The cases are well-formed heads
and thousands of one-byte mutations of them (CR, LF, NUL, whitespace, obs-text, separators),
plus the smuggling corpora's header gadgets.

In the pure-Python form there is no scanner: the module is skipped, unless the run says the
compiled form is expected (scripts/test sets UDSPROXY_EXPECT_NATIVE=1), where it fails.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from udsproxy.codec import response
from udsproxy.codec.encode import header_block
from udsproxy.codec.request import OK, RequestDecoder, decoder_class
from udsproxy.codec.response import MAX_RESPONSE_HEAD, ResponseDecoder

from .test_codec import Client, Server, codec_stats

if os.environ.get("UDSPROXY_EXPECT_NATIVE") == "1":
    from udsproxy.codec import _scan  # the compiled form must have it
else:
    _scan = pytest.importorskip("udsproxy.codec._scan")

WRK = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:10000\r\n\r\n"
BROWSER = (
    b"GET /posts/unix-domain-sockets/?a=1&b=%20 HTTP/1.1\r\n"
    b"Host: blog.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Connection: keep-alive\r\n"
    b"Cookie: _ga=GA1.1.123456789.1700000000; theme=dark\r\n"
    b"X-Forwarded-For: 10.0.0.1\r\n"
    b"x-forwarded-for: 10.0.0.2\r\n"
    b"X-Forwarded-Proto: https\r\n"
    b"X-Request-Id: abc\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"TE: trailers\r\n"
    b"X-Envoy-Original-Path: /x\r\n"
    b"Cache-Control: max-age=0\r\n\r\n"
)
HEAD = b"HEAD /h HTTP/1.1\r\nhost: a:1\r\nX_Under: 1\r\n\r\n"
OTHERS = [
    b"GET /a HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET http://a/b HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /a HTTP/1.0\r\nHost: a\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
    b"GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET /a HTTP/1.1\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: a b\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
]
BASES = [WRK, BROWSER, HEAD, *OTHERS]
INTERESTING = b'\r\n \t\x00:_\x80\xff,;#"0aA-/?%\x7f\x0b'

_FIELDS = [
    "method",
    "url",
    "path",
    "authority",
    "protocol",
    "host_seen",
    "headers",
    "xff",
    "xfp",
    "request_id_seen",
    "req_cl",
    "req_chunked",
    "nominated",
    "upgrade",
    "expect_continue",
    "http10",
    "keep_alive",
    "is_head",
    "body",
    "complete",
]


def _mutations(base: bytes, rng: random.Random, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        data = bytearray(base)
        i = rng.randrange(len(data))
        op = rng.randrange(4)
        c = INTERESTING[rng.randrange(len(INTERESTING))]
        if op == 0:
            data[i] = c
        elif op == 1:
            data.insert(i, c)
        elif op == 2:
            del data[i]
        else:
            lines = bytes(data).split(b"\r\n")
            k = rng.randrange(1, max(2, len(lines) - 2))
            lines.insert(k, lines[k])
            data = bytearray(b"\r\n".join(lines))
        out.append(bytes(data))
    return out


def _gadgets() -> list[bytes]:
    root = Path(__file__).resolve().parents[1] / "integration" / "corpora"
    smuggler = json.loads((root / "smuggler_mutations.json").read_text())
    ps = json.loads((root / "portswigger_permutations.json").read_text())
    gadgets = [m["gadget"] for m in smuggler]
    gadgets += [m["gadget"] for m in ps.get("te", []) + ps["cl"]]
    out = []
    for g in gadgets:
        line = g.encode("latin-1") if isinstance(g, str) else bytes(g)
        out.append(b"GET /g HTTP/1.1\r\nHost: a\r\n" + line + b"\r\n\r\n")
    return out


REQUESTS = [*BASES, *_gadgets()]
_rng = random.Random(20261205)
for _base in BASES:
    REQUESTS += _mutations(_base, _rng, 300)


def _decode(data: bytes, fast: bool, mode: str, underscores: str = "") -> Any:
    server = Server()
    dec: RequestDecoder = decoder_class(underscores)(server, 8192, 20, codec_stats())
    if not fast:
        dec.scan = None
        dec.fast = False
    results = []
    if mode == "whole":
        results.append(dec.feed(data))
    else:
        for i in range(len(data)):
            results.append(dec.feed(data[i : i + 1]))
            if results[-1] != OK:
                break
    error = (dec.error.code, dec.error.details) if dec.error is not None else None
    messages = [tuple(repr(getattr(m, f)) for f in _FIELDS) for m in server.begun]
    heads = [server.begun.index(m) for m in server.heads]
    return results, error, messages, heads, dec.stopped, dec.unread


def test_the_scanner_takes_the_common_requests() -> None:
    for data in (WRK, BROWSER):
        assert _scan.scan_request(data, 0, 8192, 100, True) is not None


@pytest.mark.parametrize("underscores", ["", "DROP_HEADER", "REJECT_REQUEST"])
def test_requests_decode_the_same_with_and_without_the_scanner(underscores: str) -> None:
    taken = 0
    for data in REQUESTS:
        taken += _scan.scan_request(data, 0, 8192, 20, not underscores) is not None
        for mode, payload in (("whole", data), ("whole", WRK + data + WRK), ("bytes", data)):
            fast = _decode(payload, True, mode, underscores)
            slow = _decode(payload, False, mode, underscores)
            assert fast == slow, payload
    assert taken > 300  # the mutations that stayed valid: the comparison is not vacuous


def test_limits_are_left_to_llhttp() -> None:
    many = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-A: 1\r\n" * 30 + b"\r\n"
    assert _scan.scan_request(many, 0, 8192, 20, True) is None
    big = b"GET / HTTP/1.1\r\nHost: a\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n"
    assert _scan.scan_request(big, 0, 8192, 20, True) is None
    for data in (many, big):
        assert _decode(data, True, "whole") == _decode(data, False, "whole")


# -- responses ------------------------------------------------------------------------------------
NGINX = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 01 Dec 2026 21:00:00 GMT\r\n"
    b"Content-Type: text/html\r\nContent-Length: 12\r\n"
    b"Last-Modified: Tue, 01 Dec 2026 20:00:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "6567a1b0-264"\r\nAccept-Ranges: bytes\r\n\r\nhello world!'
)
RESPONSES_BASE = [
    NGINX,
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nKeep-Alive: timeout=5\r\nTE: x\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: x-a\r\nX-A: 1\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\n\r\nclose-delimited",
]
RESPONSES = list(RESPONSES_BASE)
for _base in RESPONSES_BASE:
    RESPONSES += _mutations(_base, _rng, 300)


def _respond(data: bytes, fast: bool, mode: str, head: bool = False) -> Any:
    dec = ResponseDecoder()
    if not fast:
        dec.scan = None
    client = Client()
    dec.begin(client, head, False)
    pieces = [data] if mode == "whole" else [data[i : i + 1] for i in range(len(data))]
    if mode == "split":
        pieces = [data[:-2], data[-2:]] if len(data) > 2 else [data]
    for piece in pieces:
        dec.feed(piece)
        if client.events and client.events[-1][0] in ("complete", "error", "upgrade"):
            break
    if dec.block is not None:  # the scanner's serialized headers are the encoder's
        assert dec.block == header_block(dec.headers)
    done = dec.message_done and dec.keep_alive and not dec.upgraded
    events = [e for e in client.events if e[0] != "body"]
    return events, client.body, done, dec.status


def test_the_scanner_takes_a_plain_response() -> None:
    assert _scan.scan_response(NGINX, MAX_RESPONSE_HEAD) is not None


@pytest.mark.parametrize("head", [False, True])
def test_responses_decode_the_same_with_and_without_the_scanner(head: bool) -> None:
    taken = 0
    for data in RESPONSES:
        taken += _scan.scan_response(data, MAX_RESPONSE_HEAD) is not None
        for mode in ("whole", "split", "bytes"):
            assert _respond(data, True, mode, head) == _respond(data, False, mode, head), data
    assert taken > 300


def test_a_connection_reads_its_next_response_on_the_fast_path_after_either() -> None:
    dec = ResponseDecoder()
    for first_fast in (True, False):
        client = Client()
        dec.scan = response.SCAN_RESPONSE if first_fast else None
        dec.begin(client, False, False)
        dec.feed(NGINX[:-5])
        dec.feed(NGINX[-5:])
        dec.scan = response.SCAN_RESPONSE
        dec.begin(client, False, False)
        assert dec.fresh
        dec.feed(NGINX)
        assert [e[0] for e in client.events if e[0] != "body"] == [
            "headers",
            "complete",
            "headers",
            "complete",
        ]
        assert client.body == b"hello world!" * 2


def test_header_block_in_c_is_the_python_one() -> None:
    from udsproxy.codec import encode

    cases: list[list[tuple[bytes, bytes]]] = [
        [],
        [(b"a", b"")],
        [(b"x-a", b"1"), (b"cookie", b"a=b; c=d"), (b"", b"odd")],
    ]
    for headers in cases:
        want = b"".join(b"%s: %s\r\n" % h for h in headers)
        assert _scan.header_block(headers) == want
        assert encode.header_block(headers) == want
    # anything else is serialized the general way, never refused
    odd: Any = [(b"a", bytearray(b"b")), [b"c", b"d"]]
    assert encode.header_block(odd) == b"a: b\r\nc: d\r\n"
    with pytest.raises(TypeError):
        _scan.header_block(odd)
