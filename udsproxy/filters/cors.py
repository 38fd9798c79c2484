"""envoy.filters.http.cors: CORS policies of the virtual host and route, answered at the edge.

The filter itself has no settings (``envoy.extensions.filters.http.cors.v3.Cors``); the policies
come from ``typed_per_filter_config`` (``CorsPolicy``) or the legacy ``cors`` field of a virtual
host. As in Envoy, each setting is taken from the most specific policy that sets it, and
``filter_enabled``/``shadow_enabled`` from the most specific policy. A preflight (OPTIONS with
``access-control-request-method``) from an allowed origin is answered here with 200
(%RESPONSE_CODE_DETAILS% ``cors_response``); other requests from an allowed origin get
``access-control-allow-origin`` (and credentials/expose headers) on their response.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from udsproxy.codec import http1
from udsproxy.config.filter_schema import CORS_LEGACY_KEY, CorsPolicy, Fraction
from udsproxy.filters.base import (
    Headers,
    HttpFilter,
    LocalAnswer,
    Outcome,
    Runtime,
    header_value,
    sample,
    state_of,
)
from udsproxy.headermatch import StringMatch

if TYPE_CHECKING:
    from udsproxy.filters.base import FilterCallbacks
    from udsproxy.router.routes import CompiledRoute
    from udsproxy.stats.store import FilterStats

__all__ = ["CorsFilter"]

_PREFLIGHT_OK = http1.LocalReply(200, "", 0, "cors_response")


class _Policy:
    """A CorsPolicy compiled."""

    __slots__ = ("config", "origins")

    def __init__(self, config: CorsPolicy) -> None:
        self.config = config
        self.origins = tuple(StringMatch(m) for m in config.allow_origin_string_match)


class _Policies:
    """A route's policies, most specific first, merged field by field as Envoy does."""

    __slots__ = (
        "allow_credentials", "enabled", "expose_headers", "origins", "preflight_headers",
        "private_network", "shadow",
    )  # fmt: skip

    def __init__(self, policies: tuple[_Policy, ...]) -> None:
        def first(attr: str) -> Any:
            for p in policies:
                value = getattr(p.config, attr)
                if value:
                    return value
            return None

        self.origins = next((p.origins for p in policies if p.origins), ())
        self.enabled: Fraction | None = policies[0].config.filter_enabled
        self.shadow: Fraction | None = policies[0].config.shadow_enabled
        self.allow_credentials = bool(
            next(
                (
                    p.config.allow_credentials
                    for p in policies
                    if p.config.allow_credentials is not None
                ),
                False,
            )
        )
        self.private_network = bool(first("allow_private_network_access"))
        headers: list[tuple[bytes, bytes]] = []
        if self.allow_credentials:
            headers.append((b"access-control-allow-credentials", b"true"))
        for attr, name in (
            ("allow_methods", b"access-control-allow-methods"),
            ("allow_headers", b"access-control-allow-headers"),
            ("max_age", b"access-control-max-age"),
        ):
            value = first(attr)
            if value:
                headers.append((name, value.encode()))
        self.preflight_headers = tuple(headers)
        expose = first("expose_headers")
        self.expose_headers = expose.encode() if expose else b""

    def origin_allowed(self, origin: bytes) -> bool:
        # Envoy also lets a matcher that matches "*" allow every origin.
        return any(m.match(origin) or m.match(b"*") for m in self.origins)


class _CorsResponse:
    """The response side of an accepted CORS request."""

    __slots__ = ("origin", "policies")
    on_local_reply = True  # Envoy's encodeHeaders adds them to local replies too

    def __init__(self, policies: _Policies, origin: bytes) -> None:
        self.policies = policies
        self.origin = origin

    def encode_headers(self, s: FilterCallbacks, code: int, headers: Headers, length: int) -> int:
        headers.append((b"access-control-allow-origin", self.origin))
        if self.policies.allow_credentials:
            headers.append((b"access-control-allow-credentials", b"true"))
        if self.policies.expose_headers:
            headers.append((b"access-control-expose-headers", self.policies.expose_headers))
        return length


class CorsFilter(HttpFilter):
    def __init__(self, name: str, runtime: Runtime, stats: FilterStats) -> None:
        self.name = name
        self.runtime = runtime
        self.counters = stats.counter_set("origin_valid", "origin_invalid")

    def pick(self, level: dict[str, Any]) -> Any:
        found = level.get(self.name)
        return found if found is not None else level.get(CORS_LEGACY_KEY)

    def compile_route(self, configs: tuple[Any, ...]) -> _Policies:
        return _Policies(tuple(_Policy(c) for c in configs))

    def decode_headers(self, s: FilterCallbacks, route: CompiledRoute | None) -> Outcome:
        if route is None:
            return None
        policies: _Policies | None = route.filter_configs.get(self.name)
        if policies is None:
            return None
        origin = header_value(s, b"origin")
        if not origin:
            return None
        runtime = self.runtime
        enabled = policies.enabled is None or sample(policies.enabled, runtime)
        if not enabled and (policies.shadow is None or not sample(policies.shadow, runtime)):
            return None
        if not policies.origin_allowed(origin):
            self.counters["origin_invalid"] += 1
            return None
        self.counters["origin_valid"] += 1
        if not enabled:
            return None  # shadow mode: counted, never enforced
        if s.method == b"OPTIONS" and header_value(s, b"access-control-request-method"):
            headers = [(b"access-control-allow-origin", origin), *policies.preflight_headers]
            if policies.private_network and (
                header_value(s, b"access-control-request-private-network") == b"true"
            ):
                headers.append((b"access-control-allow-private-network", b"true"))
            return LocalAnswer(_PREFLIGHT_OK, headers)
        state_of(s).encoders.append(_CorsResponse(policies, origin))
        return None
