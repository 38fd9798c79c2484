"""Per-worker stats: plain integers in slotted objects, named the Envoy way only at scrape time.

The data path increments attributes (no locks, no metric objects, no formatting); a scrape
walks these objects and produces ``{dotted_name: value}`` plus histogram bucket counts, which
are summed across worker processes and rendered by ``udsproxy.stats.render``.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, Protocol

from udsproxy.stats import DEFAULT_BUCKETS

__all__ = [
    "BOUNDS", "ClusterStats", "FilterStats", "HealthCheckStats", "HostKey", "HttpStats",
    "ListenerStats", "MsHistogram", "OutlierStats", "Raw", "SslStats", "StatsStore", "Tally",
]  # fmt: skip

# (counters, gauges, histograms): histograms as name -> [sum, count, *bucket counts]
Raw = tuple[dict[str, int], dict[str, int], dict[str, list[float]]]

_BOUNDS = BOUNDS = DEFAULT_BUCKETS


# An upstream host in the ledger: its cluster's stats and its address text (never the Host object,
# which a reload replaces: the ledger must not keep it alive).
HostKey = tuple[Any, str]


class Tally:
    """What a set of ledger entries adds up to (scrape time only)."""

    __slots__ = ("classes", "codes", "counts", "routed", "sum")

    def __init__(self) -> None:
        self.classes = [0] * 6  # index: status // 100; 0 for no status (and nonsense ones)
        self.codes: dict[int, int] = {}
        self.counts = [0] * (len(_BOUNDS) + 1)
        self.routed = 0  # requests that had an upstream host
        self.sum = 0.0

    def add(self, code: int, bucket: int, n: int, ms: float) -> None:
        self.classes[code // 100 if code < 600 else 0] += n
        if code:
            self.codes[code] = self.codes.get(code, 0) + n
        self.counts[bucket] += n
        self.sum += ms

    @property
    def total(self) -> int:
        return sum(self.classes)

    def hist(self) -> list[float]:
        return [self.sum, float(sum(self.counts)), *map(float, self.counts)]


class MsHistogram:
    """A histogram in milliseconds over Envoy's buckets, recorded once per connection (when it
    is made or closed), never per request: keep-alive requests cost it nothing."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BOUNDS) + 1)  # per bucket; the last one: above every bound
        self.sum = 0.0

    def record(self, ms: float) -> None:
        self.counts[bisect_left(_BOUNDS, ms)] += 1
        self.sum += ms

    def values(self) -> list[float]:
        """[sum, count, *bucket counts]: a Raw histogram."""
        counts = self.counts
        return [self.sum, float(sum(counts)), *map(float, counts)]

    def reset(self) -> None:
        self.counts = [0] * (len(_BOUNDS) + 1)
        self.sum = 0.0


def _dump(obj: Any, prefix: str, counters: dict[str, int], gauges: dict[str, int]) -> None:
    for name in obj.COUNTERS:
        counters[prefix + name] = getattr(obj, name)
    for name in obj.GAUGES:
        gauges[prefix + name] = getattr(obj, name)


def _reset(obj: Any) -> None:
    for name in obj.COUNTERS:
        setattr(obj, name, 0)


_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def _counters(annotations: dict[str, Any], gauges: tuple[str, ...]) -> tuple[str, ...]:
    """A stats class's counters: its annotated names that are not gauges."""
    return tuple(n for n in annotations if n not in gauges)


_HTTP1_ROOT = (
    "http1_dropped_headers_with_underscores",
    "http1_requests_rejected_with_underscores_in_headers",
)


class HttpStats:
    """http.<stat_prefix>.* (the connection manager and its router)."""

    downstream_cx_total: int
    downstream_cx_http1_total: int
    downstream_cx_destroy: int
    downstream_cx_destroy_remote: int
    downstream_cx_destroy_local: int
    downstream_cx_destroy_active_rq: int
    downstream_cx_protocol_error: int
    downstream_cx_rx_bytes_total: int
    downstream_cx_tx_bytes_total: int
    downstream_cx_idle_timeout: int
    downstream_cx_drain_close: int
    downstream_cx_upgrades_total: int
    downstream_rq_rx_reset: int
    downstream_rq_tx_reset: int
    downstream_rq_too_large: int
    downstream_rq_ws_on_non_ws_route: int
    downstream_rq_idle_timeout: int
    downstream_rq_response_before_rq_complete: int
    downstream_rq_non_relative_path: int
    downstream_rq_timeout: int  # request_timeout
    downstream_rq_header_timeout: int  # request_headers_timeout
    downstream_cx_max_duration_reached: int  # max_connection_duration
    downstream_cx_max_requests_reached: int  # max_requests_per_connection
    downstream_cx_delayed_close_timeout: int  # delayed_close_timeout ran out
    downstream_rq_failed_path_normalization: int
    downstream_rq_redirected_with_normalized_path: int
    no_route: int
    no_cluster: int
    rq_direct_response: int
    # Envoy's HTTP/1 codec counts these at the root scope, as http1.<name>: see dump()
    http1_dropped_headers_with_underscores: int
    http1_requests_rejected_with_underscores_in_headers: int
    downstream_cx_active: int  # gauge
    downstream_cx_http1_active: int  # gauge
    downstream_cx_upgrades_active: int  # gauge
    downstream_rq_active: int  # gauge
    GAUGES = (
        "downstream_cx_active",
        "downstream_cx_http1_active",
        "downstream_cx_upgrades_active",
        "downstream_rq_active",
    )
    COUNTERS = _counters(__annotations__, GAUGES)
    __slots__ = (*COUNTERS, *GAUGES, "cx_length_ms")

    def __init__(self) -> None:
        for name in self.COUNTERS + self.GAUGES:
            setattr(self, name, 0)
        self.cx_length_ms = MsHistogram()  # downstream_cx_length_ms

    def dump(
        self,
        prefix: str,
        counters: dict[str, int],
        gauges: dict[str, int],
        hists: dict[str, list[float]],
        tally: Tally,
    ) -> None:
        _dump(self, prefix, counters, gauges)
        hists[prefix + "downstream_cx_length_ms"] = self.cx_length_ms.values()
        for name in _HTTP1_ROOT:
            counters.pop(prefix + name)
            root = "http1." + name[6:]
            counters[root] = counters.get(root, 0) + getattr(self, name)
        for i, cls in enumerate(_CLASSES, 1):
            counters[f"{prefix}downstream_rq_{cls}"] = tally.classes[i]
        total = tally.total
        counters[prefix + "downstream_rq_total"] = total
        counters[prefix + "downstream_rq_http1_total"] = total
        counters[prefix + "downstream_rq_completed"] = total
        counters[prefix + "rq_total"] = tally.routed  # the router's: requests sent upstream
        hists[prefix + "downstream_rq_time"] = tally.hist()

    def reset(self) -> None:
        _reset(self)
        self.cx_length_ms.reset()


class ListenerStats:
    """listener.<address>.* and the per-listener HTTP response classes."""

    downstream_cx_total: int
    downstream_cx_destroy: int
    # udsproxy's own: accept() refused for want of a descriptor (EMFILE/ENFILE); see server.py
    downstream_cx_fd_exhausted: int
    downstream_global_cx_overflow: int  # closed over the overload manager's global limit
    downstream_cx_active: int  # gauge
    GAUGES = ("downstream_cx_active",)
    COUNTERS = _counters(__annotations__, GAUGES)
    __slots__ = (*COUNTERS, *GAUGES, "cx_length_ms", "entries")

    def __init__(self) -> None:
        for name in self.COUNTERS + self.GAUGES:
            setattr(self, name, 0)
        self.cx_length_ms = MsHistogram()  # downstream_cx_length_ms
        # The ledger: every finished request of this listener, as one dict entry,
        # (upstream host key | None, status, ms bucket) -> [count, sum of ms]. All per-request
        # counters (classes, totals, codes, histograms, per-host results) are derived from it
        # at scrape time, so counting a request is one lookup and two adds.
        self.entries: dict[tuple[HostKey | None, int, int], list[float]] = {}

    def dump(
        self,
        prefix: str,
        http_prefix: str,
        counters: dict[str, int],
        gauges: dict[str, int],
        hists: dict[str, list[float]],
        tally: Tally,
    ) -> None:
        _dump(self, prefix, counters, gauges)
        hists[prefix + "downstream_cx_length_ms"] = self.cx_length_ms.values()
        for i, cls in enumerate(_CLASSES, 1):
            counters[f"{prefix}http.{http_prefix}.downstream_rq_{cls}"] = tally.classes[i]
        counters[f"{prefix}http.{http_prefix}.downstream_rq_completed"] = tally.total

    def reset(self) -> None:
        _reset(self)
        self.cx_length_ms.reset()
        self.entries = {}


class BreakerGauges(Protocol):
    def dump_gauges(self, prefix: str, gauges: dict[str, int]) -> None: ...


_BREAKER_OPEN = ("cx_open", "cx_pool_open", "rq_pending_open", "rq_open", "rq_retry_open")


def _closed_breakers(prefix: str, gauges: dict[str, int]) -> None:
    for name in _BREAKER_OPEN:
        gauges[prefix + name] = 0


class ClusterStats:
    """cluster.<name>.*"""

    upstream_cx_total: int
    upstream_cx_http1_total: int
    upstream_cx_connect_fail: int
    upstream_cx_connect_timeout: int
    upstream_cx_idle_timeout: int
    upstream_cx_destroy: int
    upstream_cx_destroy_local: int
    upstream_cx_destroy_remote: int
    upstream_cx_destroy_with_active_rq: int
    upstream_cx_rx_bytes_total: int
    upstream_cx_tx_bytes_total: int
    upstream_cx_protocol_error: int
    upstream_cx_max_requests: int
    upstream_cx_none_healthy: int
    lb_healthy_panic: int  # picks made in panic (healthy hosts below the panic threshold)
    upstream_rq_timeout: int
    upstream_rq_retry: int
    upstream_rq_retry_success: int
    upstream_rq_retry_overflow: int  # max_retries breaker
    upstream_rq_retry_limit_exceeded: int  # num_retries used up
    upstream_rq_retry_backoff_exponential: int
    upstream_rq_per_try_timeout: int
    retry_or_shadow_abandoned: int  # body over the buffer limit: no retry, no mirror
    upstream_rq_shadow_overflow: int  # udsproxy's: a mirror dropped, shadows in flight at the cap
    upstream_rq_rx_reset: int
    upstream_rq_tx_reset: int
    upstream_rq_cancelled: int
    upstream_rq_pending_total: int
    upstream_rq_pending_overflow: int
    upstream_cx_overflow: int
    update_attempt: int  # DNS clusters (udsproxy.dns): lookups started
    update_success: int
    update_failure: int
    update_no_rebuild: int  # a success that changed no host
    upstream_cx_active: int  # gauge
    upstream_rq_active: int  # gauge
    upstream_rq_pending_active: int  # gauge
    membership_total: int  # gauge
    membership_healthy: int  # gauge
    uds_socket_present: int  # gauge
    uds_fs_used_bytes: int  # gauge
    uds_fs_total_bytes: int  # gauge
    # Envoy's config-update gauges, on every cluster: version is the hash of its EDS version_info
    # (udsproxy has no EDS: always 0); warming_state is 1 while the cluster warms (its first DNS
    # answers and health checks), then 0
    version: int  # gauge
    warming_state: int  # gauge
    GAUGES = (
        "upstream_cx_active",
        "upstream_rq_active",
        "upstream_rq_pending_active",
        "membership_total",
        "membership_healthy",
        "uds_socket_present",
        "uds_fs_used_bytes",
        "uds_fs_total_bytes",
        "version",
        "warming_state",
    )
    COUNTERS = _counters(__annotations__, GAUGES)
    __slots__ = (
        *COUNTERS, *GAUGES, "breakers", "cx_connect_ms", "cx_length_ms", "health_check",
        "outlier", "shadow_entries", "ssl",
    )  # fmt: skip

    def __init__(self) -> None:
        for name in self.COUNTERS + self.GAUGES:
            setattr(self, name, 0)
        self.cx_connect_ms = MsHistogram()  # upstream_cx_connect_ms: connect start to made
        self.cx_length_ms = MsHistogram()  # upstream_cx_length_ms: made to closed
        self.ssl: SslStats | None = None  # cluster.<name>.ssl.*, once the cluster has TLS
        # circuit_breakers.default.* (upstream.resources.Resources), the current cluster's
        self.breakers: BreakerGauges | None = None
        # cluster.<name>.health_check.*, once the cluster has health checks
        self.health_check: HealthCheckStats | None = None
        # cluster.<name>.outlier_detection.*, once the cluster has outlier detection
        self.outlier: OutlierStats | None = None
        # The ledger of this cluster's shadow (mirrored) requests, which no listener counts:
        # (host address text | None, status, ms bucket) -> [count, sum of ms]
        self.shadow_entries: dict[tuple[str | None, int, int], list[float]] = {}

    def dump(
        self,
        prefix: str,
        counters: dict[str, int],
        gauges: dict[str, int],
        hists: dict[str, list[float]],
        tally: Tally,
    ) -> None:
        _dump(self, prefix, counters, gauges)
        if self.ssl is not None:
            _dump(self.ssl, prefix + "ssl.", counters, gauges)
        if self.health_check is not None:
            _dump(self.health_check, prefix + "health_check.", counters, gauges)
        if self.outlier is not None:
            _dump(self.outlier, prefix + "outlier_detection.", counters, gauges)
        breakers = prefix + "circuit_breakers."
        if self.breakers is not None:
            self.breakers.dump_gauges(breakers + "default.", gauges)
        else:
            _closed_breakers(breakers + "default.", gauges)
        _closed_breakers(breakers + "high.", gauges)  # no route asks for HIGH priority
        classes = [0] * 6
        for code, n in tally.codes.items():
            counters[f"{prefix}upstream_rq_{code}"] = n
            if 100 <= code < 600:
                classes[code // 100] += n
        for i, cls in enumerate(_CLASSES, 1):
            counters[f"{prefix}upstream_rq_{cls}"] = classes[i]
        total = tally.total  # with the requests that ended without any status (client left)
        counters[prefix + "upstream_rq_total"] = total
        counters[prefix + "upstream_rq_completed"] = total
        hists[prefix + "upstream_rq_time"] = tally.hist()
        hists[prefix + "upstream_cx_connect_ms"] = self.cx_connect_ms.values()
        hists[prefix + "upstream_cx_length_ms"] = self.cx_length_ms.values()

    def reset(self) -> None:
        _reset(self)
        self.cx_connect_ms.reset()
        self.cx_length_ms.reset()
        self.shadow_entries = {}
        if self.ssl is not None:
            _reset(self.ssl)
        if self.health_check is not None:
            _reset(self.health_check)
        if self.outlier is not None:
            _reset(self.outlier)


class SslStats:
    """cluster.<name>.ssl.*: the upstream TLS handshakes of a cluster (Envoy's names)."""

    handshake: int
    connection_error: int
    fail_verify_error: int
    fail_verify_san: int
    GAUGES = ()
    COUNTERS = _counters(__annotations__, GAUGES)
    __slots__ = COUNTERS

    def __init__(self) -> None:
        _reset(self)


class HealthCheckStats:
    """cluster.<name>.health_check.*: a cluster's active health checks (Envoy's names)."""

    attempt: int  # checks started
    success: int
    failure: int  # every failed check, network_failure and passive_failure included
    passive_failure: int  # udsproxy has no passive health events: always 0
    network_failure: int  # connect failure, reset, timeout
    verify_cluster: int  # checks that compared service_name_matcher
    healthy: int  # gauge: hosts passing (this worker's view)
    GAUGES = ("healthy",)
    COUNTERS = _counters(__annotations__, GAUGES)
    __slots__ = (*COUNTERS, *GAUGES)

    def __init__(self) -> None:
        for name in self.COUNTERS + self.GAUGES:
            setattr(self, name, 0)


class OutlierStats:
    """cluster.<name>.outlier_detection.*: a cluster's outlier detection (Envoy's names), for
    the consecutive-failure detectors udsproxy runs."""

    ejections_enforced_total: int
    ejections_overflow: int  # not ejected: max_ejection_percent reached
    ejections_enforced_consecutive_5xx: int
    ejections_detected_consecutive_5xx: int
    ejections_enforced_consecutive_gateway_failure: int
    ejections_detected_consecutive_gateway_failure: int
    ejections_enforced_consecutive_local_origin_failure: int
    ejections_detected_consecutive_local_origin_failure: int
    ejections_total: int  # deprecated in Envoy: consecutive 5xx ejections, even not enforced
    ejections_consecutive_5xx: int  # deprecated in Envoy: consecutive 5xx detections
    ejections_active: int  # gauge
    GAUGES = ("ejections_active",)
    COUNTERS = _counters(__annotations__, GAUGES)
    __slots__ = (*COUNTERS, *GAUGES)

    def __init__(self) -> None:
        for name in self.COUNTERS + self.GAUGES:
            setattr(self, name, 0)


class FilterStats:
    """An HTTP filter's stats under one prefix (``http.<stat_prefix>.fault.``...): plain dicts
    the filter increments by name, only on the requests it acts on."""

    __slots__ = ("counters", "gauges")

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}
        self.gauges: dict[str, int] = {}

    def counter_set(self, *names: str) -> dict[str, int]:
        for name in names:
            self.counters.setdefault(name, 0)
        return self.counters

    def gauge_set(self, *names: str) -> dict[str, int]:
        for name in names:
            self.gauges.setdefault(name, 0)
        return self.gauges


class StatsStore:
    """All stats of one worker, keyed the way Envoy names them, surviving reloads."""

    def __init__(self) -> None:
        self.http: dict[str, HttpStats] = {}
        self.listeners: dict[str, tuple[ListenerStats, str]] = {}
        self.clusters: dict[str, ClusterStats] = {}
        self.filters: dict[str, FilterStats] = {}  # full prefix -> stats

    def filter_stats(self, prefix: str) -> FilterStats:
        """The stats of an HTTP filter rooted at ``prefix`` (with its trailing dot)."""
        stats = self.filters.get(prefix)
        if stats is None:
            stats = self.filters[prefix] = FilterStats()
        return stats

    def http_for(self, stat_prefix: str) -> HttpStats:
        stats = self.http.get(stat_prefix)
        if stats is None:
            stats = self.http[stat_prefix] = HttpStats()
        return stats

    def listener_for(self, address: str, stat_prefix: str) -> ListenerStats:
        # Envoy's listener stat name is its address with ':' as '_' ("0.0.0.0_10000")
        key = address.replace(":", "_")
        entry = self.listeners.get(key)
        if entry is None:
            entry = self.listeners[key] = (ListenerStats(), stat_prefix)
        return entry[0]

    def cluster_for(self, name: str) -> ClusterStats:
        stats = self.clusters.get(name)
        if stats is None:
            stats = self.clusters[name] = ClusterStats()
        return stats

    def raw(self) -> Raw:
        counters: dict[str, int] = {}
        gauges: dict[str, int] = {}
        hists: dict[str, list[float]] = {}
        http = {prefix: Tally() for prefix in self.http}
        clusters: dict[int, Tally] = {}  # id(ClusterStats) -> its requests
        for key, (ls, http_prefix) in self.listeners.items():
            mine = Tally()
            into = http.setdefault(http_prefix, Tally())
            for (host, code, bucket), (n, ms) in ls.entries.items():
                count = int(n)
                mine.add(code, bucket, count, ms)
                into.add(code, bucket, count, ms)
                if host is not None:
                    into.routed += count
                    clusters.setdefault(id(host[0]), Tally()).add(code, bucket, count, ms)
            ls.dump(f"listener.{key}.", http_prefix, counters, gauges, hists, mine)
        for prefix, hs in self.http.items():
            hs.dump(f"http.{prefix}.", counters, gauges, hists, http[prefix])
        for name, cs in self.clusters.items():
            tally = clusters.get(id(cs)) or Tally()
            for (_host, code, bucket), (n, ms) in cs.shadow_entries.items():
                tally.add(code, bucket, int(n), ms)
            cs.dump(f"cluster.{name}.", counters, gauges, hists, tally)
        for prefix, fs in self.filters.items():
            for name, value in fs.counters.items():
                counters[prefix + name] = value
            for name, value in fs.gauges.items():
                gauges[prefix + name] = value
        return counters, gauges, hists

    def host_results(self) -> dict[HostKey, list[int]]:
        """(cluster stats, host) -> [rq_success, rq_error]: Envoy's per-host non-5xx / 5xx (a
        request that ended without a status is an error), for the admin's /clusters."""
        out: dict[HostKey, list[int]] = {}
        for ls, _prefix in self.listeners.values():
            for (host, code, _bucket), (n, _ms) in ls.entries.items():
                if host is not None:
                    results = out.setdefault(host, [0, 0])
                    results[0 if 0 < code < 500 else 1] += int(n)
        for cs in self.clusters.values():
            for (text, code, _bucket), (n, _ms) in cs.shadow_entries.items():
                if text is not None:
                    results = out.setdefault((cs, text), [0, 0])
                    results[0 if 0 < code < 500 else 1] += int(n)
        return out

    def reset(self) -> None:
        """/reset_counters: counters and histograms to zero; gauges keep their value."""
        for hs in self.http.values():
            hs.reset()
        for ls, _prefix in self.listeners.values():
            ls.reset()
        for cs in self.clusters.values():
            cs.reset()
        for fs in self.filters.values():
            for name in fs.counters:
                fs.counters[name] = 0
