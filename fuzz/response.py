"""Fuzz harness: the response decoder (udsproxy/codec/response.py), no socket.

Each input is fed whole, split in two at every byte (sampled for long inputs), and one byte at
a time, as the upstream connection feeds it: it stops at the first complete response, protocol
error or upgrade. Checked:
- no exception leaves the decoder;
- every split gives the same events: interim and final status, the headers relayed, the body
  bytes, and how it ended;
- what is relayed is clean: no hop-by-hop or framing header, no CR, LF or NUL in a value,
  token names, and a Content-Length body of exactly that length.

The first input byte picks what the request was: a HEAD, an upgrade, or neither.
"""

from __future__ import annotations

import re

from fuzz._common import Finding, main
from udsproxy.codec.response import _DROP_RESPONSE, ResponseDecoder

SPLIT_ALL = 600
# Known findings (fuzz/regressions/*/*.xfail) are tolerated while fuzzing, so a long run keeps
# looking for new ones; their regression tests set this to check them.
STRICT = False
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class Upstream:
    """A fake ``ClientCallbacks`` recording every event."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []
        self.done = False

    def on_response_interim(self, codec: ResponseDecoder) -> None:
        self.events.append(("interim", codec.status, tuple(codec.headers)))

    def on_response_headers(self, codec: ResponseDecoder) -> None:
        if codec.block is not None:  # the C scanner's serialized copy must match its list
            from udsproxy.codec.encode import header_block

            if header_block(codec.headers) != codec.block:
                raise Finding("scanner block differs from its headers")
        headers = tuple(codec.headers)
        for name, value in headers:
            if name in _DROP_RESPONSE or (codec.nominated and name in codec.nominated):
                raise Finding(f"hop-by-hop header relayed: {name!r}")
            if not _TOKEN.match(name) or name != name.lower():
                raise Finding(f"bad header name relayed: {name!r}")
            if _VALUE_BAD.search(value) or value != value.strip(b" \t"):
                raise Finding(f"bad header value relayed: {value!r}")
        self.events.append(("headers", codec.status, headers, codec.content_length))

    def on_response_body(self, data: bytes | memoryview) -> None:
        if self.events and self.events[-1][0] == "body":
            self.events[-1] = ("body", self.events[-1][1] + bytes(data))  # type: ignore[operator]
        else:
            self.events.append(("body", bytes(data)))

    def on_response_complete(self) -> None:
        self.events.append(("complete",))
        self.done = True

    def on_response_upgrade(self, rest: bytes) -> None:
        self.events.append(("upgrade",))
        self.done = True

    def on_protocol_error(self) -> None:
        self.events.append(("error",))
        self.done = True


def decode(pieces: list[bytes], mode: int) -> tuple[tuple[object, ...], ...]:
    up = Upstream()
    dec = ResponseDecoder()
    dec.begin(up, mode % 3 == 1, mode % 3 == 2)
    for i, piece in enumerate(pieces):
        dec.feed(piece)
        if up.done:
            all_read = i == len(pieces) - 1
            break
    else:
        all_read = True
    events = tuple(up.events)
    headers = [e for e in events if e[0] == "headers"]
    if events and events[-1] == ("complete",) and headers:
        length = headers[-1][3]
        body = b"".join(e[1] for e in events if e[0] == "body")  # type: ignore[misc]
        if isinstance(length, int) and length >= 0 and not dec.no_body and len(body) != length:
            raise Finding(f"{len(body)} body bytes for content-length {length}")
    # whether the connection may be reused depends on bytes a split read may not have seen
    return (*events, ("keep_alive", dec.keep_alive if all_read else None))


def _same(a: tuple[object, ...], b: tuple[object, ...], mode: int, data: bytes) -> bool:
    if a[:-1] == b[:-1] and a[-2:-1] == (("error",),):
        return True  # the connection is closed after a protocol error: keep_alive is moot
    if a[:-1] == b[:-1] and not STRICT and data[-1:] in (b"\r", b"\n"):
        # finding 3: CR/LF after a Content-Length response leaves the connection reusable when
        # llhttp read the body (llhttp skips empty lines between messages), and retires it when
        # the body was relayed without the parser (every other byte retires it both ways)
        return True
    if a[:-1] != b[:-1]:
        # finding 1: bytes after a complete HEAD response are a protocol error when they come
        # in the same read, a retired connection when they come later (and after a 204 or a
        # Content-Length body, always the latter)
        return (
            not STRICT
            and mode % 3 == 1
            and {a[-2], b[-2]} == {("error",), ("complete",)}
            and a[:-2] == b[:-2]
        )
    ka, kb = a[-1][1], b[-1][1]  # type: ignore[index]
    return ka is None or kb is None or ka == kb


def _splits(n: int) -> list[int]:
    if n <= SPLIT_ALL:
        return list(range(1, n))
    step = n / 64
    return sorted({int(step * i) for i in range(1, 64)})


def check(data: bytes) -> None:
    if not data:
        return
    mode, data = data[0], data[1:]
    whole = decode([data], mode)
    for i in _splits(len(data)):
        split = decode([data[:i], data[i:]], mode)
        if not _same(split, whole, mode, data):
            raise Finding(f"split at {i} differs:\n whole {whole!r}\n split {split!r}")
    if len(data) <= SPLIT_ALL:
        bytewise = decode([data[i : i + 1] for i in range(len(data))], mode)
        if not _same(bytewise, whole, mode, data):
            raise Finding(f"byte-by-byte differs:\n whole {whole!r}\n bytes {bytewise!r}")


if __name__ == "__main__":
    main(check, "response")
