"""The embedding API: start a proxy from a config on the running loop, report where it listens,
stop it gracefully.

    server = await Server.start("proxy.yaml")     # or a dict, YAML text, or a Bootstrap
    host, port = server.address()                  # port_value: 0 binds an ephemeral port
    await server.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import socket
import sys
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from udsproxy.accesslog.sink import SinkRegistry, build_access_loggers
from udsproxy.config import schema
from udsproxy.config.load import load_config
from udsproxy.context import ListenerContext
from udsproxy.downstream import DownstreamConnection
from udsproxy.upstream import Cluster

__all__ = ["Server"]

log = logging.getLogger("udsproxy.server")

_BACKLOG = 1024
# Below this a body is relayed through Python (memoryview, no copies of our own); above it
# splice(2) moves it kernel-side. The benchmark issue measures where the crossover is.
DEFAULT_SPLICE_MIN_BYTES = 256 * 1024
ConfigSource = schema.Bootstrap | Mapping[str, Any] | str | os.PathLike[str]


class Server:
    def __init__(
        self,
        bootstrap: schema.Bootstrap,
        loop: asyncio.AbstractEventLoop,
        splice_min_bytes: int = DEFAULT_SPLICE_MIN_BYTES,
    ) -> None:
        self.bootstrap = bootstrap
        self.splice_min_bytes = splice_min_bytes
        self.loop = loop
        self.sinks = SinkRegistry()
        self.clusters = {c.name: Cluster(c, loop) for c in bootstrap.clusters}
        self.contexts: list[ListenerContext] = []
        self.addresses: dict[str, tuple[str, int] | str] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._stopped = asyncio.Event()
        self._stopping = False

    @classmethod
    async def start(
        cls,
        config: ConfigSource,
        *,
        announce: bool = False,
        splice_min_bytes: int = DEFAULT_SPLICE_MIN_BYTES,
    ) -> Server:
        """Build and bind everything; raises ConfigError or OSError before serving anything.

        ``splice_min_bytes=0`` keeps every body on the Python relay path.
        """
        bootstrap = config if isinstance(config, schema.Bootstrap) else load_config(config)
        server = cls(bootstrap, asyncio.get_running_loop(), splice_min_bytes)
        try:
            for listener in bootstrap.listeners:
                await server._start_listener(listener, announce)
        except BaseException:
            await server.stop(timeout=0)
            raise
        return server

    async def _start_listener(self, listener: schema.Listener, announce: bool) -> None:
        loggers = build_access_loggers(listener.http_connection_manager.access_log, self.sinks)
        ctx = ListenerContext(listener, self.clusters, loggers, self.loop, self.splice_min_bytes)
        factory = functools.partial(DownstreamConnection, ctx)
        address = listener.address
        bound: tuple[str, int] | str
        if isinstance(address, schema.SocketAddress):
            srv = await self.loop.create_server(
                factory,
                address.address,
                address.port_value,
                reuse_address=True,
                backlog=_BACKLOG,
            )
            name = srv.sockets[0].getsockname()
            bound = (name[0], name[1])
            text = str(schema.SocketAddress(address=name[0], port_value=name[1]))
        else:
            sock = _bind_unix(address)
            srv = await self.loop.create_unix_server(factory, sock=sock, backlog=_BACKLOG)
            bound = text = address.path
        self.contexts.append(ctx)
        self._servers.append(srv)
        self.addresses[listener.name] = bound
        if announce:
            print(f"udsproxy: listener '{listener.name}' listening on {text}", file=sys.stderr)
            sys.stderr.flush()

    def address(self, listener: str | None = None) -> tuple[str, int]:
        """The bound TCP address of the named (or first) listener."""
        name = listener if listener is not None else next(iter(self.addresses))
        bound = self.addresses[name]
        if isinstance(bound, str):
            raise ValueError(f"listener '{name}' is a pipe: {bound}")
        return bound

    async def serve_forever(self) -> None:
        await self._stopped.wait()

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let requests in flight finish (up to ``timeout``), then close all."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        for srv in self._servers:
            srv.close()
        for ctx in self.contexts:
            ctx.draining = True
            for conn in list(ctx.connections):
                if conn.active is None and not conn.queue and conn.tunnel is None:
                    conn.close()
        deadline = self.loop.time() + timeout
        while self.loop.time() < deadline and any(ctx.connections for ctx in self.contexts):
            await asyncio.sleep(0.02)
        for ctx in self.contexts:
            for conn in list(ctx.connections):
                conn.abort()
        for cluster in self.clusters.values():
            cluster.close()
        await asyncio.sleep(0)  # let transports run connection_lost
        for ctx in self.contexts:
            if isinstance(ctx.listener_address, schema.Pipe) and not ctx.listener_address.abstract:
                _unlink_quietly(ctx.listener_address.path)
        self.sinks.close_all()
        self._stopped.set()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _bind_unix(address: schema.Pipe) -> socket.socket:
    """Bind a pipe listener; a stale socket file (nobody listening) is replaced."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if not address.abstract and os.path.exists(address.path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(address.path)
            except ConnectionRefusedError:
                _unlink_quietly(address.path)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
            else:
                raise OSError(errno.EADDRINUSE, f"{address.path} is in use by another process")
            finally:
                probe.close()
        sock.bind(address.sockaddr)
        if address.mode and not address.abstract:
            os.chmod(address.path, address.mode)  # after bind, before listen (Envoy #11809)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
