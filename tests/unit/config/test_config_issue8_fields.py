"""Fields real Envoy configs use that udsproxy now takes (issue 8, item 5: the lead's part)."""

from __future__ import annotations

from pathlib import Path

import pytest

from udsproxy.config.datasource import read
from udsproxy.config.load import load_and_resolve, load_tree
from udsproxy.config.schema import AccessLog, RuntimeLayer
from udsproxy.errors import ConfigError

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
STREAM = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3."


def bootstrap(**hcm: object) -> dict[str, object]:
    config = {
        "@type": HCM + "HttpConnectionManager",
        "stat_prefix": "ingress",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "a",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}}],
                }
            ]
        },
        "http_filters": [{"name": "envoy.filters.http.router"}],
        **hcm,
    }
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "l",
                    "traffic_direction": "OUTBOUND",  # inert
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
                    "filter_chains": [{"filters": [{"name": "hcm", "typed_config": config}]}],
                }
            ],
            "clusters": [
                {
                    "name": "c",
                    "load_assignment": {
                        "cluster_name": "c",
                        "endpoints": [
                            {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": "/a"}}}}]}
                        ],
                    },
                }
            ],
        }
    }


def errors(tree: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_tree(tree)
    return [f"{path}: {message}" for path, message in info.value.errors]


def test_connection_manager_options() -> None:
    tree = bootstrap(
        request_timeout="10s",
        generate_request_id=False,
        normalize_path=True,
        merge_slashes=True,
        path_with_escaped_slashes_action="UNESCAPE_AND_REDIRECT",
        common_http_protocol_options={"headers_with_underscores_action": "REJECT_REQUEST"},
    )
    hcm = load_tree(tree).listeners[0].http_connection_manager
    assert (hcm.request_timeout, hcm.generate_request_id) == (10.0, False)
    assert (hcm.normalize_path, hcm.merge_slashes) == (True, True)
    assert hcm.path_with_escaped_slashes_action == "UNESCAPE_AND_REDIRECT"
    assert hcm.headers_with_underscores_action == "REJECT_REQUEST"
    defaults = load_tree(bootstrap()).listeners[0].http_connection_manager
    assert (defaults.generate_request_id, defaults.headers_with_underscores_action) == (
        True,
        "ALLOW",
    )
    assert defaults.path_with_escaped_slashes_action == "KEEP_UNCHANGED"


@pytest.mark.parametrize(("kind", "path"), [("Stdout", "/dev/stdout"), ("Stderr", "/dev/stderr")])
def test_stream_access_loggers(kind: str, path: str) -> None:
    log = {
        "name": "envoy.access_loggers." + kind.lower(),
        "typed_config": {
            "@type": STREAM + kind + "AccessLog",
            "log_format": {"text_format_source": {"inline_string": "%PROTOCOL%\n"}},
        },
    }
    hcm = load_tree(bootstrap(access_log=[log])).listeners[0].http_connection_manager
    assert hcm.access_log == (AccessLog(path=path, text_format="%PROTOCOL%\n"),)
    log["typed_config"] = {"@type": STREAM + kind + "AccessLog"}  # Envoy's default format
    hcm = load_tree(bootstrap(access_log=[log])).listeners[0].http_connection_manager
    assert hcm.access_log == (AccessLog(path=path),)


def test_a_bad_format_on_a_stream_logger_is_an_error() -> None:
    log = {
        "name": "stdout",
        "typed_config": {
            "@type": STREAM + "StdoutAccessLog",
            "log_format": {"text_format_source": {"inline_string": "%NOPE%"}},
        },
    }
    (line,) = errors(bootstrap(access_log=[log]))
    assert line.startswith(
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.access_log[0]"
        ".typed_config.log_format: "
    )


def test_admin_access_logs() -> None:
    tree = bootstrap()
    tree["admin"] = {
        "access_log_path": "/dev/null",
        "access_log": [{"name": "x", "typed_config": {"@type": STREAM + "StdoutAccessLog"}}],
    }
    loaded = load_tree(tree)
    assert loaded.admin is not None
    assert loaded.admin.access_log == (AccessLog(path="/dev/stdout"), AccessLog(path="/dev/null"))
    assert "admin.access_log_path: deprecated in Envoy; use access_log" in loaded.warnings


def test_layered_runtime() -> None:
    tree = bootstrap()
    tree["layered_runtime"] = {
        "layers": [
            {"name": "s", "static_layer": {"overload": {"global_downstream_max_connections": 5}}},
            {
                "name": "d",
                "disk_layer": {"symlink_root": "/srv/runtime/current", "subdirectory": "envoy"},
            },
            {"name": "a", "admin_layer": {}},
        ]
    }
    assert load_tree(tree).layered_runtime == (
        RuntimeLayer(
            name="s", kind="static", values={"overload.global_downstream_max_connections": "5"}
        ),
        RuntimeLayer(
            name="d", kind="disk", symlink_root="/srv/runtime/current", subdirectory="envoy"
        ),
        RuntimeLayer(name="a", kind="admin"),
    )


def test_runtime_layers_udsproxy_cannot_read_are_refused() -> None:
    tree = bootstrap()
    tree["layered_runtime"] = {
        "layers": [
            {"name": "r", "rtds_layer": {"name": "x"}},
            {"name": "d", "disk_layer": {"symlink_root": "/x", "append_service_cluster": True}},
        ]
    }
    assert errors(tree) == [
        "layered_runtime.layers[0].rtds_layer: not supported by udsproxy",
        "layered_runtime.layers[1].disk_layer.append_service_cluster: not supported by udsproxy",
    ]


def test_route_idle_timeout() -> None:
    tree = bootstrap()
    listeners = tree["static_resources"]["listeners"]  # type: ignore[index]
    hcm = listeners[0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["idle_timeout"] = "0s"
    route = load_tree(tree).listeners[0].http_connection_manager.route_config.virtual_hosts[0]
    assert route.routes[0].route.idle_timeout == 0.0  # 0 disables, unlike "unset"


def direct_response_route(body: dict[str, str]) -> dict[str, object]:
    tree = bootstrap()
    listeners = tree["static_resources"]["listeners"]  # type: ignore[index]
    routes = listeners[0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"][
        "virtual_hosts"
    ][0]["routes"]
    routes.insert(0, {"match": {"path": "/x"}, "direct_response": {"status": 200, "body": body}})
    return tree


def test_a_response_body_file_is_read_and_checked_at_load(tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * 5000)
    with pytest.raises(ConfigError) as info:
        load_and_resolve(direct_response_route({"filename": str(big)}))
    body_path = (
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config"
        ".virtual_hosts[0].routes[0].direct_response.body"
    )
    assert info.value.errors == [(body_path, "response body size is 5000 bytes; maximum is 4096")]
    small = tmp_path / "small.txt"
    small.write_bytes(b"hello")
    loaded = load_and_resolve(direct_response_route({"filename": str(small)}))
    direct = loaded.listeners[0].http_connection_manager.route_config.virtual_hosts[0]
    body = direct.routes[0].direct_response.body  # type: ignore[union-attr]
    assert body is not None and (body.kind, read(body)) == ("inline_bytes", b"hello")
    # the file changed: the config is a different one, so a reload rebuilds the routes
    small.write_bytes(b"hello again")
    assert load_and_resolve(direct_response_route({"filename": str(small)})) != loaded
