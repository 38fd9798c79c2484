# ruff: noqa: E501  (Envoy type URLs in YAML)
"""Overload config: the connection_limit network filter, the overload manager's downstream
connections monitor and the buffer filter, from Envoy's documented examples."""

from __future__ import annotations

import pytest

from udsproxy.config import filter_schema as fs
from udsproxy.config.load import load_yaml
from udsproxy.config.schema import ConnectionLimit
from udsproxy.errors import ConfigError
from udsproxy.http.admission import share

HCM = """\
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: app}
                typed_per_filter_config:
                  envoy.filters.http.buffer:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute
                    %s
          http_filters:
          - name: envoy.filters.http.buffer
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
              max_request_bytes: 5242880
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""
CLUSTER = """\
  clusters:
  - name: app
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {pipe: {path: /tmp/app.sock}}}
"""
# Envoy's "Limiting active connections" example (overload manager) and the connection limit
# filter's example fields
EXAMPLE = (
    """\
overload_manager:
  refresh_interval: 0.25s
  resource_monitors:
  - name: "envoy.resource_monitors.global_downstream_max_connections"
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig
      max_active_downstream_connections: 1000
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.connection_limit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit
          stat_prefix: example
          max_connections: 100
          delay: 1s
          runtime_enabled: {default_value: true, runtime_key: connection_limit.enabled}
"""
    + HCM
    + CLUSTER
)


def test_envoys_examples_convert() -> None:
    config = load_yaml(EXAMPLE % "disabled: true")
    assert config.max_active_downstream_connections == 1000
    listener = config.listeners[0]
    assert listener.connection_limit == ConnectionLimit(
        stat_prefix="example",
        max_connections=100,
        delay=1.0,
        runtime_key="connection_limit.enabled",
        runtime_default=True,
    )
    hcm = listener.http_connection_manager
    assert hcm.http_filters[0].config == fs.BufferConfig(max_request_bytes=5242880)
    per_route = hcm.route_config.virtual_hosts[0].routes[0]
    assert "BufferPerRoute(disabled=True" in repr(per_route)


def test_buffer_per_route_with_its_own_limit() -> None:
    config = load_yaml(EXAMPLE % "buffer: {max_request_bytes: 1024}")
    route = config.listeners[0].http_connection_manager.route_config.virtual_hosts[0].routes[0]
    assert "BufferConfig(max_request_bytes=1024)" in repr(route)


def _refused(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_yaml(text)
    return [path for path, _ in info.value.errors]


def test_the_rest_of_the_overload_manager_is_refused_by_name() -> None:
    text = EXAMPLE.replace(
        "  resource_monitors:\n",
        "  actions:\n  - name: envoy.overload_actions.stop_accepting_requests\n"
        "  resource_monitors:\n"
        "  - name: envoy.resource_monitors.fixed_heap\n"
        "    typed_config:\n"
        '      "@type": type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig\n'
        "      max_heap_size_bytes: 2147483648\n",
    )
    assert _refused(text % "disabled: true") == [
        "overload_manager.actions",
        "overload_manager.resource_monitors[0]",
    ]


def test_connection_limit_needs_one_filter_chain_and_an_hcm_after_it() -> None:
    text = EXAMPLE.replace("          max_connections: 100\n", "")
    assert "max_connections" in " ".join(_refused(text % "disabled: true"))


def test_per_worker_share_rounds_up() -> None:
    assert [share(1000, n) for n in (1, 2, 3)] == [1000, 500, 334]
    assert share(1, 2) == 1
