"""Load balancing and outlier detection against real upstreams: nginx, the Python upstream
(5xx bursts), a socket that is not there (connect failures), a TCP server (mixed endpoints).
Each test asserts the status, the flag, the stats, /clusters and the access log."""

from __future__ import annotations

import http.server
import json
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import SockPaths
from .support import (
    UF_BODY,
    AccessLog,
    CliProxy,
    NginxInstance,
    PyUpstream,
    bootstrap,
    cluster,
    envoy_log_re,
    get,
    listener,
    route,
    vhost,
    wait_until,
)

pytestmark = pytest.mark.integration

ADMIN = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
UH_BODY = b"no healthy upstream"
FAST = {"interval": "0.05s"}  # the sweep: ejections end within 50 ms of their time


class _Tcp(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"tcp\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Upstream", "tcp")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def tcp_upstream() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Tcp)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(5)


class Proxy(CliProxy):
    def __init__(self, tmp: Path, config: dict[str, Any], workers: int = 1) -> None:
        config["admin"] = ADMIN
        path = tmp / "proxy.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        super().__init__(path, "--concurrency", str(workers))
        self.addr = ("127.0.0.1", self.wait_listening("ingress_http"))
        assert wait_until(lambda: bool(self.admin_port), 10), self.stderr

    def get(self, path: str, agent: str = "udsproxy-tests") -> Any:
        return get(self.addr, path, headers={"User-Agent": agent})

    def admin(self, path: str) -> Any:
        response = get(("127.0.0.1", self.admin_port), path)
        assert response.status == 200
        return json.loads(response.body) if "json" in path else response.body.decode()

    def stats(self, prefix: str) -> dict[str, int]:
        stats = self.admin("/stats?format=json")["stats"]
        return {
            s["name"][len(prefix) :]: int(s["value"])
            for s in stats
            if s.get("name", "").startswith(prefix) and "value" in s
        }

    def flags(self, cluster_name: str) -> dict[str, str]:
        """host -> its health_flags, from /clusters' text form."""
        out = {}
        for line in self.admin("/clusters").splitlines():
            name, host, key, value = line.split("::", 3)
            if name == cluster_name and key == "health_flags":
                out[host] = value
        return out


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    started: list[Proxy] = []

    def start(config: dict[str, Any], workers: int = 1) -> Proxy:
        proxy = Proxy(tmp_path, config, workers)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


def with_outlier(c: dict[str, Any], **fields: Any) -> dict[str, Any]:
    c["outlier_detection"] = {**FAST, **fields}
    return c


def test_5xx_burst_ejects_then_the_host_comes_back(
    start: Any, nginx: NginxInstance, py_upstream: PyUpstream, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    burst = with_outlier(
        cluster("burst", py_upstream.socket_path, nginx.socket_path),
        consecutive_5xx=3, base_ejection_time="0.3s", max_ejection_percent=50,
    )  # fmt: skip
    p = start(bootstrap([listener([vhost("v", [route("burst", prefix="/")])], access_log=log)],
                        [burst]))  # fmt: skip
    py, ngx = py_upstream.socket_path, nginx.socket_path
    # round robin: py answers 500, nginx 404 (it has no such file)
    statuses = [p.get("/py/status/500", "burst-1").status for _ in range(6)]
    assert statuses == [500, 404] * 3
    assert p.flags("burst") == {py: "/failed_outlier_check", ngx: "healthy"}
    stats = p.stats("cluster.burst.")
    assert stats["outlier_detection.ejections_active"] == 1
    assert stats["outlier_detection.ejections_enforced_total"] == 1
    assert stats["outlier_detection.ejections_enforced_consecutive_5xx"] == 1
    assert stats["outlier_detection.ejections_detected_consecutive_5xx"] == 1
    assert stats["outlier_detection.ejections_total"] == 1  # deprecated names too
    assert stats["outlier_detection.ejections_consecutive_5xx"] == 1
    assert stats["outlier_detection.ejections_overflow"] == 0
    assert stats["membership_healthy"] == 1 and stats["membership_total"] == 2
    clusters = p.admin("/clusters?format=json")["cluster_statuses"]
    hosts = {h["address"]: h for h in clusters[0]["host_statuses"]}
    assert hosts[py]["health_status"] == {
        "eds_health_status": "HEALTHY",
        "failed_outlier_check": True,
    }
    # ejected: everything goes to nginx (1 of 2 hosts healthy is 50 %: no panic)
    assert [p.get("/py/status/500", "burst-2").status for _ in range(4)] == [404] * 4
    # base_ejection_time later, the sweep brings it back
    assert wait_until(lambda: p.flags("burst")[py] == "healthy", 10)
    assert p.stats("cluster.burst.")["outlier_detection.ejections_active"] == 0
    assert 500 in [p.get("/py/status/500", "burst-3").status for _ in range(2)]
    p.stop()
    lines = AccessLog(log)
    authority = f"{p.addr[0]}:{p.addr[1]}"
    for agent, upstreams in (("burst-1", [py, ngx] * 3), ("burst-2", [ngx] * 4)):
        found = lines.find(agent)
        assert len(found) == len(upstreams)
        for line, upstream in zip(found, upstreams, strict=True):
            status = 500 if upstream == py else 404
            pattern = envoy_log_re(
                path="/py/status/500", status=status, sent=r"\d+", user_agent=agent,
                authority=authority, upstream=upstream,
            )  # fmt: skip
            assert pattern.match(line), line


def test_a_missing_socket_is_ejected_after_five_connect_failures(
    start: Any, nginx: NginxInstance, sock_path: SockPaths, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    gone = sock_path("gone")
    c = with_outlier(cluster("gone", gone, nginx.socket_path), max_ejection_percent=50)
    p = start(bootstrap([listener([vhost("v", [route("gone", prefix="/")])], access_log=log)],
                        [c]))  # fmt: skip
    statuses = [p.get("/index.html", "gone-1").status for _ in range(10)]
    assert statuses == [503, 200] * 5  # connect failures count as 503 (no split)
    assert [p.get("/index.html", "gone-2").status for _ in range(4)] == [200] * 4
    assert p.flags("gone") == {gone: "/failed_outlier_check", nginx.socket_path: "healthy"}
    stats = p.stats("cluster.gone.outlier_detection.")
    assert stats["ejections_enforced_consecutive_5xx"] == 1
    # 503 is a gateway failure: detected too, not enforced (Envoy's default 0 %)
    assert stats["ejections_detected_consecutive_gateway_failure"] == 1
    assert stats["ejections_enforced_consecutive_gateway_failure"] == 0
    p.stop()
    authority = f"{p.addr[0]}:{p.addr[1]}"
    uf = [line for line in AccessLog(log).find("gone-1") if " 503 " in line]
    assert len(uf) == 5
    pattern = envoy_log_re(path="/index.html", status=503, flags="UF", sent=len(UF_BODY),
                           service_time="-", user_agent="gone-1", authority=authority,
                           upstream=gone)  # fmt: skip
    assert all(pattern.match(line) for line in uf), uf


def test_split_mode_ejects_on_local_origin_failures(
    start: Any, nginx: NginxInstance, sock_path: SockPaths
) -> None:
    gone = sock_path("gone")
    c = with_outlier(
        cluster("split", gone, nginx.socket_path),
        max_ejection_percent=50, split_external_local_origin_errors=True,
        consecutive_local_origin_failure=2,
    )  # fmt: skip
    p = start(bootstrap([listener([vhost("v", [route("split", prefix="/")])])], [c]))
    assert [p.get("/index.html").status for _ in range(4)] == [503, 200, 503, 200]
    assert p.flags("split")[gone] == "/failed_outlier_check"
    stats = p.stats("cluster.split.outlier_detection.")
    assert stats["ejections_enforced_consecutive_local_origin_failure"] == 1
    assert stats["ejections_detected_consecutive_5xx"] == 0


def test_one_endpoint_never_answers_uh_by_default_but_does_without_panic(
    start: Any, sock_path: SockPaths, tmp_path: Path
) -> None:
    """envoy-parity.md 2.3: an ejected lone host is 0 % healthy, so panic sends it traffic still
    (503 UF from the connect, not UH), unless healthy_panic_threshold is 0."""
    log = tmp_path / "access.log"
    gone = sock_path("lone")
    lone = with_outlier(cluster("lone", gone), max_ejection_percent=100)
    strict = with_outlier(cluster("strict", gone), max_ejection_percent=100)
    strict["common_lb_config"] = {"healthy_panic_threshold": {"value": 0}}
    default = with_outlier(cluster("default", gone))  # 10 %: one host is never ejected
    routes = [route("lone", prefix="/lone/"), route("strict", prefix="/strict/"),
              route("default", prefix="/default/")]  # fmt: skip
    p = start(bootstrap([listener([vhost("v", routes)], access_log=log)], [lone, strict, default]))
    for _ in range(8):
        assert p.get("/lone/x", "lone").body == UF_BODY
        assert p.get("/default/x", "default").body == UF_BODY
    assert p.flags("lone") == {gone: "/failed_outlier_check"}
    assert p.flags("default") == {gone: "healthy"}
    lone_stats = p.stats("cluster.lone.")
    assert lone_stats["outlier_detection.ejections_active"] == 1
    assert lone_stats["lb_healthy_panic"] == 3  # the picks after the ejection
    assert lone_stats["upstream_cx_none_healthy"] == 0
    default_stats = p.stats("cluster.default.outlier_detection.")
    # the 5th failure is both a consecutive 5xx and a gateway failure: two refused ejections
    assert default_stats["ejections_overflow"] == 2 and default_stats["ejections_active"] == 0
    statuses = [p.get("/strict/x", "strict") for _ in range(7)]
    assert [r.body for r in statuses] == [UF_BODY] * 5 + [UH_BODY] * 2
    assert p.stats("cluster.strict.")["upstream_cx_none_healthy"] == 2
    p.stop()
    authority = f"{p.addr[0]}:{p.addr[1]}"
    uh = envoy_log_re(path="/strict/x", status=503, flags="UH", sent=len(UH_BODY),
                      service_time="-", user_agent="strict", authority=authority,
                      upstream="-")  # fmt: skip
    lines = AccessLog(log).find('"strict"')
    assert [bool(uh.match(line)) for line in lines] == [False] * 5 + [True] * 2, lines


@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"])
def test_policies_over_pipe_and_tcp_endpoints(
    policy: str, start: Any, nginx: NginxInstance, tcp_upstream: int, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    c = cluster("mix", nginx.socket_path)
    c["lb_policy"] = policy
    endpoints = c["load_assignment"]["endpoints"][0]["lb_endpoints"]
    tcp = {"socket_address": {"address": "127.0.0.1", "port_value": tcp_upstream}}
    endpoints.append({"endpoint": {"address": tcp}, "load_balancing_weight": 3})
    if policy == "LEAST_REQUEST":
        c["least_request_lb_config"] = {"choice_count": 2}
    p = start(bootstrap([listener([vhost("v", [route("mix", prefix="/")])], access_log=log)],
                        [c]))  # fmt: skip
    seen = Counter(p.get("/index.html", policy).header("x-upstream") or "nginx" for _ in range(40))
    assert set(seen) == {"nginx", "tcp"}, seen
    if policy == "ROUND_ROBIN":
        assert seen == {"tcp": 30, "nginx": 10}  # weights 3 : 1
    p.stop()
    upstreams = {line.rsplit('"', 2)[-2] for line in AccessLog(log).find(policy)}
    assert upstreams == {nginx.socket_path, f"127.0.0.1:{tcp_upstream}"}


def test_outlier_state_is_per_worker(start: Any, sock_path: SockPaths) -> None:
    """Two workers: each counts its own failures and ejects on its own (Envoy: per process);
    /clusters shows the flag any worker has set, /stats sums the workers."""
    gone = sock_path("w")
    c = with_outlier(cluster("w", gone), max_ejection_percent=100, base_ejection_time="60s")
    p = start(bootstrap([listener([vhost("v", [route("w", prefix="/")])])], [c]), workers=2)
    for _ in range(40):
        assert p.get("/x").body == UF_BODY  # panic: never UH
    assert p.flags("w") == {gone: "/failed_outlier_check"}
    stats = p.stats("cluster.w.outlier_detection.")
    assert 1 <= stats["ejections_enforced_total"] <= 2
    assert stats["ejections_active"] == stats["ejections_enforced_total"]


def test_a_passing_health_check_brings_an_ejected_host_back(
    start: Any, nginx: NginxInstance, py_upstream: PyUpstream
) -> None:
    """successful_active_health_check_uneject_host (Envoy's default): the ejection would last a
    minute; the next passing health check ends it."""
    c = with_outlier(
        cluster("hc", py_upstream.socket_path, nginx.socket_path),
        consecutive_5xx=2, base_ejection_time="60s", max_ejection_percent=50,
    )  # fmt: skip
    c["health_checks"] = [
        {"timeout": "1s", "interval": "0.2s", "no_traffic_interval": "0.2s",
         "unhealthy_threshold": 2, "healthy_threshold": 1,
         "http_health_check": {"path": "/index.html"}}
    ]  # fmt: skip
    p = start(bootstrap([listener([vhost("v", [route("hc", prefix="/")])])], [c]))
    py = py_upstream.socket_path
    assert wait_until(lambda: set(p.flags("hc").values()) == {"healthy"}, 10)
    for _ in range(6):
        if p.flags("hc")[py] != "healthy":
            break
        p.get("/py/status/500")
    ejected = p.stats("cluster.hc.outlier_detection.")["ejections_enforced_total"]
    assert ejected >= 1
    assert wait_until(lambda: p.flags("hc")[py] == "healthy", 10)
    assert p.stats("cluster.hc.outlier_detection.")["ejections_active"] == 0
