"""One request through the connection manager (Envoy's ActiveStream): decode, filters, route,
encode, finish.

The request codec creates an ``ActiveStream`` and fills it (it is a ``RequestHead``). Once it
becomes its connection's active stream, ``start()`` mutates the request headers, runs the http
filters and hands it to the router, which sends it upstream through one ``UpstreamRequest`` per
try. The response comes back through ``encode_*``. ``finish()`` runs exactly once and is the
only place observers (access log, stats) are fed.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, Protocol

from udsproxy.codec import http1
from udsproxy.codec.encode import CRLF, LAST_CHUNK, chunk_head, header_block, response_head
from udsproxy.filters.callbacks import FilterCallbacks
from udsproxy.flags import ResponseFlag
from udsproxy.http.header_mutation import mutate_request_headers
from udsproxy.http.read_gate import BLOCK_BODY_BUFFER, BLOCK_SPLICE, BLOCK_UPSTREAM_WRITE
from udsproxy.splice import splice_fds
from udsproxy.tunnel import SplicedTunnel
from udsproxy.upstream.connection import BLOCK_CLIENT_WRITE
from udsproxy.upstream.connection import BLOCK_SPLICE as UPSTREAM_BLOCK_SPLICE

if TYPE_CHECKING:
    from udsproxy.http.conn_manager import ListenerContext
    from udsproxy.pathnorm import PathNormalizer
    from udsproxy.router.retry import RetryState
    from udsproxy.router.routes import CompiledRoute
    from udsproxy.streaminfo import Peer
    from udsproxy.upstream.connection import UpstreamConnection

__all__ = ["ActiveStream", "DownstreamLike", "RouterLike", "UpstreamHandle"]


class DownstreamLike(Protocol):
    """The stream's downstream connection (``http.downstream``), as the stream uses it."""

    conn_id: int
    peer: Peer
    peer_ip: bytes
    local: Peer
    blocked: int
    body_buffered: int
    last_io: float
    write_paused: bool
    out: list[bytes | memoryview]
    transport: asyncio.Transport | None

    def write(self, data: bytes | memoryview) -> None: ...

    def cork(self) -> None: ...

    def uncork(self) -> None: ...

    def release(self) -> None: ...

    def abort(self) -> None: ...

    def block_reading(self, bit: int, on: bool) -> None: ...

    def arm(self, when: float) -> None: ...

    def start_tunnel(self, s: ActiveStream) -> None: ...

    def stream_done(self, s: ActiveStream, close: bool) -> None: ...


class UpstreamHandle(Protocol):
    """The try in flight (``router.upstream_request``), as the stream uses it."""

    waiting: bool

    @property
    def conn(self) -> UpstreamConnection | None: ...

    def send_data(self, data: bytes | memoryview, chunked: bool) -> int: ...

    def send_end(self, chunked: bool) -> bool: ...

    def reset(self) -> None: ...


class RouterLike(Protocol):
    """The router (``router.router``): the stream hands it a matched request."""

    def decode_headers(self, s: ActiveStream, route: CompiledRoute) -> None: ...

    def encode_request(self, s: ActiveStream) -> list[bytes]: ...

    def shadow(self, s: ActiveStream, route: CompiledRoute) -> None: ...

    def on_per_try_timeout(self, s: ActiveStream) -> None: ...


_LAST_CHUNK_LEN = len(LAST_CHUNK)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CONNECTION_CLOSE = b"connection: close\r\n"
_KEEP_ALIVE = b"connection: keep-alive\r\n"
_CHUNKED = b"transfer-encoding: chunked\r\n"


class _Unset(enum.Enum):
    """No route given to ActiveStream.start (None is a valid route: no route matched)."""

    UNSET = 0


_UNSET: Final = _Unset.UNSET
_TEXT_PLAIN = b"text/plain"


def _first(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    return next((v for n, v in headers if n == name), None)


class ActiveStream(FilterCallbacks):
    """A request in flight. It is its own ``StreamInfo``: one object per request, not two."""

    __slots__ = (
        "chunked_out",
        "close_after",
        "conn",
        "ctx",
        "deadline",
        "error",
        "head",
        "response_has_no_body",
        "response_started",
        "retain_body",
        "retry_state",
        "route",
        "router",
        "tunnel_buf",
        "tunnel_splice",
        "upstream",
    )

    def __init__(self, ctx: ListenerContext, conn: DownstreamLike, router: RouterLike) -> None:
        FilterCallbacks.__init__(self, time.time(), time.monotonic())
        self.ctx: ListenerContext = ctx
        self.router = router
        self.conn: DownstreamLike = conn
        self.connection_id = conn.conn_id
        self.downstream_remote = self.downstream_direct_remote = conn.peer
        self.downstream_local = conn.local
        self.error: http1.LocalReply | None = None
        self.request_complete = False
        # request body kept for one retry on a fresh connection, bounded by the buffer limit
        self.body: list[bytes] = []
        self.body_size = 0
        self.retain_body = True
        # proxying state
        self.route: CompiledRoute | None = None
        # http filters (udsproxy.filters): None unless the listener has some and they act
        self.filter_state = None
        self.req_coder = None  # request body decompression
        self.resp_coder = None  # response body (de)compression
        self.upstream: UpstreamHandle | None = None  # the try in flight
        self.retry_state: RetryState | None = None  # the route's retry policy at work
        self.head = b""
        self.deadline = 0.0
        self.response_started = False
        self.response_has_no_body = False
        self.chunked_out = False
        self.close_after = False
        self.tunnel_buf: list[bytes] | None = None
        self.tunnel_splice: SplicedTunnel | None = None
        self.done = False

    # -- decoding (the request codec's stream interface) ----------------------------------------
    def reject(self, reply: http1.LocalReply) -> None:
        self.error = reply

    def reject_body(self, reply: http1.LocalReply) -> None:
        """Its body turned out malformed before it started (queued): answered in turn, and
        logged with its request headers, as Envoy logs a DPE in the middle of a body."""
        self._mutate_request_headers()
        self.error = reply

    def decode_data(self, data: bytes) -> None:
        n = len(data)
        self.bytes_received += n
        if self.req_coder is not None:
            self.pump_request(data)
            return
        up = self.upstream
        if self.retain_body:
            conn = self.conn
            self.body.append(data)
            self.body_size += n
            conn.body_buffered += n
            if conn.body_buffered > self.ctx.buffer_limit:
                if up is None or up.conn is None:
                    # Not sent yet (connecting, or queued behind a pipelined request): hold
                    # the body, but read no more until it has gone upstream. A buffer filter
                    # waiting for the whole body bounds it itself (its max_request_bytes).
                    state = self.filter_state
                    if state is None or not state.body_limit:
                        conn.block_reading(BLOCK_BODY_BUFFER, True)
                else:
                    self._abandon_body()  # too big to replay: no retry for this one
        if up is not None:
            up.send_data(data, self.req_chunked)
        elif self.filter_state is not None:
            self.filter_state.on_body(self)  # held by a buffer filter: within its limit?

    def pump_request(self, data: bytes = b"") -> None:
        """The request body through its decompressor, a bounded piece at a time while the
        upstream takes it (before it is sent: while the held body is under the buffer limit);
        the rest waits compressed in the coder for the send or a resumed upstream write. Once
        the request is complete and the coder drained: its tail and the last chunk."""
        coder = self.req_coder
        assert coder is not None
        self.req_coder = None  # the pieces take decode_data's plain path
        piece = coder.encode(data) if data else coder.more()
        while piece:
            self.bytes_received -= len(piece)  # counted when received, not when inflated
            self.decode_data(piece)
            up = self.upstream
            if self.done or (
                self.conn.body_buffered > self.ctx.buffer_limit
                if up is None or up.conn is None
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
            self.decode_data(tail)
        up = self.upstream
        if up is not None and up.send_end(True):
            self.last_upstream_tx_mono = time.monotonic()

    def decode_complete(self) -> None:
        self.request_complete = True
        self.deadline = 0.0  # request_timeout's, if any: the route timeout starts now
        self.last_downstream_rx_mono = time.monotonic()
        up = self.upstream
        if self.req_coder is not None:
            self.pump_request()  # what the decompressor holds, then the last chunk
        elif up is not None and up.send_end(self.req_chunked):
            self.last_upstream_tx_mono = self.last_downstream_rx_mono
        route = self.route
        if route is not None and not self.done:
            self.arm_route_timeout()
            if route.mirror_policies is not None:
                self.router.shadow(self, route)  # the request is whole: its mirrors go out
        elif self.filter_state is not None and not self.done:
            self.filter_state.body_complete(self)  # a buffer filter lets the router go on

    def on_request_error(self, reply: http1.LocalReply) -> None:
        """The active request turned out malformed mid-body."""
        self._drop_upstream()
        if self.response_started:
            self.response_flags |= ResponseFlag.DPE
            self.response_code_details = reply.late_details
            self.conn.abort()
            self.finish(True)
        else:
            self.local_reply(reply, close=True)

    def tunnel_early_data(self, data: bytes) -> None:
        self.tunnel_buf = [data] if data else []

    # -- the connection manager's part, then the router ------------------------------------------
    def start(self, route: CompiledRoute | _Unset | None = _UNSET) -> None:
        """Route the request and send it upstream. Called without ``route`` when the request
        becomes the connection's active one; with it by ``resume``."""
        ctx = self.ctx
        if route is _UNSET:
            if self.error is not None:
                self.local_reply(self.error, close=True)
                return
            self._mutate_request_headers()
            if ctx.before_routing:  # path normalization or http filters: off the common path
                found = self._before_routing(ctx)
                if found is _UNSET:
                    return  # answered, or held by a filter until it calls resume()
                route = found
            else:
                route = ctx.route_table.match(self.authority, self.path)
        if route is None:
            self.local_reply(http1.NO_ROUTE)
            return
        self.router.decode_headers(self, route)

    def resume(self, route: CompiledRoute | None) -> None:
        """The router's part, when a filter that held the request lets it go (fault delay)."""
        self.start(route)

    def hold_body(self) -> None:
        if self.expect_continue and not self.http10:
            self.expect_continue = False  # sent now: the router must not send it again
            self.conn.write(_CONTINUE)

    def _before_routing(self, ctx: ListenerContext) -> CompiledRoute | _Unset | None:
        """The connection manager's path normalization, the route match and the http
        filters' decode: the route, or _UNSET if the request was answered or is held."""
        if ctx.path_normalizer is not None and not self._normalize_path(ctx.path_normalizer):
            return _UNSET
        route = ctx.route_table.match(self.authority, self.path)
        if ctx.filters is not None and ctx.filters.decode_headers(self, route):
            return _UNSET
        return route

    def _normalize_path(self, normalize: PathNormalizer) -> bool:
        """The connection manager's path normalization; False if it answered the request."""
        result = normalize(self.path)
        if result.reject:
            self.ctx.http_stats.downstream_rq_failed_path_normalization += 1
            self.local_reply(http1.PATH_NORMALIZATION_FAILED, close=True)
            return False
        self.path = result.path
        if result.redirect:
            self.ctx.http_stats.downstream_rq_redirected_with_normalized_path += 1
            self.local_reply(http1.PATH_NORMALIZATION_REDIRECT, location=result.path)
            return False
        return True

    def _mutate_request_headers(self) -> None:
        ctx = self.ctx
        mutate_request_headers(
            self,
            self.conn.peer_ip,
            ctx.scheme,
            ctx.use_remote_address,
            ctx.xff_num_trusted_hops,
            ctx.generate_request_id,
        )

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.ctx.loop

    @property
    def buffer_limit(self) -> int:
        return self.ctx.buffer_limit

    def take_held_body(self) -> list[bytes]:
        body = self.body
        self.conn.body_buffered -= self.body_size
        self.body = []
        self.body_size = 0
        return body

    @property
    def upstream_chunked(self) -> bool:
        """The upstream's response is chunked (what the compressor filter asks)."""
        up = self.upstream
        conn = up.conn if up is not None else None
        return conn is not None and conn.codec.resp_chunked

    def on_upstream_write_paused(self) -> None:
        self.conn.block_reading(BLOCK_UPSTREAM_WRITE, True)

    def on_upstream_write_resumed(self) -> None:
        self.conn.block_reading(BLOCK_UPSTREAM_WRITE, False)
        if self.req_coder is not None:
            self.pump_request()

    def on_upstream_ready(self) -> list[bytes]:
        """The try has its connection: what to send first (the head, and the body held)."""
        data = self.router.encode_request(self)
        if self.conn.body_buffered > self.ctx.buffer_limit:
            self._abandon_body()
        return data

    def on_request_sent(self, conn: UpstreamConnection) -> None:
        down = self.conn
        if self.req_coder is not None:
            self.pump_request()  # a held body the decompressor has not let out yet
        if down.blocked & BLOCK_BODY_BUFFER and down.body_buffered <= self.ctx.buffer_limit:
            down.block_reading(BLOCK_BODY_BUFFER, False)
        if down.write_paused:
            conn.pause(BLOCK_CLIENT_WRITE)

    def arm_route_timeout(self) -> None:
        route = self.route
        if route is not None and route.timeout > 0 and self.upgrade is None:
            self.deadline = self.ctx.loop.time() + route.timeout
            self.conn.arm(self.deadline)
        if self.retry_state is not None:
            self.arm_per_try_timeout()
        if route is not None:
            # the stream idle timeout, where it may come first: wake for it (check_timeouts
            # re-arms)
            idle = route.idle_timeout
            if idle and (idle < route.timeout or not self.deadline):
                self.conn.arm(self.conn.last_io + idle)

    def arm_per_try_timeout(self) -> None:
        """The try has its connection and the whole request is held: its per_try_timeout
        starts (as Envoy's, not while it waits in the pool)."""
        rs = self.retry_state
        up = self.upstream
        if up is None or up.conn is None:
            return  # on_pool_ready arms it
        if rs is not None and rs.policy.per_try_timeout > 0 and self.upgrade is None:
            rs.try_deadline = self.ctx.loop.time() + rs.policy.per_try_timeout
            self.conn.arm(rs.try_deadline)

    # -- encoding the response -------------------------------------------------------------------
    def encode_interim(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if status == 100 or self.http10:
            return  # the proxy answered Expect itself; HTTP/1.0 clients get no 1xx
        if self.retry_state is not None:
            self.retry_state.interim_sent = True  # the client saw this try: no retry now
        self.conn.write(response_head(status, headers, ()))

    def encode_headers(
        self,
        code: int,
        headers: list[tuple[bytes, bytes]],
        length: int,
        block: bytes | None = None,
    ) -> None:
        """The response head, sent downstream. ``block`` is ``headers`` already serialized (the
        codec's scanner makes it), used unless a mutation or filter changes them."""
        now = time.monotonic()
        self.first_upstream_rx_mono = now
        self.response_code = code
        self.response_code_details = "via_upstream"
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
            block = None
        if self.filter_state is not None:  # CORS headers, compression: after the router's
            length = self.filter_state.encode_headers(self, code, headers, length)
            block = None
        if block is None:
            block = header_block(headers)
        parts = [http1.status_line(code), block, ctx.server_header]
        headers.append(ctx.server_header_tuple)
        if ust is not None:
            parts += (b"x-envoy-upstream-service-time: ", ust, CRLF)
            headers.append((b"x-envoy-upstream-service-time", ust))
        self.response_headers = headers
        if code == 101 and self.upgrade is not None:
            self.response_has_no_body = True
            parts += (b"connection: upgrade\r\nupgrade: ", self.upgrade, CRLF, CRLF)
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
            parts.append(_CHUNKED)
        if self.close_after or not self.keep_alive or not self.request_complete or ctx.draining:
            self.close_after = True
            parts.append(_CONNECTION_CLOSE)
        elif self.http10:
            parts.append(_KEEP_ALIVE)
        parts.append(CRLF)
        self.response_started = True
        self.conn.write(b"".join(parts))

    def encode_data(self, data: bytes | memoryview) -> None:
        if self.resp_coder is not None:
            coder = self.resp_coder
            self.resp_coder = None  # the pieces take the plain path below
            piece = coder.encode(data)
            while piece:  # an empty chunk would end a chunked body
                self.encode_data(piece)  # a decompressor's: at most the buffer limit
                piece = coder.more()
            self.resp_coder = coder
            return
        n = len(data)
        self.bytes_sent += n
        conn = self.conn
        conn.last_io = self.ctx.loop.time()
        if self.chunked_out:
            conn.write(chunk_head(n))
            conn.write(data)
            conn.write(CRLF)
        else:
            conn.write(data)

    def encode_complete(self) -> None:
        """The response's end: what a coder still holds, the last chunk, then finish."""
        coder = self.resp_coder
        if coder is not None:
            self.resp_coder = None
            tail = coder.finish()
            if tail:
                self.encode_data(tail)
        if self.chunked_out:
            self.conn.write(LAST_CHUNK)
        self.upstream = None
        self.finish(self.close_after)

    def on_spliced(self, n: int) -> None:
        self.bytes_sent += n
        self.conn.last_io = self.ctx.loop.time()
        self.ctx.http_stats.downstream_cx_tx_bytes_total += n

    # -- upgrades: a tunnel both ways --------------------------------------------------------------
    def on_tunnel_open(self, up: UpstreamConnection, rest: bytes) -> None:
        self.deadline = 0.0
        self.conn.start_tunnel(self)
        if self.tunnel_buf:
            for data in self.tunnel_buf:
                up.write(data)
        self.tunnel_buf = None
        if rest:
            self.encode_tunnel_data(rest)
        if self.ctx.splice_min_bytes:
            self.ctx.loop.call_soon(self._splice_tunnel)  # once the 101 has left the cork

    def _splice_tunnel(self) -> None:
        """Move the tunnel to splice(2) if nothing is queued on either side (byte order)."""
        conn = self.conn
        ureq = self.upstream
        up = ureq.conn if ureq is not None else None
        if self.done or up is None or up.transport is None or conn.transport is None:
            return
        # both sides are destinations: nothing may wait on either (else stay on the relay)
        if conn.out or conn.transport.get_write_buffer_size():
            return
        fds = splice_fds(conn.transport, up.transport)
        if fds is None:
            return
        conn.block_reading(BLOCK_SPLICE, True)
        up.pause(UPSTREAM_BLOCK_SPLICE)
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
        self.finish(True)

    def _tunnel_broken(self) -> None:
        self.tunnel_splice = None
        self._drop_upstream()
        self.conn.abort()
        self.finish(True)

    def encode_tunnel_data(self, data: bytes) -> None:
        self.bytes_sent += len(data)
        conn = self.conn
        conn.last_io = self.ctx.loop.time()  # traffic either way keeps a tunnel alive
        conn.write(data)

    def decode_tunnel_data(self, data: bytes) -> None:
        self.bytes_received += len(data)
        ureq = self.upstream
        if ureq is not None and ureq.conn is not None:
            ureq.conn.write(data)

    # -- timeouts and the client's side ----------------------------------------------------------
    def check_timeouts(self, now: float) -> float:
        """Called by the connection's timer; returns the next deadline to wake for (0: none)."""
        rs = self.retry_state
        if rs is None:
            return self._route_timeouts(now)
        if rs.try_deadline and now >= rs.try_deadline:
            rs.try_deadline = 0.0
            self.router.on_per_try_timeout(self)  # a retry arms it again
            if self.done:
                return 0.0
        nxt = self._route_timeouts(now)
        if rs.try_deadline and not self.done and (not nxt or rs.try_deadline < nxt):
            nxt = rs.try_deadline
        return nxt

    def _route_timeouts(self, now: float) -> float:
        """The route timeout and the stream idle timeout."""
        if self.deadline and now >= self.deadline:
            if self.request_complete:
                ureq, host = self.upstream, self.host
                if host is not None and host.outlier is not None and not self.response_started:
                    host.outlier.put_timeout(ureq is not None and ureq.conn is not None)
                self._timeout(http1.UPSTREAM_TIMEOUT)
            else:
                self.ctx.http_stats.downstream_rq_timeout += 1
                self._timeout(http1.REQUEST_TIMEOUT)
            return 0.0
        route = self.route
        idle = route.idle_timeout if route is not None else self.ctx.stream_idle_timeout
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
            self.response_code_details = reply.late_details  # as Envoy's sendLocalReply sets it
            self.conn.abort()
            self.finish(True)
        else:
            self.local_reply(reply, close=not self.request_complete)

    def on_downstream_lost(self) -> None:
        if self.done:
            return
        self.response_flags |= ResponseFlag.DC
        if not self.response_started:
            self.response_code_details = "downstream_remote_disconnect"
        self._drop_upstream()
        self.finish(True)

    def on_downstream_write_paused(self) -> None:
        ureq = self.upstream
        if ureq is not None and ureq.conn is not None:
            ureq.conn.pause(BLOCK_CLIENT_WRITE)

    def on_downstream_write_resumed(self) -> None:
        ureq = self.upstream
        if ureq is not None and ureq.conn is not None:
            ureq.conn.resume(BLOCK_CLIENT_WRITE)

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
        self.take_held_body()
        self.retain_body = False

    def _abandon_body(self) -> None:
        """The body outgrew the buffer limit: it can no longer be sent again."""
        if self.retry_state is not None and self.host is not None:
            self.host.cluster.stats.retry_or_shadow_abandoned += 1
        self._drop_body()

    def _drop_upstream(self) -> None:
        ureq = self.upstream
        if ureq is not None:
            self.upstream = None
            ureq.reset()

    # -- endings ---------------------------------------------------------------------------------
    def send_local_reply(
        self, reply: http1.LocalReply, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        """A reply from an http filter (CORS preflight, fault abort, RBAC denial)."""
        self.local_reply(reply, extra=headers)

    def local_reply(
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
        close = (
            close
            or not self.keep_alive
            or not self.request_complete
            or ctx.draining
            or self.close_after
        )
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
        if body and content_type is not None:
            headers.append((b"content-type", content_type))
        if shaped:
            headers += shaped
        if location is not None:
            headers.append((b"location", location))
        if self.filter_state is not None:  # CORS headers on a later filter's or the router's
            extra = self.filter_state.local_reply_headers(self, self.response_code, extra)
        headers += extra
        tail = [http1.date_header(), ctx.server_header]
        if close:
            tail.append(_CONNECTION_CLOSE)
        elif self.http10:
            tail.append(_KEEP_ALIVE)
        tail.append(CRLF)
        parts = [http1.status_line(self.response_code), header_block(headers), *tail]
        headers.append(ctx.server_header_tuple)
        if body and not self.is_head:
            parts.append(body)
            self.bytes_sent = len(body)
        self.response_headers = headers
        self.response_started = True
        self.conn.write(b"".join(parts))
        self.finish(close)

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

    def finish(self, close: bool) -> None:
        if self.done:
            return
        self.done = True
        self.end_mono = time.monotonic()
        if self.filter_state is not None:
            self.filter_state.close()  # a fault delay's timer, an active-fault slot
        if self.tunnel_splice is not None:
            self.tunnel_splice.cancel()
            self.tunnel_splice = None
        if self.upstream is not None and self.upstream.waiting:
            self._drop_upstream()  # still queued for a connection: leave the pool's queue
        conn = self.conn
        if not self.request_complete and self.response_started:
            self.ctx.http_stats.downstream_rq_response_before_rq_complete += 1
        if self.retry_state is not None:
            self.retry_state.release()  # its max_retries slot, its back-off timer
        if self.body_size:
            self._drop_body()
        # whatever this stream paused on the client side is released with it
        if conn.blocked & (BLOCK_UPSTREAM_WRITE | BLOCK_BODY_BUFFER):
            conn.block_reading(BLOCK_UPSTREAM_WRITE | BLOCK_BODY_BUFFER, False)
        self.ctx.observe(self)
        conn.stream_done(self, close)
