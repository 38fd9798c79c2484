"""Envoy's file access logger: the request path appends to memory.

Envoy buffers file logs and writes them from a flush thread every ``--file-flush-interval-msec``
or once 64 KiB are pending. ``FileSink`` does the same with one daemon writer thread per file, so
a full stdout pipe never stalls the event loop. Unlike Envoy (envoyproxy/envoy#9458) memory is
bounded: past ``max_buffer_bytes`` lines are dropped and counted.

One difference, measured: a regular file's 64 KiB batch is written by the thread that fills it
(the event loop), as a page-cache write takes microseconds. Handing each batch to the writer
thread cost far more: the thread needs the GIL back after every wake-up and every write, the loop
releases and retakes the GIL several times per iteration, and each release wakes the waiting
thread, which often loses the race and sleeps again (a futex wake and two context switches each):
from 7 to over 300 context switches per 64 KiB batch, depending on how idle the other core is, and
a request in benchmarks.micro cost 10-40 µs more than with no thread. A few writes in a row slower
than ``_SLOW_WRITE`` (a slow disk, not one preemption) hand the file back to the writer thread for
good. A pipe (``/dev/stdout`` in a container) gets the same through its own non-blocking open file
description (``/proc/self/fd/N``; O_NONBLOCK on N itself would change it for every process sharing
the pipe), in whole lines of at most PIPE_BUF. What a full pipe refuses stays first in the queue,
and the caller tries again after an eighth of a batch. While the caller writes, the thread only
adds what the pipe takes at once on the interval: on a busy loop it gets the GIL back only every
switch interval (5 ms) after each 4 KiB write, and when it wrote pipes for the loop, it fell ever
further behind (benchmarks.micro, FIFO read by cat: 7.6-7.9 MB queued after 52,000 requests).
Once the caller has been idle for an interval, the thread waits for the reader as for any file.
Sockets, terminals, and pipes when ``/proc`` is missing always go through the thread; it also
writes every file on the interval and reopens it.

``reopen`` (SIGUSR1, admin ``POST /reopen_logs``) opens the path again after logrotate renamed
the file: lines queued before it go to the old file, later ones to the new; none is dropped.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import stat
import threading
import time
import weakref
from collections.abc import Iterable, Sequence

from udsproxy.accesslog.formatter import Formatter, compile_access_log
from udsproxy.config import schema
from udsproxy.streaminfo import StreamInfo

__all__ = ["AccessLogger", "FileSink", "SinkRegistry", "build_access_loggers"]

_log = logging.getLogger("udsproxy.accesslog")

_STD_FDS = {"/dev/stdout": 1, "/dev/stderr": 2}
_PIPE_BUF = select.PIPE_BUF  # writes up to this size are atomic on a pipe
# A page-cache write of 64 KiB takes ~20 µs; _SLOW_WRITES batches in a row written on the event
# loop that took over _SLOW_WRITE seconds each send the file to the writer thread.
_SLOW_WRITE = 0.01
_SLOW_WRITES = 3
# A pipe holds 64 KiB by default: a try at a backlog copies this much of it, not all of it.
_PIPE_TAKE = 256 * 1024
# Lost lines are reported at most this often: a full disk fails every batch, and a warning per
# batch (about 40 a second under load) would bury everything else on stderr.
_WARN_INTERVAL = 10.0
_clock = time.monotonic


# Every live sink, so that a forked child can drop the parent's buffer, locks and thread.
_sinks: weakref.WeakSet[FileSink] = weakref.WeakSet()


class FileSink:
    """One log file (or ``/dev/stdout``/``/dev/stderr``) and its writer thread.

    ``write`` never blocks on I/O. The writer thread starts with the first line, so a process that
    builds sinks and then forks workers has no thread to lose; each worker starts its own.
    """

    def __init__(
        self,
        path: str,
        *,
        flush_interval: float = 1.0,
        flush_bytes: int = 64 * 1024,
        max_buffer_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        if flush_interval <= 0 or flush_bytes <= 0 or max_buffer_bytes <= 0:
            raise ValueError("flush_interval, flush_bytes and max_buffer_bytes must be > 0")
        self.path = path
        self._interval = flush_interval
        self._flush_bytes = flush_bytes
        self._max = max_buffer_bytes
        self._owns_fd = path not in _STD_FDS
        self._fd = (
            os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            if self._owns_fd
            else _STD_FDS[path]
        )
        mode = os.fstat(self._fd).st_mode
        # Several worker processes may share a pipe: keep each write() whole lines <= PIPE_BUF.
        self._pipe = stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)
        self._fifo = stat.S_ISFIFO(mode)
        self._nbfd: int | None = None  # a pipe's non-blocking description, for the caller
        # a full batch of a regular file (or a pipe, see _open_nonblocking) is written by the
        # caller (see module doc)
        self.direct = stat.S_ISREG(mode)
        self._slow = 0  # slow direct writes in a row
        self.written_lines = 0
        self.write_batches = 0
        self.dropped_lines = 0
        self.dropped_bytes = 0
        self.write_errors = 0
        self.reopen_failures = 0
        self.flushed_by_timer = 0
        self.closed = False
        self._warned_lines = 0  # dropped_lines already reported in a warning
        self._warn_after = 0.0  # _clock() before which no other warning is written
        self._last_error = ""  # the latest write error not yet reported
        self._reset()
        _sinks.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()  # guards the buffer and the counters
        self._io_lock = threading.Lock()  # one batch at a time, in order
        self._wake = threading.Event()
        self._lines: collections.deque[bytes] = collections.deque()
        self._nlines = 0  # lines in _lines (an entry may hold several)
        self._queued = 0  # bytes queued since the last write
        self._pending = 0  # bytes queued or being written: what max_buffer_bytes bounds
        self._kicked = False
        self._flush_at = self._flush_bytes  # _queued that starts a write
        self._loop_wrote = False  # the caller tried to write since the writer thread last did
        self._reopen = False  # the writer thread reopens the path after its current batch
        self._thread: threading.Thread | None = None
        # A forked child opens its own: the inherited number is the parent's to swap and close.
        self._open_nonblocking()

    def _open_nonblocking(self) -> None:
        """A pipe's own non-blocking open file description, through which the caller writes
        without ever blocking. None (the writer thread writes everything) for anything but a
        pipe (a socket's /proc link cannot be opened, a terminal may block), without /proc, or
        once closed. Closes the previous one. Called with ``_io_lock`` held, or alone."""
        old, self._nbfd = self._nbfd, None
        if self._fifo:
            if not self.closed:
                flags = os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC
                with contextlib.suppress(OSError):
                    self._nbfd = os.open(f"/proc/self/fd/{self._fd}", flags)
            self.direct = self._nbfd is not None
        if old is not None:
            with contextlib.suppress(OSError):
                os.close(old)

    def write(self, text: bytes, lines: int = 1) -> None:
        """Queue ``lines`` whole lines (each with its newline). Drops them, counted, if the
        buffer is full."""
        n = len(text)
        direct = False
        lock = self._lock
        lock.acquire()  # not "with": the context manager costs twice as much here
        try:
            pending = self._pending + n
            if pending > self._max or self.closed:
                self.dropped_lines += lines
                self.dropped_bytes += n
                return
            self._lines.append(text)
            self._nlines += lines
            self._pending = pending
            self._queued += n
            if self._queued >= self._flush_at and not self._kicked:
                if self.direct and not self._reopen:
                    direct = True
                else:
                    self._kicked = True
                    self._wake.set()
            if self._thread is None:
                self._start()
        finally:
            lock.release()
        if direct:
            self._write_here()

    def _write_here(self) -> None:
        """Write the queued batch in the calling thread, unless the writer thread is busy
        with the file (then it is asked to take these lines too; a pipe is tried again at the
        next write instead)."""
        self._loop_wrote = True
        busy = not self._io_lock.acquire(False)
        if not busy and self._fifo and self._nbfd is None:  # a reopen lost it: never block here
            self._io_lock.release()
            busy = True
        if busy:
            if self._nbfd is not None:  # the thread takes what the pipe takes; try next write
                return
            with self._lock:
                self._kicked = True
            self._wake.set()
            return
        try:
            start = _clock()
            self._drain_locked(reopen=False, nbfd=self._nbfd)
            if _clock() - start <= _SLOW_WRITE:
                self._slow = 0
            else:
                self._slow += 1
                if self._slow >= _SLOW_WRITES:
                    self.direct = False
                    _log.warning(
                        "access log %s: %d writes in a row took over %d ms; the writer thread"
                        " writes it from now on",
                        self.path,
                        _SLOW_WRITES,
                        _SLOW_WRITE * 1000,
                    )
        finally:
            self._io_lock.release()

    def _start(self) -> None:
        name = f"udsproxy-accesslog {self.path}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def flush(self) -> None:
        """Write everything queued so far, in the calling thread (tests, shutdown)."""
        self._drain()

    def reopen(self) -> None:
        """Open the path again (logrotate moved the file away). ``/dev/stdout`` and
        ``/dev/stderr`` are kept. Lines queued so far are written to the old file first.

        The writer thread does it, so a slow disk never stalls the caller (the event loop);
        before the first line there is no thread and the reopen happens here."""
        if not self._owns_fd:
            return
        with self._lock:
            if self.closed:
                return
            self._reopen = True
            thread = self._thread
            if thread is not None:
                self._kicked = True
                self._wake.set()
        if thread is None:
            self._drain()

    def close(self) -> None:
        """Flush, stop the writer thread and close the file. Idempotent."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join(timeout=10.0)
            if thread.is_alive():  # stuck on a pipe nobody reads; the daemon dies with us
                _log.warning("access log writer for %s did not stop; not closing it", self.path)
                return
        self._drain()
        with self._io_lock:
            self._open_nonblocking()  # closed: only closes the pipe's non-blocking description
        if self._owns_fd:
            os.close(self._fd)

    def _run(self) -> None:
        while not self.closed:
            self._wake.wait(self._interval)
            self._wake.clear()
            # A pipe that the caller writes is written here only as far as it takes lines now;
            # once the caller is idle this thread waits for the reader, as for any file.
            busy, self._loop_wrote = self._loop_wrote, False
            batches = self.write_batches
            self._drain(nonblocking=busy)
            if self.write_batches != batches:
                self.flushed_by_timer += 1

    def _drain(self, *, nonblocking: bool = False) -> None:
        with self._io_lock:
            self._drain_locked(reopen=True, nbfd=self._nbfd if nonblocking else None)

    def _drain_locked(self, *, reopen: bool, nbfd: int | None = None) -> None:
        """Write the queue; to ``nbfd`` (a pipe's non-blocking description) if given."""
        with self._lock:
            lines = self._lines
            nlines = -1  # a backlog's head: its lines are counted by newline
            if nbfd is not None and self._pending > _PIPE_TAKE:
                lines = collections.deque()
                size = 0
                while size < _PIPE_TAKE and self._lines:
                    lines.append(self._lines.popleft())
                    size += len(lines[-1])
            else:
                self._lines = collections.deque()
                nlines, self._nlines = self._nlines, 0
            self._queued, self._kicked = 0, False
        if lines:
            self._write_batch(lines, nlines, nbfd)
        if reopen and self._reopen:
            self._reopen_fd()
        if self.dropped_lines != self._warned_lines:  # (read without the lock: a hint)
            self._warn_lost()

    def _warn_lost(self) -> None:
        """One warning per ``_WARN_INTERVAL`` with the lines lost since the last one, whether a
        write failed or the buffer was full. The writer thread comes here on every interval, so
        lines lost after a warning are reported within ``_WARN_INTERVAL`` + the flush interval,
        also once the disk has room again. Called with ``_io_lock`` held."""
        now = _clock()
        if now < self._warn_after:
            return
        with self._lock:
            lost = self.dropped_lines - self._warned_lines
            self._warned_lines = self.dropped_lines
        if lost <= 0:
            return
        self._warn_after = now + _WARN_INTERVAL
        why, self._last_error = self._last_error, ""
        _log.warning(
            "access log %s: %d lines lost since the last warning (%s); at most one warning"
            " every %g s, filesystem.write_dropped counts them all",
            self.path,
            lost,
            why or f"the buffer of {self._max} bytes was full",
            _WARN_INTERVAL,
        )

    def _write_batch(
        self, lines: collections.deque[bytes], nlines: int, nbfd: int | None = None
    ) -> None:
        ok = False
        data = b"".join(lines)
        nbytes, done = len(data), 0
        more = nlines < 0  # lines wait behind these
        if more:
            with self._lock:  # write() only adds to _nlines
                nlines = min(self._nlines, data.count(b"\n"))
                self._nlines -= nlines
        try:
            done = self._write_all(data, nbfd)
            ok = True
        except OSError as e:
            self._last_error = f"write failed: {e}"  # reported by _warn_lost, rate-limited
        rest = data[done:] if ok and done < nbytes else b""
        # a short write stops after a newline (inside a line only if it is over PIPE_BUF)
        rest_lines = nlines - min(nlines, data.count(b"\n", 0, done)) if rest else 0
        with self._lock:
            if ok:
                self._pending -= done
                if done:
                    self.written_lines += nlines - rest_lines
                    self.write_batches += 1
                # with a backlog the caller tries again sooner, to catch up with the reader
                backlog = more or bool(rest)
                self._flush_at = max(1, self._flush_bytes // 8) if backlog else self._flush_bytes
                if rest:  # ahead of lines queued meanwhile (_io_lock is held): order is kept
                    self._lines.appendleft(rest)
                    self._nlines += rest_lines
            else:
                self._pending -= nbytes
                self._flush_at = self._flush_bytes
                self.write_errors += 1
                self.dropped_lines += nlines
                self.dropped_bytes += nbytes

    def _reopen_fd(self) -> None:
        """Swap in a new descriptor for the path; called with ``_io_lock`` held, so no batch is
        half written to the old one. If the open fails the old file keeps the lines."""
        self._reopen = False
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            self.reopen_failures += 1
            _log.warning(
                "access log %s: cannot reopen (still writing the old file): %s", self.path, e
            )
            return
        old, self._fd = self._fd, fd
        os.close(old)
        self._open_nonblocking()  # a named pipe may have been replaced

    def _write_all(self, data: bytes, nbfd: int | None = None) -> int:
        """Write ``data``; to ``nbfd``, only until the pipe is full. Returns the bytes written."""
        fd = self._fd if nbfd is None else nbfd
        view, start, end = memoryview(data), 0, len(data)
        while start < end:
            stop = end
            if self._pipe and end - start > _PIPE_BUF:
                cut = data.rfind(b"\n", start, start + _PIPE_BUF)
                stop = cut + 1 if cut >= start else (data.find(b"\n", start + _PIPE_BUF) + 1 or end)
            while start < stop:
                try:
                    start += os.write(fd, view[start:stop])
                except BlockingIOError:
                    if nbfd is not None:  # (<= PIPE_BUF: nothing of it was written)
                        return start
                    # someone made stdout non-blocking: wait, do not spin
                    select.select([], [fd], [], 1.0)
        return end

    def __repr__(self) -> str:
        return f"<FileSink {self.path!r} written={self.written_lines} dropped={self.dropped_lines}>"


def _after_fork_in_child() -> None:
    # The parent's queued lines are the parent's to write, and its threads did not survive.
    for sink in list(_sinks):
        sink._reset()


os.register_at_fork(after_in_child=_after_fork_in_child)


class SinkRegistry:
    """One ``FileSink`` per path, shared by every access log that names it (as Envoy does)."""

    def __init__(
        self,
        *,
        flush_interval: float = 1.0,
        flush_bytes: int = 64 * 1024,
        max_buffer_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self._options = (flush_interval, flush_bytes, max_buffer_bytes)
        self._sinks: dict[str, FileSink] = {}
        self._lock = threading.Lock()
        self._base: dict[str, int] = {}  # counter values at the last /reset_counters

    def get(self, path: str) -> FileSink:
        key = path if path in _STD_FDS else os.path.abspath(path)
        with self._lock:
            sink = self._sinks.get(key)
            if sink is None or sink.closed:
                interval, flush_bytes, max_bytes = self._options
                sink = FileSink(
                    key,
                    flush_interval=interval,
                    flush_bytes=flush_bytes,
                    max_buffer_bytes=max_bytes,
                )
                self._sinks[key] = sink
            return sink

    def stats(self) -> tuple[dict[str, int], dict[str, int]]:
        """Envoy's ``filesystem.*`` stats over every access log file, and the lines dropped
        (``filesystem.write_dropped``, beyond Envoy: the buffer was full or a write failed)."""
        with self._lock:
            sinks = list(self._sinks.values())
        totals = {
            "filesystem.write_buffered": sum(s.written_lines for s in sinks),
            "filesystem.write_completed": sum(s.write_batches for s in sinks),
            "filesystem.write_failed": sum(s.write_errors for s in sinks),
            "filesystem.flushed_by_timer": sum(s.flushed_by_timer for s in sinks),
            "filesystem.reopen_failed": sum(s.reopen_failures for s in sinks),
            "filesystem.write_dropped": sum(s.dropped_lines for s in sinks),
        }
        counters = {k: v - self._base.get(k, 0) for k, v in totals.items()}
        gauges = {"filesystem.write_total_buffered": sum(s._pending for s in sinks)}
        return counters, gauges

    def reset_counters(self) -> None:
        """/reset_counters: later stats count from now."""
        self._base = {}
        self._base = self.stats()[0]

    def reopen_all(self) -> int:
        """SIGUSR1 and ``POST /reopen_logs``: every access log file opens its path again.
        Returns how many files were asked to."""
        with self._lock:
            sinks = [s for s in self._sinks.values() if s.path not in _STD_FDS]
        for sink in sinks:
            sink.reopen()
        return len(sinks)

    def close_all(self) -> None:
        with self._lock:
            sinks, self._sinks = list(self._sinks.values()), {}
        for sink in sinks:
            sink.close()


class AccessLogger:
    """One configured access log: a compiled format feeding a sink."""

    __slots__ = ("_format", "_write", "errors", "formatter", "sink")

    def __init__(self, formatter: Formatter, sink: FileSink) -> None:
        self.formatter = formatter
        self.sink = sink
        self._format = formatter.render  # bound once: log() runs for every request
        self._write = sink.write
        self.errors = 0

    def log(self, info: StreamInfo) -> None:
        try:
            self._write(self._format(info))
        except Exception:  # a logging bug must never fail the request that is being logged
            self.errors += 1
            if self.errors == 1:
                _log.exception("access log %s: formatting failed", self.sink.path)

    def log_batch(self, infos: Sequence[StreamInfo]) -> None:
        """Several finished requests, formatted in one pass and queued as one write."""
        fmt = self._format
        try:
            # one request per loop iteration is common: skip the list and the join
            text = fmt(infos[0]) if len(infos) == 1 else b"".join([fmt(info) for info in infos])
        except Exception:  # find the one that fails, keep the others
            for info in infos:
                self.log(info)
            return
        self._write(text, len(infos))


def build_access_loggers(
    cfgs: Iterable[schema.AccessLog], registry: SinkRegistry
) -> tuple[AccessLogger, ...]:
    """Compile each config's format (raising ``FormatError``) and attach its shared sink."""
    return tuple(AccessLogger(compile_access_log(c), registry.get(c.path)) for c in cfgs)
