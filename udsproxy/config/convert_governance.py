"""Conversion of a route's ``retry_policy`` and a cluster's ``circuit_breakers`` (part of
``convert``). Same rules: Envoy's defaults, and what udsproxy does not do is refused by name.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from udsproxy.config.convert_matchers import Reporter, header_matcher
from udsproxy.config.schema import CircuitBreakerThresholds, HeaderMatcher, RetryPolicy
from udsproxy.config.validate import item, join

__all__ = ["RETRY_ON", "circuit_breakers", "retry_policy"]

Node = Mapping[str, Any]

# retry_on conditions udsproxy acts on. refused-stream and http3-post-connect-failure name
# HTTP/2 and HTTP/3 events an HTTP/1.1 upstream never produces: accepted, they never fire.
RETRY_ON = frozenset(
    {
        "5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx",
        "retriable-status-codes", "envoy-ratelimited", "refused-stream",
        "http3-post-connect-failure",
    }
)  # fmt: skip
_GRPC_ON = frozenset(
    {"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"}
)
_PREVIOUS_HOSTS = "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
_PREVIOUS_HOSTS_NAME = "envoy.retry_host_predicates.previous_hosts"
_DEFAULT_BASE = 0.025  # Envoy's retry back-off: 25 ms base, 10 times that at most


def retry_policy(c: Reporter, node: Node, path: str) -> RetryPolicy:
    c.only(
        node,
        path,
        (
            "retry_on", "num_retries", "per_try_timeout", "retry_back_off",
            "retriable_status_codes", "retriable_request_headers", "retry_host_predicate",
            "host_selection_retry_max_attempts",
        ),
    )  # fmt: skip
    on_path = join(path, "retry_on")
    conditions: list[str] = []
    for word in str(node.get("retry_on", "")).split(","):
        word = word.strip()
        if not word:
            continue
        if word in RETRY_ON:
            conditions.append(word)
        elif word in _GRPC_ON:
            c.refuse(on_path, f"retry_on '{word}'", "a gRPC condition: udsproxy proxies HTTP/1.1")
        elif word in ("retriable-headers", "reset-before-request"):
            c.refuse(on_path, f"retry_on '{word}'")
        else:
            c.error(on_path, f"unknown retry_on condition '{word}'")
    kw: dict[str, Any] = {"retry_on": tuple(conditions)}
    if "num_retries" in node:
        kw["num_retries"] = int(node["num_retries"])
    if "per_try_timeout" in node:
        kw["per_try_timeout"] = float(node["per_try_timeout"])
    back_off = node.get("retry_back_off")
    if back_off is not None:
        bo_path = join(path, "retry_back_off")
        c.only(back_off, bo_path, ("base_interval", "max_interval"))
        base = float(back_off.get("base_interval", 0.0))
        top = float(back_off.get("max_interval", base * 10))
        if base <= 0:
            c.error(join(bo_path, "base_interval"), "is required and must be greater than 0")
        elif top < base:
            c.error(
                join(bo_path, "max_interval"),
                f"{top:g}s is below base_interval {base:g}s; it must be greater or equal",
            )
        kw["retry_back_off"] = (base, top)
    codes = tuple(int(x) for x in node.get("retriable_status_codes", ()))
    kw["retriable_status_codes"] = codes
    headers_path = join(path, "retriable_request_headers")
    matchers: list[HeaderMatcher] = []
    for i, x in enumerate(node.get("retriable_request_headers", ())):
        m = header_matcher(c, x, item(headers_path, i))
        if m is not None:
            matchers.append(m)
    kw["retriable_request_headers"] = tuple(matchers)
    predicates_path = join(path, "retry_host_predicate")
    for i, predicate in enumerate(node.get("retry_host_predicate", ())):
        kind = predicate.get("typed_config", {}).get("@type")
        if kind != _PREVIOUS_HOSTS and predicate.get("name") != _PREVIOUS_HOSTS_NAME:
            what = f"retry host predicate '{predicate.get('name') or kind or ''}'"
            c.refuse(item(predicates_path, i), what, "udsproxy always avoids the previous host")
    return RetryPolicy(**kw)


def circuit_breakers(c: Reporter, node: Node, path: str) -> tuple[CircuitBreakerThresholds, ...]:
    c.only(node, path, ("thresholds",))
    out: list[CircuitBreakerThresholds] = []
    seen: set[str] = set()
    thresholds_path = join(path, "thresholds")
    for i, t in enumerate(node.get("thresholds", ())):
        t_path = item(thresholds_path, i)
        c.only(
            t,
            t_path,
            (
                "priority", "max_connections", "max_pending_requests", "max_requests",
                "max_retries", "track_remaining",
            ),
        )  # fmt: skip
        priority = str(t.get("priority", "DEFAULT"))
        if priority in seen:
            c.error(join(t_path, "priority"), f"priority {priority} is set twice")
        seen.add(priority)
        kw = {
            k: int(t[k])
            for k in ("max_connections", "max_pending_requests", "max_requests", "max_retries")
            if k in t
        }
        out.append(
            CircuitBreakerThresholds(
                priority=priority, track_remaining=bool(t.get("track_remaining", False)), **kw
            )
        )
    return tuple(out)
