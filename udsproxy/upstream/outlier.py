"""Outlier detection (Envoy's passive health checking): the consecutive-failure detectors.

Each host of a cluster with ``outlier_detection`` has a ``HostMonitor`` (``Host.outlier``; None
without it, so an unconfigured cluster pays one None check per try). A finished try leaves its
result there, as Envoy's router does:

- a response's status: ``put_http_response_code(code)``;
- a connect failure: ``put_result(LOCAL_ORIGIN_CONNECT_FAILED)``; a reset after the connection
  was made: ``put_result(LOCAL_ORIGIN_CONNECT_SUCCESS)`` then ``put_result(
  LOCAL_ORIGIN_CONNECT_FAILED)`` (``put_reset()`` does both, as Envoy's pool-ready then
  reset); a timeout waiting for the response: ``put_result(LOCAL_ORIGIN_TIMEOUT, 504)``.

Without ``split_external_local_origin_errors``, a local-origin failure counts as its HTTP code
(a connect failure or reset as 503, a timeout as 504) toward ``consecutive_5xx`` and
``consecutive_gateway_failure`` (502, 503, 504). With it, local-origin failures count toward
``consecutive_local_origin_failure`` only, and any connection made resets that count.

The ``Detector`` (one per cluster) ejects: it sets FAILED_OUTLIER_CHECK and calls the cluster's
``health_changed()``. A host stays out for ``base_ejection_time`` times its ejection back-off
(one more per ejection, one less per ``interval`` spent healthy; capped by
``max_ejection_time``), plus jitter; a sweep every ``interval`` brings it back. The sweep's timer
runs only while a host is ejected or its back-off is above zero, and stops with the cluster.

State is per worker process, as Envoy's is per process.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from typing import Protocol

from udsproxy.config.schema import OutlierDetection
from udsproxy.stats.store import OutlierStats
from udsproxy.upstream.health import FAILED_OUTLIER_CHECK

__all__ = [
    "CONSECUTIVE_5XX",
    "CONSECUTIVE_GATEWAY_FAILURE",
    "CONSECUTIVE_LOCAL_ORIGIN_FAILURE",
    "EXT_ORIGIN_REQUEST_FAILED",
    "EXT_ORIGIN_REQUEST_SUCCESS",
    "LOCAL_ORIGIN_CONNECT_FAILED",
    "LOCAL_ORIGIN_CONNECT_SUCCESS",
    "LOCAL_ORIGIN_CONNECT_SUCCESS_FINAL",
    "LOCAL_ORIGIN_TIMEOUT",
    "Detector",
    "HostMonitor",
]

# Envoy's Upstream::Outlier::Result
LOCAL_ORIGIN_TIMEOUT = 0
LOCAL_ORIGIN_CONNECT_FAILED = 1
LOCAL_ORIGIN_CONNECT_SUCCESS = 2
LOCAL_ORIGIN_CONNECT_SUCCESS_FINAL = 3
EXT_ORIGIN_REQUEST_FAILED = 4
EXT_ORIGIN_REQUEST_SUCCESS = 5

# Envoy's OutlierEjectionType (the consecutive ones)
CONSECUTIVE_5XX = "consecutive_5xx"
CONSECUTIVE_GATEWAY_FAILURE = "consecutive_gateway_failure"
CONSECUTIVE_LOCAL_ORIGIN_FAILURE = "consecutive_local_origin_failure"

# A result's HTTP code where local and external failures are not split (Envoy's
# resultToHttpCode); None: not counted (a connection made says nothing about the response).
_RESULT_CODE: dict[int, int | None] = {
    LOCAL_ORIGIN_TIMEOUT: 504,
    LOCAL_ORIGIN_CONNECT_FAILED: 503,
    LOCAL_ORIGIN_CONNECT_SUCCESS: None,
    LOCAL_ORIGIN_CONNECT_SUCCESS_FINAL: 200,
    EXT_ORIGIN_REQUEST_FAILED: 500,
    EXT_ORIGIN_REQUEST_SUCCESS: 200,
}


class MonitoredHost(Protocol):
    """What the detector changes on a host (``upstream.cluster.Host``)."""

    health_flags: int


class _Cluster(Protocol):
    def health_changed(self) -> None: ...


class HostMonitor:
    """One host's consecutive-failure counts (Envoy's DetectorHostMonitorImpl)."""

    __slots__ = (
        "backoff",
        "consecutive_5xx",
        "consecutive_gateway_failure",
        "consecutive_local_origin_failure",
        "detector",
        "ejected_at",
        "host",
        "jitter",
        "num_ejections",
        "unejected_at",
    )

    def __init__(self, detector: Detector, host: MonitoredHost) -> None:
        self.detector = detector
        self.host = host
        self.consecutive_5xx = 0
        self.consecutive_gateway_failure = 0
        self.consecutive_local_origin_failure = 0
        self.num_ejections = 0
        self.backoff = 0  # base_ejection_time multiples of the next ejection (Envoy's)
        self.ejected_at = 0.0
        self.unejected_at: float | None = None
        self.jitter = 0.0

    # -- what a try leaves behind ------------------------------------------------------------
    def put_http_response_code(self, code: int) -> None:
        """A response's status (Envoy's putHttpResponseCode)."""
        if code < 500:
            self.consecutive_5xx = 0
            self.consecutive_gateway_failure = 0
            if self.detector.split:
                self.consecutive_local_origin_failure = 0  # it answered: the connection worked
            return
        self._count_5xx(code)

    def _count_5xx(self, code: int) -> None:
        detector = self.detector
        config = detector.config
        if 502 <= code <= 504:
            self.consecutive_gateway_failure += 1
            if self.consecutive_gateway_failure == config.consecutive_gateway_failure:
                detector.on_consecutive(self, CONSECUTIVE_GATEWAY_FAILURE)
        else:
            self.consecutive_gateway_failure = 0
        self.consecutive_5xx += 1
        if self.consecutive_5xx == config.consecutive_5xx:
            detector.on_consecutive(self, CONSECUTIVE_5XX)

    def put_result(self, result: int, code: int | None = None) -> None:
        """A try's result other than a response (Envoy's putResult); ``code``: the HTTP code
        it stands for (a timeout's 504), where it counts as one."""
        if not self.detector.split:
            if code is None:
                code = _RESULT_CODE[result]
            if code is not None:
                self.put_http_response_code(code)
            return
        if result in (LOCAL_ORIGIN_CONNECT_SUCCESS, LOCAL_ORIGIN_CONNECT_SUCCESS_FINAL):
            self.consecutive_local_origin_failure = 0
        elif result in (LOCAL_ORIGIN_TIMEOUT, LOCAL_ORIGIN_CONNECT_FAILED):
            self.consecutive_local_origin_failure += 1
            limit = self.detector.config.consecutive_local_origin_failure
            if self.consecutive_local_origin_failure == limit:
                self.detector.on_consecutive(self, CONSECUTIVE_LOCAL_ORIGIN_FAILURE)
        elif result == EXT_ORIGIN_REQUEST_FAILED:
            self.put_http_response_code(503)
        else:
            self.put_http_response_code(200)

    def put_connect_failure(self) -> None:
        """The try got no connection (refused, absent socket, connect timeout)."""
        self.put_result(LOCAL_ORIGIN_CONNECT_FAILED)

    def put_reset(self) -> None:
        """The try's connection closed or broke before a whole response head: Envoy reports the
        pool's connection (made) and then the reset."""
        self.put_result(LOCAL_ORIGIN_CONNECT_SUCCESS)
        self.put_result(LOCAL_ORIGIN_CONNECT_FAILED)

    def put_timeout(self, connected: bool) -> None:
        """The try timed out waiting for its response (per-try or route timeout)."""
        if connected:
            self.put_result(LOCAL_ORIGIN_CONNECT_SUCCESS)
        self.put_result(LOCAL_ORIGIN_TIMEOUT, 504)

    def reset_counts(self) -> None:
        self.consecutive_5xx = 0
        self.consecutive_gateway_failure = 0
        self.consecutive_local_origin_failure = 0

    @property
    def ejected(self) -> bool:
        return bool(self.host.health_flags & FAILED_OUTLIER_CHECK)


class Detector:
    """A cluster's outlier detection (Envoy's DetectorImpl), for the hosts it is given."""

    __slots__ = (
        "_clock",
        "_random",
        "_timer",
        "closed",
        "cluster",
        "config",
        "loop",
        "monitors",
        "split",
        "stats",
    )

    def __init__(
        self,
        config: OutlierDetection,
        cluster: _Cluster,
        loop: asyncio.AbstractEventLoop | None,
        stats: OutlierStats,
        clock: Callable[[], float] | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.cluster = cluster
        self.loop = loop  # None: no timer (tests call sweep() themselves)
        self.stats = stats
        self.split = config.split_external_local_origin_errors
        self.monitors: list[HostMonitor] = []
        self._clock = clock if clock is not None else (loop.time if loop else _zero)
        self._random = rand
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False

    def monitor(self, host: MonitoredHost) -> HostMonitor:
        return HostMonitor(self, host)

    def hosts_changed(self, monitors: Sequence[HostMonitor]) -> None:
        """The cluster's host set changed (DNS): these are the monitors of its hosts now."""
        self.monitors = list(monitors)
        self.stats.ejections_active = sum(1 for m in self.monitors if m.ejected)

    # -- ejection ------------------------------------------------------------------------------
    def on_consecutive(self, monitor: HostMonitor, kind: str) -> None:
        """A monitor's count reached its threshold (Envoy's onConsecutiveErrorWorker)."""
        if self.closed or monitor.ejected or monitor not in self.monitors:
            return
        stats = self.stats
        name = f"ejections_detected_{kind}"
        setattr(stats, name, getattr(stats, name) + 1)
        self._eject(monitor, kind)
        if kind == CONSECUTIVE_5XX:
            stats.ejections_consecutive_5xx += 1  # deprecated
            monitor.consecutive_5xx = 0
        elif kind == CONSECUTIVE_GATEWAY_FAILURE:
            monitor.consecutive_gateway_failure = 0
        else:
            monitor.consecutive_local_origin_failure = 0

    def _enforcing(self, kind: str) -> int:
        config = self.config
        if kind == CONSECUTIVE_5XX:
            return config.enforcing_consecutive_5xx
        if kind == CONSECUTIVE_GATEWAY_FAILURE:
            return config.enforcing_consecutive_gateway_failure
        return config.enforcing_consecutive_local_origin_failure

    def _eject(self, monitor: HostMonitor, kind: str) -> None:
        """Envoy's ejectHost: within max_ejection_percent (counting this ejection; one host
        always, with always_eject_one_host), and as often as enforcing_* says."""
        stats = self.stats
        config = self.config
        active = stats.ejections_active
        percent = 100.0 * (active + 1) / max(len(self.monitors), 1)
        allowed = percent <= min(config.max_ejection_percent, 100) or (
            config.always_eject_one_host and active == 0
        )
        if not allowed:
            stats.ejections_overflow += 1
            return
        if kind == CONSECUTIVE_5XX:
            stats.ejections_total += 1  # deprecated: even when not enforced
        enforcing = self._enforcing(kind)
        if enforcing <= 0 or (enforcing < 100 and self._random() * 100 >= enforcing):
            return
        stats.ejections_active = active + 1
        stats.ejections_enforced_total += 1
        name = f"ejections_enforced_{kind}"
        setattr(stats, name, getattr(stats, name) + 1)
        now = self._clock()
        monitor.num_ejections += 1
        monitor.ejected_at = now
        base = config.base_ejection_time
        if monitor.backoff * base < config.max_ejection_time + base:
            monitor.backoff += 1
        jitter = config.max_ejection_time_jitter
        monitor.jitter = self._random() * jitter if jitter > 0 else 0.0
        monitor.host.health_flags |= FAILED_OUTLIER_CHECK
        self.cluster.health_changed()
        self._arm()

    def ejection_time(self, monitor: HostMonitor) -> float:
        """How long this ejection lasts."""
        config = self.config
        return (
            min(config.base_ejection_time * monitor.backoff, config.max_ejection_time)
            + monitor.jitter
        )

    # -- the interval sweep --------------------------------------------------------------------
    def _arm(self) -> None:
        if self._timer is None and self.loop is not None and not self.closed:
            self._timer = self.loop.call_later(self.config.interval, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.sweep():
            self._arm()

    def sweep(self) -> bool:
        """Envoy's interval: bring back the hosts whose ejection is over, and lower the
        back-off of those healthy for an interval. True while there is more to do."""
        now = self._clock()
        interval = self.config.interval
        changed = False
        pending = False
        for monitor in self.monitors:
            if not monitor.ejected:
                since = monitor.unejected_at
                if monitor.backoff and since is not None and now - since >= interval:
                    monitor.backoff -= 1
                pending = pending or monitor.backoff > 0
                continue
            if monitor.ejected_at + self.ejection_time(monitor) <= now:
                self.stats.ejections_active -= 1
                monitor.host.health_flags &= ~FAILED_OUTLIER_CHECK
                monitor.reset_counts()
                monitor.unejected_at = now
                changed = True
            pending = True
        if changed:
            self.cluster.health_changed()
        return pending

    def uneject_by_health_check(self, monitor: HostMonitor) -> None:
        """An active health check passed: with successful_active_health_check_uneject_host
        (Envoy's default), an ejected host comes back at once."""
        if (
            self.config.successful_active_health_check_uneject_host
            and monitor.ejected
            and not self.closed
        ):
            self.stats.ejections_active -= 1
            monitor.host.health_flags &= ~FAILED_OUTLIER_CHECK
            monitor.reset_counts()
            monitor.unejected_at = self._clock()
            self.cluster.health_changed()

    def close(self) -> None:
        """The cluster is gone (reload) or draining: no more ejections, no timer."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _zero() -> float:
    return 0.0
