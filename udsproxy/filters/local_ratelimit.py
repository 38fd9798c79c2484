"""envoy.filters.http.local_ratelimit: a token bucket in front of the router.

A request the filter samples in (``filter_enabled``) takes a token; without one it is rate
limited, and refused when also sampled by ``filter_enforced``: Envoy's local reply, status 429
(``status``), body ``local_rate_limited``, %RESPONSE_CODE_DETAILS% ``local_rate_limited``, flag
RL, ``x-envoy-ratelimited: true`` and the configured ``response_headers_to_add``. A route's or a
virtual host's ``typed_per_filter_config`` replaces the whole config, with its own bucket (one per
config: the routes of a virtual host that share its entry share its bucket).

The bucket is Envoy's current one (the timer-less bucket of 1.33 on): refilled continuously at
``tokens_per_fill / fill_interval`` tokens a second, up to ``max_tokens``, computed from the
monotonic clock when a request asks for a token. No timer. It starts full.

Workers: Envoy's bucket is per process, shared by its worker threads. udsproxy's workers are
processes, so each takes its share: ``ceil(max_tokens / N)`` tokens and ``1/N`` of the rate. The
sustained rate of the whole is Envoy's; a burst may exceed ``max_tokens`` by at most N - 1.

Stats: ``<stat_prefix>.http_local_rate_limit.enabled``, ``ok``, ``rate_limited``, ``enforced``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from udsproxy.codec import http1
from udsproxy.config.filter_schema import LocalRateLimit
from udsproxy.filters.base import HttpFilter, LocalAnswer, Outcome, Runtime, sample
from udsproxy.flags import ResponseFlag
from udsproxy.headers import HeaderMutations, compile_mutations

if TYPE_CHECKING:
    from udsproxy.filters.base import FilterCallbacks
    from udsproxy.router.routes import CompiledRoute
    from udsproxy.stats.store import StatsStore

__all__ = ["LocalRateLimitFilter", "TokenBucket", "worker_bucket"]

BODY = "local_rate_limited"
DETAILS = "local_rate_limited"
_RATELIMITED = (b"x-envoy-ratelimited", b"true")
# a whole token, less what float rounding of the refill may lose (0.1 s at 10/s is not exact)
_ONE = 1.0 - 1e-9


class TokenBucket:
    """Up to ``max_tokens`` tokens, ``rate`` more a second, counted when asked."""

    __slots__ = ("clock", "last", "max_tokens", "rate", "tokens")

    def __init__(
        self, max_tokens: float, rate: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_tokens = float(max_tokens)
        self.rate = rate
        self.clock = clock
        self.tokens = self.max_tokens
        self.last = clock()

    def consume(self) -> bool:
        """Take one token if there is one."""
        now = self.clock()
        tokens = self.tokens + (now - self.last) * self.rate
        self.last = now
        if tokens > self.max_tokens:
            tokens = self.max_tokens
        if tokens < _ONE:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True


def worker_bucket(
    config: LocalRateLimit, workers: int, clock: Callable[[], float] = time.monotonic
) -> TokenBucket | None:
    """This worker's share of the configured bucket; None when there is no bucket (no
    token_bucket: every request is allowed, as in Envoy)."""
    if config.fill_interval <= 0:
        return None
    n = max(1, workers)
    # never 0 tokens: a worker with none would refuse every request it gets
    tokens = math.ceil(config.max_tokens / n)
    return TokenBucket(tokens, config.tokens_per_fill / config.fill_interval / n, clock)


class _Limiter:
    """One LocalRateLimit compiled: its bucket, stats and reply."""

    __slots__ = ("answer", "bucket", "counters", "enabled", "enforced", "mutations", "reply")

    def __init__(self, config: LocalRateLimit, workers: int, store: StatsStore) -> None:
        self.enabled = config.filter_enabled
        self.enforced = config.filter_enforced
        self.bucket = worker_bucket(config, workers)
        stats = store.filter_stats(f"{config.stat_prefix}.http_local_rate_limit.")
        self.counters = stats.counter_set("enabled", "enforced", "ok", "rate_limited")
        self.reply = http1.LocalReply(config.status, BODY, ResponseFlag.RL, DETAILS)
        mutations = compile_mutations([(config.response_headers_to_add, ())])
        self.mutations: HeaderMutations | None = None
        self.answer: LocalAnswer | None = None
        if mutations is None:
            self.answer = LocalAnswer(self.reply, (_RATELIMITED,))
        elif mutations.plain is not None:  # fixed values: one answer for every request
            self.answer = LocalAnswer(self.reply, (_RATELIMITED, *mutations.plain))
        else:
            self.mutations = mutations

    def refuse(self, s: FilterCallbacks) -> LocalAnswer:
        if self.answer is not None:
            return self.answer
        assert self.mutations is not None
        headers = [_RATELIMITED]
        self.mutations.apply(headers, s)
        return LocalAnswer(self.reply, headers)


class LocalRateLimitFilter(HttpFilter):
    def __init__(
        self, name: str, config: LocalRateLimit, runtime: Runtime, store: StatsStore, workers: int
    ) -> None:
        self.name = name
        self.runtime = runtime
        self.store = store
        self.workers = workers
        # config object -> its limiter: one bucket per config, whichever routes use it
        self.compiled: dict[int, tuple[LocalRateLimit, _Limiter]] = {}
        self.limiter = self._limiter(config)

    def _limiter(self, config: LocalRateLimit) -> _Limiter:
        entry = self.compiled.get(id(config))
        if entry is None:
            entry = self.compiled[id(config)] = (config, _Limiter(config, self.workers, self.store))
        return entry[1]

    def compile_route(self, configs: tuple[Any, ...]) -> _Limiter:
        return self._limiter(configs[0])  # the most specific config replaces the filter's

    def decode_headers(self, s: FilterCallbacks, route: CompiledRoute | None) -> Outcome:
        limiter: _Limiter = self.limiter
        if route is not None:
            limiter = route.filter_configs.get(self.name, limiter)
        enabled = limiter.enabled
        if enabled is None or not sample(enabled, self.runtime):
            return None
        counters = limiter.counters
        counters["enabled"] += 1
        bucket = limiter.bucket
        if bucket is None or bucket.consume():
            counters["ok"] += 1
            return None
        counters["rate_limited"] += 1
        enforced = limiter.enforced
        if enforced is None or not sample(enforced, self.runtime):
            return None
        counters["enforced"] += 1
        return limiter.refuse(s)
