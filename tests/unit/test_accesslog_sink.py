"""FileSink, SinkRegistry and AccessLogger: buffering, flush triggers, bounds, lifecycle."""

from __future__ import annotations

import fcntl
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from udsproxy.accesslog import sink as sink_module
from udsproxy.accesslog.formatter import FormatError, compile_text
from udsproxy.accesslog.sink import AccessLogger, FileSink, SinkRegistry, build_access_loggers
from udsproxy.config.schema import AccessLog
from udsproxy.streaminfo import StreamInfo

LINE = b"x" * 29 + b"\n"  # 30 bytes


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "access.log"


@pytest.fixture
def sinks() -> Iterator[list[FileSink]]:
    made: list[FileSink] = []
    yield made
    for s in made:
        s.close()


def make(
    sinks: list[FileSink],
    path: Path,
    *,
    flush_interval: float = 1.0,
    flush_bytes: int = 1 << 16,
    max_buffer_bytes: int = 1 << 24,
) -> FileSink:
    s = FileSink(
        str(path),
        flush_interval=flush_interval,
        flush_bytes=flush_bytes,
        max_buffer_bytes=max_buffer_bytes,
    )
    sinks.append(s)
    return s


def test_nothing_is_written_until_size_or_interval(log_path: Path, sinks: list[FileSink]) -> None:
    s = make(sinks, log_path, flush_interval=60, flush_bytes=1 << 20)
    s.write(LINE)
    time.sleep(0.05)
    assert log_path.read_bytes() == b""
    s.flush()
    assert log_path.read_bytes() == LINE
    assert s.written_lines == 1


def test_flush_by_size(log_path: Path, sinks: list[FileSink]) -> None:
    s = make(sinks, log_path, flush_interval=60, flush_bytes=100)
    for _ in range(3):
        s.write(LINE)  # 90 bytes: below the threshold
    time.sleep(0.05)
    assert log_path.read_bytes() == b""
    s.write(LINE)  # 120 bytes: a regular file's batch is written by the caller, at once
    assert log_path.read_bytes() == LINE * 4
    assert s.written_lines == 4 and s.direct


@pytest.fixture
def pipe(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, int, Path]]:
    """A real pipe holding one page, which a sink writes as it writes stdout (not its own fd)."""
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    os.set_blocking(r, False)
    monkeypatch.setitem(sink_module._STD_FDS, "/test/pipe", w)
    yield r, w, Path("/test/pipe")
    os.close(r)
    os.close(w)


def spy_writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, int]]:
    """Records each successful os.write: (by the calling thread?, size)."""
    writes: list[tuple[bool, int]] = []
    real_write, me = os.write, threading.get_ident()

    def spy(fd: int, data: bytes | memoryview) -> int:
        n = real_write(fd, data)
        writes.append((threading.get_ident() == me, n))
        return n

    monkeypatch.setattr(os, "write", spy)  # the sink calls os.write
    return writes


def read_everything(r: int, s: FileSink, nbytes: int, *, flush: bool = False) -> bytes:
    """Read the pipe while the sink writes what it holds (``flush``: also what is below a
    batch, from this thread); stop at ``nbytes``."""
    got = bytearray()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            if select.select([r], [], [], 0.01)[0]:
                got.extend(os.read(r, 65536))

    reader = threading.Thread(target=read)
    reader.start()
    if flush:
        s.flush()  # waits for the writer thread, then writes the rest
    wait_for(lambda: len(got) >= nbytes)
    stop.set()
    reader.join()
    return bytes(got)


def numbered(n: int) -> list[bytes]:
    return [b"%05d" % i + b"z" * 94 + b"\n" for i in range(n)]  # 100 bytes each


def test_a_pipes_full_batch_is_written_by_the_caller(
    pipe: tuple[int, int, Path], sinks: list[FileSink], monkeypatch: pytest.MonkeyPatch
) -> None:
    r, w, path = pipe
    s = make(sinks, path, flush_interval=60, flush_bytes=100)
    assert s.direct
    writes = spy_writes(monkeypatch)
    for _ in range(4):
        s.write(LINE)
    assert os.read(r, 1000) == LINE * 4  # in the pipe when write() returned
    assert writes == [(True, 120)] and s.written_lines == 4
    assert os.get_blocking(w)  # the description shared with other processes is unchanged


@pytest.mark.parametrize("take", [sink_module._PIPE_TAKE, 1000])  # 1000: a backlog's head
def test_what_a_full_pipe_refuses_is_written_later_in_order(
    pipe: tuple[int, int, Path],
    sinks: list[FileSink],
    monkeypatch: pytest.MonkeyPatch,
    take: int,
) -> None:
    monkeypatch.setattr(sink_module, "_PIPE_TAKE", take)
    r, _, path = pipe
    lines = numbered(200)
    s = make(sinks, path, flush_interval=0.05, flush_bytes=len(lines) * 100)
    writes = spy_writes(monkeypatch)
    for line in lines:
        s.write(line)  # the last one fills the batch: the caller writes what the pipe takes
    mine = sum(n for by_caller, n in writes if by_caller)
    assert 0 < mine < 20_000  # what the pipe took; the rest stays queued, counted
    assert s._pending == 20_000 - mine
    assert read_everything(r, s, 20_000) == b"".join(lines)  # the thread, on the interval
    assert s.written_lines == 200 and s.dropped_lines == 0 and s._pending == 0
    assert sum(n for by_caller, n in writes if not by_caller) == 20_000 - mine
    assert all(n % 100 == 0 and n <= select.PIPE_BUF for _, n in writes)  # whole lines, atomic


def test_a_pipe_nobody_reads_never_blocks_the_caller(
    pipe: tuple[int, int, Path], sinks: list[FileSink]
) -> None:
    r, _, path = pipe
    lines = numbered(1000)
    s = make(sinks, path, flush_interval=60, flush_bytes=1000, max_buffer_bytes=3000)

    def writer() -> None:
        for line in lines:
            s.write(line)

    t = threading.Thread(target=writer)
    t.start()
    t.join(30)  # a watchdog, not a timing: a blocked write() never returns
    assert not t.is_alive()
    assert s.dropped_lines > 0 and s._pending <= 3000
    kept = 1000 - s.dropped_lines  # the buffer filled up and stayed full: a prefix is kept
    assert read_everything(r, s, kept * 100, flush=True) == b"".join(lines[:kept])
    assert s.written_lines == kept


def test_a_pipe_without_proc_goes_to_the_writer_thread(
    pipe: tuple[int, int, Path], sinks: list[FileSink], monkeypatch: pytest.MonkeyPatch
) -> None:
    r, _, path = pipe
    real_open = os.open

    def no_proc(file: str, flags: int, mode: int = 0o777) -> int:
        if file.startswith("/proc/"):
            raise FileNotFoundError(file)
        return real_open(file, flags, mode)

    monkeypatch.setattr(os, "open", no_proc)
    s = make(sinks, path, flush_interval=60, flush_bytes=100)
    assert not s.direct
    writes = spy_writes(monkeypatch)
    for _ in range(4):
        s.write(LINE)
    assert wait_for(lambda: s.written_lines == 4)
    assert os.read(r, 1000) == LINE * 4 and writes == [(False, 120)]


def test_a_named_pipe_reopened_is_still_written_by_the_caller(
    tmp_path: Path, sinks: list[FileSink]
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    s = make(sinks, fifo, flush_interval=60, flush_bytes=100)
    s.reopen()  # no writer thread yet: done here, with a new non-blocking description
    assert s.direct and s._nbfd is not None
    for _ in range(4):
        s.write(LINE)
    assert os.read(reader, 1000) == LINE * 4
    os.close(reader)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with threads, 3.12+
def test_a_forked_child_opens_its_own_pipe_description(
    pipe: tuple[int, int, Path], sinks: list[FileSink], log_path: Path
) -> None:
    r, _, path = pipe
    s = make(sinks, path, flush_interval=60, flush_bytes=100)
    s.write(LINE)  # the writer thread runs
    # The number the child inherits may be mid-swap in the parent: here, another file's.
    real, s._nbfd = s._nbfd, os.open(log_path, os.O_WRONLY | os.O_CREAT)
    pid = os.fork()
    if pid == 0:
        try:
            fd = s._nbfd
            ok = fd is not None and not os.get_blocking(fd) and s._thread is None
            for _ in range(4):
                s.write(LINE)
            ok = ok and s.written_lines == 4
        finally:
            os._exit(0 if ok else 1)
    os.close(s._nbfd)
    s._nbfd = real
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert os.read(r, 1000) == LINE * 4 and log_path.read_bytes() == b""
    s.flush()
    assert os.read(r, 1000) == LINE


def test_slow_writes_send_the_file_to_the_writer_thread(
    log_path: Path, sinks: list[FileSink], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = iter(range(0, 1000, 1))  # one second per reading: every write looks slow
    monkeypatch.setattr(sink_module, "_clock", lambda: next(clock))
    s = make(sinks, log_path, flush_interval=60, flush_bytes=30)
    for n in range(1, sink_module._SLOW_WRITES + 1):
        assert s.direct
        s.write(LINE)  # a full batch: written here, and found slow
        assert s.written_lines == n
    assert not s.direct
    s.write(LINE)  # now queued for the thread
    assert wait_for(lambda: s.written_lines == sink_module._SLOW_WRITES + 1)
    assert log_path.read_bytes() == LINE * (sink_module._SLOW_WRITES + 1)


def test_flush_by_interval(log_path: Path, sinks: list[FileSink]) -> None:
    s = make(sinks, log_path, flush_interval=0.05, flush_bytes=1 << 20)
    s.write(LINE)
    assert wait_for(lambda: log_path.read_bytes() == LINE)
    s.write(b"second\n")
    assert wait_for(lambda: log_path.read_bytes() == LINE + b"second\n")


def test_lines_past_the_bound_are_dropped_and_counted(
    log_path: Path, sinks: list[FileSink]
) -> None:
    s = make(sinks, log_path, flush_interval=60, flush_bytes=1 << 20, max_buffer_bytes=100)
    for _ in range(10):
        s.write(LINE)
    assert (s.dropped_lines, s.dropped_bytes) == (7, 210)
    s.flush()
    assert log_path.read_bytes() == LINE * 3
    assert s.written_lines == 3
    s.write(LINE)  # room again once written
    s.flush()
    assert s.written_lines == 4 and s.dropped_lines == 7


def test_appends_to_an_existing_file(log_path: Path, sinks: list[FileSink]) -> None:
    log_path.write_bytes(b"old\n")
    s = make(sinks, log_path)
    s.write(b"new\n")
    s.close()
    assert log_path.read_bytes() == b"old\nnew\n"


def test_close_flushes_joins_and_is_idempotent(log_path: Path) -> None:
    s = FileSink(str(log_path), flush_interval=60)
    s.write(LINE)
    thread = s._thread
    assert thread is not None and thread.daemon and thread.is_alive()
    s.close()
    s.close()
    assert not thread.is_alive()
    assert log_path.read_bytes() == LINE
    s.write(LINE)  # after close: dropped, not raised
    assert s.dropped_lines == 1
    with pytest.raises(OSError):
        os.fstat(s._fd)  # our file descriptor is closed


def test_close_without_any_write_starts_no_thread(log_path: Path) -> None:
    s = FileSink(str(log_path))
    assert s._thread is None
    s.close()
    assert log_path.exists()


def test_stdout_is_written_and_never_closed(capfd: pytest.CaptureFixture[str]) -> None:
    s = FileSink("/dev/stdout")
    s.write(b"to stdout\n")
    s.close()
    os.fstat(1)  # still open
    assert capfd.readouterr().out == "to stdout\n"


def test_lines_are_written_unchanged(log_path: Path, sinks: list[FileSink]) -> None:
    s = make(sinks, log_path)
    s.write("café ☕ ".encode() + b"\xff\n")  # formatter output: bytes, never re-encoded
    s.flush()
    assert log_path.read_bytes() == "café ☕ ".encode() + b"\xff\n"


def test_logger_writes_the_formatters_bytes(log_path: Path, sinks: list[FileSink]) -> None:
    logger = AccessLogger(compile_text("%REQ(USER-AGENT)% é\n"), make(sinks, log_path))
    info = StreamInfo(0.0, 0.0)
    info.request_headers = [(b"user-agent", b"caf\xc3\xa9 \xff")]
    logger.log(info)
    logger.log_batch([info])
    logger.log_batch([info, info])
    logger.sink.flush()
    assert log_path.read_bytes() == (b"caf\xc3\xa9 \xff " + "é".encode() + b"\n") * 4
    assert logger.sink.written_lines == 4


def test_pipe_writes_keep_lines_whole(
    tmp_path: Path, sinks: list[FileSink], monkeypatch: pytest.MonkeyPatch
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    s = make(sinks, fifo, flush_interval=60, flush_bytes=1 << 20)
    sizes: list[int] = []
    real_write = os.write

    def spy(fd: int, data: bytes | memoryview) -> int:
        sizes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", spy)  # the sink calls os.write
    line = b"y" * 999 + b"\n"
    for _ in range(10):
        s.write(line)
    s.flush()
    monkeypatch.undo()
    got = b""
    while len(got) < 10_000 and select.select([reader], [], [], 1.0)[0]:
        got += os.read(reader, 65536)
    os.close(reader)
    assert got == line * 10
    assert all(size % 1000 == 0 and size <= select.PIPE_BUF for size in sizes)


def test_registry_shares_one_sink_per_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    reg = SinkRegistry(flush_interval=60)
    a = reg.get("a.log")
    assert reg.get(str(tmp_path / "a.log")) is a
    assert reg.get("b.log") is not a
    assert reg.get("/dev/stdout") is reg.get("/dev/stdout")
    reg.close_all()
    assert a.closed
    assert reg.get("a.log") is not a
    reg.close_all()


def test_build_access_loggers_and_log(log_path: Path) -> None:
    reg = SinkRegistry(flush_interval=60)
    cfgs = (
        AccessLog(path=str(log_path), text_format="%RESPONSE_CODE%\n"),
        AccessLog(path=str(log_path), json_format={"code": "%RESPONSE_CODE%"}),
    )
    loggers = build_access_loggers(cfgs, reg)
    assert loggers[0].sink is loggers[1].sink
    info = StreamInfo(0.0, 0.0)
    info.response_code = 204
    for logger in loggers:
        logger.log(info)
    reg.close_all()
    assert log_path.read_bytes() == b'204\n{"code":204}\n'
    with pytest.raises(FormatError):
        build_access_loggers((AccessLog(path=str(log_path), text_format="%NOPE%"),), reg)


def test_a_formatting_bug_is_counted_not_raised(
    log_path: Path, sinks: list[FileSink], caplog: pytest.LogCaptureFixture
) -> None:
    logger = AccessLogger(compile_text("%RESPONSE_CODE%\n"), make(sinks, log_path))
    logger.log(None)  # type: ignore[arg-type]
    logger.log(None)  # type: ignore[arg-type]
    assert logger.errors == 2
    assert len([r for r in caplog.records if "formatting failed" in r.message]) == 1


def test_writes_from_many_threads_are_all_kept(log_path: Path, sinks: list[FileSink]) -> None:
    s = make(sinks, log_path, flush_interval=0.01, flush_bytes=256)

    def burst() -> None:
        for _ in range(500):
            s.write(LINE)

    threads = [threading.Thread(target=burst) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s.close()
    assert s.written_lines == 2000 and s.dropped_lines == 0
    assert log_path.read_bytes() == LINE * 2000


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with threads, 3.12+
def test_a_forked_child_starts_clean(log_path: Path, sinks: list[FileSink]) -> None:
    s = make(sinks, log_path, flush_interval=60, flush_bytes=1 << 20)
    s.write(b"parent\n")  # queued in the parent, writer thread running
    pid = os.fork()
    if pid == 0:  # the child: the parent's queue and thread are gone, its own work flows
        try:
            ok = s._thread is None and s._pending == 0
            s.write(b"child\n")
            s.flush()
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert log_path.read_bytes() == b"child\n"
    s.flush()
    assert log_path.read_bytes() == b"child\nparent\n"


def test_bad_options_are_rejected(log_path: Path) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        FileSink(str(log_path), flush_bytes=0)


# -- reopen (SIGUSR1, POST /reopen_logs) ---------------------------------------------------------


def test_reopen_after_rename_writes_the_new_file(log_path: Path, sinks: list[FileSink]) -> None:
    s = make(sinks, log_path, flush_interval=60)
    s.write(b"a\n")
    s.flush()
    rotated = log_path.with_suffix(".1")
    log_path.rename(rotated)
    s.write(b"b\n")  # queued before the reopen: goes to the old file
    s.reopen()
    assert wait_for(lambda: log_path.exists())
    s.write(b"c\n")
    s.close()
    assert rotated.read_bytes() == b"a\nb\n"
    assert log_path.read_bytes() == b"c\n"


def test_reopen_before_any_line_opens_at_once(log_path: Path, sinks: list[FileSink]) -> None:
    s = make(sinks, log_path)
    rotated = log_path.with_suffix(".1")
    log_path.rename(rotated)
    s.reopen()  # no writer thread yet: done in the caller
    assert log_path.exists()
    s.write(b"x\n")
    s.close()
    assert log_path.read_bytes() == b"x\n" and rotated.read_bytes() == b""


def test_reopen_keeps_stdout(sinks: list[FileSink]) -> None:
    s = make(sinks, Path("/dev/stdout"))
    fd = s._fd
    s.reopen()
    assert s._fd == fd == 1


def test_reopen_failure_keeps_the_old_file(tmp_path: Path, sinks: list[FileSink]) -> None:
    d = tmp_path / "logs"
    d.mkdir()
    path = d / "access.log"
    s = make(sinks, path, flush_interval=60)
    kept = tmp_path / "kept.log"
    path.rename(kept)
    d.rmdir()  # the path cannot be opened again
    s.write(b"a\n")
    s.reopen()
    assert wait_for(lambda: s.reopen_failures == 1)
    s.write(b"b\n")
    s.close()
    assert kept.read_bytes() == b"a\nb\n"
    assert s.dropped_lines == 0


def test_reopen_under_load_loses_no_line(log_path: Path, sinks: list[FileSink]) -> None:
    """A writer never stops while the file is renamed and reopened again and again."""
    s = make(sinks, log_path, flush_interval=0.001, flush_bytes=64)
    total = 20000
    done = threading.Event()

    def writer() -> None:
        for i in range(total):
            s.write(b"%d\n" % i)
            if i % 500 == 0:
                time.sleep(0.002)  # let the rotations interleave
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    rotated: list[Path] = []
    n = 0
    while not done.is_set():
        old = log_path.with_suffix(f".{n}")
        n += 1
        if log_path.exists():
            log_path.rename(old)
            rotated.append(old)
        s.reopen()
        time.sleep(0.003)
    t.join()
    s.close()
    seen = [int(x) for p in [*rotated, log_path] for x in p.read_bytes().split()]
    assert sorted(seen) == list(range(total))
    assert s.dropped_lines == 0
    assert len([p for p in rotated if p.stat().st_size]) >= 2  # the rotation really split it


def test_registry_reopen_all_skips_std_streams(tmp_path: Path) -> None:
    reg = SinkRegistry(flush_interval=60)
    reg.get("/dev/stdout")
    a = reg.get(str(tmp_path / "a.log"))
    b = reg.get(str(tmp_path / "b.log"))
    try:
        assert reg.reopen_all() == 2
        assert a.path != b.path
    finally:
        reg.close_all()


def test_a_full_disk_warns_once_per_interval_with_the_lines_lost(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """/dev/full fails every write with ENOSPC, as a full disk does: one warning per
    _WARN_INTERVAL with the lines lost since the previous one, every line counted."""
    now = [1000.0]
    monkeypatch.setattr(sink_module, "_clock", lambda: now[0])
    registry = SinkRegistry(flush_interval=60)  # batches are written only by flush() here
    s = registry.get("/dev/full")
    caplog.set_level("WARNING", logger="udsproxy.accesslog")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if "lines lost" in r.getMessage()]

    s.write(LINE * 3, 3)
    s.flush()
    assert len(warnings()) == 1 and "/dev/full: 3 lines lost" in warnings()[0]
    assert "No space left on device" in warnings()[0]
    for _ in range(95):  # 9.5 s of a full disk, a failed batch every 0.1 s: no more warnings
        now[0] += 0.1
        s.write(LINE)
        s.flush()
    assert len(warnings()) == 1
    now[0] += 0.5  # the interval is over: the next batch's failure is reported with the rest
    s.write(LINE)
    s.flush()
    assert len(warnings()) == 2 and ": 96 lines lost since the last warning" in warnings()[1]
    now[0] += 1.0
    s.write(LINE)  # lost, and reported only once the interval is over again
    s.flush()
    assert len(warnings()) == 2
    counters, gauges = registry.stats()
    assert counters["filesystem.write_failed"] == 98  # one per failed batch, as Envoy's
    assert counters["filesystem.write_dropped"] == 100  # lines
    assert counters["filesystem.write_buffered"] == counters["filesystem.write_completed"] == 0
    assert gauges["filesystem.write_total_buffered"] == 0  # nothing held back in memory
    now[0] += 10.0
    s.flush()  # nothing more failed: the writer thread's next interval reports the last line
    assert len(warnings()) == 3 and ": 1 lines lost" in warnings()[2]
    s.flush()
    assert len(warnings()) == 3  # nothing new to report
    registry.close_all()


def test_lines_dropped_when_the_buffer_is_full_are_reported_too(
    log_path: Path, sinks: list[FileSink], caplog: pytest.LogCaptureFixture
) -> None:
    s = make(sinks, log_path, flush_interval=60, flush_bytes=1 << 20, max_buffer_bytes=100)
    caplog.set_level("WARNING", logger="udsproxy.accesslog")
    for _ in range(10):
        s.write(LINE)
    s.flush()
    msgs = [r.getMessage() for r in caplog.records if "lines lost" in r.getMessage()]
    assert len(msgs) == 1 and "7 lines lost" in msgs[0] and "buffer of 100 bytes" in msgs[0]


def test_timer_flushes_and_reopen_failures_are_counted(tmp_path: Path) -> None:
    d = tmp_path / "logs"
    d.mkdir()
    registry = SinkRegistry(flush_interval=0.05)
    s = registry.get(str(d / "a.log"))
    s.write(LINE)
    assert wait_for(lambda: registry.stats()[0]["filesystem.flushed_by_timer"] == 1)
    (d / "a.log").rename(tmp_path / "kept.log")
    d.rmdir()  # the path cannot be opened again
    s.reopen()
    assert wait_for(lambda: registry.stats()[0]["filesystem.reopen_failed"] == 1)
    registry.close_all()
