"""The connection manager's timeouts (issue 11): request_headers_timeout, max_connection_duration
with drain_timeout and http1_safe_max_connection_duration; what stays refused by name; and the
request codec starting streams at a head's first byte where the head is timed. No sockets."""

from __future__ import annotations

import textwrap
from types import SimpleNamespace

import pytest
import yaml

from udsproxy.codec.request import OK, RequestDecoder, RequestHead
from udsproxy.config.load import load_tree
from udsproxy.config.schema import HttpConnectionManager
from udsproxy.errors import ConfigError

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
HCM_PATH = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"


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
    endpoint = {"endpoint": {"address": {"pipe": {"path": "/a"}}}}
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "l",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
                    "filter_chains": [{"filters": [{"name": "hcm", "typed_config": config}]}],
                }
            ],
            "clusters": [
                {
                    "name": "c",
                    "load_assignment": {
                        "cluster_name": "c",
                        "endpoints": [{"lb_endpoints": [endpoint]}],
                    },
                }
            ],
        }
    }


def hcm_of(tree: dict[str, object]) -> HttpConnectionManager:
    return load_tree(tree).listeners[0].http_connection_manager


def errors(tree: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_tree(tree)
    return [f"{path}: {message}" for path, message in info.value.errors]


def test_defaults_are_envoys() -> None:
    hcm = hcm_of(bootstrap())
    # udsproxy's one deviation here (README, Deviations from Envoy): Envoy's default is none
    assert hcm.request_headers_timeout == 10.0
    assert hcm.delayed_close_timeout == 1.0
    assert hcm.max_requests_per_connection == 0  # no limit
    assert hcm.max_connection_duration == 0.0  # none
    assert hcm.drain_timeout == 5.0
    assert hcm.http1_safe_max_connection_duration is False
    assert hcm.stream_idle_timeout == 300.0
    assert hcm.request_timeout == 0.0


def test_the_fields_convert() -> None:
    hcm = hcm_of(
        bootstrap(
            request_headers_timeout="10s",
            drain_timeout="2.5s",
            http1_safe_max_connection_duration=True,
            stream_idle_timeout="0s",
            common_http_protocol_options={"idle_timeout": "60s", "max_connection_duration": "900s"},
        )
    )
    assert (hcm.request_headers_timeout, hcm.drain_timeout) == (10.0, 2.5)
    assert (hcm.max_connection_duration, hcm.idle_timeout) == (900.0, 60.0)
    assert hcm.http1_safe_max_connection_duration is True
    assert hcm.stream_idle_timeout == 0.0


# The connection manager of Envoy's edge best practices (docs/root/configuration/best_practices/
# edge.rst, the Google VRP edge server) without its HTTP/2 options, plus the fields Envoy's docs
# describe but give no YAML for: request_headers_timeout, max_connection_duration, drain_timeout.
_EDGE = """
stat_prefix: ingress_http
use_remote_address: true
normalize_path: true
merge_slashes: true
path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT
common_http_protocol_options:
  idle_timeout: 3600s  # 1 hour
  headers_with_underscores_action: REJECT_REQUEST
  max_connection_duration: 600s
stream_idle_timeout: 300s  # 5 mins, must be disabled for long-lived and streaming requests
request_timeout: 300s  # 5 mins, must be disabled for long-lived and streaming requests
request_headers_timeout: 10s
drain_timeout: 5s
route_config:
  virtual_hosts:
  - name: default
    domains: ["*"]
    routes:
    - match: {prefix: "/"}
      route:
        cluster: c
        idle_timeout: 15s  # must be disabled for long-lived and streaming requests
http_filters:
- name: envoy.filters.http.router
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""


def test_envoys_edge_example_loads() -> None:
    fields = yaml.safe_load(textwrap.dedent(_EDGE))
    hcm = hcm_of(bootstrap(**fields))
    assert (hcm.request_headers_timeout, hcm.request_timeout) == (10.0, 300.0)
    assert (hcm.max_connection_duration, hcm.drain_timeout) == (600.0, 5.0)
    route = hcm.route_config.virtual_hosts[0].routes[0].route
    assert route is not None and route.idle_timeout == 15.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("stream_flush_timeout", "1s"),
        ("drain_timeout_jitter", {"value": 10}),
        ("max_request_headers_kb", None),  # (supported: the control case below)
    ],
)
def test_other_connection_timeouts_stay_refused_by_name(field: str, value: object) -> None:
    if value is None:
        hcm_of(bootstrap(max_request_headers_kb=80))
        return
    (line,) = errors(bootstrap(**{field: value}))
    assert line == f"{HCM_PATH}.{field}: not supported by udsproxy"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_stream_duration", "10s"),
        ("max_connection_duration_jitter", {"value": 10}),
    ],
)
def test_other_protocol_options_stay_refused_by_name(field: str, value: object) -> None:
    options = {"max_connection_duration": "60s", field: value}
    (line,) = errors(bootstrap(common_http_protocol_options=options))
    assert line == f"{HCM_PATH}.common_http_protocol_options.{field}: not supported by udsproxy"


def test_an_explicit_zero_turns_the_slow_client_defences_off() -> None:
    hcm = hcm_of(bootstrap(request_headers_timeout="0s", delayed_close_timeout="0s"))
    assert (hcm.request_headers_timeout, hcm.delayed_close_timeout) == (0.0, 0.0)


def test_the_slow_client_fields_convert() -> None:
    options = {"max_requests_per_connection": 100}
    hcm = hcm_of(
        bootstrap(
            request_headers_timeout="60s",
            delayed_close_timeout="0.25s",
            common_http_protocol_options=options,
        )
    )
    assert (hcm.request_headers_timeout, hcm.delayed_close_timeout) == (60.0, 0.25)
    assert hcm.max_requests_per_connection == 100


def test_a_negative_timeout_is_refused() -> None:
    (line,) = errors(bootstrap(request_headers_timeout="-1s"))
    assert line.startswith(f"{HCM_PATH}.request_headers_timeout: ")


# -- the codec: a stream from a head's first byte -----------------------------------------------


class _Server:
    def __init__(self) -> None:
        self.begun: list[RequestHead] = []
        self.heads: list[RequestHead] = []

    def new_stream(self) -> RequestHead:
        s = _Head()
        self.begun.append(s)
        return s

    def on_request_headers(self, s: RequestHead) -> None:
        self.heads.append(s)


class _Head(RequestHead):
    __slots__ = ("complete",)

    def __init__(self) -> None:
        super().__init__()
        self.complete = False

    def decode_data(self, data: bytes) -> None:
        pass

    def decode_complete(self) -> None:
        self.complete = True


def _decoder(first_byte: bool) -> tuple[RequestDecoder, _Server]:
    server = _Server()
    stats = SimpleNamespace(
        downstream_rq_non_relative_path=0,
        http1_dropped_headers_with_underscores=0,
        http1_requests_rejected_with_underscores_in_headers=0,
    )
    if first_byte:
        # as a connection with request_headers_timeout makes it
        return RequestDecoder(server, 8192, 100, stats, True), server
    return RequestDecoder(server, 8192, 100, stats), server


def test_a_head_has_its_stream_from_its_first_byte() -> None:
    codec, server = _decoder(True)
    assert codec.feed(b"G") == OK
    assert codec.cur is not None and codec.in_head and len(server.begun) == 1
    assert codec.feed(b"ET /a HTTP/1.1\r\nHost: x\r\n\r\n") == OK
    assert codec.cur is None and len(server.begun) == 1  # the same stream, completed
    (head,) = server.heads
    assert head.path == b"/a" and head.method == b"GET"


def test_without_it_a_stream_begins_at_the_url() -> None:
    codec, server = _decoder(False)
    assert codec.feed(b"GE") == OK
    assert codec.cur is None and not server.begun
    assert codec.feed(b"T /a HTTP/1.1\r\nHost: x\r\n\r\n") == OK
    assert len(server.heads) == 1


def test_no_stream_for_the_bytes_between_messages() -> None:
    codec, server = _decoder(True)
    body = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab"
    assert codec.feed(body) == OK
    assert codec.feed(b"\r\n") == OK  # a CRLF some clients send after a body
    assert codec.cur is None and len(server.begun) == 1
    assert codec.feed(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\nHo") == OK
    assert [h.path for h in server.heads] == [b"/a", b"/b"]
    assert codec.cur is not None and codec.in_head and len(server.begun) == 3


def test_after_connection_close_nothing_begins() -> None:
    codec, server = _decoder(True)
    codec.feed(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    codec.feed(b"GET /b HTTP/1.1\r\n")
    assert len(server.begun) == 1 and codec.unread


def test_route_and_upstream_duration_limits_stay_refused_by_name() -> None:
    tree = bootstrap()
    listeners = tree["static_resources"]["listeners"]  # type: ignore[index]
    hcm = listeners[0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["max_stream_duration"] = {
        "max_stream_duration": "10s"
    }
    options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    tree["static_resources"]["clusters"][0]["typed_extension_protocol_options"] = {  # type: ignore[index]
        options: {
            "@type": "type.googleapis.com/" + options,
            "common_http_protocol_options": {"max_connection_duration": "60s"},
            "explicit_http_config": {"http_protocol_options": {}},
        }
    }
    lines = errors(tree)
    route = f"{HCM_PATH}.route_config.virtual_hosts[0].routes[0].route.max_stream_duration"
    upstream = (
        f'static_resources.clusters[0].typed_extension_protocol_options["{options}"]'
        ".common_http_protocol_options.max_connection_duration"
    )
    assert sorted(lines) == sorted(
        [f"{route}: not supported by udsproxy", f"{upstream}: not supported by udsproxy"]
    ), lines
