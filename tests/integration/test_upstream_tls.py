"""Upstream TLS against a real nginx serving TLS (TCP and a unix socket): SNI, trusted_ca, SAN
matchers, client certificates; 503 UF with Envoy's TLS failure reason on a wrong SAN or an
untrusted CA (access log and ssl.* stats); inline and environment DataSources for a TLS
listener's certificate."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import SockPaths
from tests.integration.support import (
    CliProxy,
    bootstrap,
    listener,
    route,
    unix_socket_live,
    vhost,
    wait_until,
)

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None or shutil.which("curl") is None,
    reason="needs openssl and curl",
)

URL = "type.googleapis.com/"
UPSTREAM_TLS = URL + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
DOWNSTREAM_TLS = URL + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
LOG_FORMAT = (
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_CLUSTER% %RESPONSE_CODE_DETAILS% "
    "%UPSTREAM_TRANSPORT_FAILURE_REASON%\n"
)
BIG = 3 << 20  # a response body far past the splice threshold
VERIFY_FAILED = "TLS error: 268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED"
UF_TLS_BODY = (
    "upstream connect error or disconnect/reset before headers. reset reason: connection "
    f"failure, transport failure reason: {VERIFY_FAILED}"
)


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path  # signs the server and client certificates
    other_ca: Path  # trusted by nobody
    server_cert: Path  # SAN DNS:upstream.test, IP:127.0.0.1
    server_key: Path
    client_cert: Path  # CN=udsproxy-client
    client_key: Path


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-subj", f"/CN={name}", "-days", "1", "-keyout", key, "-out", cert,
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign",
    )  # fmt: skip
    return cert, key


def _signed(
    directory: Path, name: str, ca: tuple[Path, Path], extensions: str
) -> tuple[Path, Path]:
    cert, key, csr = (directory / f"{name}{ext}" for ext in (".crt", ".key", ".csr"))
    ext = directory / f"{name}.ext"
    ext.write_text(extensions)
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-subj", f"/CN={name}", "-keyout", key, "-out", csr,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
        "-days", "1", "-out", cert, "-extfile", ext,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = _ca(directory, "test-ca")
    other = _ca(directory, "other-ca")
    server = _signed(
        directory, "upstream.test", ca, "subjectAltName=DNS:upstream.test,IP:127.0.0.1\n"
    )
    client = _signed(directory, "udsproxy-client", ca, "extendedKeyUsage=clientAuth\n")
    return Pki(directory, ca[0], other[0], *server, *client)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class TlsNginx:
    files: Path  # served under /files/
    port: int  # TLS, no client certificate asked
    mtls_port: int  # TLS, ssl_verify_client on
    socket_path: str  # TLS on a unix socket


NGINX_CONF = """
{user}
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    server {{
        listen 127.0.0.1:{port} ssl;
        listen unix:{sock} ssl;
        location / {{ return 200 "sni=$ssl_server_name proto=$ssl_protocol\\n"; }}
        location /files/ {{ root {prefix}; }}
    }}
    server {{
        listen 127.0.0.1:{mtls_port} ssl;
        ssl_client_certificate {ca};
        ssl_verify_client on;
        location / {{ return 200 "client=$ssl_client_s_dn verify=$ssl_client_verify\\n"; }}
    }}
}}
"""


@pytest.fixture(scope="module")
def tls_nginx(
    nginx_bin: str, pki: Pki, tmp_path_factory: pytest.TempPathFactory, session_sock_path: SockPaths
) -> Iterator[TlsNginx]:
    prefix = tmp_path_factory.mktemp("nginx-tls")
    ports = TlsNginx(prefix / "files", _free_port(), _free_port(), session_sock_path("nginx-tls"))
    (prefix / "files").mkdir()
    (prefix / "files" / "big.bin").write_bytes(os.urandom(BIG))
    conf = prefix / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            user="user root;" if os.geteuid() == 0 else "",  # workers read the tmp files
            prefix=prefix,
            cert=pki.server_cert,
            key=pki.server_key,
            ca=pki.ca,
            port=ports.port,
            mtls_port=ports.mtls_port,
            sock=ports.socket_path,
        )
    )
    proc = subprocess.Popen(
        [nginx_bin, "-p", str(prefix), "-c", str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        up = wait_until(lambda: proc.poll() is not None or unix_socket_live(ports.socket_path), 10)
        assert up and proc.poll() is None, (prefix / "error.log").read_text()
        yield ports
    finally:
        proc.terminate()
        proc.wait(10)


def _source(path: Path, kind: str = "filename") -> dict[str, str]:
    return {kind: str(path) if kind == "filename" else path.read_text()}


def _tls_cluster(
    name: str,
    address: dict[str, Any],
    *,
    sni: str | None = None,
    ca: Path | None = None,
    sans: list[dict[str, Any]] | None = None,
    client: tuple[Path, Path] | None = None,
    ca_kind: str = "filename",
) -> dict[str, Any]:
    common: dict[str, Any] = {"alpn_protocols": ["http/1.1"]}
    if ca is not None:
        validation: dict[str, Any] = {"trusted_ca": _source(ca, ca_kind)}
        if sans is not None:
            validation["match_typed_subject_alt_names"] = sans
        common["validation_context"] = validation
    if client is not None:
        common["tls_certificates"] = [
            {"certificate_chain": _source(client[0]), "private_key": _source(client[1])}
        ]
    context: dict[str, Any] = {"@type": UPSTREAM_TLS, "common_tls_context": common}
    if sni is not None:
        context["sni"] = sni
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": context},
    }


def _tcp(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def _stats(admin_port: int) -> dict[str, int]:
    url = f"http://127.0.0.1:{admin_port}/stats?format=json"
    with urllib.request.urlopen(url, timeout=10) as resp:
        data = json.load(resp)
    return {s["name"]: s["value"] for s in data["stats"] if "value" in s}


def _start(tmp_path: Path, config: dict[str, Any]) -> CliProxy:
    config["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return CliProxy(path, "--concurrency", "1")


def test_upstream_tls_sni_ca_san_and_client_certificate(
    tmp_path: Path, pki: Pki, tls_nginx: TlsNginx
) -> None:
    log = tmp_path / "access.log"
    good_sans = [
        {"san_type": "DNS", "matcher": {"exact": "UPSTREAM.test", "ignore_case": True}},
        {"san_type": "IP_ADDRESS", "matcher": {"exact": "10.0.0.1"}},
    ]
    routes = [
        ("/ok", _tls_cluster("ok", _tcp(tls_nginx.port), sni="upstream.test", ca=pki.ca,
                             sans=good_sans, ca_kind="inline_string")),
        ("/ip-san", _tls_cluster("ip_san", _tcp(tls_nginx.port), ca=pki.ca, sans=[
            {"san_type": "IP_ADDRESS", "matcher": {"exact": "127.0.0.1"}}])),
        ("/no-verify", _tls_cluster("no_verify", _tcp(tls_nginx.port))),
        ("/uds", _tls_cluster("uds", {"pipe": {"path": tls_nginx.socket_path}},
                              sni="upstream.test", ca=pki.ca)),
        ("/mtls", _tls_cluster("mtls", _tcp(tls_nginx.mtls_port), ca=pki.ca,
                               client=(pki.client_cert, pki.client_key))),
        ("/wrong-san", _tls_cluster("wrong_san", _tcp(tls_nginx.port), sni="upstream.test",
                                    ca=pki.ca, sans=[{"san_type": "DNS",
                                                      "matcher": {"suffix": ".other.test"}}])),
        ("/untrusted", _tls_cluster("untrusted", _tcp(tls_nginx.port), ca=pki.other_ca)),
    ]  # fmt: skip
    front = listener(
        [vhost("all", [route(c["name"], prefix=p) for p, c in routes])],
        access_log=log,
    )
    hcm = front["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["access_log"][0]["typed_config"]["log_format"] = {
        "text_format_source": {"inline_string": LOG_FORMAT}
    }
    proxy = _start(tmp_path, bootstrap([front], [c for _, c in routes]))
    try:
        port = proxy.wait_listening("ingress_http")
        assert wait_until(lambda: proxy.admin_port != 0, 10)
        status, body = _get(port, "/ok")
        assert (status, body) == (200, "sni=upstream.test proto=TLSv1.2\n")  # Envoy: 1.2 max
        assert _get(port, "/ok")[0] == 200  # a kept-alive TLS connection
        assert _get(port, "/ip-san") == (200, "sni= proto=TLSv1.2\n")  # no sni: none sent
        assert _get(port, "/no-verify")[0] == 200  # no validation_context: not verified
        assert _get(port, "/uds") == (200, "sni=upstream.test proto=TLSv1.2\n")
        status, body = _get(port, "/mtls")
        assert status == 200, body
        assert "client=CN=udsproxy-client verify=SUCCESS" in body
        for path in ("/wrong-san", "/untrusted"):
            assert _get(port, path) == (503, UF_TLS_BODY)
        stats = _stats(proxy.admin_port)
        assert stats["cluster.ok.ssl.handshake"] == 1
        assert stats["cluster.wrong_san.upstream_cx_connect_fail"] == 1
        assert stats["cluster.wrong_san.ssl.fail_verify_san"] == 1
        assert stats["cluster.wrong_san.ssl.connection_error"] == 1
        assert stats["cluster.untrusted.upstream_cx_connect_fail"] == 1
        assert stats["cluster.untrusted.ssl.fail_verify_error"] == 1
        assert stats["cluster.untrusted.ssl.connection_error"] == 1
        assert "cluster.ok.ssl.fail_verify_san" in stats
        details = f"upstream_reset_before_response_started{{connection_failure,{VERIFY_FAILED}}}"
        details = details.replace(" ", "_")
        assert wait_until(lambda: len(log.read_text().splitlines()) == 8, 10)
        lines = log.read_text().splitlines()
        reason = VERIFY_FAILED.replace(" ", "_")
        assert lines[-2:] == [
            f"503 UF wrong_san {details} {reason}",
            f"503 UF untrusted {details} {reason}",
        ]
        assert lines[0] == "200 - ok via_upstream -"
    finally:
        assert proxy.stop() == 0


def test_listener_certificate_inline_and_from_environment(
    tmp_path: Path, pki: Pki, tls_nginx: TlsNginx, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TLS listener whose certificate is an inline_string and whose key comes from an
    environment variable (no key file), in front of a TLS upstream."""
    monkeypatch.setenv("UDSPROXY_TEST_KEY", pki.server_key.read_text())
    upstream = _tls_cluster("up", _tcp(tls_nginx.port), sni="upstream.test", ca=pki.ca)
    front = listener([vhost("all", [route("up", prefix="/")])])
    front["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": DOWNSTREAM_TLS,
            "common_tls_context": {
                "tls_certificates": [
                    {
                        "certificate_chain": {"inline_string": pki.server_cert.read_text()},
                        "private_key": {"environment_variable": "UDSPROXY_TEST_KEY"},
                    }
                ]
            },
        },
    }
    proxy = _start(tmp_path, bootstrap([front], [upstream]))
    try:
        port = proxy.wait_listening("ingress_http")
        out = subprocess.run(
            ["curl", "-sS", "--cacert", str(pki.ca), "--resolve", f"upstream.test:{port}:127.0.0.1",
             f"https://upstream.test:{port}/"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr + proxy.stderr
        assert out.stdout == "sni=upstream.test proto=TLSv1.2\n"
    finally:
        assert proxy.stop() == 0


def test_unset_environment_variable_is_a_config_error(tmp_path: Path, pki: Pki) -> None:
    upstream = _tls_cluster("up", _tcp(1), ca=pki.ca)
    common = upstream["transport_socket"]["typed_config"]["common_tls_context"]
    common["validation_context"]["trusted_ca"] = {"environment_variable": "UDSPROXY_NO_SUCH_VAR"}
    path = tmp_path / "proxy.yaml"
    config = bootstrap([listener([vhost("all", [route("up", prefix="/")])])], [upstream])
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    out = subprocess.run(
        [sys.executable, "-m", "udsproxy", "--mode", "validate", "-c", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode != 0
    where = (
        "static_resources.clusters[0].transport_socket.typed_config.common_tls_context."
        "validation_context.trusted_ca.environment_variable"
    )
    assert f"{where}: environment variable 'UDSPROXY_NO_SUCH_VAR' is not set" in out.stderr


def test_no_splice_on_tls_upstreams(tmp_path: Path, pki: Pki, tls_nginx: TlsNginx) -> None:
    """With splicing forced for bodies of 1 KiB and more, both directions, a TLS upstream's
    bytes still pass through the TLS layer: splice would hand the client ciphertext."""
    upstream = _tls_cluster("up", _tcp(tls_nginx.port), ca=pki.ca)
    config = bootstrap([listener([vhost("all", [route("up", prefix="/")])])], [upstream])
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    proxy = CliProxy(path, "--concurrency", "1", "--splice-min-bytes", "1024", "--splice-responses")
    try:
        port = proxy.wait_listening("ingress_http")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        for _ in range(2):  # a fresh and a reused TLS connection
            conn.request("GET", "/files/big.bin")
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200
            want = hashlib.sha256((tls_nginx.files / "big.bin").read_bytes()).digest()
            assert hashlib.sha256(body).digest() == want
        conn.close()
    finally:
        assert proxy.stop() == 0
