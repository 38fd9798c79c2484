"""Envoy's per-cluster ``version`` and ``warming_state`` gauges with a CDS file, the connection
histograms (``upstream_cx_connect_ms``, ``upstream_cx_length_ms``, ``downstream_cx_length_ms``)
and ``/stats/prometheus?filter=&usedonly``, with real processes: ``udsproxy -c FILE`` (one
process and two workers) in front of nginx, and a scripted upstream that never answers a health
check, so that a cluster added by a CDS update stays warming until its first check times out.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import SockPaths
from .faulty import FaultyUpstream
from .support import NginxInstance, bootstrap, cluster, get, listener, route, vhost, wait_until
from .test_admin import ADMIN, CLUSTER_TYPE, Scrape, running, scrape

pytestmark = pytest.mark.integration


def _write_cds(path: Path, version: str, clusters: list[dict[str, Any]]) -> None:
    doc = {
        "version_info": version,
        "resources": [{"@type": CLUSTER_TYPE, **c} for c in clusters],
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.replace(tmp, path)  # the writer recipe Envoy documents: rename over it


def _checked(name: str, socket_path: str) -> dict[str, Any]:
    """A cluster whose hosts warm until their first health check (1 s timeout) is done."""
    c = cluster(name, socket_path)
    c["health_checks"] = [
        {
            "timeout": "1s",
            "interval": "0.05s",
            "unhealthy_threshold": 1,
            "healthy_threshold": 1,
            "http_health_check": {"path": "/health"},
        }
    ]
    return c


def _gauge(s: Scrape, name: str, cluster_name: str) -> float | None:
    return s.value(f"envoy_cluster_{name}", {"envoy_cluster_name": cluster_name})


@pytest.mark.parametrize("concurrency", ["1", "2"])
def test_cds_clusters_publish_version_and_warming_state(
    tmp_path: Path, nginx: NginxInstance, sock_path: SockPaths, concurrency: str
) -> None:
    silent = FaultyUpstream(sock_path("silent"), ["hang"])  # accepts, never answers
    try:
        cds_path = tmp_path / "cds.yaml"
        _write_cds(cds_path, "1", [cluster("dyn", nginx.socket_path)])
        cfg = bootstrap([listener([vhost("all", [route("dyn", prefix="/")])])], [])
        cfg["dynamic_resources"] = {
            "cds_config": {
                "resource_api_version": "V3",
                "path_config_source": {"path": str(cds_path)},
            }
        }
        cfg["admin"] = ADMIN
        with running(tmp_path, cfg, "--concurrency", concurrency) as proxy:
            assert get(proxy.address, "/index.html").status == 200
            s = scrape(proxy)
            # Envoy: every cluster has both gauges; version is its EDS version's hash (no EDS
            # here: 0), warming_state 0 once warm. The Envoy mixin's cluster variable is
            # label_values(envoy_cluster_version, envoy_cluster_name): it finds the cluster.
            assert s.type_of("envoy_cluster_version") == "gauge"
            assert s.type_of("envoy_cluster_warming_state") == "gauge"
            assert _gauge(s, "version", "dyn") == 0
            assert _gauge(s, "warming_state", "dyn") == 0
            # the first read of the file is an update, as in Envoy (counted once, not per worker)
            assert s.value("envoy_cluster_manager_cds_update_attempt", {}) == 1
            assert s.value("envoy_cluster_manager_cds_update_success", {}) == 1
            assert s.value("envoy_cluster_manager_cds_update_failure", {}) == 0

            # a health-checked cluster arrives: it warms until its first check times out
            _write_cds(
                cds_path,
                "2",
                [cluster("dyn", nginx.socket_path), _checked("checked", silent.path)],
            )
            seen: list[float | None] = []

            def warming() -> bool:
                seen.append(_gauge(scrape(proxy), "warming_state", "checked"))
                return seen[-1] is not None and seen[-1] > 0

            assert wait_until(warming, 15, interval=0.01), (seen, proxy.stderr)
            # one value across the workers, not their sum
            assert seen[-1] == 1
            # serving goes on while the new cluster warms
            assert get(proxy.address, "/index.html").status == 200
            assert wait_until(lambda: _gauge(scrape(proxy), "warming_state", "checked") == 0, 15), (
                proxy.stderr
            )
            s = scrape(proxy)
            assert _gauge(s, "version", "checked") == 0
            assert _gauge(s, "warming_state", "dyn") == 0
            # the CDS version itself: cluster_manager.cds.version, a hash of version_info
            assert (s.value("envoy_cluster_manager_cds_version", {}) or 0) > 0
    finally:
        silent.close()


def _hist(s: Scrape, name: str, labels: dict[str, str]) -> tuple[float | None, float | None]:
    """(count, sum) of a histogram."""
    return s.value(name + "_count", labels), s.value(name + "_sum", labels)


@pytest.mark.parametrize("concurrency", ["1", "2"])
def test_connection_histograms_count_each_connection_once(
    tmp_path: Path, nginx: NginxInstance, concurrency: str
) -> None:
    cfg = bootstrap(
        [listener([vhost("all", [route("nginx", prefix="/")])])],
        [cluster("nginx", nginx.socket_path)],
    )
    cfg["admin"] = ADMIN
    with running(tmp_path, cfg, "--concurrency", concurrency) as proxy:
        for _ in range(5):  # each on its own downstream connection (Connection: close)
            response = get(proxy.address, "/index.html")
            assert response.status == 200
        http = {"envoy_http_conn_manager_prefix": "ingress_http"}
        nginx_labels = {"envoy_cluster_name": "nginx"}

        def closed_downstream() -> bool:
            return _hist(scrape(proxy), "envoy_http_downstream_cx_length_ms", http)[0] == 5

        assert wait_until(closed_downstream, 10), proxy.prometheus()
        s = scrape(proxy)
        assert s.type_of("envoy_http_downstream_cx_length_ms") == "histogram"
        assert s.type_of("envoy_cluster_upstream_cx_connect_ms") == "histogram"
        assert s.type_of("envoy_cluster_upstream_cx_length_ms") == "histogram"
        listener_labels = {"envoy_listener_address": f"127.0.0.1_{proxy.address[1]}"}
        assert _hist(s, "envoy_listener_downstream_cx_length_ms", listener_labels)[0] == 5
        # one connect sample per upstream connection made; one length sample per one closed
        made = s.value("envoy_cluster_upstream_cx_total", nginx_labels)
        closed = s.value("envoy_cluster_upstream_cx_destroy", nginx_labels)
        assert made and made >= 1
        assert _hist(s, "envoy_cluster_upstream_cx_connect_ms", nginx_labels)[0] == made
        assert _hist(s, "envoy_cluster_upstream_cx_length_ms", nginx_labels)[0] == closed
        # the admin's filters: a regex on Envoy's (dotted) name, and only what was written
        regex = "%5Ecluster%5C.nginx%5C.upstream_cx_"  # ^cluster\.nginx\.upstream_cx_
        status, _, body = proxy.admin("/stats/prometheus?filter=" + regex)
        assert status == 200
        names = {f.name for f in Scrape(body.decode()).families}
        assert "envoy_cluster_upstream_cx_connect_ms" in names
        assert "envoy_cluster_upstream_cx_active" in names
        assert all(n.startswith("envoy_cluster_upstream_cx") for n in names), names
        status, _, body = proxy.admin("/stats/prometheus?usedonly")
        used = Scrape(body.decode())
        assert status == 200
        assert "envoy_cluster_upstream_cx_connect_ms" in {f.name for f in used.families}
        # zero counters and gauges are left out (a bucket or a sum may still be 0)
        assert all(
            v != 0 for k, v in used.samples.items() if not k[0].endswith(("_bucket", "_sum"))
        )
        assert used.value("envoy_cluster_upstream_cx_overflow", nginx_labels) is None
        assert s.value("envoy_cluster_upstream_cx_overflow", nginx_labels) == 0
        status, _, body = proxy.admin("/stats/prometheus?filter=%28")
        assert status == 400, body


def test_the_three_public_dashboards_are_answered() -> None:
    """scripts/dashboard-coverage: every query of Contour's, the GCP/Istio and the Envoy mixin's
    Envoy dashboards finds its metrics in udsproxy's exposition for the article's config."""
    from benchmarks.dashboards import DASHBOARDS, coverage, queries_of, udsproxy_names

    names = udsproxy_names()
    for name, queries in DASHBOARDS.items():
        answered, total, missing = coverage(queries, names)
        assert (answered, missing) == (total, []), name
    # how the built-in tuples were made: label names and $variables are not metrics
    grafana = {
        "templating": {
            "list": [{"query": "label_values(envoy_cluster_version, envoy_cluster_name)"}]
        },
        "panels": [
            {
                "targets": [
                    {
                        "expr": "sum(rate(envoy_cluster_upstream_rq_xx"
                        '{envoy_cluster_name="$envoy_cluster"}[1m]))'
                        " by (envoy_response_code_class)"
                    }
                ]
            }
        ],
    }
    assert queries_of(grafana) == [("envoy_cluster_version",), ("envoy_cluster_upstream_rq_xx",)]
