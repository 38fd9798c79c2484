"""Active health checks: Envoy's HTTP health checker (``health_checks[0].http_health_check``).

One session per host (Envoy's ActiveHealthCheckSession), on a connection of its own, not the
pool's: Envoy's health checks open theirs, reused from one check to the next when
``reuse_connection`` (the default). The session drives that ``UpstreamConnection`` and its
``ResponseDecoder`` with no stream at all: it is their callbacks, as the router's
``UpstreamRequest`` is for a request. Check connections report to an owner of their own, so no
check counts in the cluster's ``upstream_cx_*``/``upstream_rq_*`` or the host's numbers (as in
Envoy, whose ``no_traffic_interval`` depends on that).

Envoy's state machine (``handle_success``/``handle_failure``):

* a host starts with FAILED_ACTIVE_HC (and PENDING_ACTIVE_HC with
  ``common_lb_config.ignore_new_hosts_until_first_hc``); its first check decides at once;
* then ``healthy_threshold`` passes in a row make it healthy; a response outside
  ``expected_statuses`` (and ``retriable_statuses``) makes it unhealthy at once, while network
  failures (connect failure, reset, timeout) and retriable statuses need ``unhealthy_threshold``
  in a row;
* the next check waits ``interval`` (or ``no_traffic_interval`` until the cluster has opened a
  connection for traffic, or an edge/unhealthy interval), plus jitter.

Workers: each worker process checks on its own at 1/N of the rate (every interval x N, the
workers' checks staggered by one interval), so N workers together send what one Envoy sends;
each worker routes by what its own checks saw.

Every timer belongs to a session and ``HealthChecker.close()`` (the cluster's close or drain)
cancels them all, with any connection or connect in progress.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine, Iterable
from typing import Any, Protocol

from udsproxy.codec.response import ResponseDecoder
from udsproxy.config import schema
from udsproxy.headermatch import StringMatch
from udsproxy.stats.store import ClusterStats, HealthCheckStats
from udsproxy.upstream.connection import HostLike, UpstreamConnection
from udsproxy.upstream.health import ACTIVE_HC_TIMEOUT, FAILED_ACTIVE_HC, PENDING_ACTIVE_HC
from udsproxy.upstream.pool import ConnPool

__all__ = ["CHANGED", "CHANGE_PENDING", "UNCHANGED", "HealthChecker", "request_head"]

log = logging.getLogger("udsproxy.health_check")

# Envoy's HealthTransition: what a check did to its host's health
UNCHANGED, CHANGED, CHANGE_PENDING = 0, 1, 2
USER_AGENT = "Envoy/HC"  # Envoy's user-agent for health checks
VERIFY_HEADER = b"x-envoy-upstream-healthchecked-cluster"


class CheckedHost(Protocol):
    """What a session uses of ``upstream.cluster.Host``."""

    health_flags: int

    @property
    def endpoint(self) -> schema.Endpoint | None: ...

    @property
    def text(self) -> str: ...

    def connect(self, owner: HostLike | None = None) -> Coroutine[Any, Any, UpstreamConnection]: ...


class CheckedCluster(Protocol):
    """What the checker uses of ``upstream.cluster.Cluster``."""

    @property
    def name(self) -> str: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def stats(self) -> ClusterStats: ...

    @property
    def buffer_limit(self) -> int: ...

    def health_changed(self) -> None: ...


class _Scratch:
    """The cluster a check connection reports to: its counts go nowhere."""

    __slots__ = ("buffer_limit", "max_requests_per_connection", "stats")

    def __init__(self, buffer_limit: int) -> None:
        self.stats = ClusterStats()
        self.buffer_limit = buffer_limit
        self.max_requests_per_connection = 0


async def _no_connect() -> Any:
    raise RuntimeError("health check connections are not pooled")


def _no_spawn(coro: Coroutine[Any, Any, None]) -> None:
    coro.close()


class _Owner:
    """The HostLike of check connections (``UpstreamConnection`` counts there): not the host,
    whose numbers, like the cluster's, are its traffic's."""

    __slots__ = ("cluster", "cx_active", "cx_total", "pool", "rq_total")

    def __init__(self, loop: asyncio.AbstractEventLoop, buffer_limit: int) -> None:
        self.cx_total = self.cx_active = self.rq_total = 0
        self.cluster = _Scratch(buffer_limit)
        self.pool = ConnPool(loop, _no_connect, _no_spawn, self.cluster.stats)


def request_head(config: schema.HealthCheck, host: str) -> bytes:
    """The check's request, built once per host: Envoy's method, path, Host and user-agent, then
    request_headers_to_remove and request_headers_to_add (literal values)."""
    headers = [("host", host), ("user-agent", USER_AGENT)]
    removed = set(config.request_headers_to_remove)
    headers = [h for h in headers if h[0] not in removed]
    for option in config.request_headers_to_add:
        if not option.value and not option.keep_empty_value:
            continue
        present = any(name == option.key for name, _ in headers)
        action = option.append_action
        if action == "ADD_IF_ABSENT" and present:
            continue
        if action == "OVERWRITE_IF_EXISTS" and not present:
            continue
        if action != "APPEND_IF_EXISTS_OR_ADD":
            headers = [h for h in headers if h[0] != option.key]
        headers.append((option.key, option.value))
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return f"{config.method} {config.path} HTTP/1.1\r\n{lines}\r\n".encode("latin-1")


class HealthChecker:
    """A cluster's health checks: one session per checked host."""

    __slots__ = (
        "_first",
        "_traffic",
        "cluster",
        "config",
        "expected",
        "initial_flags",
        "loop",
        "owner",
        "retriable",
        "rng",
        "sessions",
        "started",
        "stats",
        "verify",
        "worker",
        "workers",
    )

    def __init__(
        self,
        cluster: CheckedCluster,
        config: schema.HealthCheck,
        *,
        worker: int = 0,
        workers: int = 1,
        pending_first: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        self.cluster = cluster
        self.config = config
        self.loop = cluster.loop
        stats = cluster.stats.health_check
        if stats is None:
            stats = cluster.stats.health_check = HealthCheckStats()
        self.stats = stats
        self.worker = worker
        self.workers = max(workers, 1)
        self.rng = rng if rng is not None else random.Random()
        self.owner = _Owner(cluster.loop, cluster.buffer_limit)
        self.expected = config.expected_statuses
        self.retriable = config.retriable_statuses
        matcher = config.service_name_matcher
        self.verify = StringMatch(matcher) if matcher is not None else None
        # Envoy: a host is unhealthy until its first check passes; with
        # ignore_new_hosts_until_first_hc it is also out of the load balancer until then.
        self.initial_flags = FAILED_ACTIVE_HC | (PENDING_ACTIVE_HC if pending_first else 0)
        self.sessions: dict[CheckedHost, _Session] = {}
        self.started = False
        self._traffic = False
        self._first = asyncio.Event()  # every host has had its first check
        self._first.set()

    # -- hosts --------------------------------------------------------------------------------
    def sync(self, hosts: Iterable[CheckedHost]) -> None:
        """The cluster's hosts now: a new host starts failed and is checked, a host that left
        stops being checked. The caller rebuilds its load balancer afterwards."""
        wanted = set()
        for host in hosts:
            endpoint = host.endpoint
            if endpoint is not None and endpoint.disable_active_health_check:
                continue
            wanted.add(host)
            if host not in self.sessions:
                host.health_flags |= self.initial_flags
                session = self.sessions[host] = _Session(self, host)
                self._first.clear()
                if self.started:
                    session.start()
        for host in [h for h in self.sessions if h not in wanted]:
            self.sessions.pop(host).close()
        self._first_done()
        self._count_healthy()

    def start(self) -> None:
        """Start checking (no timer runs before: a cluster built and dropped checks nothing)."""
        if not self.started:
            self.started = True
            for session in self.sessions.values():
                session.start()

    def close(self) -> None:
        """Stop every check: timers, connects and connections (the cluster closes or drains)."""
        self.started = False
        for session in self.sessions.values():
            session.close()
        self._first.set()

    async def warm(self, timeout: float) -> bool:
        """Wait for every host's first check (Envoy warms a health-checked cluster so), at most
        ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._first.wait(), timeout)
        except TimeoutError:
            return False
        return True

    @property
    def warm_timeout(self) -> float:
        """How long a first round can take: the initial jitter, then one check's timeout."""
        return self.config.initial_jitter + self.config.timeout + 1.0

    def _first_done(self) -> None:
        if all(not s.first_check for s in self.sessions.values()):
            self._first.set()

    def _count_healthy(self) -> None:
        self.stats.healthy = sum(
            1 for host in self.sessions if not host.health_flags & FAILED_ACTIVE_HC
        )

    # -- a check's result ------------------------------------------------------------------------
    def classify(self, status: int, headers: list[tuple[bytes, bytes]]) -> tuple[bool, bool]:
        """(passed, retriable) for a response, as Envoy's HTTP health checker decides."""
        if not any(start <= status < end for start, end in self.expected):
            return False, any(start <= status < end for start, end in self.retriable)
        verify = self.verify
        if verify is not None:
            self.stats.verify_cluster += 1
            value = next((v for n, v in headers if n == VERIFY_HEADER), b"")
            return verify.match(value), False
        return True, False

    def had_traffic(self) -> bool:
        """Whether the cluster has opened a connection for traffic (Envoy: upstream_cx_total
        used); latched, so a reset of the counters does not bring no_traffic_interval back."""
        if not self._traffic and self.cluster.stats.upstream_cx_total:
            self._traffic = True
        return self._traffic

    def interval(self, healthy: bool, transition: int, factor: int) -> float:
        """Seconds to the next check after one that ``healthy`` passed (or not) with
        ``transition``; Envoy's choice of interval and its jitter, in whole milliseconds, the
        interval times ``factor`` (the workers' share)."""
        c = self.config
        pending = transition == CHANGE_PENDING
        if self.had_traffic():
            if healthy:
                base = c.healthy_edge_interval if pending else c.interval
            else:
                base = c.unhealthy_edge_interval if pending else c.unhealthy_interval
        else:
            quiet = healthy and not pending
            base = c.no_traffic_healthy_interval if quiet else c.no_traffic_interval
        ms = round((base or c.interval) * 1000) * factor
        spread = c.interval_jitter_percent * ms // 100
        if spread > 0:
            ms += self.rng.randrange(spread)
        jitter = round(c.interval_jitter * 1000)
        if jitter > 0:
            ms += self.rng.randrange(jitter)
        return max(ms, 1) / 1000

    def initial_delay(self) -> float:
        jitter = round(self.config.initial_jitter * 1000)
        return self.rng.randrange(jitter) / 1000 if jitter > 0 else 0.0

    def factor(self, checks: int) -> int:
        """The workers' share of the interval: after its first check (all workers check at
        once, to warm) worker i waits i + 1 intervals, then N, so the workers take turns."""
        return self.worker + 1 if checks == 1 else self.workers

    def transitioned(self, host: CheckedHost, failed_before: bool, changed: bool) -> None:
        self._first_done()
        if changed:
            failed = bool(host.health_flags & FAILED_ACTIVE_HC)
            if failed != failed_before:
                state = "unhealthy" if failed else "healthy"
                log.info("cluster '%s': host %s %s", self.cluster.name, host.text, state)
            self._count_healthy()
            self.cluster.health_changed()


class _Session:
    """One host's checks: the state machine, the timers, and the callbacks of its connection
    (``ConnectionCallbacks``) and of the connection's response codec (``ClientCallbacks``)."""

    __slots__ = (
        "checker",
        "checks",
        "closed",
        "conn",
        "connecting",
        "first_check",
        "head",
        "head_request",
        "host",
        "in_flight",
        "num_healthy",
        "num_unhealthy",
        "timeout_timer",
        "timer",
    )

    def __init__(self, checker: HealthChecker, host: CheckedHost) -> None:
        self.checker = checker
        self.host = host
        config = checker.config
        endpoint = host.endpoint
        # Envoy's Host: the endpoint's health_check_config.hostname, the check's host, the
        # cluster's name
        name = (endpoint.health_check_hostname if endpoint is not None else "") or config.host
        self.head = [request_head(config, name or checker.cluster.name)]
        self.head_request = config.method == "HEAD"
        self.conn: UpstreamConnection | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timeout_timer: asyncio.TimerHandle | None = None
        self.first_check = True
        self.num_healthy = 0
        self.num_unhealthy = 0
        self.checks = 0  # results so far
        self.in_flight = False
        self.closed = False

    def start(self) -> None:
        self.closed = False
        delay = self.checker.initial_delay()
        self.timer = self.checker.loop.call_later(delay, self.on_interval)

    def close(self) -> None:
        self.closed = True
        self.in_flight = False
        for timer in (self.timer, self.timeout_timer):
            if timer is not None:
                timer.cancel()
        self.timer = self.timeout_timer = None
        self._drop_connection()

    def _drop_connection(self) -> None:
        """Cancel a connect under way and abort the connection, if any."""
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.abort()

    # -- a check --------------------------------------------------------------------------------
    def on_interval(self) -> None:
        self.timer = None
        checker = self.checker
        checker.stats.attempt += 1
        self.in_flight = True
        self.timeout_timer = checker.loop.call_later(checker.config.timeout, self.on_timeout)
        conn = self.conn
        if conn is not None and conn.is_open():
            self._send(conn)
            return
        self.conn = None
        self.connecting = checker.loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            conn = await self.host.connect(self.checker.owner)
        except Exception:  # refused, no such socket, TLS: a network failure
            self.connecting = None
            if self.in_flight:
                self.handle_failure(network=True)
            return
        self.connecting = None
        if not self.in_flight or not conn.is_open():
            conn.abort()  # timed out or closed meanwhile, or closed by the upstream at once
            if self.in_flight:
                self.handle_failure(network=True)
            return
        self.conn = conn
        self._send(conn)

    def _send(self, conn: UpstreamConnection) -> None:
        conn.codec.begin(self, self.head_request, False)
        conn.send(self, self.head)

    def on_timeout(self) -> None:
        self.timeout_timer = None
        self._drop_connection()  # Envoy aborts the connection of a check that timed out
        self.handle_failure(network=True, timeout=True)

    # -- the connection's callbacks ------------------------------------------------------------
    def on_upstream_data(self, data: bytes) -> None:
        conn = self.conn
        assert conn is not None
        conn.codec.feed(data)

    def on_upstream_lost(self) -> None:
        self.conn = None
        if self.in_flight:
            self.handle_failure(network=True)  # closed or reset before a whole response

    def on_upstream_write_paused(self) -> None:
        pass  # a one-line request

    def on_upstream_write_resumed(self) -> None:
        pass

    # -- the response codec's callbacks ---------------------------------------------------------
    def on_response_interim(self, codec: ResponseDecoder) -> None:
        pass  # 1xx: the final response decides

    def on_response_headers(self, codec: ResponseDecoder) -> None:
        pass  # decided when complete (status and headers stay on the codec)

    def on_response_body(self, data: bytes | memoryview) -> None:
        pass  # the status decides; the body is read and dropped

    def on_response_complete(self) -> None:
        conn = self.conn
        assert conn is not None
        codec = conn.codec
        passed, retriable = self.checker.classify(codec.status, codec.headers)
        reuse = self.checker.config.reuse_connection and conn.reusable
        conn.done()
        if not reuse:
            self.conn = None
            conn.close()
        if passed:
            self.handle_success()
        else:
            self.handle_failure(retriable=retriable)

    def on_response_upgrade(self, rest: bytes) -> None:
        self.on_protocol_error()

    def on_protocol_error(self) -> None:
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.abort()
        if self.in_flight:
            self.handle_failure(network=True)  # Envoy: a stream reset

    # -- Envoy's state machine -------------------------------------------------------------------
    def handle_success(self) -> None:
        self.num_unhealthy = 0
        host = self.host
        before = flags = host.health_flags
        transition = UNCHANGED
        if flags & FAILED_ACTIVE_HC:
            # the first result decides at once (Envoy: faster start-up)
            if self.first_check:
                transition = CHANGED
            else:
                self.num_healthy += 1
                passed = self.num_healthy == self.checker.config.healthy_threshold
                transition = CHANGED if passed else CHANGE_PENDING
            if transition == CHANGED:
                flags &= ~(FAILED_ACTIVE_HC | ACTIVE_HC_TIMEOUT)
        if flags & PENDING_ACTIVE_HC:
            flags &= ~PENDING_ACTIVE_HC
            transition = CHANGED
        host.health_flags = flags
        monitor = getattr(host, "outlier", None)  # upstream.outlier.HostMonitor, if configured
        if monitor is not None and not flags & FAILED_ACTIVE_HC:
            monitor.detector.uneject_by_health_check(monitor)  # Envoy's default: back at once
        self.checker.stats.success += 1
        self._done(True, transition, before)

    def handle_failure(
        self, *, network: bool = False, retriable: bool = False, timeout: bool = False
    ) -> None:
        self.num_healthy = 0
        host = self.host
        before = flags = host.health_flags
        transition = UNCHANGED
        if not flags & FAILED_ACTIVE_HC:
            # a response outside expected_statuses fails the host at once; the network and
            # retriable_statuses need unhealthy_threshold failures in a row
            self.num_unhealthy += 1 if network or retriable else 0
            threshold = self.checker.config.unhealthy_threshold
            if not (network or retriable) or self.num_unhealthy == threshold:
                flags |= FAILED_ACTIVE_HC
                transition = CHANGED
            else:
                transition = CHANGE_PENDING
        if timeout and flags & FAILED_ACTIVE_HC:
            flags |= ACTIVE_HC_TIMEOUT
        else:
            flags &= ~ACTIVE_HC_TIMEOUT
        if flags & PENDING_ACTIVE_HC:
            flags &= ~PENDING_ACTIVE_HC
            transition = CHANGED
        host.health_flags = flags
        stats = self.checker.stats
        stats.failure += 1
        if network:
            stats.network_failure += 1
        self._done(False, transition, before)

    def _done(self, healthy: bool, transition: int, before: int) -> None:
        self.in_flight = False
        self.first_check = False
        self.checks += 1
        if self.timeout_timer is not None:
            self.timeout_timer.cancel()
            self.timeout_timer = None
        checker = self.checker
        host = self.host
        changed = host.health_flags != before
        checker.transitioned(host, bool(before & FAILED_ACTIVE_HC), changed)
        if not self.closed and self.timer is None:
            delay = checker.interval(healthy, transition, checker.factor(self.checks))
            self.timer = checker.loop.call_later(delay, self.on_interval)
