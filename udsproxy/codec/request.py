"""The HTTP/1.1 request decoder (server side): bytes in, request messages out. No I/O.

``RequestDecoder`` is httptools' callback target. It enforces the header limits, classifies
each header once (most are only kept, a few steer framing and forwarding) and reports whole
messages to its ``ServerCallbacks`` (the downstream connection). A message's body and end go
straight to the message (``RequestHead.decode_data``/``decode_complete``), as Envoy's codec
calls its stream decoder.

Streams start only after ``feed`` returns, so a request that turns out malformed later in the
same buffer is never forwarded.

The fast path: where the C scanner is built (``codec/_scan.c``, the compiled form), a whole
bodyless GET or HEAD head is read in one call instead of one llhttp callback per header. It
takes only a strict subset of what llhttp takes, and only at a message boundary; everything else
(and every error) goes through llhttp as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import httptools
from mypy_extensions import mypyc_attr

from udsproxy.codec import http1
from udsproxy.codec.http1 import AUTHORITY_TABLE, SPECIAL_REQUEST_HEADERS, LocalReply

ScanRequest = Callable[
    [bytes, int, int, int, bool],
    tuple[int, bytes, bytes, list[tuple[bytes, bytes]], list[tuple[bytes, bytes]], bool] | None,
]
SCAN_REQUEST: ScanRequest | None
try:
    from udsproxy.codec import _scan
except ImportError:  # the pure-Python form: llhttp reads every request
    SCAN_REQUEST = None
else:
    # x-request-id is forwarded in place; the scanner flags it
    _scan.configure(SPECIAL_REQUEST_HEADERS - {b"x-request-id"}, AUTHORITY_TABLE)
    SCAN_REQUEST = _scan.scan_request

__all__ = [
    "CodecStats",
    "RequestDecoder",
    "RequestHead",
    "ServerCallbacks",
    "decoder_class",
]

_CONNECTION_KEEP = (b"close", b"keep-alive", b"upgrade", b"")


# Interpreted subclasses allowed (tests record messages with one); measured free for the native
# ones (callgrind, compiled build: 104.2k -> 103.0k instructions per small GET)
@mypyc_attr(allow_interpreted_subclasses=True)
class RequestHead:
    """One request as the codec saw it. The data path's stream extends it (and the access log's
    record, ``StreamInfo``, is one too): one object per request."""

    __slots__ = (
        "authority",
        "envoy_retry",
        "expect_continue",
        "headers",
        "host_seen",
        "http10",
        "is_head",
        "keep_alive",
        "method",
        "nominated",
        "path",
        "protocol",
        "req_chunked",
        "req_cl",
        "request_id_seen",
        "upgrade",
        "url",
        "xff",
        "xfp",
    )

    def __init__(self) -> None:
        self.method: bytes = b""
        self.url = b""
        self.path: bytes = b""  # as forwarded (after prefix_rewrite), like Envoy's :path
        self.authority: bytes = b""
        self.protocol: str = "HTTP/1.1"
        self.host_seen = False
        # every header to forward, lower-case names, in order
        self.headers: list[tuple[bytes, bytes]] = []
        self.xff: bytes | None = None
        self.xfp: bytes | None = None
        self.envoy_retry: list[tuple[bytes, bytes]] | None = None  # x-envoy-retry-on, -max-retries
        self.request_id_seen = False
        self.req_cl = -1
        self.req_chunked = False
        self.nominated: list[bytes] | None = None  # headers named in Connection
        self.upgrade: bytes | None = None
        self.expect_continue = False
        self.http10 = False
        self.keep_alive = True
        self.is_head = False

    # -- the stream decoder interface (the data path's stream overrides these) -----------------
    def decode_data(self, data: bytes) -> None:
        raise NotImplementedError

    def decode_complete(self) -> None:
        raise NotImplementedError

    # -- header classification ------------------------------------------------------------------
    def add_header(self, name: bytes, value: bytes) -> LocalReply | None:
        """A header the codec flagged as special (http1.SPECIAL_REQUEST_HEADERS)."""
        if name == b"host":
            if self.host_seen:
                return http1.BAD_REQUEST  # duplicate Host (RFC 9112 3.2)
            if value.translate(AUTHORITY_TABLE) != value:
                return http1.INVALID_AUTHORITY  # never forwarded (a space, "{", "/", ...)
            self.host_seen = True
            self.authority = value
        elif name == b"content-length":
            self.req_cl = int(value)  # llhttp rejected anything but one run of digits
        elif name == b"transfer-encoding":
            self.req_chunked = True  # llhttp insists chunked is last
        elif name == b"connection":
            for token in value.lower().split(b","):
                token = token.strip()
                if token not in _CONNECTION_KEEP:
                    if self.nominated is None:
                        self.nominated = []
                    self.nominated.append(token)
        elif name == b"upgrade":
            self.upgrade = value
        elif name == b"expect":
            self.expect_continue = value.lower() == b"100-continue"
        elif name == b"x-forwarded-for":
            self.xff = value if self.xff is None else self.xff + b", " + value
        elif name == b"x-forwarded-proto":
            self.xfp = value  # trusted only behind xff_num_trusted_hops proxies
        elif name == b"x-request-id":
            self.request_id_seen = True
            self.headers.append((name, value))
        elif name == b"x-envoy-retry-on" or name == b"x-envoy-max-retries":
            # the router honours them where Envoy would not have sanitized them; never forwarded
            if self.envoy_retry is None:
                self.envoy_retry = []
            self.envoy_retry.append((name, value))
        # other hop-by-hop and sanitized headers are dropped
        return None

    def headers_complete(
        self, method: bytes, version: str, keep_alive: bool, upgrade: bool
    ) -> LocalReply | None:
        """The head is whole: check it, resolve the target. Returns the reply for a bad one."""
        self.method = method
        self.is_head = method == b"HEAD"
        self.http10 = version == "1.0"
        if self.http10:
            self.protocol = "HTTP/1.0"
        self.keep_alive = keep_alive
        if method == b"CONNECT":
            return http1.BAD_REQUEST  # CONNECT tunnels are not supported
        if self.upgrade is not None:
            if self.upgrade.lower() == b"h2c":
                # Envoy's HTTP/1 codec drops h2c upgrades and proxies the plain request.
                self.upgrade = None
                self.nominated = [*(self.nominated or ()), b"http2-settings"]
            elif not upgrade:
                self.upgrade = None  # Upgrade without "Connection: upgrade" asks for nothing
        url = self.url
        self.path = url  # origin-form, or "*" for OPTIONS, goes through as is
        if url[:1] != b"/" and not (url == b"*" and method == b"OPTIONS"):
            reply = self._absolute_form(url)
            if reply is not None:
                return reply
        if not self.host_seen and not self.http10:
            return http1.MISSING_HOST
        if self.nominated:
            drop = set(self.nominated)
            self.headers = [h for h in self.headers if h[0] not in drop]
            self.request_id_seen = any(h[0] == b"x-request-id" for h in self.headers)
        return None

    def _absolute_form(self, url: bytes) -> LocalReply | None:
        # absolute-form: its authority replaces Host (RFC 9112 3.2.2)
        if url[:7].lower() != b"http://" and url[:8].lower() != b"https://":
            return http1.BAD_REQUEST
        try:
            # Any: httptools' stubs say bytes where it gives None (a compiled build checks)
            parsed: Any = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            return http1.BAD_REQUEST
        if not parsed.host:
            return http1.BAD_REQUEST
        self.authority = parsed.host + (b":%d" % parsed.port if parsed.port else b"")
        self.host_seen = True
        path = parsed.path or b"/"
        self.path = path + b"?" + parsed.query if parsed.query else path
        return None


class CodecStats(Protocol):
    """The connection manager's counters the codec adds to (Envoy's http1.* and friends)."""

    downstream_rq_non_relative_path: int
    http1_dropped_headers_with_underscores: int
    http1_requests_rejected_with_underscores_in_headers: int


class ServerCallbacks(Protocol):
    """What the decoder reports to its connection."""

    def new_stream(self) -> RequestHead: ...

    def on_request_headers(self, s: RequestHead) -> None: ...


class _Reject(Exception):
    """Raised from a parser callback to stop parsing; the reply is in ``error``."""


class _Stop(Exception):
    """Raised after a ``Connection: close`` request: what follows it is not a request."""


# What ``feed`` reports (besides messages, which go to the callbacks).
OK = 0
ERROR = 1  # malformed: answer ``error`` (or 400) in order, then close
STOPPED = 2  # a Connection: close request ended: nothing after it is read
UPGRADE = 3  # llhttp stopped at an Upgrade/CONNECT request: the rest is ``upgrade_rest``


class RequestDecoder:
    """One connection's request parser state. ``feed`` returns OK, ERROR, STOPPED or UPGRADE."""

    __slots__ = (
        "callbacks",
        "cur",
        "error",
        "fast",
        "head_fed",
        "header_bytes",
        "header_count",
        "in_head",
        "max_header_bytes",
        "max_headers_count",
        "on_message_begin",
        "parser",
        "scan",
        "stats",
        "stopped",
        "underscores_ok",
        "unread",
        "upgrade_rest",
    )

    def __init__(
        self,
        callbacks: ServerCallbacks,
        max_header_bytes: int,
        max_headers_count: int,
        stats: CodecStats,
        timed_heads: bool = False,
    ) -> None:
        self.callbacks = callbacks
        self.max_header_bytes = max_header_bytes
        self.max_headers_count = max_headers_count
        self.stats = stats
        # llhttp's on_message_begin: none unless heads are timed (_begin; httptools looks for
        # it once, when a parser is made, and a None one costs nothing)
        self.on_message_begin: Callable[[], None] | None = self._begin if timed_heads else None
        self.parser = httptools.HttpRequestParser(self)
        self.cur: RequestHead | None = None  # being parsed
        self.error: LocalReply | None = None
        self.stopped = False
        self.unread = False  # bytes after a "Connection: close" request arrived
        self.in_head = True
        # raw bytes fed while a request head is incomplete: httptools only reports a header
        # when its line ends, so a never-ending header must be cut off here (431)
        self.head_fed = 0
        self.header_bytes = 0
        self.header_count = 0
        self.upgrade_rest = b""
        self.scan = SCAN_REQUEST
        # headers_with_underscores_action other than ALLOW: names with "_" are left to llhttp
        # and the subclass's on_header
        self.underscores_ok = type(self) is RequestDecoder
        # llhttp is at a message boundary, so the scanner may read what comes next
        self.fast = SCAN_REQUEST is not None

    def _begin(self) -> None:
        """With ``timed_heads``, each request's stream starts at the first byte of its head, not
        at its URL: where the time a head takes to arrive is limited (request_headers_timeout),
        as Envoy's codec starts the stream at message begin. A head that is still incomplete
        after a read then always has its stream (``cur``); the scanner's whole heads never pay
        for it, llhttp's pay one callback (on_url then finds the stream made)."""
        if self.cur is None and not self.stopped:  # after "Connection: close", on_url refuses
            self.cur = self.callbacks.new_stream()
            self.header_bytes = 0
            self.header_count = 0

    def reset(self) -> None:
        """A fresh parser for what follows: after a body moved by splice(2), or a dropped
        upgrade (the old one stopped mid-message)."""
        self.parser = httptools.HttpRequestParser(self)
        self.fast = self.scan is not None

    def feed(self, data: bytes) -> int:
        if self.fast and self.cur is None and not self.stopped:
            taken = self._scan(data)
            if taken == len(data):
                return OK
            if taken:
                data = data[taken:]
        # llhttp now holds part of a message; the scanner waits until a feed ends at a
        # boundary (a complete message and nothing after it: the bytes end a head or a
        # chunked body, and no new message was begun)
        self.fast = False
        result = self._feed(data)
        if result == OK and self.cur is None and self.scan is not None and data[-4:] == b"\r\n\r\n":
            self.fast = True
        return result

    def _scan(self, data: bytes) -> int:
        """Whole bodyless requests read by the C scanner; returns the bytes they took."""
        scan = self.scan
        assert scan is not None
        callbacks = self.callbacks
        underscores_ok = self.underscores_ok
        pos = 0
        end = len(data)
        while pos < end:
            head = scan(data, pos, self.max_header_bytes, self.max_headers_count, underscores_ok)
            if head is None:
                break
            pos, method, url, headers, specials, request_id_seen = head
            s = self.cur = callbacks.new_stream()
            s.url = url
            s.headers = headers
            s.request_id_seen = request_id_seen
            # the scanner took only what cannot be refused here (Host present and valid, no
            # framing, upgrade or Connection tokens), so neither call answers with a reply
            for name, value in specials:
                s.add_header(name, value)
            s.headers_complete(method, "1.1", True, False)
            callbacks.on_request_headers(s)
            self.cur = None
            s.decode_complete()
        return pos

    def _feed(self, data: bytes) -> int:
        if self.in_head:
            self.head_fed += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgrade_rest = data[exc.args[0] :]
            return UPGRADE
        except httptools.HttpParserError:
            if self.stopped:
                # llhttp itself refuses bytes after a "Connection: close" request (before any
                # on_url): they are unread all the same, so the close must be a delayed one
                self.unread = True
                return STOPPED
            return ERROR
        if self.stopped:
            return STOPPED
        if self.in_head and self.head_fed > self.max_header_bytes:
            self.error = http1.HEADERS_TOO_LARGE
            return ERROR
        return OK

    def take(self) -> RequestHead | None:
        """The message being parsed, which an error ends (None if none had begun)."""
        s, self.cur = self.cur, None
        return s

    # -- httptools callbacks -----------------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        # No on_message_begin: one callback fewer per request; the URL always comes first.
        s = self.cur
        if s is None:
            if self.stopped:
                self.unread = True  # a request after "Connection: close": never read
                raise _Stop
            s = self.cur = self.callbacks.new_stream()
            self.header_bytes = 0
            self.header_count = 0
        s.url += url
        self.header_bytes += len(url)
        if self.header_bytes > self.max_header_bytes:
            self._reject(http1.HEADERS_TOO_LARGE)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value) + 4
        self.header_count += 1
        if self.header_bytes > self.max_header_bytes:
            self._reject(http1.HEADERS_TOO_LARGE)
        if self.header_count > self.max_headers_count:
            self._reject(http1.TOO_MANY_HEADERS)
        s = self.cur
        assert s is not None
        if not self.in_head:
            return  # a chunked body's trailers: counted, then dropped (Envoy's HTTP/1 default)
        name = name.lower()
        if name not in SPECIAL_REQUEST_HEADERS:
            s.headers.append((name, value))
            return
        reply = s.add_header(name, value)
        if reply is not None:
            self._reject(reply)

    def on_headers_complete(self) -> None:
        s = self.cur
        assert s is not None
        self.in_head = False
        self.head_fed = 0
        parser = self.parser
        reply = s.headers_complete(
            parser.get_method(),
            parser.get_http_version(),
            parser.should_keep_alive(),
            parser.should_upgrade(),
        )
        if s.path is not s.url:
            self.stats.downstream_rq_non_relative_path += 1
        if reply is not None:
            self._reject(reply)
        self.callbacks.on_request_headers(s)

    def on_body(self, body: bytes) -> None:
        s = self.cur
        assert s is not None
        s.decode_data(body)

    def on_message_complete(self) -> None:
        s = self.cur
        assert s is not None
        self.cur = None
        self.in_head = True
        s.decode_complete()
        if not s.keep_alive:
            self.stopped = True  # bytes after a "Connection: close" request are not parsed

    def _reject(self, reply: LocalReply) -> None:
        self.error = reply
        raise _Reject


class _DropUnderscores(RequestDecoder):
    """headers_with_underscores_action: DROP_HEADER."""

    __slots__ = ()

    def on_header(self, name: bytes, value: bytes) -> None:
        # counted against the limits like any header, then taken back out (no special header
        # has an underscore, so it was the last one appended)
        RequestDecoder.on_header(self, name, value)
        if b"_" in name and self.in_head:  # a trailer was not appended
            self.stats.http1_dropped_headers_with_underscores += 1
            assert self.cur is not None
            self.cur.headers.pop()


class _RejectUnderscores(RequestDecoder):
    """headers_with_underscores_action: REJECT_REQUEST (400, as Envoy's HTTP/1 codec)."""

    __slots__ = ()

    def on_header(self, name: bytes, value: bytes) -> None:
        if b"_" in name:
            self.stats.http1_requests_rejected_with_underscores_in_headers += 1
            self._reject(http1.UNDERSCORE_IN_HEADER)
        RequestDecoder.on_header(self, name, value)


def decoder_class(underscores_action: str) -> type[RequestDecoder]:
    """The decoder for a connection manager's headers_with_underscores_action: the default
    (ALLOW) costs nothing per header."""
    if underscores_action == "DROP_HEADER":
        return _DropUnderscores
    if underscores_action == "REJECT_REQUEST":
        return _RejectUnderscores
    return RequestDecoder
