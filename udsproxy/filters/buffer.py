"""envoy.filters.http.buffer: the router waits for the whole request body (at most
``max_request_bytes``) before it takes an upstream connection, so a slow client holds a
downstream connection only. A larger body gets Envoy's 413 ``Payload Too Large``
(details ``request_payload_too_large``, stat ``http.<stat_prefix>.downstream_rq_too_large``).
Per route, BufferPerRoute turns it off (``disabled``) or sets another limit (``buffer``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from udsproxy.codec import http1
from udsproxy.config.filter_schema import BufferConfig, BufferPerRoute
from udsproxy.filters.base import FilterState, HoldBody, HttpFilter, LocalAnswer, Outcome

if TYPE_CHECKING:
    from udsproxy.filters.base import FilterCallbacks
    from udsproxy.router.routes import CompiledRoute
    from udsproxy.stats.store import HttpStats

__all__ = ["PAYLOAD_TOO_LARGE", "BufferFilter"]

# Envoy's HCM answer when a filter's buffer overflows (no response flag)
PAYLOAD_TOO_LARGE = http1.LocalReply(413, "Payload Too Large", 0, "request_payload_too_large")
_TOO_LARGE = LocalAnswer(PAYLOAD_TOO_LARGE)


class BufferFilter(HttpFilter):
    def __init__(self, name: str, config: BufferConfig, http_stats: HttpStats) -> None:
        self.name = name
        self.hold = HoldBody(config.max_request_bytes)
        self.http_stats = http_stats

    def compile_route(self, configs: tuple[Any, ...]) -> HoldBody | None:
        """The most specific BufferPerRoute: None (disabled) or its own limit."""
        config: BufferPerRoute = configs[0]
        if config.disabled or config.buffer is None:
            return None
        return HoldBody(config.buffer.max_request_bytes)

    def decode_headers(self, s: FilterCallbacks, route: CompiledRoute | None) -> Outcome:
        # nothing to wait for: no body, or an upgrade (its bytes are a tunnel)
        if (not s.req_chunked and s.req_cl <= 0) or s.upgrade is not None:
            return None
        hold: HoldBody | None = self.hold
        if route is not None:
            hold = route.filter_configs.get(self.name, hold)
        if hold is None:
            return None
        if s.body_size > hold.limit:  # already read (a whole request comes in one read)
            self.http_stats.downstream_rq_too_large += 1
            return _TOO_LARGE
        return None if s.request_complete else hold

    def body_too_large(self, s: FilterCallbacks, state: FilterState) -> Outcome:
        self.http_stats.downstream_rq_too_large += 1
        return _TOO_LARGE
