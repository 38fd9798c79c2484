"""convert: the implemented subset, defaults, and refusals (most cases live in golden/)."""

from __future__ import annotations

from typing import Any

import pytest

from udsproxy.config.convert import REFUSED, convert
from udsproxy.config.load import load_tree
from udsproxy.config.schema import (
    DEFAULT_BUFFER_LIMIT,
    DEFAULT_UPSTREAM_IDLE_TIMEOUT,
    Bootstrap,
    Pipe,
    SocketAddress,
)
from udsproxy.config.validate import validate
from udsproxy.errors import ConfigError

HCM = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)


def bootstrap(listener: dict[str, Any] | None = None, **cluster: Any) -> dict[str, Any]:
    """A small valid tree: one listener routing to cluster 'c' (overridable pieces)."""
    hcm = {
        "@type": HCM,
        "stat_prefix": "s",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "v",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}}],
                }
            ]
        },
    }
    base_listener = {
        "name": "l",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8080}},
        "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}],
    }
    base_cluster = {
        "name": "c",
        "load_assignment": {
            "cluster_name": "c",
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": "/c.sock"}}}}]}
            ],
        },
    }
    return {
        "static_resources": {
            "listeners": [{**base_listener, **(listener or {})}],
            "clusters": [{**base_cluster, **cluster}],
        }
    }


def refusals(tree: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        load_tree(tree)
    return caught.value.errors


def test_defaults_come_from_the_schema() -> None:
    result = load_tree(bootstrap())
    cluster = result.clusters[0]
    assert cluster.connect_timeout == 5.0
    assert cluster.idle_timeout == DEFAULT_UPSTREAM_IDLE_TIMEOUT == 60.0
    assert cluster.max_requests_per_connection == 0
    assert cluster.per_connection_buffer_limit_bytes == DEFAULT_BUFFER_LIMIT
    listener = result.listeners[0]
    assert listener.address == SocketAddress(address="127.0.0.1", port_value=8080)
    hcm = listener.http_connection_manager
    assert (hcm.server_name, hcm.max_request_headers_kb, hcm.idle_timeout) == ("envoy", 60, 3600.0)
    assert (hcm.stream_idle_timeout, hcm.max_headers_count) == (300.0, 100)
    route = hcm.route_config.virtual_hosts[0].routes[0]
    assert route.route.timeout == 15.0
    assert route.match.case_sensitive is True


def test_convert_takes_the_canonical_tree() -> None:
    assert convert(validate(bootstrap())) == load_tree(bootstrap())


def test_unnamed_listener_is_named_after_its_address() -> None:
    tree = bootstrap({"name": None})
    assert load_tree(tree).listeners[0].name == "127.0.0.1:8080"


@pytest.mark.parametrize(
    ("path", "expected"),
    [("@abstract", "@abstract"), ("\0abstract", "@abstract"), ("/run/x.sock", "/run/x.sock")],
)
def test_endpoint_pipes(path: str, expected: str) -> None:
    tree = bootstrap(
        load_assignment={
            "cluster_name": "c",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": path}}}}]}],
        }
    )
    address = load_tree(tree).clusters[0].endpoints[0].address
    assert address == Pipe(path=expected)
    assert isinstance(address, Pipe)
    assert address.sockaddr == ("\0abstract" if expected.startswith("@") else expected)


def test_warnings_do_not_affect_equality() -> None:
    with_warning = load_tree(bootstrap(max_requests_per_connection=0))
    assert with_warning.warnings == (
        "static_resources.clusters[0].max_requests_per_connection: deprecated in Envoy; use "
        'typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]',
    )
    assert with_warning == load_tree(bootstrap())


def test_empty_bootstrap() -> None:
    assert load_tree({}) == Bootstrap()
    assert load_tree({"node": {"id": "x"}}) == Bootstrap()


@pytest.mark.parametrize(
    ("cluster", "path", "message"),
    [
        (
            {"outlier_detection": {"success_rate_minimum_hosts": 5}},
            "outlier_detection.success_rate_minimum_hosts",
            REFUSED,
        ),
        ({"type": "EDS"}, "type", f"'EDS' {REFUSED} (only STATIC, STRICT_DNS, LOGICAL_DNS)"),
        (
            {"lb_policy": "MAGLEV"},
            "lb_policy",
            f"'MAGLEV' {REFUSED} (only ROUND_ROBIN, LEAST_REQUEST, RANDOM: no consistent"
            " hashing (route hash_policy is not supported either))",
        ),
        ({"cluster_type": {"name": "x"}}, "cluster_type", REFUSED),
    ],
)
def test_cluster_refusals(cluster: dict[str, Any], path: str, message: str) -> None:
    assert refusals(bootstrap(**cluster)) == [(f"static_resources.clusters[0].{path}", message)]


def test_http2_codec_is_refused() -> None:
    tree = bootstrap()
    hcm = tree["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["codec_type"] = "HTTP2"
    [(path, message)] = refusals(tree)
    assert path.endswith("typed_config.codec_type")
    assert message == f"'HTTP2' {REFUSED} (only AUTO, HTTP1)"


def test_cluster_without_load_assignment() -> None:
    assert refusals(bootstrap(load_assignment=None)) == [
        ("static_resources.clusters[0].load_assignment", "cluster 'c' has no endpoints")
    ]


def test_admin_address_is_its_own_and_defaults_to_loopback() -> None:
    from udsproxy.config.load import load_yaml
    from udsproxy.config.schema import SocketAddress

    b = load_yaml("admin:\n  address: {socket_address: {address: 127.0.0.1, port_value: 9902}}\n")
    assert b.admin is not None and b.admin.address == SocketAddress(
        address="127.0.0.1", port_value=9902
    )
    b = load_yaml("admin: {}\n")
    assert b.admin is not None and str(b.admin.address) == "127.0.0.1:9901"
    assert load_yaml("static_resources: {}\n").admin is None
