"""The HTTP/1.1 response decoder (client side): bytes in, response events out. No I/O.

One decoder per upstream connection, reused for each response on it. It classifies response
headers once (framing and hop-by-hop headers never cross the proxy), relays a Content-Length
body without the parser, and reports to its ``ClientCallbacks`` (the upstream request).

The fast path: where the C scanner is built (``codec/_scan.c``, the compiled form), the head of a
plain Content-Length response is read in one call instead of one llhttp callback per header, and
its body is relayed without the parser. Anything else goes through llhttp as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import httptools

ScanResponse = Callable[
    [bytes, int], tuple[int, int, list[tuple[bytes, bytes]], int, bool, bytes] | None
]
SCAN_RESPONSE: ScanResponse | None
try:
    from udsproxy.codec import _scan
except ImportError:  # the pure-Python form: llhttp reads every response
    SCAN_RESPONSE = None
else:
    SCAN_RESPONSE = _scan.scan_response

__all__ = ["MAX_RESPONSE_HEAD", "ClientCallbacks", "ResponseDecoder"]

# Response headers that never cross the proxy (hop-by-hop) or that it re-frames itself.
_DROP_RESPONSE = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"content-length",
        b"server",
    }
)
_CONNECTION_KEYWORDS = frozenset({b"close", b"keep-alive", b"upgrade"})

MAX_RESPONSE_HEAD = 60 * 1024  # Envoy's max_response_headers_kb default


class ClientCallbacks(Protocol):
    """What the decoder reports about the response to the request it was sent for."""

    def on_response_interim(self, codec: ResponseDecoder) -> None: ...

    def on_response_headers(self, codec: ResponseDecoder) -> None: ...

    def on_response_body(self, data: bytes | memoryview) -> None: ...

    def on_response_complete(self) -> None: ...

    def on_response_upgrade(self, rest: bytes) -> None: ...

    def on_protocol_error(self) -> None: ...


class _Overrun(Exception):
    """Raised from a parser callback: a second response started where one was expected."""


class ResponseDecoder:
    __slots__ = (
        "block",
        "body_remaining",
        "callbacks",
        "content_length",
        "expect_upgrade",
        "fresh",
        "head_fed",
        "head_request",
        "headers",
        "in_body",
        "keep_alive",
        "message_done",
        "no_body",
        "nominated",
        "parser",
        "resp_chunked",
        "scan",
        "status",
        "stray_body",
        "upgraded",
    )

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.scan = SCAN_RESPONSE
        self.fresh = True  # the parser has seen nothing of the response being read
        self.callbacks: ClientCallbacks | None = None
        self.upgraded = False
        self.expect_upgrade = False
        self.head_request = False
        self.reset()
        self.message_done = True  # a fresh connection is as reusable as a finished one

    def reset(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        # the scanner's serialized headers (encode.header_block(headers)); None from llhttp
        self.block: bytes | None = None
        self.status = 0
        self.content_length = -1
        self.resp_chunked = False
        self.keep_alive = True
        self.in_body = False  # final response headers seen, body may follow
        self.no_body = False
        self.message_done = False
        self.stray_body = False
        self.body_remaining = -1  # >0: the body is relayed without the parser (see feed)
        self.head_fed = 0
        self.nominated: frozenset[bytes] | None = None  # headers the upstream's Connection names

    def begin(self, callbacks: ClientCallbacks, head_request: bool, upgrade: bool) -> None:
        """A request was sent: what comes next is its response."""
        self.callbacks = callbacks
        self.head_request = head_request
        self.expect_upgrade = upgrade
        self.reset()
        # A connection is reused only after a response that ended exactly (any byte after it
        # retires it): its parser is at a message boundary.
        self.fresh = not (head_request or upgrade) and self.scan is not None

    def body_spliced(self) -> None:
        """The rest of the body moved by splice(2): the response is complete."""
        self.body_remaining = -1
        self.parser = httptools.HttpResponseParser(self)
        self.message_done = True

    def _scan(self, data: bytes, cb: ClientCallbacks) -> bool:
        """A plain Content-Length response's head read by the C scanner, its body relayed."""
        scan = self.scan
        assert scan is not None
        head = scan(data, MAX_RESPONSE_HEAD)
        if head is None:
            return False
        end, self.status, self.headers, length, keep_alive, self.block = head
        self.content_length = length
        self.keep_alive = keep_alive
        self.in_body = True
        cb.on_response_headers(self)
        if self.callbacks is not cb:
            return True  # the request is gone (reset): the connection is not reused
        rest = len(data) - end
        if rest < length:
            self.body_remaining = length - rest
            if rest:
                cb.on_response_body(memoryview(data)[end:])
            return True
        if length:
            cb.on_response_body(memoryview(data)[end : end + length])
        if rest > length:
            self.keep_alive = False  # bytes after the response: not reusable
        self.message_done = True
        cb.on_response_complete()
        return True

    def feed(self, data: bytes) -> None:
        cb = self.callbacks
        assert cb is not None
        remaining = self.body_remaining
        if remaining > 0:
            # Content-Length body after the headers: relay the bytes as they are, no parsing.
            n = len(data)
            if n < remaining:
                self.body_remaining = remaining - n
                cb.on_response_body(data)
                return
            self.body_remaining = -1
            if n > remaining:
                cb.on_response_body(memoryview(data)[:remaining])
                self.keep_alive = False  # bytes after the response: not reusable
            else:
                cb.on_response_body(data)
            if not self.fresh:
                # The parser is mid-body; a fresh one reads the next response.
                self.parser = httptools.HttpResponseParser(self)
            self.message_done = True
            cb.on_response_complete()
            return
        if self.fresh:
            if self._scan(data, cb):
                return
            self.fresh = False  # llhttp reads this response
        if not self.in_body:
            self.head_fed += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgraded = True
            cb.on_response_upgrade(data[exc.args[0] :])
            return
        except httptools.HttpParserError:
            if (self.message_done and not self.stray_body) or self._after_bodiless():
                # Bytes after a complete response (no upstream pipelining): deliver the
                # response, never the extra bytes, and retire the connection.
                self.keep_alive = False
                cb.on_response_complete()
            else:
                cb.on_protocol_error()
            return
        if self.stray_body and self._after_bodiless():
            # bytes after a HEAD (or 204/304) response in the same read: as when they come in a
            # later one, the response is whole and the connection is never reused
            self.stray_body = False
            self.keep_alive = False
            self.message_done = False  # ended below
        if (not self.in_body and self.head_fed > MAX_RESPONSE_HEAD) or self.stray_body:
            cb.on_protocol_error()
        elif self.message_done:
            cb.on_response_complete()
        elif self.in_body and self.no_body:
            # HEAD (or similar): httptools cannot be told there is no body, so end it here.
            self.parser = httptools.HttpResponseParser(self)
            self.message_done = True
            cb.on_response_complete()

    def _after_bodiless(self) -> bool:
        """The head of a response without a body was delivered: what follows is not its."""
        return self.in_body and self.no_body

    @property
    def close_delimited(self) -> bool:
        """The body (begun) ends with the connection."""
        return self.in_body and self.content_length < 0 and not self.resp_chunked

    # -- httptools callbacks: record and relay; completion is handled after feed_data ---------
    def on_message_begin(self) -> None:
        if self.message_done:
            raise _Overrun

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _DROP_RESPONSE:
            if name == b"content-length":
                self.content_length = int(value)  # llhttp already checked digits/duplicates
            elif name == b"transfer-encoding":
                # chunked framing only if chunked is the last coding (else: close-delimited)
                self.resp_chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
            elif name == b"connection":
                tokens = [t.strip() for t in value.lower().split(b",")]
                if b"close" in tokens:
                    self.keep_alive = False
                nominated = [t for t in tokens if t and t not in _CONNECTION_KEYWORDS]
                if nominated:  # hop-by-hop too (RFC 9110 7.6.1): removed before relaying
                    self.nominated = (self.nominated or frozenset()) | frozenset(nominated)
            return
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self.status = status
        cb = self.callbacks
        assert cb is not None
        if status == 101 and not self.expect_upgrade:
            self.stray_body = True  # a 101 nobody asked for: a protocol error, caught below
            raise _Overrun
        if status < 200 and status != 101:
            cb.on_response_interim(self)
            # an interim response's headers say nothing about the final one
            self.headers = []
            self.content_length = -1
            self.resp_chunked = False
            self.keep_alive = True
            self.head_fed = 0
            self.nominated = None
            return
        if not self.parser.should_keep_alive():
            self.keep_alive = False
        if self.nominated is not None:
            drop = self.nominated
            self.headers = [h for h in self.headers if h[0] not in drop]
        self.in_body = True
        self.no_body = self.head_request or status == 204 or status == 304 or status == 101
        cb.on_response_headers(self)
        if self.content_length > 0 and not self.no_body:
            self.body_remaining = self.content_length

    def on_body(self, body: bytes) -> None:
        cb = self.callbacks
        if cb is None or self.no_body:
            self.stray_body = True
            return
        if self.body_remaining > 0:
            self.body_remaining -= len(body)
        cb.on_response_body(body)

    def on_message_complete(self) -> None:
        if self.in_body:
            self.message_done = True
            self.body_remaining = -1
