"""The soak: udsproxy under mixed load for minutes, with reloads, upstream restarts and a kill -9.

udsproxy runs with ``--concurrency 2`` and file-based CDS/LDS (``watched_directory``) in front of
benchmarks' upstream nginx on a Unix socket. ``benchmarks.loadgen`` sends a mixed load at a fixed
rate (small and larger GETs, 16 KiB POSTs, some ``Connection: close``). Meanwhile:

- every ``--reload-every`` s a new CDS or LDS file (in turn) is renamed into the watched
  directory; every fourth reload is a SIGHUP instead;
- every ``--restart-every`` s nginx is stopped and started again (udsproxy answers 503 UF until
  it is back);
- at half time one worker gets SIGKILL (the supervisor starts another).

Every second it samples each udsproxy process's fds (/proc/<pid>/fd) and RSS, the connections
nginx has accepted on its socket (/proc/net/unix), and the load generator's p50/p99. At the end it
writes ``soak-<stamp>.json`` and ``soak-<stamp>.png`` (or .svg without matplotlib) and checks:

- flat fds and RSS: after the warm-up, the last minute's median is within the tolerance of the
  first minute's (summed over the proxy's processes);
- no timeout, no error outside the kill, no 5xx outside an upstream restart;
- one access-log line per request, matched by request number: no duplicate, no line for a request
  that was not sent, and a missing line only for a request that completed in the killed worker's
  last flush interval (``--log-flush`` + 1 s of slack before the kill).

``--compare-duration`` then measures p99 under the same offered load (``--compare-rate``, small
GETs) for udsproxy and nginx as proxies, each with 2 workers and its access log on.

    python -m benchmarks.soak --duration 600
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.loadgen import read_record
from benchmarks.procs import Proc, children, free_port, tcp_live
from benchmarks.servers import Subject, Subjects, Upstream

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
FILE_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
LINE = re.compile(rb'^\[[^\]]*\] "\S+ \S*[?&]i=(\d+)\S* \S+" (\d+) (\S+) ')


def log(msg: str) -> None:
    print(f"==> {msg}", file=sys.stderr, flush=True)


# --- config files ----------------------------------------------------------------------------


def cds_doc(version: int, sock: str) -> dict[str, Any]:
    # Each version really changes the served cluster (its connect timeout), so a reload
    # rebuilds it rather than finding nothing to do.
    cluster = {
        "@type": CLUSTER_TYPE,
        "name": "upstream",
        "type": "STATIC",
        "connect_timeout": f"{1 + version % 2}s",
        "load_assignment": {
            "cluster_name": "upstream",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": sock}}}}]}],
        },
    }
    return {"version_info": str(version), "resources": [cluster]}


def lds_doc(version: int, port: int, access_log: str) -> dict[str, Any]:
    route = {
        "match": {"prefix": "/"},
        "route": {"cluster": "upstream", "timeout": f"{15 + version % 2}s"},
    }
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": "ingress_http",
        "codec_type": "AUTO",
        "use_remote_address": True,
        "access_log": [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {"@type": FILE_LOG_TYPE, "path": access_log},
            }
        ],
        "route_config": {
            "name": "local_route",
            "virtual_hosts": [{"name": "soak", "domains": ["*"], "routes": [route]}],
        },
        "http_filters": [
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}
        ],
    }
    listener = {
        "@type": LISTENER_TYPE,
        "name": "ingress_http",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }
    return {"version_info": str(version), "resources": [listener]}


def replace(path: Path, doc: dict[str, Any]) -> None:
    """Envoy's recipe: write beside it, then rename over it (one inotify move event)."""
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.replace(tmp, path)


# --- sampling --------------------------------------------------------------------------------


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def socket_fds(pid: int) -> int | None:
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    n = 0
    for name in names:
        with contextlib.suppress(OSError):
            n += os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:")
    return n


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def unix_accepted(path: str) -> int:
    """Connections accepted on the listening socket at ``path`` (state 03, connected)."""
    n = 0
    suffix = " " + path
    with open("/proc/net/unix") as f:
        for line in f:
            if line.rstrip("\n").endswith(suffix) and line.split()[5] == "03":
                n += 1
    return n


class LoadRun:
    """benchmarks.loadgen in its own process (its timing is not disturbed by the sampling)."""

    def __init__(self, port: int, rate: float, duration: float, mix: str, record: Path | None):
        argv = [
            sys.executable,
            "-m",
            "benchmarks.loadgen",
            "--port",
            str(port),
            "--rate",
            str(rate),
        ]
        argv += ["--duration", str(duration), "--mix", mix]
        if record is not None:
            argv += ["--record", str(record)]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.popen = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
        self.seconds: list[dict[str, Any]] = []
        self.final: dict[str, Any] = {}
        self.start_wall = time.time()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            d = json.loads(line)
            if "start_wall" in d:
                self.start_wall = d["start_wall"]
            elif d.get("final"):
                self.final = d
            else:
                self.seconds.append(d)

    def wait(self, timeout: float) -> dict[str, Any]:
        self.popen.wait(timeout)
        self.thread.join(10)
        if self.popen.returncode != 0 or not self.final:
            raise RuntimeError(f"load generator failed (exit {self.popen.returncode})")
        return self.final

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)


# --- the soak --------------------------------------------------------------------------------


def worker_pids(sup: Proc) -> list[int]:
    return sorted(children(sup.pid)) if sup.alive() else []


def wait_for(cond: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    (work / "disk").mkdir()
    upstream = Upstream(work, work / "disk", cpus=None)
    xds = work / "xds"
    xds.mkdir()
    port = free_port()
    access_log = work / "access.log"
    cds, lds = xds / "cds.yaml", xds / "lds.yaml"
    replace(cds, cds_doc(1, upstream.sock_shm))
    replace(lds, lds_doc(1, port, str(access_log)))

    def source(path: Path) -> dict[str, Any]:
        return {
            "resource_api_version": "V3",
            "path_config_source": {"path": str(path), "watched_directory": {"path": str(xds)}},
        }

    bootstrap = work / "bootstrap.yaml"
    bootstrap.write_text(
        yaml.safe_dump(
            {"dynamic_resources": {"cds_config": source(cds), "lds_config": source(lds)}},
            sort_keys=False,
        )
    )
    argv = [sys.executable, "-m", "udsproxy", "-c", str(bootstrap), "-l", "warning"]
    argv += ["--concurrency", str(args.workers)]
    sup = Proc("udsproxy", argv, work, env={"PYTHONUNBUFFERED": "1"})
    events: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    load: LoadRun | None = None
    try:
        upstream.start()
        sup.start(lambda: tcp_live(port), timeout=60)
        if not wait_for(lambda: len(worker_pids(sup)) == args.workers, 30):
            raise RuntimeError(f"udsproxy: not {args.workers} workers:\n{sup.tail()}")
        time.sleep(1.0)  # the second worker binds its SO_REUSEPORT socket
        record = work / "loadgen.rec"
        log(f"soak: {args.duration:.0f} s at {args.rate:.0f} req/s, port {port}, dir {work}")
        load = LoadRun(port, args.rate, args.duration, "soak", record)
        t0 = time.time()
        version = 1
        reloads = 0
        next_reload = args.reload_every / 2
        next_restart = args.restart_every * 2 / 3
        kill_at = args.kill_at if args.kill else None
        if kill_at is None and args.kill:
            kill_at = args.duration / 2
            restarts_at = [args.restart_every * (2 / 3 + k) for k in range(int(args.duration))]
            while any(abs(kill_at - r) < 5 for r in restarts_at):
                kill_at += 5  # apart from an nginx restart, so each shows on its own
        next_sample = 0.0
        while load.popen.poll() is None:
            t = time.time() - t0
            if t >= next_sample:
                samples.append(sample(t, sup, upstream))
                next_sample += 1.0
            if t >= next_reload and t < args.duration - 1:
                reloads += 1
                version += 1
                if reloads % 4 == 0:
                    os.kill(sup.pid, signal.SIGHUP)
                    events.append({"t": round(t, 2), "kind": "sighup"})
                elif reloads % 2 == 1:
                    replace(cds, cds_doc(version, upstream.sock_shm))
                    events.append({"t": round(t, 2), "kind": "cds", "version": version})
                else:
                    replace(lds, lds_doc(version, port, str(access_log)))
                    events.append({"t": round(t, 2), "kind": "lds", "version": version})
                next_reload += args.reload_every
            if t >= next_restart and t < args.duration - args.restart_gap - 1:
                upstream.proc.stop() if upstream.proc else None  # SIGTERM: nginx's fast stop
                time.sleep(args.restart_gap)
                upstream.start()
                events.append(
                    {"t": round(t, 2), "kind": "nginx_restart", "back": round(time.time() - t0, 2)}
                )
                next_restart += args.restart_every
            if kill_at is not None and t >= kill_at:
                victim = worker_pids(sup)[0]
                os.kill(victim, signal.SIGKILL)
                kill_wall = time.time()
                back = wait_for(
                    lambda v=victim: len([p for p in worker_pids(sup) if p != v]) == args.workers,
                    30,
                )
                events.append(
                    {
                        "t": round(kill_wall - t0, 3),
                        "kind": "worker_kill",
                        "pid": victim,
                        "restarted_after_s": round(time.time() - kill_wall, 2) if back else None,
                    }
                )
                kill_at = None
            time.sleep(0.05)
        final = load.wait(60)
        samples.append(sample(time.time() - t0, sup, upstream))
        offset = load.start_wall - t0  # loadgen's t=0 on the soak's clock
        alive_before_stop = sup.alive()
        rc = sup.stop(timeout=30)  # SIGTERM: drains and flushes the access log
        errors_text = sup.stderr_path.read_text(errors="replace")
    finally:
        if load is not None:
            load.stop()
        sup.stop()
        upstream.stop()
    outcome, done_at = read_record(str(record), final["requests"])
    return analyse(
        args,
        samples,
        events,
        load.seconds,
        final,
        offset,
        outcome,
        done_at,
        access_log,
        alive_before_stop,
        rc,
        errors_text,
    )


def sample(t: float, sup: Proc, upstream: Upstream) -> dict[str, Any]:
    workers = worker_pids(sup)
    procs = {"supervisor": sup.pid, **{f"w{i}": pid for i, pid in enumerate(workers)}}
    return {
        "t": round(t, 2),
        "pids": procs,
        "fds": {k: fd_count(p) for k, p in procs.items()},
        "socket_fds": {k: socket_fds(p) for k, p in procs.items()},
        "rss_kib": {k: rss_kib(p) for k, p in procs.items()},
        "upstream_cx": unix_accepted(upstream.sock_shm),
    }


def analyse(
    args: argparse.Namespace,
    samples: list[dict[str, Any]],
    events: list[dict[str, Any]],
    seconds: list[dict[str, Any]],
    final: dict[str, Any],
    offset: float,
    outcome: Any,
    done_at: Any,
    access_log: Path,
    alive: bool,
    rc: int | None,
    stderr: str,
) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    # Open fds follow the connections there are: the load generator keeps every connection it
    # opened in a burst, and the pool follows the load. So a leak is judged on what the
    # connections do not explain: the proxy's sockets minus the client connections (the load
    # generator's count in that second) minus nginx's accepted ones, plus the fds that are not
    # sockets (log files, pipes, epoll).
    conns_at = {s["t"]: s["conns"] for s in seconds}
    for s in samples:
        k = int(s["t"] - offset)
        conns = conns_at.get(k, conns_at.get(k - 1, 0))
        total = sum(v for v in s["fds"].values() if v)
        sockets = sum(v for v in s["socket_fds"].values() if v)
        s["fds_unexplained"] = total - conns - s["upstream_cx"]
        s["fds_not_socket"] = total - sockets
    # -- flat fds and RSS (sum over the proxy's processes) after warm-up
    warm = min(args.warmup, args.duration / 4)
    window = max(5.0, min(60.0, (args.duration - warm) / 4))
    for key in ("fds_unexplained", "rss_kib"):
        series = [
            (s["t"], s[key] if key.startswith("fds_") else sum(v for v in s[key].values() if v))
            for s in samples
        ]
        early = [v for t, v in series if warm <= t < warm + window]
        late = [v for t, v in series if t >= args.duration - window]
        if not early or not late:
            checks[f"{key}_flat"] = {"ok": None, "why": "run too short"}
            continue
        e, lt = statistics.median(early), statistics.median(late)
        tol = max(e * args.tolerance, 8 if key.startswith("fds") else 8192)
        checks[f"{key}_flat"] = {
            "ok": lt - e <= tol,
            "early_median": e,
            "late_median": lt,
            "growth": lt - e,
            "tolerance": tol,
            "max": max(v for _, v in series),
        }
    # -- errors only at the kill, 5xx only at an upstream restart (on the loadgen's clock)
    kill = next((e for e in events if e["kind"] == "worker_kill"), None)
    kill_lg = kill["t"] - offset if kill else None
    restarts = [
        (e["t"] - offset, e["back"] - offset) for e in events if e["kind"] == "nginx_restart"
    ]
    stray_errors = 0
    stray_5xx = 0
    for s in seconds:
        t = s["t"]
        near_kill = kill_lg is not None and kill_lg - 1 <= t <= kill_lg + 2
        near_restart = any(a - 1 <= t <= b + 2 for a, b in restarts)
        if not near_kill:
            stray_errors += s["errors"]
        if not near_restart:
            stray_5xx += sum(n for code, n in s["status"].items() if code.startswith("5"))
    checks["no_timeout"] = {"ok": final["timeouts"] == 0, "timeouts": final["timeouts"]}
    checks["errors_only_at_kill"] = {
        "ok": stray_errors == 0,
        "errors": final["errors"],
        "outside_kill": stray_errors,
    }
    checks["5xx_only_at_restart"] = {"ok": stray_5xx == 0, "outside_restart": stray_5xx}
    checks["proxy_alive"] = {"ok": alive and rc == 0, "exit": rc}
    # -- one access-log line per request
    counts = bytearray(len(outcome))
    lines = bad = 0
    flags: dict[str, int] = {}
    codes: dict[str, int] = {}
    with access_log.open("rb") as f:
        for raw in f:
            lines += 1
            m = LINE.match(raw)
            if m is None:
                bad += 1
                continue
            i = int(m.group(1))
            if i >= len(counts):
                bad += 1
                continue
            counts[i] = min(255, counts[i] + 1)
            codes[m.group(2).decode()] = codes.get(m.group(2).decode(), 0) + 1
            fl = m.group(3).decode()
            flags[fl] = flags.get(fl, 0) + 1
    dup = sum(1 for c in counts if c > 1)
    completed = [i for i in range(len(outcome)) if outcome[i] == 1]
    missing = [i for i in completed if counts[i] == 0]
    # a request the client saw fail may have been logged (the proxy answered, the client had
    # given up) only if it timed out; an error at the kill never reached a live worker's log.
    extra = [i for i in range(len(outcome)) if outcome[i] != 1 and counts[i] > 0]
    # The killed worker's unflushed lines: requests it answered since its last flush, at most
    # --log-flush s before the kill (plus 1 s of slack for the sampling and clocks).
    lo, hi = (kill_lg - args.log_flush - 1.0, kill_lg + 0.1) if kill_lg is not None else (0, -1)
    unexplained = [i for i in missing if not lo <= done_at[i] <= hi]
    lost_window = sum(1 for i in completed if lo <= done_at[i] <= hi)
    checks["one_log_line_per_request"] = {
        "ok": dup == 0 and bad == 0 and not unexplained and not extra,
        "requests_completed": len(completed),
        "log_lines": lines,
        "duplicates": dup,
        "unparsed": bad,
        "missing": len(missing),
        "missing_outside_kill_window": len(unexplained),
        "kill_window_completions": lost_window,
        "logged_but_failed": len(extra),
        "status_in_log": codes,
        "flags_in_log": flags,
    }
    warnings = [ln for ln in stderr.splitlines() if ln.strip()]
    ok = all(c.get("ok") is not False for c in checks.values())
    return {
        "ok": ok,
        "checks": checks,
        "load": final,
        "events": events,
        "samples": samples,
        "seconds": [{**s, "t": round(s["t"] + offset, 2)} for s in seconds],
        "stderr_lines": len(warnings),
        "stderr_tail": warnings[-20:],
    }


# --- p99 under the same offered load ------------------------------------------------------------


def compare(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    cdir = work / "compare"
    cdir.mkdir()
    (cdir / "disk").mkdir()
    upstream = Upstream(cdir, cdir / "disk", cpus=None)
    subjects = Subjects(cdir, upstream, cpus=None, udsproxy_concurrency_flag=True)
    out: dict[str, Any] = {"rate": args.compare_rate, "duration_s": args.compare_duration}
    upstream.start()
    try:
        for name, kind in (("udsproxy", "udsproxy"), ("nginx", "nginx")):
            s = Subject(name=name, label=name, kind=kind, log=True, workers=args.workers)
            subjects.start(s)
            try:
                time.sleep(1.0)
                rate, secs = args.compare_rate, args.compare_duration
                log(f"compare: {name} at {rate:.0f} req/s for {secs:.0f} s")
                run = LoadRun(s.port, args.compare_rate, args.compare_duration, "small", None)
                final = run.wait(args.compare_duration + 120)
                out[name] = final
                log(
                    f"  {name}: p50 {final['p50_ms']} ms, p99 {final['p99_ms']} ms, max "
                    f"{final['max_ms']} ms, {final['achieved_rps']} req/s, errors {final['errors']}"
                )
            finally:
                subjects.stop(s)
    finally:
        upstream.stop()
    if out.get("nginx", {}).get("p99_ms"):
        out["p99_ratio"] = round(out["udsproxy"]["p99_ms"] / out["nginx"]["p99_ms"], 2)
    return out


# --- chart -----------------------------------------------------------------------------------


def chart(result: dict[str, Any], path: Path) -> Path:
    samples, events = result["samples"], result["events"]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        path = path.with_suffix(".svg")
        path.write_text(svg_chart(result))
        return path
    t = [s["t"] for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(10, 9), sharex=True)
    ax = axes[0]
    ax.plot(t, [s["fds"].get("supervisor") for s in samples], label="supervisor")
    ax.plot(
        t,
        [sum(v for k, v in s["fds"].items() if k != "supervisor" and v) for s in samples],
        label="workers (sum)",
    )
    ax.plot(t, [s["fds_unexplained"] for s in samples], label="not explained by connections")
    ax.set_ylabel("open fds")
    ax = axes[1]
    ax.plot(t, [(s["rss_kib"].get("supervisor") or 0) / 1024 for s in samples], label="supervisor")
    for k in ("w0", "w1"):
        ax.plot(
            t,
            [(s["rss_kib"].get(k) or 0) / 1024 or None for s in samples],
            label=f"worker slot {k[1]} (by PID order)",
        )
    ax.set_ylabel("RSS MiB")
    ax = axes[2]
    ax.plot(t, [s["upstream_cx"] for s in samples], label="nginx's accepted connections")
    ax.set_ylabel("upstream cx")
    ax = axes[3]
    sec = result["seconds"]
    ax.plot([s["t"] for s in sec], [s["p50_ms"] for s in sec], label="p50")
    ax.plot([s["t"] for s in sec], [s["p99_ms"] for s in sec], label="p99")
    ax.set_yscale("log")
    ax.set_ylabel("latency ms (per s)")
    ax.set_xlabel("s")
    colors = {
        "cds": "tab:gray",
        "lds": "tab:gray",
        "sighup": "tab:purple",
        "nginx_restart": "tab:orange",
        "worker_kill": "tab:red",
    }
    for ax in axes:
        for e in events:
            ax.axvline(
                e["t"],
                color=colors[e["kind"]],
                lw=0.8,
                ls=":" if e["kind"] in ("cds", "lds") else "--",
            )
        ax.legend(loc="upper left", fontsize=7)
        ax.grid(alpha=0.3)
    load = result["load"]
    axes[0].set_title(
        f"udsproxy soak: {load['offered_rps']:.0f} req/s offered, {load['completed']} requests; "
        "reloads (gray/purple), nginx restarts (orange), worker kill -9 (red)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)
    return path


def svg_chart(result: dict[str, Any]) -> str:
    """Without matplotlib: four polylines, one per panel, by hand."""
    samples = result["samples"]
    series = [
        ("open fds (all processes)", [sum(v for v in s["fds"].values() if v) for s in samples]),
        (
            "RSS MiB (all processes)",
            [sum(v for v in s["rss_kib"].values() if v) / 1024 for s in samples],
        ),
        ("upstream connections", [s["upstream_cx"] for s in samples]),
        ("p99 ms", [s["p99_ms"] or 0 for s in result["seconds"]]),
    ]
    w, h = 800, 140
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h * 4}">']
    for n, (label, ys) in enumerate(series):
        top = n * h
        hi = max(ys) if ys and max(ys) > 0 else 1
        pts = " ".join(
            f"{10 + (w - 20) * i / max(1, len(ys) - 1):.1f},{top + h - 20 - (h - 40) * y / hi:.1f}"
            for i, y in enumerate(ys)
        )
        parts.append(f'<text x="10" y="{top + 14}" font-size="12">{label} (max {hi:.1f})</text>')
        parts.append(f'<polyline fill="none" stroke="black" points="{pts}"/>')
    parts.append("</svg>")
    return "\n".join(parts)


# --- main ------------------------------------------------------------------------------------


def summary(result: dict[str, Any]) -> str:
    samples = result["samples"]
    out = []
    fds = [sum(v for v in s["fds"].values() if v) for s in samples]
    other = [s["fds_not_socket"] for s in samples]
    unexplained = [s["fds_unexplained"] for s in samples]
    out.append(
        f"fds (all processes): start {fds[0]}, end {fds[-1]}, max {max(fds)}; not sockets "
        f"{min(other)}..{max(other)}; not explained by connections {min(unexplained)}.."
        f"{max(unexplained)}"
    )
    for key, unit, div in (("fds", "", 1), ("rss_kib", " MiB", 1024)):
        for proc in ("supervisor", "w0", "w1"):
            vals = [s[key].get(proc) for s in samples if s[key].get(proc)]
            if vals:
                out.append(
                    f"{key} {proc}: start {vals[0] / div:.1f}, end {vals[-1] / div:.1f}, "
                    f"max {max(vals) / div:.1f}{unit}"
                )
    cx = [s["upstream_cx"] for s in samples]
    out.append(f"upstream connections: {min(cx)}..{max(cx)}")
    p99 = [s["p99_ms"] for s in result["seconds"] if s["p99_ms"] is not None]
    if p99:
        out.append(
            f"p99 per second: {min(p99):.2f}..{max(p99):.2f} ms, "
            f"median {statistics.median(p99):.2f}"
        )
    load = result["load"]
    out.append(
        f"requests {load['requests']}, completed {load['completed']}, errors {load['errors']}, "
        f"timeouts {load['timeouts']}, status {load['status']}, overall p99 {load['p99_ms']} ms"
    )
    for name, c in result["checks"].items():
        out.append(
            f"{'PASS' if c.get('ok') else 'FAIL' if c.get('ok') is False else 'n/a '} {name}: "
            + json.dumps({k: v for k, v in c.items() if k != "ok"})
        )
    if "compare" in result:
        c = result["compare"]
        for name in ("udsproxy", "nginx"):
            if name in c:
                f = c[name]
                out.append(
                    f"{name} at {c['rate']:.0f} req/s: p50 {f['p50_ms']} p99 {f['p99_ms']} "
                    f"max {f['max_ms']} ms, {f['achieved_rps']} req/s, errors {f['errors']}"
                )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--duration", type=float, default=600.0, help="s of load (default 600)")
    p.add_argument("--rate", type=float, default=1500.0, help="offered req/s (default 1500)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--reload-every", type=float, default=30.0)
    p.add_argument("--restart-every", type=float, default=90.0)
    p.add_argument("--restart-gap", type=float, default=1.0, help="s nginx stays down")
    p.add_argument("--no-kill", dest="kill", action="store_false", help="no worker kill -9")
    p.add_argument("--kill-at", type=float, help="s (default: half time, off nginx restarts)")
    p.add_argument("--warmup", type=float, default=60.0)
    p.add_argument("--tolerance", type=float, default=0.10, help="allowed growth (fraction)")
    p.add_argument("--log-flush", type=float, default=1.0, help="access-log flush interval, s")
    p.add_argument("--compare-rate", type=float, default=3000.0)
    p.add_argument("--compare-duration", type=float, default=30.0, help="0: skip the p99 runs")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    work = Path(tempfile.mkdtemp(prefix="udsproxy-soak-", dir=shm))
    work.chmod(0o755)  # nginx's workers (nobody, when run as root) read the site in it
    try:
        result = soak(args, work)
        if args.compare_duration > 0:
            result["compare"] = compare(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    result["meta"] = {
        "stamp": stamp,
        "duration_s": args.duration,
        "rate": args.rate,
        "workers": args.workers,
        "reload_every_s": args.reload_every,
        "restart_every_s": args.restart_every,
        "python": sys.version.split()[0],
        "nproc": os.cpu_count(),
    }
    json_path = args.results_dir / f"soak-{stamp}.json"
    json_path.write_text(json.dumps(result, separators=(",", ":")) + "\n")
    chart_path = chart(result, args.results_dir / f"soak-{stamp}.png")
    print(summary(result))
    print(f"results: {json_path} {chart_path}")
    print("PASS" if result["ok"] else "FAIL")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
