"""Per-listener state compiled once from config and shared by all its connections."""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from collections.abc import Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from udsproxy import splice
from udsproxy.config import schema
from udsproxy.flags import ResponseFlag
from udsproxy.router import Router
from udsproxy.stats.store import BOUNDS, StatsStore
from udsproxy.stream import Stream
from udsproxy.streaminfo import Peer, StreamInfo

if TYPE_CHECKING:
    from udsproxy.downstream import DownstreamConnection
    from udsproxy.upstream import Cluster

__all__ = ["AccessLogger", "ListenerContext"]

log = logging.getLogger("udsproxy.context")


class AccessLogger(Protocol):
    def log(self, info: StreamInfo) -> None: ...

    def flush(self) -> None: ...


class ListenerContext:
    """What every connection of one listener needs, precomputed."""

    def __init__(
        self,
        listener: schema.Listener,
        clusters: Mapping[str, Cluster],
        access_loggers: Sequence[AccessLogger],
        loop: asyncio.AbstractEventLoop,
        splice_min_bytes: int = 0,
        stats: StatsStore | None = None,
        request_stats: bool = True,
    ) -> None:
        hcm = listener.http_connection_manager
        self.name = listener.name
        self.loop = loop
        self.stat_prefix = hcm.stat_prefix
        self.router = Router(hcm.route_config, hcm.upgrade_configs)
        self.clusters = clusters
        self.access_loggers = tuple(access_loggers)
        server = hcm.server_name.encode()
        self.server_header = b"server: " + server + b"\r\n"
        self.server_header_tuple = (b"server", server)
        self.max_header_bytes = hcm.max_request_headers_kb * 1024
        self.max_headers_count = hcm.max_headers_count
        self.buffer_limit = listener.per_connection_buffer_limit_bytes
        self.use_remote_address = hcm.use_remote_address
        self.xff_num_trusted_hops = hcm.xff_num_trusted_hops
        self.idle_timeout = hcm.idle_timeout
        self.stream_idle_timeout = hcm.stream_idle_timeout
        self.listener_address = listener.address
        self.scheme = b"https" if listener.tls is not None else b"http"
        self.local_peer = Peer(str(listener.address), None)
        # Host sent upstream for an HTTP/1.0 request without one (Envoy: default_host_for_http_10)
        self.default_host = str(listener.address).encode()
        # Content-Length bodies at least this large go through splice(2); 0 turns it off.
        # Never on TLS: the kernel would move plaintext around the encryption.
        self.splice_min_bytes = splice_min_bytes if splice.AVAILABLE and listener.tls is None else 0
        self.draining = False  # set on shutdown: responses carry connection: close
        self.connections: set[DownstreamConnection] = set()
        self._next_id = 0
        self._tasks: set[asyncio.Task[None]] = set()
        store = stats if stats is not None else StatsStore()
        self.http_stats = store.http_for(hcm.stat_prefix)
        self.listener_stats = store.listener_for(str(listener.address), hcm.stat_prefix)
        # per-request counting can be switched off to measure what it costs
        self.request_stats = request_stats

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a connect attempt; the set keeps a strong reference until it is done."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def drain(self) -> None:
        """Stop keeping connections alive: idle ones close now, busy ones after their response
        (which carries ``connection: close``)."""
        self.draining = True
        for conn in list(self.connections):
            if conn.active is None and not conn.queue and conn.tunnel is None:
                conn.close()

    def adopt(self, old: ListenerContext) -> bool:
        """Take over ``old``'s open connections after a route change on the same socket, so
        that none is closed under a client about to reuse it. Requests already parsed keep
        ``old`` (their routes); the next ones on these connections use this context. Only
        where both count into the same stats; otherwise returns False and nothing moves."""
        if old.http_stats is not self.http_stats or old.listener_stats is not self.listener_stats:
            return False
        for conn in old.connections:
            conn.ctx = self
        self.connections |= old.connections
        old.connections = set()
        return True

    def next_connection_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def new_stream(self, conn: DownstreamConnection) -> Stream:
        self.http_stats.downstream_rq_active += 1
        return Stream(self, conn)

    def observe(self, s: Stream) -> None:
        """The end of a request: observers read what it left behind and never fail it."""
        self.http_stats.downstream_rq_active -= 1
        if self.request_stats:
            self._count(s)
        for logger in self.access_loggers:
            try:
                logger.log(s)
            except Exception:  # an access log bug must not break the data path
                log.exception("access log failed")

    def _count(self, s: Stream) -> None:
        hs = self.http_stats
        ls = self.listener_stats
        code = s.response_code
        klass = code // 100 if code < 600 else 0
        hs.rq_class[klass] += 1  # totals are sums of the classes, taken at scrape time
        ls.rq_class[klass] += 1
        end = s.end_mono or s.start_mono
        ms = (end - s.start_mono) * 1000.0
        bucket = bisect_left(BOUNDS, ms)  # the histogram update, inlined: hot path
        hist = hs.rq_time
        hist.counts[bucket] += 1
        hist.sum += ms
        flags = s.response_flags
        if flags:
            if flags & ResponseFlag.NR:
                hs.no_route += 1
            if flags & ResponseFlag.NC:
                hs.no_cluster += 1
            if flags & ResponseFlag.DC:
                hs.downstream_rq_rx_reset += 1
            if flags & ResponseFlag.SI:
                hs.downstream_rq_idle_timeout += 1
            if flags & ResponseFlag.DPE:
                hs.downstream_cx_protocol_error += 1
        elif code == 403 and s.response_code_details == "upgrade_failed":
            hs.downstream_rq_ws_on_non_ws_route += 1
        host = s.host
        if host is not None:
            hs.rq_total += 1
            if 0 < code < 500:  # Envoy's host rq_success / rq_error: non-5xx / 5xx (or none)
                host.rq_success += 1
            else:
                host.rq_error += 1
            cs = host.cluster.stats
            if code:
                codes = cs.codes
                codes[code] = codes.get(code, 0) + 1
            else:
                cs.no_response += 1
            hist = cs.rq_time
            hist.counts[bucket] += 1
            hist.sum += ms
            if s.retried:
                cs.upstream_rq_retry += 1
            if flags:
                if flags & ResponseFlag.UT:
                    cs.upstream_rq_timeout += 1
                    host.rq_timeout += 1
                if flags & ResponseFlag.UC:
                    cs.upstream_rq_rx_reset += 1
                if flags & (ResponseFlag.DC | ResponseFlag.UPE):
                    cs.upstream_rq_tx_reset += 1
