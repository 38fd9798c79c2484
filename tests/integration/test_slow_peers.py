"""Flow control: a slow client reading a large response, and a large upload to a slow upstream,
must not grow the proxy's memory beyond its buffer limit. RSS is read from /proc/<pid>/status
of a dedicated proxy subprocess (per_connection_buffer_limit_bytes: 1 MiB)."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import REPORT, SockPaths
from .support import (
    NginxInstance,
    ProxyProcess,
    PyUpstream,
    RawConn,
    Site,
    bootstrap,
    cluster,
    get,
    listener,
    request_bytes,
    route,
    sha256,
    vhost,
)

pytestmark = pytest.mark.integration

BUFFER_LIMIT = 1 << 20
BIG = 48 << 20  # 48 MiB: far more than any bound below
RSS_BOUND_KIB = 8 * 1024  # growth allowed over the warmed-up baseline: 8x the buffer limit
SLOW_PHASE_S = 2.5


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


@pytest.fixture(scope="module")
def big_file(site: Site) -> str:
    name = "/files/48m.bin"
    if name not in site.sizes:
        site.add_random(name, BIG)
    return name


@pytest.fixture
def slow_proxy(
    request: pytest.FixtureRequest, nginx: NginxInstance, tmp_path: Path, sock_path: SockPaths
) -> Iterator[tuple[ProxyProcess, PyUpstream]]:
    """param "python" keeps every body on the Python relay (--splice-min-bytes 0); "default"
    splices uploads but relays responses in Python; "splice" (--splice-responses) lets large
    Content-Length response bodies go through splice(2) too."""
    relay = getattr(request, "param", "default")
    extra = {"python": ("--splice-min-bytes", "0"), "splice": ("--splice-responses",)}.get(
        relay, ()
    )
    up = PyUpstream(sock_path("slowsink"))
    config = bootstrap(
        [
            listener(
                [vhost("v", [route("py", prefix="/py/"), route("nginx", prefix="/")])],
                access_log=tmp_path / "access.log",
                buffer_limit=BUFFER_LIMIT,
            )
        ],
        [
            cluster("nginx", nginx.socket_path, buffer_limit=BUFFER_LIMIT),
            cluster("py", up.socket_path, buffer_limit=BUFFER_LIMIT),
        ],
    )
    proc = ProxyProcess(config, tmp_path / "proxy", *extra).start()
    try:
        yield proc, up
    finally:
        proc.stop()
        up.close()


def _baseline(proxy: ProxyProcess, site: Site) -> int:
    """RSS after the proxy has already moved a few MiB each way (allocator warmed up)."""
    for _ in range(2):
        assert len(get(proxy.address(), "/files/10m.bin", timeout=30).body) == 10 << 20
        up = get(proxy.address(), "/py/sha256", method="POST", body=os.urandom(4 << 20))
        assert up.status == 200
    time.sleep(0.3)
    return proxy.rss_kib()


@pytest.mark.parametrize("slow_proxy", ["splice", "default", "python"], indirect=True)
def test_slow_reader_of_large_response(
    slow_proxy: tuple[ProxyProcess, PyUpstream],
    site: Site,
    big_file: str,
    request: pytest.FixtureRequest,
) -> None:
    proxy, _ = slow_proxy
    baseline = _baseline(proxy, site)
    peak = baseline
    host = f"{proxy.address()[0]}:{proxy.port}"
    h = hashlib.sha256()
    received = 0
    with RawConn(proxy.address(), timeout=20, rcvbuf=16384) as conn:
        conn.send(request_bytes("GET", big_file, host))
        status, _, headers = conn.read_head()
        assert status == 200
        assert dict((k.lower(), v) for k, v in headers)["content-length"] == str(BIG)
        # Slow phase: ~1.6 MB/s against nginx's sendfile at GB/s. Without backpressure the
        # whole file would pile up in the proxy within milliseconds.
        t_end = time.monotonic() + SLOW_PHASE_S
        next_sample = 0.0
        while time.monotonic() < t_end:
            chunk = conn.rfile.read1(16384)
            assert chunk
            h.update(chunk)
            received += len(chunk)
            now = time.monotonic()
            if now >= next_sample:
                peak = max(peak, proxy.rss_kib())
                next_sample = now + 0.05
            time.sleep(0.01)
        peak = max(peak, proxy.rss_kib())
        assert received < BIG // 2, "the slow phase was not slow"
        # Then read the rest at full speed: the download must complete intact.
        while received < BIG:
            chunk = conn.rfile.read1(1 << 20)
            assert chunk, f"eof after {received} bytes"
            h.update(chunk)
            received += len(chunk)
    assert received == BIG
    assert h.hexdigest() == site.digests[big_file]
    growth = peak - baseline
    relay = request.node.callspec.params["slow_proxy"]
    REPORT[f"slow reader (48 MiB download, 1 MiB buffer limit, {relay} relay)"] = (
        f"proxy RSS baseline {_mib(baseline)}, peak {_mib(peak)}, growth {_mib(growth)}"
    )
    assert growth < RSS_BOUND_KIB, f"RSS grew by {_mib(growth)} (bound {_mib(RSS_BOUND_KIB)})"


def test_large_upload_to_slow_upstream(
    slow_proxy: tuple[ProxyProcess, PyUpstream], site: Site
) -> None:
    proxy, _ = slow_proxy
    baseline = _baseline(proxy, site)
    data = os.urandom(32 << 20)
    result: dict[str, object] = {}

    def upload() -> None:
        host, port = proxy.address()
        conn = http.client.HTTPConnection(host, port, timeout=30)
        try:
            conn.request("POST", f"/py/slow-sink?slow_s={SLOW_PHASE_S}", body=data)
            resp = conn.getresponse()
            result["status"] = resp.status
            result["info"] = json.loads(resp.read())
        except Exception as e:  # reported below
            result["error"] = e
        finally:
            conn.close()

    t = threading.Thread(target=upload)
    t.start()
    peak = baseline
    t_end = time.monotonic() + SLOW_PHASE_S
    while time.monotonic() < t_end and t.is_alive():
        peak = max(peak, proxy.rss_kib())
        time.sleep(0.05)
    t.join(60)
    assert not t.is_alive()
    assert "error" not in result, result.get("error")
    assert result["status"] == 200
    info = result["info"]
    assert isinstance(info, dict)
    assert (info["length"], info["sha256"]) == (len(data), sha256(data))
    growth = peak - baseline
    REPORT["slow upstream (32 MiB upload, 1 MiB buffer limit)"] = (
        f"proxy RSS baseline {_mib(baseline)}, peak {_mib(peak)}, growth {_mib(growth)}"
    )
    assert growth < RSS_BOUND_KIB, f"RSS grew by {_mib(growth)} (bound {_mib(RSS_BOUND_KIB)})"
