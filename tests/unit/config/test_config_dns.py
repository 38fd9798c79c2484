"""convert: DNS clusters (STRICT_DNS, LOGICAL_DNS, dns_*) and endpoint fields (issue 8)."""

from __future__ import annotations

from typing import Any

import pytest

from udsproxy.config.convert import REFUSED
from udsproxy.config.load import load_tree
from udsproxy.config.schema import Endpoint, Locality, SocketAddress
from udsproxy.errors import ConfigError

HCM = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)


def bootstrap(**cluster: Any) -> dict[str, Any]:
    """One listener routing to cluster 'c', whose fields are given."""
    vhost = {
        "name": "v",
        "domains": ["*"],
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}}],
    }
    hcm = {"@type": HCM, "stat_prefix": "s", "route_config": {"virtual_hosts": [vhost]}}
    listener = {
        "name": "l",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8080}},
        "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}],
    }
    return {"static_resources": {"listeners": [listener], "clusters": [{"name": "c", **cluster}]}}


C = "static_resources.clusters[0]"
EP = f"{C}.load_assignment.endpoints[0]"


def by_name(*names: str, port: int = 8080, **locality: Any) -> dict[str, Any]:
    lb = [
        {"endpoint": {"address": {"socket_address": {"address": n, "port_value": port}}}}
        for n in names
    ]
    return {"cluster_name": "c", "endpoints": [{"lb_endpoints": lb, **locality}]}


def errors(tree: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        load_tree(tree)
    return caught.value.errors


def test_strict_dns_takes_names_with_envoy_defaults() -> None:
    cluster = load_tree(bootstrap(type="STRICT_DNS", load_assignment=by_name("a", "b"))).clusters[0]
    assert cluster.type == "STRICT_DNS"
    assert (cluster.dns_lookup_family, cluster.dns_refresh_rate) == ("AUTO", 5.0)
    assert (cluster.respect_dns_ttl, cluster.dns_failure_refresh_rate) == (False, None)
    assert [e.address for e in cluster.endpoints] == [
        SocketAddress(address="a", port_value=8080),
        SocketAddress(address="b", port_value=8080),
    ]


def test_dns_fields() -> None:
    tree = bootstrap(
        type="LOGICAL_DNS",
        dns_lookup_family="V4_PREFERRED",
        dns_refresh_rate="2.5s",
        respect_dns_ttl=True,
        dns_failure_refresh_rate={"base_interval": "0.5s", "max_interval": "8s"},
        load_assignment=by_name("backend"),
    )
    cluster = load_tree(tree).clusters[0]
    assert cluster.type == "LOGICAL_DNS"
    assert cluster.dns_lookup_family == "V4_PREFERRED"
    assert cluster.dns_refresh_rate == 2.5
    assert cluster.respect_dns_ttl is True
    assert cluster.dns_failure_refresh_rate == (0.5, 8.0)


def test_failure_refresh_rate_max_defaults_to_ten_times_base() -> None:
    tree = bootstrap(
        type="STRICT_DNS",
        dns_failure_refresh_rate={"base_interval": "1s"},
        load_assignment=by_name("a"),
    )
    assert load_tree(tree).clusters[0].dns_failure_refresh_rate == (1.0, 10.0)


@pytest.mark.parametrize(
    ("fields", "path", "message"),
    [
        (
            {"dns_failure_refresh_rate": {"base_interval": "2s", "max_interval": "1s"}},
            "dns_failure_refresh_rate.max_interval",
            "1s is below base_interval 2s; it must be greater or equal",
        ),
        (
            {"dns_failure_refresh_rate": {"max_interval": "1s"}},
            "dns_failure_refresh_rate.base_interval",
            "is required, at least 1ms",
        ),
        ({"dns_refresh_rate": "0s"}, "dns_refresh_rate", "must be at least 1ms (Envoy's rule)"),
        ({"dns_resolvers": [{"pipe": {"path": "/x"}}]}, "dns_resolvers", REFUSED),
    ],
)
def test_dns_field_errors(fields: dict[str, Any], path: str, message: str) -> None:
    tree = bootstrap(type="STRICT_DNS", load_assignment=by_name("a"), **fields)
    assert (f"{C}.{path}", message) in errors(tree)


def test_logical_dns_needs_one_endpoint() -> None:
    tree = bootstrap(type="LOGICAL_DNS", load_assignment=by_name("a", "b"))
    assert errors(tree) == [
        (
            f"{C}.load_assignment",
            "LOGICAL_DNS clusters must have a single locality_lb_endpoint and a single"
            " lb_endpoint (Envoy's rule)",
        )
    ]


def test_static_cluster_refuses_a_name_and_says_why() -> None:
    assert errors(bootstrap(load_assignment=by_name("backend"))) == [
        (
            f"{EP}.lb_endpoints[0].endpoint.address.socket_address.address",
            f"hostname 'backend' {REFUSED} (the cluster's type is STATIC, which takes IP"
            " addresses; a host name needs type STRICT_DNS or LOGICAL_DNS)",
        )
    ]


def test_dns_cluster_refuses_a_pipe() -> None:
    load_assignment = {
        "cluster_name": "c",
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": "/x"}}}}]}],
    }
    assert errors(bootstrap(type="STRICT_DNS", load_assignment=load_assignment)) == [
        (
            f"{EP}.lb_endpoints[0].endpoint.address.pipe",
            f"a pipe in a STRICT_DNS cluster {REFUSED}"
            " (a STRICT_DNS cluster resolves socket_address names; use STATIC)",
        )
    ]


def test_endpoint_fields_are_kept() -> None:
    metadata = {"filter_metadata": {"envoy.lb": {"canary": True}}}
    load_assignment = {
        "cluster_name": "c",
        "endpoints": [
            {
                "locality": {"region": "eu", "zone": "z1"},
                "load_balancing_weight": 3,
                "priority": 0,
                "metadata": {"filter_metadata": {"x": {"y": "z"}}},
                "lb_endpoints": [
                    {
                        "endpoint": {
                            "address": {
                                "socket_address": {"address": "10.0.0.1", "port_value": 80}
                            },
                            "hostname": "web-1",
                            "health_check_config": {"port_value": 8080},
                        },
                        "load_balancing_weight": 5,
                        "metadata": metadata,
                    }
                ],
            }
        ],
    }
    (endpoint,) = load_tree(bootstrap(load_assignment=load_assignment)).clusters[0].endpoints
    assert endpoint == Endpoint(
        address=SocketAddress(address="10.0.0.1", port_value=80),
        load_balancing_weight=5,
        hostname="web-1",
        metadata=metadata,
        locality=Locality(region="eu", zone="z1"),
        locality_load_balancing_weight=3,
        locality_metadata={"filter_metadata": {"x": {"y": "z"}}},
    )


def test_priority_other_than_zero_is_refused() -> None:
    tree = bootstrap(type="STRICT_DNS", load_assignment=by_name("a", priority=1))
    assert errors(tree) == [
        (
            f"{EP}.priority",
            f"priority 1 {REFUSED} (only priority 0: udsproxy has no failover between"
            " priority levels)",
        )
    ]


def test_health_status_stays_refused() -> None:
    load_assignment = by_name("a")
    load_assignment["endpoints"][0]["lb_endpoints"][0]["health_status"] = "DRAINING"
    tree = bootstrap(type="STRICT_DNS", load_assignment=load_assignment)
    assert errors(tree) == [(f"{EP}.lb_endpoints[0].health_status", REFUSED)]


def test_common_lb_config_stays_refused() -> None:
    tree = bootstrap(
        type="STRICT_DNS",
        common_lb_config={"locality_weighted_lb_config": {}},
        load_assignment=by_name("a"),
    )
    assert errors(tree) == [(f"{C}.common_lb_config.locality_weighted_lb_config", REFUSED)]
