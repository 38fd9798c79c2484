"""Conversion of a cluster's ``health_checks`` and its endpoints' ``health_check_config`` (part
of ``convert``). Envoy's required fields and defaults; what udsproxy does not do is refused by
name. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from udsproxy.config import convert_shaping as shaping
from udsproxy.config.convert_matchers import string_matcher
from udsproxy.config.schema import HealthCheck
from udsproxy.config.validate import item, join

__all__ = ["ENDPOINT_FIELDS", "endpoint_health", "health_checks"]

Node = Mapping[str, Any]

_DEFAULT_NO_TRAFFIC_INTERVAL = 60.0  # Envoy's no_traffic_interval default
_INTERVALS = (
    "no_traffic_interval", "no_traffic_healthy_interval", "unhealthy_interval",
    "unhealthy_edge_interval", "healthy_edge_interval",
)  # fmt: skip
_FIELDS = (
    "timeout", "interval", "interval_jitter", "interval_jitter_percent", "initial_jitter",
    "unhealthy_threshold", "healthy_threshold", "reuse_connection", "http_health_check",
    *_INTERVALS,
)  # fmt: skip
_OTHER_CHECKERS = {
    "tcp_health_check": "udsproxy checks HTTP/1.1 upstreams with http_health_check",
    "grpc_health_check": "udsproxy proxies HTTP/1.1; gRPC needs HTTP/2",
    "custom_health_check": "no health checker extensions",
}
_NO_EVENT_LOG = "udsproxy writes no health check event log"
_NOTES = {
    "event_log_path": _NO_EVENT_LOG,
    "event_logger": _NO_EVENT_LOG,
    "event_service": _NO_EVENT_LOG,
    "always_log_health_check_failures": _NO_EVENT_LOG,
    "always_log_health_check_success": _NO_EVENT_LOG,
    "alt_port": "checks go to the endpoint's own address",
    "tls_options": "health checks use the cluster's transport socket as it is",
    "transport_socket_match_criteria": "no transport_socket_matches",
}
_HTTP_FIELDS = (
    "path", "host", "method", "expected_statuses", "retriable_statuses",
    "request_headers_to_add", "request_headers_to_remove", "service_name_matcher",
)  # fmt: skip
_HTTP_NOTES = {
    "send": "no request body in health checks",
    "receive": "responses are checked by status only",
    "response_buffer_size": "responses are checked by status only",
    "codec_client_type": "udsproxy's upstreams speak HTTP/1.1 (HTTP1, the default, only)",
}
_METHODS = ("GET", "HEAD")
# Endpoint.HealthCheckConfig
ENDPOINT_FIELDS = ("hostname", "disable_active_health_check")
_ENDPOINT_NOTES = {
    "port_value": "checks go to the endpoint's own address (a pipe has no port)",
    "address": "checks go to the endpoint's own address",
}


def health_checks(c: shaping.Converter, checks: list[Node], path: str) -> HealthCheck | None:
    """The one health check of a cluster (Envoy's ``health_checks`` list)."""
    if len(checks) > 1:
        c.refuse(
            item(path, 1),
            "a second health check",
            "one per cluster; its http_health_check decides the host's health",
        )
    return health_check(c, checks[0], item(path, 0)) if checks else None


def health_check(c: shaping.Converter, node: Node, path: str) -> HealthCheck | None:
    c.only(node, path, (*_FIELDS, *_OTHER_CHECKERS, *_NOTES))
    for key, note in (*_OTHER_CHECKERS.items(), *_NOTES.items()):
        if key in node:
            c.refuse(join(path, key), note=note)
    kw: dict[str, Any] = {}
    ok = True
    for key in ("timeout", "interval"):
        value = node.get(key)
        if value is None or value <= 0:
            c.error(join(path, key), "is required and must be greater than 0s (Envoy's rule)")
            ok = False
        else:
            kw[key] = float(value)
    for key in ("unhealthy_threshold", "healthy_threshold"):
        if key not in node:
            c.error(join(path, key), "is required (Envoy's rule)")
            ok = False
        else:
            kw[key] = int(node[key])
    for key in _INTERVALS:
        if key in node and node[key] <= 0:
            c.error(join(path, key), "must be greater than 0s (Envoy's rule)")
            ok = False
    for key in ("interval_jitter", "initial_jitter", "interval_jitter_percent"):
        if key in node:
            kw[key] = node[key]
    if "reuse_connection" in node:
        kw["reuse_connection"] = bool(node["reuse_connection"])
    http = node.get("http_health_check")
    if http is None:
        if not any(key in node for key in _OTHER_CHECKERS):
            c.error(join(path, "http_health_check"), "is required (one health checker)")
        return None
    http_kw = http_health_check(c, http, join(path, "http_health_check"))
    if http_kw is None or not ok:
        return None
    interval: float = kw["interval"]
    # Envoy's defaults, each from another interval: resolved once here
    no_traffic = float(node.get("no_traffic_interval", _DEFAULT_NO_TRAFFIC_INTERVAL))
    unhealthy = float(node.get("unhealthy_interval", interval))
    kw.update(
        no_traffic_interval=no_traffic,
        no_traffic_healthy_interval=float(node.get("no_traffic_healthy_interval", no_traffic)),
        unhealthy_interval=unhealthy,
        unhealthy_edge_interval=float(node.get("unhealthy_edge_interval", unhealthy)),
        healthy_edge_interval=float(node.get("healthy_edge_interval", interval)),
    )
    return HealthCheck(**kw, **http_kw)


def http_health_check(c: shaping.Converter, node: Node, path: str) -> dict[str, Any] | None:
    c.only(node, path, (*_HTTP_FIELDS, *_HTTP_NOTES))
    ok = True
    for key, note in _HTTP_NOTES.items():
        if key in node:
            c.refuse(join(path, key), note=note)
            ok = False
    kw: dict[str, Any] = {}
    request_path: str = node.get("path", "")
    if not request_path:
        c.error(join(path, "path"), "is required and must not be empty (Envoy's rule)")
        ok = False
    elif any(ch in request_path for ch in " \r\n\0\t"):
        c.error(join(path, "path"), "must be a valid request target (no space or control)")
        ok = False
    kw["path"] = request_path
    host: str = node.get("host", "")
    if any(ch in host for ch in "\r\n\0"):
        c.error(join(path, "host"), "header values may not contain CR, LF or NUL")
        ok = False
    kw["host"] = host
    method = node.get("method", "METHOD_UNSPECIFIED")
    if method == "METHOD_UNSPECIFIED":
        method = "GET"  # Envoy's default
    if method not in _METHODS:
        c.refuse(join(path, "method"), f"'{method}'", "only GET and HEAD: checks send no body")
        ok = False
    kw["method"] = method
    for key in ("expected_statuses", "retriable_statuses"):
        if key in node:
            ranges = status_ranges(c, node[key], join(path, key))
            if ranges is None:
                ok = False
            elif ranges:
                kw[key] = ranges
    if "request_headers_to_add" in node:
        add_path = join(path, "request_headers_to_add")
        options = shaping.header_options(c, node["request_headers_to_add"], add_path, request=True)
        for i, option in enumerate(options):
            if "%" in option.value:
                c.refuse(
                    join(item(add_path, i), "header.value"),
                    "a format command",
                    "a health check has no request to format from: literal values only",
                )
                ok = False
        kw["request_headers_to_add"] = options
    if "request_headers_to_remove" in node:
        remove_path = join(path, "request_headers_to_remove")
        names = shaping.header_names(c, node["request_headers_to_remove"], remove_path)
        kw["request_headers_to_remove"] = names
    if "service_name_matcher" in node:
        matcher_path = join(path, "service_name_matcher")
        matcher = string_matcher(c, node["service_name_matcher"], matcher_path)
        if matcher is None:
            ok = False
        kw["service_name_matcher"] = matcher
    return kw if ok else None


def status_ranges(
    c: shaping.Converter, ranges: list[Node], path: str
) -> tuple[tuple[int, int], ...] | None:
    """Int64Ranges [start, end) of statuses, checked as Envoy checks them."""
    out: list[tuple[int, int]] = []
    ok = True
    for i, node in enumerate(ranges):
        range_path = item(path, i)
        c.only(node, range_path, ("start", "end"))
        start, end = int(node.get("start", 0)), int(node.get("end", 0))
        if start >= end:
            problem = f"expecting start < end, but found start={start} and end={end}"
        elif start < 100:
            problem = f"expecting start >= 100, but found start={start}"
        elif end > 600:
            problem = f"expecting end <= 600, but found end={end}"
        else:
            out.append((start, end))
            continue
        c.error(range_path, f"invalid http status range: {problem}")
        ok = False
    return tuple(out) if ok else None


def endpoint_health(
    c: shaping.Converter, node: Node | None, path: str, checked: bool
) -> dict[str, Any]:
    """An endpoint's health_check_config, as Endpoint fields. Without health checks on its
    cluster Envoy ignores it; so does udsproxy."""
    if node is None or not checked:
        return {}
    c.only(node, path, (*ENDPOINT_FIELDS, *_ENDPOINT_NOTES))
    for key, note in _ENDPOINT_NOTES.items():
        if key in node:
            c.refuse(join(path, key), note=note)
    out: dict[str, Any] = {}
    hostname: str = node.get("hostname", "")
    if any(ch in hostname for ch in "\r\n\0"):
        c.error(join(path, "hostname"), "header values may not contain CR, LF or NUL")
    elif hostname:
        out["health_check_hostname"] = hostname
    if node.get("disable_active_health_check"):
        out["disable_active_health_check"] = True
    return out
