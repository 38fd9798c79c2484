"""envoy.filters.http.local_ratelimit without sockets: the token bucket on a fake clock, the
config conversion and refusals, and the filter's decisions, stats and reply."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.test_http_filters import Conv, Runtime, request, route
from udsproxy.config import convert_filters as cf
from udsproxy.config.filter_schema import Fraction, LocalRateLimit
from udsproxy.filters.base import FilterChain, LocalAnswer
from udsproxy.filters.local_ratelimit import LocalRateLimitFilter, TokenBucket, worker_bucket
from udsproxy.flags import ResponseFlag
from udsproxy.stats.store import StatsStore
from udsproxy.stats.tags import extract_tags


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the bucket ---------------------------------------------------------------------------------


def take(bucket: TokenBucket, n: int) -> int:
    return sum(bucket.consume() for _ in range(n))


def test_bucket_starts_full_and_refills_continuously_up_to_max() -> None:
    clock = Clock()
    bucket = TokenBucket(3, 2.0, clock)  # 3 tokens, 2 a second
    assert take(bucket, 5) == 3
    clock.now += 0.25  # half a token
    assert not bucket.consume()
    clock.now += 0.25  # the other half
    assert bucket.consume()
    assert not bucket.consume()
    clock.now += 60  # long idle: capped at max_tokens
    assert take(bucket, 10) == 3


def test_bucket_refused_requests_do_not_lose_refill() -> None:
    clock = Clock()
    bucket = TokenBucket(1, 10.0, clock)
    assert bucket.consume()
    for _ in range(9):  # nine refusals, 10 ms apart: 0.9 tokens accrue meanwhile
        clock.now += 0.01
        assert not bucket.consume()
    clock.now += 0.01
    assert bucket.consume()


def config(**kw: Any) -> LocalRateLimit:
    base: dict[str, Any] = {
        "stat_prefix": "lrl",
        "max_tokens": 4,
        "tokens_per_fill": 2,
        "fill_interval": 1.0,
        "filter_enabled": Fraction(numerator=100),
        "filter_enforced": Fraction(numerator=100),
    }
    return LocalRateLimit(**{**base, **kw})


def test_worker_share_splits_tokens_and_rate() -> None:
    clock = Clock()
    one = worker_bucket(config(), 1, clock)
    assert one is not None and (one.max_tokens, one.rate) == (4.0, 2.0)
    two = worker_bucket(config(), 2, clock)
    assert two is not None and (two.max_tokens, two.rate) == (2.0, 1.0)
    three = worker_bucket(config(max_tokens=1), 3, clock)  # never a worker without a token
    assert three is not None and three.max_tokens == 1.0
    assert worker_bucket(config(fill_interval=0.0, max_tokens=0), 2, clock) is None


# --- conversion ---------------------------------------------------------------------------------

DOCS_EXAMPLE = {
    "stat_prefix": "http_local_rate_limiter",
    "token_bucket": {"max_tokens": 10000, "tokens_per_fill": 1000, "fill_interval": 1.0},
    "filter_enabled": {
        "runtime_key": "local_rate_limit_enabled",
        "default_value": {"numerator": 100, "denominator": "HUNDRED"},
    },
    "filter_enforced": {
        "runtime_key": "local_rate_limit_enforced",
        "default_value": {"numerator": 100, "denominator": "HUNDRED"},
    },
    "response_headers_to_add": [
        {
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            "header": {"key": "x-local-rate-limit", "value": "true"},
        }
    ],
}


def test_conversion_of_envoys_example() -> None:
    conv = Conv()
    parsed = cf.parse_local_ratelimit(conv, DOCS_EXAMPLE, "f")
    assert conv.errors == []
    assert parsed is not None
    assert (parsed.max_tokens, parsed.tokens_per_fill, parsed.fill_interval) == (10000, 1000, 1.0)
    assert parsed.filter_enabled == Fraction(numerator=100, runtime_key="local_rate_limit_enabled")
    assert parsed.filter_enforced == Fraction(
        numerator=100, runtime_key="local_rate_limit_enforced"
    )
    assert parsed.status == 429
    assert [(h.key, h.value) for h in parsed.response_headers_to_add] == [
        ("x-local-rate-limit", "true")
    ]


def test_conversion_defaults_and_status() -> None:
    conv = Conv()
    parsed = cf.parse_local_ratelimit(conv, {"stat_prefix": "p"}, "f")
    assert conv.errors == []
    assert parsed == LocalRateLimit(stat_prefix="p")  # both fractions unset: 0%, no bucket
    for code, status in (("ServiceUnavailable", 503), ("TooManyRequests", 429), ("OK", 429)):
        parsed = cf.parse_local_ratelimit(conv, {"stat_prefix": "p", "status": {"code": code}}, "f")
        assert parsed is not None and parsed.status == status  # below 400: 429, as in Envoy


@pytest.mark.parametrize(
    ("node", "per_route", "where", "says"),
    [
        ({}, False, "f.stat_prefix", "is required"),
        ({"stat_prefix": "p"}, True, "f.token_bucket", "must be set for per filter configs"),
        (
            {"stat_prefix": "p", "token_bucket": {"max_tokens": 1, "fill_interval": 0.049}},
            False,
            "f.token_bucket.fill_interval",
            "fill timer must be >= 50ms",
        ),
        (
            {"stat_prefix": "p", "token_bucket": {"fill_interval": 1.0}},
            False,
            "f.token_bucket.max_tokens",
            "greater than 0",
        ),
        ({"stat_prefix": "p", "token_bucket": {"max_tokens": 1}}, False, "", "is required"),
    ],
)
def test_conversion_errors(node: dict[str, Any], per_route: bool, where: str, says: str) -> None:
    conv = Conv()
    assert cf.parse_local_ratelimit(conv, node, "f", per_route=per_route) is None
    assert any(where in path and says in message for path, message in conv.errors), conv.errors


@pytest.mark.parametrize(
    "field",
    [
        "descriptors", "rate_limits", "max_dynamic_descriptors",
        "always_consume_default_token_bucket", "vh_rate_limits", "stage",
        "local_rate_limit_per_downstream_connection", "local_cluster_rate_limit",
        "request_headers_to_add_when_not_enforced", "enable_x_ratelimit_headers",
        "rate_limited_as_resource_exhausted",
    ],
)  # fmt: skip
def test_what_is_not_implemented_is_refused_by_name(field: str) -> None:
    conv = Conv()
    cf.parse_local_ratelimit(conv, {"stat_prefix": "p", field: True}, "f")
    assert [path for path, _ in conv.errors] == [f"f.{field}"]
    assert "not supported by udsproxy" in conv.errors[0][1]


def test_per_route_entry_is_parsed() -> None:
    conv = Conv()
    node = {"@type": cf.LOCAL_RATELIMIT_TYPE, **DOCS_EXAMPLE}
    ((name, parsed),) = cf.parse_per_route(conv, {"envoy.filters.http.local_ratelimit": node}, "r")
    assert conv.errors == [] and name == "envoy.filters.http.local_ratelimit"
    assert isinstance(parsed, LocalRateLimit) and parsed.max_tokens == 10000


# --- the filter ---------------------------------------------------------------------------------

NAME = "envoy.filters.http.local_ratelimit"


def lrl(
    cfg: LocalRateLimit, runtime: Runtime | None = None, workers: int = 1
) -> tuple[LocalRateLimitFilter, StatsStore]:
    store = StatsStore()
    return LocalRateLimitFilter(NAME, cfg, runtime or Runtime(), store, workers), store


def counters(store: StatsStore, prefix: str = "lrl") -> dict[str, int]:
    stats = store.filters[f"{prefix}.http_local_rate_limit."]
    return dict(stats.counters)


def decide(f: LocalRateLimitFilter, n: int, r: Any = None) -> list[Any]:
    return [f.decode_headers(request(), r) for _ in range(n)]


def test_the_429_and_the_stats() -> None:
    f, store = lrl(config(max_tokens=2, tokens_per_fill=1, fill_interval=3600.0))
    outcomes = decide(f, 3)
    assert outcomes[:2] == [None, None]
    answer = outcomes[2]
    assert isinstance(answer, LocalAnswer)
    reply = answer.reply
    assert (reply.code, reply.body, reply.details) == (
        429,
        b"local_rate_limited",
        "local_rate_limited",
    )
    assert reply.flag == ResponseFlag.RL and len(reply.body) == 18
    assert answer.headers == ((b"x-envoy-ratelimited", b"true"),)
    assert counters(store) == {"enabled": 3, "ok": 2, "rate_limited": 1, "enforced": 1}
    name, labels = extract_tags("lrl.http_local_rate_limit.rate_limited")
    assert name == "envoy_http_local_rate_limit_rate_limited"
    assert labels == [("envoy_local_http_ratelimit_prefix", "lrl")]


def test_status_and_response_headers_to_add() -> None:
    conv = Conv()
    node = {
        **DOCS_EXAMPLE,
        "stat_prefix": "lrl",
        "token_bucket": {"max_tokens": 1, "fill_interval": 3600.0},
        "status": {"code": "ServiceUnavailable"},
        "response_headers_to_add": [
            {"header": {"key": "x-limit", "value": "local"}},
            # (format commands in these values are tested through the proxy: the compiled
            # formatter reads a real stream, not this test's stand-in)
            {"header": {"key": "x-path", "value": "/fixed"}},
        ],
    }
    parsed = cf.parse_local_ratelimit(conv, node, "f")
    assert conv.errors == [] and parsed is not None
    f, _ = lrl(parsed)
    assert f.decode_headers(request(), None) is None
    answer = f.decode_headers(request(path=b"/x?y"), None)
    assert isinstance(answer, LocalAnswer) and answer.reply.code == 503
    assert list(answer.headers) == [
        (b"x-envoy-ratelimited", b"true"),
        (b"x-limit", b"local"),
        (b"x-path", b"/fixed"),
    ]


def test_filter_enabled_and_enforced_default_to_zero() -> None:
    f, store = lrl(config(max_tokens=1, filter_enabled=None, filter_enforced=None))
    assert decide(f, 5) == [None] * 5
    assert counters(store) == {"enabled": 0, "ok": 0, "rate_limited": 0, "enforced": 0}
    # enabled but not enforced: counted, never refused
    f, store = lrl(config(max_tokens=1, filter_enforced=None))
    assert decide(f, 3) == [None] * 3
    assert counters(store) == {"enabled": 3, "ok": 1, "rate_limited": 2, "enforced": 0}


def test_runtime_keys_override_the_fractions() -> None:
    enabled = Fraction(numerator=100, runtime_key="lrl_enabled")
    enforced = Fraction(numerator=100, runtime_key="lrl_enforced")
    cfg = config(max_tokens=1, filter_enabled=enabled, filter_enforced=enforced)
    f, store = lrl(cfg, Runtime(lrl_enforced=0))
    assert decide(f, 3) == [None] * 3
    assert counters(store)["rate_limited"] == 2 and counters(store)["enforced"] == 0
    f, store = lrl(cfg, Runtime(lrl_enabled=0))
    assert decide(f, 3) == [None] * 3
    assert counters(store)["enabled"] == 0


def test_no_token_bucket_allows_every_request() -> None:
    f, store = lrl(config(max_tokens=0, fill_interval=0.0))
    assert decide(f, 4) == [None] * 4
    assert counters(store) == {"enabled": 4, "ok": 4, "rate_limited": 0, "enforced": 0}


def test_per_route_configs_have_their_own_bucket_and_stats() -> None:
    listener_cfg = LocalRateLimit(stat_prefix="lrl")  # off for the listener (Envoy's example)
    route_cfg = config(stat_prefix="r", max_tokens=1, fill_interval=3600.0)
    vhost_cfg = config(stat_prefix="v", max_tokens=1, fill_interval=3600.0)
    f, store = lrl(listener_cfg)
    chain = FilterChain([f])
    a = route({})
    a.filter_levels = ({NAME: route_cfg}, {NAME: vhost_cfg})
    b = route({})
    b.filter_levels = ({}, {NAME: vhost_cfg})
    c = route({})
    c.filter_levels = ({}, {NAME: vhost_cfg})
    chain.compile_routes([a, b, c])
    assert decide(f, 1, a) == [None] and isinstance(decide(f, 1, a)[0], LocalAnswer)
    # b and c share their virtual host's config, so its bucket: one token for both
    assert decide(f, 1, b) == [None] and isinstance(decide(f, 1, c)[0], LocalAnswer)
    assert decide(f, 3) == [None] * 3  # the listener's config: 0%
    assert counters(store, "r") == {"enabled": 2, "ok": 1, "rate_limited": 1, "enforced": 1}
    assert counters(store, "v") == {"enabled": 2, "ok": 1, "rate_limited": 1, "enforced": 1}
    assert counters(store) == {"enabled": 0, "ok": 0, "rate_limited": 0, "enforced": 0}


def test_two_workers_each_take_their_share() -> None:
    f, _ = lrl(config(max_tokens=4, tokens_per_fill=1, fill_interval=3600.0), workers=2)
    outcomes = decide(f, 4)
    assert outcomes[:2] == [None, None] and all(isinstance(x, LocalAnswer) for x in outcomes[2:])
