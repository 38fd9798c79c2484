"""``python -m benchmarks``: udsproxy side by side with nginx, HAProxy and Caddy.

One upstream nginx (one worker) serves files on a Unix socket in /dev/shm; every proxy under test
forwards to it; wrk loads each proxy over 127.0.0.1. The proxy under test runs on CPU 0, wrk and
the upstream on CPU 1 (taskset). Each workload runs over interleaved rounds (every proxy once per
round, in a rotating order) and every proxy is reported as a ratio to nginx-with-its-log-on
measured in the same round, because on a noisy machine only same-run ratios mean much.

    python -m benchmarks                       # everything (about 25 minutes)
    python -m benchmarks --quick               # smoke: small GET, 1 round of 1 s
    python -m benchmarks --proxies udsproxy,nginx --workloads small,get1m --duration 3
    python -m benchmarks --list                # proxies, workloads, experiments
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import importlib.util
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks import procs, tools
from benchmarks.report import EXPERIMENTS, REFERENCE, Report, X, write_json
from benchmarks.servers import Subject, Subjects, Upstream, udsproxy_has_concurrency, which
from benchmarks.workloads import DEFAULT_WORKLOADS, WORKLOADS, Sample, run_idle, run_wrk

RESULTS = Path(__file__).resolve().parent / "results"


def catalog(workers: int) -> dict[str, Subject]:
    """Every subject the harness knows. The first group is the main comparison."""
    subjects = [
        Subject("udsproxy", "udsproxy (log on)", "udsproxy", log=True),
        Subject("udsproxy-nolog", "udsproxy (log off)", "udsproxy"),
        Subject("nginx", "nginx (log on)", "nginx", log=True),
        Subject("nginx-nolog", "nginx (log off)", "nginx"),
        Subject("haproxy", "HAProxy", "haproxy"),
        Subject("caddy", "Caddy", "caddy"),
        Subject("direct", "direct (no proxy)", "direct"),
        # The floor: the plainest Python proxy on uvloop + httptools (benchmarks/floor.py)
        Subject("pyfloor", "Python floor (log on)", "pyfloor", log=True),
        # Experiments (log off, one thing changed)
        Subject("udsproxy-tcp", "udsproxy, TCP upstream", "udsproxy", transport="tcp"),
        Subject("nginx-tcp", "nginx, TCP upstream", "nginx", transport="tcp"),
        Subject("udsproxy-disk", "udsproxy, socket on disk", "udsproxy", transport="uds-disk"),
        Subject("nginx-disk", "nginx, socket on disk", "nginx", transport="uds-disk"),
        Subject("udsproxy-nopool", "udsproxy, no upstream pool", "udsproxy", pool=False),
        Subject("nginx-nopool", "nginx, no upstream keepalive", "nginx", pool=False),
        Subject("udsproxy-splice0", "udsproxy, splice off", "udsproxy", splice_min=0),
        Subject("udsproxy-splice64k", "udsproxy, splice ≥ 64 KiB", "udsproxy", splice_min=65536),
        Subject(
            "udsproxy-splice-resp",
            "udsproxy, responses spliced too",
            "udsproxy",
            splice_responses=True,
        ),
        Subject("udsproxy-nostats", "udsproxy, request stats off", "udsproxy", stats=False),
        # Issue 11's price: a retry policy, circuit breakers and outlier detection configured
        Subject(
            "udsproxy-governed",
            "udsproxy, retries + breakers + outlier detection (log on)",
            "udsproxy",
            log=True,
            governed=True,
        ),
        # What the tuning buys (not run by default)
        Subject("nginx-stock", "nginx, stock buffers (log on)", "nginx", log=True, variant="stock"),
        Subject("haproxy-splice", "HAProxy, option splice-auto", "haproxy", variant="splice"),
    ]
    if workers > 1:
        subjects += [
            Subject(
                f"udsproxy-{workers}w",
                f"udsproxy {X}{workers} (log on)",
                "udsproxy",
                log=True,
                workers=workers,
            ),
            Subject(
                f"nginx-{workers}w",
                f"nginx {X}{workers} (log on)",
                "nginx",
                log=True,
                workers=workers,
            ),
        ]
    return {s.name: s for s in subjects}


MAIN = ("udsproxy", "udsproxy-nolog", "nginx", "nginx-nolog", "haproxy", "caddy", "direct")


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="udsproxy vs nginx, HAProxy and Caddy on the same Unix-socket upstream.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run with --list for the proxies, workloads and experiments.",
    )
    p.add_argument("--proxies", type=_csv, default=None, help=f"default: {','.join(MAIN)}")
    p.add_argument(
        "--workloads", type=_csv, default=None, help=f"default: {','.join(DEFAULT_WORKLOADS)}"
    )
    p.add_argument(
        "--experiments",
        type=_csv,
        default=None,
        help=f"default: all ({','.join(EXPERIMENTS)}); 'none' for none",
    )
    p.add_argument("--duration", type=int, default=None, help="seconds per run (default 5)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="seconds of the warm-up pass over every run before round 1 (default 1)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: small GET only, 1 round of 1 s, no warm-up, no experiments, "
        "results not copied to latest",
    )
    p.add_argument("--idle-conns", type=int, default=1000)
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="also run udsproxy and nginx with N workers (needs udsproxy "
        "--concurrency; use --proxy-cpus with as many CPUs)",
    )
    p.add_argument("--proxy-cpus", default="0", help="taskset CPU list of the proxy (default 0)")
    p.add_argument(
        "--load-cpus",
        default="1",
        help="taskset CPU list of wrk, the upstream and the harness (default 1)",
    )
    p.add_argument("--no-pin", action="store_true", help="no taskset")
    p.add_argument(
        "--results-dir",
        type=Path,
        default=None,
        help="default: benchmarks/results (--quick: benchmarks/results/quick, not committed)",
    )
    p.add_argument("--no-latest", action="store_true", help="do not update results/latest.*")
    p.add_argument("--no-chart", action="store_true")
    p.add_argument("--no-setup", action="store_true", help="no apt-get / pip install")
    p.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    p.add_argument(
        "--udsproxy-src",
        type=Path,
        default=None,
        help="measure the udsproxy package in this directory (e.g. an exported commit: "
        "git archive HEAD udsproxy | tar -x -C DIR) instead of the installed one",
    )
    p.add_argument("--note", default="", help="a line for the report (e.g. 'machine shared')")
    p.add_argument("--list", action="store_true", help="list proxies, workloads, experiments")
    p.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="only rebuild the .md and .png of an earlier run from its .json",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.duration = 1 if args.duration is None else args.duration
        args.rounds = 1 if args.rounds is None else args.rounds
        args.warmup = 0 if args.warmup is None else args.warmup
        args.workloads = args.workloads or ["small"]
        args.experiments = args.experiments or ["none"]
        args.no_latest = True
        args.results_dir = args.results_dir or RESULTS / "quick"
    args.results_dir = args.results_dir or RESULTS
    if args.udsproxy_src is not None:
        args.udsproxy_src = args.udsproxy_src.resolve()
        if not (args.udsproxy_src / "udsproxy" / "__init__.py").is_file():
            p.error(f"--udsproxy-src: no udsproxy package in {args.udsproxy_src}")
    args.duration = 5 if args.duration is None else args.duration
    args.rounds = 3 if args.rounds is None else args.rounds
    args.warmup = 1 if args.warmup is None else args.warmup
    args.workloads = args.workloads or list(DEFAULT_WORKLOADS)
    if args.experiments is None:
        args.experiments = list(EXPERIMENTS)
    elif args.experiments == ["none"]:
        args.experiments = []
    if args.duration < 1 or args.rounds < 1 or args.warmup < 0:
        p.error("--duration and --rounds must be >= 1 (wrk takes whole seconds)")
    for w in args.workloads:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r} (known: {', '.join(WORKLOADS)})")
    for e in args.experiments:
        if e not in EXPERIMENTS:
            p.error(f"unknown experiment {e!r} (known: {', '.join(EXPERIMENTS)})")
    known = catalog(args.workers)
    args.proxies = args.proxies or [*MAIN, *(n for n in known if n.endswith(f"-{args.workers}w"))]
    for s in args.proxies:
        if s not in known:
            p.error(f"unknown proxy {s!r} (known: {', '.join(known)})")
    return args


class Interrupted(BaseException):  # not swallowed by "except Exception"
    pass


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def plan(args: argparse.Namespace, known: dict[str, Subject]) -> dict[str, list[str]]:
    """workload -> subjects to run in it (main selection first, then experiment subjects)."""
    out: dict[str, list[str]] = {}
    for w in args.workloads:
        wl = WORKLOADS[w]
        names = [s for s in args.proxies if not (wl.idle and known[s].kind == "direct")]
        if not wl.idle:
            for e in args.experiments:
                exp = EXPERIMENTS[e]
                if w in exp.workloads:
                    for base, variant in exp.pairs:
                        names += [n for n in (base, variant) if n not in names]
        out[w] = names
    return out


def check_subject(s: Subject, files: dict[str, bytes]) -> int:
    """Every file byte for byte and both POST sizes, through the proxy. Returns requests made."""
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=15)
    n = 0
    try:
        for path, data in files.items():
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read()
            n += 1
            if r.status != 200 or body != data:
                raise RuntimeError(f"GET {path}: {r.status}, {len(body)} bytes of {len(data)}")
        for size in (16384, 1 << 20):
            conn.request("POST", "/post", body=b"x" * size)
            r = conn.getresponse()
            body = r.read()
            n += 1
            if r.status != 200 or body != b"ok\n":
                raise RuntimeError(f"POST {size} bytes: {r.status} {body[:60]!r}")
    finally:
        conn.close()
    return n


def count_lines(path: Path) -> int:
    n = 0
    with contextlib.suppress(FileNotFoundError), path.open("rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
    return n


class LogAccount:
    """Access-log lines vs requests the clients completed, per logging subject.

    A file is counted and truncated only when its proxy has been idle for longer than its flush
    interval (1 s for both udsproxy and nginx's buffer=64k flush=1s), so no line is in flight.
    """

    def __init__(self) -> None:
        self.lines: dict[str, int] = {}
        self.requests: dict[str, int] = {}
        self.slack: dict[str, int] = {}  # requests in flight when a client stopped
        self.last_end: dict[str, float] = {}

    def add(self, s: Subject, requests: int, in_flight: int) -> None:
        if s.log_path is None:
            return
        self.requests[s.name] = self.requests.get(s.name, 0) + requests
        self.slack[s.name] = self.slack.get(s.name, 0) + in_flight
        self.last_end[s.name] = time.monotonic()

    def collect(self, s: Subject, force: bool = False) -> None:
        if s.log_path is None:
            return
        if not force and time.monotonic() - self.last_end.get(s.name, 0) < 1.5:
            return
        self.lines[s.name] = self.lines.get(s.name, 0) + count_lines(s.log_path)
        with contextlib.suppress(FileNotFoundError):
            os.truncate(s.log_path, 0)

    def notes(self, labels: dict[str, str]) -> list[str]:
        out = []
        for name, req in self.requests.items():
            lines = self.lines.get(name, 0)
            slack = self.slack.get(name, 0)
            ok = req <= lines <= req + slack
            verdict = "ok" if ok else "MISMATCH"
            out.append(
                f"access log of {labels.get(name, name)}: {lines} lines for {req} requests the "
                f"clients completed (up to {slack} more may have been in flight at the ends of "
                f"runs): {verdict}"
            )
        return out


# Expected start-up warnings (Caddy: the admin API and automatic HTTPS are off on purpose).
_BENIGN = ("admin endpoint disabled", "automatic https is completely disabled")
# A client that went away mid-response: wrk closes its connections when a run ends.
_CLIENT_GONE = ("broken pipe", "connection reset by peer", "prematurely closed")


def stderr_notes(s: Subject) -> list[str]:
    """Warnings, errors and tracebacks a subject wrote on stderr (and nginx in error.log)."""
    if s.proc is None:
        return []
    lines: list[str] = []
    with contextlib.suppress(OSError):
        for line in s.proc.stderr_path.read_text(errors="replace").splitlines():
            low = line.lower()
            if any(k in low for k in _BENIGN):
                continue
            if any(k in low for k in ("error", "warn", "traceback", "exception", "crit", "alert")):
                lines.append(line.strip())
    if s.kind == "nginx":
        with contextlib.suppress(OSError):
            text = (s.proc.workdir / "error.log").read_text(errors="replace")
            lines += [
                ln.strip()
                for ln in text.splitlines()
                if "[notice]" not in ln and "[info]" not in ln
            ]
    gone = [ln for ln in lines if any(k in ln.lower() for k in _CLIENT_GONE)]
    bad = [ln for ln in lines if ln not in gone]
    out = []
    if bad:
        shown = "; ".join(bad[:5])
        out.append(f"{s.label} wrote {len(bad)} warning/error line(s): {shown[:600]}")
    if gone:
        out.append(
            f"{s.label} logged {len(gone)} client(s) gone mid-response (wrk closes its "
            f"connections when a run ends), e.g. {gone[0][:200]}"
        )
    return out


def render(path: Path) -> int:
    """Rebuild an earlier run's markdown and chart from its JSON (same name, .md and .png)."""
    import dataclasses

    data = json.loads(path.read_text())
    fields = {f.name for f in dataclasses.fields(Sample)}
    samples = [Sample(**{k: v for k, v in d.items() if k in fields}) for d in data["samples"]]
    opts = data["meta"]["options"]
    ran = {s.subject for s in samples}
    report = Report(
        samples,
        opts["workloads"],
        [n for n in opts["proxies"] if n in ran],
        data["subjects"],
        opts["experiments"],
        data["meta"],
        data["notes"],
    )
    path.with_suffix(".md").write_text(report.markdown() + "\n")
    written = [path.with_suffix(".md")]
    if importlib.util.find_spec("matplotlib") is not None:
        report.chart(path.with_suffix(".png"))
        written.append(path.with_suffix(".png"))
    tools.log("wrote " + ", ".join(str(p) for p in written))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render(args.render)
    known = catalog(args.workers)
    if args.list:
        print("proxies:")
        for s in known.values():
            print(f"  {s.name:20} {s.label}{'  (default)' if s.name in MAIN else ''}")
        print("workloads:")
        for wl in WORKLOADS.values():
            default = "  (default)" if wl.name in DEFAULT_WORKLOADS else ""
            print(f"  {wl.name:20} {wl.title}{default}")
        print("experiments:")
        for e in EXPERIMENTS.values():
            pairs = ", ".join(f"{v} vs {b}" for b, v in e.pairs)
            print(f"  {e.name:20} {e.title}: {pairs} on {','.join(e.workloads)}")
        return 0

    work_plan = plan(args, known)
    used = sorted({n for names in work_plan.values() for n in names})
    kinds = {known[n].kind for n in used}
    if not args.no_setup:
        tools.ensure_tools({"nginx", "wrk"} | (kinds & {"haproxy", "caddy"}))
    tools.raise_nofile()
    for tool in ("nginx", "wrk"):
        if which(tool) is None:
            print(f"error: {tool} is not installed (apt-get install {tool})", file=sys.stderr)
            return 2
    if args.no_chart:
        chart = False
    elif args.no_setup:
        chart = importlib.util.find_spec("matplotlib") is not None
    else:
        chart = tools.ensure_matplotlib()

    notes: list[str] = []
    for n in used:
        kind = known[n].kind
        if kind in ("haproxy", "caddy") and which(kind) is None:
            notes.append(f"{known[n].label}: {kind} is not installed, not run")
            for w in work_plan:
                work_plan[w] = [x for x in work_plan[w] if x != n]
    used = sorted({n for names in work_plan.values() for n in names})

    ncpu = os.cpu_count() or 1
    if args.no_pin or ncpu < 2:
        proxy_cpus = load_cpus = None
        pinning = "none" + (" (one CPU)" if ncpu < 2 else "")
    else:
        proxy_cpus, load_cpus = args.proxy_cpus, args.load_cpus
        pinning = (
            f"proxy under test on CPU {proxy_cpus}, wrk, the upstream nginx and the harness on "
            f"CPU {load_cpus} (taskset -c; checked in /proc/<pid>/status Cpus_allowed_list)"
        )
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {int(c) for c in load_cpus.split(",")})

    signal.signal(signal.SIGTERM, _on_signal)
    started = dt.datetime.now().astimezone()
    stamp = started.strftime("%Y%m%d-%H%M%S")
    shm = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path(tempfile.gettempdir())
    workdir = Path(tempfile.mkdtemp(prefix="udsbench-", dir=shm))
    diskdir = Path(tempfile.mkdtemp(prefix="udsbench-", dir="/var/tmp"))
    for d in (workdir, diskdir):
        d.chmod(0o755)  # nginx workers run as nobody: they read the site and reach the sockets
    upstream = Upstream(workdir, diskdir, load_cpus)
    subjects = Subjects(
        workdir,
        upstream,
        proxy_cpus,
        udsproxy_concurrency_flag="udsproxy" in kinds
        and udsproxy_has_concurrency(src=args.udsproxy_src),
        udsproxy_src=args.udsproxy_src,
    )
    if args.workers > 1 and not subjects.concurrency_flag:
        notes.append(f"udsproxy has no --concurrency yet: the {X}{args.workers} runs are skipped")
        for w in work_plan:
            work_plan[w] = [x for x in work_plan[w] if x != f"udsproxy-{args.workers}w"]
    samples: list[Sample] = []
    logs = LogAccount()
    labels = {n: s.label for n, s in known.items()}
    cells = sum(len(v) for v in work_plan.values())
    est = cells * (args.rounds * (args.duration + 0.4) + (args.warmup + 0.3 if args.warmup else 0))
    tools.log(
        f"{cells} runs per round x {args.rounds} rounds, {args.duration} s each: "
        f"about {est / 60:.0f} min; work dir {workdir}"
    )
    t0 = time.monotonic()
    complete = False
    meta: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "machine": tools.machine(),
        "versions": tools.versions(args.udsproxy_src),
        "pinning": pinning,
        "options": {
            "duration": args.duration,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "workloads": args.workloads,
            "proxies": args.proxies,
            "experiments": args.experiments,
            "idle_conns": args.idle_conns,
            "workers": args.workers,
        },
        "note": args.note,
    }
    if args.udsproxy_src is not None:
        meta["machine"]["git"] = f"{meta['machine']['git']} (udsproxy from {args.udsproxy_src})"
    running: list[Subject] = []
    try:
        upstream.start()
        meta["upstream"] = {
            "socket": upstream.sock_shm,
            "socket_disk": upstream.sock_disk,
            "tcp": f"127.0.0.1:{upstream.port}",
            "cpus_allowed": procs.cpus_allowed(upstream.pids()[0]),
            "config": (upstream.workdir / "nginx.conf").read_text(),
        }
        meta["commands"] = {}
        for name in used:
            s = known[name]
            try:
                subjects.start(s)
                running.append(s)
                checked = check_subject(s, upstream.files)
                logs.add(s, checked, 0)
            except Exception as exc:  # a proxy that cannot start or serve is reported, not run
                notes.append(f"{s.label} failed to start or to serve the files: {exc}")
                tools.warn(notes[-1])
                subjects.stop(s)
                if s in running:
                    running.remove(s)
                for w in work_plan:
                    work_plan[w] = [x for x in work_plan[w] if x != name]
                continue
            meta["commands"][name] = {
                "argv": s.argv,
                "cpus_allowed": procs.cpus_allowed(s.pids()[0]) if s.pids() else "-",
                # the work directory goes away: keep the rendered config itself
                "config": s.config_path.read_text() if s.config_path else None,
            }
        if args.warmup:
            tools.log(f"warm-up pass ({args.warmup} s per run)")
            for w, names in work_plan.items():
                wl = WORKLOADS[w]
                if wl.idle:
                    continue
                for name in names:
                    s = known[name]
                    smp = run_wrk(s, upstream, wl, 0, args.warmup, load_cpus)
                    logs.add(s, smp.requests, wl.connections)
                    if smp.error_count() or not smp.ok:
                        notes.append(
                            f"warm-up: {s.label} on {w}: errors {smp.errors} "
                            f"{smp.failure or ''}".strip()
                        )
        for rnd in range(1, args.rounds + 1):
            for w, names in work_plan.items():
                wl = WORKLOADS[w]
                k = (rnd - 1) % max(1, len(names))
                order = names[k:] + names[:k]  # rotate: no proxy always runs first
                for name in order:
                    s = known[name]
                    if s.proc is not None and not s.proc.alive():
                        # A crash under load is a result: report it, then carry on.
                        rc = s.proc.popen.returncode if s.proc.popen else None
                        notes.append(
                            f"{s.label} EXITED (code {rc}) before round {rnd} of {w}:\n"
                            f"{s.proc.tail(8)}"
                        )
                        tools.warn(notes[-1])
                        subjects.restart(s)
                    logs.collect(s)
                    if wl.idle:
                        wl_run = WORKLOADS[w]
                        if args.idle_conns != wl_run.connections:
                            from dataclasses import replace

                            wl_run = replace(wl_run, connections=args.idle_conns)
                        smp = run_idle(s, subjects, wl_run, rnd, load_cpus)
                        logs.add(s, smp.requests, 0)
                    else:
                        smp = run_wrk(s, upstream, wl, rnd, args.duration, load_cpus)
                        logs.add(s, smp.requests, wl.connections)
                    samples.append(smp)
                    _progress(smp, args.rounds, s.label)
                    time.sleep(0.2)
        complete = True
    except (KeyboardInterrupt, Interrupted) as exc:
        tools.warn(f"interrupted ({exc or 'SIGINT'}): reporting what was measured")
        notes.append("the run was interrupted: partial results")
    finally:
        for s in running:
            notes.extend(stderr_notes(s))
            subjects.stop(s)
            logs.collect(s, force=True)
        upstream.stop()
        if args.keep:
            tools.log(f"kept {workdir} and {diskdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            shutil.rmtree(diskdir, ignore_errors=True)

    notes[:0] = logs.notes(labels)
    for smp in samples:
        if smp.error_count() or not smp.ok:
            what = smp.failure or ", ".join(f"{k} {v}" for k, v in smp.errors.items())
            notes.append(f"round {smp.round}, {smp.workload}, {labels[smp.subject]}: {what}")
    meta["elapsed_s"] = round(time.monotonic() - t0, 1)
    meta["complete"] = complete
    main_subjects = [n for n in args.proxies if any(n in v for v in work_plan.values())]
    report = Report(samples, args.workloads, main_subjects, labels, args.experiments, meta, notes)
    md = report.markdown()
    print(md)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    base = args.results_dir / stamp
    base.with_suffix(".md").write_text(md + "\n")
    write_json(base.with_suffix(".json"), report.to_json())
    outputs = [base.with_suffix(".md"), base.with_suffix(".json")]
    if chart and samples:
        try:
            report.chart(base.with_suffix(".png"))
            outputs.append(base.with_suffix(".png"))
        except Exception as exc:
            tools.warn(f"chart failed: {exc}")
    if not args.no_latest and complete:
        for out in outputs:
            shutil.copyfile(out, args.results_dir / f"latest{out.suffix}")
    tools.log("wrote " + ", ".join(str(o) for o in outputs))
    if REFERENCE not in main_subjects:
        tools.warn(f"{REFERENCE} was not run: no ratios")
    return 0 if complete else 130


def _progress(s: Sample, rounds: int, label: str) -> None:
    if not s.ok:
        line = f"FAILED: {s.failure}"
    elif WORKLOADS[s.workload].idle:
        line = (
            f"RSS {s.rss_before_mib or 0:.1f} -> {s.rss_idle_mib or 0:.1f} MiB "
            f"({s.kib_per_conn or 0:.1f} KiB/conn)"
        )
    else:
        cpu = f"{s.cpu_us_per_req:.1f} us/req" if s.cpu_us_per_req else "-"
        if s.cpu_us_per_req and s.sys_us_per_req is not None:
            cpu += f" ({s.sys_us_per_req:.1f} sys)"
        line = f"{s.rps:9.0f} req/s  p50 {s.p50_ms or 0:.2f} p99 {s.p99_ms or 0:.2f} ms  cpu {cpu}"
    err = f"  errors {s.errors}" if s.errors else ""
    print(
        f"[{s.round}/{rounds}] {s.workload:9} {label:28} {line}{err}", file=sys.stderr, flush=True
    )
