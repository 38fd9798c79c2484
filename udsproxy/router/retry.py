"""Retries (Envoy's RetryPolicy and RetryState): a route's policy compiled once, and what one
request has used of it. Pure: no I/O; the router owns the timers.

Envoy's rules: a try is retried only before any of its response went downstream, only once
the whole request is held (bodies up to the buffer limit), and never past the route timeout.
A retry waits a fully jittered back-off, uniform in [0, (2^n - 1) x base) for the n-th retry,
capped at max_interval; it holds one of the cluster's ``max_retries`` while it lasts.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Protocol

from udsproxy.headermatch import HeaderMatch

if TYPE_CHECKING:
    from udsproxy.config import schema
    from udsproxy.streaminfo import StreamInfo
    from udsproxy.upstream.resources import Resources

__all__ = ["RetryPolicy", "RetryState"]


class Cancellable(Protocol):
    """The back-off's timer (an asyncio TimerHandle, which the router makes)."""

    def cancel(self) -> None: ...


ON_5XX = 1
ON_GATEWAY_ERROR = 2
ON_RESET = 4
ON_CONNECT_FAILURE = 8
ON_RETRIABLE_4XX = 16
ON_STATUS_CODES = 32
ON_RATELIMITED = 64
_BITS = {
    "5xx": ON_5XX,
    "gateway-error": ON_GATEWAY_ERROR,
    "reset": ON_RESET,
    "connect-failure": ON_CONNECT_FAILURE,
    "retriable-4xx": ON_RETRIABLE_4XX,
    "retriable-status-codes": ON_STATUS_CODES,
    "envoy-ratelimited": ON_RATELIMITED,
    # HTTP/2 and HTTP/3 events: an HTTP/1.1 upstream never gives them
    "refused-stream": 0,
    "http3-post-connect-failure": 0,
}
# any reset, timeout or failure to connect
_ON_ANY_RESET = ON_5XX | ON_GATEWAY_ERROR | ON_RESET
_GATEWAY = frozenset({502, 503, 504})
_DEFAULT_BASE = 0.025


def _bits(words: list[str] | tuple[str, ...]) -> int:
    on = 0
    for word in words:
        on |= _BITS.get(word.strip(), 0)
    return on


class RetryPolicy:
    __slots__ = (
        "base",
        "codes",
        "max_interval",
        "num_retries",
        "on",
        "per_try_timeout",
        "request_headers",
    )

    def __init__(
        self,
        on: int,
        num_retries: int = 1,
        per_try_timeout: float = 0.0,
        back_off: tuple[float, float] | None = None,
        codes: frozenset[int] = frozenset(),
        request_headers: tuple[HeaderMatch, ...] = (),
    ) -> None:
        self.on = on
        self.num_retries = num_retries
        self.per_try_timeout = per_try_timeout
        self.base, self.max_interval = back_off or (_DEFAULT_BASE, _DEFAULT_BASE * 10)
        self.codes = codes
        self.request_headers = request_headers

    @classmethod
    def compile(cls, p: schema.RetryPolicy) -> RetryPolicy:
        return cls(
            _bits(p.retry_on),
            p.num_retries,
            p.per_try_timeout,
            p.retry_back_off,
            frozenset(p.retriable_status_codes),
            tuple(HeaderMatch(m) for m in p.retriable_request_headers),
        )

    def with_headers(self, headers: list[tuple[bytes, bytes]]) -> RetryPolicy:
        """This policy as x-envoy-retry-on and x-envoy-max-retries amend it (Envoy: the
        header's conditions are added to the route's; its count replaces the route's)."""
        on, n = self.on, self.num_retries
        for name, value in headers:
            text = value.decode("latin-1")
            if name == b"x-envoy-retry-on":
                on |= _bits(text.split(","))
            elif text.strip().isdigit():
                n = int(text)
        policy = RetryPolicy(on, n, self.per_try_timeout, (self.base, self.max_interval))
        policy.codes, policy.request_headers = self.codes, self.request_headers
        return policy

    def applies(self, info: StreamInfo) -> bool:
        """retriable_request_headers: when given, only a request matching one is retried."""
        matchers = self.request_headers
        return not matchers or any(m.match(info) for m in matchers)

    def retriable_response(self, code: int, headers: list[tuple[bytes, bytes]]) -> bool:
        on = self.on
        if code >= 500:
            hit = bool(on & ON_5XX) or (bool(on & ON_GATEWAY_ERROR) and code in _GATEWAY)
        else:
            hit = bool(on & ON_RETRIABLE_4XX) and code == 409
        hit = hit or (bool(on & ON_STATUS_CODES) and code in self.codes)
        if not hit and not on & ON_RATELIMITED:
            return False
        names = [n for n, _ in headers]
        if b"x-envoy-overloaded" in names:
            return False  # Envoy never retries an overloaded upstream's answer
        return hit or b"x-envoy-ratelimited" in names

    def retriable_reset(self, connect_failure: bool) -> bool:
        on = self.on
        return bool(on & _ON_ANY_RESET) or (connect_failure and bool(on & ON_CONNECT_FAILURE))


# the policy x-envoy-retry-on makes of a route without one (Envoy's defaults)
NO_POLICY = RetryPolicy(0)


class RetryState:
    """One request's retries. ``holding``: it holds one of the cluster's max_retries."""

    __slots__ = (
        "failed_host",
        "holding",
        "interim_sent",
        "policy",
        "resources",
        "retried",
        "timer",
        "try_deadline",
    )

    def __init__(self, policy: RetryPolicy, resources: Resources | None) -> None:
        self.policy = policy
        self.resources = resources
        self.retried = 0  # retries started
        self.holding = False
        self.timer: Cancellable | None = None  # the back-off's timer
        self.try_deadline = 0.0  # per_try_timeout's, on the loop's clock
        self.failed_host: Any = None  # the last try's Host: a retry avoids it
        self.interim_sent = False  # a 1xx went downstream: Envoy retries no more

    def back_off(self, rand: float | None = None) -> float:
        """The wait before the next retry (Envoy's jittered exponential back-off)."""
        p = self.policy
        ceiling = ((1 << min(self.retried + 1, 30)) - 1) * p.base
        r = random.random() if rand is None else rand
        return min(r * ceiling, p.max_interval)

    def release(self) -> None:
        """The request is over: give back its max_retries slot, stop its back-off."""
        if self.holding:
            self.holding = False
            res = self.resources
            if res is not None:
                res.retries -= 1
        timer = self.timer
        if timer is not None:
            self.timer = None
            timer.cancel()
