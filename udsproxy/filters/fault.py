"""envoy.filters.http.fault: inject delays (DI) and aborts (FI), from the config or from the
``x-envoy-fault-*`` request headers when ``header_delay``/``header_abort`` allow them.

Runtime keys (read through ``Runtime``, defaulting to the configured values):
``fault.http.abort.abort_percent``, ``fault.http.abort.http_status``,
``fault.http.delay.fixed_delay_percent``, ``fault.http.delay.fixed_duration_ms``,
``fault.http.max_active_faults``. Stats: ``http.<stat_prefix>.fault.delays_injected``,
``aborts_injected``, ``faults_overflow`` and the gauge ``active_faults``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from udsproxy.codec import http1
from udsproxy.config.filter_schema import FaultConfig, Fraction
from udsproxy.filters.base import (
    FilterState,
    Hold,
    HttpFilter,
    LocalAnswer,
    Outcome,
    Runtime,
    header_value,
    randrange,
    state_of,
)
from udsproxy.flags import ResponseFlag
from udsproxy.headermatch import HeaderMatch

if TYPE_CHECKING:
    from udsproxy.filters.base import FilterCallbacks
    from udsproxy.router.routes import CompiledRoute
    from udsproxy.stats.store import FilterStats

__all__ = ["FaultFilter"]

ABORT_BODY = "fault filter abort"
ABORT_DETAILS = "fault_filter_abort"

_ABORT_PERCENT = "fault.http.abort.abort_percent"
_ABORT_STATUS = "fault.http.abort.http_status"
_DELAY_PERCENT = "fault.http.delay.fixed_delay_percent"
_DELAY_MS = "fault.http.delay.fixed_duration_ms"
_MAX_ACTIVE = "fault.http.max_active_faults"


class _Fault:
    """One FaultConfig compiled (the filter's own, or a route's)."""

    __slots__ = ("abort_reply", "config", "headers")

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self.headers = tuple(HeaderMatch(m) for m in config.headers)
        status = config.abort_status
        self.abort_reply = abort_reply(status) if status is not None else None


_replies: dict[int, http1.LocalReply] = {}


def abort_reply(status: int) -> http1.LocalReply:
    """The local reply for an abort with ``status`` (a handful of statuses: cached)."""
    reply = _replies.get(status)
    if reply is None:
        reply = http1.LocalReply(status, ABORT_BODY, ResponseFlag.FI, ABORT_DETAILS)
        if len(_replies) < 400:
            _replies[status] = reply
    return reply


def _header_int(s: FilterCallbacks, name: bytes) -> int | None:
    value = header_value(s, name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _capped(s: FilterCallbacks, fraction: Fraction, header: bytes) -> Fraction:
    """A header-controlled percentage: the header's numerator, capped by the config's."""
    n = _header_int(s, header)
    if n is None or n < 0:
        return fraction
    return Fraction(numerator=min(n, fraction.numerator), denominator=fraction.denominator)


class FaultFilter(HttpFilter):
    def __init__(self, name: str, config: FaultConfig, runtime: Runtime, stats: FilterStats):
        self.name = name
        self.fault = _Fault(config)
        self.runtime = runtime
        self.counters = stats.counter_set("delays_injected", "aborts_injected", "faults_overflow")
        # this worker's active faults; in the stats so that a reloaded filter sees the same count
        self.gauges = stats.gauge_set("active_faults")

    def compile_route(self, configs: tuple[Any, ...]) -> _Fault:
        return _Fault(configs[0])  # the most specific HTTPFault replaces the filter's

    def decode_headers(self, s: FilterCallbacks, route: CompiledRoute | None) -> Outcome:
        fault: _Fault = self.fault
        if route is not None:
            fault = route.filter_configs.get(self.name, fault)
        config = fault.config
        if config.upstream_cluster and (route is None or route.cluster != config.upstream_cluster):
            return None
        if fault.headers and not all(m.match(s) for m in fault.headers):
            return None
        delay_ms = self._delay_ms(s, config)
        abort = self._abort(s, fault)
        if not delay_ms and abort is None:
            return None
        limit = config.max_active_faults
        if limit is not None:
            limit = self.runtime.integer(_MAX_ACTIVE, limit)
            if self.gauges["active_faults"] >= limit:
                self.counters["faults_overflow"] += 1
                return None
        self.gauges["active_faults"] += 1
        state = state_of(s)
        if state.releases is None:
            state.releases = []
        state.releases.append(self)
        if delay_ms:
            self.counters["delays_injected"] += 1
            s.response_flags |= ResponseFlag.DI
            state.pending = abort  # decided now, sent after the delay
            return Hold(delay_ms / 1000.0)
        return self._send_abort(abort)

    def resume(self, s: FilterCallbacks, state: FilterState) -> Outcome:
        abort = state.pending
        state.pending = None
        return self._send_abort(abort) if abort is not None else None

    def release(self, state: FilterState) -> None:
        self.gauges["active_faults"] -= 1

    def _send_abort(self, abort: http1.LocalReply | None) -> Outcome:
        if abort is None:
            return None
        self.counters["aborts_injected"] += 1
        return LocalAnswer(abort)

    def _delay_ms(self, s: FilterCallbacks, config: FaultConfig) -> int:
        fraction = config.delay_percentage
        if fraction is None:
            return 0
        if config.header_delay:
            ms = _header_int(s, b"x-envoy-fault-delay-request")
            if ms is None or ms <= 0:
                return 0
            fraction = _capped(s, fraction, b"x-envoy-fault-delay-request-percentage")
        else:
            ms = self.runtime.integer(_DELAY_MS, config.delay_ms or 0)
        n = self.runtime.integer(_DELAY_PERCENT, fraction.numerator)
        return ms if _draw(n, fraction.denominator) else 0

    def _abort(self, s: FilterCallbacks, fault: _Fault) -> http1.LocalReply | None:
        config = fault.config
        fraction = config.abort_percentage
        if fraction is None:
            return None
        if config.header_abort:
            status = _header_int(s, b"x-envoy-fault-abort-request")
            if status is None or not 200 <= status < 600:
                return None
            fraction = _capped(s, fraction, b"x-envoy-fault-abort-request-percentage")
            reply = abort_reply(self._runtime_status(status))
        else:
            assert config.abort_status is not None
            status = self._runtime_status(config.abort_status)
            configured = fault.abort_reply
            reply = (
                configured if configured and status == config.abort_status else abort_reply(status)
            )
        n = self.runtime.integer(_ABORT_PERCENT, fraction.numerator)
        return reply if _draw(n, fraction.denominator) else None

    def _runtime_status(self, default: int) -> int:
        """fault.http.abort.http_status overrides the status (Envoy's getInteger); a value that
        is no status ([200, 600), as the config and the header are checked) leaves ``default``:
        Envoy would send whatever the key holds, "HTTP/1.1 0" included."""
        status = self.runtime.integer(_ABORT_STATUS, default)
        return status if 200 <= status < 600 else default


def _draw(numerator: int, denominator: int) -> bool:
    if numerator <= 0:
        return False
    return numerator >= denominator or randrange(denominator) < numerator
