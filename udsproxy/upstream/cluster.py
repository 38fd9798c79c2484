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
from udsproxy.lb import Balancer, LeastRequest, Random, RoundRobin, other, schedule
from udsproxy.stats.store import ClusterStats, OutlierStats, SslStats
from udsproxy.upstream.connection import HostLike, UpstreamConnection
from udsproxy.upstream.health import EXCLUDED, flags_to_stats, panic
from udsproxy.upstream.health_check import HealthChecker
from udsproxy.upstream.outlier import Detector, HostMonitor
from udsproxy.upstream.pool import ConnPool
from udsproxy.upstream.resources import Resources
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
        "_auto_host", "address", "cluster", "endpoint", "health_flags", "hostname", "ledger_key",
        "loop", "outlier", "pool", "retired", "text", *STATS,
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
        # upstream.health's flags (0: healthy); whoever changes them calls health_changed()
        self.health_flags = 0
        # outlier detection's view of this host (None: not configured); a try's end feeds it
        detector = cluster.outlier
        self.outlier: HostMonitor | None = detector.monitor(self) if detector else None
        self.pool = ConnPool(
            cluster.loop,
            self.connect,
            cluster.spawn,
            cluster.stats,
            idle_timeout=cluster.idle_timeout,
            resources=cluster.resources,
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

    def active_requests(self) -> int:
        """Requests on this host now (LEAST_REQUEST): busy connections (one request each, no
        pipelining) and requests waiting for one."""
        pool = self.pool
        return len(pool.busy) + len(pool.pending)

    def drain_existing(self) -> None:
        """Envoy's DrainExistingConnections, on a host going unhealthy: idle connections close,
        busy ones close once their request is done; new requests get new connections."""
        self.pool.close_idle()
        for conn in self.pool.busy:
            conn.draining = True

    def stats(self, results: Sequence[int] = (0, 0)) -> dict[str, int]:
        """/clusters' numbers for this host; ``results`` is its [rq_success, rq_error] from the
        stats ledger; rq_active is its busy connections."""
        out = {name: getattr(self, name) for name in self.STATS}
        out["rq_success"], out["rq_error"] = results
        out["rq_active"] = max(self.cx_active - len(self.pool.idle), 0)
        if self.health_flags:
            flags_to_stats(self.health_flags, out)
        return out

    def auto_host(self) -> bytes | None:
        """The Host that auto_host_rewrite sends to this endpoint: its host name, which only
        endpoints given by name have (DNS clusters); None leaves the Host as it is (Envoy)."""
        return self._auto_host

    async def connect(self, owner: HostLike | None = None) -> UpstreamConnection:
        """Open a new connection. UDS errors (ENOENT, ECONNREFUSED, EAGAIN) raise at once.
        ``owner``: where the connection counts, if not this host's pool (health checks)."""
        conn = UpstreamConnection(self if owner is None else owner)
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
        except asyncio.CancelledError:
            # cancelled (a health check's timeout, a cluster closing) after the connection
            # was made but before this resumed: nobody else will close it
            if conn.transport is not None:
                conn.abort()
            raise
        if tls is not None and not tls.verified(conn.transport):
            conn.abort()
            raise tls.san_failed()
        return conn

    def close_idle(self) -> None:
        self.pool.close_idle()


class Cluster:
    """A named set of hosts and its load balancer (lb_policy) over the healthy ones.

    STATIC: one host per endpoint. STRICT_DNS: one host per address each endpoint's name
    resolves to; the set follows every answer (a host that leaves closes its idle connections,
    its busy ones finish). LOGICAL_DNS: one host for the single endpoint, connecting to the first
    address of the latest answer; connections already open stay where they are. Until a name
    first resolves, its cluster has no host for it (503 UH, as Envoy).
    """

    __slots__ = (
        "_healthy",
        "_lb",
        "_panic",
        "_rr",
        "_schedule",
        "_targets",
        "_tasks",
        "buffer_limit",
        "checker",
        "config",
        "connect_timeout",
        "draining",
        "healthy_count",
        "hosts",
        "idle_timeout",
        "loop",
        "max_requests_per_connection",
        "name",
        "outlier",
        "resolver",
        "resources",
        "stats",
        "tls",
    )

    def __init__(
        self,
        config: schema.Cluster,
        loop: asyncio.AbstractEventLoop,
        stats: ClusterStats | None = None,
        workers: int = 1,
        *,
        worker: int = 0,
        publish: bool = True,
    ) -> None:
        self.config = config
        self.stats = stats if stats is not None else ClusterStats()  # kept across reloads
        # circuit breakers: the DEFAULT priority's thresholds (routes have no other), this
        # worker's share. A cluster without any has Envoy's defaults (1024 connections, pending
        # and active requests, 3 retries): slow clients cannot take every upstream connection.
        default = next(
            (t for t in config.circuit_breakers if t.priority == "DEFAULT"),
            schema.CircuitBreakerThresholds(),
        )
        self.resources: Resources | None = Resources.for_worker(default, workers)
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
        # Not plain round robin over every host (another lb_policy, or a host unhealthy, or
        # panic): pick() asks it. None keeps pick() the one index step above.
        self._lb: Balancer[Host] | None = None
        self._panic = False
        self._healthy: frozenset[Host] = frozenset()
        self.healthy_count = 0  # membership_healthy
        self.outlier: Detector | None = None  # outlier_detection (upstream.outlier)
        if config.outlier_detection is not None:
            # the counters carry over a reload (the stats object does); shown once published
            counters = self.stats.outlier or OutlierStats()
            self.outlier = Detector(config.outlier_detection, self, loop, counters)
        if publish:
            self.publish_stats()
        self._rr = 0
        self._targets: list[tuple[Host, ...]] = [() for _ in config.endpoints]  # per endpoint
        self.resolver: Resolver | None = None
        # active health checks (None: not configured); hosts join it in _rebuild
        self.checker: HealthChecker | None = None
        if config.health_check is not None:
            self.checker = HealthChecker(
                self,
                config.health_check,
                worker=worker,
                workers=workers,
                pending_first=config.ignore_new_hosts_until_first_hc,
            )
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

    def publish_stats(self) -> None:
        """Point the cluster's stats (shared across reloads) at this cluster's breakers and
        outlier counters: at construction, or by a reload once it has swapped this one in (a
        reload that fails must leave the running cluster's on show)."""
        self.stats.breakers = self.resources
        self.stats.outlier = self.outlier.stats if self.outlier is not None else None

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a connect attempt; the set keeps a strong reference until it is done."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def pick(self, avoid: Host | None = None) -> Host | None:
        """The host for a try; ``avoid`` (the host a retry's previous try failed on) is taken
        only when no other host can be picked. None: no host (503 UH)."""
        lb = self._lb
        if lb is not None:
            if self._panic:
                self.stats.lb_healthy_panic += 1
            return lb.pick(avoid)
        hosts = self._schedule
        if not hosts:
            return None
        i = self._rr
        self._rr = i + 1 if i + 1 < len(hosts) else 0
        host = hosts[i]
        if host is avoid:
            return other(self.hosts, host)
        return host

    def health_changed(self) -> None:
        """A host's health_flags changed: rebuild what the load balancer picks from."""
        self._rebuild_lb()

    # -- service discovery -------------------------------------------------------------------
    def start(self) -> None:
        """Start resolving (DNS clusters) and health checking (if configured)."""
        if self.resolver is not None:
            self.resolver.start()
        if self.checker is not None:
            self.checker.start()

    async def warm(self, timeout: float) -> bool:
        """Wait, at most ``timeout`` seconds, for the first answer for every name (whether it
        came); then, with health checks, for every host's first check (Envoy warms a cluster
        until then), which its own timeout bounds."""
        stats = self.stats
        stats.warming_state = 1  # Envoy's gauge: 1 from the cluster's addition to its warm end
        try:
            answered = self.resolver is None or await self.resolver.wait_initial(timeout)
            checker = self.checker
            if checker is not None:
                await checker.warm(checker.warm_timeout)
        finally:
            stats.warming_state = 0
        return answered

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
        if self.outlier is not None:
            self.outlier.hosts_changed([h.outlier for h in self.hosts if h.outlier is not None])
        if self.checker is not None:
            self.checker.sync(self.hosts)  # a new host starts unhealthy, until checked
        self._rebuild_lb()

    def _rebuild_lb(self) -> None:
        """The hosts to pick from: the healthy ones; all but the excluded in panic (fewer
        healthy than common_lb_config.healthy_panic_threshold), as Envoy's load balancers do.
        A host that went unhealthy has its connections drained, as Envoy's cluster manager
        does on a health failure."""
        config = self.config
        usable = [h for h in self.hosts if not h.health_flags & EXCLUDED]
        healthy = [h for h in usable if not h.health_flags]
        for host in self._healthy.difference(healthy):
            if host.health_flags:
                host.drain_existing()
        self._healthy = frozenset(healthy)
        self.healthy_count = len(healthy)
        self._panic = panic(len(healthy), len(usable), config.healthy_panic_threshold)
        chosen = usable if self._panic else healthy
        weighted = [(h, h.weight) for h in chosen]
        policy = config.lb_policy
        if policy == "LEAST_REQUEST":
            self._lb = LeastRequest(weighted, Host.active_requests, config.choice_count)
        elif policy == "RANDOM":
            self._lb = Random(weighted)
        elif self._panic:
            self._lb = RoundRobin(weighted)
        else:
            self._lb = None
        self._schedule = schedule(weighted) if self._lb is None else ()
        if self._rr >= len(self._schedule):
            self._rr = 0

    def drain(self) -> None:
        self.draining = True
        for host in self.hosts:
            host.pool.draining = True
        self.close()

    def close(self) -> None:
        if self.outlier is not None:
            self.outlier.close()  # its interval timer stops with the cluster
        if self.resolver is not None:
            self.resolver.close()  # no lookup or timer outlives the cluster
        if self.checker is not None:
            self.checker.close()  # nor a health check
        for host in self.hosts:
            host.close_idle()
