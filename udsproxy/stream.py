"""One request through the proxy: route, pick a host, send upstream, relay the response, log.

A ``Stream`` is created by the downstream connection's parser and filled header by header.
Once it becomes the connection's active stream, ``start()`` routes it. Everything after that is
driven by callbacks from the upstream connection (``on_response_*``) and the downstream
connection (``on_request_*``, ``on_downstream_*``). ``_finish()`` runs exactly once and is the
only place observers (access log, stats) are fed.
"""

from __future__ import annotations

import enum
import os
import random
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

import httptools

from udsproxy import http1
from udsproxy.downstream import BLOCK_BODY_BUFFER, BLOCK_SPLICE, BLOCK_UPSTREAM_WRITE
from udsproxy.flags import ResponseFlag
from udsproxy.http1 import AUTHORITY_TABLE
from udsproxy.splice import splice_fds
from udsproxy.streaminfo import Peer, StreamInfo
from udsproxy.tunnel import SplicedTunnel
from udsproxy.upstream_tls import TlsConnectError

if TYPE_CHECKING:
    from udsproxy.context import ListenerContext
    from udsproxy.downstream import DownstreamConnection
    from udsproxy.filters.base import BodyCoder, FilterState
    from udsproxy.pathnorm import PathNormalizer
    from udsproxy.router import CompiledRoute, RequestShaping
    from udsproxy.upstream import Host, UpstreamConnection

__all__ = ["Stream", "request_id"]

_rng = random.Random(os.urandom(16))
_getrandbits = _rng.getrandbits
# Workers are forked after this import: each must draw its own x-request-id sequence.
os.register_at_fork(after_in_child=lambda: _rng.seed(os.urandom(16)))
_VARIANT = (b"8", b"9", b"a", b"b")
_CRLF = b"\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_LAST_CHUNK_LEN = len(_LAST_CHUNK)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Unset(enum.Enum):
    """No route given to Stream.start (None is a valid route: no route matched)."""

    UNSET = 0


_UNSET: Final = _Unset.UNSET
_TEXT_PLAIN = b"text/plain"


def _first(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    return next((v for n, v in headers if n == name), None)


def _append_forwarded_host(headers: list[tuple[bytes, bytes]], host: bytes) -> None:
    """Envoy's append_x_forwarded_host: add the original Host unless it is the last one."""
    for i in range(len(headers) - 1, -1, -1):
        name, value = headers[i]
        if name == b"x-forwarded-host":
            if value.rsplit(b",", 1)[-1].strip() != host:
                headers[i] = (name, value + b"," + host)
            return
    headers.append((b"x-forwarded-host", host))


def request_id() -> bytes:
    """A random (version 4) UUID, as Envoy generates for x-request-id."""
    h = b"%032x" % _getrandbits(128)
    # version nibble 4; variant nibble 8, 9, a or b
    return b"%s-%s-4%s-%s%s-%s" % (
        h[:8],
        h[8:12],
        h[13:16],
        _VARIANT[_getrandbits(2)],
        h[17:20],
        h[20:],
    )


class Stream(StreamInfo):
    """A request in flight. It is its own ``StreamInfo``: one object per request, not two."""

    __slots__ = (
        "body",
        "body_size",
        "chunked_out",
        "close_after",
        "conn",
        "ctx",
        "deadline",
        "done",
        "error",
        "expect_continue",
        "filter_state",
        "head",
        "headers",
        "host",
        "host_seen",
        "http10",
        "is_head",
        "keep_alive",
        "nominated",
        "req_chunked",
        "req_cl",
        "req_coder",
        "request_complete",
        "request_id_seen",
        "resp_coder",
        "response_has_no_body",
        "response_started",
        "retain_body",
        "retried",
        "reused",
        "route",
        "tunnel_buf",
        "tunnel_splice",
        "upgrade",
        "upstream",
        "url",
        "xff",
        "xfp",
    )

    def __init__(self, ctx: ListenerContext, conn: DownstreamConnection) -> None:
        StreamInfo.__init__(self, time.time(), time.monotonic())
        self.ctx = ctx
        self.conn = conn
        self.connection_id = conn.conn_id
        self.downstream_remote = self.downstream_direct_remote = conn.peer
        self.downstream_local = conn.local
        # request, filled by the parser
        self.url = b""
        self.host_seen = False  # authority/path live in StreamInfo
        self.headers: list[tuple[bytes, bytes]] = []
        self.xff: bytes | None = None
        self.xfp: bytes | None = None
        self.request_id_seen = False
        self.req_cl = -1
        self.req_chunked = False
        self.nominated: list[bytes] | None = None  # headers named in Connection
        self.upgrade: bytes | None = None
        self.expect_continue = False
        self.http10 = False
        self.keep_alive = True
        self.is_head = False
        self.error: http1.LocalReply | None = None
        self.request_complete = False
        # request body kept for one retry on a fresh connection, bounded by the buffer limit
        self.body: list[bytes] = []
        self.body_size = 0
        self.retain_body = True
        # proxying state
        self.route: CompiledRoute | None = None
        # http filters (udsproxy.filters): None unless the listener has some and they act
        self.filter_state: FilterState | None = None
        self.req_coder: BodyCoder | None = None  # request body decompression
        self.resp_coder: BodyCoder | None = None  # response body (de)compression
        self.host: Host | None = None
        self.upstream: UpstreamConnection | None = None
        self.head = b""
        self.reused = False
        self.retried = False
        self.deadline = 0.0
        self.response_started = False
        self.response_has_no_body = False
        self.chunked_out = False
        self.close_after = False
        self.tunnel_buf: list[bytes] | None = None
        self.tunnel_splice: SplicedTunnel | None = None
        self.done = False

    # -- parsing (called from DownstreamConnection's parser callbacks) ------------------------
    def add_header(self, name: bytes, value: bytes) -> http1.LocalReply | None:
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
                if token not in (b"close", b"keep-alive", b"upgrade", b""):
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
        # other hop-by-hop and sanitized headers are dropped
        return None

    def headers_complete(
        self, method: bytes, version: str, keep_alive: bool, upgrade: bool
    ) -> http1.LocalReply | None:
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
            if url[:7].lower() != b"http://" and url[:8].lower() != b"https://":
                return http1.BAD_REQUEST
            # absolute-form: its authority replaces Host (RFC 9112 3.2.2)
            self.ctx.http_stats.downstream_rq_non_relative_path += 1
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                return http1.BAD_REQUEST
            if not parsed.host:
                return http1.BAD_REQUEST
            self.authority = parsed.host + (b":%d" % parsed.port if parsed.port else b"")
            self.host_seen = True
            path = parsed.path or b"/"
            self.path = path + b"?" + parsed.query if parsed.query else path
        if not self.host_seen and not self.http10:
            return http1.MISSING_HOST
        if self.nominated:
            drop = set(self.nominated)
            self.headers = [h for h in self.headers if h[0] not in drop]
            self.request_id_seen = any(h[0] == b"x-request-id" for h in self.headers)
        return None

    def reject(self, reply: http1.LocalReply) -> None:
        self.error = reply

    def reject_body(self, reply: http1.LocalReply) -> None:
        """Its body turned out malformed before it started (queued): answered in turn, and
        logged with its request headers, as Envoy logs a DPE in the middle of a body."""
        self._mutate_request_headers()
        self.error = reply

    def on_request_body(self, data: bytes) -> None:
        n = len(data)
        self.bytes_received += n
        if self.req_coder is not None:
            self._pump_request(data)
            return
        up = self.upstream
        if self.retain_body:
            conn = self.conn
            self.body.append(data)
            self.body_size += n
            conn.body_buffered += n
            if conn.body_buffered > self.ctx.buffer_limit:
                if up is None:
                    # Not sent yet (connecting, or queued behind a pipelined request): hold
                    # the body, but read no more until it has gone upstream.
                    conn.block_reading(BLOCK_BODY_BUFFER, True)
                else:
                    self._drop_body()  # too big to replay: no retry for this one
        if up is not None and up.transport is not None:
            if self.req_chunked:
                size = b"%x\r\n" % n
                up.transport.writelines([size, data, _CRLF])
                n += len(size) + 2  # bytes on the wire, as Envoy counts them
            else:
                up.transport.write(data)
            up.stats.upstream_cx_tx_bytes_total += n

    def _pump_request(self, data: bytes = b"") -> None:
        """The request body through its decompressor, a bounded piece at a time while the
        upstream takes it (before it is sent: while the held body is under the buffer limit);
        the rest waits compressed in the coder for _send or on_upstream_write_resumed. Once the
        request is complete and the coder drained: its tail and the last chunk."""
        coder = self.req_coder
        assert coder is not None
        self.req_coder = None  # the pieces take on_request_body's plain path
        piece = coder.encode(data) if data else coder.more()
        while piece:
            self.bytes_received -= len(piece)  # counted when received, not when inflated
            self.on_request_body(piece)
            up = self.upstream
            if self.done or (
                self.conn.body_buffered > self.ctx.buffer_limit
                if up is None
                else self.conn.blocked & BLOCK_UPSTREAM_WRITE
            ):
                self.req_coder = coder
                return
            piece = coder.more()
        if not self.request_complete:
            self.req_coder = coder
            return
        tail = coder.finish()
        if tail:
            self.bytes_received -= len(tail)
            self.on_request_body(tail)
        up = self.upstream
        if up is not None and up.transport is not None:
            up.transport.write(_LAST_CHUNK)
            up.stats.upstream_cx_tx_bytes_total += _LAST_CHUNK_LEN
            self.last_upstream_tx_mono = time.monotonic()

    def on_request_complete(self) -> None:
        self.request_complete = True
        self.deadline = 0.0  # request_timeout's, if any: the route timeout starts now
        self.last_downstream_rx_mono = time.monotonic()
        up = self.upstream
        if self.req_coder is not None:
            self._pump_request()  # what the decompressor holds, then the last chunk
        elif up is not None and up.transport is not None:
            if self.req_chunked:
                up.transport.write(_LAST_CHUNK)
                up.stats.upstream_cx_tx_bytes_total += _LAST_CHUNK_LEN
            self.last_upstream_tx_mono = self.last_downstream_rx_mono
        if self.route is not None and not self.done:
            self._arm_route_timeout()

    def on_request_error(self, reply: http1.LocalReply) -> None:
        """The active request turned out malformed mid-body."""
        self._drop_upstream()
        if self.response_started:
            self.response_flags |= ResponseFlag.DPE
            self.conn.abort()
            self._finish(True)
        else:
            self._local_reply(reply, close=True)

    def tunnel_early_data(self, data: bytes) -> None:
        self.tunnel_buf = [data] if data else []

    # -- routing and sending upstream ---------------------------------------------------------
    def start(self, route: CompiledRoute | _Unset | None = _UNSET) -> None:
        """Route the request and send it upstream. Called without ``route`` when the request
        becomes the connection's active one; with it by ``resume``."""
        ctx = self.ctx
        if route is _UNSET:
            if self.error is not None:
                self._local_reply(self.error, close=True)
                return
            self._mutate_request_headers()
            if ctx.before_routing:  # path normalization or http filters: off the common path
                found = self._before_routing(ctx)
                if found is _UNSET:
                    return  # answered, or held by a filter until it calls resume()
                route = found
            else:
                route = ctx.router.match(self.authority, self.path)
        if route is None:
            self._local_reply(http1.NO_ROUTE)
            return
        self.route = route
        self.route_name = route.name
        if self.upgrade is not None and self.upgrade.lower() not in route.upgrade_types:
            self._local_reply(http1.UPGRADE_FAILED, close=True)
            return
        if route.direct_response is not None:
            ctx.http_stats.rq_direct_response += 1
            self._local_reply(route.direct_response)
            return
        cluster = ctx.clusters.get(route.cluster)
        if cluster is None:
            self._local_reply(http1.NO_CLUSTER)
            return
        self.upstream_cluster = cluster.name
        host = cluster.pick()
        if host is None:
            cluster.stats.upstream_cx_none_healthy += 1
            self._local_reply(http1.NO_HEALTHY_UPSTREAM)
            return
        self.host = host
        self.upstream_host = host.text
        self.head = self._build_head(route)
        if self.expect_continue and not self.request_complete and not self.http10:
            self.conn.write(_CONTINUE)
        up = host.acquire()
        if up is not None:
            self._send(up)
        else:
            self.ctx.spawn(self._connect())
        if self.request_complete:
            self._arm_route_timeout()

    def resume(self, route: CompiledRoute | None) -> None:
        """The router's part, when a filter that held the request lets it go (fault delay)."""
        self.start(route)

    def _before_routing(self, ctx: ListenerContext) -> CompiledRoute | _Unset | None:
        """The connection manager's path normalization, the route match and the http
        filters' decode: the route, or _UNSET if the request was answered or is held."""
        if ctx.path_normalizer is not None and not self._normalize_path(ctx.path_normalizer):
            return _UNSET
        route = ctx.router.match(self.authority, self.path)
        if ctx.filters is not None and ctx.filters.decode_headers(self, route):
            return _UNSET
        return route

    def _normalize_path(self, normalize: PathNormalizer) -> bool:
        """The connection manager's path normalization; False if it answered the request."""
        result = normalize(self.path)
        if result.reject:
            self.ctx.http_stats.downstream_rq_failed_path_normalization += 1
            self._local_reply(http1.PATH_NORMALIZATION_FAILED, close=True)
            return False
        self.path = result.path
        if result.redirect:
            self.ctx.http_stats.downstream_rq_redirected_with_normalized_path += 1
            self._local_reply(http1.PATH_NORMALIZATION_REDIRECT, location=result.path)
            return False
        return True

    def _mutate_request_headers(self) -> None:
        """What Envoy's connection manager does before routing, so every log line has it."""
        ctx = self.ctx
        headers = self.headers
        xff = self.xff
        hops = ctx.xff_num_trusted_hops
        if xff is not None and (hops or not ctx.use_remote_address):
            self._trust_xff(xff, hops if ctx.use_remote_address else hops + 1)
        if ctx.use_remote_address and self.conn.peer_ip:  # only IP peers are appended
            ip = self.conn.peer_ip
            headers.append((b"x-forwarded-for", xff + b", " + ip if xff else ip))
        elif xff is not None:
            headers.append((b"x-forwarded-for", xff))
        trusted_xfp = self.xfp if hops and self.xfp is not None else ctx.scheme
        headers.append((b"x-forwarded-proto", trusted_xfp))
        if not self.request_id_seen and ctx.generate_request_id:
            headers.append((b"x-request-id", request_id()))
        self.request_headers = headers

    def _build_head(self, route: CompiledRoute) -> bytes:
        if route.request_shaping is not None:
            self._shape_request(route.request_shaping)
        headers = self.headers
        path = self.path
        if route.prefix_rewrite is not None:
            new_path = route.rewrite(path)
            if new_path != path:
                # %REQ(:PATH)% shows what went upstream; the default format logs the original
                headers.append((b"x-envoy-original-path", path))
                path = self.path = new_path
        host = self.authority or self.ctx.default_host
        parts = [self.method, b" ", path, b" HTTP/1.1\r\nhost: ", host, _CRLF]
        for name, value in headers:
            parts += (name, b": ", value, _CRLF)
        parts.append(route.expected_timeout_header)
        if self.req_chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        elif self.req_cl >= 0:
            parts.append(b"content-length: %d\r\n" % self.req_cl)
        if self.upgrade is not None:
            parts += (b"connection: upgrade\r\nupgrade: ", self.upgrade, _CRLF)
        parts.append(_CRLF)
        return b"".join(parts)

    def _shape_request(self, shaping: RequestShaping) -> None:
        """The route's request header mutations, then its Host rewrite (Envoy's order)."""
        headers = self.headers
        if shaping.mutations is not None:
            shaping.mutations.apply(headers, self)
        new_host = shaping.host_literal
        if new_host is None and shaping.host_header is not None:
            new_host = next((v for n, v in headers if n == shaping.host_header), None) or None
        if new_host is None and shaping.auto_host and self.host is not None:
            new_host = self.host.auto_host()
        if new_host is None:
            return
        old = self.authority
        if shaping.append_xfh and old:
            _append_forwarded_host(headers, old)
        self.authority = new_host  # what goes upstream, and what %REQ(:AUTHORITY)% logs

    def _trust_xff(self, xff: bytes, nth: int) -> None:
        """The client address Envoy trusts: the nth entry from the right of x-forwarded-for."""
        entries = xff.split(b",")
        if nth <= len(entries):
            ip = entries[-nth].strip().decode("latin-1")
            if ip:
                self.downstream_remote = Peer(ip, None)

    async def _connect(self) -> None:
        host = self.host
        assert host is not None
        cs = host.cluster.stats
        cs.upstream_rq_pending_total += 1  # waiting for a connection of its own
        cs.upstream_rq_pending_active += 1
        try:
            up = await host.connect()
        except Exception as exc:  # any failure to connect is a 503 UF, never a hung request
            cs.upstream_rq_pending_active -= 1
            self._on_connect_failed(exc)
            return
        cs.upstream_rq_pending_active -= 1
        if self.done or self.upstream is not None:
            if self.done:
                cs.upstream_rq_cancelled += 1  # the client left before it had a connection
            host.release(up)  # keep the connection for the next request
            return
        self._send(up)

    def _on_connect_failed(self, exc: BaseException) -> None:
        if self.done:
            return
        reply = http1.CONNECT_FAILURE
        if isinstance(exc, TlsConnectError):
            reason, reply = exc.reason, exc.reply  # the body names the TLS failure
        elif isinstance(exc, OSError) and exc.errno is not None:
            reason = f"immediate connect error: {os.strerror(exc.errno)}"
        else:
            reason = "connection timeout"
        self.upstream_transport_failure_reason = reason
        cs = self.host.cluster.stats if self.host is not None else None
        if self.host is not None:
            self.host.cx_connect_fail += 1
        if cs is not None:
            cs.upstream_cx_connect_fail += 1
            if reason == "connection timeout":
                cs.upstream_cx_connect_timeout += 1
        self._local_reply(reply)

    def _send(self, up: UpstreamConnection) -> None:
        self.upstream = up
        self.reused = up.requests > 0
        self.attempt_count += 1
        data = [self.head]
        if self.body:
            if self.req_chunked:
                for chunk in self.body:
                    data += (b"%x\r\n" % len(chunk), chunk, _CRLF)
            else:
                data += self.body
        if self.conn.body_buffered > self.ctx.buffer_limit:
            self._drop_body()
        if self.request_complete and self.req_coder is None:
            if self.req_chunked:
                data.append(_LAST_CHUNK)
            self.last_upstream_tx_mono = time.monotonic()
        up.send(self, data)
        if self.req_coder is not None:
            self._pump_request()  # a held body the decompressor has not let out yet
        if (
            self.conn.blocked & BLOCK_BODY_BUFFER
            and self.conn.body_buffered <= self.ctx.buffer_limit
        ):
            self.conn.block_reading(BLOCK_BODY_BUFFER, False)
        if self.conn.write_paused and up.transport is not None:
            up.transport.pause_reading()

    def _arm_route_timeout(self) -> None:
        route = self.route
        if route is not None and route.timeout > 0 and self.upgrade is None:
            self.deadline = self.ctx.loop.time() + route.timeout
            self.conn.arm(self.deadline)
        if route is not None and route.idle_timeout:
            # shorter than the route timeout, possibly: wake for it (check_timeouts re-arms)
            self.conn.arm(self.conn.last_io + route.idle_timeout)

    # -- the response (called by UpstreamConnection) -----------------------------------------
    def on_response_interim(self, up: UpstreamConnection) -> None:
        status = up.resp_status
        if status == 100 or self.http10:
            return  # the proxy answered Expect itself; HTTP/1.0 clients get no 1xx
        parts = [http1.status_line(status)]
        for name, value in up.resp_headers:
            parts += (name, b": ", value, _CRLF)
        parts.append(_CRLF)
        self.conn.write(b"".join(parts))

    def on_response_headers(self, up: UpstreamConnection) -> None:
        now = time.monotonic()
        self.first_upstream_rx_mono = now
        code = up.resp_status
        self.response_code = code
        self.response_code_details = "via_upstream"
        headers = up.resp_headers
        ctx = self.ctx
        ust = None
        if self.request_complete and self.last_downstream_rx_mono is not None:
            ust = b"%d" % ((now - self.last_downstream_rx_mono) * 1000)
        route = self.route
        if route is not None and route.response_mutations is not None:
            # the route's mutations see the router's header, not the server header (Envoy)
            if ust is not None:
                headers.append((b"x-envoy-upstream-service-time", ust))
                ust = None
            self.response_headers = headers
            route.response_mutations.apply(headers, self)
        length = up.content_length
        if self.filter_state is not None:  # CORS headers, compression: after the router's
            length = self.filter_state.encode_headers(self, code, headers, length)
        parts = [http1.status_line(code)]
        for name, value in headers:
            parts += (name, b": ", value, _CRLF)
        parts.append(ctx.server_header)
        headers.append(ctx.server_header_tuple)
        if ust is not None:
            parts += (b"x-envoy-upstream-service-time: ", ust, _CRLF)
            headers.append((b"x-envoy-upstream-service-time", ust))
        self.response_headers = headers
        if code == 101 and self.upgrade is not None:
            self.response_has_no_body = True
            parts += (b"connection: upgrade\r\nupgrade: ", self.upgrade, _CRLF, _CRLF)
            self.response_started = True
            self.conn.write(b"".join(parts))
            return
        if self.upgrade is not None:
            self.close_after = True  # the parser stopped at the upgrade request
        no_body = self.is_head or code == 204 or code == 304
        self.response_has_no_body = no_body
        if length >= 0:
            if code != 204:
                parts.append(b"content-length: %d\r\n" % length)
        elif no_body:
            pass
        elif self.http10:
            self.close_after = True  # close-delimited for HTTP/1.0 clients
        else:
            self.chunked_out = True
            parts.append(b"transfer-encoding: chunked\r\n")
        if self.close_after or not self.keep_alive or not self.request_complete or ctx.draining:
            self.close_after = True
            parts.append(b"connection: close\r\n")
        elif self.http10:
            parts.append(b"connection: keep-alive\r\n")
        parts.append(_CRLF)
        self.response_started = True
        self.conn.write(b"".join(parts))

    def on_response_body(self, data: bytes | memoryview) -> None:
        if self.resp_coder is not None:
            coder = self.resp_coder
            self.resp_coder = None  # the pieces take the plain path below
            piece = coder.encode(data)
            while piece:  # an empty chunk would end a chunked body
                self.on_response_body(piece)  # a decompressor's: at most the buffer limit
                piece = coder.more()
            self.resp_coder = coder
            return
        n = len(data)
        self.bytes_sent += n
        conn = self.conn
        conn.last_io = self.ctx.loop.time()
        if self.chunked_out:
            conn.write(b"%x\r\n" % n)
            conn.write(data)
            conn.write(_CRLF)
        else:
            conn.write(data)

    def _flush_coder(self) -> None:
        """The end of a transformed body: what the coder still holds goes out last."""
        coder = self.resp_coder
        assert coder is not None
        self.resp_coder = None
        tail = coder.finish()
        if tail:
            self.on_response_body(tail)

    def on_spliced(self, n: int) -> None:
        self.bytes_sent += n
        self.conn.last_io = self.ctx.loop.time()
        self.ctx.http_stats.downstream_cx_tx_bytes_total += n

    def on_response_complete(self, up: UpstreamConnection) -> None:
        if self.resp_coder is not None:
            self._flush_coder()
        if self.chunked_out:
            self.conn.write(_LAST_CHUNK)
        self.upstream = None
        host = self.host
        assert host is not None
        if self.request_complete:
            host.release(up)
        else:
            up.close()  # the request body was not all sent: the connection is out of sync
        self._finish(self.close_after)

    def on_response_upgrade(self, up: UpstreamConnection, rest: bytes) -> None:
        if up.resp_status != 101 or self.upgrade is None:
            self.on_upstream_protocol_error(up)
            return
        self.deadline = 0.0
        self.conn.start_tunnel(self)
        assert up.transport is not None
        if self.tunnel_buf:
            up.transport.writelines(self.tunnel_buf)
            up.stats.upstream_cx_tx_bytes_total += sum(map(len, self.tunnel_buf))
        self.tunnel_buf = None
        if rest:
            self.on_tunnel_data(rest)
        if self.ctx.splice_min_bytes:
            self.ctx.loop.call_soon(self._splice_tunnel)  # once the 101 has left the cork

    def _splice_tunnel(self) -> None:
        """Move the tunnel to splice(2) if nothing is queued on either side (byte order)."""
        up, conn = self.upstream, self.conn
        if self.done or up is None or up.transport is None or conn.transport is None:
            return
        # both sides are destinations: nothing may wait on either (else stay on the relay)
        if conn.out or conn.transport.get_write_buffer_size():
            return
        fds = splice_fds(conn.transport, up.transport)
        if fds is None:
            return
        conn.block_reading(BLOCK_SPLICE, True)
        up.transport.pause_reading()
        self.tunnel_splice = SplicedTunnel(
            self.ctx.loop,
            *fds,
            self.on_upload_spliced,
            self.on_spliced,
            self._tunnel_closed,
            self._tunnel_broken,
        )
        self.tunnel_splice.start()

    def _tunnel_closed(self) -> None:
        self.tunnel_splice = None
        self._drop_upstream()
        self._finish(True)

    def _tunnel_broken(self) -> None:
        self.tunnel_splice = None
        self._drop_upstream()
        self.conn.abort()
        self._finish(True)

    def on_tunnel_data(self, data: bytes) -> None:
        self.bytes_sent += len(data)
        conn = self.conn
        conn.last_io = self.ctx.loop.time()  # traffic either way keeps a tunnel alive
        conn.write(data)

    def on_downstream_tunnel_data(self, data: bytes) -> None:
        n = len(data)
        self.bytes_received += n
        up = self.upstream
        if up is not None and up.transport is not None:
            up.transport.write(data)
            up.stats.upstream_cx_tx_bytes_total += n

    # -- failures ------------------------------------------------------------------------------
    def on_upstream_protocol_error(self, up: UpstreamConnection) -> None:
        up.host.cluster.stats.upstream_cx_protocol_error += 1
        up.abort()
        self.upstream = None
        if self.done:
            return
        if self.response_started:
            self.response_flags |= ResponseFlag.UPE
            self.conn.abort()
            self._finish(True)
        else:
            self._local_reply(http1.UPSTREAM_PROTOCOL_ERROR)

    def on_upstream_lost(self, up: UpstreamConnection) -> None:
        self.upstream = None
        if self.done:
            return
        if up.upgraded:
            self._finish(True)  # tunnel over: close after what is buffered has been written
            return
        if self.response_started:
            if up.in_body and up.content_length < 0 and not up.resp_chunked:
                # A close-delimited body ends with the connection.
                if self.resp_coder is not None:
                    self._flush_coder()
                if self.chunked_out:
                    self.conn.write(_LAST_CHUNK)
                self._finish(self.close_after)
                return
            self.response_flags |= ResponseFlag.UC
            self.conn.abort()
            self._finish(True)
            return
        if (
            self.reused
            and not self.retried
            and up.resp_status == 0
            and self.retain_body
            and self.method in http1.IDEMPOTENT_METHODS
        ):
            # The pool's own stale connection: retry once on a fresh one, unseen by the client.
            self.retried = True
            self.ctx.spawn(self._connect())
            return
        self._local_reply(http1.CONNECTION_TERMINATION)

    def check_timeouts(self, now: float) -> float:
        """Called by the connection's timer; returns the next deadline to wake for (0: none)."""
        if self.deadline and now >= self.deadline:
            if self.request_complete:
                self._timeout(http1.UPSTREAM_TIMEOUT)
            else:
                self.ctx.http_stats.downstream_rq_timeout += 1
                self._timeout(http1.REQUEST_TIMEOUT)
            return 0.0
        route = self.route
        idle = self.ctx.stream_idle_timeout
        if route is not None and route.idle_timeout is not None:
            idle = route.idle_timeout
        nxt = self.deadline
        if idle:
            idle_at = self.conn.last_io + idle
            if idle_at <= now:
                self._timeout(http1.STREAM_IDLE_TIMEOUT)
                return 0.0
            if not nxt or idle_at < nxt:
                nxt = idle_at
        return nxt

    def _timeout(self, reply: http1.LocalReply) -> None:
        self._drop_upstream()
        if self.response_started:
            self.response_flags |= reply.flag
            self.conn.abort()
            self._finish(True)
        else:
            self._local_reply(reply, close=not self.request_complete)

    def on_downstream_lost(self) -> None:
        if self.done:
            return
        self.response_flags |= ResponseFlag.DC
        if not self.response_started:
            self.response_code_details = "downstream_remote_disconnect"
        self._drop_upstream()
        self._finish(True)

    def on_downstream_write_paused(self) -> None:
        up = self.upstream
        if up is not None and up.transport is not None:
            up.transport.pause_reading()

    def on_downstream_write_resumed(self) -> None:
        up = self.upstream
        if up is not None and up.transport is not None and not up.closed:
            up.transport.resume_reading()

    def on_upstream_write_paused(self) -> None:
        self.conn.block_reading(BLOCK_UPSTREAM_WRITE, True)

    def on_upstream_write_resumed(self) -> None:
        self.conn.block_reading(BLOCK_UPSTREAM_WRITE, False)
        if self.req_coder is not None and self.upstream is not None:
            self._pump_request()

    def no_replay(self) -> None:
        """The body goes upstream without passing through Python: keep none of it for a retry."""
        self._drop_body()

    def on_upload_spliced(self, n: int) -> None:
        self.bytes_received += n
        conn = self.conn
        conn.last_io = self.ctx.loop.time()
        self.ctx.http_stats.downstream_cx_rx_bytes_total += n
        if self.host is not None:
            self.host.cluster.stats.upstream_cx_tx_bytes_total += n

    def _drop_body(self) -> None:
        if self.body_size:
            self.conn.body_buffered -= self.body_size
        self.retain_body = False
        self.body = []
        self.body_size = 0

    def _drop_upstream(self) -> None:
        up = self.upstream
        if up is not None:
            self.upstream = None
            if self.upgrade is not None and up.upgraded:
                up.close()
            else:
                up.abort()  # mid-request: never reusable

    # -- endings ---------------------------------------------------------------------------------
    def send_local_reply(
        self, reply: http1.LocalReply, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        """A reply from an http filter (CORS preflight, fault abort, RBAC denial)."""
        self._local_reply(reply, extra=headers)

    def _local_reply(
        self,
        reply: http1.LocalReply,
        close: bool = False,
        location: bytes | None = None,
        extra: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        self.response_code = reply.code
        self.response_code_details = reply.details
        self.response_flags |= reply.flag
        body = reply.body
        ctx = self.ctx
        close = close or not self.keep_alive or not self.request_complete or ctx.draining
        route = self.route
        if ctx.local_reply is not None or (
            reply.router and route is not None and route.response_mutations is not None
        ):
            body, content_type, shaped = self._shape_local_reply(reply, route)
        else:
            content_type, shaped = _TEXT_PLAIN, None
            self.local_reply_body = body  # %LOCAL_REPLY_BODY%, with or without a rewrite
        length = b"%d" % len(body)
        headers = [(b"content-length", length)]
        parts = [http1.status_line(self.response_code), b"content-length: ", length, _CRLF]
        if body and content_type is not None:
            parts += (b"content-type: ", content_type, _CRLF)
            headers.append((b"content-type", content_type))
        if shaped:
            for name, value in shaped:
                parts += (name, b": ", value, _CRLF)
            headers += shaped
        if location is not None:
            parts += (b"location: ", location, _CRLF)
            headers.append((b"location", location))
        if self.filter_state is not None:  # CORS headers on a later filter's or the router's
            extra = self.filter_state.local_reply_headers(self, self.response_code, extra)
        for name, value in extra:
            parts += (name, b": ", value, _CRLF)
            headers.append((name, value))
        parts.append(http1.date_header())
        parts.append(self.ctx.server_header)
        headers.append(self.ctx.server_header_tuple)
        if close:
            parts.append(b"connection: close\r\n")
        elif self.http10:
            parts.append(b"connection: keep-alive\r\n")
        parts.append(_CRLF)
        if body and not self.is_head:
            parts.append(body)
            self.bytes_sent = len(body)
        self.response_headers = headers
        self.response_started = True
        self.conn.write(b"".join(parts))
        self._finish(close)

    def _shape_local_reply(
        self, reply: http1.LocalReply, route: CompiledRoute | None
    ) -> tuple[bytes, bytes | None, list[tuple[bytes, bytes]]]:
        """What Envoy does to a local reply before sending it: the route's response headers
        (router replies only), then local_reply_config. Returns the body, the content type to
        send (None: the headers carry one) and the headers so far; the status may change."""
        headers: list[tuple[bytes, bytes]] = []
        self.response_headers = headers  # what the mappers' filters and formats read
        if reply.router and route is not None and route.response_mutations is not None:
            route.response_mutations.apply(headers, self)
        body = reply.body
        content_type: bytes | None = _TEXT_PLAIN
        before = _first(headers, b"content-type")
        rewriter = self.ctx.local_reply
        if rewriter is not None:
            new_body, content_type = rewriter.rewrite(self, headers, body)
            now = _first(headers, b"content-type")
            # Envoy keeps a content-type already set unless the rewrite changed the body and
            # not the content-type
            if now is not None and (new_body == body or now != before):
                content_type = None
            body = new_body
        elif before is not None:
            content_type = None
        if not body or content_type is not None:
            headers[:] = [h for h in headers if h[0] != b"content-type"]
        return body, content_type, headers

    def _finish(self, close: bool) -> None:
        if self.done:
            return
        self.done = True
        self.end_mono = time.monotonic()
        if self.filter_state is not None:
            self.filter_state.close()  # a fault delay's timer, an active-fault slot
        if self.tunnel_splice is not None:
            self.tunnel_splice.cancel()
            self.tunnel_splice = None
        conn = self.conn
        if not self.request_complete and self.response_started:
            self.ctx.http_stats.downstream_rq_response_before_rq_complete += 1
        if self.retried and self.host is not None and 0 < self.response_code < 500:
            self.host.cluster.stats.upstream_rq_retry_success += 1
        if self.body_size:
            self._drop_body()
        # whatever this stream paused on the client side is released with it
        if conn.blocked & (BLOCK_UPSTREAM_WRITE | BLOCK_BODY_BUFFER):
            conn.block_reading(BLOCK_UPSTREAM_WRITE | BLOCK_BODY_BUFFER, False)
        self.ctx.observe(self)
        conn.stream_done(self, close)
