"""A cluster (Envoy's name for a set of upstream hosts), its hosts and its load balancer.

Each ``Host`` owns a connection pool (``upstream.pool``) and opens the connections it needs.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import Coroutine, Sequence
from typing import Any

from udsproxy.config import schema
from udsproxy.config.schema import SocketAddress as Sa
from udsproxy.dns import Resolver
from udsproxy.lb import schedule
from udsproxy.stats.store import ClusterStats, SslStats
from udsproxy.upstream.connection import UpstreamConnection
from udsproxy.upstream.pool import ConnPool
from udsproxy.upstream_tls import ClusterTls, TlsConnectError

__all__ = ["Cluster", "Host", "connect_failure_reason"]

_NO_TLS: dict[str, object] = {}  # create_connection's TLS arguments for a plain-text cluster


def connect_failure_reason(exc: BaseException) -> str:
    """%UPSTREAM_TRANSPORT_FAILURE_REASON% for a failed connect, as Envoy words it."""
    if isinstance(exc, TlsConnectError):
        return exc.reason
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"immediate connect error: {os.strerror(exc.errno)}"
    return "connection timeout"


class Host:
    """One endpoint of a cluster with its pool of idle keep-alive connections."""

    # Per-host counts for the admin's /clusters (Envoy's host stats), plain ints; rq_success and
    # rq_error come from the stats ledger (by ``ledger_key``).
    STATS = ("cx_total", "cx_active", "cx_connect_fail", "rq_total", "rq_timeout")
    __slots__ = (
        "_auto_host", "address", "cluster", "endpoint", "hostname", "ledger_key", "loop",
        "pool", "retired", "text", *STATS,
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
        self.pool = ConnPool(
            cluster.loop,
            self.connect,
            cluster.spawn,
            cluster.stats,
            idle_timeout=cluster.idle_timeout,
        )
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
        self.pool.drain()

    def stats(self, results: Sequence[int] = (0, 0)) -> dict[str, int]:
        """/clusters' numbers for this host; ``results`` is its [rq_success, rq_error] from the
        stats ledger; rq_active is its busy connections."""
        out = {name: getattr(self, name) for name in self.STATS}
        out["rq_success"], out["rq_error"] = results
        out["rq_active"] = max(self.cx_active - len(self.pool.idle), 0)
        return out

    def auto_host(self) -> bytes | None:
        """The Host that auto_host_rewrite sends to this endpoint: its host name, which only
        endpoints given by name have (DNS clusters); None leaves the Host as it is (Envoy)."""
        return self._auto_host

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
        self.pool.close_idle()


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
        "_tasks",
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
        self._tasks: set[asyncio.Task[None]] = set()
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

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a connect attempt; the set keeps a strong reference until it is done."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        for host in self.hosts:
            host.pool.draining = True
        self.close()

    def close(self) -> None:
        if self.resolver is not None:
            self.resolver.close()  # no lookup or timer outlives the cluster
        for host in self.hosts:
            host.close_idle()
