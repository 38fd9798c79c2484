"""Request mirroring (Envoy's shadow writer): a copy of a complete request sent to another
cluster, fire and forget.

When a request whose route has ``request_mirror_policies`` is complete (the router calls
``shadow``), each policy is sampled (``runtime_fraction``) and a ``ShadowRequest`` sends the
request's head, with its Host suffixed ``-shadow``, and its held body to a host of the policy's
cluster. A shadow is a stream-less upstream request: the pool's waiter, the connection's and the
response codec's callbacks, as ``UpstreamRequest`` is, but what it learns goes nowhere: its
response is read to its end and dropped, its failures are counted on the shadow cluster and
never reach the request it copies. No access log sees it (Envoy logs it in none of the
listener's logs either).

Bounds, per worker process: at most ``MAX_IN_FLIGHT`` shadows and ``MAX_IN_FLIGHT_BYTES`` of
their bodies at once; a mirror beyond either is dropped and counted as the shadow cluster's
``upstream_rq_shadow_overflow`` (udsproxy's stat; Envoy has no such bound). Each shadow ends at
the route's timeout (Envoy gives a shadow the route's global timeout) if nothing ends it first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from typing import TYPE_CHECKING

from udsproxy.codec.encode import request_head
from udsproxy.config.filter_schema import Fraction
from udsproxy.filters.base import sample
from udsproxy.runtime import Runtime
from udsproxy.stats import DEFAULT_BUCKETS
from udsproxy.upstream.cluster import connect_failure_reason
from udsproxy.upstream.pool import PoolOverflow

if TYPE_CHECKING:
    from udsproxy.codec.response import ResponseDecoder
    from udsproxy.http.active_stream import ActiveStream
    from udsproxy.router.routes import CompiledRoute
    from udsproxy.upstream.cluster import Host
    from udsproxy.upstream.connection import UpstreamConnection

__all__ = [
    "MAX_IN_FLIGHT", "MAX_IN_FLIGHT_BYTES", "ShadowRequest", "in_flight", "shadow", "shadow_host",
]  # fmt: skip

log = logging.getLogger("udsproxy.shadow")

MAX_IN_FLIGHT = 1024  # shadows at once, per worker
MAX_IN_FLIGHT_BYTES = 64 * 1024 * 1024  # their request bodies at once, per worker

_SUFFIX = b"-shadow"
_INTERNAL = b"x-envoy-internal"
_INTERNAL_HEADER = (_INTERNAL, b"true")
_CONNECT = b"CONNECT"


class _Budget:
    """What the shadows of this process hold (a forked worker starts from its own copy)."""

    __slots__ = ("bytes", "count")

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0


_BUDGET = _Budget()


def in_flight() -> tuple[int, int]:
    """(shadows, body bytes) in flight in this process."""
    return _BUDGET.count, _BUDGET.bytes


def shadow_host(host: bytes) -> bytes:
    """The Host a shadow carries: ``-shadow`` before the port, as Envoy's shadowAppendedHost
    (``a.com`` -> ``a.com-shadow``, ``a.com:80`` -> ``a.com-shadow:80``,
    ``[::1]:80`` -> ``[::1]-shadow:80``)."""
    colon = host.rfind(b":")
    if colon < 0 or host.rfind(b"]") > colon:
        return host + _SUFFIX
    return host[:colon] + _SUFFIX + host[colon:]


def _sampled(fraction: Fraction, runtime: Runtime | None) -> bool:
    if fraction.numerator >= fraction.denominator and not fraction.runtime_key:
        return True  # the default, 100%: no draw
    return sample(fraction, _NO_KEYS if runtime is None else runtime)


_NO_KEYS = Runtime()  # for a listener built without the server's runtime (unit tests)


def shadow(s: ActiveStream, route: CompiledRoute) -> None:
    """The request ``s`` is complete and still going upstream: mirror it by each of the route's
    policies that samples it. Never raises into the request it copies."""
    try:
        _shadow(s, route)
    except Exception:  # a mirroring bug must not fail the primary request
        log.exception("request mirroring failed")


def _shadow(s: ActiveStream, route: CompiledRoute) -> None:
    policies = route.mirror_policies
    if policies is None or s.upgrade is not None or s.method == _CONNECT:
        return  # Envoy mirrors neither upgrades nor CONNECT
    ctx = s.ctx
    runtime = ctx.runtime
    head_parts: tuple[list[tuple[bytes, bytes]], list[bytes], int, int] | None = None
    for policy in policies:
        if not _sampled(policy.fraction, runtime):
            continue
        if head_parts is None:
            if not s.retain_body or s.req_coder is not None or s.body_size > ctx.buffer_limit:
                # the body went upstream without being kept (over the buffer limit): no
                # mirror, counted once on the route's cluster as Envoy does (the stream
                # counted it already if the request could be retried)
                if s.host is not None and s.retry_state is None:
                    s.host.cluster.stats.retry_or_shadow_abandoned += 1
                return
            headers = [h for h in s.headers if h[0] != _INTERNAL]
            headers.append(_INTERNAL_HEADER)  # as Envoy's async client marks its requests
            length = s.body_size if (s.req_chunked or s.req_cl >= 0) else -1
            head_parts = (headers, list(s.body), s.body_size, length)
        cluster = ctx.clusters.get(policy.cluster)
        if cluster is None:
            continue  # gone since the route was compiled (a CDS removal): Envoy skips it too
        headers, body, size, length = head_parts
        cs = cluster.stats
        if _BUDGET.count >= MAX_IN_FLIGHT or _BUDGET.bytes + size > MAX_IN_FLIGHT_BYTES:
            cs.upstream_rq_shadow_overflow += 1
            continue
        host = cluster.pick()
        if host is None:
            cs.upstream_cx_none_healthy += 1
            _record(cs.shadow_entries, None, 503, 0.0)
            continue
        authority = policy.host_literal or s.authority or ctx.default_host
        if policy.suffix:
            authority = shadow_host(authority)
        head = request_head(
            s.method,
            s.path,
            authority,
            headers,
            route.expected_timeout_header,
            False,
            length,
            None,
        )
        ShadowRequest(host, [head, *body], size, s.is_head).start(ctx.loop, route.timeout)


def _record(
    entries: dict[tuple[str | None, int, int], list[float]], host: str | None, code: int, ms: float
) -> None:
    key = (host, code, bisect_left(DEFAULT_BUCKETS, ms))
    entry = entries.get(key)
    if entry is None:
        entries[key] = [1, ms]
    else:
        entry[0] += 1
        entry[1] += ms


class ShadowRequest:
    """One mirrored request: from the pool's connection to the end of its (dropped) response."""

    __slots__ = (
        "conn",
        "data",
        "done",
        "host",
        "is_head",
        "size",
        "start_mono",
        "timer",
        "waiting",
    )

    def __init__(self, host: Host, data: list[bytes], size: int, is_head: bool) -> None:
        self.host = host
        self.data: list[bytes] | None = data  # the head and the body, until sent
        self.size = size
        self.is_head = is_head
        self.conn: UpstreamConnection | None = None
        self.waiting = False
        self.done = False
        self.timer: asyncio.TimerHandle | None = None
        self.start_mono = 0.0

    def start(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        budget = _BUDGET
        budget.count += 1
        budget.bytes += self.size
        self.start_mono = time.monotonic()
        if timeout > 0:
            self.timer = loop.call_at(loop.time() + timeout, self._on_timeout)
        self.waiting = True
        self.waiting = self.host.pool.new_stream(self) is not None

    def _finish(self, code: int) -> None:
        """The one end of every shadow: the budget back, the timer off, the ledger entry."""
        if self.done:
            return
        self.done = True
        self.data = None
        timer = self.timer
        if timer is not None:
            self.timer = None
            timer.cancel()
        budget = _BUDGET
        budget.count -= 1
        budget.bytes -= self.size
        ms = (time.monotonic() - self.start_mono) * 1000.0
        _record(self.host.cluster.stats.shadow_entries, self.host.text, code, ms)

    # -- the pool's waiter -------------------------------------------------------------------------
    def on_pool_ready(self, conn: UpstreamConnection) -> None:
        self.waiting = False
        data = self.data
        if self.done or data is None:  # cannot happen (a finished shadow left the queue)
            self.host.pool.release(conn)
            return
        self.data = None
        self.conn = conn
        conn.codec.begin(self, self.is_head, False)
        conn.send(self, data)

    def on_pool_failure(self, exc: BaseException) -> None:
        self.waiting = False
        if not isinstance(exc, PoolOverflow):  # a breaker's overflow is the pool's own count
            host = self.host
            cs = host.cluster.stats
            host.cx_connect_fail += 1
            cs.upstream_cx_connect_fail += 1
            if connect_failure_reason(exc) == "connection timeout":
                cs.upstream_cx_connect_timeout += 1
        self._finish(503)

    # -- the connection's callbacks ----------------------------------------------------------------
    def on_upstream_data(self, data: bytes) -> None:
        conn = self.conn
        if conn is not None:
            conn.codec.feed(data)

    def on_upstream_lost(self) -> None:
        conn = self.conn
        self.conn = None
        if conn is None or self.done:
            return
        codec = conn.codec
        if codec.close_delimited:
            self._finish(codec.status)  # its body ended with the connection
            return
        self.host.cluster.stats.upstream_rq_rx_reset += 1
        self._finish(503)

    def on_upstream_write_paused(self) -> None:
        pass  # the whole request is written at once: nothing more to hold back

    def on_upstream_write_resumed(self) -> None:
        pass

    # -- the response codec's callbacks --------------------------------------------------------
    def on_response_interim(self, codec: ResponseDecoder) -> None:
        pass

    def on_response_headers(self, codec: ResponseDecoder) -> None:
        pass

    def on_response_body(self, data: bytes | memoryview) -> None:
        pass  # read and dropped

    def on_response_complete(self) -> None:
        conn = self.conn
        if conn is None:
            return
        self.conn = None
        host = self.host
        conn.done()
        max_rq = host.cluster.max_requests_per_connection
        if max_rq and conn.requests >= max_rq:
            host.cluster.stats.upstream_cx_max_requests += 1
        host.pool.release(conn)  # the whole request was sent: the connection is in sync
        self._finish(conn.codec.status)

    def on_response_upgrade(self, rest: bytes) -> None:
        self.on_protocol_error()  # no shadow asks for an upgrade

    def on_protocol_error(self) -> None:
        conn = self.conn
        if conn is None:
            return
        self.conn = None
        conn.stats.upstream_cx_protocol_error += 1
        conn.abort()
        self._finish(503)

    # -- the route's timeout -------------------------------------------------------------------
    def _on_timeout(self) -> None:
        self.timer = None
        if self.done:
            return
        host = self.host
        host.cluster.stats.upstream_rq_timeout += 1
        host.rq_timeout += 1
        if self.waiting:
            self.waiting = False
            host.pool.cancel(self)
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.abort()  # mid-request: never reusable
        self._finish(504)
