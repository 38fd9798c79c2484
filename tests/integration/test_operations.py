"""Operations: file-based dynamic config reloaded under load (rename, ConfigMap symlink swap,
in-place edit), rejected updates, SIGHUP, worker restarts, graceful drain, and TLS with SNI."""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import REPORT
from tests.integration.support import (
    BackgroundClients,
    CliProxy,
    NginxInstance,
    PyUpstream,
    bootstrap,
    cluster,
    listener,
    route,
    vhost,
    wait_until,
)

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
Proc = CliProxy  # udsproxy -c FILE as a subprocess


def _get(
    port: int, path: str = "/", host: str = "x", timeout: float = 5
) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


class Load(BackgroundClients):
    """A bounded background load: keep-alive and fresh connections, failures counted."""

    def __init__(self, port: int, path: str = "/index.html") -> None:
        self.port, self.path = port, path
        self.ok = 0
        self.failures: list[str] = []
        self.bodies: set[bytes] = set()
        super().__init__(clients=3, join_timeout=10)

    def __enter__(self) -> Load:
        super().__enter__()
        return self

    def client(self, i: int) -> None:
        conn: http.client.HTTPConnection | None = None
        while self.running():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", self.path)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    self.failures.append(f"{resp.status} {body[:80]!r}")
                else:
                    self.ok += 1
                    self.bodies.add(body[:40])
                if i == 0 or resp.getheader("connection", "") == "close":
                    conn.close()  # thread 0 opens a new connection for every request
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(repr(exc))
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()


def _cds(path: Path, socket_path: str, version: str) -> None:
    doc = {
        "version_info": version,
        "resources": [{"@type": CLUSTER_TYPE, **cluster("dyn", socket_path)}],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _replace(path: Path, write: Any) -> None:
    """The writer recipe Envoy documents: write a temp file beside it, then rename over it."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _dynamic_bootstrap(tmp: Path, cds_path: Path, watched: Path | None = None) -> Path:
    cfg = bootstrap([listener([vhost("all", [route("dyn", prefix="/")])])], [])
    source: dict[str, Any] = {"path": str(cds_path)}
    if watched is not None:
        source["watched_directory"] = {"path": str(watched)}
    cfg["dynamic_resources"] = {
        "cds_config": {"resource_api_version": "V3", "path_config_source": source}
    }
    path = tmp / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _switch_under_load(proc: Proc, port: int, change: Any) -> Load:
    with Load(port) as load:
        assert wait_until(lambda: load.ok > 20, 10)
        change()
        assert wait_until(lambda: any(b.startswith(b"GET /") for b in load.bodies), 15), proc.stderr
        n = load.ok
        assert wait_until(lambda: load.ok > n + 20, 10)
    return load


@pytest.mark.parametrize("how", ["rename", "symlink_swap", "in_place_edit"])
def test_cds_update_under_load_drops_no_request(
    tmp_path: Path, nginx: NginxInstance, py_upstream: PyUpstream, how: str
) -> None:
    """The cluster moves from nginx to the Python upstream while requests keep flowing."""
    if how == "symlink_swap":
        # a ConfigMap: <dir>/cds.yaml -> ..data/cds.yaml, ..data -> ..<timestamp>
        cm = tmp_path / "configmap"
        first = cm / "..v1"
        first.mkdir(parents=True)
        _cds(first / "cds.yaml", nginx.socket_path, "1")
        (cm / "..data").symlink_to("..v1")
        (cm / "cds.yaml").symlink_to("..data/cds.yaml")
        cds_path, watched = cm / "cds.yaml", cm
    else:
        cds_path, watched = tmp_path / "cds.yaml", None
        _cds(cds_path, nginx.socket_path, "1")
    proc = Proc(_dynamic_bootstrap(tmp_path, cds_path, watched), "--concurrency", "1")
    try:
        port = proc.wait_listening("ingress_http")

        def change() -> None:
            if how == "rename":
                _replace(cds_path, lambda p: _cds(p, py_upstream.socket_path, "2"))
            elif how == "in_place_edit":
                _cds(cds_path, py_upstream.socket_path, "2")
            else:
                second = cm / "..v2"
                second.mkdir()
                _cds(second / "cds.yaml", py_upstream.socket_path, "2")
                tmp_link = cm / "..data_tmp"
                tmp_link.symlink_to("..v2")
                os.replace(tmp_link, cm / "..data")  # kubelet's atomic swap
                shutil.rmtree(first)

        load = _switch_under_load(proc, port, change)
        REPORT[f"CDS reload under load ({how})"] = (
            f"{load.ok} requests, {len(load.failures)} failed"
        )
        assert load.failures == [], load.failures[:5]
        assert "applied" in proc.stderr
    finally:
        assert proc.stop() == 0


LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _lds(path: Path, version: str, listeners: list[dict[str, Any]]) -> None:
    doc = {"version_info": version, "resources": [{"@type": LISTENER_TYPE, **x} for x in listeners]}
    _replace(path, lambda p: p.write_text(yaml.safe_dump(doc, sort_keys=False)))


def test_lds_update_under_load_with_two_workers(
    tmp_path: Path, nginx: NginxInstance, py_upstream: PyUpstream
) -> None:
    """Both workers apply the LDS file: a route change on a kept socket drops no request, a new
    listener starts, and a removed one stops accepting."""
    port, extra_port = _free_port(), _free_port()
    lds_path = tmp_path / "lds.yaml"
    main_v1 = listener([vhost("all", [route("nginx", prefix="/")])], port=port)
    main_v2 = listener([vhost("all", [route("py", prefix="/")])], port=port)
    extra = listener([vhost("all", [route("py", prefix="/")])], name="extra", port=extra_port)
    _lds(lds_path, "1", [main_v1])
    cfg = bootstrap(
        [], [cluster("nginx", nginx.socket_path), cluster("py", py_upstream.socket_path)]
    )
    cfg["dynamic_resources"] = {
        "lds_config": {"resource_api_version": "V3", "path_config_source": {"path": str(lds_path)}}
    }
    boot = tmp_path / "bootstrap.yaml"
    boot.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = Proc(boot, "--concurrency", "2")
    try:
        assert proc.wait_listening("ingress_http") == port
        load = _switch_under_load(proc, port, lambda: _lds(lds_path, "2", [main_v2]))
        REPORT["LDS route change under load (2 workers)"] = (
            f"{load.ok} requests, {len(load.failures)} failed"
        )
        assert load.failures == [], load.failures[:5]
        # every worker takes it (each watches the file itself): then all new connections
        # reach the Python upstream, whichever worker accepts them
        assert wait_until(
            lambda: all(_get(port, "/py/who")[1] == b"GET /py/who\n" for _ in range(8)), 15
        ), proc.stderr

        _lds(lds_path, "3", [main_v2, extra])
        assert wait_until(lambda: not _refused(extra_port), 15), proc.stderr
        assert all(_get(extra_port, "/x")[0] == 200 for _ in range(8))
        _lds(lds_path, "4", [main_v2])
        assert wait_until(lambda: _refused(extra_port), 15), proc.stderr
        assert _get(port, "/py/still")[0] == 200
    finally:
        assert proc.stop() == 0


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_bad_update_is_rejected_and_old_config_keeps_serving(
    tmp_path: Path, nginx: NginxInstance
) -> None:
    cds_path = tmp_path / "cds.yaml"
    _cds(cds_path, nginx.socket_path, "1")
    proc = Proc(_dynamic_bootstrap(tmp_path, cds_path), "--concurrency", "1")
    try:
        port = proc.wait_listening("ingress_http")
        _replace(
            cds_path,
            lambda p: p.write_text(
                cds_path.read_text().replace("connect_timeout: 0.25s", "conect_timeout: 0.25s")
            ),
        )
        assert wait_until(lambda: "rejected" in proc.stderr, 15), proc.stderr
        assert "conect_timeout" in proc.stderr and "did you mean 'connect_timeout'" in proc.stderr
        status, body, _ = _get(port, "/index.html")
        assert status == 200 and body.lower().startswith(b"<!doctype html>")
    finally:
        assert proc.stop() == 0


def test_sighup_rereads_the_bootstrap(tmp_path: Path, nginx: NginxInstance) -> None:
    path = tmp_path / "proxy.yaml"
    cfg = bootstrap(
        [listener([vhost("all", [route("nginx", prefix="/")])])],
        [cluster("nginx", nginx.socket_path)],
    )
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = Proc(path, "--concurrency", "1")
    try:
        port = proc.wait_listening("ingress_http")
        assert _get(port, "/index.html")[2]["server"] == "envoy"
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        hcm["typed_config"]["server_name"] = "reloaded"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        proc.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: _get(port, "/index.html")[2]["server"] == "reloaded", 10)
        assert proc.ports["ingress_http"] == port  # same socket: nothing was rebound
    finally:
        assert proc.stop() == 0


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def test_killed_worker_is_restarted_and_service_keeps_answering(
    tmp_path: Path, nginx: NginxInstance
) -> None:
    path = tmp_path / "proxy.yaml"
    cfg = bootstrap(
        [listener([vhost("all", [route("nginx", prefix="/")])])],
        [cluster("nginx", nginx.socket_path)],
    )
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = Proc(path, "--concurrency", "2")
    try:
        port = proc.wait_listening("ingress_http")
        assert wait_until(lambda: len(_children(proc.proc.pid)) == 2, 10)
        victim = _children(proc.proc.pid)[0]
        with Load(port) as load:
            assert wait_until(lambda: load.ok > 20, 10)
            os.kill(victim, signal.SIGKILL)
            assert wait_until(lambda: "restarting" in proc.stderr, 10), proc.stderr
            assert wait_until(
                lambda: (
                    len(_children(proc.proc.pid)) == 2 and victim not in _children(proc.proc.pid)
                ),
                10,
            )
            n = load.ok
            assert wait_until(lambda: load.ok > n + 20, 10)
        assert "server.worker_restarts=1" in proc.stderr
        # only requests that were on the killed worker's connections can fail
        assert len(load.failures) <= 3, load.failures
    finally:
        assert proc.stop() == 0


def test_sigterm_lets_a_slow_request_finish(tmp_path: Path, py_upstream: PyUpstream) -> None:
    path = tmp_path / "proxy.yaml"
    cfg = bootstrap(
        [listener([vhost("all", [route("py", prefix="/")])])],
        [cluster("py", py_upstream.socket_path)],
    )
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = Proc(path, "--concurrency", "1", "--drain-time-s", "10")
    port = proc.wait_listening("ingress_http")
    result: dict[str, Any] = {}

    def slow() -> None:
        result["r"] = _get(port, "/py/slow?ms=1500", timeout=10)

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.4)
    started = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    t.join(10)
    assert proc.stop() == 0
    status, body, headers = result["r"]
    assert (status, body) == (200, b"slow\n")
    assert headers.get("connection") == "close"
    assert time.monotonic() - started < 10
    with pytest.raises(OSError):
        _get(port, "/", timeout=2)  # no longer accepting


def _cert(tmp: Path, name: str) -> tuple[Path, Path]:
    cert, key = tmp / f"{name}.crt", tmp / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            f"/CN={name}",
            "-addext",
            f"subjectAltName=DNS:{name}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def _tls_chain(
    cert: Path, key: Path, names: list[str] | None, hcm_listener: dict[str, Any]
) -> dict[str, Any]:
    chain = dict(hcm_listener["filter_chains"][0])
    chain["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
            "DownstreamTlsContext",
            "common_tls_context": {
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": str(cert)},
                        "private_key": {"filename": str(key)},
                    }
                ],
                "alpn_protocols": ["http/1.1"],
            },
        },
    }
    if names:
        chain["filter_chain_match"] = {"server_names": names}
    return chain


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_reload_cannot_switch_tls_on_in_place(tmp_path: Path, nginx: NginxInstance) -> None:
    """The listener's socket stays plain: the update is rejected and plain HTTP keeps serving."""
    path = tmp_path / "proxy.yaml"
    base = listener([vhost("all", [route("nginx", prefix="/")])], port=_free_port())
    clusters = [cluster("nginx", nginx.socket_path)]
    path.write_text(yaml.safe_dump(bootstrap([base], clusters), sort_keys=False))
    proc = Proc(path, "--concurrency", "1")
    try:
        port = proc.wait_listening("ingress_http")
        tls = dict(base, filter_chains=[_tls_chain(*_cert(tmp_path, "a.test"), None, base)])
        path.write_text(yaml.safe_dump(bootstrap([tls], clusters), sort_keys=False))
        proc.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "cannot be switched on or off" in proc.stderr, 15), proc.stderr
        assert _get(port, "/index.html")[0] == 200
    finally:
        assert proc.stop() == 0


@pytest.mark.skipif(
    shutil.which("openssl") is None or shutil.which("curl") is None, reason="needs openssl and curl"
)
def test_https_with_sni_picks_the_certificate(tmp_path: Path, py_upstream: PyUpstream) -> None:
    a, b = _cert(tmp_path, "a.test"), _cert(tmp_path, "b.test")
    base = listener([vhost("all", [route("py", prefix="/")])])
    base["filter_chains"] = [
        _tls_chain(*a, None, base),
        _tls_chain(*b, ["b.test"], base),
    ]
    cfg = bootstrap([base], [cluster("py", py_upstream.socket_path)])
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = Proc(path, "--concurrency", "1")
    try:
        port = proc.wait_listening("ingress_http")
        for name in ("a.test", "b.test"):
            out = subprocess.run(
                [
                    "curl",
                    "-sv",
                    "--cacert",
                    str(tmp_path / f"{name}.crt"),
                    "--resolve",
                    f"{name}:{port}:127.0.0.1",
                    f"https://{name}:{port}/py/headers",
                ],
                capture_output=True,
                text=True,
                timeout=20,
            )
            assert out.returncode == 0, out.stderr
            assert f"CN={name}" in out.stderr
            assert '"x-forwarded-proto", "https"' in out.stdout.lower()
        # A body past the splice threshold must still be encrypted: splice(2) is off on TLS.
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(1 << 20))
        out = subprocess.run(
            [
                "curl",
                "-sS",
                "--cacert",
                str(tmp_path / "a.test.crt"),
                "--resolve",
                f"a.test:{port}:127.0.0.1",
                "--data-binary",
                f"@{big}",
                "-H",
                "Content-Type: application/octet-stream",
                f"https://a.test:{port}/py/echo",
            ],
            capture_output=True,
            timeout=20,
        )
        assert out.returncode == 0, out.stderr
        assert hashlib.sha256(out.stdout).digest() == hashlib.sha256(big.read_bytes()).digest()
        ctx = ssl.create_default_context(cafile=str(tmp_path / "a.test.crt"))
        ctx.check_hostname = False
        with ctx.wrap_socket(
            socket.create_connection(("127.0.0.1", port)), server_hostname=None
        ) as s:
            assert s.selected_alpn_protocol() in (None, "http/1.1")
    finally:
        assert proc.stop() == 0


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_certificate_files_are_reloaded_when_they_change(
    tmp_path: Path, py_upstream: PyUpstream
) -> None:
    live = tmp_path / "live"
    live.mkdir()
    old_cert, old_key = _cert(tmp_path, "old.test")
    new_cert, new_key = _cert(tmp_path, "new.test")
    shutil.copy(old_cert, live / "tls.crt")
    shutil.copy(old_key, live / "tls.key")
    base = listener([vhost("all", [route("py", prefix="/")])])
    base["filter_chains"] = [_tls_chain(live / "tls.crt", live / "tls.key", None, base)]
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(bootstrap([base], [cluster("py", py_upstream.socket_path)])))
    proc = Proc(path, "--concurrency", "1")

    def served_cn() -> str:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="x.test") as s,
        ):
            der = s.getpeercert(binary_form=True)
        assert der is not None
        out = subprocess.run(
            ["openssl", "x509", "-inform", "DER", "-noout", "-subject"],
            input=der,
            capture_output=True,
            timeout=10,
            check=True,
        )
        return out.stdout.decode()

    try:
        port = proc.wait_listening("ingress_http")
        assert "old.test" in served_cn()
        # replace both files the safe way (rename), key first
        for src, dst in ((new_key, "tls.key"), (new_cert, "tls.crt")):
            shutil.copy(src, live / (dst + ".tmp"))
            os.replace(live / (dst + ".tmp"), live / dst)
        assert wait_until(lambda: "new.test" in served_cn(), 15), proc.stderr
    finally:
        assert proc.stop() == 0
