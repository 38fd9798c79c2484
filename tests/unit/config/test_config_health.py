"""convert: a cluster's health_checks and its endpoints' health_check_config (issue 11)."""

from __future__ import annotations

from typing import Any

import pytest

from udsproxy.config.convert import REFUSED
from udsproxy.config.load import load_tree
from udsproxy.config.schema import HeaderValueOption, HealthCheck, StringMatcher
from udsproxy.errors import ConfigError

HCM = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
C = "static_resources.clusters[0]"
HC = f"{C}.health_checks[0]"
EP = f"{C}.load_assignment.endpoints[0].lb_endpoints[0].endpoint"
MINIMAL = {
    "timeout": "1s",
    "interval": "5s",
    "unhealthy_threshold": 3,
    "healthy_threshold": 2,
    "http_health_check": {"path": "/healthz"},
}


def bootstrap(checks: list[dict[str, Any]] | None, **endpoint: Any) -> dict[str, Any]:
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
    ep = {"address": {"pipe": {"path": "/dev/shm/c.sock"}}, **endpoint}
    cluster: dict[str, Any] = {
        "name": "c",
        "load_assignment": {
            "cluster_name": "c",
            "endpoints": [{"lb_endpoints": [{"endpoint": ep}]}],
        },
    }
    if checks is not None:
        cluster["health_checks"] = checks
    return {"static_resources": {"listeners": [listener], "clusters": [cluster]}}


def check(**fields: Any) -> HealthCheck:
    cluster = load_tree(bootstrap([{**MINIMAL, **fields}])).clusters[0]
    assert cluster.health_check is not None
    return cluster.health_check


def errors(tree: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        load_tree(tree)
    return caught.value.errors


def test_envoy_defaults() -> None:
    hc = check()
    assert (hc.timeout, hc.interval, hc.unhealthy_threshold, hc.healthy_threshold) == (1, 5, 3, 2)
    assert (hc.interval_jitter, hc.interval_jitter_percent, hc.initial_jitter) == (0, 0, 0)
    # no_traffic_interval 60 s; the others default to the interval they refine
    assert (hc.no_traffic_interval, hc.no_traffic_healthy_interval) == (60.0, 60.0)
    assert (hc.unhealthy_interval, hc.unhealthy_edge_interval, hc.healthy_edge_interval) == (
        5.0, 5.0, 5.0,
    )  # fmt: skip
    assert hc.reuse_connection is True
    assert (hc.path, hc.host, hc.method) == ("/healthz", "", "GET")
    assert hc.expected_statuses == ((200, 201),)  # 200 only
    assert hc.retriable_statuses == ()
    assert load_tree(bootstrap(None)).clusters[0].health_check is None


def test_every_supported_field() -> None:
    hc = check(
        interval_jitter="0.5s",
        interval_jitter_percent=10,
        initial_jitter="2s",
        no_traffic_interval="30s",
        unhealthy_interval="7s",
        healthy_edge_interval="1s",
        reuse_connection=False,
        http_health_check={
            "path": "/hc",
            "host": "svc.local",
            "method": "HEAD",
            "expected_statuses": [{"start": 200, "end": 300}],
            "retriable_statuses": [{"start": 503, "end": 504}],
            "request_headers_to_add": [{"header": {"key": "X-Probe", "value": "1"}}],
            "request_headers_to_remove": ["User-Agent"],
            "service_name_matcher": {"exact": "hugo"},
        },
    )
    assert (hc.interval_jitter, hc.interval_jitter_percent, hc.initial_jitter) == (0.5, 10, 2.0)
    assert (hc.no_traffic_interval, hc.no_traffic_healthy_interval) == (30.0, 30.0)
    assert (hc.unhealthy_interval, hc.unhealthy_edge_interval, hc.healthy_edge_interval) == (
        7.0, 7.0, 1.0,
    )  # fmt: skip
    assert hc.reuse_connection is False
    assert (hc.path, hc.host, hc.method) == ("/hc", "svc.local", "HEAD")
    assert (hc.expected_statuses, hc.retriable_statuses) == (((200, 300),), ((503, 504),))
    assert hc.request_headers_to_add == (HeaderValueOption(key="x-probe", value="1"),)
    assert hc.request_headers_to_remove == ("user-agent",)
    assert hc.service_name_matcher == StringMatcher(exact="hugo")


def test_required_fields_are_envoys() -> None:
    found = errors(bootstrap([{"http_health_check": {"path": ""}}]))
    assert sorted(found) == [
        (f"{HC}.healthy_threshold", "is required"),
        (f"{HC}.http_health_check.path", "is required and must not be empty"),
        (f"{HC}.interval", "is required"),
        (f"{HC}.timeout", "is required"),
        (f"{HC}.unhealthy_threshold", "is required"),
    ]
    no_checker = {k: v for k, v in MINIMAL.items() if k != "http_health_check"}
    assert errors(bootstrap([no_checker])) == [
        (HC, "one of 'http_health_check', 'tcp_health_check', 'grpc_health_check', "
         "'custom_health_check' is required"),
    ]  # fmt: skip


def test_status_ranges_are_checked_as_envoy_does() -> None:
    ranges = [{"start": 200, "end": 200}, {"start": 99, "end": 200}, {"start": 500, "end": 601}]
    found = errors(
        bootstrap([{**MINIMAL, "http_health_check": {"path": "/", "expected_statuses": ranges}}])
    )
    at = f"{HC}.http_health_check.expected_statuses"
    problem = "invalid http status range: expecting"
    assert found == [
        (f"{at}[0]", f"{problem} start < end, but found start=200 and end=200"),
        (f"{at}[1]", f"{problem} start >= 100, but found start=99"),
        (f"{at}[2]", f"{problem} end <= 600, but found end=601"),
    ]


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"tcp_health_check": {}, "http_health_check": None}, "tcp_health_check"),
        ({"grpc_health_check": {}, "http_health_check": None}, "grpc_health_check"),
        ({"event_log_path": "/dev/stderr"}, "event_log_path"),
        ({"always_log_health_check_failures": True}, "always_log_health_check_failures"),
        ({"tls_options": {"alpn_protocols": ["h2"]}}, "tls_options"),
        ({"http_health_check": {"path": "/", "codec_client_type": "HTTP2"}},
         "http_health_check.codec_client_type"),
        ({"http_health_check": {"path": "/", "method": "POST"}}, "http_health_check.method"),
        ({"http_health_check": {"path": "/", "receive": [{"text": "6f6b"}]}},
         "http_health_check.receive"),
    ],
)  # fmt: skip
def test_refused_by_name(fields: dict[str, Any], where: str) -> None:
    node = {**MINIMAL, **fields}
    node = {k: v for k, v in node.items() if v is not None}
    found = errors(bootstrap([node]))
    assert [p for p, m in found if REFUSED in m] == [f"{HC}.{where}"], found


def test_one_health_check_per_cluster() -> None:
    found = errors(bootstrap([MINIMAL, MINIMAL]))
    assert [p for p, _ in found] == [f"{C}.health_checks[1]"]


def test_endpoint_health_check_config() -> None:
    checked = bootstrap(
        [MINIMAL], health_check_config={"hostname": "ep.local", "disable_active_health_check": True}
    )
    endpoint = load_tree(checked).clusters[0].endpoints[0]
    assert endpoint.health_check_hostname == "ep.local"
    assert endpoint.disable_active_health_check is True
    # a port for the checks: refused with checks, inert (as in Envoy) without
    ported = {"health_check_config": {"port_value": 8080}}
    assert [p for p, _ in errors(bootstrap([MINIMAL], **ported))] == [
        f"{EP}.health_check_config.port_value"
    ]
    load_tree(bootstrap(None, **ported))


def test_ignore_new_hosts_until_first_hc() -> None:
    tree = bootstrap([MINIMAL])
    tree["static_resources"]["clusters"][0]["common_lb_config"] = {
        "ignore_new_hosts_until_first_hc": True
    }
    assert load_tree(tree).clusters[0].ignore_new_hosts_until_first_hc is True


def test_ignore_health_on_host_removal_true_is_what_udsproxy_does() -> None:
    tree = bootstrap([MINIMAL])
    tree["static_resources"]["clusters"][0]["ignore_health_on_host_removal"] = True
    load_tree(tree)
