"""Per-listener state compiled once from config and shared by all its connections."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from udsproxy import splice
from udsproxy.config import schema
from udsproxy.router import Router
from udsproxy.stream import Stream
from udsproxy.streaminfo import Peer, StreamInfo

if TYPE_CHECKING:
    from udsproxy.downstream import DownstreamConnection
    from udsproxy.upstream import Cluster

__all__ = ["AccessLogger", "ListenerContext"]

log = logging.getLogger("udsproxy.context")


class AccessLogger(Protocol):
    def log(self, info: StreamInfo) -> None: ...


class ListenerContext:
    """What every connection of one listener needs, precomputed."""

    def __init__(
        self,
        listener: schema.Listener,
        clusters: Mapping[str, Cluster],
        access_loggers: Sequence[AccessLogger],
        loop: asyncio.AbstractEventLoop,
        splice_min_bytes: int = 0,
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
        self.splice_min_bytes = splice_min_bytes if splice.AVAILABLE else 0
        self.draining = False  # set on shutdown: responses carry connection: close
        self.connections: set[DownstreamConnection] = set()
        self._next_id = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # A few plain counters; the stats issue turns these into Envoy's stat tree.
        self.stats_rq_total = 0
        self.stats_idle_timeout = 0
        self.stats_connect_fail = 0
        self.stats_timeout = 0

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

    def next_connection_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def new_stream(self, conn: DownstreamConnection) -> Stream:
        self.stats_rq_total += 1
        return Stream(self, conn)

    def observe(self, info: StreamInfo) -> None:
        """The end of a request: observers read what it left behind and never fail it."""
        for logger in self.access_loggers:
            try:
                logger.log(info)
            except Exception:  # an access log bug must not break the data path
                log.exception("access log failed")
