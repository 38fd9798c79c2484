"""The per-connection histograms (upstream_cx_connect_ms, upstream_cx_length_ms,
downstream_cx_length_ms), the cluster gauges version and warming_state, how workers' values
merge, and /stats/prometheus's filter and usedonly over them. Pure: no sockets."""

from __future__ import annotations

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from udsproxy.stats import DEFAULT_BUCKETS
from udsproxy.stats.peers import merge, to_snapshot
from udsproxy.stats.render import render_prometheus
from udsproxy.stats.store import MsHistogram, StatsStore


def test_ms_histogram_buckets_as_envoy_le() -> None:
    h = MsHistogram()
    for ms in (0.2, 0.5, 0.51, 4.0, 3_600_000.0, 4_000_000.0):
        h.record(ms)
    total, count, *counts = h.values()
    assert count == 6
    assert total == 0.2 + 0.5 + 0.51 + 4.0 + 3_600_000.0 + 4_000_000.0
    assert len(counts) == len(DEFAULT_BUCKETS) + 1
    # a value equal to a bound counts in that bound's bucket (Prometheus' le)
    assert counts[0] == 2  # 0.2, 0.5
    assert counts[1] == 1  # 0.51 <= 1
    assert counts[2] == 1  # 4 <= 5
    assert counts[len(DEFAULT_BUCKETS) - 1] == 1  # 3600000
    assert counts[-1] == 1  # above every bound
    h.reset()
    assert h.values()[:2] == [0.0, 0.0]


def _store() -> StatsStore:
    store = StatsStore()
    cs = store.cluster_for("hugo")
    cs.cx_connect_ms.record(0.3)
    cs.cx_connect_ms.record(12.0)
    cs.cx_length_ms.record(2000.0)
    store.http_for("ingress_http").cx_length_ms.record(7.0)
    store.listener_for("0.0.0.0:10000", "ingress_http").cx_length_ms.record(7.0)
    return store


def test_raw_has_the_connection_histograms_and_the_cluster_gauges() -> None:
    store = _store()
    counters, gauges, hists = store.raw()
    assert hists["cluster.hugo.upstream_cx_connect_ms"][:2] == [12.3, 2.0]
    assert hists["cluster.hugo.upstream_cx_length_ms"][:2] == [2000.0, 1.0]
    assert hists["http.ingress_http.downstream_cx_length_ms"][:2] == [7.0, 1.0]
    assert hists["listener.0.0.0.0_10000.downstream_cx_length_ms"][:2] == [7.0, 1.0]
    assert gauges["cluster.hugo.version"] == 0
    assert gauges["cluster.hugo.warming_state"] == 0
    assert "cluster.hugo.version" not in counters
    # /reset_counters: histograms start again (as the request histograms do)
    store.reset()
    _, _, hists = store.raw()
    assert hists["cluster.hugo.upstream_cx_connect_ms"][:2] == [0.0, 0.0]
    assert hists["http.ingress_http.downstream_cx_length_ms"][:2] == [0.0, 0.0]


def test_workers_add_histograms_but_not_warming_state_or_version() -> None:
    one, two = _store(), _store()
    one.cluster_for("hugo").warming_state = 1
    two.cluster_for("hugo").warming_state = 1
    _, gauges, hists = merge([one.raw(), two.raw()])
    assert gauges["cluster.hugo.warming_state"] == 1  # a state, not a count
    assert gauges["cluster.hugo.version"] == 0
    assert hists["cluster.hugo.upstream_cx_connect_ms"][:2] == [24.6, 4.0]
    two.cluster_for("hugo").warming_state = 0
    _, gauges, _ = merge([one.raw(), two.raw()])
    assert gauges["cluster.hugo.warming_state"] == 1  # one worker still warms it


def _families(text: bytes) -> dict[str, Metric]:
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def test_prometheus_names_tags_filter_and_usedonly() -> None:
    snap = to_snapshot(_store().raw())
    families = _families(render_prometheus(snap))
    for name in (
        "envoy_cluster_upstream_cx_connect_ms",
        "envoy_cluster_upstream_cx_length_ms",
        "envoy_http_downstream_cx_length_ms",
        "envoy_listener_downstream_cx_length_ms",
    ):
        assert families[name].type == "histogram", name
    text = render_prometheus(snap).decode()
    assert 'envoy_cluster_version{envoy_cluster_name="hugo"} 0\n' in text
    assert 'envoy_cluster_warming_state{envoy_cluster_name="hugo"} 0\n' in text
    assert "# TYPE envoy_cluster_warming_state gauge\n" in text
    assert (
        'envoy_cluster_upstream_cx_connect_ms_bucket{envoy_cluster_name="hugo",le="0.5"} 1\n'
        in text
    )
    assert 'envoy_cluster_upstream_cx_connect_ms_count{envoy_cluster_name="hugo"} 2\n' in text
    # filter: a regex searched in Envoy's dotted name
    filtered = render_prometheus(snap, filter=r"^cluster\.hugo\.(version|warming_state)$")
    assert set(_families(filtered)) == {"envoy_cluster_version", "envoy_cluster_warming_state"}
    # usedonly: zero gauges and empty histograms are left out
    used = _families(render_prometheus(snap, used_only=True))
    assert "envoy_cluster_version" not in used
    assert "envoy_cluster_upstream_rq_time" not in used  # no request: no sample
    assert "envoy_cluster_upstream_cx_connect_ms" in used
    assert "envoy_http_downstream_cx_length_ms" in used
