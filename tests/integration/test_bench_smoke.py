"""The benchmark tools do not rot: one short harness run, and `udsproxy bench` on a tiny upstream.

Benchmarks are not tests: nothing here looks at a number beyond "requests were served".
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from udsproxy.tools import bench

from .support import REPO, LoopThread, shm_dir

pytestmark = pytest.mark.integration


def test_harness_quick_run(nginx_bin: str, tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install wrk)")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--proxies",
            "udsproxy,nginx,pyfloor",
            "--no-setup",
            "--no-chart",
            "--results-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "small GET" in out.stdout
    [result] = tmp_path.glob("*.json")
    data = json.loads(result.read_text())
    assert data["meta"]["complete"] is True
    samples = {s["subject"]: s for s in data["samples"]}
    assert set(samples) == {"udsproxy", "nginx", "pyfloor"}
    for name, s in samples.items():
        assert s["ok"], (name, s["failure"])
        assert s["requests"] > 0, name
        assert s["cpu_us_per_req"] is not None, name
        assert s["sys_us_per_req"] is not None, name
    assert not list(tmp_path.glob("latest.*"))  # --quick never replaces the committed results
    assert (tmp_path / result.with_suffix(".md").name).is_file()


class _TinyUpstream(asyncio.Protocol):
    """A minimal HTTP/1.1 server: 200 "ok" to each request, honouring Connection: close."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass it
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            close = b"\r\nconnection: close" in head.lower()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                + (b"Connection: close\r\n" if close else b"")
                + b"\r\nok"
            )
            if close:
                self.transport.close()
                return


@pytest.fixture
def tiny_upstream(loop_thread: LoopThread) -> Iterator[tuple[str, int]]:
    path = str(shm_dir() / f"udsproxy-test-bench-{os.getpid()}-{os.urandom(3).hex()}.sock")

    async def start() -> tuple[asyncio.AbstractServer, asyncio.AbstractServer]:
        loop = asyncio.get_running_loop()
        unix = await loop.create_unix_server(_TinyUpstream, path)
        tcp = await loop.create_server(_TinyUpstream, "127.0.0.1", 0)
        return unix, tcp

    unix, tcp = loop_thread.run(start())
    port = tcp.sockets[0].getsockname()[1]
    yield path, port

    async def stop() -> None:
        for srv in (unix, tcp):
            srv.close()
            await srv.wait_closed()

    loop_thread.run(stop())
    if os.path.exists(path):
        os.unlink(path)


def test_udsproxy_bench(tiny_upstream: tuple[str, int], capsys: pytest.CaptureFixture[str]) -> None:
    path, port = tiny_upstream
    args = ["--socket", path, "--tcp", f"127.0.0.1:{port}", "--duration", "0.4", "--rounds", "1"]
    assert bench.main([*args, "--concurrency", "4", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    got = {(s["transport"], s["mode"]): s for s in summary["scenarios"]}
    assert set(got) == {("unix", "pooled"), ("unix", "new"), ("tcp", "pooled"), ("tcp", "new")}
    for key, s in got.items():
        assert s["requests"] > 0, key
        assert s["errors"] == {}, key
        assert s["bytes_per_response"] == 2, key
    assert got[("unix", "pooled")]["ratio_rps"] == 1.0
    # the same run as a table, the way a user sees it
    assert bench.main([*args, "--concurrency", "2"]) == 0
    text = capsys.readouterr().out
    assert "pooled keep-alive" in text and "new connection per request" in text
    assert "vs unix pooled" in text


def test_udsproxy_bench_errors(capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(shm_dir() / f"udsproxy-test-bench-missing-{os.urandom(3).hex()}.sock")
    assert bench.main(["--socket", missing]) == 1
    assert "no socket" in capsys.readouterr().err
    with socket.socket(socket.AF_UNIX) as s:  # a socket file with nobody listening
        s.bind(missing)
    try:
        assert bench.main(["--socket", missing, "--duration", "0.2"]) == 1
        assert "cannot connect" in capsys.readouterr().err
    finally:
        os.unlink(missing)
    assert bench.main(["--socket", missing, "--tcp", "no-port"]) == 2
