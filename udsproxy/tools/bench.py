"""``udsproxy bench``: is a Unix socket worth it for my upstream, on this machine?

A short, bounded load from this process (uvloop) against the user's own upstream: over its Unix
socket and, with ``--tcp``, over TCP, each with a pool of keep-alive connections and with a new
connection per request. The four runs are interleaved in rounds, so a noisy machine affects each
one alike, and every result is also given as a ratio to "Unix socket, pooled" in the same round.

    udsproxy bench --socket /dev/shm/hugo.sock --tcp 127.0.0.1:8080

The client runs in this process on one core, so it is part of what is measured: a server that
is much faster than the client makes the ratios smaller than a proxy would see. The client's own
CPU time per request is printed to show how much of the time is its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import httptools

from udsproxy import __version__

__all__ = ["main"]

_MODES = ("pooled", "new")
_MODE_TEXT = {"pooled": "pooled keep-alive", "new": "new connection per request"}


@dataclass(frozen=True)
class Target:
    """Where the upstream listens: a Unix socket path (``@name``: abstract) or a TCP address."""

    kind: str  # "unix" | "tcp"
    text: str  # as given, for the table
    family: int
    sockaddr: Any

    @classmethod
    def unix(cls, path: str) -> Target:
        addr = "\0" + path[1:] if path.startswith("@") else path
        return cls("unix", path, socket.AF_UNIX, addr)

    @classmethod
    def tcp(cls, text: str) -> Target:
        host, sep, port_text = text.rpartition(":")
        if not sep or not port_text.isdigit() or not host:
            raise ValueError(f"--tcp wants HOST:PORT, not {text!r}")
        host = host.strip("[]")
        infos = socket.getaddrinfo(host, int(port_text), type=socket.SOCK_STREAM)
        if not infos:
            raise ValueError(f"cannot resolve {host!r}")
        family, _, _, _, sockaddr = infos[0]
        return cls("tcp", text, family, sockaddr)


@dataclass
class Tally:
    """One scenario in one round."""

    duration: float
    requests: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    connections: int = 0
    body_bytes: int = 0
    cpu: float = 0.0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    @property
    def rps(self) -> float:
        return self.requests / self.duration if self.duration > 0 else 0.0


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Conn(asyncio.Protocol):
    """One client connection: sends the request, parses the response, then goes again (pooled)
    or waits for the server to close (a new connection per request)."""

    def __init__(self, run: _Run, started: float) -> None:
        self.run = run
        self.started = started
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.in_flight = False
        self.body_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.run.live.add(self)
        if self.run.pooled:
            self.started = time.perf_counter()
        self.in_flight = True
        self.transport.write(self.run.request)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.run.tally.error("bad response")
            self.in_flight = False
            self.abort()

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if not 200 <= status < 400:
            self.run.tally.error(f"status {status}")

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)

    def on_message_complete(self) -> None:
        now = time.perf_counter()
        self.in_flight = False
        run = self.run
        if now <= run.deadline:
            run.tally.requests += 1
            run.tally.latencies.append(now - self.started)
            run.tally.body_bytes += self.body_bytes
        self.body_bytes = 0
        transport = self.transport
        if transport is None:
            return
        if not run.pooled:
            if self.parser.should_keep_alive():  # the server ignored "Connection: close"
                transport.close()
            return  # the server closes; connection_lost opens the next one
        if now < run.deadline and self.parser.should_keep_alive():
            self.started = now
            self.in_flight = True
            transport.write(run.request)
        else:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.in_flight and time.perf_counter() <= self.run.deadline:
            self.run.tally.error("connection closed mid-request")
        self.in_flight = False
        self.run.ended(self)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class _Run:
    """``concurrency`` connections against one target in one mode until the deadline."""

    def __init__(
        self,
        target: Target,
        request: bytes,
        pooled: bool,
        concurrency: int,
        duration: float,
        timeout: float,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.target = target
        self.request = request
        self.pooled = pooled
        self.concurrency = concurrency
        self.timeout = timeout
        self.start = time.perf_counter()
        self.deadline = self.start + duration
        self.tally = Tally(duration)
        self.live: set[_Conn] = set()
        self.active = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.finished: asyncio.Future[None] = self.loop.create_future()

    async def go(self) -> Tally:
        cpu0 = time.process_time()
        for _ in range(self.concurrency):
            self.spawn()
        # Requests in flight at the deadline get `timeout` to finish, then everything is cut.
        grace = self.deadline - time.perf_counter() + self.timeout
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.finished), max(0.0, grace))
        for conn in list(self.live):
            if conn.in_flight:
                self.tally.error("timeout")
            conn.abort()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.sleep(0)
        self.tally.cpu = time.process_time() - cpu0
        return self.tally

    def spawn(self) -> None:
        if time.perf_counter() >= self.deadline:
            if self.active == 0 and not self.finished.done():
                self.finished.set_result(None)
            return
        self.active += 1
        task = self.loop.create_task(self._open())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _open(self) -> None:
        started = time.perf_counter()
        sock = socket.socket(self.target.family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if self.target.kind == "tcp":
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.wait_for(self.loop.sock_connect(sock, self.target.sockaddr), self.timeout)
            self.tally.connections += 1
            if self.target.kind == "unix":
                await self.loop.create_unix_connection(lambda: _Conn(self, started), sock=sock)
            else:
                await self.loop.create_connection(lambda: _Conn(self, started), sock=sock)
        except (OSError, TimeoutError) as exc:
            sock.close()
            if time.perf_counter() < self.deadline:
                self.tally.error(f"connect: {exc.strerror or type(exc).__name__}")
            self.active -= 1
            await asyncio.sleep(0.01)  # a refused connect must not spin
            self.spawn()

    def ended(self, conn: _Conn) -> None:
        self.live.discard(conn)
        self.active -= 1
        self.spawn()


def _request(path: str, host: str, close: bool) -> bytes:
    head = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: udsproxy-bench/{__version__}\r\n"
    head += "Accept: */*\r\n"
    if close:
        head += "Connection: close\r\n"
    return (head + "\r\n").encode("latin-1")


async def _probe(target: Target, request: bytes, timeout: float) -> str | None:
    """One request first: a clear error beats a table of failures."""
    run = _Run(target, request, True, 1, 0.0, timeout)
    run.deadline = time.perf_counter() + timeout
    sock = socket.socket(target.family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await asyncio.wait_for(run.loop.sock_connect(sock, target.sockaddr), timeout)
    except (OSError, TimeoutError) as exc:
        sock.close()
        return f"cannot connect to {target.text}: {exc.strerror or type(exc).__name__}"
    done: asyncio.Future[int] = run.loop.create_future()

    class Probe(_Conn):
        def on_message_complete(self) -> None:
            if not done.done():
                done.set_result(self.parser.get_status_code())
            self.abort()

        def connection_lost(self, exc: Exception | None) -> None:
            if not done.done():
                done.set_exception(ConnectionError("closed before a complete response"))

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError as err:
                if not done.done():
                    done.set_exception(err)
                self.abort()

    owned = False  # once a transport has the socket, closing the transport closes it
    try:
        if target.kind == "unix":
            await run.loop.create_unix_connection(lambda: Probe(run, 0.0), sock=sock)
        else:
            await run.loop.create_connection(lambda: Probe(run, 0.0), sock=sock)
        owned = True
        status = await asyncio.wait_for(done, timeout)
    except (OSError, TimeoutError, ConnectionError, httptools.HttpParserError) as exc:
        return f"{target.text}: no valid HTTP/1.1 response ({exc or type(exc).__name__})"
    finally:
        if owned:
            for conn in list(run.live):
                conn.abort()
        else:
            sock.close()
    if not 200 <= status < 400:
        print(f"udsproxy bench: note: {target.text} answers {status}", file=sys.stderr)
    return None


@dataclass
class Scenario:
    target: Target
    mode: str
    tallies: list[Tally] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.target.kind} {self.mode}"


async def _bench(args: argparse.Namespace, targets: list[Target]) -> list[Scenario]:
    scenarios = [Scenario(t, m) for t in targets for m in _MODES]
    pooled_req = _request(args.path, args.host, close=False)
    new_req = _request(args.path, args.host, close=True)
    for t in targets:
        error = await _probe(t, pooled_req, args.timeout)
        if error:
            raise RuntimeError(error)
    slot = args.duration / len(_MODES) / args.rounds
    for s in scenarios:  # warm-up: caches, pools, the server's own warm-up
        req = pooled_req if s.mode == "pooled" else new_req
        await _Run(s.target, req, s.mode == "pooled", args.concurrency, 0.2, args.timeout).go()
    for rnd in range(args.rounds):
        order = scenarios[rnd % len(scenarios) :] + scenarios[: rnd % len(scenarios)]
        for s in order:
            req = pooled_req if s.mode == "pooled" else new_req
            run = _Run(s.target, req, s.mode == "pooled", args.concurrency, slot, args.timeout)
            s.tallies.append(await run.go())
    return scenarios


def _summary(scenarios: list[Scenario], args: argparse.Namespace) -> dict[str, Any]:
    base = scenarios[0]  # unix, pooled
    out: dict[str, Any] = {
        "path": args.path,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "seconds_per_run": args.duration / len(_MODES) / args.rounds,
        "scenarios": [],
    }
    for s in scenarios:
        rps = [t.rps for t in s.tallies]
        p50s = [_percentile(t.latencies, 0.5) for t in s.tallies]
        base_p50s = [_percentile(t.latencies, 0.5) for t in base.tallies]
        ratios = [t.rps / b.rps for t, b in zip(s.tallies, base.tallies, strict=True) if b.rps > 0]
        p50_ratios = [a / b for a, b in zip(p50s, base_p50s, strict=True) if a is not None and b]
        latencies = [x for t in s.tallies for x in t.latencies]
        p50, p99 = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
        requests = sum(t.requests for t in s.tallies)
        errors: dict[str, int] = {}
        for t in s.tallies:
            for k, v in t.errors.items():
                errors[k] = errors.get(k, 0) + v
        out["scenarios"].append(
            {
                "transport": s.target.kind,
                "address": s.target.text,
                "mode": s.mode,
                "requests": requests,
                "rps_median": statistics.median(rps) if rps else 0.0,
                "rps_min": min(rps, default=0.0),
                "rps_max": max(rps, default=0.0),
                "p50_ms": None if p50 is None else p50 * 1000,
                "p99_ms": None if p99 is None else p99 * 1000,
                "ratio_rps": statistics.median(ratios) if ratios else None,
                "ratio_p50": statistics.median(p50_ratios) if p50_ratios else None,
                "connections": sum(t.connections for t in s.tallies),
                "client_cpu_us_per_request": (
                    sum(t.cpu for t in s.tallies) * 1e6 / requests if requests else None
                ),
                "bytes_per_response": (
                    sum(t.body_bytes for t in s.tallies) / requests if requests else None
                ),
                "errors": errors,
            }
        )
    return out


def _render(summary: dict[str, Any], targets: list[Target]) -> str:
    rows = [
        (
            "transport",
            "connections",
            "req/s [min-max]",
            "p50 ms",
            "p99 ms",
            "vs unix pooled",
            "client µs/req",
            "errors",
        )
    ]
    for s in summary["scenarios"]:
        ratio = s["ratio_rps"]
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(s["errors"].items())) or "0"
        rows.append(
            (
                f"{s['transport']} {s['address']}",
                _MODE_TEXT[s["mode"]],
                f"{s['rps_median']:.0f} [{s['rps_min']:.0f}-{s['rps_max']:.0f}]",
                "-" if s["p50_ms"] is None else f"{s['p50_ms']:.3f}",
                "-" if s["p99_ms"] is None else f"{s['p99_ms']:.3f}",
                "-" if ratio is None else f"{ratio:.2f}x",
                "-"
                if s["client_cpu_us_per_request"] is None
                else f"{s['client_cpu_us_per_request']:.1f}",
                errors,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        f"udsproxy bench: GET {summary['path']}, {summary['concurrency']} connections, "
        f"{summary['rounds']} interleaved rounds of {summary['seconds_per_run']:.1f} s per run",
        "",
    ]
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.extend(_verdict(summary, targets))
    return "\n".join(lines)


def _verdict(summary: dict[str, Any], targets: list[Target]) -> list[str]:
    by = {(s["transport"], s["mode"]): s for s in summary["scenarios"]}
    out = []
    total_errors = sum(sum(s["errors"].values()) for s in summary["scenarios"])
    if total_errors:
        out.append(f"Errors: {total_errors} (see the table); the ratios may not mean much.")
    tcp = by.get(("tcp", "pooled"))
    if tcp and tcp["ratio_rps"]:
        r = tcp["ratio_rps"]
        if abs(r - 1) < 0.05:
            out.append(
                f"Pooled: TCP loopback ran at {r:.2f}x the Unix-socket rate, within noise: "
                "here UDS buys no throughput."
            )
        elif r < 1:
            out.append(
                f"Pooled: the Unix socket served {1 / r:.2f}x the TCP rate "
                f"({(1 / r - 1) * 100:.0f}% more requests per second): UDS is worth it here."
            )
        else:
            out.append(f"Pooled: TCP loopback was faster than the Unix socket ({r:.2f}x).")
    tcp_new = by.get(("tcp", "new"))
    if tcp_new and tcp_new["ratio_rps"] and tcp and tcp["ratio_rps"]:
        ratio = tcp_new["ratio_rps"] / by[("unix", "new")]["ratio_rps"]
        out.append(
            f"New connection per request: TCP at {ratio:.2f}x the Unix-socket rate "
            "(connection setup is where the two differ most)."
        )
    new = by.get(("unix", "new"))
    if new and new["ratio_rps"]:
        out.append(
            f"Pooling: a new Unix-socket connection per request runs at {new['ratio_rps']:.2f}x "
            "the pooled rate: keep the upstream pool on."
            if new["ratio_rps"] < 0.95
            else f"Pooling: a new connection per request runs at {new['ratio_rps']:.2f}x the "
            "pooled rate."
        )
    pooled = by.get(("unix", "pooled"))
    if pooled and pooled["client_cpu_us_per_request"] and pooled["rps_median"]:
        busy = pooled["client_cpu_us_per_request"] * pooled["rps_median"] / 1e6
        if busy > 0.8:
            out.append(
                f"The client used {busy * 100:.0f}% of a core: it, not the server, set the pace, "
                "so the server-side difference is larger than these ratios."
            )
    if len(targets) == 1:
        out.append("Give --tcp HOST:PORT (the same server over TCP) to compare with TCP loopback.")
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="udsproxy bench",
        description="Is a Unix socket worth it here? A bounded load against your upstream over "
        "its Unix socket and over TCP, pooled and with a new connection per request.",
    )
    p.add_argument("--socket", required=True, help="the upstream's Unix socket (@name: abstract)")
    p.add_argument("--tcp", metavar="HOST:PORT", help="the same upstream over TCP, to compare")
    p.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="seconds of load per transport, shared by the pooled and new-connection runs "
        "(default 10: about 25 s in all with --tcp)",
    )
    p.add_argument("--concurrency", type=int, default=32, help="connections (default 32)")
    p.add_argument("--path", default="/", help="the path to GET (default /)")
    p.add_argument("--host", default="localhost", help="the Host header (default localhost)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--timeout", type=float, default=5.0, help="connect/request timeout, s")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    return p


def main(argv: list[str] | None) -> int:
    if argv is None:
        argv = sys.argv[1:]
        if argv[:1] == ["bench"]:
            argv = argv[1:]
    args = _parser().parse_args(argv)
    if args.duration <= 0 or args.concurrency < 1 or args.rounds < 1 or args.timeout <= 0:
        print("udsproxy bench: --duration, --concurrency, --rounds, --timeout must be > 0")
        return 2
    if not args.path.startswith("/"):
        args.path = "/" + args.path
    try:
        targets = [Target.unix(args.socket)]
        if args.tcp:
            targets.append(Target.tcp(args.tcp))
    except (ValueError, OSError) as exc:
        print(f"udsproxy bench: {exc}", file=sys.stderr)
        return 2
    if not args.socket.startswith("@") and not os.path.exists(args.socket):
        print(f"udsproxy bench: no socket at {args.socket}", file=sys.stderr)
        return 1
    import uvloop

    try:
        scenarios = uvloop.run(_bench(args, targets))
    except RuntimeError as exc:
        print(f"udsproxy bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    summary = _summary(scenarios, args)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(_render(summary, targets))
    return 0
