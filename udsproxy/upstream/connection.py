"""One HTTP/1.1 connection to an upstream endpoint: transport, read gate and response codec.

It serves one request at a time (no upstream pipelining, as in Envoy). Its ``request`` (the
router's upstream request while one is in flight) gets the bytes, the close and the write
backpressure; the codec (``codec.response``) is fed by that request. An idle connection keeps
reading, so an upstream close or stray bytes evict it from the pool at once instead of failing
the next request.

Reading is paused through one bit mask (``blocked``), as on the downstream side: each reason
sets and clears its own bit, so a resume for one reason never undoes a pause for another.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, cast

from udsproxy.codec.response import ResponseDecoder
from udsproxy.splice import Splicer
from udsproxy.stats.store import ClusterStats
from udsproxy.upstream.pool import ConnPool
from udsproxy.write_batch import WriteBatch

__all__ = [
    "BLOCK_CLIENT_WRITE",
    "BLOCK_SPLICE",
    "ConnectionCallbacks",
    "HostLike",
    "UpstreamConnection",
]

BLOCK_CLIENT_WRITE = 1  # the client is not reading the response
BLOCK_SPLICE = 2  # the body moves with splice(2), not through this protocol


class _Cluster(Protocol):
    @property
    def stats(self) -> ClusterStats: ...

    @property
    def buffer_limit(self) -> int: ...

    @property
    def max_requests_per_connection(self) -> int: ...


class HostLike(Protocol):
    """The endpoint a connection belongs to (``upstream.cluster.Host``)."""

    cx_total: int
    cx_active: int
    rq_total: int

    @property
    def cluster(self) -> _Cluster: ...

    @property
    def pool(self) -> ConnPool: ...


class ConnectionCallbacks(Protocol):
    """The request in flight on the connection."""

    def on_upstream_data(self, data: bytes) -> None: ...

    def on_upstream_lost(self) -> None: ...

    def on_upstream_write_paused(self) -> None: ...

    def on_upstream_write_resumed(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """An asyncio protocol (uvloop only calls its methods)."""

    __slots__ = (
        "blocked",
        "closed",
        "codec",
        "draining",
        "held",
        "host",
        "idle_since",
        "opened",
        "request",
        "requests",
        "splicer",
        "stats",
        "transport",
    )

    def __init__(self, host: HostLike) -> None:
        self.host = host
        # its cluster's (kept across reloads): every write upstream adds to upstream_cx_tx_bytes
        self.stats: ClusterStats = host.cluster.stats
        self.transport: asyncio.Transport | None = None
        self.request: ConnectionCallbacks | None = None
        self.codec = ResponseDecoder()
        self.requests = 0  # requests sent on this connection (for reuse and max_requests)
        self.closed = False
        self.draining = False  # its host went unhealthy: closes once its request is done
        self.idle_since = 0.0
        self.blocked = 0
        self.splicer: Splicer | None = None
        self.held: list[bytes] | None = None  # a request head waiting for the iteration's end
        # when the connect started (created just before it), then when it was made: the
        # upstream_cx_connect_ms and upstream_cx_length_ms histograms, once per connection
        self.opened = time.monotonic()

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = transport = cast(asyncio.Transport, transport)
        host = self.host
        host.cx_total += 1
        host.cx_active += 1
        cs = self.stats
        cs.upstream_cx_total += 1
        cs.upstream_cx_http1_total += 1
        cs.upstream_cx_active += 1
        now = time.monotonic()
        cs.cx_connect_ms.record((now - self.opened) * 1000.0)
        self.opened = now
        limit = host.cluster.buffer_limit
        transport.set_write_buffer_limits(high=limit, low=limit // 2)

    def data_received(self, data: bytes) -> None:
        request = self.request
        if request is None:
            # Bytes on an idle connection: the upstream broke framing; never reuse it.
            self.close()
            return
        self.stats.upstream_cx_rx_bytes_total += len(data)
        request.on_upstream_data(data)

    def eof_received(self) -> bool:
        if self.request is None:
            self.close()  # leave the pool now, before anyone can pick it
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.host.cx_active -= 1
        cs = self.stats
        cs.upstream_cx_active -= 1
        cs.upstream_cx_destroy += 1
        cs.cx_length_ms.record((time.monotonic() - self.opened) * 1000.0)
        if self.closed:
            cs.upstream_cx_destroy_local += 1
        else:
            cs.upstream_cx_destroy_remote += 1
        self.closed = True
        self.host.pool.forget(self)
        request = self.request
        if request is not None:
            cs.upstream_cx_destroy_with_active_rq += 1
            self.request = None
            request.on_upstream_lost()

    def pause_writing(self) -> None:
        if self.request is not None:
            self.request.on_upstream_write_paused()

    def resume_writing(self) -> None:
        if self.request is not None:
            self.request.on_upstream_write_resumed()

    # -- used by the router's upstream request and the pool ------------------------------------
    def is_open(self) -> bool:
        transport = self.transport
        return not self.closed and transport is not None and not transport.is_closing()

    def send(
        self, request: ConnectionCallbacks, data: list[bytes], batch: WriteBatch | None = None
    ) -> None:
        """A request (its head, and its body if held). With ``batch`` (a whole request: nothing
        follows it), it may wait for the end of the loop iteration (write_batch.py)."""
        assert self.transport is not None
        self.stats.upstream_cx_tx_bytes_total += sum(map(len, data))
        self.host.rq_total += 1
        self.request = request
        self.requests += 1
        if batch is None or batch.first():
            self.transport.writelines(data)
        else:
            self.held = data
            batch.hold(self)

    def flush_held(self) -> None:
        data = self.held
        if data is not None:
            self.held = None
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.writelines(data)

    def write(self, data: bytes | memoryview) -> None:
        """More of the request (its body); counted as Envoy counts bytes on the wire."""
        if self.held is not None:
            self.flush_held()
        transport = self.transport
        if transport is not None:
            transport.write(data)
            self.stats.upstream_cx_tx_bytes_total += len(data)

    @property
    def reusable(self) -> bool:
        max_rq = self.host.cluster.max_requests_per_connection
        codec = self.codec
        return (
            codec.message_done
            and codec.keep_alive
            and not self.closed
            and not self.draining
            and not codec.upgraded
            and not (max_rq and self.requests >= max_rq)
        )

    def pause(self, bit: int) -> None:
        if not self.blocked and self.transport is not None:
            self.transport.pause_reading()
        self.blocked |= bit

    def resume(self, bit: int) -> None:
        if self.blocked & bit:
            self.blocked &= ~bit
            if not self.blocked and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def done(self) -> None:
        """The request is over: nothing it paused follows the connection into the pool."""
        self.request = None
        self.codec.callbacks = None
        if self.blocked:
            self.blocked = 0
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def close(self) -> None:
        if self.held is not None:
            self.flush_held()
        if self.splicer is not None:
            self.splicer.cancel()
            self.splicer = None
        self.request = None
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        self.host.pool.forget(self)

    def abort(self) -> None:
        self.held = None  # never sent: the request is being reset
        if self.splicer is not None:
            self.splicer.cancel()
            self.splicer = None
        self.request = None
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self.host.pool.forget(self)
