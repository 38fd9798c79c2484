"""A fake transport and loop for driving the protocols without sockets (as uvicorn's tests do)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from udsproxy.config import schema
from udsproxy.http.conn_manager import ListenerContext
from udsproxy.http.downstream import DownstreamConnection
from udsproxy.streaminfo import StreamInfo
from udsproxy.upstream.cluster import Cluster
from udsproxy.upstream.pool import ConnPool


def complete_connect(pool: ConnPool, conn: object) -> None:
    """The connect ``pool`` started (the fake loop collects it, never runs it) gave ``conn``."""
    pool.connecting -= 1
    pool.busy.add(conn)
    if pool.resources is not None:
        pool.resources.rq += 1  # as ConnPool._open: release() counts it out
    pool.release(conn)


class FakeTransport:
    def __init__(self, peer: tuple[str, int] = ("203.0.113.7", 40000)) -> None:
        self.buffer = bytearray()
        self.reading = True
        self.closed = False
        self.aborted = False
        self.eof_sent = False
        self.half_close = False  # True: behave like TCP (write_eof, then the delayed close)
        self.peer = peer

    def write(self, data: bytes | memoryview) -> None:
        assert not self.closed, "write after close"
        self.buffer += data

    def writelines(self, data: list[bytes]) -> None:
        for d in data:
            self.write(d)

    def can_write_eof(self) -> bool:
        return self.half_close

    def write_eof(self) -> None:
        self.eof_sent = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self.peer
        if name == "sockname":
            return ("127.0.0.1", 10000)
        return default

    def take(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


class FakeTimer:
    def __init__(self, when: float, cb: Callable[..., None], args: tuple[Any, ...] = ()) -> None:
        self.when = when
        self.cb = cb
        self.args = args
        self.cancelled = False

    def run(self) -> None:
        self.cb(*self.args)

    def cancel(self) -> None:
        self.cancelled = True


class FakeTask:
    def add_done_callback(self, cb: Callable[[Any], None]) -> None:
        pass

    def cancel(self) -> bool:
        return True


class FakeLoop:
    """Enough of a loop for the protocols: time, timers, and tasks that are collected, not run."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: list[FakeTimer] = []
        self.tasks: list[Coroutine[Any, Any, Any]] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, cb: Callable[..., None], *args: Any) -> FakeTimer:
        return self.call_at(self.now + delay, cb, *args)

    def call_at(self, when: float, cb: Callable[..., None], *args: Any) -> FakeTimer:
        t = FakeTimer(when, cb, args)
        self.timers.append(t)
        return t

    def create_task(self, coro: Coroutine[Any, Any, Any]) -> FakeTask:
        self.tasks.append(coro)
        return FakeTask()

    def run_tasks(self) -> None:
        """Step each collected coroutine once (a connect that fails at once ends there)."""
        tasks, self.tasks = self.tasks, []
        for c in tasks:
            try:
                c.send(None)
            except StopIteration:
                pass
            else:
                self.tasks.append(c)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for t in list(self.timers):
            if not t.cancelled and t.when <= self.now:
                self.timers.remove(t)
                t.run()

    def close(self) -> None:
        for c in self.tasks:
            c.close()


class Recorder:
    def __init__(self) -> None:
        self.infos: list[StreamInfo] = []

    def log(self, info: StreamInfo) -> None:
        self.infos.append(info)

    def log_batch(self, infos: Sequence[StreamInfo]) -> None:
        self.infos.extend(infos)


def make_listener(**hcm: Any) -> schema.Listener:
    routes = hcm.pop("routes", None) or (
        schema.Route(match=schema.RouteMatch(prefix="/"), route=schema.RouteAction(cluster="hugo")),
    )
    return schema.Listener(
        name="l0",
        address=schema.SocketAddress(address="127.0.0.1", port_value=10000),
        http_connection_manager=schema.HttpConnectionManager(
            stat_prefix="ingress_http",
            route_config=schema.RouteConfiguration(
                virtual_hosts=(
                    schema.VirtualHost(name="all", domains=("example.com",), routes=routes),
                    schema.VirtualHost(
                        name="default",
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
            **hcm,
        ),
    )


class Harness:
    """A downstream connection on fake transport/loop, with a cluster whose pool is empty."""

    def __init__(self, **hcm: Any) -> None:
        self.loop = FakeLoop()
        loop: asyncio.AbstractEventLoop = self.loop  # type: ignore[assignment]
        cluster = Cluster(
            schema.Cluster(
                name="hugo", endpoints=(schema.Endpoint(address=schema.Pipe(path="/nonexistent")),)
            ),
            loop,
        )
        self.recorder = Recorder()
        self.ctx = ListenerContext(make_listener(**hcm), {"hugo": cluster}, [self.recorder], loop)
        self.transport = FakeTransport()
        self.conn = DownstreamConnection(self.ctx)
        self.conn.connection_made(self.transport)  # type: ignore[arg-type]

    def feed(self, data: bytes, mode: str = "whole") -> None:
        if mode == "bytes":
            for i in range(len(data)):
                self.conn.data_received(data[i : i + 1])
        else:
            self.conn.data_received(data)
