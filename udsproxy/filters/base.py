"""The HTTP filter chain of one connection manager, compiled once per listener.

Envoy's seam, cut down to what an HTTP/1.1 edge proxy needs. Each filter may:

- decode the request headers (``decode_headers``): go on (``None``), answer locally
  (``LocalAnswer``: CORS preflight, fault abort, RBAC 403) or hold the request (``Hold``: fault
  delay); a held request goes on when the chain's timer fires (``resume``);
- register a per-request ``Encoder`` on the ``FilterState`` to see the response headers, and a
  ``BodyCoder`` (on the stream) to transform the response or request body.

The stream only pays for this when the listener has filters: ``ctx.filters`` is None otherwise, and
each hook in ``stream.py`` is one attribute test.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from udsproxy.codec import http1
from udsproxy.filters.callbacks import BodyCoder, FilterCallbacks
from udsproxy.headermatch import header_value

if TYPE_CHECKING:
    import asyncio

    from udsproxy.config.filter_schema import Fraction
    from udsproxy.router.routes import CompiledRoute

__all__ = [
    "DEFAULT_RUNTIME",
    "BodyCoder",
    "Encoder",
    "FilterCallbacks",
    "FilterChain",
    "FilterState",
    "Hold",
    "HoldBody",
    "HttpFilter",
    "LocalAnswer",
    "Runtime",
    "RuntimeOf",
    "header_value",
    "sample",
    "state_of",
]  # fmt: skip

Headers = list[tuple[bytes, bytes]]

_rng = random.Random(os.urandom(16))
randrange = _rng.randrange


class Runtime(Protocol):
    """Runtime values (``layered_runtime``) the filters read; the config's value is the default."""

    def integer(self, key: str, default: int) -> int: ...


class _Defaults:
    def integer(self, key: str, default: int) -> int:
        return default


DEFAULT_RUNTIME: Runtime = _Defaults()


class RuntimeOf:
    """The runtime an owner (the listener context) holds now: the server sets it after the
    context is built, and a reload may replace it."""

    __slots__ = ("owner",)

    def __init__(self, owner: Any) -> None:
        self.owner = owner

    def integer(self, key: str, default: int) -> int:
        runtime = self.owner.runtime
        return default if runtime is None else int(runtime.integer(key, default))


def sample(fraction: Fraction, runtime: Runtime) -> bool:
    """One draw, as Envoy's featureEnabled: random % denominator < numerator."""
    n = fraction.numerator
    if fraction.runtime_key:
        n = runtime.integer(fraction.runtime_key, n)
    if n <= 0:
        return False
    return n >= fraction.denominator or randrange(fraction.denominator) < n


class LocalAnswer:
    """A reply a filter sends instead of forwarding the request."""

    __slots__ = ("headers", "reply")

    def __init__(self, reply: http1.LocalReply, headers: Sequence[tuple[bytes, bytes]] = ()):
        self.reply = reply
        self.headers = tuple(headers)


class Hold:
    """Hold the request this long, then call the filter's ``resume``."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


class HoldBody:
    """Hold the request until its body is complete (the buffer filter), at most ``limit``
    bytes of it; the filter's ``body_too_large`` answers a larger one."""

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        self.limit = limit


Outcome = LocalAnswer | Hold | HoldBody | None


class Encoder(Protocol):
    """Per-request response-side work a filter registered while decoding."""

    # whether it also sees a local reply's headers (Envoy's CORS does; the (de)compressors are
    # left out: local reply bodies stay as they are)
    on_local_reply: bool

    def encode_headers(self, s: FilterCallbacks, code: int, headers: Headers, length: int) -> int:
        """Edit ``headers`` in place; return the content length to announce (-1: none)."""
        ...


class HttpFilter:
    """One configured filter. ``name`` is its http_filters[*].name, which keys its per-route
    config (``typed_per_filter_config``)."""

    name: str = ""

    def pick(self, level: dict[str, Any]) -> Any:
        """This filter's entry in one level (route, virtual host) of per-filter configs."""
        return level.get(self.name)

    def compile_route(self, configs: tuple[Any, ...]) -> Any:
        """Compile a route's per-filter configs (most specific first) at config time."""
        return None

    def decode_headers(self, s: FilterCallbacks, route: CompiledRoute | None) -> Outcome:
        """Look at the request; a filter that keeps per-request state takes ``state_of(s)``."""
        return None

    def resume(self, s: FilterCallbacks, state: FilterState) -> Outcome:
        """After a ``Hold``."""
        return None

    def release(self, state: FilterState) -> None:
        """The request is over (give back what it held, e.g. an active-fault slot)."""

    def body_too_large(self, s: FilterCallbacks, state: FilterState) -> Outcome:
        """After a ``HoldBody``, the body outgrew its limit."""
        return None


class FilterState:
    """One request's view of the chain: its encoders, what it holds, its timer. Made by
    ``state_of`` when a filter first acts: a request no filter acts on allocates none."""

    __slots__ = (
        "body_limit", "chain", "encoders", "index", "pending", "releases", "route", "timer",
    )  # fmt: skip

    def __init__(self) -> None:
        self.body_limit = 0  # a HoldBody's limit while the body is awaited
        self.chain: FilterChain | None = None  # set by a HoldBody, to go on from there
        self.route: CompiledRoute | None = None  # set when a filter holds the request
        self.index = 0
        self.encoders: list[Encoder] = []
        self.timer: asyncio.TimerHandle | None = None
        self.releases: list[HttpFilter] | None = None
        self.pending: Any = None  # what a holding filter decided, for its resume()

    def encode_headers(self, s: FilterCallbacks, code: int, headers: Headers, length: int) -> int:
        # Envoy runs encoders in the reverse order of the decoders.
        for encoder in reversed(self.encoders):
            length = encoder.encode_headers(s, code, headers, length)
        return length

    def local_reply_headers(
        self, s: FilterCallbacks, code: int, extra: Sequence[tuple[bytes, bytes]]
    ) -> Sequence[tuple[bytes, bytes]]:
        """``extra`` and what encoders add to a local reply (e.g. CORS on an RBAC 403)."""
        headers: Headers | None = None
        for encoder in reversed(self.encoders):
            if encoder.on_local_reply:
                if headers is None:
                    headers = list(extra)
                encoder.encode_headers(s, code, headers, -1)
        return extra if headers is None else headers

    def on_body(self, s: FilterCallbacks) -> None:
        """Request body arrived while no upstream takes it: held, within a HoldBody's limit."""
        limit = self.body_limit
        if limit and s.body_size > limit and self.chain is not None and not s.done:
            self.body_limit = 0
            self.chain.body_too_large(s, self)

    def body_complete(self, s: FilterCallbacks) -> None:
        """The request is complete: a HoldBody lets it go on."""
        if self.body_limit and self.chain is not None:
            self.on_body(s)
            if s.done:
                return  # answered 413
            self.body_limit = 0
            self.chain.wake(s, self)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.releases is not None:
            for f in self.releases:
                f.release(self)
            self.releases = None


def state_of(s: FilterCallbacks) -> FilterState:
    """The request's FilterState, made on first use."""
    state = s.filter_state
    if state is None:
        state = s.filter_state = FilterState()
    assert isinstance(state, FilterState)
    return state


class FilterChain:
    """The http_filters of one connection manager (the router excluded: that is the stream)."""

    __slots__ = ("filters",)

    def __init__(self, filters: Sequence[HttpFilter]) -> None:
        self.filters = tuple(filters)

    def compile_routes(self, routes: Sequence[CompiledRoute]) -> None:
        """Give each route what each filter compiled from the route's per-filter configs (route
        level first, then virtual host)."""
        for route in routes:
            levels = route.filter_levels
            if not levels:
                continue
            compiled: dict[str, Any] = {}
            for f in self.filters:
                configs = tuple(c for c in map(f.pick, levels) if c is not None)
                if configs:
                    compiled[f.name] = f.compile_route(configs)
            route.filter_configs = compiled

    def decode_headers(
        self, s: FilterCallbacks, route: CompiledRoute | None, start: int = 0
    ) -> bool:
        """Run the decoders (from ``start``); True when a filter answered or holds the
        request."""
        filters = self.filters
        for i in range(start, len(filters)):
            out = filters[i].decode_headers(s, route)
            if out is not None:
                return self._act(s, route, i, out)
        return False

    def _act(
        self,
        s: FilterCallbacks,
        route: CompiledRoute | None,
        i: int,
        out: LocalAnswer | Hold | HoldBody,
    ) -> bool:
        if isinstance(out, LocalAnswer):
            s.send_local_reply(out.reply, out.headers)
            return True
        state = state_of(s)
        state.route = route
        state.index = i
        if isinstance(out, HoldBody):
            state.body_limit = out.limit
            state.chain = self
            s.hold_body()
        else:
            state.timer = s.loop.call_later(out.seconds, self.wake, s, state)
        return True

    def body_too_large(self, s: FilterCallbacks, state: FilterState) -> None:
        out = self.filters[state.index].body_too_large(s, state)
        if out is not None:
            self._act(s, state.route, state.index, out)

    def wake(self, s: FilterCallbacks, state: FilterState) -> None:
        """A held request goes on: the holding filter's ``resume``, then the next filters."""
        state.timer = None
        if s.done:
            return
        route = state.route
        out = self.filters[state.index].resume(s, state)
        if out is not None:
            self._act(s, route, state.index, out)
        elif not self.decode_headers(s, route, state.index + 1):
            s.resume(route)
