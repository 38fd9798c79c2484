"""One try of a request upstream (Envoy's UpstreamRequest): from the pool's connection to the
end of the response.

It is the pool's waiter, the connection's callbacks and the response codec's callbacks. What
it learns goes to its stream's encoder (``encode_headers``, ``encode_data``...); every way it
can fail goes to one place, the router's ``on_upstream_reset``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from udsproxy.codec import http1
from udsproxy.codec.encode import CRLF, LAST_CHUNK, chunk_head
from udsproxy.codec.http1 import LocalReply
from udsproxy.codec.response import ResponseDecoder
from udsproxy.splice import Splicer, splice_fds
from udsproxy.upstream.connection import BLOCK_SPLICE, UpstreamConnection

if TYPE_CHECKING:
    from udsproxy.http.active_stream import ActiveStream
    from udsproxy.upstream.cluster import Host


class RouterCallbacks(Protocol):
    """Where a try's end goes (``router.router.Router``)."""

    def release(
        self, s: ActiveStream, upstream: UpstreamRequest, conn: UpstreamConnection
    ) -> None: ...

    def on_connect_failure(
        self, s: ActiveStream, upstream: UpstreamRequest, exc: BaseException
    ) -> None: ...

    def on_upstream_reset(
        self, s: ActiveStream, upstream: UpstreamRequest, reply: LocalReply, no_response: bool
    ) -> None: ...

    def on_response(
        self, s: ActiveStream, upstream: UpstreamRequest, codec: ResponseDecoder
    ) -> bool: ...


__all__ = ["UpstreamRequest"]


class UpstreamRequest:
    __slots__ = ("conn", "host", "reused", "router", "stream", "waiting")

    def __init__(self, stream: ActiveStream, host: Host, router: RouterCallbacks) -> None:
        self.stream = stream
        self.host = host
        self.router = router
        self.conn: UpstreamConnection | None = None
        self.reused = False
        self.waiting = False  # queued in the pool for a connection

    def start(self, fresh: bool = False) -> None:
        self.stream.attempt_count += 1  # a try counts whether or not it gets a connection
        self.waiting = self.host.pool.new_stream(self, fresh) is not None

    # -- the pool's waiter -------------------------------------------------------------------------
    def on_pool_ready(self, conn: UpstreamConnection) -> None:
        self.waiting = False
        self.conn = conn
        self.reused = conn.requests > 0
        s = self.stream
        conn.codec.begin(self, s.is_head, s.upgrade is not None)
        data = s.on_upstream_ready()
        # a whole request may wait for the end of the loop iteration; a body that follows not
        conn.send(self, data, s.ctx.write_batch if s.request_complete else None)
        s.on_request_sent(conn)
        if s.retry_state is not None and s.request_complete and self.conn is conn:
            s.arm_per_try_timeout()

    def on_pool_failure(self, exc: BaseException) -> None:
        self.waiting = False
        self.router.on_connect_failure(self.stream, self, exc)

    # -- the request's way upstream --------------------------------------------------------------
    def send_data(self, data: bytes | memoryview, chunked: bool) -> int:
        """More request body; returns the bytes written (on the wire), 0 if not connected."""
        conn = self.conn
        if conn is None or conn.transport is None:
            return 0
        if conn.held is not None:
            conn.flush_held()  # the head first
        n = len(data)
        if chunked:
            size = chunk_head(n)
            conn.transport.writelines([size, data, CRLF])
            n += len(size) + 2  # bytes on the wire, as Envoy counts them
        else:
            conn.transport.write(data)
        conn.stats.upstream_cx_tx_bytes_total += n
        return n

    def send_end(self, chunked: bool) -> bool:
        """The request is complete; False if not connected yet (it goes with the head)."""
        conn = self.conn
        if conn is None or conn.transport is None:
            return False
        if chunked:
            conn.write(LAST_CHUNK)
        return True

    def reset(self) -> None:
        """Give up this try: leave the pool's queue, or drop the connection mid-request."""
        if self.waiting:
            self.waiting = False
            self.host.pool.cancel(self)
            return
        conn = self.conn
        if conn is not None:
            self.conn = None
            if self.stream.upgrade is not None and conn.codec.upgraded:
                conn.close()
            else:
                conn.abort()  # mid-request: never reusable

    # -- the connection's callbacks ------------------------------------------------------------
    def on_upstream_data(self, data: bytes) -> None:
        conn = self.conn
        assert conn is not None
        s = self.stream
        codec = conn.codec
        if codec.upgraded:
            s.encode_tunnel_data(data)
            return
        downstream = s.conn
        downstream.cork()  # head and body of one read leave in one write
        try:
            codec.feed(data)
        finally:
            if codec.message_done:
                downstream.release()  # a whole response: it may wait for the iteration's end
            else:
                # a body still coming: at once, as before (holding each read of a 1 MiB body
                # to the iteration's end doubled its kernel time: 558 -> 1186 us per request)
                downstream.uncork()
        splice_min = s.ctx.splice_response_min
        if (
            splice_min
            and codec.body_remaining >= splice_min
            and self.conn is conn
            and not s.chunked_out
            and s.resp_coder is None  # a transformed body must pass through Python
        ):
            self._start_splice(conn)

    def on_upstream_lost(self) -> None:
        conn = self.conn
        self.conn = None
        s = self.stream
        if conn is None or s.done:
            return
        codec = conn.codec
        if codec.upgraded:
            s.finish(True)  # tunnel over: close after what is buffered has been written
            return
        if s.response_started and codec.close_delimited:
            s.encode_complete()  # a close-delimited body ends with the connection
            return
        self.router.on_upstream_reset(s, self, http1.CONNECTION_TERMINATION, codec.status == 0)

    def on_upstream_write_paused(self) -> None:
        self.stream.on_upstream_write_paused()

    def on_upstream_write_resumed(self) -> None:
        self.stream.on_upstream_write_resumed()

    # -- the response codec's callbacks --------------------------------------------------------
    def on_response_interim(self, codec: ResponseDecoder) -> None:
        self.stream.encode_interim(codec.status, codec.headers)

    def on_response_headers(self, codec: ResponseDecoder) -> None:
        if self.host.outlier is not None:  # outlier detection sees every try's status
            self.host.outlier.put_http_response_code(codec.status)
        s = self.stream
        if s.retry_state is not None and self.router.on_response(s, self, codec):
            return  # retried: this response goes nowhere
        s.encode_headers(codec.status, codec.headers, codec.content_length, codec.block)

    def on_response_body(self, data: bytes | memoryview) -> None:
        self.stream.encode_data(data)

    def on_response_complete(self) -> None:
        conn = self.conn
        if conn is None:
            return  # a response being retried: the connection was dropped
        self.conn = None
        s = self.stream
        self.router.release(s, self, conn)
        s.encode_complete()

    def on_response_upgrade(self, rest: bytes) -> None:
        conn = self.conn
        assert conn is not None
        if conn.codec.status != 101 or self.stream.upgrade is None:
            self.on_protocol_error()
            return
        self.stream.on_tunnel_open(conn, rest)

    def on_protocol_error(self) -> None:
        conn = self.conn
        if conn is None:
            return  # a response being retried: the connection was dropped
        conn.stats.upstream_cx_protocol_error += 1
        self.conn = None
        conn.abort()
        s = self.stream
        if not s.done:
            self.router.on_upstream_reset(s, self, http1.UPSTREAM_PROTOCOL_ERROR, False)

    # -- large response bodies by splice(2) ------------------------------------------------------
    def _start_splice(self, conn: UpstreamConnection) -> None:
        """Hand the rest of a large Content-Length body to splice(2)."""
        s = self.stream
        if s.conn.out:
            s.conn.uncork()  # the head (held to the iteration's end) goes before the body
        fds = splice_fds(conn.transport, s.conn.transport)
        if fds is None or conn.transport is None:
            return  # e.g. bytes still queued downstream: stay on the copy path
        conn.pause(BLOCK_SPLICE)
        conn.splicer = Splicer(
            s.ctx.loop,
            *fds,
            conn.codec.body_remaining,
            s.on_spliced,
            self._splice_done,
            self._splice_failed,
        )
        conn.splicer.start()

    def _splice_done(self) -> None:
        conn = self.conn
        if conn is None:
            return
        conn.splicer = None
        conn.codec.body_spliced()
        conn.resume(BLOCK_SPLICE)
        self.on_response_complete()

    def _splice_failed(self, exc: OSError | None, eof: bool) -> None:
        conn = self.conn
        if conn is None:
            return
        conn.splicer = None
        conn.abort()
        self.on_upstream_lost()
