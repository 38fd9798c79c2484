"""HTTP filters against real nginx and real clients: cors, fault, compressor, decompressor, rbac,
csrf. One proxy process with all of them, in the order Envoy's examples use."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import re
import socket
import struct
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.support import (
    AccessLog,
    NginxInstance,
    ProxyProcess,
    PyUpstream,
    Site,
    bootstrap,
    cluster,
    listener,
    route,
    vhost,
    wait_until,
)

pytestmark = pytest.mark.integration

T = "type.googleapis.com/"
CORS_POLICY = T + "envoy.extensions.filters.http.cors.v3.CorsPolicy"


def _filter(name: str, kind: str, **config: Any) -> dict[str, Any]:
    return {"name": name, "typed_config": {"@type": T + kind, **config}}


def _filters() -> list[dict[str, Any]]:
    return [
        _filter("envoy.filters.http.cors", "envoy.extensions.filters.http.cors.v3.Cors"),
        _filter(
            "envoy.filters.http.csrf",
            "envoy.extensions.filters.http.csrf.v3.CsrfPolicy",
            filter_enabled={"default_value": {"numerator": 0}},
        ),
        _filter(
            "envoy.filters.http.rbac",
            "envoy.extensions.filters.http.rbac.v3.RBAC",
            rules={
                "action": "DENY",
                "policies": {
                    "blocked-path": {
                        "permissions": [{"url_path": {"path": {"prefix": "/rbac/"}}}],
                        "principals": [{"any": True}],
                    },
                    "blocked-header": {
                        "permissions": [{"header": {"name": "x-blocked", "present_match": True}}],
                        "principals": [
                            {"remote_ip": {"address_prefix": "127.0.0.0", "prefix_len": 8}}
                        ],
                    },
                },
            },
        ),
        _filter(
            "envoy.filters.http.fault",
            "envoy.extensions.filters.http.fault.v3.HTTPFault",
            abort={"header_abort": {}, "percentage": {"numerator": 100}},
            delay={"header_delay": {}, "percentage": {"numerator": 100}},
            max_active_faults=100,
        ),
        _filter(
            "envoy.filters.http.compressor",
            "envoy.extensions.filters.http.compressor.v3.Compressor",
            response_direction_config={
                "common_config": {
                    "content_type": ["text/html", "text/plain", "application/octet-stream"]
                }
            },
            compressor_library={
                "name": "text_optimized",
                "typed_config": {
                    "@type": T + "envoy.extensions.compression.gzip.compressor.v3.Gzip",
                    "memory_level": 3,
                    "window_bits": 10,
                },
            },
        ),
        _filter(
            "envoy.filters.http.decompressor",
            "envoy.extensions.filters.http.decompressor.v3.Decompressor",
            decompressor_library={
                "name": "upload",
                "typed_config": {
                    "@type": T + "envoy.extensions.compression.gzip.decompressor.v3.Gzip"
                },
            },
            response_direction_config={"common_config": {"enabled": {"default_value": False}}},
        ),
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"},
        },
    ]


def _with_filters(r: dict[str, Any], **per_filter: Any) -> dict[str, Any]:
    r["typed_per_filter_config"] = per_filter
    return r


@pytest.fixture(scope="module")
def filtered(
    nginx: NginxInstance, py_upstream: PyUpstream, site: Site, tmp_path_factory: Any
) -> Iterator[tuple[ProxyProcess, AccessLog]]:
    site.add("/filters/tiny.txt", b"tiny\n")
    workdir: Path = tmp_path_factory.mktemp("filters")
    log = workdir / "access.log"
    fmt = "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %REQ(USER-AGENT)%\n"
    routes = [
        _with_filters(
            route("nginx", prefix="/cors/restricted/"),
            **{
                "envoy.filters.http.cors": {
                    "@type": CORS_POLICY,
                    "allow_origin_string_match": [{"suffix": ".example.com"}],
                    "allow_methods": "GET, PUT",
                    "allow_credentials": True,
                }
            },
        ),
        _with_filters(
            route("py", prefix="/csrf/"),
            **{
                "envoy.filters.http.csrf": {
                    "@type": T + "envoy.extensions.filters.http.csrf.v3.CsrfPolicy",
                    "filter_enabled": {"default_value": {"numerator": 100}},
                }
            },
        ),
        route("py", prefix="/py/"),
        route("nginx", prefix="/"),
    ]
    host = vhost("filters", routes)
    host["cors"] = {
        "allow_origin_string_match": [{"exact": "https://app.test"}],
        "allow_methods": "GET, POST",
        "allow_headers": "x-custom",
        "expose_headers": "x-exposed",
        "max_age": "600",
    }
    lst = listener([host], name="filters", http_filters=_filters())
    lst["filter_chains"][0]["filters"][0]["typed_config"]["access_log"] = [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": T + "envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": str(log),
                "log_format": {"text_format_source": {"inline_string": fmt}},
            },
        }
    ]
    config = bootstrap(
        [lst], [cluster("nginx", nginx.socket_path), cluster("py", py_upstream.socket_path)]
    )
    config["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
    proc = ProxyProcess(config, workdir).start()
    yield proc, AccessLog(log)
    assert proc.stop() == 0, proc.stderr()


def _request(
    proc: ProxyProcess,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def test_cors_preflight_answered_locally(filtered: tuple[ProxyProcess, AccessLog]) -> None:
    proc, log = filtered
    ua = "filters/cors-preflight"
    status, headers, body = _request(
        proc,
        "OPTIONS",
        "/index.html",
        {
            "Origin": "https://app.test",
            "Access-Control-Request-Method": "POST",
            "User-Agent": ua,
        },
    )
    assert status == 200 and body == b""
    assert headers["access-control-allow-origin"] == "https://app.test"
    assert headers["access-control-allow-methods"] == "GET, POST"
    assert headers["access-control-allow-headers"] == "x-custom"
    assert headers["access-control-max-age"] == "600"
    assert "access-control-allow-credentials" not in headers
    assert log.wait_for_line(ua) == f"200 - cors_response {ua}"


def test_cors_headers_on_a_proxied_response(filtered: tuple[ProxyProcess, AccessLog]) -> None:
    proc, _ = filtered
    status, headers, _ = _request(proc, "GET", "/index.html", {"Origin": "https://app.test"})
    assert status == 200
    assert headers["access-control-allow-origin"] == "https://app.test"
    assert headers["access-control-expose-headers"] == "x-exposed"
    # an origin the policy does not allow gets no CORS headers; the request still goes through
    status, headers, _ = _request(proc, "GET", "/index.html", {"Origin": "https://evil.test"})
    assert status == 200 and "access-control-allow-origin" not in headers


def test_cors_route_policy_overrides_the_virtual_host(
    filtered: tuple[ProxyProcess, AccessLog],
) -> None:
    proc, _ = filtered
    origin = {"Origin": "https://a.example.com", "Access-Control-Request-Method": "PUT"}
    status, headers, _ = _request(proc, "OPTIONS", "/cors/restricted/x", origin)
    assert status == 200
    assert headers["access-control-allow-methods"] == "GET, PUT"
    assert headers["access-control-allow-credentials"] == "true"
    # allow_headers comes from the virtual host's policy (the route's does not set it)
    assert headers["access-control-allow-headers"] == "x-custom"
    status, headers, _ = _request(
        proc,
        "OPTIONS",
        "/cors/restricted/x",
        {"Origin": "https://app.test", "Access-Control-Request-Method": "PUT"},
    )
    assert "access-control-allow-origin" not in headers  # not allowed here: goes upstream


def test_fault_abort_from_header(filtered: tuple[ProxyProcess, AccessLog]) -> None:
    proc, log = filtered
    ua = "filters/fault-abort"
    status, _, body = _request(
        proc, "GET", "/index.html", {"x-envoy-fault-abort-request": "503", "User-Agent": ua}
    )
    assert (status, body) == (503, b"fault filter abort")
    assert log.wait_for_line(ua) == f"503 FI fault_filter_abort {ua}"


def test_fault_delay_then_abort(filtered: tuple[ProxyProcess, AccessLog]) -> None:
    proc, log = filtered
    ua = "filters/fault-delay"
    start = time.monotonic()
    status, _, _ = _request(
        proc,
        "GET",
        "/index.html",
        {
            "x-envoy-fault-delay-request": "300",
            "x-envoy-fault-abort-request": "418",
            "User-Agent": ua,
        },
    )
    assert status == 418
    assert time.monotonic() - start >= 0.29
    assert log.wait_for_line(ua) == f"418 DI,FI fault_filter_abort {ua}"
    # a delay alone: then the request goes upstream
    start = time.monotonic()
    status, _, body = _request(proc, "GET", "/py/x", {"x-envoy-fault-delay-request": "200"})
    assert status == 200 and body == b"GET /py/x\n"
    assert time.monotonic() - start >= 0.19


def test_fault_delay_client_leaves(filtered: tuple[ProxyProcess, AccessLog]) -> None:
    """A client gone during the delay: the timer is cancelled, nothing is sent upstream."""
    proc, log = filtered
    ua = "filters/fault-leave"
    sock = socket.create_connection(("127.0.0.1", proc.port))
    sock.sendall(
        b"GET /index.html HTTP/1.1\r\nHost: x\r\nx-envoy-fault-delay-request: 5000\r\n"
        b"User-Agent: " + ua.encode() + b"\r\n\r\n"
    )
    time.sleep(0.2)
    # a reset (a FIN is a disconnect too, as in Envoy: see test_review_bugs)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    line = log.wait_for_line(ua)
    assert line.startswith("0 DI,DC ")
    # the proxy still answers at once
    assert _request(proc, "GET", "/index.html")[0] == 200


def test_gzip_with_curl(filtered: tuple[ProxyProcess, AccessLog], site: Site) -> None:
    proc, _ = filtered
    out = subprocess.run(
        ["curl", "-sS", "--compressed", "-D", "-", "-o", "/dev/null", proc.url + "/index.html"],
        capture_output=True,
        check=True,
        text=True,
    ).stdout.lower()
    assert "content-encoding: gzip" in out
    assert "vary: accept-encoding" in out
    assert "transfer-encoding: chunked" in out and "content-length" not in out
    got = subprocess.run(
        ["curl", "-sS", "--compressed", proc.url + "/index.html"], capture_output=True, check=True
    ).stdout
    assert hashlib.sha256(got).hexdigest() == site.digests["/index.html"]


def test_gzip_streams_a_chunked_response(filtered: tuple[ProxyProcess, AccessLog]) -> None:
    proc, _ = filtered
    status, headers, body = _request(
        proc, "GET", "/py/chunked?n=20&size=5000", {"Accept-Encoding": "gzip"}
    )
    assert status == 200 and headers["content-encoding"] == "gzip"
    plain = gzip.decompress(body)
    assert plain == b"".join(bytes([65 + i % 26]) * 5000 for i in range(20))


def test_gzip_not_applied(filtered: tuple[ProxyProcess, AccessLog], site: Site) -> None:
    proc, _ = filtered
    accept = {"Accept-Encoding": "gzip"}
    # below min_content_length (30 bytes by default)
    status, headers, body = _request(proc, "GET", "/filters/tiny.txt", accept)
    assert (status, body) == (200, b"tiny\n") and "content-encoding" not in headers
    # HEAD: no body, headers untouched
    status, headers, body = _request(proc, "HEAD", "/index.html", accept)
    assert status == 200 and body == b"" and "content-encoding" not in headers
    assert headers["content-length"] == str(site.sizes["/index.html"])
    # 304: untouched
    _, first, _ = _request(proc, "GET", "/index.html")
    status, headers, body = _request(
        proc, "GET", "/index.html", {**accept, "If-Modified-Since": first["last-modified"]}
    )
    assert status == 304 and "content-encoding" not in headers
    # q=0 and identity: not compressed
    for value in ("gzip;q=0", "identity", "br"):
        status, headers, _ = _request(proc, "GET", "/index.html", {"Accept-Encoding": value})
        assert status == 200 and "content-encoding" not in headers, value
    # already encoded upstream (nginx's gzip location): passed through as is
    status, headers, body = _request(proc, "GET", "/gzip/index.html", accept)
    assert headers["content-encoding"] == "gzip"
    assert hashlib.sha256(gzip.decompress(body)).hexdigest() == site.digests["/index.html"]


def test_gzip_request_body_decompressed(filtered: tuple[ProxyProcess, AccessLog]) -> None:
    proc, _ = filtered
    plain = os.urandom(150_000).hex().encode()  # compresses about 2:1 (under max_inflate_ratio)
    status, _, body = _request(
        proc,
        "POST",
        "/py/sha256",
        {"Content-Encoding": "gzip", "Content-Type": "application/x-test"},
        gzip.compress(plain),
    )
    info = json.loads(body)
    assert status == 200
    assert info["sha256"] == hashlib.sha256(plain).hexdigest()
    assert info["length"] == len(plain) and info["chunked"] is True


def _peak_rss_kib(proc: ProxyProcess) -> int:
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def test_gzip_held_request_body_inflates_in_bounded_pieces(
    filtered: tuple[ProxyProcess, AccessLog],
) -> None:
    # A gzip body held behind a pipelined request (under the 1 MiB buffer limit) that inflates
    # to 32 MiB, sent to a slow reader: the proxy lets it out a piece at a time as the upstream
    # takes it, never the whole inflated body at once.
    proc, _ = filtered
    size = 32 << 20
    plain = bytearray(size)
    plain[::96] = os.urandom(len(range(0, size, 96)))  # about 40:1, under max_inflate_ratio
    packed = gzip.compress(bytes(plain), 6)
    assert len(packed) < 1 << 20
    before = _peak_rss_kib(proc)
    sock = socket.create_connection(("127.0.0.1", proc.port), timeout=30)
    try:
        sock.sendall(
            b"GET /py/slow?ms=200 HTTP/1.1\r\nHost: f\r\n\r\n"
            b"POST /py/slow-sink?slow_s=2 HTTP/1.1\r\nHost: f\r\nContent-Encoding: gzip\r\n"
            b"Content-Type: application/x-test\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(packed)
            + packed
        )
        first = http.client.HTTPResponse(sock)
        first.begin()
        assert first.status == 200 and first.read().strip() == b"slow"
        second = http.client.HTTPResponse(sock)
        second.begin()
        info = json.loads(second.read())
    finally:
        sock.close()
    assert second.status == 200
    assert info["length"] == size and info["chunked"] is True
    assert info["sha256"] == hashlib.sha256(plain).hexdigest()
    assert _peak_rss_kib(proc) - before < 16 << 10  # well under the 32 MiB it inflates to


def test_rbac_denies(filtered: tuple[ProxyProcess, AccessLog]) -> None:
    proc, log = filtered
    ua = "filters/rbac-path"
    status, _, body = _request(proc, "GET", "/rbac/secret", {"User-Agent": ua})
    assert (status, body) == (403, b"RBAC: access denied")
    assert log.wait_for_line(ua) == f"403 - rbac_access_denied_matched_policy[blocked-path] {ua}"
    ua = "filters/rbac-header"
    status, _, _ = _request(proc, "GET", "/index.html", {"x-blocked": "1", "User-Agent": ua})
    assert status == 403
    assert log.wait_for_line(ua).startswith(
        "403 - rbac_access_denied_matched_policy[blocked-header]"
    )
    assert _request(proc, "GET", "/index.html")[0] == 200


def test_cors_headers_on_later_filters_local_replies(
    filtered: tuple[ProxyProcess, AccessLog],
) -> None:
    # Envoy's CORS encodeHeaders sees the local replies of the filters after it
    proc, _ = filtered
    origin = {"Origin": "https://app.test"}
    status, headers, _ = _request(proc, "GET", "/rbac/secret", origin)
    assert status == 403
    assert headers["access-control-allow-origin"] == "https://app.test"
    assert headers["access-control-expose-headers"] == "x-exposed"
    status, headers, body = _request(
        proc, "GET", "/index.html", {**origin, "x-envoy-fault-abort-request": "429"}
    )
    assert (status, body) == (429, b"fault filter abort")
    assert headers["access-control-allow-origin"] == "https://app.test"
    status, headers, _ = _request(proc, "GET", "/rbac/secret", {"Origin": "https://evil.test"})
    assert status == 403 and "access-control-allow-origin" not in headers


def test_csrf(filtered: tuple[ProxyProcess, AccessLog]) -> None:
    proc, log = filtered
    host = f"127.0.0.1:{proc.port}"
    ua = "filters/csrf-bad"
    status, _, body = _request(
        proc, "POST", "/csrf/x", {"Origin": "https://evil.test", "User-Agent": ua}, b"a=1"
    )
    assert (status, body) == (403, b"Invalid origin")
    assert log.wait_for_line(ua) == f"403 - csrf_origin_mismatch {ua}"
    status, _, _ = _request(proc, "POST", "/csrf/x", {"Origin": f"http://{host}"}, b"a=1")
    assert status == 200
    # the filter's own policy (0%) applies elsewhere
    assert _request(proc, "POST", "/py/x", {"Origin": "https://evil.test"}, b"a=1")[0] == 200


def test_filter_stats(filtered: tuple[ProxyProcess, AccessLog]) -> None:
    proc, _ = filtered
    _request(proc, "GET", "/rbac/x")
    _request(proc, "GET", "/index.html", {"x-envoy-fault-abort-request": "500"})
    _request(proc, "GET", "/index.html", {"Accept-Encoding": "gzip"})
    stats = _stats(proc)
    assert stats["http.filters.rbac.denied"] >= 1
    assert stats["http.filters.fault.aborts_injected"] >= 1
    assert stats["http.filters.compressor.text_optimized.gzip.response.compressed"] >= 1


def _stats(proc: ProxyProcess) -> dict[str, int]:
    assert wait_until(lambda: _ADMIN.search(proc.stderr()) is not None, 10), proc.stderr()
    m = _ADMIN.search(proc.stderr())
    assert m is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{m.group(1)}/stats", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.isdigit():
            out[name] = int(value)
    return out


_ADMIN = re.compile(r"udsproxy: admin listening on 127\.0\.0\.1:(\d+)")
