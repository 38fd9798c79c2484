"""The hot path's Python cost per request, without sockets or syscalls.

A downstream connection and a pooled upstream connection run on in-memory transports: each
iteration feeds one keep-alive GET (wrk's, or a browser's with 16 headers), lets the proxy write
the upstream request, feeds nginx's 612-byte response, and collects what the client would get.
No kernel and no socket I/O; the event loop runs one iteration per request, so the work the
proxy defers to it (the access log's batch, the writes held to the iteration's end) happens as in
production; with one request per iteration the held writes' flush is paid by every request here,
where under load one flush serves several. What is left is the Python
the proxy runs per request, so a change to the hot path shows up here as a stable number, and
cProfile shows where it goes.

    python -m benchmarks.micro                    # µs per request, log on and off
    python -m benchmarks.micro --profile          # cProfile's top functions, log on
    python -m benchmarks.micro --browser -n 50000

Instructions per request, repeatably: run it under callgrind twice with different -n, one mode
at a time, and divide the difference by the difference in -n:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python -m benchmarks.micro \
        --log on --repeat 1 -n 2000      # and again with -n 6000

Not a test and not a benchmark of the whole proxy: the harness (python -m benchmarks) is that.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import tempfile
import time
from typing import Any

import uvloop

from udsproxy.accesslog.sink import SinkRegistry, build_access_loggers
from udsproxy.config import schema
from udsproxy.http.conn_manager import ListenerContext
from udsproxy.http.downstream import DownstreamConnection
from udsproxy.stats.store import StatsStore
from udsproxy.upstream.cluster import Cluster
from udsproxy.upstream.connection import UpstreamConnection

__all__ = ["main"]

WRK_GET = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:10000\r\n\r\n"
BROWSER_GET = (
    b"GET /posts/unix-domain-sockets/ HTTP/1.1\r\n"
    b"Host: blog.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Referer: https://blog.example.com/\r\n"
    b"Connection: keep-alive\r\n"
    b"Cookie: _ga=GA1.1.123456789.1700000000; theme=dark; session=4f2a9c1e8b7d6a5f\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"Sec-Fetch-Dest: document\r\n"
    b"Sec-Fetch-Mode: navigate\r\n"
    b"Sec-Fetch-Site: same-origin\r\n"
    b"Sec-Fetch-User: ?1\r\n"
    b"Priority: u=0, i\r\n"
    b"If-Modified-Since: Mon, 30 Nov 2026 10:00:00 GMT\r\n"
    b"Cache-Control: max-age=0\r\n\r\n"
)
NGINX_200 = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 01 Dec 2026 21:00:00 GMT\r\n"
    b"Content-Type: text/html\r\nContent-Length: 612\r\n"
    b"Last-Modified: Tue, 01 Dec 2026 20:00:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "6567a1b0-264"\r\nAccept-Ranges: bytes\r\n\r\n' + b"x" * 612
)


class _Transport:
    """Collects writes; everything the protocols call on a transport, doing nothing else."""

    def __init__(self) -> None:
        self.out: list[Any] = []

    def write(self, data: Any) -> None:
        self.out.append(data)

    def writelines(self, data: Any) -> None:
        self.out.extend(data)

    def is_closing(self) -> bool:
        return False

    def is_reading(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 10000)}.get(
            name, default
        )

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        raise AssertionError("the proxy closed a keep-alive connection")

    abort = close


def _listener(access_log: tuple[schema.AccessLog, ...]) -> schema.Listener:
    return schema.Listener(
        name="ingress",
        address=schema.SocketAddress(address="127.0.0.1", port_value=10000),
        http_connection_manager=schema.HttpConnectionManager(
            stat_prefix="ingress_http",
            use_remote_address=True,
            access_log=access_log,
            route_config=schema.RouteConfiguration(
                virtual_hosts=(
                    schema.VirtualHost(
                        name="all",
                        domains=("*",),
                        routes=(
                            schema.Route(
                                match=schema.RouteMatch(prefix="/"),
                                route=schema.RouteAction(cluster="hugo"),
                            ),
                        ),
                    ),
                )
            ),
        ),
    )


class Rig:
    """One client connection and one pooled upstream connection, wired as in the proxy."""

    def __init__(self, loop: asyncio.AbstractEventLoop, log_path: str | None) -> None:
        self.store = StatsStore()
        self.registry = SinkRegistry()
        logs = (schema.AccessLog(path=log_path),) if log_path else ()
        listener = _listener(logs)
        cluster = Cluster(
            schema.Cluster(
                name="hugo",
                endpoints=(schema.Endpoint(address=schema.Pipe(path="/dev/shm/hugo.sock")),),
            ),
            loop,
            self.store.cluster_for("hugo"),
        )
        loggers = build_access_loggers(logs, self.registry)
        self.ctx = ListenerContext(
            listener, {"hugo": cluster}, loggers, loop, stats=self.store, batched=True
        )
        self.host = cluster.hosts[0]
        self.up = UpstreamConnection(self.host)
        self.up_t = _Transport()
        self.up.connection_made(self.up_t)  # type: ignore[arg-type]
        self.host.pool.busy.add(self.up)
        self.host.pool.release(self.up)
        self.down = DownstreamConnection(self.ctx)
        self.down_t = _Transport()
        self.down.connection_made(self.down_t)  # type: ignore[arg-type]

    def one(self, request: bytes) -> None:
        self.down.data_received(request)
        self.up_t.out.clear()
        self.up.data_received(NGINX_200)
        self.down_t.out.clear()

    async def check(self, request: bytes) -> None:
        # on the loop, as production runs: a write may wait for the iteration's end
        self.down.data_received(request)
        await asyncio.sleep(0)
        sent = b"".join(bytes(x) for x in self.up_t.out)
        assert sent.startswith(request.split(b" ", 1)[0]), sent
        self.up_t.out.clear()
        self.up.data_received(NGINX_200)
        await asyncio.sleep(0)
        got = b"".join(bytes(x) for x in self.down_t.out)
        assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(b"x" * 612), got[:200]
        self.down_t.out.clear()

    def close(self) -> None:
        self.ctx.flush()
        self.registry.close_all()


def _run(n: int, request: bytes, log: bool, profile: bool) -> float:
    loop = uvloop.new_event_loop()  # loop.time() costs what it costs in the proxy
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as d:
        rig = Rig(loop, os.path.join(d, "access.log") if log else None)
        try:
            one = rig.one

            async def warm() -> None:
                await rig.check(request)
                for _ in range(min(n, 2000)):  # warm caches and the allocator
                    one(request)
                    await asyncio.sleep(0)

            loop.run_until_complete(warm())

            async def drive() -> None:
                # One request per event-loop iteration, as production runs them: what the
                # proxy defers to the loop (call_soon: the access log's batch) runs here too,
                # and nothing piles up that production would not keep.
                for _ in range(n):
                    one(request)
                    await asyncio.sleep(0)

            prof = cProfile.Profile() if profile else None
            if prof is not None:
                prof.enable()
            t0 = time.process_time()
            loop.run_until_complete(drive())
            elapsed = time.process_time() - t0
            if prof is not None:
                prof.disable()
                pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        finally:
            rig.close()
            loop.close()
    return elapsed / n * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.micro", description=__doc__)
    ap.add_argument("-n", type=int, default=100_000, help="requests per measurement")
    ap.add_argument("--browser", action="store_true", help="a browser's request (16 headers)")
    ap.add_argument("--profile", action="store_true", help="cProfile the log-on run")
    ap.add_argument("--repeat", type=int, default=3, help="measurements per mode; the best counts")
    ap.add_argument(
        "--log",
        choices=("both", "on", "off"),
        default="both",
        help="measure with the access log on, off, or both (callgrind: one mode a run)",
    )
    args = ap.parse_args(argv)
    request = BROWSER_GET if args.browser else WRK_GET
    if args.profile:
        _run(args.n, request, log=True, profile=True)
        return 0
    for log in {"both": (True, False), "on": (True,), "off": (False,)}[args.log]:
        best = min(_run(args.n, request, log, False) for _ in range(args.repeat))
        print(f"access log {'on ' if log else 'off'}: {best:6.2f} µs of Python per request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
