"""Upstream side: the HTTP/1.1 connection to an endpoint, its keep-alive pool, and the cluster.

One ``UpstreamConnection`` serves one request at a time (no upstream pipelining, as in Envoy).
Idle connections sit in a per-host LIFO stack so hot connections stay hot and the cold ones age
out at the bottom. An idle connection keeps reading, so an upstream close or stray bytes evict it
at once instead of failing the next request.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import httptools

from udsproxy.config import schema
from udsproxy.config.schema import SocketAddress as Sa
from udsproxy.dns import Resolver
from udsproxy.lb import schedule
from udsproxy.splice import Splicer, splice_fds
from udsproxy.stats.store import ClusterStats, SslStats
from udsproxy.upstream_tls import ClusterTls

if TYPE_CHECKING:
    from udsproxy.stream import Stream

__all__ = ["Cluster", "Host", "UpstreamConnection"]

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

_MAX_RESPONSE_HEAD = 60 * 1024  # Envoy's max_response_headers_kb default

_NO_TLS: dict[str, object] = {}  # create_connection's TLS arguments for a plain-text cluster


class _Overrun(Exception):
    """Raised from a parser callback: a second response started where one was expected."""


class UpstreamConnection(asyncio.Protocol):
    """An HTTP/1.1 client connection. It parses responses and hands them to its ``stream``."""

    __slots__ = (
        "body_remaining",
        "closed",
        "content_length",
        "head_fed",
        "host",
        "idle_since",
        "in_body",
        "keep_alive",
        "message_done",
        "nominated",
        "parser",
        "requests",
        "resp_chunked",
        "resp_headers",
        "resp_status",
        "splicer",
        "stats",
        "stray_body",
        "stream",
        "transport",
        "upgraded",
    )

    def __init__(self, host: Host) -> None:
        self.host = host
        # its cluster's (kept across reloads): every write upstream adds to upstream_cx_tx_bytes
        self.stats = host.cluster.stats
        self.transport: asyncio.Transport | None = None
        self.stream: Stream | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.requests = 0  # requests sent on this connection (for reuse and max_requests)
        self.closed = False
        self.idle_since = 0.0
        self.upgraded = False
        self.splicer: Splicer | None = None
        self._reset_response()
        self.message_done = True  # a fresh connection is as reusable as a finished one

    def _reset_response(self) -> None:
        self.resp_headers: list[tuple[bytes, bytes]] = []
        self.resp_status = 0
        self.content_length = -1
        self.resp_chunked = False
        self.keep_alive = True
        self.in_body = False  # final response headers seen, body may follow
        self.message_done = False
        self.stray_body = False
        self.body_remaining = -1  # >0: the body is relayed without the parser (see data_received)
        self.head_fed = 0
        self.nominated: frozenset[bytes] | None = None  # headers the upstream's Connection names

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = transport = cast(asyncio.Transport, transport)
        host = self.host
        host.cx_total += 1
        host.cx_active += 1
        cs = host.cluster.stats
        cs.upstream_cx_total += 1
        cs.upstream_cx_http1_total += 1
        cs.upstream_cx_active += 1
        limit = self.host.cluster.buffer_limit
        transport.set_write_buffer_limits(high=limit, low=limit // 2)

    def data_received(self, data: bytes) -> None:
        stream = self.stream
        if stream is None:
            # Bytes on an idle connection: the upstream broke framing; never reuse it.
            self.close()
            return
        self.host.cluster.stats.upstream_cx_rx_bytes_total += len(data)
        downstream = stream.conn
        downstream.cork()  # head and body of one read leave in one write
        try:
            self._received(stream, data)
        finally:
            downstream.uncork()
        splice_min = stream.ctx.splice_response_min
        if (
            splice_min
            and self.body_remaining >= splice_min
            and not stream.chunked_out
            and stream.resp_coder is None  # a transformed body must pass through Python
        ):
            self._start_splice(stream)

    def _start_splice(self, stream: Stream) -> None:
        """Hand the rest of a large Content-Length body to splice(2)."""
        fds = splice_fds(self.transport, stream.conn.transport)
        if fds is None or self.transport is None:
            return  # e.g. bytes still queued downstream: stay on the copy path
        self.transport.pause_reading()
        self.splicer = Splicer(
            stream.ctx.loop,
            *fds,
            self.body_remaining,
            stream.on_spliced,
            self._splice_done,
            self._splice_failed,
        )
        self.splicer.start()

    def _splice_done(self) -> None:
        self.splicer = None
        self.body_remaining = -1
        self.parser = httptools.HttpResponseParser(self)
        self.message_done = True
        if self.transport is not None:
            self.transport.resume_reading()
        stream = self.stream
        if stream is not None:
            stream.on_response_complete(self)

    def _splice_failed(self, exc: OSError | None, eof: bool) -> None:
        self.splicer = None
        stream = self.stream
        self.abort()
        if stream is not None:
            stream.on_upstream_lost(self)

    def _received(self, stream: Stream, data: bytes) -> None:
        if self.upgraded:
            stream.on_tunnel_data(data)
            return
        remaining = self.body_remaining
        if remaining > 0:
            # Content-Length body after the headers: relay the bytes as they are, no parsing.
            n = len(data)
            if n < remaining:
                self.body_remaining = remaining - n
                stream.on_response_body(data)
                return
            self.body_remaining = -1
            if n > remaining:
                stream.on_response_body(memoryview(data)[:remaining])
                self.keep_alive = False  # bytes after the response: not reusable
            else:
                stream.on_response_body(data)
            # The parser is mid-body; a fresh one reads the next response.
            self.parser = httptools.HttpResponseParser(self)
            self.message_done = True
            stream.on_response_complete(self)
            return
        if not self.in_body:
            self.head_fed += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgraded = True
            stream.on_response_upgrade(self, data[exc.args[0] :])
            return
        except httptools.HttpParserError:
            if self.message_done and not self.stray_body:
                # Bytes after a complete response (no upstream pipelining): deliver the
                # response, never the extra bytes, and retire the connection.
                self.keep_alive = False
                stream.on_response_complete(self)
            else:
                stream.on_upstream_protocol_error(self)
            return
        if (not self.in_body and self.head_fed > _MAX_RESPONSE_HEAD) or self.stray_body:
            stream.on_upstream_protocol_error(self)
        elif self.message_done:
            stream.on_response_complete(self)
        elif self.in_body and stream.response_has_no_body:
            # HEAD (or similar): httptools cannot be told there is no body, so end it here.
            self.parser = httptools.HttpResponseParser(self)
            self.message_done = True
            stream.on_response_complete(self)

    def eof_received(self) -> bool:
        if self.stream is None:
            self.close()  # leave the pool now, before anyone can pick it
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.host.cx_active -= 1
        cs = self.host.cluster.stats
        cs.upstream_cx_active -= 1
        cs.upstream_cx_destroy += 1
        if self.closed:
            cs.upstream_cx_destroy_local += 1
        else:
            cs.upstream_cx_destroy_remote += 1
        self.closed = True
        stream = self.stream
        if stream is not None:
            cs.upstream_cx_destroy_with_active_rq += 1
        if stream is not None:
            self.stream = None
            stream.on_upstream_lost(self)
        else:
            self.host.forget(self)

    def pause_writing(self) -> None:
        if self.stream is not None:
            self.stream.on_upstream_write_paused()

    def resume_writing(self) -> None:
        if self.stream is not None:
            self.stream.on_upstream_write_resumed()

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
        self.resp_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self.resp_status = status
        stream = self.stream
        assert stream is not None
        if status == 101 and stream.upgrade is None:
            self.stray_body = True  # a 101 nobody asked for: a protocol error, caught below
            raise _Overrun
        if status < 200 and status != 101:
            stream.on_response_interim(self)
            # an interim response's headers say nothing about the final one
            self.resp_headers = []
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
            self.resp_headers = [h for h in self.resp_headers if h[0] not in drop]
        self.in_body = True
        stream.on_response_headers(self)
        if self.content_length > 0 and not stream.response_has_no_body:
            self.body_remaining = self.content_length

    def on_body(self, body: bytes) -> None:
        stream = self.stream
        if stream is None or stream.response_has_no_body:
            self.stray_body = True
            return
        if self.body_remaining > 0:
            self.body_remaining -= len(body)
        stream.on_response_body(body)

    def on_message_complete(self) -> None:
        if self.in_body:
            self.message_done = True
            self.body_remaining = -1

    # -- used by Stream / Host ----------------------------------------------------------------
    def send(self, stream: Stream, data: list[bytes]) -> None:
        assert self.transport is not None
        self.stats.upstream_cx_tx_bytes_total += sum(map(len, data))
        self.host.rq_total += 1
        self.stream = stream
        self.requests += 1
        self._reset_response()
        self.transport.writelines(data)

    @property
    def reusable(self) -> bool:
        max_rq = self.host.cluster.max_requests_per_connection
        return (
            self.message_done
            and self.keep_alive
            and not self.closed
            and not self.upgraded
            and not (max_rq and self.requests >= max_rq)
        )

    def close(self) -> None:
        if self.splicer is not None:
            self.splicer.cancel()
            self.splicer = None
        self.stream = None
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        self.host.forget(self)

    def abort(self) -> None:
        if self.splicer is not None:
            self.splicer.cancel()
            self.splicer = None
        self.stream = None
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self.host.forget(self)


class Host:
    """One endpoint of a cluster with its pool of idle keep-alive connections."""

    # Per-host counts for the admin's /clusters (Envoy's host stats), plain ints; rq_success and
    # rq_error come from the stats ledger (by ``ledger_key``).
    STATS = ("cx_total", "cx_active", "cx_connect_fail", "rq_total", "rq_timeout")
    __slots__ = (
        "_auto_host", "_timer", "address", "cluster", "endpoint", "hostname", "idle",
        "ledger_key", "loop", "retired", "text", *STATS,
    )  # fmt: skip

    def __init__(
        self,
        cluster: Cluster,
        address: schema.Address,
        endpoint: schema.Endpoint | None = None,
        hostname: str = "",
    ) -> None:
        self.cluster = cluster
        self.loop = cluster.loop
        self.endpoint = endpoint  # its config: weight, locality, metadata (for /clusters)
        # Envoy's host name: endpoint.hostname, else the DNS name it was resolved from
        self.hostname = hostname or (endpoint.hostname if endpoint is not None else "")
        self._auto_host = self.hostname.encode("idna") if self.hostname else None
        self.retired = False  # left the DNS answer: busy connections finish, then close
        self.idle: collections.deque[UpstreamConnection] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self.cx_total = self.cx_active = self.cx_connect_fail = 0
        self.rq_total = self.rq_timeout = 0
        self.set_address(address)

    def set_address(self, address: schema.Address) -> None:
        """Where new connections go (a LOGICAL_DNS host moves; its open connections stay)."""
        self.address = address
        self.text = str(address)  # %UPSTREAM_HOST%: a pipe renders as its path
        self.ledger_key = (self.cluster.stats, self.text)  # outlives this object across reloads

    @property
    def weight(self) -> int:
        return self.endpoint.load_balancing_weight if self.endpoint is not None else 1

    def retire(self) -> None:
        self.retired = True
        self.close_idle()

    def stats(self, results: Sequence[int] = (0, 0)) -> dict[str, int]:
        """/clusters' numbers for this host; ``results`` is its [rq_success, rq_error] from the
        stats ledger; rq_active is its busy connections."""
        out = {name: getattr(self, name) for name in self.STATS}
        out["rq_success"], out["rq_error"] = results
        out["rq_active"] = max(self.cx_active - len(self.idle), 0)
        return out

    def auto_host(self) -> bytes | None:
        """The Host that auto_host_rewrite sends to this endpoint: its host name, which only
        endpoints given by name have (DNS clusters); None leaves the Host as it is (Envoy)."""
        return self._auto_host

    def acquire(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()  # most recently used first
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def release(self, conn: UpstreamConnection) -> None:
        conn.stream = None
        max_rq = self.cluster.max_requests_per_connection
        if max_rq and conn.requests >= max_rq:
            self.cluster.stats.upstream_cx_max_requests += 1
        if not conn.reusable or self.cluster.draining or self.retired:
            conn.close()
            return
        if conn.transport is not None and conn.transport.is_reading() is False:
            conn.transport.resume_reading()  # a paused read must not follow it into the pool
        conn.idle_since = self.loop.time()
        self.idle.append(conn)
        if self._timer is None and self.cluster.idle_timeout > 0:
            self._timer = self.loop.call_at(
                conn.idle_since + self.cluster.idle_timeout, self._expire_idle
            )

    def forget(self, conn: UpstreamConnection) -> None:
        """Called once per connection when it closes (idle or busy)."""
        if conn.host is self and conn in self.idle:
            self.idle.remove(conn)

    def _expire_idle(self) -> None:
        self._timer = None
        deadline = self.loop.time() - self.cluster.idle_timeout
        idle = self.idle
        while idle and idle[0].idle_since <= deadline:
            self.cluster.stats.upstream_cx_idle_timeout += 1
            idle.popleft().close()
        if idle:
            self._timer = self.loop.call_at(
                idle[0].idle_since + self.cluster.idle_timeout, self._expire_idle
            )

    async def connect(self) -> UpstreamConnection:
        """Open a new connection. UDS errors (ENOENT, ECONNREFUSED, EAGAIN) raise at once."""
        conn = UpstreamConnection(self)
        address = self.address
        tls = self.cluster.tls
        tls_kwargs = tls.kwargs if tls is not None else _NO_TLS
        try:
            if isinstance(address, schema.Pipe):
                # Connect ourselves: uvloop cannot connect to abstract names, and a non-blocking
                # AF_UNIX connect either completes or fails immediately (EAGAIN = backlog full).
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.setblocking(False)
                    sock.connect(address.sockaddr)
                except BaseException:
                    sock.close()
                    raise
                await self.loop.create_unix_connection(lambda: conn, sock=sock, **tls_kwargs)
            else:
                await asyncio.wait_for(
                    self.loop.create_connection(
                        lambda: conn, address.address, address.port_value, **tls_kwargs
                    ),
                    self.cluster.connect_timeout or None,
                )
                sock_obj = conn.transport.get_extra_info("socket") if conn.transport else None
                if sock_obj is not None:
                    sock_obj.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except ssl.SSLError as exc:
            if tls is None:
                raise
            raise tls.failed(exc) from None  # 503 UF with Envoy's TLS failure reason
        if tls is not None and not tls.verified(conn.transport):
            conn.abort()
            raise tls.san_failed()
        return conn

    def close_idle(self) -> None:
        while self.idle:
            self.idle.pop().close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Cluster:
    """A named set of hosts, picked (weighted) round robin.

    STATIC: one host per endpoint. STRICT_DNS: one host per address each endpoint's name
    resolves to; the set follows every answer (a host that leaves closes its idle connections,
    its busy ones finish). LOGICAL_DNS: one host for the single endpoint, connecting to the first
    address of the latest answer; connections already open stay where they are. Until a name
    first resolves, its cluster has no host for it (503 UH, as Envoy).
    """

    __slots__ = (
        "_rr",
        "_schedule",
        "_targets",
        "buffer_limit",
        "config",
        "connect_timeout",
        "draining",
        "hosts",
        "idle_timeout",
        "loop",
        "max_requests_per_connection",
        "name",
        "resolver",
        "stats",
        "tls",
    )

    def __init__(
        self,
        config: schema.Cluster,
        loop: asyncio.AbstractEventLoop,
        stats: ClusterStats | None = None,
    ) -> None:
        self.config = config
        self.stats = stats if stats is not None else ClusterStats()  # kept across reloads
        self.draining = False  # replaced by a reload: connections retire as they finish
        self.name = config.name
        self.loop = loop
        self.connect_timeout = config.connect_timeout
        self.idle_timeout = config.idle_timeout
        self.max_requests_per_connection = config.max_requests_per_connection
        self.buffer_limit = config.per_connection_buffer_limit_bytes
        self.hosts: tuple[Host, ...] = ()
        self._schedule: tuple[Host, ...] = ()  # one round of weighted round robin
        self._targets: list[tuple[Host, ...]] = [() for _ in config.endpoints]  # per endpoint
        self.resolver: Resolver | None = None
        if config.type == "STATIC":
            self._targets = [(Host(self, ep.address, ep),) for ep in config.endpoints]
            self._rebuild()
        else:
            names = [ep.address.address for ep in config.endpoints if isinstance(ep.address, Sa)]
            self.resolver = Resolver(
                loop,
                config.name,
                names,
                self._on_resolved,
                self.stats,
                family=config.dns_lookup_family,
                refresh_rate=config.dns_refresh_rate,
                failure_refresh_rate=config.dns_failure_refresh_rate,
            )
        self.tls: ClusterTls | None = None  # transport_socket: its SSLContext, built once
        if config.tls is not None:
            if self.stats.ssl is None:
                self.stats.ssl = SslStats()
            self.tls = ClusterTls(config.tls, self.stats.ssl, config.connect_timeout)
        self._rr = 0

    def pick(self) -> Host | None:
        hosts = self._schedule
        if not hosts:
            return None
        i = self._rr
        self._rr = i + 1 if i + 1 < len(hosts) else 0
        return hosts[i]

    # -- service discovery -------------------------------------------------------------------
    def start(self) -> None:
        """Start resolving (DNS clusters; nothing to do for STATIC ones)."""
        if self.resolver is not None:
            self.resolver.start()

    async def warm(self, timeout: float) -> bool:
        """Wait, at most ``timeout`` seconds, for the first answer for every name."""
        return self.resolver is None or await self.resolver.wait_initial(timeout)

    def _on_resolved(self, i: int, addresses: tuple[str, ...]) -> bool:
        endpoint = self.config.endpoints[i]
        address = endpoint.address
        assert isinstance(address, Sa)
        old = self._targets[i]
        if self.config.type == "LOGICAL_DNS":
            if not addresses:
                return False  # Envoy keeps the logical host on an empty answer
            first = Sa(address=addresses[0], port_value=address.port_value)
            if old:
                if old[0].address == first:
                    return False
                old[0].set_address(first)
            else:
                self._targets[i] = (Host(self, first, endpoint, address.address),)
            self._rebuild()
            return True
        # the same set in another order (servers rotate their answers) changes nothing
        if {h.address.address for h in old} == set(addresses):  # type: ignore[union-attr]
            return False
        by_ip = {h.address.address: h for h in old}  # type: ignore[union-attr]
        new = []
        for ip in addresses:
            host = by_ip.pop(ip, None)
            if host is None:
                at = Sa(address=ip, port_value=address.port_value)
                host = Host(self, at, endpoint, address.address)
            new.append(host)
        for host in by_ip.values():
            host.retire()
        self._targets[i] = tuple(new)
        self._rebuild()
        return True

    def _rebuild(self) -> None:
        self.hosts = tuple(h for target in self._targets for h in target)
        self._schedule = schedule([(h, h.weight) for h in self.hosts])
        self._rr = 0

    def drain(self) -> None:
        self.draining = True
        self.close()

    def close(self) -> None:
        if self.resolver is not None:
            self.resolver.close()  # no lookup or timer outlives the cluster
        for host in self.hosts:
            host.close_idle()
