"""Conversion of a cluster's load balancing (``lb_policy``, ``least_request_lb_config``,
``round_robin_lb_config``, ``common_lb_config``) and ``outlier_detection`` (part of ``convert``).
Same rules: Envoy's defaults, and what udsproxy does not do is refused by name. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from udsproxy.config.convert_matchers import Reporter
from udsproxy.config.schema import OutlierDetection
from udsproxy.config.validate import join

__all__ = ["LB_FIELDS", "lb_options", "outlier_detection"]

Node = Mapping[str, Any]

# The cluster fields this module reads (convert.cluster lets them through to it).
LB_FIELDS = (
    "lb_policy", "least_request_lb_config", "round_robin_lb_config", "common_lb_config",
    "outlier_detection",
)  # fmt: skip

_POLICIES = ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM")
_POLICY_NOTES = {
    "RING_HASH": "no consistent hashing (route hash_policy is not supported either)",
    "MAGLEV": "no consistent hashing (route hash_policy is not supported either)",
    "CLUSTER_PROVIDED": "no cluster type provides its own load balancer",
    "LOAD_BALANCING_POLICY_CONFIG": "no load balancer extensions",
}
_OUTLIER_FIELDS = (
    "consecutive_5xx", "consecutive_gateway_failure", "consecutive_local_origin_failure",
    "split_external_local_origin_errors", "interval", "base_ejection_time", "max_ejection_time",
    "max_ejection_time_jitter", "max_ejection_percent", "always_eject_one_host",
    "enforcing_consecutive_5xx", "enforcing_consecutive_gateway_failure",
    "enforcing_consecutive_local_origin_failure", "successful_active_health_check_uneject_host",
)  # fmt: skip
# Statistical detectors udsproxy does not run: accepted only where they say "off".
_STATISTICAL = (
    "enforcing_success_rate", "enforcing_local_origin_success_rate",
    "enforcing_failure_percentage", "enforcing_failure_percentage_local_origin",
)  # fmt: skip
_STATISTICAL_NOTE = (
    "no success-rate or failure-percentage outlier detection, only the consecutive-failure"
    " detectors; 0 (off) is accepted"
)
_DEFAULT_MAX_EJECTION = 300.0


def lb_options(c: Reporter, node: Node, path: str) -> dict[str, Any]:
    """schema.Cluster's lb_policy, choice_count and healthy_panic_threshold."""
    kw: dict[str, Any] = {}
    policy = node.get("lb_policy", "ROUND_ROBIN")
    if policy in _POLICIES:
        kw["lb_policy"] = policy
    else:
        note = f"only {', '.join(_POLICIES)}"
        if policy in _POLICY_NOTES:
            note += f": {_POLICY_NOTES[policy]}"
        c.refuse(join(path, "lb_policy"), f"'{policy}'", note)
    if "round_robin_lb_config" in node:
        c.only(node["round_robin_lb_config"], join(path, "round_robin_lb_config"), ())
    least = node.get("least_request_lb_config")
    if least is not None:
        least_path = join(path, "least_request_lb_config")
        c.only(least, least_path, ("choice_count", "active_request_bias"))
        if "choice_count" in least:
            kw["choice_count"] = least["choice_count"]
        bias = least.get("active_request_bias")
        if bias is not None and bias.get("default_value", 0.0) != 1.0:
            c.refuse(
                join(least_path, "active_request_bias"),
                f"{bias.get('default_value', 0.0):g}",
                "only 1.0, Envoy's default: weight / (active requests + 1)",
            )
        if policy != "LEAST_REQUEST":
            c.error(least_path, f"is for lb_policy LEAST_REQUEST, not {policy}")
    common = node.get("common_lb_config")
    if common is not None:
        common_path = join(path, "common_lb_config")
        c.only(common, common_path, ("healthy_panic_threshold", "ignore_new_hosts_until_first_hc"))
        threshold = common.get("healthy_panic_threshold")
        if threshold is not None:
            kw["healthy_panic_threshold"] = float(threshold.get("value", 0.0))
        if common.get("ignore_new_hosts_until_first_hc"):  # acts with health_checks only
            kw["ignore_new_hosts_until_first_hc"] = True
    return kw


def outlier_detection(c: Reporter, node: Node, path: str) -> OutlierDetection:
    """schema.OutlierDetection from a cluster's outlier_detection (Envoy's defaults)."""
    fields = (*_OUTLIER_FIELDS, *_STATISTICAL)
    c.only(node, path, fields)
    for name in _STATISTICAL:
        if node.get(name, 0):
            c.refuse(join(path, name), f"{node[name]}", _STATISTICAL_NOTE)
    kw = {name: node[name] for name in _OUTLIER_FIELDS if name in node}
    base = float(kw.get("base_ejection_time", 30.0))
    if "max_ejection_time" in kw:
        if kw["max_ejection_time"] < base:
            c.error(
                join(path, "max_ejection_time"),
                f"{kw['max_ejection_time']:g}s is below base_ejection_time {base:g}s"
                " (Envoy's rule: it cannot be smaller)",
            )
    else:
        kw["max_ejection_time"] = max(_DEFAULT_MAX_EJECTION, base)  # Envoy: whichever is larger
    return OutlierDetection(**kw)
