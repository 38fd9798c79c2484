"""`udsproxy demo`: its nginx part, its built-in upstream, and the whole thing as a user runs it."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from udsproxy.tools import demo

from .conftest import SockPaths
from .support import (
    LoopThread,
    find_nginx,
    get,
    require,
    unix_socket_live,
    wait_until,
)

pytestmark = pytest.mark.integration

SITE_INDEX = (demo.SITE_DIR / "index.html").read_bytes()


def _uds_exchange(path: str, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes to a Unix socket and read until the server closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(data)
        parts = []
        while chunk := s.recv(65536):
            parts.append(chunk)
    return b"".join(parts)


def _split(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


def test_remove_stale_socket(sock_path: SockPaths, tmp_path: Path) -> None:
    path = sock_path("stale")
    assert demo.remove_stale_socket(path) is False  # nothing there
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()
    assert os.path.exists(path)
    assert demo.remove_stale_socket(path) is True
    assert not os.path.exists(path)

    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(path)
    live.listen(1)
    try:
        with pytest.raises(demo.DemoError, match="already listening"):
            demo.remove_stale_socket(path)
        assert os.path.exists(path)
    finally:
        live.close()

    regular = tmp_path / "not-a-socket"
    regular.write_text("x")
    with pytest.raises(demo.DemoError, match="not a socket"):
        demo.remove_stale_socket(str(regular))


def test_proxy_config_matches_conf_file() -> None:
    import yaml

    shipped = yaml.safe_load((Path(__file__).parents[2] / "conf" / "proxy.yaml").read_text())
    assert demo.proxy_config() == shipped


def test_demo_nginx_serves_the_site(sock_path: SockPaths) -> None:
    binary = find_nginx()
    require(binary is not None, "nginx is not installed")
    assert binary is not None
    path = sock_path("demo-nginx")
    # As the demo does: a world-readable temp dir, since workers drop root to nobody (pytest's
    # tmp_path sits under a 0700 directory).
    workdir = Path(tempfile.mkdtemp(prefix="udsproxy-demo-test-"))
    try:
        workdir.chmod(0o755)
        shutil.copytree(demo.SITE_DIR, workdir / "site")
        ngx = demo.Nginx(binary, path, workdir / "site", workdir)
        ngx.start()
        try:
            asyncio.run(ngx.wait_ready(10))
            raw = _uds_exchange(path, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            head, body = _split(raw)
            assert head.startswith(b"HTTP/1.1 200"), raw[:300]
            assert body == SITE_INDEX
            raw = _uds_exchange(
                path, b"GET /style.css HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            assert b"text/css" in _split(raw)[0]
        finally:
            ngx.stop()
        assert ngx.proc is not None and ngx.proc.returncode == 0
        assert not os.path.exists(path), "nginx's graceful stop removes its socket"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_builtin_upstream(sock_path: SockPaths) -> None:
    path = sock_path("builtin")
    lt = LoopThread()
    up = demo.BuiltinUpstream(path, demo.SITE_DIR)
    try:
        lt.run(up.start())
        assert unix_socket_live(path)
        # keep-alive + pipelining: three requests in one write, answered in order
        raw = _uds_exchange(
            path,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
            b"HEAD /style.css HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        first, rest = raw.split(b"\r\n\r\n", 1)
        assert first.startswith(b"HTTP/1.1 200 OK")
        assert f"Content-Length: {len(SITE_INDEX)}".encode() in first
        assert rest.startswith(SITE_INDEX)
        rest = rest[len(SITE_INDEX) :]
        second, third = rest.split(b"\r\n\r\n", 1)
        assert second.startswith(b"HTTP/1.1 200 OK") and b"text/css" in second
        assert third.startswith(b"HTTP/1.1 404 Not Found")
        post = _uds_exchange(path, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        assert post.startswith(b"HTTP/1.1 405")
        bad = _uds_exchange(path, b"GARBAGE\r\n\r\n")
        assert bad.startswith(b"HTTP/1.1 400")
    finally:
        lt.run(up.stop())
        lt.close()
    assert not os.path.exists(path)


class DemoProcess:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "udsproxy", "demo", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _drain(stream: object, sink: list[str]) -> None:
        sink.extend(stream)  # type: ignore[call-overload]

    def url(self, timeout: float = 30.0) -> str:
        found: list[str] = []

        def check() -> bool:
            for line in list(self.err):
                m = re.search(r"try:\s+curl -i (http://\S+)", line)
                if m:
                    found.append(m[1])
                    return True
            return self.proc.poll() is not None

        wait_until(check, timeout, 0.05)
        assert found, f"demo did not start (exit {self.proc.poll()}):\n{''.join(self.err)}"
        return found[0]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(5)
        for t in self._threads:
            t.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return rc


@pytest.mark.parametrize("upstream", ["nginx", "builtin"])
def test_demo_end_to_end(upstream: str, sock_path: SockPaths) -> None:
    if upstream == "nginx":
        require(find_nginx() is not None, "nginx is not installed")
    path = sock_path(f"demo-{upstream}")
    # A stale socket file, as a crashed nginx leaves in an emptyDir: the demo must clear it.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()
    d = DemoProcess(
        "--port", "0", "--address", "127.0.0.1", "--socket", path, "--upstream", upstream
    )
    try:
        url = d.url()
        m = re.match(r"http://([^:/]+):(\d+)/", url)
        assert m, url
        address = (m[1], int(m[2]))
        resp = get(address, "/", headers={"User-Agent": "demo-check"})
        assert resp.status == 200
        assert resp.body == SITE_INDEX
        assert resp.header("server") == "envoy"
        assert get(address, "/prometheus-histograms.html").status == 200
        assert get(address, "/missing.html").status == 404

        def logged() -> bool:
            return any("demo-check" in line for line in d.out)

        assert wait_until(logged, 5), f"no access log line on stdout:\n{''.join(d.out)}"
        line = next(line for line in d.out if "demo-check" in line)
        assert '"GET / HTTP/1.1" 200 - 0 ' in line and line.rstrip().endswith(f'"{path}"'), line
    finally:
        rc = d.stop()
    assert rc == 0, "".join(d.err)
    assert not os.path.exists(path), "the demo left its socket behind"
    if upstream == "nginx":
        assert "falling back" not in "".join(d.err)


def test_demo_without_nginx_says_so(
    sock_path: SockPaths, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--upstream nginx on a machine without nginx: a clear message and exit 1."""
    monkeypatch.setattr(demo, "find_nginx", lambda: None)
    assert demo.main(["--upstream", "nginx", "--socket", sock_path("x")]) == 1
    assert "nginx is not installed" in capsys.readouterr().err


def test_demo_serves_the_articles_own_cds_file(tmp_path: Path) -> None:
    """conf/article/cds.yaml as the article wrote it (v2 @type, "type: static", lower case)
    serves the demo: nginx on /dev/shm/hugo.sock, the cluster from that file unchanged. The
    listener file is copied with port 0 so the test never takes the demo's port 10000."""
    require(find_nginx() is not None, "nginx is not installed")
    socket_path = "/dev/shm/hugo.sock"
    require(not unix_socket_live(socket_path), f"{socket_path} is in use by a running demo")
    article = Path(__file__).resolve().parents[2] / "conf" / "article"
    lds = (article / "lds.yaml").read_text().replace("port_value: 10000", "port_value: 0")
    (tmp_path / "lds.yaml").write_text(lds.replace("0.0.0.0", "127.0.0.1"))
    bootstrap = (article / "envoy.yaml").read_text()
    bootstrap = bootstrap.replace("conf/article/cds.yaml", str(article / "cds.yaml"))
    bootstrap = bootstrap.replace("conf/article/lds.yaml", str(tmp_path / "lds.yaml"))
    (tmp_path / "envoy.yaml").write_text(bootstrap)
    d = DemoProcess("--config", str(tmp_path / "envoy.yaml"), "--upstream", "nginx")
    try:
        m = re.match(r"http://([^:/]+):(\d+)/", d.url())
        assert m
        resp = get((m[1], int(m[2])), "/", headers={"User-Agent": "article-cds"})
        assert resp.status == 200 and resp.body == SITE_INDEX
        assert wait_until(lambda: any("article-cds" in line for line in d.out), 5)
        line = next(line for line in d.out if "article-cds" in line)
        assert line.rstrip().endswith(f'"{socket_path}"'), line
        assert "deprecated v2 form 'type.googleapis.com/envoy.api.v2.Cluster'" in "".join(d.err)
    finally:
        rc = d.stop()
    assert rc == 0, "".join(d.err)
