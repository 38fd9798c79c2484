"""envoy.filters.http.csrf: a mutating request (POST, PUT, DELETE, PATCH) must come from its own
origin: the host:port of ``origin`` (or, without one, of ``referer``) equals the request's
authority, or matches one of ``additional_origins``. Otherwise 403 "Invalid origin"
(%RESPONSE_CODE_DETAILS% ``csrf_origin_mismatch``), unless the policy is only in shadow mode.
Stats: ``http.<stat_prefix>.csrf.missing_source_origin``, ``request_invalid``, ``request_valid``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from udsproxy.codec import http1
from udsproxy.config.filter_schema import CsrfPolicy
from udsproxy.filters.base import HttpFilter, LocalAnswer, Outcome, Runtime, header_value, sample
from udsproxy.headermatch import StringMatch

if TYPE_CHECKING:
    from udsproxy.filters.base import FilterCallbacks
    from udsproxy.router.routes import CompiledRoute
    from udsproxy.stats.store import FilterStats

__all__ = ["CsrfFilter", "host_and_port"]

_INVALID = http1.LocalReply(403, "Invalid origin", 0, "csrf_origin_mismatch")
_MUTATING = frozenset({b"POST", b"PUT", b"DELETE", b"PATCH"})


def host_and_port(value: bytes) -> bytes:
    """The host[:port] of an absolute URL (an origin or a referer), else the value itself."""
    scheme, sep, rest = value.partition(b"://")
    if not sep or not scheme:
        return value
    return rest.split(b"/", 1)[0].split(b"?", 1)[0]


class _Policy:
    __slots__ = ("config", "origins")

    def __init__(self, config: CsrfPolicy) -> None:
        self.config = config
        self.origins = tuple(StringMatch(m) for m in config.additional_origins)


class CsrfFilter(HttpFilter):
    def __init__(self, name: str, config: CsrfPolicy, runtime: Runtime, stats: FilterStats):
        self.name = name
        self.policy = _Policy(config)
        self.runtime = runtime
        self.counters = stats.counter_set(
            "missing_source_origin", "request_invalid", "request_valid"
        )

    def compile_route(self, configs: tuple[Any, ...]) -> _Policy:
        return _Policy(configs[0])

    def decode_headers(self, s: FilterCallbacks, route: CompiledRoute | None) -> Outcome:
        policy: _Policy = self.policy
        if route is not None:
            policy = route.filter_configs.get(self.name, policy)
        config = policy.config
        enabled = sample(config.filter_enabled, self.runtime)
        shadow = config.shadow_enabled is not None and sample(config.shadow_enabled, self.runtime)
        if (not enabled and not shadow) or s.method not in _MUTATING:
            return None
        origin = header_value(s, b"origin")
        source = host_and_port(origin) if origin else b""
        if not source:
            referer = header_value(s, b"referer")
            source = host_and_port(referer) if referer else b""
        if not source:
            self.counters["missing_source_origin"] += 1
            valid = False
        elif source == host_and_port(s.authority) or any(m.match(source) for m in policy.origins):
            self.counters["request_valid"] += 1
            valid = True
        else:
            self.counters["request_invalid"] += 1
            valid = False
        if valid or not enabled:
            return None  # valid, or shadow mode: counted only
        return LocalAnswer(_INVALID)
