"""Retry policies and circuit breakers as pure pieces: the config conversion, the decisions,
the back-off and the per-worker shares. No sockets."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.unit.config.test_config_convert import bootstrap, refusals
from udsproxy.config.convert import REFUSED
from udsproxy.config.load import load_tree
from udsproxy.config.schema import CircuitBreakerThresholds, RetryPolicy
from udsproxy.router.retry import RetryPolicy as Compiled
from udsproxy.router.retry import RetryState
from udsproxy.upstream.resources import Resources

ROUTE = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config"
VHOST = f"{ROUTE}.virtual_hosts[0]"
RETRY = f"{VHOST}.routes[0].route.retry_policy"


def with_retry(policy: dict[str, Any], on_vhost: bool = False) -> dict[str, Any]:
    tree = bootstrap()
    hcm = tree["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    vh = hcm["typed_config"]["route_config"]["virtual_hosts"][0]
    target = vh if on_vhost else vh["routes"][0]["route"]
    target["retry_policy"] = copy.deepcopy(policy)
    return tree


def test_envoys_documented_retry_policy_converts() -> None:
    tree = with_retry(
        {
            "retry_on": "5xx,connect-failure, refused-stream",
            "num_retries": 3,
            "per_try_timeout": "0.5s",
            "retry_back_off": {"base_interval": "0.1s", "max_interval": "1s"},
            "retriable_status_codes": [418],
            "retriable_request_headers": [{"name": ":method", "string_match": {"exact": "GET"}}],
            "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts"}],
            "host_selection_retry_max_attempts": 3,
        }
    )
    b = load_tree(tree)
    policy = b.listeners[0].http_connection_manager.route_config.virtual_hosts[0].routes[0]
    assert policy.route is not None and policy.route.retry_policy is not None
    p = policy.route.retry_policy
    assert p.retry_on == ("5xx", "connect-failure", "refused-stream")
    assert (p.num_retries, p.per_try_timeout, p.retry_back_off) == (3, 0.5, (0.1, 1.0))
    assert p.retriable_status_codes == (418,)
    assert p.retriable_request_headers[0].name == ":method"


def test_a_virtual_host_policy_and_the_attempt_count_fields() -> None:
    tree = with_retry({"retry_on": "reset"}, on_vhost=True)
    vh = tree["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"
    ]["virtual_hosts"][0]
    vh["include_request_attempt_count"] = True
    vh["include_attempt_count_in_response"] = True
    v = load_tree(tree).listeners[0].http_connection_manager.route_config.virtual_hosts[0]
    assert v.retry_policy == RetryPolicy(retry_on=("reset",))
    assert v.include_request_attempt_count and v.include_attempt_count_in_response


@pytest.mark.parametrize(
    ("policy", "path", "message"),
    [
        ({"retry_on": "5xx,unavailable"}, "retry_on", "retry_on 'unavailable' " + REFUSED),
        ({"retry_on": "retriable-headers"}, "retry_on", "retry_on 'retriable-headers' " + REFUSED),
        ({"retry_on": "5xx,bogus"}, "retry_on", "unknown retry_on condition 'bogus'"),
        ({"rate_limited_retry_back_off": {}}, "rate_limited_retry_back_off", REFUSED),
        ({"per_try_idle_timeout": "1s"}, "per_try_idle_timeout", REFUSED),
        ({"retry_priority": {"name": "x"}}, "retry_priority", REFUSED),
        (
            {"retry_back_off": {"base_interval": "1s", "max_interval": "0.5s"}},
            "retry_back_off.max_interval",
            "0.5s is below base_interval 1s; it must be greater or equal",
        ),
        (
            {"retry_host_predicate": [{"name": "envoy.retry_host_predicates.omit_canary_hosts"}]},
            "retry_host_predicate[0]",
            "retry host predicate 'envoy.retry_host_predicates.omit_canary_hosts' " + REFUSED,
        ),
    ],
)
def test_retry_policy_refusals(policy: dict[str, Any], path: str, message: str) -> None:
    [(where, what)] = refusals(with_retry(policy))
    assert where == f"{RETRY}.{path}"
    assert what.startswith(message)


def test_circuit_breakers_convert_with_envoys_defaults() -> None:
    cb = {"thresholds": [{"max_connections": 10, "track_remaining": True}, {"priority": "HIGH"}]}
    c = load_tree(bootstrap(circuit_breakers=cb)).clusters[0]
    assert c.circuit_breakers == (
        CircuitBreakerThresholds(max_connections=10, track_remaining=True),
        CircuitBreakerThresholds(priority="HIGH"),
    )
    assert CircuitBreakerThresholds() == CircuitBreakerThresholds(
        max_connections=1024, max_pending_requests=1024, max_requests=1024, max_retries=3
    )


@pytest.mark.parametrize(
    ("cb", "path", "message"),
    [
        ({"per_host_thresholds": [{}]}, "per_host_thresholds", REFUSED),
        ({"thresholds": [{"retry_budget": {}}]}, "thresholds[0].retry_budget", REFUSED),
        (
            {"thresholds": [{"max_connection_pools": 2}]},
            "thresholds[0].max_connection_pools",
            REFUSED,
        ),
        ({"thresholds": [{}, {}]}, "thresholds[1].priority", "priority DEFAULT is set twice"),
    ],
)
def test_circuit_breaker_refusals(cb: dict[str, Any], path: str, message: str) -> None:
    [(where, what)] = refusals(bootstrap(circuit_breakers=cb))
    assert where == f"static_resources.clusters[0].circuit_breakers.{path}"
    assert what.startswith(message)


def _compiled(**kw: Any) -> Compiled:
    return Compiled.compile(RetryPolicy(**kw))


@pytest.mark.parametrize(
    ("retry_on", "codes", "retried"),
    [
        (("5xx",), (500, 502, 503, 504, 599), (500, 502, 503, 504, 599)),
        (("gateway-error",), (500, 502, 503, 504), (502, 503, 504)),
        (("retriable-4xx",), (404, 409, 429), (409,)),
        (("reset", "connect-failure"), (500, 503), ()),
        (("refused-stream",), (503,), ()),
    ],
)
def test_which_responses_are_retried(
    retry_on: tuple[str, ...], codes: tuple[int, ...], retried: tuple[int, ...]
) -> None:
    p = _compiled(retry_on=retry_on)
    assert tuple(c for c in codes if p.retriable_response(c, [])) == retried


def test_status_codes_ratelimited_and_overloaded() -> None:
    p = _compiled(retry_on=("retriable-status-codes",), retriable_status_codes=(418,))
    assert p.retriable_response(418, []) and not p.retriable_response(503, [])
    p = _compiled(retry_on=("envoy-ratelimited",))
    assert p.retriable_response(429, [(b"x-envoy-ratelimited", b"true")])
    assert not p.retriable_response(429, [])
    p = _compiled(retry_on=("5xx",))
    assert not p.retriable_response(503, [(b"x-envoy-overloaded", b"true")])


def test_which_resets_are_retried() -> None:
    for words in (("5xx",), ("gateway-error",), ("reset",)):
        p = _compiled(retry_on=words)
        assert p.retriable_reset(False) and p.retriable_reset(True)
    p = _compiled(retry_on=("connect-failure",))
    assert p.retriable_reset(True) and not p.retriable_reset(False)
    assert not _compiled(retry_on=("retriable-4xx",)).retriable_reset(True)


def test_headers_amend_the_policy() -> None:
    p = _compiled(retry_on=("connect-failure",), num_retries=1)
    q = p.with_headers([(b"x-envoy-retry-on", b"5xx"), (b"x-envoy-max-retries", b"4")])
    assert q.num_retries == 4 and q.retriable_response(503, []) and q.retriable_reset(True)
    assert p.with_headers([(b"x-envoy-max-retries", b"many")]).num_retries == 1


def test_back_off_is_fully_jittered_and_capped() -> None:
    rs = RetryState(_compiled(retry_back_off=(0.1, 0.25)), None)
    assert rs.back_off(0.0) == 0.0
    assert rs.back_off(0.999) == pytest.approx(0.0999)  # first retry: [0, base)
    rs.retried = 1
    assert rs.back_off(0.999) == pytest.approx(0.25)  # [0, 3 x base) capped at max_interval
    default = RetryState(_compiled(), None)
    assert default.back_off(0.999) == pytest.approx(0.025 * 0.999)  # 25 ms base


def test_a_state_gives_back_its_retry_slot_once() -> None:
    res = Resources(max_retries=1)
    rs = RetryState(_compiled(), res)
    res.retries, rs.holding = 1, True
    rs.release()
    rs.release()
    assert res.retries == 0


@pytest.mark.parametrize(("limit", "workers", "share"), [(1024, 1, 1024), (3, 2, 2), (1, 4, 1)])
def test_each_worker_gets_a_share_rounded_up(limit: int, workers: int, share: int) -> None:
    t = CircuitBreakerThresholds(
        max_connections=limit, max_pending_requests=limit, max_requests=limit, max_retries=limit
    )
    r = Resources.for_worker(t, workers)
    assert (r.max_connections, r.max_pending, r.max_requests, r.max_retries) == (share,) * 4


def test_breaker_gauges() -> None:
    r = Resources(max_connections=1, max_requests=2, track_remaining=True)
    r.cx, r.rq = 1, 1
    gauges: dict[str, int] = {}
    r.dump_gauges("p.", gauges)
    assert gauges == {
        "p.cx_open": 1, "p.cx_pool_open": 0, "p.rq_pending_open": 0, "p.rq_open": 0,
        "p.rq_retry_open": 0, "p.remaining_cx": 0, "p.remaining_pending": 1024,
        "p.remaining_rq": 1, "p.remaining_retries": 3,
    }  # fmt: skip


def test_a_built_cluster_shows_its_breakers_only_once_swapped_in() -> None:
    """A reload builds the changed cluster first; if the reload then fails, the running one's
    breakers and outlier counters must stay on show (the stats object outlives both)."""
    from tests.unit.fakes import FakeLoop
    from udsproxy.config import schema
    from udsproxy.stats.store import ClusterStats
    from udsproxy.upstream.cluster import Cluster

    loop: Any = FakeLoop()
    endpoints = (schema.Endpoint(address=schema.Pipe(path="/nonexistent")),)
    stats = ClusterStats()
    breakers = (schema.CircuitBreakerThresholds(max_connections=7),)
    live = Cluster(
        schema.Cluster(
            name="c",
            endpoints=endpoints,
            circuit_breakers=breakers,
            outlier_detection=schema.OutlierDetection(),
        ),
        loop,
        stats,
    )
    assert live.outlier is not None
    assert stats.breakers is live.resources and stats.outlier is live.outlier.stats
    dropped = Cluster(schema.Cluster(name="c", endpoints=endpoints), loop, stats, publish=False)
    dropped.close()  # the reload failed after building it
    assert stats.breakers is live.resources and stats.outlier is live.outlier.stats
    swapped = Cluster(schema.Cluster(name="c", endpoints=endpoints), loop, stats, publish=False)
    swapped.publish_stats()  # the reload's swap
    assert stats.breakers is swapped.resources and stats.outlier is None
    assert swapped.resources is not None and swapped.resources.max_connections == 1024
