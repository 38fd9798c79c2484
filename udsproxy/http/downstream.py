"""The downstream connection: transport, read gate, pipelining, keep-alive and timers.

Its request codec (``codec.request``) turns bytes into streams; streams start after ``feed``
returns, so a request that turns out malformed later in the same buffer is never forwarded.
Pipelined requests queue behind the active one and are answered in order.

Reading is paused through one bit mask (``blocked``): each reason sets and clears its own bit, so a
resume for one reason never undoes a pause for another.
"""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, cast

from udsproxy.codec import http1
from udsproxy.codec.request import ERROR, STOPPED, UPGRADE, RequestHead
from udsproxy.http.active_stream import ActiveStream as Stream
from udsproxy.http.read_gate import (
    BLOCK_CLIENT_WRITE,
    BLOCK_DONE,
    BLOCK_PIPELINE,
    BLOCK_SPLICE,
)
from udsproxy.router.router import ROUTER
from udsproxy.splice import Splicer, splice_fds
from udsproxy.streaminfo import Peer

if TYPE_CHECKING:
    from udsproxy.http.conn_manager import ListenerContext

__all__ = ["DownstreamConnection"]


# Draining, a connection whose last response went out without `connection: close` (it started
# before the drain) stays open this long after it: the client may be sending its next request
# already, and closing under it would fail that request. One that comes is answered with
# `connection: close`.
_DRAIN_GRACE = 1.0

_MAX_PIPELINED = 16


_HOLD_MAX = 16 * 1024  # bytes a write may hold to the end of the loop iteration


class DownstreamConnection(asyncio.Protocol):
    """An asyncio protocol (uvloop only calls its methods) and its codec's callbacks."""

    __slots__ = (
        "_closed_here",
        "_expires_at",
        "_head",
        "_head_deadline",
        "_linger",
        "_opened",
        "_requests_left",
        "_starting",
        "_timer",
        "_timer_when",
        "_unread",
        "active",
        "blocked",
        "body_buffered",
        "closed",
        "codec",
        "conn_id",
        "corked",
        "ctx",
        "drain_close",
        "held",
        "last_io",
        "local",
        "loop",
        "out",
        "peer",
        "peer_ip",
        "queue",
        "splicer",
        "transport",
        "tunnel",
        "write_paused",
    )

    def __init__(self, ctx: ListenerContext) -> None:
        self.ctx = ctx
        self.loop = ctx.loop
        self.transport: asyncio.Transport | None = None
        # request_headers_timeout: streams start at a head's first byte, so that a head still
        # incomplete after a read has its stream to time and answer
        self.codec = ctx.decoder_class(
            self,
            ctx.max_header_bytes,
            ctx.max_headers_count,
            ctx.http_stats,
            bool(ctx.request_headers_timeout),
        )
        self.active: Stream | None = None  # being proxied
        self.queue: collections.deque[Stream] = collections.deque()
        self.tunnel: Stream | None = None  # set once the connection was upgraded
        self.splicer: Splicer | None = None  # a request body on its way upstream by splice(2)
        self.closed = False
        self.corked = False  # while set, writes collect in ``out`` and leave in one syscall
        self.out: list[bytes | memoryview] = []
        self.held = False  # corked until the loop iteration ends (ctx.write_batch)
        self.write_paused = False
        self.last_io = 0.0
        self.conn_id = 0
        self.peer = ctx.local_peer
        self.peer_ip = b""
        self.local = ctx.local_peer
        self.blocked = 0
        self._closed_here = False
        self._opened = 0.0  # when connection_made ran: downstream_cx_length_ms
        self.body_buffered = 0  # request body bytes held by this connection's streams
        self._linger: asyncio.TimerHandle | None = None
        self._starting = False
        self._unread = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        # request_headers_timeout: the incomplete head being timed, and when it runs out
        self._head: Stream | None = None
        self._head_deadline = 0.0
        # max_requests_per_connection: requests this connection may still begin (0: no limit)
        self._requests_left = ctx.max_requests_per_connection
        # max_connection_duration: when it is reached, then (drain_close) when the drain ends
        self._expires_at = 0.0
        self.drain_close = False  # every response from now on carries `connection: close`

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = transport = cast(asyncio.Transport, transport)
        ctx = self.ctx
        if ctx.admission is not None and not ctx.admission.admit(transport, ctx.listener_stats):
            return  # over a connection limit: closed, counted; conn_id 0 tells connection_lost
        self.conn_id = ctx.next_connection_id()
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = Peer(peer[0], peer[1])
            self.peer_ip = peer[0].encode()
            local = transport.get_extra_info("sockname")
            if isinstance(local, tuple):
                self.local = Peer(local[0], local[1])
            # (uvloop already sets TCP_NODELAY on TCP transports)
        limit = ctx.buffer_limit
        transport.set_write_buffer_limits(high=limit, low=limit // 2)
        self._opened = self.last_io = self.loop.time()
        ctx.connections.add(self)
        if ctx.max_connection_duration:
            self._expires_at = self.last_io + ctx.max_connection_duration
            self.arm(self._expires_at)
        hs, ls = ctx.http_stats, ctx.listener_stats
        hs.downstream_cx_total += 1
        hs.downstream_cx_http1_total += 1
        hs.downstream_cx_active += 1
        hs.downstream_cx_http1_active += 1
        ls.downstream_cx_total += 1
        ls.downstream_cx_active += 1
        self.arm(self.last_io + ctx.idle_timeout if ctx.idle_timeout else 0.0)

    def data_received(self, data: bytes) -> None:
        self.last_io = self.loop.time()
        self.ctx.http_stats.downstream_cx_rx_bytes_total += len(data)
        if self.tunnel is not None:
            self.tunnel.decode_tunnel_data(data)
            return
        if self.blocked & BLOCK_DONE:
            self._unread = True  # bytes nobody will read: close with a delayed close
            return  # after an error, an upgrade or while closing nothing more is parsed
        codec = self.codec
        result = codec.feed(data)
        if result:
            if result == UPGRADE:
                self._on_upgrade_request(codec.upgrade_rest)
            elif result == STOPPED:
                self._pause(BLOCK_DONE)
            elif result == ERROR:
                self._on_parse_error()
        if self.active is None and self.queue:
            self._start_next()
        s = codec.cur
        if s is not None:  # a request not all read yet
            self._reading(s, codec.in_head)  # type: ignore[arg-type]

    def _reading(self, s: Stream, in_head: bool) -> None:
        """A request is still arriving after a read (never a whole request, the common case):
        its timers, and a large body's splice."""
        ctx = self.ctx
        if in_head:
            if ctx.request_headers_timeout:
                self._watch_head(s, self.last_io)
            idle = ctx.stream_idle_timeout  # before its headers, the HCM's applies (Envoy)
        else:
            route = s.route
            idle = route.idle_timeout if route is not None else ctx.stream_idle_timeout
            if s is self.active and ctx.splice_min_bytes:
                self._splice_upload(s)
        if idle:
            self.arm(self.last_io + idle)

    def _watch_head(self, s: Stream, now: float) -> None:
        """request_headers_timeout: a head still incomplete after a read is timed from that
        read, the one its first byte came in (an earlier read would have left it incomplete
        too). Whole heads, the common case, are never timed. A head behind a request being
        answered waits, as Envoy reads a pipelined request only once the one before is done:
        stream_done starts its clock."""
        if s is self._head or self.active is not None or self.queue:
            return
        self._head = s
        self._head_deadline = now + self.ctx.request_headers_timeout
        self.arm(self._head_deadline)

    # -- large request bodies by splice(2) -----------------------------------------------------
    def _splice_upload(self, s: Stream) -> None:
        """Hand the rest of a large Content-Length request body to splice(2), once the stream
        has its upstream connection and nothing is queued on it (byte order is kept)."""
        if s.req_chunked or s.req_cl < 0 or self.blocked:
            return
        remaining = s.req_cl - s.bytes_received
        ureq = s.upstream
        up = ureq.conn if ureq is not None else None
        if remaining < self.ctx.splice_min_bytes or up is None or up.splicer is not None:
            return
        if up.held is not None:
            up.flush_held()  # the head before the body
        fds = splice_fds(self.transport, up.transport)
        if fds is None:
            return
        s.no_replay()  # a spliced body cannot be sent again on a retry
        self._pause(BLOCK_SPLICE)
        self.splicer = Splicer(
            self.loop,
            *fds,
            remaining,
            s.on_upload_spliced,
            self._upload_spliced,
            self._upload_splice_failed,
        )
        self.splicer.start()

    def _upload_spliced(self) -> None:
        self.splicer = None
        # The parser stopped mid-body; a fresh one reads the next request.
        self.codec.reset()
        if self.codec.cur is not None:
            self.codec.on_message_complete()
        self._resume(BLOCK_SPLICE)

    def _upload_splice_failed(self, exc: OSError | None, eof: bool) -> None:
        self.splicer = None
        # The rest of this request can no longer be parsed: nothing more is read.
        self.blocked |= BLOCK_DONE
        self._unread = True
        if exc is None:  # the client closed in the middle of its body
            self.abort()
        # else the upstream went away: its connection_lost ends the stream

    def _cancel_splice(self) -> None:
        if self.splicer is not None:
            self.splicer.cancel()
            self.splicer = None

    def eof_received(self) -> bool:
        # Envoy's connection manager does not half-close: a client's FIN is its disconnect,
        # and the requests it leaves unanswered end 0 DC (downstream_remote_disconnect), not
        # with the status the upstream sends later. Only a tunnel keeps its other direction.
        if self.tunnel is None or self._linger is not None or self.codec.cur is not None:
            return False
        if self.active is None and not self.queue:
            return False
        self._pause(BLOCK_DONE)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        ctx = self.ctx
        if ctx.admission is not None:
            if not self.conn_id:
                return  # turned away by admit(): nothing else counted it
            ctx.admission.release()
        ctx.connections.discard(self)
        hs, ls = ctx.http_stats, ctx.listener_stats
        hs.downstream_cx_destroy += 1
        hs.downstream_cx_active -= 1
        hs.downstream_cx_http1_active -= 1
        ls.downstream_cx_destroy += 1
        ls.downstream_cx_active -= 1
        if self.transport is not None:  # once per connection, never per request
            ms = (self.loop.time() - self._opened) * 1000.0
            hs.cx_length_ms.record(ms)
            ls.cx_length_ms.record(ms)
        if self._linger is not None or self.transport is None or self._closed_here:
            hs.downstream_cx_destroy_local += 1
        else:
            hs.downstream_cx_destroy_remote += 1
        if self.active is not None or self.queue:
            hs.downstream_cx_destroy_active_rq += 1
        if self.tunnel is not None:
            hs.downstream_cx_upgrades_active -= 1
        self._cancel_splice()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        active, self.active = self.active, None
        if active is not None:
            active.on_downstream_lost()
        while self.queue:
            self.queue.popleft().on_downstream_lost()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.active is not None:
            self.active.on_downstream_write_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.active is not None:
            self.active.on_downstream_write_resumed()
        if self.blocked & BLOCK_CLIENT_WRITE:
            self._resume(BLOCK_CLIENT_WRITE)
            if self.active is None and self.queue:
                self._start_next()

    # -- the codec's callbacks ------------------------------------------------------------------
    def new_stream(self) -> RequestHead:
        ctx = self.ctx
        ctx.http_stats.downstream_rq_active += 1
        s = Stream(ctx, self, ROUTER)
        if self._requests_left:
            self._requests_left -= 1
            if not self._requests_left:
                # max_requests_per_connection: counted when a request begins, as Envoy's
                # newStream; this response and any pipelined after it close the connection
                ctx.http_stats.downstream_cx_max_requests_reached += 1
                self.drain_close = True
        if self.drain_close:
            s.close_after = True  # max_connection_duration or max_requests_per_connection
        if ctx.request_timeout and self.active is None and not self.queue:
            # the whole request, from its first byte; the route timeout replaces it at the end.
            # A request pipelined behind another starts its clock when that one is done
            # (stream_done), as Envoy reads it only then.
            s.deadline = self.loop.time() + ctx.request_timeout
            self.arm(s.deadline)
        return s

    def on_request_headers(self, s: RequestHead) -> None:
        self.queue.append(s)  # type: ignore[arg-type]
        if len(self.queue) > _MAX_PIPELINED:
            self._pause(BLOCK_PIPELINE)

    # -- errors and upgrades ---------------------------------------------------------------
    def _on_parse_error(self) -> None:
        """Answer the malformed request in order (after the complete ones before it), then close."""
        reply = self.codec.error or http1.BAD_REQUEST
        self._pause(BLOCK_DONE)
        s = cast("Stream | None", self.codec.take())
        if s is None:
            s = cast(Stream, self.new_stream())
        if s is self.active:
            s.on_request_error(reply)
            return
        if s in self.queue:  # its head was whole and valid: the body is what failed
            self.queue.remove(s)
            s.reject_body(reply)
        else:
            s.reject(reply)
        self.queue.append(s)

    def _on_upgrade_request(self, rest: bytes) -> None:
        # llhttp stops at an Upgrade/CONNECT request; what follows belongs to the tunnel...
        last = self.queue[-1] if self.queue else self.active
        if last is not None and last.upgrade is None and not last.error:
            # ...unless the upgrade was dropped (h2c, as Envoy does): keep parsing requests.
            self.codec.reset()
            if rest:
                self.data_received(rest)
            return
        self._pause(BLOCK_DONE)
        if last is not None:
            last.tunnel_early_data(rest)

    # -- used by Stream ----------------------------------------------------------------------
    def _start_next(self) -> None:
        """Start queued requests one after another; a loop, so a run of pipelined local
        replies cannot recurse through stream_done."""
        if self._starting:
            return
        self._starting = True
        try:
            while self.active is None and self.queue and self._linger is None:
                if self.write_paused:
                    # The client is not reading: answer nothing more until it does.
                    self._pause(BLOCK_CLIENT_WRITE)
                    return
                s = self.queue.popleft()
                self.active = s
                if self.blocked & BLOCK_PIPELINE and len(self.queue) <= _MAX_PIPELINED // 2:
                    self._resume(BLOCK_PIPELINE)
                s.start()
        finally:
            self._starting = False

    def stream_done(self, s: Stream, close: bool) -> None:
        if self.active is s:
            self.active = None
        if self.closed:
            return
        cur = cast("Stream | None", self.codec.cur)
        if cur is not None:  # a request pipelined behind this one: its clocks start now
            ctx = self.ctx
            if not cur.deadline and ctx.request_timeout:
                cur.deadline = self.loop.time() + ctx.request_timeout
                self.arm(cur.deadline)
            if ctx.request_headers_timeout and self.codec.in_head:
                self._watch_head(cur, self.loop.time())
        if close:
            # a delayed close only where request bytes may be left unread
            codec = self.codec
            linger = self._unread or codec.unread or codec.error is not None
            self.close(linger=linger or not s.request_complete)
            return
        if self.ctx.draining:
            # the response went out before the drain, without connection: close
            self.last_io = self.loop.time()
            if self.queue:
                self._start_next()  # already here: answered with connection: close
            else:
                self.close_when_quiet()
            return
        if self.queue:
            self._start_next()
        elif self.blocked & BLOCK_DONE:
            self.close()  # the client half-closed, or parsing stopped: nothing more will come
        else:
            self.last_io = self.loop.time()
            if self.ctx.idle_timeout:
                self.arm(self.last_io + self.ctx.idle_timeout)

    def start_tunnel(self, s: Stream) -> None:
        self.tunnel = s
        hs = self.ctx.http_stats
        hs.downstream_cx_upgrades_total += 1
        hs.downstream_cx_upgrades_active += 1
        self._resume(BLOCK_DONE)

    def write(self, data: bytes | memoryview) -> None:
        self.ctx.http_stats.downstream_cx_tx_bytes_total += len(data)
        if self.corked:
            self.out.append(data)
        else:
            assert self.transport is not None
            self.transport.write(data)

    def cork(self) -> None:
        self.corked = True

    def release(self) -> None:
        """The end of a cork: write now, or, when the loop iteration has written already, at its
        end (write_batch.py): the bytes stay corked, so later writes queue behind them."""
        batch = self.ctx.write_batch
        out = self.out
        # only small writes wait: held 100 KiB responses cost more kernel time than they saved
        # (79 -> 127-149 us per request in the harness)
        if (
            batch is None
            or not out
            or len(out) > 2
            or sum(map(len, out)) > _HOLD_MAX
            or batch.first()
        ):
            self.uncork()
        elif not self.held:
            self.held = True
            batch.hold(self)

    def flush_held(self) -> None:
        self.held = False
        if self.corked:  # else uncorked already (a close, a splice)
            if self.transport is None:
                self.out = []
                self.corked = False
            else:
                self.uncork()

    def uncork(self) -> None:
        self.corked = False
        out = self.out
        if out:
            self.out = []
            assert self.transport is not None
            if self.transport.is_closing():
                return
            if len(out) == 1:
                self.transport.write(out[0])
            else:
                self.transport.writelines(out)

    def close(self, linger: bool = True) -> None:
        """Close after everything written so far has been sent.

        With ``linger``, like Envoy's delayed close: send FIN, then read and discard for up to
        delayed_close_timeout (1 s by default; 0 closes at once), so unread request bytes do not
        make the kernel reset the response the client is reading.
        """
        transport = self.transport
        if transport is None or transport.is_closing() or self._linger is not None:
            return
        self._cancel_splice()  # the delayed close reads (and discards) from here on
        self._closed_here = True
        if self.ctx.draining:
            self.ctx.http_stats.downstream_cx_drain_close += 1
        if self.out:
            self.uncork()
        delay = self.ctx.delayed_close_timeout
        if self.closed or not linger or not delay or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._linger = self.loop.call_later(delay, self._delayed_close_timeout)
        self.blocked = BLOCK_DONE  # discard whatever still arrives
        transport.resume_reading()

    def _delayed_close_timeout(self) -> None:
        # the client did not close within delayed_close_timeout
        self.ctx.http_stats.downstream_cx_delayed_close_timeout += 1
        if self.transport is not None:
            self.transport.close()

    def close_when_quiet(self) -> None:
        """Draining: close an idle connection once the client has been quiet for
        ``_DRAIN_GRACE`` since its last response, so a request it sent just before is served.
        The connection's one timer does the waiting (``_on_timer``), so none outlives it."""
        if self.closed or self.active is not None or self.queue or self.tunnel is not None:
            return
        if self.codec.cur is not None:
            return  # a request is arriving: answered with connection: close, or timed out
        quiet_at = self.last_io + _DRAIN_GRACE
        if quiet_at > self.loop.time():
            self.arm(quiet_at)
        else:
            self.close()

    def abort(self) -> None:
        """Reset the connection: whatever is corked is dropped, not sent."""
        self.out = []
        self._closed_here = True
        self._cancel_splice()
        if self.active is not None and self.transport is not None:
            self.ctx.http_stats.downstream_rq_tx_reset += 1  # a request ended by our reset
        if self.transport is not None:
            self.transport.abort()

    def _pause(self, bit: int) -> None:
        if not self.blocked and self.transport is not None:
            self.transport.pause_reading()
        self.blocked |= bit

    def _resume(self, bit: int) -> None:
        if self.blocked & bit:
            self.blocked &= ~bit
            if not self.blocked and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def block_reading(self, bit: int, on: bool) -> None:
        if on:
            self._pause(bit)
        else:
            self._resume(bit)

    def _duration_reached(self, now: float) -> bool:
        """max_connection_duration, then its drain, as Envoy's for HTTP/1. When reached, each
        response not yet begun carries `connection: close` and is the last. When the drain
        (drain_timeout) ends, an idle connection closes; a busy one closes after its response.
        (Envoy closes a connection that never sent a byte at once; here it waits for the drain's
        end like any idle one: telling them apart would cost every read.) True if it closed."""
        ctx = self.ctx
        self._expires_at = 0.0
        cur = cast("Stream | None", self.codec.cur)
        if self.drain_close:  # the drain is over
            if self.tunnel is not None:
                return False  # an upgraded connection gets no `connection: close` (Envoy)
            if self.active is None and not self.queue and cur is None:
                self.close()
                return True
            for s in (self.active, *self.queue, cur):
                if s is not None:
                    s.close_after = True  # even a response already on its way
            return False
        ctx.http_stats.downstream_cx_max_duration_reached += 1
        self.drain_close = True
        for s in (self.active, *self.queue, cur):
            if s is not None and not s.response_started:
                s.close_after = True
        if ctx.duration_drain:  # else (http1_safe_max_connection_duration) only the next reply
            self._expires_at = now + ctx.duration_drain
            self.arm(self._expires_at)
        return False

    # -- timers: one handle per connection, re-armed lazily ------------------------------------
    def arm(self, when: float) -> None:
        if when <= 0:
            return
        timer = self._timer
        if timer is not None:
            if self._timer_when <= when:
                return  # fires earlier and re-checks then
            timer.cancel()
        self._timer_when = when
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed:
            return
        now = self.loop.time()
        ctx = self.ctx
        if self._expires_at:  # max_connection_duration, or the drain after it
            if self._expires_at > now:
                self.arm(self._expires_at)
            elif self._duration_reached(now):
                return
        s = self.active or self.tunnel
        if s is not None:
            nxt = s.check_timeouts(now)
            if nxt > 0 and not self.closed:
                self.arm(nxt)
            return
        if self.queue:
            return
        cur = cast("Stream | None", self.codec.cur)
        if ctx.draining and cur is None:
            self.close_when_quiet()
            return
        if cur is not None and cur is self._head and self.codec.in_head:
            if self._head_deadline <= now:  # request_headers_timeout
                self._head = None
                ctx.http_stats.downstream_rq_header_timeout += 1
                self.codec.error = http1.REQUEST_HEADER_TIMEOUT
                self._on_parse_error()
                if self.active is None and self.queue:
                    self._start_next()
                return
            self.arm(self._head_deadline)
        if cur is not None and self.codec.in_head and ctx.stream_idle_timeout:
            idle_at = self.last_io + ctx.stream_idle_timeout
            if idle_at <= now:  # a head that stopped coming: the stream idle timeout
                self.codec.error = http1.STREAM_IDLE_TIMEOUT
                self._on_parse_error()
                if self.active is None and self.queue:
                    self._start_next()
                return
            self.arm(idle_at)
        if cur is not None and cur.deadline:
            # request_timeout while the head is still arriving
            if cur.deadline <= now:
                ctx.http_stats.downstream_rq_timeout += 1
                self.codec.error = http1.REQUEST_TIMEOUT
                self._on_parse_error()
                if self.active is None and self.queue:
                    self._start_next()
                return
            self.arm(cur.deadline)
        if ctx.idle_timeout:
            deadline = self.last_io + ctx.idle_timeout
            if deadline <= now:
                ctx.http_stats.downstream_cx_idle_timeout += 1
                self.close()
            else:
                self.arm(deadline)
