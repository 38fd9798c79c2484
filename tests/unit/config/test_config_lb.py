"""convert: a cluster's load balancing and outlier_detection (convert_lb), Envoy's defaults and
Envoy's own examples; what udsproxy does not do refused by name."""

from __future__ import annotations

from typing import Any

import pytest

from udsproxy.config.convert import REFUSED
from udsproxy.config.load import load_tree, load_yaml
from udsproxy.config.schema import OutlierDetection
from udsproxy.errors import ConfigError

HCM = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
C = "static_resources.clusters[0]"


def bootstrap(**fields: Any) -> dict[str, Any]:
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
    return {"static_resources": {"listeners": [listener], "clusters": [{"name": "c", **fields}]}}


PIPE = {
    "cluster_name": "c",
    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": "/s"}}}}]}],
}


def cluster(**fields: Any) -> Any:
    return load_tree(bootstrap(load_assignment=PIPE, **fields)).clusters[0]


def errors(**fields: Any) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        load_tree(bootstrap(load_assignment=PIPE, **fields))
    return caught.value.errors


def test_defaults_are_envoys() -> None:
    c = cluster()
    assert (c.lb_policy, c.choice_count, c.healthy_panic_threshold) == ("ROUND_ROBIN", 2, 50.0)
    assert c.outlier_detection is None
    od = cluster(outlier_detection={}).outlier_detection
    assert od == OutlierDetection()
    assert (od.consecutive_5xx, od.interval, od.base_ejection_time) == (5, 10.0, 30.0)
    assert (od.max_ejection_time, od.max_ejection_percent) == (300.0, 10)
    assert (od.enforcing_consecutive_5xx, od.enforcing_consecutive_gateway_failure) == (100, 0)


def test_policies_and_their_configs() -> None:
    c = cluster(lb_policy="LEAST_REQUEST", least_request_lb_config={"choice_count": 4})
    assert (c.lb_policy, c.choice_count) == ("LEAST_REQUEST", 4)
    assert cluster(lb_policy="RANDOM").lb_policy == "RANDOM"
    assert cluster(round_robin_lb_config={}).lb_policy == "ROUND_ROBIN"
    bias = {"active_request_bias": {"default_value": 1.0, "runtime_key": "k"}}
    assert cluster(lb_policy="LEAST_REQUEST", least_request_lb_config=bias).choice_count == 2


def test_panic_threshold_zero_and_other() -> None:
    zero = cluster(common_lb_config={"healthy_panic_threshold": {"value": 0}})
    assert zero.healthy_panic_threshold == 0.0
    assert (
        cluster(
            common_lb_config={"healthy_panic_threshold": {"value": 25.5}}
        ).healthy_panic_threshold
        == 25.5
    )


@pytest.mark.parametrize(
    ("fields", "path", "message"),
    [
        ({"lb_policy": "RING_HASH"}, "lb_policy", "'RING_HASH' " + REFUSED),
        ({"lb_policy": "CLUSTER_PROVIDED"}, "lb_policy", "'CLUSTER_PROVIDED' " + REFUSED),
        ({"ring_hash_lb_config": {}}, "ring_hash_lb_config", REFUSED),
        ({"common_lb_config": {"update_merge_window": "1s"}},
         "common_lb_config.update_merge_window", REFUSED),
        ({"common_lb_config": {"zone_aware_lb_config": {}}},
         "common_lb_config.zone_aware_lb_config", REFUSED),
        ({"lb_policy": "LEAST_REQUEST",
          "least_request_lb_config": {"slow_start_config": {}}},
         "least_request_lb_config.slow_start_config", REFUSED),
        ({"lb_policy": "LEAST_REQUEST", "least_request_lb_config":
          {"active_request_bias": {"default_value": 2.0, "runtime_key": "k"}}},
         "least_request_lb_config.active_request_bias", "2 " + REFUSED),
        ({"least_request_lb_config": {"choice_count": 3}}, "least_request_lb_config",
         "is for lb_policy LEAST_REQUEST, not ROUND_ROBIN"),
        ({"outlier_detection": {"enforcing_success_rate": 100}},
         "outlier_detection.enforcing_success_rate", "100 " + REFUSED),
        ({"outlier_detection": {"failure_percentage_threshold": 85}},
         "outlier_detection.failure_percentage_threshold", REFUSED),
        ({"outlier_detection": {"success_rate_stdev_factor": 1900}},
         "outlier_detection.success_rate_stdev_factor", REFUSED),
        ({"outlier_detection": {"base_ejection_time": "40s", "max_ejection_time": "10s"}},
         "outlier_detection.max_ejection_time", "10s is below base_ejection_time 40s"),
    ],
)  # fmt: skip
def test_refused_by_name(fields: dict[str, Any], path: str, message: str) -> None:
    [(where, said)] = errors(**fields)
    assert where == f"{C}.{path}"
    assert said.startswith(message), said


def test_statistical_detectors_off_are_accepted() -> None:
    od = cluster(outlier_detection={"enforcing_success_rate": 0}).outlier_detection
    assert od == OutlierDetection()


def test_max_ejection_time_is_at_least_base() -> None:
    od = cluster(outlier_detection={"base_ejection_time": "400s"}).outlier_detection
    assert od.max_ejection_time == 400.0


# Envoy's own examples: the outlier_detection of Envoy's health-check scenario (envoyproxy/
# katacoda-scenarios, detecting-service-health-with-healthchecks), the load balancing fields as
# Envoy's API docs spell them.
ENVOY_EXAMPLE = """
static_resources:
  clusters:
  - name: targetCluster
    connect_timeout: 0.25s
    type: STRICT_DNS
    dns_lookup_family: V4_ONLY
    lb_policy: LEAST_REQUEST
    least_request_lb_config:
      choice_count: 2
    common_lb_config:
      healthy_panic_threshold:
        value: 50.0
    load_assignment:
      cluster_name: targetCluster
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {address: 172.18.0.3, port_value: 80}
        - endpoint:
            address:
              socket_address: {address: 172.18.0.4, port_value: 80}
    outlier_detection:
        consecutive_5xx: "3"
        base_ejection_time: "30s"
"""


def test_envoys_examples_validate() -> None:
    [c] = load_yaml(ENVOY_EXAMPLE).clusters
    assert c.lb_policy == "LEAST_REQUEST" and c.healthy_panic_threshold == 50.0
    assert c.outlier_detection == OutlierDetection(consecutive_5xx=3)
