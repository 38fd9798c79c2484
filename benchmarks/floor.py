"""A floor for the benchmarks: the cheapest honest reverse proxy on uvloop and httptools.

A measuring stick, not a product: what CPU per request a Python proxy costs on udsproxy's two
libraries before any feature (no config, routing, stats, timeouts, limits or header checks).
It does what every proxy in the harness does: parse each request; forward it over a pooled
keep-alive connection to the upstream's Unix socket (idle LIFO list; a new connection when none
is idle) with the client's headers as received, less hop-by-hop ones, plus x-forwarded-for,
x-forwarded-proto and an x-request-id (a uuid4, as Envoy adds); relay the response (Content-Length
or chunked; request bodies too); keep both sides alive; and write one access-log line per request
in about Envoy's default format, batched once per event-loop iteration.
Not supported: pipelining, HEAD, 1xx, responses delimited by the upstream closing.

    python -m benchmarks.floor --listen 127.0.0.1:8080 --upstream /dev/shm/up.sock --log FILE|-
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
import uuid
from typing import cast

import httptools
import uvloop

# Request headers handled apart: hop-by-hop ones dropped, the ones the proxy sets replaced.
_DROP, _TE, _UA, _HOST, _XFF = range(5)
_REQ = {
    b"connection": _DROP, b"keep-alive": _DROP, b"x-request-id": _DROP, b"transfer-encoding": _TE,
    b"user-agent": _UA, b"host": _HOST, b"x-forwarded-for": _XFF,
}  # fmt: skip
_ADDED = b"x-forwarded-for: %s\r\nx-forwarded-proto: http\r\nx-request-id: %s\r\n\r\n"
_RESP_DROP = frozenset((b"connection", b"keep-alive", b"transfer-encoding"))
_LOG = b'[%s.%03dZ] "%s %s HTTP/%s" %d - %d %d %d - "%s" "%s" "%s" "%s" "%s"\n'
_503 = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Floor:
    """The listener's shared state: the upstream pool and the access-log batch."""

    def __init__(self, loop: asyncio.AbstractEventLoop, upstream: str, log_fd: int) -> None:
        self.loop, self.upstream, self.log_fd = loop, upstream, log_fd  # log_fd -1: no log
        self.upstream_b = upstream.encode()
        self.idle: list[Upstream] = []
        self.batch: list[bytes] = []
        self.second, self.stamp = -1, b""

    def log(self, c: Client, u: Upstream) -> None:
        t = c.start
        if int(t) != self.second:  # Envoy's START_TIME, formatted once a second
            self.second = int(t)
            self.stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)).encode()
        if not self.batch:
            self.loop.call_soon(self.flush)
        self.batch.append(
            _LOG % (self.stamp, int(t * 1000) % 1000, c.method, c.url, c.version, u.status, c.rx,
                    u.tx, int((time.time() - t) * 1000), c.xff, c.ua, c.rid, c.host,
                    self.upstream_b)
        )  # fmt: skip

    def flush(self) -> None:
        data = memoryview(b"".join(self.batch))
        self.batch.clear()
        while data:
            data = data[os.write(self.log_fd, data) :]


class Client(asyncio.Protocol):
    """One downstream connection, one request at a time."""

    transport: asyncio.Transport
    # the request in hand, set by the parser's callbacks
    head: bytearray
    url: bytes
    method: bytes
    version: bytes
    ua: bytes
    host: bytes
    xff: bytes
    rid: bytes
    chunked: bool
    keep_alive: bool
    rx: int
    start: float

    def __init__(self, floor: Floor) -> None:
        self.floor = floor
        self.parser = httptools.HttpRequestParser(self)
        self.up: Upstream | None = None
        self.pending: list[bytes] | None = None  # the request while its upstream connects

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.peer = transport.get_extra_info("peername")[0].encode()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.up is not None:  # gone mid-request: that upstream connection cannot be reused
            self.up.close()

    def pause_writing(self) -> None:
        if self.up is not None:
            self.up.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None:
            self.up.transport.resume_reading()

    def on_message_begin(self) -> None:
        self.head = bytearray()
        self.url = b""
        self.ua = self.host = b"-"
        self.xff = b""
        self.chunked = False
        self.rx = 0
        self.start = time.time()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        kind = _REQ.get(name.lower())
        if kind is not None:
            if kind == _DROP:
                return
            if kind == _XFF:  # the peer is appended to it below
                self.xff = value + b", "
                return
            if kind == _UA:
                self.ua = value
            elif kind == _HOST:
                self.host = value
            else:
                self.chunked = b"chunked" in value.lower()
        self.head += b"%s: %s\r\n" % (name, value)

    def on_headers_complete(self) -> None:
        p = self.parser
        self.method, self.version = p.get_method(), p.get_http_version().encode()
        self.keep_alive = p.should_keep_alive()
        self.xff += self.peer
        self.rid = str(uuid.uuid4()).encode()
        self.head[:0] = b"%s %s HTTP/1.1\r\n" % (self.method, self.url)
        self.head += _ADDED % (self.xff, self.rid)
        floor = self.floor
        if floor.idle:
            self.up = floor.idle.pop()
            self.up.client = self
            self.up.transport.write(self.head)
        else:
            self.pending = [bytes(self.head)]
            connect = floor.loop.create_unix_connection(lambda: Upstream(floor), floor.upstream)
            floor.loop.create_task(connect).add_done_callback(self.connected)

    def connected(self, task: asyncio.Task[tuple[asyncio.BaseTransport, Upstream]]) -> None:
        if task.exception() is not None:
            self.transport.write(_503)
            self.transport.close()
            return
        self.up = task.result()[1]
        self.up.client = self
        if self.transport.is_closing():  # the client left while we connected
            self.up.close()
            return
        assert self.pending is not None
        self.up.transport.write(b"".join(self.pending))
        self.pending = None

    def on_body(self, body: bytes) -> None:
        self.rx += len(body)
        data = chunk(body) if self.chunked else body
        if self.pending is not None:
            self.pending.append(data)
        elif self.up is not None:
            self.up.transport.write(data)

    def on_message_complete(self) -> None:
        if self.chunked:
            self.on_body(b"")  # the last chunk


class Upstream(asyncio.Protocol):
    """One pooled connection to the upstream's Unix socket."""

    transport: asyncio.Transport
    # the response in hand, set by the parser's callbacks
    head: bytearray
    reason: bytes
    status: int
    chunked: bool
    keep_alive: bool
    done: bool
    tx: int

    def __init__(self, floor: Floor) -> None:
        self.floor = floor
        self.parser = httptools.HttpResponseParser(self)
        self.client: Client | None = None
        self.out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def close(self) -> None:
        self.client = None
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.floor.idle:
            self.floor.idle.remove(self)
        if self.client is not None:  # mid-response: the client cannot get the rest
            self.client.transport.close()

    def data_received(self, data: bytes) -> None:
        self.done = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()
            return
        c = self.client
        if c is None:
            return
        if self.out:  # one write per read
            c.transport.write(b"".join(self.out))
            self.out.clear()
        if not self.done:
            return
        if self.floor.log_fd >= 0:
            self.floor.log(c, self)
        self.client = c.up = None
        if self.keep_alive:
            self.floor.idle.append(self)
        else:
            self.transport.close()
        if not c.keep_alive:
            c.transport.close()

    def on_message_begin(self) -> None:
        self.reason = b""
        self.head = bytearray()
        self.chunked = False
        self.tx = 0

    def on_status(self, reason: bytes) -> None:
        self.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower not in _RESP_DROP:
            self.head += b"%s: %s\r\n" % (name, value)
        elif lower == b"transfer-encoding":
            self.chunked = b"chunked" in value.lower()

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()  # llhttp forgets it once complete
        te = b"transfer-encoding: chunked\r\n" if self.chunked else b""
        close = b"" if self.client is None or self.client.keep_alive else b"connection: close\r\n"
        self.out.append(
            b"HTTP/1.1 %d %s\r\n%s%s%s\r\n" % (self.status, self.reason, self.head, te, close)
        )

    def on_body(self, body: bytes) -> None:
        self.tx += len(body)
        self.out.append(chunk(body) if self.chunked else body)

    def on_message_complete(self) -> None:
        if self.chunked:
            self.out.append(b"0\r\n\r\n")
        self.done = True


async def serve(listen: str, upstream: str, log: str | None) -> None:
    loop = asyncio.get_running_loop()
    if log is None:
        log_fd = -1
    else:
        log_fd = 1 if log == "-" else os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    floor = Floor(loop, upstream, log_fd)
    host, port = listen.rsplit(":", 1)
    server = await loop.create_server(lambda: Client(floor), host, int(port), backlog=4096)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set_result, None)
    await stop
    server.close()
    if floor.batch:
        floor.flush()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--listen", required=True, metavar="HOST:PORT")
    p.add_argument("--upstream", required=True, metavar="PATH", help="the upstream's Unix socket")
    p.add_argument("--log", metavar="FILE", help="access-log file, - for stdout (default: none)")
    args = p.parse_args(argv)
    uvloop.run(serve(args.listen, args.upstream, args.log))


if __name__ == "__main__":
    main()
