"""The article's path end to end: client -> TCP -> udsproxy -> /dev/shm/...sock -> nginx."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .support import (
    UUID_RE,
    AccessLog,
    InProcessProxy,
    NginxInstance,
    ProxyProcess,
    PyUpstream,
    RawConn,
    Site,
    bootstrap,
    cluster,
    envoy_log_re,
    get,
    listener,
    request_bytes,
    require,
    route,
    vhost,
)

pytestmark = pytest.mark.integration


def test_get_index_through_proxy(
    proxy: ProxyProcess,
    nginx: NginxInstance,
    site: Site,
    proxy_log: AccessLog,
    user_agent: str,
) -> None:
    host, port = proxy.address()
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", "/index.html", headers={"User-Agent": user_agent})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 200
    assert body == (site.root / "index.html").read_bytes()
    assert len(body) == 612
    assert resp.getheader("server") == "envoy"  # nginx's Server header is overwritten
    assert re.fullmatch(r"\d+", resp.getheader("x-envoy-upstream-service-time") or "")
    assert resp.getheader("content-type") == "text/html"
    assert resp.getheader("content-length") == "612"

    line = proxy_log.wait_for_line(user_agent)
    expected = envoy_log_re(
        path="/index.html",
        status=200,
        sent=612,
        user_agent=user_agent,
        authority=f"{host}:{port}",
        upstream=nginx.socket_path,
    )
    assert expected.match(line), line
    assert f'"{nginx.socket_path}"' in line and nginx.socket_path.startswith(("/dev/shm/", "/tmp/"))


def test_get_with_curl(
    proxy: ProxyProcess, site: Site, proxy_log: AccessLog, user_agent: str
) -> None:
    curl = shutil.which("curl")
    require(curl is not None, "curl is not installed")
    assert curl is not None
    out = subprocess.run(
        [curl, "-sS", "-i", "--max-time", "10", "-A", user_agent, f"{proxy.url}/"],
        capture_output=True,
        timeout=20,
        check=True,
    ).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"\r\nserver: envoy" in head.lower()
    assert body == (site.root / "index.html").read_bytes()
    line = proxy_log.wait_for_line(user_agent)
    assert '"GET / HTTP/1.1" 200 - 0 612 ' in line, line


def test_keepalive_reuses_one_connection(proxy: ProxyProcess, site: Site) -> None:
    host, port = proxy.address()
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        sock = None
        for path in ["/index.html", "/files/100k.bin", "/py/a", "/index.html", "/files/1m.bin"]:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200, (path, resp.status, body[:200])
            if path.startswith("/files/"):
                assert len(body) == site.sizes[path]
            if sock is None:
                sock = conn.sock
            assert conn.sock is sock, "the proxy closed a keep-alive connection"
            assert resp.getheader("connection", "").lower() != "close"
    finally:
        conn.close()


def test_pipelined_requests_answered_in_order(proxy: ProxyProcess, site: Site) -> None:
    host = f"{proxy.address()[0]}:{proxy.port}"
    batch = (
        request_bytes("GET", "/files/100k.bin", host)
        + request_bytes("GET", "/py/second", host)
        + request_bytes("GET", "/index.html", host)
    )
    with RawConn(proxy.address()) as conn:
        conn.send(batch)  # one write: three requests
        r1, r2, r3 = (conn.read_response() for _ in range(3))
    assert (r1.status, r2.status, r3.status) == (200, 200, 200)
    assert len(r1.body) == 100 * 1024
    assert r2.body == b"GET /py/second\n"
    assert r3.body == (site.root / "index.html").read_bytes()


def test_head_has_no_body(proxy: ProxyProcess) -> None:
    host = f"{proxy.address()[0]}:{proxy.port}"
    with RawConn(proxy.address()) as conn:
        # HEAD of a 1 MiB file, then a GET on the same connection: a leaked body would show
        # up where the second status line should be.
        conn.send(
            request_bytes("HEAD", "/files/1m.bin", host) + request_bytes("GET", "/py/after", host)
        )
        head = conn.read_response(head=True)
        after = conn.read_response()
    assert head.status == 200
    assert head.header("content-length") == str(1 << 20)
    assert head.body == b""
    assert (after.status, after.body) == (200, b"GET /py/after\n")


def test_204_and_304_have_no_body(proxy: ProxyProcess, site: Site) -> None:
    host = f"{proxy.address()[0]}:{proxy.port}"
    first = get(proxy.address(), "/index.html")
    etag = first.header("etag")
    assert etag, first.headers
    with RawConn(proxy.address()) as conn:
        conn.send(
            request_bytes("GET", "/status/204", host)
            + request_bytes("GET", "/index.html", host, [("If-None-Match", etag)])
            + request_bytes("GET", "/index.html", host)
        )
        r204, r304, r200 = (conn.read_response() for _ in range(3))
    assert (r204.status, r204.body) == (204, b"")
    assert (r304.status, r304.body) == (304, b"")
    assert r200.status == 200 and r200.body == (site.root / "index.html").read_bytes()


def test_expect_100_continue(proxy: ProxyProcess, py_upstream: PyUpstream) -> None:
    body = b"x" * 5000
    host = f"{proxy.address()[0]}:{proxy.port}"
    with RawConn(proxy.address()) as conn:
        conn.send(
            request_bytes(
                "POST",
                "/py/sha256?expect",
                host,
                [("Content-Length", str(len(body))), ("Expect", "100-continue")],
            )
        )
        status, _, _ = conn.read_head()
        assert status == 100
        conn.send(body)
        final = conn.read_response()
    assert final.status == 200
    assert json.loads(final.body)["length"] == len(body)
    seen = [r for r in py_upstream.requests() if r["path"] == "/py/sha256?expect"]
    assert len(seen) == 1
    assert "expect" not in {k.lower() for k, _ in seen[0]["headers"]}  # Envoy strips it


def test_no_route_is_404_nr(proxy: ProxyProcess, proxy_log: AccessLog, user_agent: str) -> None:
    resp = get(proxy.address(), "/no/such/route", headers={"User-Agent": user_agent})
    assert resp.status == 404
    assert resp.body == b""
    assert resp.header("server") == "envoy"
    assert resp.header("x-envoy-upstream-service-time") is None
    line = proxy_log.wait_for_line(user_agent)
    host, port = proxy.address()
    expected = envoy_log_re(
        path="/no/such/route",
        status=404,
        flags="NR",
        sent=0,
        service_time="-",
        user_agent=user_agent,
        authority=f"{host}:{port}",
        upstream="-",
    )
    assert expected.match(line), line


def test_unknown_virtual_host_is_404(
    inproc: Callable[[dict[str, Any]], InProcessProxy], nginx: NginxInstance
) -> None:
    config = bootstrap(
        [listener([vhost("blog", [route("hugo", prefix="/")], domains=["blog.example.com"])])],
        [cluster("hugo", nginx.socket_path)],
    )
    p = inproc(config)
    assert get(p.address(), "/index.html", headers={"Host": "blog.example.com"}).status == 200
    miss = get(p.address(), "/index.html", headers={"Host": "other.example.com"})
    assert (miss.status, miss.body) == (404, b"")


def test_upstream_request_headers(proxy: ProxyProcess) -> None:
    resp = get(
        proxy.address(),
        "/py/headers",
        headers={
            "Host": "blog.example.com",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "drop me",
            "Keep-Alive": "timeout=5",
            "Proxy-Connection": "keep-alive",
            "X-Forwarded-For": "203.0.113.9",
            "X-Custom": "kept",
        },
    )
    assert resp.status == 200
    info = json.loads(resp.body)
    headers: dict[str, list[str]] = {}
    for k, v in info["headers"]:
        headers.setdefault(k.lower(), []).append(v)
    assert info["version"] == "HTTP/1.1"
    assert headers["host"] == ["blog.example.com"]
    assert headers["x-custom"] == ["kept"]
    for hop in ("x-hop", "keep-alive", "proxy-connection", "transfer-encoding"):
        assert hop not in headers, (hop, headers)
    # use_remote_address: true appends the peer to X-Forwarded-For.
    assert [a.strip() for a in headers["x-forwarded-for"][0].split(",")] == [
        "203.0.113.9",
        "127.0.0.1",
    ]
    assert headers["x-forwarded-proto"] == ["http"]
    assert re.fullmatch(UUID_RE, headers["x-request-id"][0])
    assert headers["x-envoy-expected-rq-timeout-ms"] == ["1000"]  # the /py/ route's timeout


def test_prefix_rewrite_logs_original_path(
    proxy: ProxyProcess, site: Site, proxy_log: AccessLog, user_agent: str
) -> None:
    resp = get(proxy.address(), "/rewrite/100k.bin", headers={"User-Agent": user_agent})
    assert resp.status == 200
    assert len(resp.body) == site.sizes["/files/100k.bin"]
    line = proxy_log.wait_for_line(user_agent)
    assert '"GET /rewrite/100k.bin HTTP/1.1" 200 - 0 102400 ' in line, line


def test_safe_regex_route(proxy: ProxyProcess) -> None:
    assert get(proxy.address(), "/regex/123").body == b"GET /regex/123\n"
    assert get(proxy.address(), "/regex/abc").status == 404


def test_http10_is_accepted(proxy: ProxyProcess, site: Site) -> None:
    """A documented deviation: Envoy answers HTTP/1.0 with 426, udsproxy serves it."""
    with RawConn(proxy.address()) as conn:
        conn.send(b"GET /index.html HTTP/1.0\r\nHost: blog.example.com\r\n\r\n")
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.body == (site.root / "index.html").read_bytes()
        assert conn.closed_by_peer()


def test_absolute_form_target_sets_host(proxy: ProxyProcess) -> None:
    with RawConn(proxy.address()) as conn:
        conn.send(
            b"GET http://blog.example.com/py/headers HTTP/1.1\r\nHost: blog.example.com\r\n"
            b"Connection: close\r\n\r\n"
        )
        resp = conn.read_response()
    assert resp.status == 200
    info = json.loads(resp.body)
    assert info["path"] == "/py/headers"
    assert [v for k, v in info["headers"] if k.lower() == "host"] == ["blog.example.com"]


def test_upstream_interim_response_then_final(proxy: ProxyProcess) -> None:
    resp = get(proxy.address(), "/py/early-hints")
    assert (resp.status, resp.body) == (200, b"after hints\n")


def test_server_name_setting(
    inproc: Callable[[dict[str, Any]], InProcessProxy], nginx: NginxInstance
) -> None:
    config = bootstrap(
        [listener([vhost("hugo", [route("hugo", prefix="/")])], server_name="hugo-edge")],
        [cluster("hugo", nginx.socket_path)],
    )
    p = inproc(config)
    assert get(p.address(), "/index.html").header("server") == "hugo-edge"
    assert get(p.address(), "/nope-not-routed-anyway").header("server") == "hugo-edge"


def test_proxy_writes_log_to_file_not_stdout(proxy: ProxyProcess, proxy_log: AccessLog) -> None:
    get(proxy.address(), "/index.html", headers={"User-Agent": "stdout-check"})
    proxy_log.wait_for_line("stdout-check")
    assert "stdout-check" not in proxy.stdout()
    assert Path(proxy_log.path).stat().st_size > 0
