"""envoy.filters.http.csrf: a mutating request (POST, PUT, DELETE, PATCH) must come from its own
origin: the host:port of ``origin`` (or, without one, of ``referer``) equals the request's
authority, or matches one of ``additional_origins``. Otherwise 403 "Invalid origin"
(%RESPONSE_CODE_DETAILS% ``csrf_origin_mismatch``), unless the policy is only in shadow mode.
Stats: ``http.<stat_prefix>.csrf.missing_source_origin``, ``request_invalid``, ``request_valid``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from udsproxy import http1
from udsproxy.filters.base import (
    Fraction,
    HttpFilter,
    LocalAnswer,
    Node,
    Outcome,
    Reporter,
    Runtime,
    header_value,
    parse_fraction,
)
from udsproxy.filters.matchers import StringMatch, StringMatcher, parse_string_match

if TYPE_CHECKING:
    from udsproxy.router import CompiledRoute
    from udsproxy.stats.store import FilterStats
    from udsproxy.stream import Stream

__all__ = ["CsrfFilter", "CsrfPolicy", "host_and_port", "parse_csrf"]

FILTER_TYPE = "envoy.extensions.filters.http.csrf.v3.CsrfPolicy"
_INVALID = http1.LocalReply(403, "Invalid origin", 0, "csrf_origin_mismatch")
_MUTATING = frozenset({b"POST", b"PUT", b"DELETE", b"PATCH"})


@dataclass(frozen=True, slots=True, kw_only=True)
class CsrfPolicy:
    filter_enabled: Fraction
    shadow_enabled: Fraction | None = None
    additional_origins: tuple[StringMatch, ...] = ()


def parse_csrf(conv: Reporter, node: Node, path: str) -> CsrfPolicy:
    conv.only(node, path, ("filter_enabled", "shadow_enabled", "additional_origins"))
    if "filter_enabled" not in node:
        conv.error(f"{path}.filter_enabled", "is required")
    origins_path = f"{path}.additional_origins"
    origins = [
        parse_string_match(conv, x, f"{origins_path}[{i}]")
        for i, x in enumerate(node.get("additional_origins", ()))
    ]
    shadow = node.get("shadow_enabled")
    return CsrfPolicy(
        filter_enabled=parse_fraction(
            conv, node.get("filter_enabled"), f"{path}.filter_enabled", 0, runtime=True
        ),
        shadow_enabled=None
        if shadow is None
        else parse_fraction(conv, shadow, f"{path}.shadow_enabled", 0, runtime=True),
        additional_origins=tuple(x for x in origins if x is not None),
    )


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
        self.origins = tuple(StringMatcher(m) for m in config.additional_origins)


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

    def decode_headers(self, s: Stream, route: CompiledRoute | None) -> Outcome:
        policy: _Policy = self.policy
        if route is not None:
            policy = route.filter_configs.get(self.name, policy)
        config = policy.config
        enabled = config.filter_enabled.sample(self.runtime)
        shadow = config.shadow_enabled is not None and config.shadow_enabled.sample(self.runtime)
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
