"""Bodies both ways: Content-Length and chunked, up to 10 MiB, checked by sha256."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from .support import (
    AccessLog,
    ProxyProcess,
    PyUpstream,
    RawConn,
    Site,
    bootstrap,
    cluster,
    get,
    iter_chunks,
    listener,
    request_bytes,
    require,
    route,
    sha256,
    vhost,
)

pytestmark = pytest.mark.integration

TEN_MIB = 10 << 20


def _curl() -> str:
    curl = shutil.which("curl")
    require(curl is not None, "curl is not installed")
    assert curl is not None
    return curl


def test_download_10mib_with_curl(
    proxy: ProxyProcess, site: Site, tmp_path: Path, proxy_log: AccessLog, user_agent: str
) -> None:
    out = tmp_path / "10m.bin"
    result = subprocess.run(
        [
            *(_curl(), "-sS", "--max-time", "30", "-A", user_agent),
            *("-o", str(out), "-w", "%{http_code}", f"{proxy.url}/files/10m.bin"),
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert result.stdout == b"200"
    assert out.stat().st_size == TEN_MIB
    assert hashlib.sha256(out.read_bytes()).hexdigest() == site.digests["/files/10m.bin"]
    line = proxy_log.wait_for_line(user_agent)
    assert f'"GET /files/10m.bin HTTP/1.1" 200 - 0 {TEN_MIB} ' in line, line


def test_download_10mib_with_http_client(proxy: ProxyProcess, site: Site) -> None:
    host, port = proxy.address()
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", "/files/10m.bin")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("content-length") == str(TEN_MIB)
        h = hashlib.sha256()
        n = 0
        while chunk := resp.read(1 << 16):
            h.update(chunk)
            n += len(chunk)
    finally:
        conn.close()
    assert n == TEN_MIB
    assert h.hexdigest() == site.digests["/files/10m.bin"]


def test_upload_10mib_content_length(
    proxy: ProxyProcess, proxy_log: AccessLog, user_agent: str
) -> None:
    body = os.urandom(TEN_MIB)
    host, port = proxy.address()
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("POST", "/py/sha256", body=body, headers={"User-Agent": user_agent})
        resp = conn.getresponse()
        info = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 200
    assert info["length"] == TEN_MIB
    assert info["sha256"] == sha256(body)
    line = proxy_log.wait_for_line(user_agent)
    assert f'"POST /py/sha256 HTTP/1.1" 200 - {TEN_MIB} ' in line, line


def test_upload_10mib_chunked_with_curl(proxy: ProxyProcess, tmp_path: Path) -> None:
    src = tmp_path / "up.bin"
    data = os.urandom(TEN_MIB)
    src.write_bytes(data)
    result = subprocess.run(
        [
            *(_curl(), "-sS", "--max-time", "30", "-H", "Transfer-Encoding: chunked"),
            *("--data-binary", f"@{src}", f"{proxy.url}/py/sha256"),
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    info = json.loads(result.stdout)
    assert info["length"] == TEN_MIB
    assert info["sha256"] == sha256(data)


def test_chunked_request_irregular_chunks(proxy: ProxyProcess) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    sizes = [1, 2, 100, 65536, 7, 1 << 20]

    def chunks() -> object:
        i = k = 0
        while i < len(data):
            n = sizes[k % len(sizes)]
            yield data[i : i + n]
            i += n
            k += 1

    host, port = proxy.address()
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("POST", "/py/sha256", body=chunks(), encode_chunked=True)  # type: ignore[arg-type]
        resp = conn.getresponse()
        info = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 200
    assert (info["length"], info["sha256"]) == (len(data), sha256(data))


def test_echo_roundtrip(proxy: ProxyProcess) -> None:
    data = os.urandom(1 << 20)
    host, port = proxy.address()
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("POST", "/py/echo", body=data, headers={"Content-Type": "x/y"})
        resp = conn.getresponse()
        echoed = resp.read()
    finally:
        conn.close()
    assert resp.status == 200
    assert resp.getheader("content-type") == "x/y"
    assert echoed == data


@pytest.mark.parametrize("name", ["/files/1m.bin", "/index.html"])
def test_chunked_response_from_nginx_gzip(proxy: ProxyProcess, site: Site, name: str) -> None:
    """nginx gzips on the fly: no length known, so it answers chunked; relayed chunked."""
    host = f"{proxy.address()[0]}:{proxy.port}"
    with RawConn(proxy.address(), timeout=10) as conn:
        conn.send(request_bytes("GET", "/gzip" + name, host, [("Accept-Encoding", "gzip")]))
        resp = conn.read_response()
        # ...and the connection stays usable after a chunked body.
        conn.send(request_bytes("GET", "/py/after-chunked", host))
        after = conn.read_response()
    assert resp.status == 200
    assert resp.chunked, resp.headers
    assert resp.header("content-length") is None
    assert resp.header("content-encoding") == "gzip"
    assert sha256(gzip.decompress(resp.body)) == site.digests[name]
    assert after.body == b"GET /py/after-chunked\n"


def test_chunked_response_with_curl(proxy: ProxyProcess, site: Site) -> None:
    result = subprocess.run(
        [_curl(), "-sS", "--max-time", "20", "--compressed", f"{proxy.url}/gzip/files/100k.bin"],
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert sha256(result.stdout) == site.digests["/files/100k.bin"]


def test_chunked_response_from_python_upstream(proxy: ProxyProcess) -> None:
    resp = get(proxy.address(), "/py/chunked?n=50&size=3000")
    assert resp.status == 200
    assert resp.chunked
    assert resp.body == b"".join(bytes([65 + i % 26]) * 3000 for i in range(50))


def test_upload_to_nginx_dav_then_download(
    proxy: ProxyProcess, site: Site, nginx_dav: bool
) -> None:
    """A 10 MiB PUT into nginx itself (WebDAV module), read back through the proxy."""
    if not nginx_dav:
        pytest.skip("this nginx has no http_dav_module (the /py/sha256 tests cover uploads)")
    data = os.urandom(TEN_MIB)
    name = f"/upload/{secrets.token_hex(4)}.bin"
    host, port = proxy.address()
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("PUT", name, body=iter_chunks(data, 1 << 20), encode_chunked=True)
        put = conn.getresponse()
        put.read()
        assert put.status in (201, 204), put.status
        conn.request("GET", name)
        resp = conn.getresponse()
        back = resp.read()
    finally:
        conn.close()
    assert resp.status == 200
    assert sha256(back) == sha256(data)
    assert (site.root / name.lstrip("/")).stat().st_size == TEN_MIB


@pytest.mark.parametrize("splice_min", ["1", "65536", "0"])
def test_uploads_by_splice_keep_the_connection_and_the_log(
    tmp_path: Path, py_upstream: PyUpstream, splice_min: str
) -> None:
    """A large Content-Length request body moves by splice(2) ("1": any body that is not all
    in the first read; "0": splice off). The bytes arrive whole, the next request on the same
    keep-alive connection is parsed, and the log counts every body byte."""
    log_path = tmp_path / "access.log"
    config = bootstrap(
        [listener([vhost("test", [route("py", prefix="/py/")])], access_log=log_path)],
        [cluster("py", py_upstream.socket_path)],
    )
    proxy = ProxyProcess(config, tmp_path, "--splice-min-bytes", splice_min).start()
    try:
        host, port = proxy.address()
        conn = http.client.HTTPConnection(host, port, timeout=30)
        try:
            for size in (3 << 20, 200_000, 5):
                body = os.urandom(size)
                conn.request("POST", f"/py/sha256?n={size}", body=body)
                resp = conn.getresponse()
                info = json.loads(resp.read())
                assert resp.status == 200 and resp.getheader("connection") is None
                assert (info["length"], info["sha256"]) == (size, sha256(body))
            conn.request("GET", "/py/hello")
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, b"GET /py/hello\n")
        finally:
            conn.close()
        log = AccessLog(log_path)
        for size in (3 << 20, 200_000, 5):
            line = log.wait_for_line(f"/py/sha256?n={size} ")
            assert f'"POST /py/sha256?n={size} HTTP/1.1" 200 - {size} ' in line, line
    finally:
        assert proxy.stop() == 0, proxy.stderr()
