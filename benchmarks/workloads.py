"""The workloads, and one measured run of a workload against a subject.

A run reads the subject's CPU time (utime + stime of all its processes, from /proc/<pid>/stat,
and stime on its own: the kernel's part) before and after the load, polls its summed VmRSS
during the load, and takes req/s, latency percentiles, socket errors and non-2xx/3xx responses
from wrk (benchmarks/lua/report.lua).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.procs import RssSampler, cpu_seconds, cpu_split, pin_prefix, status_kib
from benchmarks.servers import Subject, Subjects, Upstream, which

LUA = Path(__file__).resolve().parent / "lua"


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    path: str = "/index.html"
    connections: int = 64
    script: str = "get.lua"
    script_args: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()
    idle: bool = False  # 1000 idle keep-alive connections: memory, not throughput
    latency: bool = False  # c1: p50/p99 are the point


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("small", "small GET (612 B), keep-alive, c64"),
        Workload("browser", "small GET, browser headers (16 + cookie), c64", script="browser.lua"),
        Workload("c1", "small GET, c1 (latency)", connections=1, latency=True),
        Workload("get1k", "1 KiB GET, c64", path="/1k.bin"),
        Workload("get100k", "100 KiB GET, c64", path="/100k.bin"),
        Workload("get1m", "1 MiB GET, c64", path="/1m.bin"),
        Workload("post16k", "16 KiB POST, c64", path="/post", script="post.lua",
                 script_args=("16384",)),
        Workload("post1m", "1 MiB POST, c64", path="/post", script="post.lua",
                 script_args=("1048576",)),
        Workload("close", "small GET, Connection: close, c64", headers=("Connection: close",)),
        Workload("idle1000", "1000 idle keep-alive connections (RSS)", connections=1000,
                 idle=True),
    )
}  # fmt: skip

# The default set (get1k is served but not run unless asked for).
DEFAULT_WORKLOADS = (
    "small",
    "browser",
    "c1",
    "get100k",
    "get1m",
    "post16k",
    "post1m",
    "close",
    "idle1000",
)


@dataclass
class Sample:
    """One measured run: a workload against a subject in one round."""

    round: int
    workload: str
    subject: str
    ok: bool = True
    failure: str | None = None
    requests: int = 0
    duration_s: float = 0.0
    rps: float = 0.0
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    mean_ms: float | None = None
    max_ms: float | None = None
    cpu_s: float | None = None
    cpu_us_per_req: float | None = None
    sys_us_per_req: float | None = None  # of cpu_us_per_req, the kernel's (stime)
    upstream_cpu_us_per_req: float | None = None
    rss_peak_mib: float | None = None
    hwm_mib: float | None = None
    errors: dict[str, int] = field(default_factory=dict)
    # idle1000 only
    rss_before_mib: float | None = None
    rss_idle_mib: float | None = None
    kib_per_conn: float | None = None
    conns_open: int | None = None
    wrk_output: str | None = None

    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def wrk_command(
    wl: Workload, url: str, duration: int, load_cpus: str | None, timeout: int = 5
) -> list[str]:
    wrk = which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed")
    cmd = [
        *pin_prefix(load_cpus),
        wrk,
        "-t1",
        f"-c{wl.connections}",
        f"-d{duration}s",
        "--latency",
        "--timeout",
        f"{timeout}s",
        "-s",
        str(LUA / wl.script),
    ]
    for h in wl.headers:
        cmd += ["-H", h]
    cmd.append(url)
    if wl.script_args:
        cmd += ["--", *wl.script_args]
    return cmd


def parse_wrk(stdout: str) -> dict[str, float]:
    for line in stdout.splitlines():
        if line.startswith("WRKJSON "):
            parsed: dict[str, float] = json.loads(line[len("WRKJSON ") :])
            return parsed
    raise ValueError("no WRKJSON line in wrk's output")


def run_wrk(
    subject: Subject,
    upstream: Upstream,
    wl: Workload,
    rnd: int,
    duration: int,
    load_cpus: str | None,
) -> Sample:
    sample = Sample(rnd, wl.name, subject.name)
    url = f"http://127.0.0.1:{subject.port}{wl.path}"
    cmd = wrk_command(wl, url, duration, load_cpus)
    pids = subject.pids()
    up_pids = upstream.pids()
    if subject.kind != "direct" and not pids:
        sample.ok, sample.failure = False, f"{subject.name} is not running"
        return sample
    (user0, sys0), up0 = cpu_split(pids), cpu_seconds(up_pids)
    with RssSampler(lambda: pids) as rss:
        try:
            out = subprocess.run(
                cmd, capture_output=True, text=True, timeout=duration + 60, check=False
            )
        except subprocess.TimeoutExpired:
            sample.ok, sample.failure = False, "wrk did not finish in time"
            return sample
    (user1, sys1), up1 = cpu_split(pids), cpu_seconds(up_pids)
    cpu0, cpu1 = user0 + sys0, user1 + sys1
    try:
        w = parse_wrk(out.stdout)
    except ValueError:
        sample.ok = False
        sample.failure = f"wrk exit {out.returncode}: {(out.stderr or out.stdout)[-500:]}"
        return sample
    n = int(w["requests"])
    sample.requests = n
    sample.duration_s = w["duration_us"] / 1e6
    sample.rps = n / sample.duration_s if sample.duration_s else 0.0
    for key in ("p50", "p90", "p99", "p999", "max"):
        setattr(sample, f"{key}_ms", w[f"{key}_us"] / 1000)
    sample.mean_ms = w["mean_us"] / 1000
    sample.errors = {k: int(w[k]) for k in ("connect", "read", "write", "timeout", "status")}
    sample.errors = {k: v for k, v in sample.errors.items() if v}
    if pids:
        sample.cpu_s = cpu1 - cpu0
        sample.cpu_us_per_req = (cpu1 - cpu0) * 1e6 / n if n else None
        sample.sys_us_per_req = (sys1 - sys0) * 1e6 / n if n else None
        sample.rss_peak_mib = rss.peak_kib / 1024
        sample.hwm_mib = status_kib(pids, "VmHWM") / 1024
    if up_pids and n:
        sample.upstream_cpu_us_per_req = (up1 - up0) * 1e6 / n
    if sample.errors or n == 0:
        sample.wrk_output = out.stdout[-2000:]
    return sample


def run_idle(
    subject: Subject,
    subjects: Subjects,
    wl: Workload,
    rnd: int,
    load_cpus: str | None,
    hold: float = 1.0,
) -> Sample:
    """Restart the subject (fresh memory), open wl.connections keep-alive connections, send one
    request on each, hold them idle, and read the subject's RSS."""
    sample = Sample(rnd, wl.name, subject.name)
    subjects.restart(subject)
    time.sleep(0.3)
    pids = subject.pids()
    before = status_kib(pids, "VmRSS")
    cpu0 = cpu_seconds(pids)
    cmd = [
        *pin_prefix(load_cpus),
        sys.executable,
        "-m",
        "benchmarks.idle",
        "--port",
        str(subject.port),
        "--path",
        wl.path,
        "--conns",
        str(wl.connections),
    ]
    cwd = Path(__file__).resolve().parent.parent
    with subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        start_new_session=True,
    ) as client:
        assert client.stdout is not None and client.stdin is not None
        try:
            ready = _read_tagged(client, "READY", 60.0)
            if ready is None:
                sample.ok, sample.failure = False, "idle client did not get its connections up"
                return sample
            time.sleep(0.3)
            samples = []
            for _ in range(5):
                samples.append(status_kib(pids, "VmRSS"))
                time.sleep(hold / 5)
            cpu1 = cpu_seconds(pids)
            client.stdin.close()
            done = _read_tagged(client, "DONE", 30.0) or {}
        finally:
            if client.poll() is None:
                client.terminate()
            try:
                client.wait(10)
            except subprocess.TimeoutExpired:
                client.kill()
                client.wait(5)
    idle = statistics.median(samples)
    sample.requests = int(ready["ok"])
    sample.errors = {k: int(ready[k]) for k in ("connect", "read", "status") if ready.get(k)}
    if done.get("closed_by_peer"):
        sample.errors["closed_idle"] = int(done["closed_by_peer"])
    sample.conns_open = int(done.get("open", 0))
    sample.rss_before_mib = before / 1024
    sample.rss_idle_mib = idle / 1024
    sample.rss_peak_mib = max(samples) / 1024
    sample.hwm_mib = status_kib(pids, "VmHWM") / 1024
    sample.kib_per_conn = (idle - before) / max(1, wl.connections)
    sample.cpu_s = cpu1 - cpu0
    sample.p50_ms = ready.get("p50_ms")
    sample.p99_ms = ready.get("p99_ms")
    return sample


def _read_tagged(client: subprocess.Popen[str], tag: str, timeout: float) -> dict[str, Any] | None:
    assert client.stdout is not None
    deadline = time.monotonic() + timeout
    fd = client.stdout.fileno()
    buf = ""
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not r:
            break
        chunk = os.read(fd, 65536).decode()
        if not chunk:
            break
        buf += chunk
        while "\n" in buf:
            line, buf = buf.split("\n", 1)
            if line.startswith(tag + " "):
                parsed: dict[str, Any] = json.loads(line[len(tag) + 1 :])
                return parsed
    with contextlib.suppress(Exception):
        client.terminate()
    return None
