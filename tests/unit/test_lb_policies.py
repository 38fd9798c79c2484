"""The load balancers of udsproxy.lb (RANDOM, LEAST_REQUEST, round robin's avoid), and the
cluster's lb_policy over healthy hosts. No sockets."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

from udsproxy.config.schema import Cluster as ClusterConfig
from udsproxy.config.schema import Endpoint, Pipe, SocketAddress
from udsproxy.lb import LeastRequest, Random, RoundRobin
from udsproxy.upstream.cluster import Cluster
from udsproxy.upstream.health import FAILED_OUTLIER_CHECK


def test_round_robin_balancer_avoids() -> None:
    rr = RoundRobin([("a", 1), ("b", 1)])
    assert [rr.pick("a") for _ in range(4)] == ["b", "b", "b", "b"]
    assert RoundRobin([("a", 1)]).pick("a") == "a"
    assert RoundRobin([]).pick() is None


def test_random_is_uniform_and_ignores_weights() -> None:
    random.seed(1)
    r = Random([("a", 1), ("b", 9), ("c", 1)])
    counts = Counter(r.pick() for _ in range(30_000))
    assert all(9_000 < counts[k] < 11_000 for k in "abc")
    assert Counter(r.pick("b") for _ in range(1000))["b"] == 0
    assert Random([("a", 1)]).pick("a") == "a"
    assert Random([]).pick() is None


def test_least_request_p2c_prefers_the_less_busy() -> None:
    random.seed(2)
    active = {"a": 0, "b": 5, "c": 10}
    lr = LeastRequest([("a", 1), ("b", 1), ("c", 1)], active.__getitem__)
    counts = Counter(lr.pick() for _ in range(9_000))
    # two choices: "c" only when both draws are "c" (1/9), "a" whenever drawn (5/9)
    assert counts["a"] > counts["b"] > counts["c"]
    assert 4_600 < counts["a"] < 5_400 and 700 < counts["c"] < 1_300
    assert Counter(lr.pick("a") for _ in range(1000))["a"] == 0


def test_least_request_choice_count() -> None:
    random.seed(3)
    active = {h: i for i, h in enumerate("abcdefgh")}
    many = LeastRequest([(h, 1) for h in active], active.__getitem__, choice_count=8)
    two = LeastRequest([(h, 1) for h in active], active.__getitem__, choice_count=2)
    assert (
        Counter(many.pick() for _ in range(2000))["a"]
        > Counter(two.pick() for _ in range(2000))["a"]
    )


def test_least_request_weighted_is_weight_over_active() -> None:
    active = {"a": 0, "b": 0}
    lr = LeastRequest([("a", 3), ("b", 1)], active.__getitem__)
    counts = Counter(lr.pick() for _ in range(4000))
    assert 2_900 < counts["a"] < 3_100  # idle hosts: the weights
    active["a"] = 5  # a busy heavy host: 3 / 6 against 1 / 1
    counts = Counter(lr.pick() for _ in range(3000))
    assert counts["b"] > 1.5 * counts["a"]


def cluster(policy: str, n: int = 3) -> Cluster:
    endpoints: list[Endpoint] = [
        Endpoint(address=Pipe(path=f"/tmp/p{i}.sock")) for i in range(n - 1)
    ]
    endpoints.append(Endpoint(address=SocketAddress(address="127.0.0.1", port_value=9)))
    config = ClusterConfig(name="c", endpoints=tuple(endpoints), lb_policy=policy)
    return Cluster(config, asyncio.new_event_loop())


def test_policies_mix_pipe_and_tcp_endpoints_and_skip_the_unhealthy() -> None:
    random.seed(4)
    for policy in ("ROUND_ROBIN", "RANDOM", "LEAST_REQUEST"):
        c = cluster(policy)
        seen = Counter(c.pick().text for _ in range(300))  # type: ignore[union-attr]
        assert set(seen) == {"/tmp/p0.sock", "/tmp/p1.sock", "127.0.0.1:9"}, policy
        c.hosts[0].health_flags = FAILED_OUTLIER_CHECK
        c.health_changed()
        seen = Counter(c.pick().text for _ in range(300))  # type: ignore[union-attr]
        assert set(seen) == {"/tmp/p1.sock", "127.0.0.1:9"}, policy
        other = c.pick(avoid=c.hosts[1])
        assert other is c.hosts[2], policy
        c.loop.close()
