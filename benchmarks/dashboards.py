"""How much of three public Envoy Grafana dashboards udsproxy's /stats/prometheus answers.

    bash scripts/dashboard-coverage            # the table (markdown) for the article's config
    bash scripts/dashboard-coverage --missing  # and the metric names each dashboard misses
    bash scripts/dashboard-coverage --dashboard contour=envoy.json  # another dashboard file

A query counts as answered when every Envoy metric it names is in the exposition; the label
names it uses (``envoy_cluster_name``...) are left out, as are Grafana's ``$variables``. Each
dashboard's queries are kept below as the metric names they use (one tuple per query: panel
targets and template variables, in the dashboard's order), taken from these files:

* Contour's Envoy dashboard: ``envoy.json`` in projectcontour/contour
  ``examples/grafana/02-grafana-configmap.yaml`` at bd33dfce8d9a (its last version, 2024-05);
* the Envoy mixin: grafana/jsonnet-libs ``envoy-mixin/dashboards_out/envoy-overview.json``
  at a5ce82cc8a3d (2025-02);
* the GCP/Istio one: GoogleCloudPlatform/monitoring-dashboard-samples
  ``dashboards/istio/istio-envoy-prometheus.json`` at 25d8c3e813a1 (2026-07).

``--dashboard NAME=FILE`` reads the queries of a Grafana or Cloud Monitoring JSON file instead
(every ``expr``/``query``/``prometheusQuery`` string), the way the tuples below were made.

The exposition is udsproxy's own: the article's config (conf/article: file CDS and LDS, one
cluster on a Unix socket) started in this process, with its listener on a free port, and one
request sent through it (the upstream socket does not exist: a 503), so that every family a
scrape can show is there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

Query = tuple[str, ...]

_CONTOUR: list[Query] = [
    ("envoy_http_downstream_cx_active",),
    ("envoy_http_downstream_cx_active",),
    ("envoy_server_memory_heap_size",),
    ("envoy_server_memory_allocated",),
    ("envoy_listener_manager_total_listeners_active",),
    ("envoy_listener_manager_total_listeners_warming",),
    ("envoy_listener_manager_total_listeners_draining",),
    ("envoy_http_downstream_cx_active",),
    ("envoy_http_downstream_rq_time_bucket",),
    ("envoy_http_downstream_rq_time_bucket",),
    ("envoy_http_downstream_rq_time_bucket",),
    ("envoy_http_downstream_rq_total",),
    ("envoy_http_downstream_cx_total",),
    ("envoy_cluster_membership_healthy", "envoy_cluster_membership_total"),
    ("envoy_cluster_membership_healthy",),
    ("envoy_cluster_membership_healthy", "envoy_cluster_membership_total"),
    ("envoy_cluster_membership_total",),
    ("envoy_cluster_upstream_rq_xx",),
    ("envoy_cluster_upstream_rq_xx",),
    ("envoy_cluster_upstream_rq_xx",),
    ("envoy_cluster_upstream_rq_xx",),
    ("envoy_cluster_upstream_cx_active",),
    ("envoy_cluster_upstream_rq_time_bucket",),
    ("envoy_cluster_upstream_rq_time_bucket",),
    ("envoy_cluster_upstream_rq_time_bucket",),
    ("envoy_cluster_upstream_cx_total",),
    ("envoy_cluster_upstream_rq_total",),
    ("envoy_cluster_upstream_rq_time_bucket",),
    ("envoy_cluster_upstream_rq_time_bucket",),
    ("envoy_server_memory_allocated",),
]

_MIXIN: list[Query] = [
    ("envoy_listener_downstream_cx_total",),
    ("envoy_cluster_upstream_cx_total",),
    ("envoy_http_downstream_rq_total",),
    ("envoy_cluster_upstream_rq_total",),
    ("envoy_cluster_upstream_rq_xx",),
    ("envoy_cluster_upstream_rq_time_bucket",),
    ("envoy_cluster_upstream_rq_time_bucket",),
    ("envoy_cluster_upstream_rq_time_count", "envoy_cluster_upstream_rq_time_sum"),
    ("envoy_cluster_upstream_rq_timeout",),
    ("envoy_cluster_upstream_rq_active",),
    ("envoy_cluster_upstream_cx_active",),
    ("envoy_http_downstream_rq_xx",),
    ("envoy_http_downstream_rq_time_bucket",),
    ("envoy_http_downstream_rq_time_bucket",),
    ("envoy_http_downstream_rq_time_count", "envoy_http_downstream_rq_time_sum"),
    ("envoy_http_downstream_rq_timeout",),
    ("envoy_http_downstream_rq_active",),
    ("envoy_http_downstream_cx_active",),
    ("envoy_cluster_version",),  # the $envoy_cluster variable: label_values(...)
    ("envoy_http_downstream_rq_total",),  # the $envoy_listener_filter variable
    ("envoy_server_uptime",),  # $job
    ("envoy_server_uptime",),  # $instance
]

_GCP: list[Query] = [
    ("envoy_server_live",),
    ("envoy_server_uptime",),
    ("envoy_server_memory_allocated",),
    ("envoy_server_memory_heap_size",),
    ("envoy_cluster_membership_healthy", "envoy_cluster_membership_total"),
    ("envoy_cluster_upstream_cx_active",),
    ("envoy_cluster_upstream_rq_total",),
    ("envoy_server_memory_allocated",),
    ("envoy_cluster_upstream_cx_rx_bytes_total",),
    ("envoy_cluster_manager_cds_update_attempt",),
    ("envoy_cluster_manager_cds_update_success",),
    ("envoy_cluster_manager_cds_update_failure",),
]

DASHBOARDS: dict[str, list[Query]] = {
    "Contour (Envoy)": _CONTOUR,
    "GCP/Istio (Envoy proxy)": _GCP,
    "Envoy mixin (overview)": _MIXIN,
}

_METRIC = re.compile(r"(?<![\w$])envoy_\w+")


def _label_names() -> frozenset[str]:
    """Envoy's tag names as Prometheus label names: not metrics."""
    from udsproxy.stats import tags

    names = [t[0] for t in tags._REGEXES] + [t[0] for t in tags._TOKENIZED]
    return frozenset(re.sub(r"[^a-zA-Z0-9_]", "_", n) for n in names)


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in ("expr", "query", "prometheusQuery") and isinstance(value, str):
                yield value
            else:
                yield from _strings(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from _strings(item)


def queries_of(dashboard: Any) -> list[Query]:
    """The Envoy metric names of each query of a dashboard (Grafana or Cloud Monitoring JSON)."""
    labels = _label_names()
    out = []
    for text in _strings(dashboard):
        names = tuple(sorted({m for m in _METRIC.findall(text) if m not in labels}))
        if names:
            out.append(names)
    return out


# ------------------------------------------------------------------------- the exposition


def _article_config(tmp: Path) -> Path:
    """conf/article with its listener on a free loopback port and its socket under ``tmp``."""
    from udsproxy.sample_conf import packaged_root

    root = Path(__file__).resolve().parent.parent
    article = root / "conf" / "article"
    if not article.is_dir():
        article = packaged_root() / "conf" / "article"
    boot = yaml.safe_load((article / "envoy.yaml").read_text())
    cds = yaml.safe_load((article / "cds.yaml").read_text())
    lds = yaml.safe_load((article / "lds.yaml").read_text())
    for res in cds["resources"]:
        for group in res["load_assignment"]["endpoints"]:
            for ep in group["lb_endpoints"]:
                ep["endpoint"]["address"]["pipe"]["path"] = str(tmp / "hugo.sock")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for res in lds["resources"]:
        res["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": port}
        for chain in res["filter_chains"]:
            for f in chain["filters"]:
                f["typed_config"].pop("access_log", None)  # no line on stdout
    (tmp / "cds.yaml").write_text(yaml.safe_dump(cds))
    (tmp / "lds.yaml").write_text(yaml.safe_dump(lds))
    dyn = boot["dynamic_resources"]
    dyn["cds_config"]["path_config_source"]["path"] = str(tmp / "cds.yaml")
    dyn["lds_config"]["path_config_source"]["path"] = str(tmp / "lds.yaml")
    boot.pop("admin", None)
    path = tmp / "envoy.yaml"
    path.write_text(yaml.safe_dump(boot))
    return path


async def _scrape(config: Path) -> str:
    from udsproxy.server import Server
    from udsproxy.stats.peers import to_snapshot
    from udsproxy.stats.render import render_prometheus

    server = await Server.start(str(config))
    try:
        host, port = server.address()
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        await reader.read()  # the 503 and the close
        writer.close()
        await asyncio.sleep(0.05)  # connection_lost on the proxy side
        return render_prometheus(to_snapshot(server.raw_stats())).decode()
    finally:
        await server.stop(timeout=0)


def exposed_names(text: str) -> set[str]:
    """The sample names of a Prometheus text exposition (``_bucket``/``_sum``/``_count`` too)."""
    return {
        line.split("{", 1)[0].split(" ", 1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def udsproxy_names() -> set[str]:
    with tempfile.TemporaryDirectory() as tmp:
        return exposed_names(asyncio.run(_scrape(_article_config(Path(tmp)))))


# ------------------------------------------------------------------------------- the table


def coverage(queries: list[Query], names: set[str]) -> tuple[int, int, list[str]]:
    """(queries answered, queries, metric names missing)."""
    answered = sum(all(m in names for m in q) for q in queries)
    missing = sorted({m for q in queries for m in q if m not in names})
    return answered, len(queries), missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--missing", action="store_true", help="list the missing metric names")
    parser.add_argument("--json", action="store_true", help="JSON instead of a markdown table")
    parser.add_argument(
        "--dashboard",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="a dashboard JSON file to check (instead of the three built in)",
    )
    args = parser.parse_args(argv)
    dashboards = dict(DASHBOARDS)
    if args.dashboard:
        dashboards = {}
        for spec in args.dashboard:
            name, _, file = spec.partition("=")
            dashboards[name] = queries_of(json.loads(Path(file).read_text()))
    names = udsproxy_names()
    rows = {name: coverage(qs, names) for name, qs in dashboards.items()}
    if args.json:
        out = {n: {"answered": a, "queries": q, "missing": m} for n, (a, q, m) in rows.items()}
        print(json.dumps(out, indent=2))
        return 0
    print("| dashboard | queries answered | metrics missing |")
    print("|---|---|---|")
    for name, (answered, total, missing) in rows.items():
        shown = ", ".join(f"`{m}`" for m in missing) if args.missing else str(len(missing))
        print(f"| {name} | {answered}/{total} | {shown or '-'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
