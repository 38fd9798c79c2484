"""Zero-copy relay of a known number of bytes between two sockets with splice(2) through a pipe.

Used for large Content-Length bodies both ways and for upgraded tunnels: the kernel moves the
pages from one socket into a pipe and from the pipe into the other, and the bytes never enter
Python. The two transports keep their fds; the splicer works on duplicates, with the source
transport's reading paused and the destination transport's write buffer empty, so the byte
order on both sockets is preserved.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
from collections.abc import Callable

__all__ = ["AVAILABLE", "Splicer", "splice_fds"]

AVAILABLE = hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")
_PIPE_SIZE = 1 << 20
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_free_pipes: list[tuple[int, int, int]] = []  # (read fd, write fd, capacity), reused per process
_MAX_FREE_PIPES = 16


def splice_fds(
    src: asyncio.Transport | None, dst: asyncio.Transport | None
) -> tuple[int, int] | None:
    """The two transports' socket fds if splice(2) may take over between them now: both have a
    socket, neither is TLS (the kernel would move ciphertext as plaintext or the reverse), and no
    bytes wait in the destination's write buffer (splice would overtake them)."""
    if src is None or dst is None or dst.get_write_buffer_size():
        return None
    if src.get_extra_info("sslcontext") is not None or dst.get_extra_info("sslcontext") is not None:
        return None  # an upstream TLS cluster (TLS listeners never enable splice at all)
    src_sock = src.get_extra_info("socket")
    dst_sock = dst.get_extra_info("socket")
    if src_sock is None or dst_sock is None:
        return None
    return src_sock.fileno(), dst_sock.fileno()


def _get_pipe() -> tuple[int, int, int]:
    if _free_pipes:
        return _free_pipes.pop()
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        cap = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    except OSError:
        cap = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
    return r, w, cap


def _put_pipe(pipe: tuple[int, int, int], clean: bool) -> None:
    if clean and len(_free_pipes) < _MAX_FREE_PIPES:
        _free_pipes.append(pipe)
    else:
        os.close(pipe[0])
        os.close(pipe[1])


class Splicer:
    """Moves exactly ``count`` bytes from ``src_fd`` to ``dst_fd``, then calls ``on_done``.

    ``on_progress(n)`` reports bytes delivered downstream; ``on_error(exc, eof)`` reports a
    failure (``eof`` when the source closed early). Both fds are duplicated; the originals stay
    owned by their transports.
    """

    __slots__ = (
        "_dst",
        "_eof",
        "_in_pipe",
        "_loop",
        "_pipe",
        "_reading",
        "_src",
        "_to_read",
        "_to_write",
        "_writing",
        "on_done",
        "on_error",
        "on_progress",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        src_fd: int,
        dst_fd: int,
        count: int,
        on_progress: Callable[[int], None],
        on_done: Callable[[], None],
        on_error: Callable[[OSError | None, bool], None],
    ) -> None:
        self._loop = loop
        self._src = os.dup(src_fd)
        self._dst = os.dup(dst_fd)
        self._pipe: tuple[int, int, int] | None = _get_pipe()
        self._to_read = count
        self._to_write = count
        self._in_pipe = 0
        self._eof = False
        self._reading = False
        self._writing = False
        self.on_progress = on_progress
        self.on_done = on_done
        self.on_error = on_error

    def start(self) -> None:
        self._pump()

    def _pump(self) -> None:
        pipe = self._pipe
        if pipe is None:
            return
        r, w, cap = pipe
        try:
            while True:
                moved = False
                if self._to_read and self._in_pipe < cap:
                    try:
                        n = os.splice(
                            self._src, w, min(self._to_read, cap - self._in_pipe), flags=_FLAGS
                        )
                    except BlockingIOError:
                        n = -1
                    if n == 0:
                        if not self._in_pipe:
                            self._fail(None, eof=True)
                            return
                        # the source ended: deliver what is in the pipe, then report it
                        self._eof = True
                        self._to_read = 0
                        self._to_write = self._in_pipe
                        n = -1
                    if n > 0:
                        self._to_read -= n
                        self._in_pipe += n
                        moved = True
                if self._in_pipe:
                    try:
                        n = os.splice(r, self._dst, self._in_pipe, flags=_FLAGS)
                    except BlockingIOError:
                        n = 0
                    if n > 0:
                        self._in_pipe -= n
                        self._to_write -= n
                        self.on_progress(n)
                        moved = True
                if not self._to_write:
                    if self._eof:
                        self._fail(None, eof=True)
                    else:
                        self._finish()
                    return
                if not moved:
                    break
        except OSError as exc:
            self._fail(exc, eof=exc.errno in (errno.ECONNRESET, errno.EPIPE))
            return
        # Wait for whichever side can make progress next.
        want_read = bool(self._to_read) and self._in_pipe < cap
        want_write = self._in_pipe > 0
        self._watch(want_read, want_write)

    def _watch(self, read: bool, write: bool) -> None:
        if read != self._reading:
            if read:
                self._loop.add_reader(self._src, self._pump)
            else:
                self._loop.remove_reader(self._src)
            self._reading = read
        if write != self._writing:
            if write:
                self._loop.add_writer(self._dst, self._pump)
            else:
                self._loop.remove_writer(self._dst)
            self._writing = write

    def _release(self) -> None:
        pipe = self._pipe
        if pipe is None:
            return
        self._watch(False, False)
        self._pipe = None
        _put_pipe(pipe, clean=self._in_pipe == 0)
        os.close(self._src)
        os.close(self._dst)

    def _finish(self) -> None:
        self._release()
        self.on_done()

    def _fail(self, exc: OSError | None, eof: bool) -> None:
        self._release()
        self.on_error(exc, eof)

    def cancel(self) -> None:
        """Stop without calling back (the stream is being torn down anyway)."""
        self._release()

    @property
    def active(self) -> bool:
        return self._pipe is not None
