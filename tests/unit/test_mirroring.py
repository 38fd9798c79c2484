"""Request mirroring, the pure parts: request_mirror_policies' conversion, the compiled route,
the shadow Host, and sampling. No sockets (tests/integration/test_mirroring.py has the rest)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from udsproxy.config import schema
from udsproxy.config.filter_schema import Fraction
from udsproxy.config.load import load_tree
from udsproxy.errors import ConfigError
from udsproxy.router import shadow
from udsproxy.router.routes import CompiledRoute
from udsproxy.runtime import Runtime

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3." + (
    "HttpConnectionManager"
)
ROUTE = (
    "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config"
    ".virtual_hosts[0].routes[0].route"
)


def _cluster(name: str) -> dict[str, Any]:
    endpoint = {"endpoint": {"address": {"pipe": {"path": f"/{name}.sock"}}}}
    return {
        "name": name,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
    }


def tree(*policies: dict[str, Any], clusters: tuple[str, ...] = ("c", "m")) -> dict[str, Any]:
    action = {"cluster": "c", "request_mirror_policies": copy.deepcopy(list(policies))}
    hcm = {
        "@type": HCM,
        "stat_prefix": "s",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "v",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": action}],
                }
            ]
        },
    }
    listener = {
        "name": "l",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8080}},
        "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}],
    }
    return {
        "static_resources": {
            "listeners": [listener],
            "clusters": [_cluster(name) for name in clusters],
        }
    }


def action_of(t: dict[str, Any]) -> schema.RouteAction:
    rc = load_tree(t).listeners[0].http_connection_manager.route_config
    action = rc.virtual_hosts[0].routes[0].route
    assert action is not None
    return action


def errors(t: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        load_tree(t)
    return caught.value.errors


def test_defaults_are_envoys() -> None:
    (policy,) = action_of(tree({"cluster": "m"})).request_mirror_policies
    assert policy == schema.RequestMirrorPolicy(cluster="m")
    assert (policy.numerator, policy.denominator) == (100, 100)  # no runtime_fraction: all
    assert policy.disable_shadow_host_suffix_append is False
    assert action_of(tree()).request_mirror_policies == ()


def test_every_supported_field() -> None:
    policies = action_of(
        tree(
            {
                "cluster": "m",
                "runtime_fraction": {
                    "default_value": {"numerator": 5, "denominator": "TEN_THOUSAND"},
                    "runtime_key": "mirror.m",
                },
                "trace_sampled": True,
            },
            {
                "cluster": "c",
                "disable_shadow_host_suffix_append": True,
                "host_rewrite_literal": "shadow.example",
            },
        )
    ).request_mirror_policies
    assert policies == (
        schema.RequestMirrorPolicy(
            cluster="m", numerator=5, denominator=10_000, runtime_key="mirror.m"
        ),
        schema.RequestMirrorPolicy(
            cluster="c",
            disable_shadow_host_suffix_append=True,
            host_rewrite_literal="shadow.example",
        ),
    )


def test_refused_fields_and_unknown_clusters() -> None:
    path = f"{ROUTE}.request_mirror_policies"
    errs = errors(
        tree(
            {"cluster_header": "x-mirror"},
            {"cluster": "m", "request_headers_mutations": [{"remove": "x-a"}]},
            {"cluster": "nope"},
        )
    )
    assert (f"{path}[0].cluster_header", "not supported by udsproxy") in errs
    assert (f"{path}[1].request_headers_mutations", "not supported by udsproxy") in errs
    assert (f"{path}[2].cluster", "unknown cluster 'nope'") in errs
    assert len(errs) == 3, errs


def test_removed_v2_singular_form_is_refused_by_name() -> None:
    t = tree()
    action = t["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    route = action["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    route["request_mirror_policy"] = {"cluster": "m"}  # v2's, gone from v3
    assert any("request_mirror_policy" in p for p, _ in errors(t))


def test_compiled_route_pays_nothing_without_mirroring() -> None:
    vh = schema.VirtualHost(name="v", domains=("*",))
    plain = schema.Route(match=schema.RouteMatch(prefix="/"), route=schema.RouteAction(cluster="c"))
    assert CompiledRoute(plain, vh, ()).mirror_policies is None
    mirrored = schema.Route(
        match=schema.RouteMatch(prefix="/"),
        route=schema.RouteAction(
            cluster="c",
            request_mirror_policies=(
                schema.RequestMirrorPolicy(cluster="m", numerator=1, runtime_key="k"),
                schema.RequestMirrorPolicy(
                    cluster="n", disable_shadow_host_suffix_append=True, host_rewrite_literal="h"
                ),
            ),
        ),
    )
    compiled = CompiledRoute(mirrored, vh, ()).mirror_policies
    assert compiled is not None
    first, second = compiled
    assert (first.cluster, first.fraction, first.suffix, first.host_literal) == (
        "m",
        Fraction(numerator=1, denominator=100, runtime_key="k"),
        True,
        None,
    )
    assert (second.cluster, second.suffix, second.host_literal) == ("n", False, b"h")


@pytest.mark.parametrize(
    ("host", "shadowed"),
    [
        (b"sni.lyft.com", b"sni.lyft.com-shadow"),  # Envoy's own test vector
        (b"example.com:8080", b"example.com-shadow:8080"),  # before the port
        (b"127.0.0.1:10000", b"127.0.0.1-shadow:10000"),
        (b"[::1]:80", b"[::1]-shadow:80"),
        (b"[::1]", b"[::1]-shadow"),  # an IPv6 literal's colons are not a port
        (b"localhost", b"localhost-shadow"),
    ],
)
def test_shadow_host(host: bytes, shadowed: bytes) -> None:
    assert shadow.shadow_host(host) == shadowed


def test_sampling() -> None:
    runtime = Runtime()
    draws = 2000
    assert all(shadow._sampled(Fraction(numerator=100), runtime) for _ in range(draws))
    assert not any(shadow._sampled(Fraction(numerator=0), runtime) for _ in range(draws))
    assert not any(shadow._sampled(Fraction(numerator=0), None) for _ in range(draws))
    half = sum(shadow._sampled(Fraction(numerator=50), runtime) for _ in range(draws))
    assert 0.35 * draws < half < 0.65 * draws
    keyed = Fraction(numerator=100, runtime_key="mirror.k")
    admin = Runtime((schema.RuntimeLayer(name="admin", kind="admin"),))
    admin.modify({"mirror.k": "0"})  # the runtime key overrides the default value
    assert not any(shadow._sampled(keyed, admin) for _ in range(draws))
    admin.modify({"mirror.k": "100"})
    assert all(shadow._sampled(keyed, admin) for _ in range(draws))
    assert all(shadow._sampled(keyed, None) for _ in range(draws))  # no runtime: the default
