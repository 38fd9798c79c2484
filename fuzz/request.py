"""Fuzz harness: the request decoder (udsproxy/codec/request.py), no socket.

Each input is fed whole, split in two at every byte (sampled for long inputs), and one byte at
a time. Checked:
- no exception leaves the decoder (llhttp's errors become ERROR with a reply);
- every split gives the same outcome: the same requests (head, framing, body) and the same
  final result and reply;
- an error is a 4xx reply; every request it reported re-encodes (encode.request_head, as the
  router sends it) into bytes a strict parser reads back as the same method, path, Host,
  headers and body, with no ambiguity (one Content-Length or chunked, never both; no CR, LF
  or NUL in a value; tokens for names).

The first input byte picks the decoder: headers_with_underscores_action and the limits.
"""

from __future__ import annotations

import re
import sys
from types import SimpleNamespace

from fuzz._common import Finding, main
from udsproxy.codec import http1
from udsproxy.codec.encode import CRLF, LAST_CHUNK, chunk_head, request_head
from udsproxy.codec.request import ERROR, OK, STOPPED, UPGRADE, RequestHead, decoder_class

# Known findings are tolerated while fuzzing (see fuzz/response.py); their regressions set it.
STRICT = False
SPLIT_ALL = 600  # inputs up to this long are split at every byte; longer ones at 64 points
_UNDERSCORES = ("ALLOW", "DROP_HEADER", "REJECT_REQUEST")
_FIELDS = (
    "method", "url", "path", "authority", "host_seen", "headers", "xff", "xfp", "envoy_retry",
    "request_id_seen", "req_cl", "req_chunked", "nominated", "upgrade", "expect_continue",
    "http10", "keep_alive", "is_head", "protocol",
)  # fmt: skip


class Message(RequestHead):
    __slots__ = ("body", "complete", "sent")

    def __init__(self) -> None:
        super().__init__()
        self.body: list[bytes] = []
        self.complete = False
        self.sent: tuple[object, ...] = ()  # the headers as they were when the head was whole

    def decode_data(self, data: bytes) -> None:
        if self.complete:
            raise Finding("body after the message completed")
        self.body.append(bytes(data))

    def decode_complete(self) -> None:
        if self.complete:
            raise Finding("message completed twice")
        self.complete = True

    def summary(self) -> tuple[object, ...]:
        if STRICT and self.sent != (self.headers[:], self.xff):
            # finding 5: chunked trailers go through on_header like the head's fields
            raise Finding(f"the head changed after it was reported: {self.headers!r}")
        values = [getattr(self, f) for f in _FIELDS if f not in ("headers", "xff")]
        return (*self.sent, *values, b"".join(self.body), self.complete)


class Server:
    def __init__(self) -> None:
        self.heads: list[Message] = []

    def new_stream(self) -> Message:
        return Message()

    def on_request_headers(self, s: RequestHead) -> None:
        assert isinstance(s, Message)
        s.sent = (s.headers[:], s.xff)
        self.heads.append(s)


def _stats() -> SimpleNamespace:
    return SimpleNamespace(
        downstream_rq_non_relative_path=0,
        http1_dropped_headers_with_underscores=0,
        http1_requests_rejected_with_underscores_in_headers=0,
    )


def decode(pieces: list[bytes], mode: int) -> tuple[tuple[object, ...], list[Message]]:
    """Feed the pieces as the downstream connection would (it stops reading at the first
    result but OK); the outcome as a comparable tuple, and the messages."""
    server = Server()
    limits = (60 * 1024, 100) if mode < 0xF0 else (256, 4)  # 0xF0..: small limits
    dec = decoder_class(_UNDERSCORES[mode % 3])(server, *limits, _stats())
    result = OK
    rest = b""
    for i, piece in enumerate(pieces):
        result = dec.feed(piece)
        if result != OK:
            rest = b"".join(pieces[i + 1 :])
            break
    reply = None
    if result == ERROR:
        reply = dec.error or http1.BAD_REQUEST
        if not 400 <= reply.code < 500:
            raise Finding(f"a malformed request answered {reply.code}")
    upgrade_rest = dec.upgrade_rest + rest if result == UPGRADE else b""
    msgs = tuple(m.summary() for m in server.heads)
    pending = result == OK and dec.cur is not None
    # the code, not the details: of two errors in one input, which llhttp reports first can
    # depend on where a read ended (a header is reported when the next one begins)
    outcome: tuple[object, ...]
    outcome = (result, reply and (reply.code, reply.flag), msgs, upgrade_rest, pending)
    if result == STOPPED:
        outcome = outcome[:3]  # what was left unread depends on where reads ended
    return outcome, server.heads


# -- a strict HTTP/1.1 request parser: the re-encoded requests must satisfy it -------------------
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_TARGET = re.compile(rb"[\x21-\x7e\x80-\xff]+\Z")
_VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_AUTHORITY_OK = http1.AUTHORITY_TABLE


def strict_parse(data: bytes) -> tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]], bytes]:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise Finding("no end of head")
    lines = head.split(b"\r\n")
    for line in lines:
        if b"\r" in line or b"\n" in line:
            raise Finding(f"bare CR or LF in {line!r}")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1":
        raise Finding(f"bad request line {lines[0]!r}")
    method, target, _ = parts
    if not _TOKEN.match(method) or not _TARGET.match(target):
        raise Finding(f"bad method or target {lines[0]!r}")
    if target[:1] != b"/" and not (target == b"*" and method == b"OPTIONS"):
        raise Finding(f"target not in origin form {target!r}")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            raise Finding(f"bad header line {line!r}")
        value = value.strip(b" \t")
        if _VALUE_BAD.search(value):
            raise Finding(f"control byte in value {line!r}")
        headers.append((name.lower(), value))
    names = [n for n, _ in headers]
    if names.count(b"host") != 1:
        raise Finding("not exactly one Host")
    host = headers[names.index(b"host")][1]
    if host.translate(_AUTHORITY_OK) != host:
        raise Finding(f"invalid authority forwarded {host!r}")
    cls = [v for n, v in headers if n == b"content-length"]
    tes = [v for n, v in headers if n == b"transfer-encoding"]
    if cls and tes:
        raise Finding("both Content-Length and Transfer-Encoding")
    if len(cls) > 1 or len(tes) > 1:
        raise Finding("repeated framing header")
    if tes:
        if tes[0] != b"chunked":
            raise Finding(f"transfer-encoding {tes[0]!r}")
        body = _dechunk(body)
    elif cls:
        if not cls[0].isdigit() or int(cls[0]) != len(body):
            raise Finding(f"content-length {cls[0]!r} for {len(body)} bytes")
    elif body:
        raise Finding("a body without framing")
    rest = [h for h in headers if h[0] not in (b"host", b"content-length", b"transfer-encoding")]
    return method, target, host, rest, body


def _dechunk(data: bytes) -> bytes:
    out: list[bytes] = []
    while True:
        size, sep, data = data.partition(b"\r\n")
        if not sep or not re.fullmatch(rb"[0-9a-f]+", size):
            raise Finding(f"bad chunk size {size!r}")
        n = int(size, 16)
        if n == 0:
            if data != b"\r\n":
                raise Finding("bytes after the last chunk")
            return b"".join(out)
        if data[n : n + 2] != CRLF:
            raise Finding("chunk not followed by CRLF")
        out.append(data[:n])
        data = data[n + 2 :]


def reencode(m: Message) -> None:
    """What the router would send for ``m`` parses back as ``m``."""
    host = m.authority or b"default.example"  # HTTP/1.0 without Host: the route's default
    body = b"".join(m.body)
    if m.upgrade is not None:
        # what follows an upgrade's head is relayed as it comes (upgrade_rest), body or not
        head = request_head(m.method, m.path, host, m.sent[0], b"", False, -1, m.upgrade)  # type: ignore[arg-type]
        return _check_upgrade(head, m)
    if m.req_chunked:
        wire = (chunk_head(len(body)) + body + CRLF if body else b"") + LAST_CHUNK
    else:
        if m.req_cl < 0 and body:
            raise Finding("a body without framing was decoded")
        if m.complete and m.req_cl >= 0 and len(body) != m.req_cl:
            raise Finding(f"body of {len(body)} bytes for content-length {m.req_cl}")
        wire = body
        if not m.complete:
            return  # only part of the body came: nothing to compare yet
    fields: list[tuple[bytes, bytes]] = m.sent[0]  # type: ignore[assignment]
    head = request_head(m.method, m.path, host, fields, b"", m.req_chunked, m.req_cl, m.upgrade)
    method, path, host2, headers, body2 = strict_parse(head + wire)
    # a value's trailing whitespace goes through as llhttp left it; a reader drops it (OWS)
    sent = [(n, v.strip(b" \t")) for n, v in m.sent[0]]  # type: ignore[attr-defined]
    if (method, path, host2, headers, body2) != (m.method, m.path, host, sent, body):
        raise Finding(f"re-encoding differs: {head + wire!r}")


def _check_upgrade(head: bytes, m: Message) -> None:
    if b"\r" in m.upgrade or b"\n" in m.upgrade:  # type: ignore[operator]
        raise Finding(f"CR/LF in upgrade {m.upgrade!r}")
    strict_parse(head)


def _splits(n: int) -> list[int]:
    if n <= SPLIT_ALL:
        return list(range(1, n))
    step = n / 64
    return sorted({int(step * i) for i in range(1, 64)})


def check(data: bytes) -> None:
    if not data:
        return
    mode, data = data[0], data[1:]
    whole, heads = decode([data], mode)
    for i in _splits(len(data)):
        split, _ = decode([data[:i], data[i:]], mode)
        if split != whole:
            raise Finding(f"split at {i} differs:\n whole {whole!r}\n split {split!r}")
    if len(data) <= SPLIT_ALL:
        bytewise, _ = decode([data[i : i + 1] for i in range(len(data))], mode)
        if bytewise != whole:
            raise Finding(f"byte-by-byte differs:\n whole {whole!r}\n bytes {bytewise!r}")
    for m in heads:
        reencode(m)


if __name__ == "__main__":
    if "--form" in sys.argv:
        from udsproxy.codec.request import SCAN_REQUEST

        print("compiled (C scanner)" if SCAN_REQUEST is not None else "pure (llhttp only)")
    else:
        main(check, "request")
