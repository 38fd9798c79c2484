"""The admin interface and Envoy's stats, with real processes: ``udsproxy -c FILE`` in front of a
real nginx and the Python upstream on Unix sockets, real HTTP clients on both the proxy listener
and the admin listener (bootstrap ``admin.address``, port 0, announced on stderr).

Known traffic (13 requests, each on a new connection): 7 x 200 and 2 x 404 from nginx, 3 x 503
from the Python upstream, 1 x 404 NR (no route). ``/stats/prometheus`` is parsed with
prometheus-client's own parser and must give Envoy's exact names, labels and values, with the
same totals for one process and for two workers.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from .support import (
    CliProxy,
    NginxInstance,
    PyUpstream,
    bootstrap,
    cluster,
    get,
    listener,
    route,
    shm_dir,
    unlink_quietly,
    vhost,
    wait_until,
)

pytestmark = pytest.mark.integration

ADMIN = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
PREFIX = "ingress_http"  # the listener's name is its stat_prefix (support.listener)


# --------------------------------------------------------------------------------------------
# helpers


class Proxy(CliProxy):
    """``python -m udsproxy -c FILE [args]`` with its admin interface."""

    def __init__(self, tmp: Path, config: dict[str, Any] | Path, *args: str) -> None:
        if isinstance(config, dict):
            path = tmp / "proxy.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
        else:
            path = config
        super().__init__(path, *args)

    def wait_ready(self, timeout: float = 30) -> Proxy:
        """Until the admin listener is announced (it starts after the proxy listeners)."""
        ok = wait_until(lambda: bool(self.admin_port) or self.proc.poll() is not None, timeout)
        assert ok and self.admin_port, f"no admin listener (rc={self.proc.poll()}):\n{self.stderr}"
        assert self.ports, self.stderr
        return self

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.ports[PREFIX])

    def admin(
        self, path: str, method: str = "GET", timeout: float = 5
    ) -> tuple[int, dict[str, str], bytes]:
        """One admin request on a new connection (http.client)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=timeout)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            body = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
        finally:
            conn.close()

    def prometheus(self) -> str:
        status, headers, body = self.admin("/stats/prometheus")
        assert status == 200, body
        assert headers["content-type"].startswith("text/plain"), headers
        return body.decode()


@contextlib.contextmanager
def running(tmp: Path, config: dict[str, Any] | Path, *args: str) -> Iterator[Proxy]:
    """A proxy for the duration of a with-block; it must exit 0 (unless already gone)."""
    proxy = Proxy(tmp, config, *args)
    try:
        yield proxy.wait_ready()
    finally:
        rc = proxy.stop()
    assert rc == 0, f"udsproxy exited with {rc}:\n{proxy.stderr}"


def proxy_config(nginx: NginxInstance, py: PyUpstream, **extra: str) -> dict[str, Any]:
    """nginx for /index.html and /missing/, the Python upstream for /py/, anything else NR.
    ``extra``: more clusters (name -> socket path) with no route."""
    routes = [
        route("py", prefix="/py/"),
        route("nginx", prefix="/index.html"),
        route("nginx", prefix="/missing/"),
    ]
    clusters = [cluster("nginx", nginx.socket_path), cluster("py", py.socket_path)]
    clusters += [cluster(name, path) for name, path in extra.items()]
    cfg = bootstrap([listener([vhost("all", routes)])], clusters)
    cfg["admin"] = ADMIN
    return cfg


# (path, expected status, times); every request on a new connection (Connection: close)
KNOWN_TRAFFIC = [
    ("/index.html", 200, 7),
    ("/missing/nothing.html", 404, 2),
    ("/py/status/503", 503, 3),
    ("/no/route/here", 404, 1),
]


def send_known_traffic(address: tuple[str, int], threads: int = 1) -> None:
    jobs = [(path, status) for path, status, n in KNOWN_TRAFFIC for _ in range(n)]

    def one(job: tuple[str, int]) -> tuple[str, int, int]:
        return job[0], job[1], get(address, job[0], timeout=5).status

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(one, jobs))
    assert all(want == got for _, want, got in results), results


def expected_samples(port: int) -> list[tuple[str, dict[str, str], int]]:
    """Envoy's Prometheus names, labels and values after KNOWN_TRAFFIC (port: the listener)."""
    lst = f"127.0.0.1_{port}"
    hcm = {"envoy_http_conn_manager_prefix": PREFIX}

    def code(c: str, name: str) -> dict[str, str]:
        return {"envoy_response_code": c, "envoy_cluster_name": name}

    def klass(c: str, **labels: str) -> dict[str, str]:
        return {"envoy_response_code_class": c, **labels}

    nginx, py = {"envoy_cluster_name": "nginx"}, {"envoy_cluster_name": "py"}
    return [
        # cluster.<name>.upstream_rq_<code>, _<class>xx, _total, _completed
        ("envoy_cluster_upstream_rq", code("200", "nginx"), 7),
        ("envoy_cluster_upstream_rq", code("404", "nginx"), 2),
        ("envoy_cluster_upstream_rq", code("503", "py"), 3),
        ("envoy_cluster_upstream_rq_xx", klass("2", **nginx), 7),
        ("envoy_cluster_upstream_rq_xx", klass("4", **nginx), 2),
        ("envoy_cluster_upstream_rq_xx", klass("5", **nginx), 0),
        ("envoy_cluster_upstream_rq_xx", klass("2", **py), 0),
        ("envoy_cluster_upstream_rq_xx", klass("5", **py), 3),
        ("envoy_cluster_upstream_rq_total", nginx, 9),
        ("envoy_cluster_upstream_rq_total", py, 3),
        ("envoy_cluster_upstream_rq_completed", nginx, 9),
        ("envoy_cluster_upstream_rq_completed", py, 3),
        # http.<stat_prefix>.*
        ("envoy_http_downstream_rq_total", hcm, 13),
        ("envoy_http_downstream_rq_completed", hcm, 13),
        ("envoy_http_downstream_rq_http1_total", hcm, 13),
        ("envoy_http_downstream_rq_xx", klass("1", **hcm), 0),
        ("envoy_http_downstream_rq_xx", klass("2", **hcm), 7),
        ("envoy_http_downstream_rq_xx", klass("3", **hcm), 0),
        ("envoy_http_downstream_rq_xx", klass("4", **hcm), 3),
        ("envoy_http_downstream_rq_xx", klass("5", **hcm), 3),
        ("envoy_http_downstream_cx_total", hcm, 13),
        ("envoy_http_no_route", hcm, 1),
        ("envoy_http_rq_total", hcm, 12),  # the router: the NR request was never routed
        # listener.<address>.*
        ("envoy_listener_downstream_cx_total", {"envoy_listener_address": lst}, 13),
        (
            "envoy_listener_http_downstream_rq_xx",
            klass("2", **hcm, envoy_listener_address=lst),
            7,
        ),
        (
            "envoy_listener_http_downstream_rq_completed",
            {**hcm, "envoy_listener_address": lst},
            13,
        ),
        # histograms: one sample per request
        ("envoy_cluster_upstream_rq_time_count", nginx, 9),
        ("envoy_cluster_upstream_rq_time_count", py, 3),
        ("envoy_cluster_upstream_rq_time_bucket", {**nginx, "le": "+Inf"}, 9),
        ("envoy_http_downstream_rq_time_count", hcm, 13),
        # process-wide gauges: published once, not once per worker
        ("envoy_cluster_membership_total", nginx, 1),
        ("envoy_cluster_membership_healthy", py, 1),
        ("envoy_cluster_uds_socket_present", nginx, 1),
        ("envoy_cluster_manager_active_clusters", {}, 2),
        ("envoy_listener_manager_total_listeners_active", {}, 1),
        ("envoy_server_live", {}, 1),
        ("envoy_server_state", {}, 0),
    ]


Key = tuple[str, frozenset[tuple[str, str]]]


class Scrape:
    """/stats/prometheus parsed by prometheus-client's parser.

    The parser reports a counter's samples in the OpenMetrics form: ``<name>_total`` whether
    or not the text had the suffix (``envoy_cluster_upstream_rq`` and
    ``envoy_cluster_upstream_rq_total`` both come back as ``..._total``, told apart by their
    labels). ``value()`` maps Envoy's name to that form; ``text`` keeps the raw exposition for
    the checks the parser cannot make (exact names, integer values)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = list(text_string_to_metric_families(text))
        self.types: dict[str, str] = {}
        self.samples: dict[Key, float] = {}
        for family in self.families:
            for s in family.samples:
                key = (s.name, frozenset(s.labels.items()))
                assert key not in self.samples, f"duplicate series {key}"
                self.samples[key] = s.value
                self.types[s.name] = family.type

    def value(self, name: str, labels: dict[str, str]) -> float | None:
        for candidate in (name, name + "_total"):
            found = self.samples.get((candidate, frozenset(labels.items())))
            if found is not None and (candidate == name or self.types[candidate] == "counter"):
                return found
        return None

    def type_of(self, name: str) -> str | None:
        m = re.search(rf"^# TYPE {re.escape(name)} (\w+)$", self.text, re.M)
        return m.group(1) if m else None


def scrape(proxy: Proxy) -> Scrape:
    return Scrape(proxy.prometheus())


def check_expected(s: Scrape, expected: list[tuple[str, dict[str, str], int]]) -> None:
    wrong = [
        (name, labels, want, s.value(name, labels))
        for name, labels, want in expected
        if s.value(name, labels) != want
    ]
    assert not wrong, "\n".join(f"{n}{lb}: want {w}, got {g}" for n, lb, w, g in wrong)


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def worker_counters(supervisor: int, index: int) -> dict[str, int]:
    """One worker's own counters, asked the way its siblings ask (udsproxy.stats.peers: the
    abstract socket ``\\0udsproxy-<supervisor pid>-stats-<index>``, command ``stats``)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(f"\0udsproxy-{supervisor}-stats-{index}")
        s.sendall(b"stats\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    counters, _gauges, _hists = json.loads(data)
    return {k: int(v) for k, v in counters.items()}


def text_stats(proxy: Proxy, query: str = "") -> dict[str, str]:
    status, _, body = proxy.admin("/stats" + query)
    assert status == 200, body
    out: dict[str, str] = {}
    for line in body.decode().splitlines():
        name, sep, value = line.partition(": ")
        assert sep and name and " " not in name, line
        out[name] = value
    return out


# --------------------------------------------------------------------------------------------
# 1-2. /stats/prometheus after known traffic, one process and two workers


def test_prometheus_after_known_traffic_has_envoy_names_labels_and_values(
    tmp_path: Path, nginx: NginxInstance, py_upstream: PyUpstream
) -> None:
    with running(tmp_path, proxy_config(nginx, py_upstream), "--concurrency", "1") as proxy:
        send_known_traffic(proxy.address)
        s = scrape(proxy)
        check_expected(s, expected_samples(proxy.address[1]))
        text = s.text

        # every family is typed: a counter's TYPE line names its samples exactly (a sample
        # whose name does not match its TYPE line comes back from the parser as "unknown")
        assert all(f.type in ("counter", "gauge", "histogram") for f in s.families), [
            (f.name, f.type) for f in s.families if f.type not in ("counter", "gauge", "histogram")
        ]
        # counters keep Envoy's names: no _total appended, no _created series
        for name in (
            "envoy_cluster_upstream_rq",
            "envoy_cluster_upstream_rq_xx",
            "envoy_cluster_upstream_rq_total",
            "envoy_http_downstream_rq_total",
            "envoy_http_downstream_rq_xx",
            "envoy_http_no_route",
            "envoy_listener_downstream_cx_total",
        ):
            assert s.type_of(name) == "counter", name
            assert re.search(rf"^{name}\{{", text, re.M), name
        for bad in (
            "envoy_cluster_upstream_rq_total_total",
            "envoy_cluster_upstream_rq_xx_total",
            "envoy_http_no_route_total",
            "envoy_http_downstream_rq_total_total",
        ):
            assert not re.search(rf"^(# TYPE )?{bad}\b", text, re.M), bad
        assert "_created" not in text
        assert "# HELP" not in text
        # the lines exactly as Envoy writes them (label order: extraction order)
        port = proxy.address[1]
        for line in (
            'envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="nginx"} 7',
            'envoy_cluster_upstream_rq{envoy_response_code="503",envoy_cluster_name="py"} 3',
            'envoy_cluster_upstream_rq_xx{envoy_response_code_class="5",envoy_cluster_name="py"} 3',
            'envoy_http_downstream_rq_xx{envoy_response_code_class="4",'
            'envoy_http_conn_manager_prefix="ingress_http"} 3',
            'envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="ingress_http"} 13',
            f'envoy_listener_downstream_cx_total{{envoy_listener_address="127.0.0.1_{port}"}} 13',
            'envoy_http_no_route{envoy_http_conn_manager_prefix="ingress_http"} 1',
            "envoy_server_live{} 1",
        ):
            assert re.search(rf"^{re.escape(line)}$", text, re.M), line
        # integer values everywhere but the histogram sums
        samples = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
        assert len(samples) > 100
        for ln in samples:
            if re.match(r"envoy_\w+_sum\{", ln):
                assert re.fullmatch(r"\S+ [0-9]+(\.[0-9]+)?(e[+-]?[0-9]+)?", ln), ln
            else:
                assert re.fullmatch(r"envoy_\w+\{[^}]*\} (0|[1-9][0-9]*)", ln), ln
        # histograms: cumulative buckets up to +Inf, _sum, _count == upstream requests
        for cluster_name, n in (("nginx", 9), ("py", 3)):
            labels = {"envoy_cluster_name": cluster_name}
            assert s.type_of("envoy_cluster_upstream_rq_time") == "histogram"
            buckets = [
                (k, v)
                for k, v in s.samples.items()
                if k[0] == "envoy_cluster_upstream_rq_time_bucket"
                and dict(k[1]).get("envoy_cluster_name") == cluster_name
            ]
            les = [dict(k[1])["le"] for k, _ in buckets]
            assert les[0] == "0.5" and les[-1] == "+Inf" and "3600000" in les, les
            values = [v for _, v in buckets]
            assert values == sorted(values) and values[-1] == n, buckets
            assert s.value("envoy_cluster_upstream_rq_time_count", labels) == n
            total = s.value("envoy_cluster_upstream_rq_time_sum", labels)
            assert total is not None and 0 < total < n * 1000


def test_two_workers_publish_the_same_totals(
    tmp_path: Path, nginx: NginxInstance, py_upstream: PyUpstream
) -> None:
    """The same traffic over new connections, served by two worker processes: every scrape
    (whichever worker answers it) sums both, and the totals are those of one process."""
    with running(tmp_path, proxy_config(nginx, py_upstream), "--concurrency", "2") as proxy:
        assert wait_until(lambda: len(children(proxy.pid)) == 2, 10), children(proxy.pid)
        workers = children(proxy.pid)
        send_known_traffic(proxy.address, threads=4)
        scrapes = [scrape(proxy) for _ in range(6)]  # new connections: both workers answer
        for s in scrapes:
            check_expected(s, expected_samples(proxy.address[1]))
            assert s.value("envoy_server_concurrency", {}) == 2
        # both workers served part of it (their own counters, asked over the peer socket)
        per_worker = [
            worker_counters(proxy.pid, i).get(f"http.{PREFIX}.downstream_rq_total", -1)
            for i in range(2)
        ]
        assert sum(per_worker) == 13, per_worker
        assert all(n > 0 for n in per_worker), f"one worker served everything: {per_worker}"
        # /clusters sums the per-host counts of both workers too, whichever one answers
        for _ in range(4):
            lines = proxy.admin("/clusters")[2].decode().splitlines()
            assert f"nginx::{nginx.socket_path}::rq_total::9" in lines, lines
            assert f"py::{py_upstream.socket_path}::rq_error::3" in lines, lines
        assert children(proxy.pid) == workers  # nobody restarted on the way


# --------------------------------------------------------------------------------------------
# 3. the endpoints


def test_read_only_endpoints(tmp_path: Path, nginx: NginxInstance, py_upstream: PyUpstream) -> None:
    with running(tmp_path, proxy_config(nginx, py_upstream), "--concurrency", "1") as proxy:
        send_known_traffic(proxy.address)

        # /stats: "name: value", sorted, counters and gauges with integer values
        stats = text_stats(proxy)
        assert stats["cluster.nginx.upstream_rq_200"] == "7"
        assert stats["cluster.py.upstream_rq_5xx"] == "3"
        assert stats[f"http.{PREFIX}.downstream_rq_4xx"] == "3"
        assert stats[f"http.{PREFIX}.no_route"] == "1"
        assert stats[f"listener.127.0.0.1_{proxy.address[1]}.downstream_cx_total"] == "13"
        assert stats["server.live"] == "1"
        assert stats["cluster.nginx.upstream_rq_time"].startswith("P0(")
        scalars = [n for n, v in stats.items() if re.fullmatch(r"-?\d+", v)]
        assert scalars == sorted(scalars)

        # ?filter=<regex>
        filtered = text_stats(proxy, "?filter=" + "upstream_rq_[0-9]{3}$")
        assert filtered == {
            "cluster.nginx.upstream_rq_200": "7",
            "cluster.nginx.upstream_rq_404": "2",
            "cluster.py.upstream_rq_503": "3",
        }
        assert text_stats(proxy, "?filter=%5Ehttp%5C..*no_route$") == {
            f"http.{PREFIX}.no_route": "1"
        }
        status, _, body = proxy.admin("/stats?filter=(unclosed")
        assert status == 400, body

        # ?format=json: {"stats": [{"name", "value"}..., {"histograms": {...}}]}
        status, headers, body = proxy.admin("/stats?format=json")
        assert status == 200 and headers["content-type"].startswith("application/json")
        doc = json.loads(body)
        assert set(doc) == {"stats"}
        values = {e["name"]: e["value"] for e in doc["stats"] if "name" in e}
        assert values["cluster.nginx.upstream_rq_200"] == 7
        assert values[f"http.{PREFIX}.downstream_rq_total"] == 13
        assert all(isinstance(v, int) for v in values.values())
        hists = [e["histograms"] for e in doc["stats"] if "histograms" in e]
        assert len(hists) == 1
        assert hists[0]["supported_quantiles"] == [0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100]
        computed = {h["name"]: h["values"] for h in hists[0]["computed_quantiles"]}
        assert len(computed["cluster.nginx.upstream_rq_time"]) == 10
        assert set(computed["cluster.nginx.upstream_rq_time"][0]) == {"cumulative", "interval"}
        doc = json.loads(proxy.admin("/stats?format=json&filter=no_route")[2])
        assert doc == {"stats": [{"name": f"http.{PREFIX}.no_route", "value": 1}]}
        # ?format=prometheus is /stats/prometheus
        status, _, body = proxy.admin("/stats?format=prometheus")
        assert status == 200 and b"# TYPE envoy_cluster_upstream_rq counter" in body

        # /ready, /server_info
        assert proxy.admin("/ready")[::2] == (200, b"LIVE\n")
        status, headers, body = proxy.admin("/server_info")
        assert status == 200 and headers["content-type"] == "application/json"
        info = json.loads(body)
        assert info["state"] == "LIVE"
        assert info["version"].startswith("udsproxy/")
        assert info["command_line_options"]["concurrency"] == 1
        assert re.fullmatch(r"\d+s", info["uptime_current_epoch"])

        # /clusters: host is the socket path, with its counts and health
        status, _, body = proxy.admin("/clusters")
        assert status == 200
        lines = body.decode().splitlines()
        assert f"nginx::{nginx.socket_path}::rq_total::9" in lines
        # Envoy's host rq_success / rq_error: non-5xx / 5xx responses (7 x 200 + 2 x 404)
        assert f"nginx::{nginx.socket_path}::rq_success::9" in lines
        assert f"nginx::{nginx.socket_path}::rq_active::0" in lines
        assert f"py::{py_upstream.socket_path}::rq_error::3" in lines
        assert f"nginx::{nginx.socket_path}::health_flags::healthy" in lines
        doc = json.loads(proxy.admin("/clusters?format=json")[2])
        by_name = {c["name"]: c for c in doc["cluster_statuses"]}
        assert [h["address"] for h in by_name["nginx"]["host_statuses"]] == [nginx.socket_path]

        # /config_dump: the running config as JSON
        status, headers, body = proxy.admin("/config_dump")
        assert status == 200 and headers["content-type"] == "application/json"
        dump = json.dumps(json.loads(body))
        assert nginx.socket_path in dump and py_upstream.socket_path in dump
        assert "/missing/" in dump

        # /listeners
        status, _, body = proxy.admin("/listeners")
        assert status == 200
        assert body.decode().splitlines() == [f"{PREFIX}::127.0.0.1:{proxy.address[1]}"]
        doc = json.loads(proxy.admin("/listeners?format=json")[2])
        assert [x["name"] for x in doc["listener_statuses"]] == [PREFIX]

        # mutations only via POST: a GET is 400 and changes nothing
        for path in (
            "/quitquitquit",
            "/healthcheck/fail",
            "/healthcheck/ok",
            "/reset_counters",
            "/drain_listeners",
            "/logging",
            "/logging?level=debug",
        ):
            status, _, body = proxy.admin(path)
            assert status == 400, (path, status, body)
        assert proxy.proc.poll() is None
        assert proxy.admin("/ready")[0] == 200
        assert text_stats(proxy, "?filter=no_route")[f"http.{PREFIX}.no_route"] == "1"
        r = get(proxy.address, "/index.html", headers={"Connection": "keep-alive"})
        assert r.status == 200 and r.header("connection") != "close"
        assert proxy.admin("/no/such/endpoint")[0] == 404


@pytest.mark.parametrize("concurrency", ["1", "2"])
def test_reset_counters_zeroes_every_worker(
    tmp_path: Path, nginx: NginxInstance, py_upstream: PyUpstream, concurrency: str
) -> None:
    with running(tmp_path, proxy_config(nginx, py_upstream), "--concurrency", concurrency) as p:
        send_known_traffic(p.address, threads=4)
        hcm = {"envoy_http_conn_manager_prefix": PREFIX}
        assert scrape(p).value("envoy_http_downstream_rq_total", hcm) == 13

        # POST /reset_counters: counters and histograms to zero, gauges stay
        assert p.admin("/reset_counters", "POST")[::2] == (200, b"OK\n")
        for s in (scrape(p), scrape(p), scrape(p)):  # whichever worker answers
            assert s.value("envoy_http_downstream_rq_total", hcm) == 0
            assert s.value("envoy_http_no_route", hcm) == 0
            nginx_labels = {"envoy_cluster_name": "nginx"}
            assert s.value("envoy_cluster_upstream_rq_total", nginx_labels) == 0
            assert s.value("envoy_cluster_upstream_rq_time_count", nginx_labels) == 0
            assert s.value("envoy_cluster_membership_total", nginx_labels) == 1
            assert s.value("envoy_server_live", {}) == 1
            counters = [
                (n, dict(lb), v)
                for (n, lb), v in s.samples.items()
                if s.types[n] == "counter" and "_version" not in n
            ]
            assert counters and not [c for c in counters if c[2]], "counters survived"
        # and counting goes on from zero
        assert get(p.address, "/index.html").status == 200
        assert scrape(p).value("envoy_http_downstream_rq_total", hcm) == 1


def _keepalive_get(conn: http.client.HTTPConnection, path: str) -> tuple[int, str | None]:
    conn.request("GET", path)
    resp = conn.getresponse()
    resp.read()
    return resp.status, resp.getheader("connection")


@pytest.mark.parametrize("concurrency", ["1", "2"])
def test_healthcheck_fail_closes_every_response_and_ok_undoes_it(
    tmp_path: Path, nginx: NginxInstance, py_upstream: PyUpstream, concurrency: str
) -> None:
    with running(tmp_path, proxy_config(nginx, py_upstream), "--concurrency", concurrency) as p:
        keepalive = {"Connection": "keep-alive"}
        conn = http.client.HTTPConnection(*p.address, timeout=5)
        try:
            assert _keepalive_get(conn, "/index.html") == (200, None)
            assert p.admin("/healthcheck/fail", "POST")[::2] == (200, b"OK\n")
            # the open keep-alive connection is told to close after its next response
            assert _keepalive_get(conn, "/index.html") == (200, "close")
        finally:
            conn.close()
        # and so is every new one, whichever worker serves it
        answers = [get(p.address, "/py/hello", headers=keepalive) for _ in range(12)]
        assert all(r.status == 200 for r in answers)
        closes = [r.header("connection") for r in answers]
        assert closes == ["close"] * 12, closes
        assert p.admin("/ready")[0] == 200  # healthcheck/fail is not a drain

        # POST /healthcheck/ok undoes it
        assert p.admin("/healthcheck/ok", "POST")[::2] == (200, b"OK\n")
        answers = [get(p.address, "/index.html", headers=keepalive) for _ in range(12)]
        assert all(r.status == 200 for r in answers)
        closes = [r.header("connection") for r in answers]
        assert closes == [None] * 12, closes


def test_logging_levels(tmp_path: Path, nginx: NginxInstance, py_upstream: PyUpstream) -> None:
    with running(tmp_path, proxy_config(nginx, py_upstream), "--concurrency", "1") as p:
        status, _, body = p.admin("/logging?level=debug", "POST")
        assert status == 200, body
        assert re.search(rb"^  udsproxy: debug$", body, re.M), body
        n = len(p.lines)
        assert get(p.address, "/index.html").status == 200
        p.admin("/logging?level=info", "POST")
        status, _, body = p.admin("/logging?admin=warning", "POST")
        assert status == 200 and re.search(rb"^  udsproxy\.admin: warning$", body, re.M), body
        assert re.search(rb"^  udsproxy: info$", body, re.M), body
        assert p.admin("/logging?level=loud", "POST")[0] == 400
        assert p.proc.poll() is None and len(p.lines) >= n


def _refused(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_drain_listeners_stops_accepting_and_quitquitquit_exits_0(
    tmp_path: Path, nginx: NginxInstance, py_upstream: PyUpstream
) -> None:
    with running(tmp_path, proxy_config(nginx, py_upstream), "--concurrency", "1") as p:
        assert get(p.address, "/index.html").status == 200
        # a request in flight when the drain starts finishes, with connection: close
        busy = http.client.HTTPConnection(*p.address, timeout=5)
        try:
            busy.request("GET", "/py/slow?ms=400")
            time.sleep(0.1)
            assert p.admin("/drain_listeners", "POST")[::2] == (200, b"OK\n")
            resp = busy.getresponse()
            assert (resp.status, resp.read()) == (200, b"slow\n")
            assert resp.getheader("connection") == "close"
        finally:
            busy.close()
        assert _refused(p.address)
        status, _, body = p.admin("/ready")
        assert (status, body) == (503, b"DRAINING\n")
        assert json.loads(p.admin("/server_info")[2])["state"] == "DRAINING"
        assert p.admin("/stats/prometheus")[0] == 200  # the admin keeps answering

        assert p.admin("/quitquitquit", "POST")[::2] == (200, b"OK\n")
        assert p.proc.wait(15) == 0


@pytest.mark.parametrize("concurrency", ["1", "2"])
def test_graceful_drain_discourages_keepalive_then_stops_accepting(
    tmp_path: Path, nginx: NginxInstance, py_upstream: PyUpstream, concurrency: str
) -> None:
    args = ("--concurrency", concurrency, "--drain-time-s", "1.5")
    with running(tmp_path, proxy_config(nginx, py_upstream), *args) as p:
        assert get(p.address, "/index.html").status == 200
        assert p.admin("/drain_listeners?graceful", "POST")[::2] == (200, b"OK\n")
        # during the drain time: still accepting, every response says connection: close
        answers = [get(p.address, "/index.html", headers={"Connection": "keep-alive"})]
        answers += [get(p.address, "/py/hello") for _ in range(5)]
        assert [(r.status, r.header("connection")) for r in answers] == [(200, "close")] * 6
        assert p.admin("/ready")[0] == 503
        # then the listeners close
        assert wait_until(lambda: _refused(p.address), 10)
        assert p.proc.poll() is None  # draining is not exiting


def test_drain_listeners_with_two_workers(
    tmp_path: Path, nginx: NginxInstance, py_upstream: PyUpstream
) -> None:
    with running(tmp_path, proxy_config(nginx, py_upstream), "--concurrency", "2") as p:
        assert wait_until(lambda: len(children(p.pid)) == 2, 10)
        assert get(p.address, "/index.html").status == 200
        assert p.admin("/drain_listeners", "POST")[0] == 200
        time.sleep(0.2)
        accepted = sum(not _refused(p.address) for _ in range(12))
        assert accepted == 0, f"{accepted} of 12 new connections accepted after the drain"
        states = [p.admin("/ready")[0] for _ in range(8)]
        assert states == [503] * 8, states


def test_quitquitquit_exits_0_with_workers(
    tmp_path: Path, nginx: NginxInstance, py_upstream: PyUpstream
) -> None:
    with running(tmp_path, proxy_config(nginx, py_upstream), "--concurrency", "2") as p:
        assert wait_until(lambda: len(children(p.pid)) == 2, 10)
        workers = children(p.pid)
        assert get(p.address, "/index.html").status == 200
        assert p.admin("/quitquitquit", "POST")[::2] == (200, b"OK\n")
        assert p.proc.wait(15) == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)


# --------------------------------------------------------------------------------------------
# 4. the admin is not reachable through a proxy listener


def test_admin_paths_on_the_proxy_listener_go_to_the_upstream(
    tmp_path: Path, nginx: NginxInstance, py_upstream: PyUpstream
) -> None:
    cfg = proxy_config(nginx, py_upstream)
    cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"
    ]["virtual_hosts"][0]["routes"].append(route("nginx", prefix="/"))
    with running(tmp_path, cfg, "--concurrency", "1") as proxy:
        assert proxy.admin_port != proxy.address[1]
        for path in ("/stats", "/stats/prometheus", "/ready", "/server_info", "/config_dump"):
            r = get(proxy.address, path)
            assert r.status == 404, (path, r.status, r.body[:200])
            assert b"nginx" in r.body.lower() or b"404 Not Found" in r.body, r.body[:200]
            assert b"envoy_" not in r.body and b"LIVE" not in r.body
        for path in ("/quitquitquit", "/drain_listeners", "/healthcheck/fail"):
            r = get(proxy.address, path, method="POST")
            assert r.status in (404, 405), (path, r.status)
        # nothing happened to the proxy, and the proxied admin paths counted as nginx 4xx
        assert proxy.proc.poll() is None
        assert proxy.admin("/ready")[::2] == (200, b"LIVE\n")
        r = get(proxy.address, "/index.html", headers={"Connection": "keep-alive"})
        assert r.status == 200 and r.header("connection") != "close"
        s = scrape(proxy)
        assert s.value("envoy_cluster_upstream_rq_xx", {
            "envoy_response_code_class": "4", "envoy_cluster_name": "nginx"
        }) == 8  # fmt: skip


# --------------------------------------------------------------------------------------------
# 5. the filesystem behind the upstream sockets, and /ready requiring one


def test_uds_gauges_follow_the_socket_and_its_filesystem(
    tmp_path: Path, nginx: NginxInstance, py_upstream: PyUpstream
) -> None:
    ghost = str(shm_dir() / f"udsproxy-admin-ghost-{os.getpid()}.sock")
    unlink_quietly(ghost)
    ballast = shm_dir() / f"udsproxy-admin-ballast-{os.getpid()}.bin"
    ballast.write_bytes(os.urandom(4 << 20))  # tmpfs counts it as used: 4 MiB at least
    try:
        with running(tmp_path, proxy_config(nginx, py_upstream, ghost=ghost)) as proxy:
            s = scrape(proxy)
            for name in ("nginx", "py"):
                labels = {"envoy_cluster_name": name}
                assert s.type_of("envoy_cluster_uds_socket_present") == "gauge"
                assert s.value("envoy_cluster_uds_socket_present", labels) == 1
                total = s.value("envoy_cluster_uds_fs_total_bytes", labels)
                used = s.value("envoy_cluster_uds_fs_used_bytes", labels)
                assert total is not None and used is not None
                st = os.statvfs(os.path.dirname(nginx.socket_path))
                assert total == st.f_blocks * st.f_frsize
                assert (4 << 20) <= used <= total, (used, total)
            ghost_labels = {"envoy_cluster_name": "ghost"}
            assert s.value("envoy_cluster_uds_socket_present", ghost_labels) == 0
            # read at scrape time: the file appears, then goes
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
                srv.bind(ghost)
                srv.listen()
                s = scrape(proxy)
                assert s.value("envoy_cluster_uds_socket_present", ghost_labels) == 1
            os.unlink(ghost)
            s = scrape(proxy)
            assert s.value("envoy_cluster_uds_socket_present", ghost_labels) == 0
            # the default: /ready does not look at the upstream sockets
            assert proxy.admin("/ready")[0] == 200
    finally:
        ballast.unlink()
        unlink_quietly(ghost)


@pytest.mark.parametrize("concurrency", ["1", "2"])
def test_ready_requires_upstream_socket(
    tmp_path: Path, nginx: NginxInstance, concurrency: str
) -> None:
    missing = str(shm_dir() / f"udsproxy-admin-missing-{os.getpid()}-{concurrency}.sock")
    unlink_quietly(missing)
    cfg = bootstrap(
        [listener([vhost("all", [route("app", prefix="/")])])], [cluster("app", missing)]
    )
    cfg["admin"] = ADMIN
    args = ("--ready-requires-upstream", "--concurrency", concurrency)
    try:
        with running(tmp_path, cfg, *args) as proxy:
            # new connections each time: with two workers either may answer
            for _ in range(6):
                status, _, body = proxy.admin("/ready")
                assert status == 503, body
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
                srv.bind(missing)
                srv.listen()
                answers = [proxy.admin("/ready")[::2] for _ in range(10)]
                assert answers == [(200, b"LIVE\n")] * 10, answers
            os.unlink(missing)
            assert proxy.admin("/ready")[0] == 503
        # and with the upstream's socket there from the start
        cfg["static_resources"]["clusters"] = [cluster("app", nginx.socket_path)]
        (tmp_path / "again").mkdir()
        with running(tmp_path / "again", cfg, *args) as proxy:
            answers = [proxy.admin("/ready")[::2] for _ in range(10)]
            assert answers == [(200, b"LIVE\n")] * 10, answers
            assert get(proxy.address, "/index.html").status == 200
    finally:
        unlink_quietly(missing)


# --------------------------------------------------------------------------------------------
# 6. reload counters


def _cds(path: Path, socket_path: str, version: str, *, typo: bool = False) -> None:
    resource = {"@type": CLUSTER_TYPE, **cluster("dyn", socket_path)}
    if typo:
        resource["conect_timeout"] = resource.pop("connect_timeout")
    doc = {"version_info": version, "resources": [resource]}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.replace(tmp, path)  # the writer recipe Envoy documents: rename over it


@pytest.mark.parametrize("concurrency", ["1", "2"])
def test_cds_reload_counters(
    tmp_path: Path, nginx: NginxInstance, py_upstream: PyUpstream, concurrency: str
) -> None:
    """Every worker applies every update; the counters count each update once."""
    cds_path = tmp_path / "cds.yaml"
    _cds(cds_path, nginx.socket_path, "1")
    cfg = bootstrap([listener([vhost("all", [route("dyn", prefix="/")])])], [])
    cfg["dynamic_resources"] = {
        "cds_config": {"resource_api_version": "V3", "path_config_source": {"path": str(cds_path)}}
    }
    cfg["admin"] = ADMIN
    with running(tmp_path, cfg, "--concurrency", concurrency) as proxy:
        assert get(proxy.address, "/index.html").status == 200

        def cds() -> dict[str, int]:
            stats = text_stats(proxy, "?filter=^cluster_manager%5C.cds%5C.")
            return {k.removeprefix("cluster_manager.cds."): int(v) for k, v in stats.items()}

        before = cds()
        assert before.get("update_rejected", 0) == 0, before
        _cds(cds_path, py_upstream.socket_path, "2", typo=True)
        assert wait_until(lambda: cds().get("update_rejected") == 1, 15), proxy.stderr
        after_bad = cds()
        assert after_bad.get("update_success", 0) == before.get("update_success", 0)
        assert after_bad["update_attempt"] == before.get("update_attempt", 0) + 1
        assert get(proxy.address, "/index.html").status == 200  # old config keeps serving

        _cds(cds_path, py_upstream.socket_path, "2")
        assert wait_until(
            lambda: cds().get("update_success", 0) == before.get("update_success", 0) + 1, 15
        ), proxy.stderr
        after_good = cds()
        assert after_good["update_rejected"] == 1
        assert after_good["update_attempt"] == before.get("update_attempt", 0) + 2
        assert after_good["version"] != before["version"]
        # each worker applies the file itself: soon every new connection reaches the new cluster
        assert wait_until(
            lambda: all(
                get(proxy.address, "/py/hello").body == b"GET /py/hello\n" for _ in range(6)
            ),
            15,
        )

        s = scrape(proxy)
        assert s.value("envoy_cluster_manager_cds_update_rejected", {}) == 1
        assert s.type_of("envoy_cluster_manager_cds_update_rejected") == "counter"
        # Envoy: cluster_manager.cds.version is a gauge (a hash of the last accepted version)
        assert s.type_of("envoy_cluster_manager_cds_version") == "gauge"
