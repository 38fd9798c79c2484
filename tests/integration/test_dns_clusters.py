"""DNS clusters against a real nginx on TCP: STRICT_DNS, LOGICAL_DNS, dns_lookup_family, a name
that does not resolve, the pool following /etc/hosts, and weighted round robin.

nginx listens on 127.0.0.1, 127.0.0.2 and ::1 (one port) and answers with the address that took
the connection, so each response says which host the proxy picked. The names live in /etc/hosts
(test-only names, added by a fixture and removed after it; glibc reads the file at every lookup),
so no test touches the network. ``does-not-exist.invalid`` (RFC 6761) never resolves.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .support import (
    AccessLog,
    CliProxy,
    bootstrap,
    get,
    listener,
    require,
    route,
    vhost,
    wait_until,
)

pytestmark = pytest.mark.integration

HOSTS = Path("/etc/hosts")
MARK = "# udsproxy-test-dns"
NAMES = {
    "udsproxy-dns-two": ("127.0.0.1", "127.0.0.2"),
    "udsproxy-dns-v6": ("::1", "127.0.0.1"),
    "udsproxy-dns-flip": ("127.0.0.1",),
}
ADMIN = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        listen 127.0.0.2:{port};
        listen [::1]:{port};
        location / {{ return 200 "$server_addr\\n"; }}
    }}
}}
"""


def _set_hosts(lines: dict[str, tuple[str, ...]]) -> None:
    """Replace our marked lines in /etc/hosts (in place: it may be a bind mount)."""
    kept = [line for line in HOSTS.read_text().splitlines() if not line.endswith(MARK)]
    ours = [f"{ip} {name} {MARK}" for name, ips in lines.items() for ip in ips]
    with HOSTS.open("r+") as f:
        f.seek(0)
        f.write("\n".join(kept + ours) + "\n")
        f.truncate()


@pytest.fixture(scope="module")
def hosts() -> Iterator[None]:
    require(os.access(HOSTS, os.W_OK), "/etc/hosts is not writable")
    _set_hosts(NAMES)
    try:
        yield
    finally:
        _set_hosts({})


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def tcp_nginx(nginx_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    prefix = tmp_path_factory.mktemp("nginx-tcp")
    port = _free_port()
    user = "user root;" if os.geteuid() == 0 else ""
    (prefix / "nginx.conf").write_text(NGINX_CONF.format(prefix=prefix, port=port, user=user))
    proc = subprocess.Popen(
        [nginx_bin, "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        ok = wait_until(lambda: proc.poll() is not None or _tcp_live(port), 10)
        assert ok and proc.poll() is None, (prefix / "error.log").read_text()
        yield port
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


def _tcp_live(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.2", port), 0.5).close()
        socket.create_connection(("::1", port), 0.5).close()
    except OSError:
        return False
    return True


def dns_cluster(name: str, kind: str, host: str, port: int, **fields: Any) -> dict[str, Any]:
    endpoint = {"address": {"socket_address": {"address": host, "port_value": port}}}
    return {
        "name": name,
        "type": kind,
        "connect_timeout": "0.5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}],
        },
        **fields,
    }


class Proxy(CliProxy):
    def __init__(self, tmp: Path, config: dict[str, Any]) -> None:
        config["admin"] = ADMIN
        path = tmp / "proxy.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        super().__init__(path, "--concurrency", "1")
        self.port = self.wait_listening("ingress_http")
        assert wait_until(lambda: bool(self.admin_port), 10), self.stderr

    def body(self, path: str) -> str:
        response = get(("127.0.0.1", self.port), path)
        assert response.status == 200, (response.status, response.body)
        return response.body.decode().strip()

    def admin(self, path: str) -> Any:
        response = get(("127.0.0.1", self.admin_port), path)
        assert response.status == 200
        return json.loads(response.body) if "json" in path else response.body.decode()

    def counter(self, name: str) -> int:
        stats = self.admin("/stats?format=json")["stats"]
        return next(int(s["value"]) for s in stats if s.get("name") == name)

    def cluster_hosts(self, cluster: str) -> list[dict[str, Any]]:
        statuses = self.admin("/clusters?format=json")["cluster_statuses"]
        return next(c["host_statuses"] for c in statuses if c["name"] == cluster)


@pytest.fixture
def proxy_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Proxy] = []

    def start(config: dict[str, Any]) -> Proxy:
        proxy = Proxy(tmp_path, config)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


def routes(*clusters: str) -> list[dict[str, Any]]:
    return [route(c, prefix=f"/{c}/") for c in clusters]


def test_strict_and_logical_dns_and_lookup_family(
    hosts: None, tcp_nginx: int, proxy_factory: Any, tmp_path: Path
) -> None:
    port = tcp_nginx
    clusters = [
        dns_cluster("strict", "STRICT_DNS", "udsproxy-dns-two", port),
        dns_cluster("logical", "LOGICAL_DNS", "udsproxy-dns-two", port),
        dns_cluster("auto", "STRICT_DNS", "udsproxy-dns-v6", port),  # Envoy's default: AUTO
        dns_cluster("v4only", "STRICT_DNS", "udsproxy-dns-v6", port, dns_lookup_family="V4_ONLY"),
        dns_cluster(
            "preferv4", "STRICT_DNS", "udsproxy-dns-v6", port, dns_lookup_family="V4_PREFERRED"
        ),
        dns_cluster("all", "STRICT_DNS", "udsproxy-dns-v6", port, dns_lookup_family="ALL"),
    ]
    names = [c["name"] for c in clusters]
    log = tmp_path / "access.log"
    proxy = proxy_factory(
        bootstrap([listener([vhost("dns", routes(*names))], access_log=log)], clusters)
    )
    # warmed before serving: the very first requests find their hosts
    assert collections.Counter(proxy.body("/strict/") for _ in range(4)) == {
        "127.0.0.1": 2,
        "127.0.0.2": 2,
    }
    assert {proxy.body("/logical/") for _ in range(4)} == {"127.0.0.1"}  # the first address
    assert {proxy.body("/auto/") for _ in range(3)} == {"::1"}
    assert {proxy.body("/v4only/") for _ in range(3)} == {"127.0.0.1"}
    assert {proxy.body("/preferv4/") for _ in range(3)} == {"127.0.0.1"}
    assert {proxy.body("/all/") for _ in range(4)} == {"::1", "127.0.0.1"}
    hosts_json = proxy.cluster_hosts("strict")
    assert [(h["address"], h["hostname"], h["weight"]) for h in hosts_json] == [
        (f"127.0.0.1:{port}", "udsproxy-dns-two", 1),
        (f"127.0.0.2:{port}", "udsproxy-dns-two", 1),
    ]
    assert [h["address"] for h in proxy.cluster_hosts("all")] == [
        f"[::1]:{port}",
        f"127.0.0.1:{port}",
    ]
    assert proxy.counter("cluster.strict.update_success") >= 1
    assert proxy.counter("cluster.strict.update_failure") == 0
    text = proxy.admin("/clusters")
    assert f"strict::127.0.0.2:{port}::hostname::udsproxy-dns-two" in text
    # %UPSTREAM_HOST% is the resolved address
    assert wait_until(lambda: len(AccessLog(log).find(f'"[::1]:{port}"')) == 5, 5)


def test_unresolvable_name_is_503_uh_and_counted(
    hosts: None, tcp_nginx: int, proxy_factory: Any, tmp_path: Path
) -> None:
    clusters = [
        dns_cluster(
            "nowhere", "STRICT_DNS", "does-not-exist.invalid", tcp_nginx,
            dns_refresh_rate="0.2s",
            dns_failure_refresh_rate={"base_interval": "0.1s", "max_interval": "0.3s"},
        ),
        dns_cluster("gone", "LOGICAL_DNS", "does-not-exist.invalid", tcp_nginx),
    ]  # fmt: skip
    log = tmp_path / "access.log"
    proxy = proxy_factory(
        bootstrap([listener([vhost("dns", routes("nowhere", "gone"))], access_log=log)], clusters)
    )
    for path in ("/nowhere/x", "/gone/y"):
        response = get(("127.0.0.1", proxy.port), path, timeout=5)
        assert (response.status, response.body) == (503, b"no healthy upstream")
    assert " 503 UH " in AccessLog(log).wait_for_line('"GET /nowhere/x HTTP/1.1"')
    assert " 503 UH " in AccessLog(log).wait_for_line('"GET /gone/y HTTP/1.1"')
    assert wait_until(lambda: proxy.counter("cluster.nowhere.update_failure") >= 3, 10)
    assert proxy.counter("cluster.nowhere.update_success") == 0
    assert proxy.counter("cluster.nowhere.upstream_cx_none_healthy") == 1
    assert proxy.counter("cluster.gone.update_attempt") >= 1
    assert "DNS resolution of 'does-not-exist.invalid' failed" in proxy.stderr
    assert proxy.cluster_hosts("nowhere") == []


def test_pool_follows_the_answer(hosts: None, tcp_nginx: int, proxy_factory: Any) -> None:
    cluster = dns_cluster(
        "flip", "STRICT_DNS", "udsproxy-dns-flip", tcp_nginx, dns_refresh_rate="0.1s"
    )
    proxy = proxy_factory(bootstrap([listener([vhost("dns", routes("flip"))])], [cluster]))
    assert proxy.body("/flip/") == "127.0.0.1"
    try:
        _set_hosts({**NAMES, "udsproxy-dns-flip": ("127.0.0.2",)})
        assert wait_until(lambda: proxy.body("/flip/") == "127.0.0.2", 5)
        assert [h["address"] for h in proxy.cluster_hosts("flip")] == [f"127.0.0.2:{tcp_nginx}"]
        _set_hosts({**NAMES, "udsproxy-dns-flip": ("127.0.0.1", "127.0.0.2")})
        assert wait_until(lambda: len(proxy.cluster_hosts("flip")) == 2, 5)
        assert {proxy.body("/flip/") for _ in range(4)} == {"127.0.0.1", "127.0.0.2"}
    finally:
        _set_hosts(NAMES)
    # refreshed every 100 ms: unchanged answers rebuild nothing
    assert wait_until(lambda: proxy.counter("cluster.flip.update_no_rebuild") >= 2, 5)


def test_weighted_round_robin_and_endpoint_fields(tcp_nginx: int, proxy_factory: Any) -> None:
    def endpoint(ip: str, weight: int) -> dict[str, Any]:
        address = {"socket_address": {"address": ip, "port_value": tcp_nginx}}
        return {
            "endpoint": {"address": address, "hostname": f"h-{ip}"},
            "load_balancing_weight": weight,
        }

    cluster = {
        "name": "weighted",
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": "weighted",
            "endpoints": [
                {
                    "locality": {"region": "eu", "zone": "z1"},
                    "lb_endpoints": [endpoint("127.0.0.1", 3), endpoint("127.0.0.2", 1)],
                }
            ],
        },
    }
    proxy = proxy_factory(bootstrap([listener([vhost("w", routes("weighted"))])], [cluster]))
    counts = collections.Counter(proxy.body("/weighted/") for _ in range(8))
    assert counts == {"127.0.0.1": 6, "127.0.0.2": 2}
    hosts_json = proxy.cluster_hosts("weighted")
    assert [(h["weight"], h["hostname"], h["locality"]) for h in hosts_json] == [
        (3, "h-127.0.0.1", {"region": "eu", "zone": "z1"}),
        (1, "h-127.0.0.2", {"region": "eu", "zone": "z1"}),
    ]
    dump = proxy.admin("/config_dump?format=json")
    endpoints = dump["configs"][0]["clusters"][0]["endpoints"]
    assert endpoints[0]["locality"] == {"region": "eu", "zone": "z1", "sub_zone": ""}
    assert endpoints[0]["load_balancing_weight"] == 3
