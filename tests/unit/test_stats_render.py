"""Envoy's stat names, tags and admin output formats (envoy-parity.md section 3.3)."""

from __future__ import annotations

import json
import math
import re

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from udsproxy.stats import DEFAULT_BUCKETS, Histogram, Snapshot
from udsproxy.stats.render import (
    EnvoyStatsCollector,
    extract_tags,
    histogram_quantiles,
    render_json,
    render_prometheus,
    render_text,
)
from udsproxy.stats.tags import sanitize_stats_name, tag_extracted_name


def hist(samples: dict[float, int], total_ms: float | None = None) -> Histogram:
    """A histogram with Envoy's buckets, `samples` mapping a bucket's upper bound (or inf) to
    how many samples it holds."""
    counts = [0] * (len(DEFAULT_BUCKETS) + 1)
    for bound, n in samples.items():
        counts[len(DEFAULT_BUCKETS) if bound == math.inf else DEFAULT_BUCKETS.index(bound)] += n
    count = sum(counts)
    return Histogram(DEFAULT_BUCKETS, tuple(counts), float(total_ms or 0.0), count)


EMPTY = hist({})

# Known traffic: 637510 x 200 and 30 x 503 (28 counted in 5xx, as in the reference sample)
# from cluster "hugo", through HCM "ingress_http" on listener 0.0.0.0:10000.
TRAFFIC = Snapshot(
    counters={
        "cluster.hugo.upstream_rq_200": 637510,
        "cluster.hugo.upstream_rq_503": 30,
        "cluster.hugo.upstream_rq_2xx": 637510,
        "cluster.hugo.upstream_rq_5xx": 28,
        "cluster.hugo.upstream_rq_total": 637540,
        "cluster.hugo.upstream_rq_pending_overflow": 80,
        "cluster.hugo.upstream_cx_none_healthy": 1,
        "cluster.hugo.circuit_breakers.default.cx_open": 0,
        "http.ingress_http.downstream_rq_2xx": 637510,
        "http.ingress_http.downstream_rq_5xx": 30,
        "http.ingress_http.downstream_rq_total": 637540,
        "listener.0.0.0.0_10000.downstream_cx_total": 1234567,
        "listener.0.0.0.0_10000.http.ingress_http.downstream_rq_2xx": 637510,
        "cluster_manager.cds.update_rejected": 0,
        "listener_manager.lds.update_success": 2,
    },
    gauges={
        "server.live": 1,
        "cluster.hugo.upstream_cx_active": 3,
        "cluster.hugo.outlier_detection.ejections_active": 0,
    },
    histograms={
        "cluster.hugo.upstream_rq_time": hist({5: 3, 10: 1, math.inf: 1}, 12.3),
        "http.ingress_http.downstream_rq_time": EMPTY,
    },
)


# ------------------------------------------------------------------------------ tag extraction


@pytest.mark.parametrize(
    ("name", "stem", "labels"),
    [
        (
            "cluster.hugo.upstream_rq_503",
            "envoy_cluster_upstream_rq",
            [("envoy_response_code", "503"), ("envoy_cluster_name", "hugo")],
        ),
        (
            "cluster.hugo.upstream_rq_5xx",
            "envoy_cluster_upstream_rq_xx",
            [("envoy_response_code_class", "5"), ("envoy_cluster_name", "hugo")],
        ),
        (
            "http.ingress_http.downstream_rq_2xx",
            "envoy_http_downstream_rq_xx",
            [
                ("envoy_response_code_class", "2"),
                ("envoy_http_conn_manager_prefix", "ingress_http"),
            ],
        ),
        (
            "listener.0.0.0.0_10000.downstream_cx_total",
            "envoy_listener_downstream_cx_total",
            [("envoy_listener_address", "0.0.0.0_10000")],
        ),
        (
            "listener.0.0.0.0_10000.http.ingress_http.downstream_rq_2xx",
            "envoy_listener_http_downstream_rq_xx",
            [
                ("envoy_response_code_class", "2"),
                ("envoy_http_conn_manager_prefix", "ingress_http"),
                ("envoy_listener_address", "0.0.0.0_10000"),
            ],
        ),
        (
            "cluster.hugo.circuit_breakers.default.cx_open",
            "envoy_cluster_circuit_breakers_default_cx_open",
            [("envoy_cluster_name", "hugo")],
        ),
        ("server.live", "envoy_server_live", []),
        ("cluster_manager.cds.update_rejected", "envoy_cluster_manager_cds_update_rejected", []),
        ("listener_manager.lds.update_success", "envoy_listener_manager_lds_update_success", []),
        # not response codes: a 4-digit suffix, _total, _time
        (
            "cluster.hugo.upstream_rq_total",
            "envoy_cluster_upstream_rq_total",
            [("envoy_cluster_name", "hugo")],
        ),
        (
            "cluster.hugo.upstream_rq_time",
            "envoy_cluster_upstream_rq_time",
            [("envoy_cluster_name", "hugo")],
        ),
        (
            "cluster.hugo.upstream_rq_5000",
            "envoy_cluster_upstream_rq_5000",
            [("envoy_cluster_name", "hugo")],
        ),
        # a cluster name with '-' and the per-cluster outlier stats
        (
            "cluster.my-svc.outlier_detection.ejections_active",
            "envoy_cluster_outlier_detection_ejections_active",
            [("envoy_cluster_name", "my-svc")],
        ),
        # IPv6 listener "[::]:10000" as Envoy's sanitizeStatsName writes it
        (
            "listener.[__]_10000.downstream_cx_active",
            "envoy_listener_downstream_cx_active",
            [("envoy_listener_address", "[__]_10000")],
        ),
        # the admin listener is excluded from envoy_listener_address
        (
            "listener.admin.downstream_cx_total",
            "envoy_listener_admin_downstream_cx_total",
            [],
        ),
        # a listener stat_prefix (no dots) is taken whole
        (
            "listener.edge.downstream_cx_total",
            "envoy_listener_downstream_cx_total",
            [("envoy_listener_address", "edge")],
        ),
        # per-worker listener stats
        (
            "listener.[__]_0.worker_123.downstream_cx_active",
            "envoy_listener_worker_downstream_cx_active",
            [("envoy_worker_id", "123"), ("envoy_listener_address", "[__]_0")],
        ),
        (
            "server.worker_0.watchdog_miss",
            "envoy_server_worker_watchdog_miss",
            [("envoy_worker_id", "0")],
        ),
        # local rate limit filter: "<stat_prefix>.http_local_rate_limit.*"
        (
            "http_local_rate_limiter.http_local_rate_limit.rate_limited",
            "envoy_http_local_rate_limit_rate_limited",
            [("envoy_local_http_ratelimit_prefix", "http_local_rate_limiter")],
        ),
        # RDS route config names may contain dots
        (
            "http.rds_connection_manager.rds.route_config.123.update_success",
            "envoy_http_rds_update_success",
            [
                ("envoy_rds_route_config", "route_config.123"),
                ("envoy_http_conn_manager_prefix", "rds_connection_manager"),
            ],
        ),
        (
            "http.fault_connection_manager.fault.fault_cluster.aborts_injected",
            "envoy_http_fault_aborts_injected",
            [
                ("envoy_fault_downstream_cluster", "fault_cluster"),
                ("envoy_http_conn_manager_prefix", "fault_connection_manager"),
            ],
        ),
        (
            "vhost.vhost_1.vcluster.vc1.upstream_rq_200",
            "envoy_vhost_vcluster_upstream_rq",
            [
                ("envoy_response_code", "200"),
                ("envoy_virtual_cluster", "vc1"),
                ("envoy_virtual_host", "vhost_1"),
            ],
        ),
        # TLS listener/cluster stats
        (
            "listener.127.0.0.1_443.ssl.versions.TLSv1.3",
            "envoy_listener_ssl_versions",
            [("envoy_ssl_version", "TLSv1.3"), ("envoy_listener_address", "127.0.0.1_443")],
        ),
        (
            "listener.127.0.0.1_443.ssl.ciphers.ECDHE-RSA-AES128-GCM-SHA256",
            "envoy_listener_ssl_ciphers",
            [
                ("envoy_ssl_cipher", "ECDHE-RSA-AES128-GCM-SHA256"),
                ("envoy_listener_address", "127.0.0.1_443"),
            ],
        ),
        (
            "cluster.hugo.ssl.ciphers.ECDHE-RSA-AES128-GCM-SHA256",
            "envoy_cluster_ssl_ciphers",
            [("cipher_suite", "ECDHE-RSA-AES128-GCM-SHA256"), ("envoy_cluster_name", "hugo")],
        ),
        (
            "cluster.hugo.ssl.curves.X25519",
            "envoy_cluster_ssl_curves",
            [("envoy_ssl_curve", "X25519"), ("envoy_cluster_name", "hugo")],
        ),
        # tokenized patterns with "*" and "**" (Envoy's mongo examples)
        (
            "mongo.mongo_filter.collection.test.callsite.test_call.query.total",
            "envoy_mongo_collection_callsite_query_total",
            [
                ("envoy_mongo_callsite", "test_call"),
                ("envoy_mongo_collection", "test"),
                ("envoy_mongo_prefix", "mongo_filter"),
            ],
        ),
        (
            "mongo.mongo_filter.collection.test.query.total",
            "envoy_mongo_collection_query_total",
            [("envoy_mongo_collection", "test"), ("envoy_mongo_prefix", "mongo_filter")],
        ),
    ],
)
def test_extract_tags(name: str, stem: str, labels: list[tuple[str, str]]) -> None:
    assert extract_tags(name) == (stem, labels)


def test_pipe_listener_address() -> None:
    # Envoy's listener scope is "listener.<address->asString()>." and a pipe's asString() is its
    # path, dots included; LISTENER_ADDRESS ("[^.]+" after "listener.") stops at the first dot.
    assert extract_tags("listener./dev/shm/edge.sock.downstream_cx_total") == (
        "envoy_listener_sock_downstream_cx_total",
        [("envoy_listener_address", "/dev/shm/edge")],
    )
    assert extract_tags("listener./run/edge-sock.downstream_cx_total") == (
        "envoy_listener_downstream_cx_total",
        [("envoy_listener_address", "/run/edge-sock")],
    )
    assert extract_tags("listener.@edge.downstream_cx_total") == (
        "envoy_listener_downstream_cx_total",
        [("envoy_listener_address", "@edge")],
    )


def test_tag_extracted_name_uses_envoy_tag_names() -> None:
    assert tag_extracted_name("cluster.hugo.upstream_rq_503") == (
        "cluster.upstream_rq",
        (("envoy.response_code", "503"), ("envoy.cluster_name", "hugo")),
    )


def test_extract_tags_returns_a_fresh_list() -> None:
    _stem, labels = extract_tags("cluster.hugo.upstream_rq_503")
    labels.clear()
    assert extract_tags("cluster.hugo.upstream_rq_503")[1] == [
        ("envoy_response_code", "503"),
        ("envoy_cluster_name", "hugo"),
    ]


@pytest.mark.parametrize(
    ("raw", "sanitized"),
    [
        # Envoy's StatsUtilityTest.SanitizeStatsName
        ("a.b.c.", "a.b.c"),
        (".a.b.c", "a.b.c"),
        ("a::b", "a__b"),
        ("a.\0", "a._"),
        ("a://b", "a_b"),
        ("a:/b", "a_b"),
        # listener addresses
        ("0.0.0.0:10000", "0.0.0.0_10000"),
        ("[::]:10000", "[__]_10000"),
        ("/dev/shm/edge.sock", "/dev/shm/edge.sock"),
    ],
)
def test_sanitize_stats_name(raw: str, sanitized: str) -> None:
    assert sanitize_stats_name(raw) == sanitized


# ---------------------------------------------------------------------------- /stats/prometheus


def prom_text(snap: Snapshot, **kwargs: object) -> str:
    out = render_prometheus(snap, **kwargs)  # type: ignore[arg-type]
    assert isinstance(out, bytes)
    return out.decode("utf-8")


def test_prometheus_exact_text() -> None:
    snap = Snapshot(
        counters={
            "cluster.hugo.upstream_rq_503": 30,
            "cluster.hugo.upstream_rq_200": 1234567,
            "cluster.hugo.upstream_rq_total": 1234597,
            "cluster.hugo.upstream_rq_5xx": 28,
            "server.total_connections": 0,
        },
        gauges={"server.live": 1},
        histograms={"cluster.hugo.upstream_rq_time": hist({0.5: 1, 5: 2, math.inf: 1}, 4001.25)},
    )
    buckets = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000]
    buckets += [300000, 600000, 1800000, 3600000]
    cumulative = [1, 1] + [3] * 17
    bucket_lines = "".join(
        f'envoy_cluster_upstream_rq_time_bucket{{envoy_cluster_name="hugo",le="{b}"}} {c}\n'
        for b, c in zip(buckets, cumulative, strict=True)
    )
    assert prom_text(snap) == (
        "# TYPE envoy_cluster_upstream_rq counter\n"
        'envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="hugo"} 1234567\n'
        'envoy_cluster_upstream_rq{envoy_response_code="503",envoy_cluster_name="hugo"} 30\n'
        "# TYPE envoy_cluster_upstream_rq_total counter\n"
        'envoy_cluster_upstream_rq_total{envoy_cluster_name="hugo"} 1234597\n'
        "# TYPE envoy_cluster_upstream_rq_xx counter\n"
        'envoy_cluster_upstream_rq_xx{envoy_response_code_class="5",envoy_cluster_name="hugo"} 28\n'
        "# TYPE envoy_server_total_connections counter\n"
        "envoy_server_total_connections{} 0\n"
        "# TYPE envoy_server_live gauge\n"
        "envoy_server_live{} 1\n"
        "# TYPE envoy_cluster_upstream_rq_time histogram\n"
        + bucket_lines
        + 'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="hugo",le="+Inf"} 4\n'
        'envoy_cluster_upstream_rq_time_sum{envoy_cluster_name="hugo"} 4001.25\n'
        'envoy_cluster_upstream_rq_time_count{envoy_cluster_name="hugo"} 4\n'
    )


def parsed(
    snap: Snapshot, **kwargs: object
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name as written, sorted labels) -> value, via prometheus-client's own parser.

    The parser models counters the OpenMetrics way: family "x" (or "x_total") with samples
    "x_total". Families come back one per TYPE block, in order, so each is paired with its TYPE
    line to key counter samples by the name they have in the text."""
    text = prom_text(snap, **kwargs)
    declared = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
    families = list(text_string_to_metric_families(text))
    assert [f.type for f in families] == [typ for _, typ in declared]
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family, (declared_name, typ) in zip(families, declared, strict=True):
        assert family.name == declared_name.removesuffix("_total")
        for sample in family.samples:
            name = declared_name if typ == "counter" else sample.name
            key = (name, tuple(sorted(sample.labels.items())))
            assert key not in out, key
            out[key] = sample.value
    return out


def test_prometheus_parses_with_prometheus_client_after_known_traffic() -> None:
    values = parsed(TRAFFIC)
    hugo = ("envoy_cluster_name", "hugo")
    ingress = ("envoy_http_conn_manager_prefix", "ingress_http")
    listener = ("envoy_listener_address", "0.0.0.0_10000")
    expected = {
        ("envoy_cluster_upstream_rq", (hugo, ("envoy_response_code", "200"))): 637510,
        ("envoy_cluster_upstream_rq", (hugo, ("envoy_response_code", "503"))): 30,
        ("envoy_cluster_upstream_rq_xx", (hugo, ("envoy_response_code_class", "2"))): 637510,
        ("envoy_cluster_upstream_rq_xx", (hugo, ("envoy_response_code_class", "5"))): 28,
        ("envoy_cluster_upstream_rq_pending_overflow", (hugo,)): 80,
        ("envoy_cluster_upstream_cx_none_healthy", (hugo,)): 1,
        ("envoy_cluster_circuit_breakers_default_cx_open", (hugo,)): 0,
        ("envoy_http_downstream_rq_xx", (("envoy_response_code_class", "2"), ingress)): 637510,
        ("envoy_http_downstream_rq_xx", (("envoy_response_code_class", "5"), ingress)): 30,
        ("envoy_listener_downstream_cx_total", (listener,)): 1234567,
        (
            "envoy_listener_http_downstream_rq_xx",
            (("envoy_response_code_class", "2"), ingress, listener),
        ): 637510,
        ("envoy_cluster_manager_cds_update_rejected", ()): 0,
        ("envoy_listener_manager_lds_update_success", ()): 2,
        ("envoy_server_live", ()): 1,
        ("envoy_cluster_upstream_cx_active", (hugo,)): 3,
        ("envoy_cluster_outlier_detection_ejections_active", (hugo,)): 0,
        ("envoy_cluster_upstream_rq_time_count", (hugo,)): 5,
        ("envoy_cluster_upstream_rq_time_sum", (hugo,)): 12.3,
        ("envoy_cluster_upstream_rq_time_bucket", (hugo, ("le", "1"))): 0,
        ("envoy_cluster_upstream_rq_time_bucket", (hugo, ("le", "5"))): 3,
        ("envoy_cluster_upstream_rq_time_bucket", (hugo, ("le", "10"))): 4,
        ("envoy_cluster_upstream_rq_time_bucket", (hugo, ("le", "3600000"))): 4,
        ("envoy_cluster_upstream_rq_time_bucket", (hugo, ("le", "+Inf"))): 5,
        ("envoy_http_downstream_rq_time_count", (ingress,)): 0,
    }
    for (name, labels), value in expected.items():
        assert values[(name, tuple(sorted(labels)))] == value, (name, labels)
    # the totals keep their Envoy names next to the families they would clash with
    assert values[("envoy_cluster_upstream_rq_total", (hugo,))] == 637540
    assert values[("envoy_http_downstream_rq_total", (ingress,))] == 637540


def test_prometheus_one_type_line_per_family_and_types() -> None:
    text = prom_text(TRAFFIC)
    types = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
    names = [name for name, _ in types]
    assert len(names) == len(set(names))
    assert ("envoy_cluster_upstream_rq", "counter") in types
    assert ("envoy_cluster_upstream_rq_total", "counter") in types
    assert ("envoy_server_live", "gauge") in types
    assert ("envoy_cluster_upstream_rq_time", "histogram") in types
    # every sample line belongs to the family declared above it
    family = ""
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            family = line.split()[2]
            continue
        sample = line.split("{", 1)[0]
        assert sample in (family, family + "_bucket", family + "_sum", family + "_count"), line


def test_prometheus_has_no_total_suffix_created_help_or_float_ints() -> None:
    text = prom_text(TRAFFIC)
    assert "_created" not in text
    assert "# HELP" not in text
    assert "_total_total" not in text
    assert "envoy_cluster_upstream_rq_xx_total" not in text
    for line in text.splitlines():
        if line.startswith("#") or "_sum{" in line:
            continue
        assert re.fullmatch(r"\S+\{.*\} \d+", line), line
    # 1234567 is "1.234567e+06" in generate_latest's own text
    line = 'envoy_listener_downstream_cx_total{envoy_listener_address="0.0.0.0_10000"} 1234567\n'
    assert line in text


def test_prometheus_order_counters_gauges_histograms_then_names() -> None:
    snap = Snapshot(
        counters={
            "listener_manager.lds.update_success": 1,
            "cluster_manager.cds.update_success": 1,
            "cluster.b.upstream_rq_total": 1,
            "cluster.a-b.upstream_rq_total": 1,
            "cluster.a.upstream_rq_total": 1,
            "cluster.a.upstream_cx_total": 1,
            "http.ingress_http.downstream_rq_total": 1,
        },
        gauges={"server.live": 1, "cluster.a.upstream_cx_active": 1},
        histograms={"cluster.a.upstream_rq_time": EMPTY},
    )
    text = prom_text(snap)
    families = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
    assert families == [
        # sorted by tag-extracted name: "cluster.*" < "cluster_manager.*" < "http.*" < ...
        ("envoy_cluster_upstream_cx_total", "counter"),
        ("envoy_cluster_upstream_rq_total", "counter"),
        ("envoy_cluster_manager_cds_update_success", "counter"),
        ("envoy_http_downstream_rq_total", "counter"),
        ("envoy_listener_manager_lds_update_success", "counter"),
        ("envoy_cluster_upstream_cx_active", "gauge"),
        ("envoy_server_live", "gauge"),
        ("envoy_cluster_upstream_rq_time", "histogram"),
    ]
    # within a family: by stat name, '.'-component-wise ("a" < "a-b" < "b")
    clusters = re.findall(
        r'^envoy_cluster_upstream_rq_total\{envoy_cluster_name="([^"]+)"', text, re.M
    )
    assert clusters == ["a", "a-b", "b"]


def test_prometheus_label_values_are_escaped() -> None:
    snap = Snapshot({'cluster.we"ird\\na\nme.upstream_rq_total': 7}, {}, {})
    text = prom_text(snap)
    assert text == (
        "# TYPE envoy_cluster_upstream_rq_total counter\n"
        'envoy_cluster_upstream_rq_total{envoy_cluster_name="we\\"ird\\\\na\\nme"} 7\n'
    )
    [family] = text_string_to_metric_families(text)
    assert family.samples[0].labels == {"envoy_cluster_name": 'we"ird\\na\nme'}


def test_prometheus_filter_and_used_only() -> None:
    text = prom_text(TRAFFIC, filter=r"^cluster\.hugo\.upstream_rq_\d", used_only=True)
    assert re.findall(r"^# TYPE (\S+)", text, re.M) == [
        "envoy_cluster_upstream_rq",
        "envoy_cluster_upstream_rq_xx",
    ]
    text = prom_text(TRAFFIC, used_only=True)
    assert "envoy_cluster_manager_cds_update_rejected" not in text
    assert "envoy_http_downstream_rq_time" not in text  # no samples
    assert "envoy_cluster_upstream_rq_time_count" in text
    with pytest.raises(ValueError, match="invalid regex"):
        render_prometheus(TRAFFIC, filter="(")


def test_prometheus_histogram_sum_like_envoy() -> None:
    snap = Snapshot({}, {}, {"cluster.c.upstream_rq_time": hist({1: 1}, 0.1)})
    text = prom_text(snap)
    # Envoy prints the sum with fmt's {:.32g}
    line = 'envoy_cluster_upstream_rq_time_sum{envoy_cluster_name="c"} '
    assert line + "0.10000000000000000555111512312578\n" in text


def test_prometheus_histogram_without_tags() -> None:
    snap = Snapshot({}, {}, {"server.initialization_time_ms": hist({25: 1}, 20)})
    lines = prom_text(snap).splitlines()
    assert lines[1] == 'envoy_server_initialization_time_ms_bucket{le="0.5"} 0'
    assert lines[-3:] == [
        'envoy_server_initialization_time_ms_bucket{le="+Inf"} 1',
        "envoy_server_initialization_time_ms_sum{} 20",
        "envoy_server_initialization_time_ms_count{} 1",
    ]


def test_prometheus_empty_snapshot() -> None:
    assert render_prometheus(Snapshot({}, {}, {})) == b""


def test_collector_yields_envoy_named_families() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EnvoyStatsCollector(TRAFFIC, filter=r"^cluster\.hugo\.upstream_rq_"))
    families = {(m.name, m.type): m for m in registry.collect()}
    rq = families[("envoy_cluster_upstream_rq", "counter")]
    assert [(s.name, s.labels, s.value) for s in rq.samples] == [
        (
            "envoy_cluster_upstream_rq",
            {"envoy_response_code": "200", "envoy_cluster_name": "hugo"},
            637510,
        ),
        (
            "envoy_cluster_upstream_rq",
            {"envoy_response_code": "503", "envoy_cluster_name": "hugo"},
            30,
        ),
    ]
    hist_family = families[("envoy_cluster_upstream_rq_time", "histogram")]
    assert {s.name for s in hist_family.samples} == {
        "envoy_cluster_upstream_rq_time_bucket",
        "envoy_cluster_upstream_rq_time_sum",
        "envoy_cluster_upstream_rq_time_count",
    }


def test_generate_latest_still_needs_the_documented_fixups() -> None:
    # The reasons render_prometheus post-processes generate_latest's text; if prometheus-client
    # changes any of them, this fails and the module doc should be revisited.
    metric = Metric("envoy_x", "", "counter")
    metric.add_sample("envoy_x", {}, 1234567)

    class One:
        def collect(self) -> list[Metric]:
            return [metric]

    registry = CollectorRegistry(auto_describe=False)
    registry.register(One())
    assert generate_latest(registry).decode() == (
        "# HELP envoy_x_total \n# TYPE envoy_x_total counter\nenvoy_x 1.234567e+06\n"
    )


# --------------------------------------------------------------------------------- quantiles


def test_histogram_quantiles_interpolate_in_buckets() -> None:
    # 4 samples in (1, 5]: P0 = 1, P50 = 3, P100 = 5
    q = histogram_quantiles(hist({5: 4}), (0, 0.5, 1))
    assert q == [1.0, 3.0, 5.0]
    # first bucket starts at 0; overflow bucket gives the last bound
    assert histogram_quantiles(hist({0.5: 2, math.inf: 2}), (0.25, 1)) == [0.25, 3600000.0]
    assert all(math.isnan(x) for x in histogram_quantiles(EMPTY))


# -------------------------------------------------------------------------------- /stats text


def test_text_sorted_counters_and_gauges_then_histograms() -> None:
    text = render_text(TRAFFIC)
    lines = text.splitlines()
    scalars = [line for line in lines if not line.endswith(")") and "No recorded" not in line]
    names = [line.split(": ")[0] for line in scalars]
    assert names == sorted([*TRAFFIC.counters, *TRAFFIC.gauges])
    assert "server.live: 1" in lines
    assert "listener.0.0.0.0_10000.downstream_cx_total: 1234567" in lines
    assert lines[-2:] == [
        "cluster.hugo.upstream_rq_time: P0(nan,1) P25(nan,2.666666666666667)"
        " P50(nan,4.333333333333334) P75(nan,8.75) P90(nan,3600000) P95(nan,3600000)"
        " P99(nan,3600000) P99.5(nan,3600000) P99.9(nan,3600000) P100(nan,3600000)",
        "http.ingress_http.downstream_rq_time: No recorded values",
    ]
    assert text.endswith("\n")


def test_text_filter_and_used_only() -> None:
    assert render_text(TRAFFIC, r"rq_5") == (
        "cluster.hugo.upstream_rq_503: 30\n"
        "cluster.hugo.upstream_rq_5xx: 28\n"
        "http.ingress_http.downstream_rq_5xx: 30\n"
    )
    used = render_text(TRAFFIC, None, True)
    assert "cx_open" not in used
    assert "ejections_active" not in used
    assert "downstream_rq_time" not in used
    assert "cluster.hugo.upstream_rq_time: P0(" in used
    assert render_text(TRAFFIC, "no-such-stat") == ""


def test_text_invalid_filter() -> None:
    with pytest.raises(ValueError, match=r"invalid regex in filter '\[': "):
        render_text(TRAFFIC, "[")


# -------------------------------------------------------------------------------- /stats json


def test_json_shape() -> None:
    doc = json.loads(render_json(TRAFFIC))
    stats = doc["stats"]
    scalars, [histograms] = stats[:-1], stats[-1:]
    assert [s["name"] for s in scalars] == sorted([*TRAFFIC.counters, *TRAFFIC.gauges])
    assert {"name": "cluster.hugo.upstream_rq_200", "value": 637510} in scalars
    h = histograms["histograms"]
    assert h["supported_quantiles"] == [0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100]
    rq_time, downstream = h["computed_quantiles"]
    assert rq_time["name"] == "cluster.hugo.upstream_rq_time"
    assert rq_time["values"][:4] == [
        {"cumulative": 1, "interval": None},
        {"cumulative": 2.66667, "interval": None},  # Envoy's "%g"
        {"cumulative": 4.33333, "interval": None},
        {"cumulative": 8.75, "interval": None},
    ]
    assert downstream == {
        "name": "http.ingress_http.downstream_rq_time",
        "values": [{"cumulative": None, "interval": None}] * 10,
    }


def test_json_compact_and_filtered() -> None:
    text = render_json(TRAFFIC, r"^server\.")
    assert text == '{"stats":[{"name":"server.live","value":1}]}'
    assert render_json(TRAFFIC, "nothing") == '{"stats":[]}'
    used = json.loads(render_json(TRAFFIC, "_time$", True))
    [entry] = used["stats"]
    assert [c["name"] for c in entry["histograms"]["computed_quantiles"]] == [
        "cluster.hugo.upstream_rq_time"
    ]
    with pytest.raises(ValueError, match="invalid regex"):
        render_json(TRAFFIC, "(?P<")
