"""A listener's connection manager (Envoy's HttpConnectionManager), compiled once from config
and shared by all its connections; and where finished requests are observed."""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from udsproxy import splice
from udsproxy.codec.request import decoder_class
from udsproxy.config import schema
from udsproxy.config.datasource import read as read_data_source
from udsproxy.filters import build_chain
from udsproxy.filters.base import RuntimeOf
from udsproxy.flags import ResponseFlag
from udsproxy.http.admission import Admission, GlobalConnections
from udsproxy.localreply import LocalReplyRewriter
from udsproxy.pathnorm import PathNormalizer
from udsproxy.router.routes import RouteTable
from udsproxy.runtime import Runtime
from udsproxy.stats.store import BOUNDS, StatsStore
from udsproxy.streaminfo import Peer, StreamInfo
from udsproxy.write_batch import WriteBatch

if TYPE_CHECKING:
    from udsproxy.upstream.cluster import Cluster

__all__ = ["AccessLogger", "ListenerContext"]

log = logging.getLogger("udsproxy.context")


class Connection(Protocol):
    """A downstream connection (``http.downstream``), as its listener drains or hands it on."""

    ctx: ListenerContext

    def close_when_quiet(self) -> None: ...

    def abort(self) -> None: ...


class AccessLogger(Protocol):
    def log(self, info: StreamInfo) -> None: ...

    def log_batch(self, infos: Sequence[StreamInfo]) -> None: ...


_MAX_FINISHED = 1024  # requests finished in one loop iteration before they are observed anyway


class ListenerContext:
    """What every connection of one listener needs, precomputed."""

    def __init__(
        self,
        listener: schema.Listener,
        clusters: Mapping[str, Cluster],
        access_loggers: Sequence[AccessLogger],
        loop: asyncio.AbstractEventLoop,
        splice_min_bytes: int = 0,
        splice_responses: bool = False,
        stats: StatsStore | None = None,
        request_stats: bool = True,
        batched: bool = False,
        runtime: Runtime | None = None,
        workers: int = 1,
        global_connections: GlobalConnections | None = None,
    ) -> None:
        hcm = listener.http_connection_manager
        self.runtime = runtime  # the server's layered runtime (filters read their keys)
        self.name = listener.name
        self.loop = loop
        self.stat_prefix = hcm.stat_prefix
        self.route_table = RouteTable(
            hcm.route_config, hcm.upgrade_configs, hcm.stream_idle_timeout
        )
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
        # local_reply_config: None unless configured (local replies test one attribute)
        self.local_reply = (
            LocalReplyRewriter(hcm.local_reply_config, read_data_source, runtime)
            if hcm.local_reply_config is not None
            else None
        )
        self.request_timeout = hcm.request_timeout
        self.request_headers_timeout = hcm.request_headers_timeout  # 0: off
        self.max_requests_per_connection = hcm.max_requests_per_connection  # 0: no limit
        self.delayed_close_timeout = hcm.delayed_close_timeout  # 0: close without lingering
        # max_connection_duration (0: none), then drain_timeout; 0 drain: the next response
        # closes and nothing closes an idle connection (http1_safe_max_connection_duration)
        self.max_connection_duration = hcm.max_connection_duration
        self.duration_drain = 0.0 if hcm.http1_safe_max_connection_duration else hcm.drain_timeout
        self.generate_request_id = hcm.generate_request_id
        # None unless a normalization is on: the data path tests one attribute
        paths = (hcm.normalize_path, hcm.merge_slashes, hcm.path_with_escaped_slashes_action)
        self.path_normalizer = PathNormalizer(*paths) if PathNormalizer.needed(*paths) else None
        # headers_with_underscores_action: a decoder whose header callback checks names, so
        # that the default (ALLOW) costs nothing per header
        self.decoder_class = decoder_class(hcm.headers_with_underscores_action)
        self.listener_address = listener.address
        self.scheme = b"https" if listener.tls is not None else b"http"
        self.local_peer = Peer(str(listener.address), None)
        # Host sent upstream for an HTTP/1.0 request without one (Envoy: default_host_for_http_10)
        self.default_host = str(listener.address).encode()
        # Content-Length bodies at least this large go through splice(2); 0 turns it off.
        # Never on TLS: the kernel would move plaintext around the encryption.
        self.splice_min_bytes = splice_min_bytes if splice.AVAILABLE and listener.tls is None else 0
        # Response bodies: off unless asked for. Measured on this path (benchmarks, splice
        # experiment), 1 MiB downloads ran at 0.8x the rate of the memoryview relay.
        self.splice_response_min = self.splice_min_bytes if splice_responses else 0
        self.draining = False  # set on shutdown: responses carry connection: close
        self.connections: set[Connection] = set()
        self._next_id = 0
        store = stats if stats is not None else StatsStore()
        self.http_stats = store.http_for(hcm.stat_prefix)
        # the http filters before the router; None when there are none (the stream's hooks
        # then cost one attribute test each)
        self.filters = build_chain(
            hcm.http_filters, self.route_table, store, hcm.stat_prefix, RuntimeOf(self), workers
        )
        # one attribute for the data path to test: anything to do before the router?
        self.before_routing = self.path_normalizer is not None or self.filters is not None
        self.listener_stats = store.listener_for(str(listener.address), hcm.stat_prefix)
        # connection limits (connection_limit filter, overload manager): None when neither
        # applies, then accepting a connection tests one attribute
        glob = global_connections if global_connections and global_connections.limit else None
        limit = listener.connection_limit
        self.admission = (
            Admission(loop, glob, limit, store, runtime, workers)
            if glob is not None or limit is not None
            else None
        )
        # per-request counting can be switched off to measure what it costs
        self.request_stats = request_stats
        # observe at the end of the loop iteration (needs call_soon); what the batch saves is the
        # access log's formatting, so without one it would only add bookkeeping
        self.batched = batched and bool(self.access_loggers)
        self._finished: list[StreamInfo] = []
        # writes but the first of a loop iteration wait for its end (write_batch.py); the server
        # batches, tests on fake loops (no call_soon) write at once
        self.write_batch = WriteBatch(loop) if batched else None

    def drain(self) -> None:
        """Stop keeping connections alive: idle ones close now (those that got a response in the
        last second, once quiet for a second: a request may be on its way), busy ones after
        their response (which carries ``connection: close``)."""
        self.draining = True
        for conn in list(self.connections):
            conn.close_when_quiet()

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

    def observe(self, s: StreamInfo) -> None:
        """The end of a request: observers read what it left behind and never fail it.

        Batched (the server), the requests finished in one loop iteration are counted and
        logged together at its end (``call_soon``): measured under load, doing this work in one
        pass costs about half as much as doing it request by request, as the code and data it
        touches stay in the CPU's caches. Nothing waits for it.
        """
        self.http_stats.downstream_rq_active -= 1
        if not self.batched:
            self._observe((s,))
            return
        queue = self._finished
        queue.append(s)
        if len(queue) == 1:
            self.loop.call_soon(self.flush)
        elif len(queue) >= _MAX_FINISHED:
            self.flush()

    def flush(self) -> None:
        """Count and log the finished requests not yet observed (also at shutdown)."""
        queue = self._finished
        if queue:
            self._finished = []
            self._observe(queue)

    def _observe(self, finished: Sequence[StreamInfo]) -> None:
        if self.request_stats:
            count = self._count
            try:
                for s in finished:
                    count(s)
            except Exception:  # a stats bug must not break the data path
                log.exception("request stats failed")
        for logger in self.access_loggers:
            try:
                logger.log_batch(finished)
            except Exception:  # an access log bug must not break the data path
                log.exception("access log failed")

    def _count(self, s: StreamInfo) -> None:
        # One ledger entry per (host, status, ms bucket): every per-request counter is derived
        # from it at scrape time (stats.store.ListenerStats.entries).
        code = s.response_code
        end = s.end_mono or s.start_mono
        ms = (end - s.start_mono) * 1000.0
        host = s.host
        key = (None if host is None else host.ledger_key, code, bisect_left(BOUNDS, ms))
        entries = self.listener_stats.entries
        entry = entries.get(key)
        if entry is None:
            entries[key] = [1, ms]
        else:
            entry[0] += 1
            entry[1] += ms
        flags = s.response_flags
        if flags:
            hs = self.http_stats
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
            if host is not None:
                cs = host.cluster.stats
                if flags & ResponseFlag.UT:
                    if s.response_code_details != "upstream_per_try_timeout":
                        cs.upstream_rq_timeout += 1  # the route's timeout (Envoy's meaning)
                    host.rq_timeout += 1
                if flags & ResponseFlag.UC:
                    cs.upstream_rq_rx_reset += 1
                if flags & (ResponseFlag.DC | ResponseFlag.UPE):
                    cs.upstream_rq_tx_reset += 1
        elif code == 403 and s.response_code_details == "upgrade_failed":
            self.http_stats.downstream_rq_ws_on_non_ws_route += 1
