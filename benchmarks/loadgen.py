"""A fixed-rate HTTP/1.1 load generator (open loop), for latency at a given offered load.

wrk keeps a fixed number of connections busy (closed loop), so when the server slows down, wrk
sends less and its latency hides the wait ("coordinated omission"); wrk2 is not packaged here.
This sends request ``i`` at ``start + i / rate`` whatever happened before, and measures each
latency from that intended time, so a stall shows up in full. Requests go out on keep-alive
connections (up to ``--max-conns``; beyond that they queue, and the queueing counts as latency).

Each request carries its number in the query (``?i=N``), so the soak can match access-log lines
to requests one by one. It prints one JSON line per second (completions in that second: count,
p50, p99, max, statuses, errors) and a final line with the totals; with ``--record FILE`` it
also writes, per request, its outcome (0 never finished, 1 response, 2 error, 3 timeout) and its
completion time, for the soak's log check.

    python -m benchmarks.loadgen --port 8080 --rate 3000 --duration 30 --mix small
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from array import array
from collections import deque
from typing import Any

import httptools

# uvloop's loop.time() moves in whole milliseconds: too coarse for latencies.
clock = time.perf_counter

MIXES = ("small", "soak")
POST_BODY = b"p" * 16384


def request_bytes(mix: str, i: int) -> bytes:
    """Request ``i`` of the mix. soak: 70 % small GET, 5 % 1 KiB, 10 % 100 KiB, 10 % 16 KiB POST,
    5 % small GET with ``Connection: close`` (a new connection each)."""
    kind = i % 20 if mix == "soak" else 19
    if kind in (0, 1):
        return b"GET /100k.bin?i=%d HTTP/1.1\r\nHost: soak\r\n\r\n" % i
    if kind in (2, 3):
        return (
            b"POST /post?i=%d HTTP/1.1\r\nHost: soak\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n" % (i, len(POST_BODY))
        ) + POST_BODY
    if kind == 4:
        return b"GET /index.html?i=%d HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n" % i
    if kind == 5:
        return b"GET /1k.bin?i=%d HTTP/1.1\r\nHost: soak\r\n\r\n" % i
    return b"GET /index.html?i=%d HTTP/1.1\r\nHost: soak\r\n\r\n" % i


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Bucket:
    __slots__ = ("done", "errors", "lat", "status", "timeouts")

    def __init__(self) -> None:
        self.done = 0
        self.lat: list[float] = []
        self.status: dict[int, int] = {}
        self.errors = 0
        self.timeouts = 0


class Conn(asyncio.Protocol):
    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.current: tuple[int, float] | None = None  # (request number, intended time)
        self.status = 0
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.ready.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.fail(2)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.current is not None:
            self.fail(2)
        self.gen.lost(self)

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_message_complete(self) -> None:
        current, self.current = self.current, None
        if current is None:
            return
        keep = self.parser.should_keep_alive()
        self.gen.finished(current, self.status, 1)
        if not keep and self.transport is not None:
            self.transport.close()
            return
        self.gen.idle_again(self)

    def send(self, i: int, intended: float, data: bytes) -> None:
        assert self.transport is not None
        self.current = (i, intended)
        self.status = 0
        self.transport.write(data)

    def fail(self, outcome: int) -> None:
        current, self.current = self.current, None
        if current is not None:
            self.gen.finished(current, 0, outcome)
        if self.transport is not None:
            self.transport.abort()


class Generator:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.loop = asyncio.get_running_loop()
        self.total = int(args.rate * args.duration)
        self.outcome = array("b", bytes(self.total))
        self.done_at = array("f", [0.0]) * self.total
        self.idle: list[Conn] = []
        self.busy: set[Conn] = set()
        self.conns = 0  # open or opening
        self.backlog: deque[tuple[int, float]] = deque()
        self.buckets: dict[int, Bucket] = {}
        self.all_lat: list[float] = []
        self.status: dict[int, int] = {}
        self.errors = self.timeouts = self.completed = 0
        self.max_conns_seen = 0
        self.start = 0.0
        self.pending = 0

    def bucket(self, now: float) -> Bucket:
        k = int(now - self.start)
        b = self.buckets.get(k)
        if b is None:
            b = self.buckets[k] = Bucket()
        return b

    def finished(self, current: tuple[int, float], status: int, outcome: int) -> None:
        i, intended = current
        now = clock()
        self.pending -= 1
        b = self.bucket(now)
        self.outcome[i] = outcome
        self.done_at[i] = now - self.start
        if outcome == 1:
            lat = (now - intended) * 1000.0
            b.done += 1
            b.lat.append(lat)
            b.status[status] = b.status.get(status, 0) + 1
            self.all_lat.append(lat)
            self.status[status] = self.status.get(status, 0) + 1
            self.completed += 1
        elif outcome == 3:
            b.timeouts += 1
            self.timeouts += 1
        else:
            b.errors += 1
            self.errors += 1

    def dispatch(self, i: int, intended: float) -> None:
        self.pending += 1
        if self.idle:
            conn = self.idle.pop()
            self.busy.add(conn)
            conn.send(i, intended, request_bytes(self.args.mix, i))
        elif self.conns < self.args.max_conns:
            self.conns += 1
            self.max_conns_seen = max(self.max_conns_seen, self.conns)
            self.loop.create_task(self.open(i, intended))
        else:
            self.backlog.append((i, intended))

    async def open(self, i: int, intended: float) -> None:
        conn = Conn(self)
        try:
            await self.loop.create_connection(lambda: conn, self.args.host, self.args.port)
        except OSError:
            self.conns -= 1
            self.finished((i, intended), 0, 2)
            self.refill()
            return
        self.busy.add(conn)
        conn.send(i, intended, request_bytes(self.args.mix, i))

    def idle_again(self, conn: Conn) -> None:
        if self.backlog:
            i, intended = self.backlog.popleft()
            conn.send(i, intended, request_bytes(self.args.mix, i))
            return
        self.busy.discard(conn)
        self.idle.append(conn)

    def lost(self, conn: Conn) -> None:
        self.conns -= 1
        self.busy.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        self.refill()

    def refill(self) -> None:
        while self.backlog and self.conns < self.args.max_conns:
            i, intended = self.backlog.popleft()
            self.pending -= 1  # dispatch counts it again
            self.dispatch(i, intended)

    def reap_timeouts(self) -> None:
        limit = clock() - self.args.timeout
        for conn in list(self.busy):
            if conn.current is not None and conn.current[1] < limit:
                conn.fail(3)
        while self.backlog and self.backlog[0][1] < limit:
            self.finished(self.backlog.popleft(), 0, 3)

    def emit(self, k: int, out: Any) -> None:
        b = self.buckets.pop(k, None) or Bucket()
        line = {
            "t": k,
            "wall": round(self.start_wall + k, 3),
            "done": b.done,
            "p50_ms": _r(percentile(b.lat, 0.5)),
            "p99_ms": _r(percentile(b.lat, 0.99)),
            "max_ms": _r(max(b.lat) if b.lat else None),
            "status": {str(s): n for s, n in sorted(b.status.items())},
            "errors": b.errors,
            "timeouts": b.timeouts,
            "conns": self.conns,
        }
        print(json.dumps(line), file=out, flush=True)

    async def run(self, out: Any) -> dict[str, Any]:
        rate = self.args.rate
        self.start = clock()
        self.start_wall = time.time()
        print(json.dumps({"start_wall": self.start_wall}), file=out, flush=True)
        issued = 0
        emitted = 0
        next_reap = self.start + 0.5
        while issued < self.total:
            now = clock()
            due = min(self.total, int((now - self.start) * rate) + 1)
            while issued < due:
                self.dispatch(issued, self.start + issued / rate)
                issued += 1
            while emitted < int(now - self.start):
                self.emit(emitted, out)
                emitted += 1
            if now >= next_reap:
                self.reap_timeouts()
                next_reap = now + 0.5
            await asyncio.sleep(max(0.0, self.start + issued / rate - clock()))
        # Let what is in flight finish (or time out).
        while self.pending > 0:
            await asyncio.sleep(0.05)
            now = clock()
            while emitted < int(now - self.start):
                self.emit(emitted, out)
                emitted += 1
            self.reap_timeouts()
        elapsed = clock() - self.start
        for k in sorted(self.buckets):
            self.emit(k, out)
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()
        return {
            "final": True,
            "offered_rps": rate,
            "requests": self.total,
            "completed": self.completed,
            "achieved_rps": round(self.completed / elapsed, 1) if elapsed else None,
            "elapsed_s": round(elapsed, 2),
            "errors": self.errors,
            "timeouts": self.timeouts,
            "status": {str(s): n for s, n in sorted(self.status.items())},
            "p50_ms": _r(percentile(self.all_lat, 0.5)),
            "p90_ms": _r(percentile(self.all_lat, 0.9)),
            "p99_ms": _r(percentile(self.all_lat, 0.99)),
            "p999_ms": _r(percentile(self.all_lat, 0.999)),
            "max_ms": _r(max(self.all_lat) if self.all_lat else None),
            "max_conns": self.max_conns_seen,
        }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    gen = Generator(args)
    final = await gen.run(sys.stdout)
    if args.record:
        with open(args.record, "wb") as f:
            gen.outcome.tofile(f)
            gen.done_at.tofile(f)
    return final


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rate", type=float, default=1000.0, help="requests per second (offered)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of sending")
    p.add_argument("--mix", choices=MIXES, default="small")
    p.add_argument("--max-conns", type=int, default=64)
    p.add_argument("--timeout", type=float, default=10.0, help="s from the intended send time")
    p.add_argument("--record", help="write each request's outcome and completion time here")
    args = p.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    final = asyncio.run(amain(args))
    print(json.dumps(final), flush=True)
    return 0


def read_record(path: str, total: int) -> tuple[array[int], array[float]]:
    outcome, done_at = array("b"), array("f")
    with open(path, "rb") as f:
        outcome.fromfile(f, total)
        done_at.fromfile(f, total)
    return outcome, done_at


if __name__ == "__main__":
    sys.exit(main())
