"""An upgraded connection (WebSocket) relayed by splice(2) in both directions.

Once the 101 and any early bytes have been written, each direction is a ``Splicer`` with no
byte limit, between the two sockets, while both transports stay paused. Measured on this
path, splice costs what the transport relay costs for WebSocket-sized messages and about half
the CPU from 16 KiB up. An end of stream one way is passed on as a half-close (shutdown), as a
TCP proxy does; when both ways have ended the tunnel is over. An error ends both at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable

from udsproxy.splice import Splicer

__all__ = ["SplicedTunnel"]

_FOREVER = 1 << 62  # a tunnel has no length


class SplicedTunnel:
    __slots__ = (
        "_down_fd",
        "_ended",
        "_inbound",
        "_on_broken",
        "_on_closed",
        "_outbound",
        "_up_fd",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        down_fd: int,
        up_fd: int,
        on_rx: Callable[[int], None],
        on_tx: Callable[[int], None],
        on_closed: Callable[[], None],
        on_broken: Callable[[], None],
    ) -> None:
        self._down_fd = down_fd
        self._up_fd = up_fd
        self._ended = 0
        self._on_closed = on_closed
        self._on_broken = on_broken
        # client -> upstream, and upstream -> client
        self._outbound = Splicer(loop, down_fd, up_fd, _FOREVER, on_rx, _never, self._out_ended)
        self._inbound = Splicer(loop, up_fd, down_fd, _FOREVER, on_tx, _never, self._in_ended)

    def start(self) -> None:
        self._outbound.start()
        self._inbound.start()

    def cancel(self) -> None:
        self._outbound.cancel()
        self._inbound.cancel()

    def _out_ended(self, exc: OSError | None, eof: bool) -> None:
        self._end(exc, self._up_fd)

    def _in_ended(self, exc: OSError | None, eof: bool) -> None:
        self._end(exc, self._down_fd)

    def _end(self, exc: OSError | None, dst_fd: int) -> None:
        if exc is not None:
            self.cancel()
            self._on_broken()
            return
        _shutdown_write(dst_fd)  # pass the FIN on; the other direction may still flow
        self._ended += 1
        if self._ended == 2:
            self._on_closed()


def _never() -> None:
    """A tunnel never reaches its byte count."""


def _shutdown_write(fd: int) -> None:
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.shutdown(socket.SHUT_WR)
        finally:
            sock.close()
