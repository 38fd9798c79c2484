"""Quiet failures made loud (issue 12): what the access log says about a response cut short,
what a log file that cannot be written costs, and what a worker killed with -9 loses.

Real sockets and processes: a scripted faulty upstream on a unix socket, /dev/full as a log
file (every write fails with ENOSPC), and a supervisor whose worker is killed with SIGKILL."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import SockPaths
from .faulty import FaultyUpstream
from .support import (
    FILE_LOG_TYPE,
    AccessLog,
    InProcessProxy,
    ProxyProcess,
    RawConn,
    bootstrap,
    cluster,
    get,
    listener,
    vhost,
    wait_until,
)

pytestmark = pytest.mark.integration

Inproc = Callable[[dict[str, Any]], InProcessProxy]
FORMAT = "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %REQ(USER-AGENT)%\n"


def _access_log(path: str | Path, fmt: str = FORMAT) -> list[dict[str, Any]]:
    return [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": FILE_LOG_TYPE,
                "path": str(path),
                "log_format": {"text_format_source": {"inline_string": fmt}},
            },
        }
    ]


def _config(
    log: str | Path, endpoint: str, *, timeout: str | None = None, fmt: str = FORMAT
) -> dict[str, Any]:
    action: dict[str, Any] = {"cluster": "c"}
    if timeout is not None:
        action["timeout"] = timeout
    lst = listener([vhost("v", [{"match": {"prefix": "/"}, "route": action}])])
    lst["filter_chains"][0]["filters"][0]["typed_config"]["access_log"] = _access_log(log, fmt)
    return bootstrap([lst], [cluster("c", endpoint)])


def _counters(p: InProcessProxy) -> dict[str, int]:
    async def raw() -> Any:
        return p.server.store.raw()

    counters, _, _ = p.loop_thread.run(raw())
    return {k.removeprefix("cluster.c."): v for k, v in counters.items()}


@pytest.fixture
def upstream(sock_path: SockPaths) -> Iterator[FaultyUpstream]:
    up = FaultyUpstream(sock_path("faulty"))
    yield up
    up.close()


def _cut_short(p: InProcessProxy, ua: str) -> bytes:
    """GET through the proxy: a 200 head, then the body ends with the connection."""
    with RawConn(p.address(), 5) as conn:
        conn.send(b"GET /x HTTP/1.1\r\nHost: a\r\nUser-Agent: %s\r\n\r\n" % ua.encode())
        status, _, headers = conn.read_head()
        assert status == 200, headers
        body = conn.read_until_eof()
        assert conn.closed_by_peer()
    return body


# -- %RESPONSE_CODE_DETAILS% of a response cut short ------------------------------------------


@pytest.mark.parametrize(
    ("step", "flag", "details", "stat"),
    [
        # the upstream closes mid-body
        (
            "partial",
            "UC",
            "upstream_reset_after_response_started{connection_termination}",
            "upstream_rq_rx_reset",
        ),
        # a chunk size that is not hex, mid-body
        (
            "badchunk",
            "UPE",
            "upstream_reset_after_response_started{protocol_error}",
            "upstream_cx_protocol_error",
        ),
    ],
)
def test_a_reset_after_the_response_started_is_logged_with_envoy_s_details(
    inproc: Inproc,
    upstream: FaultyUpstream,
    tmp_path: Path,
    step: str,
    flag: str,
    details: str,
    stat: str,
) -> None:
    upstream.set_script([step])
    log = tmp_path / "a.log"
    p = inproc(_config(log, upstream.path))
    # what came (raw: a chunk's framing too), then a reset: never a whole body
    assert _cut_short(p, "late") in (b"hello", b"5\r\nhello\r\n")
    counters = _counters(p)
    assert counters["upstream_rq_200"] == 1
    assert counters[stat] == 1
    p.stop()  # flushes the access log
    assert AccessLog(log).find("late") == [f"200 {flag} {details} late"]


def test_a_route_timeout_after_the_response_started_keeps_its_details(
    inproc: Inproc, upstream: FaultyUpstream, tmp_path: Path
) -> None:
    """Envoy's sendLocalReply sets the details even when it can only reset the stream."""
    upstream.set_script(["stall"])
    log = tmp_path / "a.log"
    p = inproc(_config(log, upstream.path, timeout="0.2s"))
    assert _cut_short(p, "slow") == b"hello"
    assert _counters(p)["upstream_rq_timeout"] == 1
    p.stop()
    assert AccessLog(log).find("slow") == ["200 UT upstream_response_timeout slow"]


# -- a log file that cannot be written ---------------------------------------------------------


def test_a_full_disk_is_one_warning_and_a_count_not_a_flood(
    inproc: Inproc, upstream: FaultyUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    """/dev/full fails every write with ENOSPC, as a full disk does. Requests are served as
    before; the lines are counted as dropped and stderr gets one warning, not one per batch."""
    caplog.set_level(logging.WARNING, logger="udsproxy.accesslog")
    p = inproc(_config("/dev/full", upstream.path))
    sink = p.server.sinks.get("/dev/full")
    for i in range(30):
        assert get(p.address(), "/x", headers={"User-Agent": f"u{i}"}).status == 200
        if i % 3 == 2:
            sink.flush()  # a failed batch every 3 requests, as the writer thread's would be

    def all_lost() -> bool:  # a line is queued at the end of the loop iteration that served it
        sink.flush()
        return p.server.sinks.stats()[0]["filesystem.write_dropped"] == 30

    assert wait_until(all_lost, 5)
    counters = p.server.sinks.stats()[0]
    assert counters["filesystem.write_failed"] >= 10  # a batch each (the thread's too)
    assert counters["filesystem.write_buffered"] == 0
    lost = [r.getMessage() for r in caplog.records if "lines lost" in r.getMessage()]
    assert len(lost) == 1, lost
    assert "No space left on device" in lost[0]


# -- a worker killed with -9 -------------------------------------------------------------------

FLUSH_INTERVAL = 1.0  # udsproxy.accesslog.sink's default, as SinkRegistry() in server.py uses


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_a_worker_killed_with_9_loses_at_most_one_flush_interval_of_lines(
    upstream: FaultyUpstream, tmp_path: Path
) -> None:
    """Every request that completed more than one flush interval before SIGKILL is in the log:
    the writer thread writes what is queued on every interval, so only the last interval's
    lines die with the process (Envoy loses what its 64 KiB buffer holds, up to 10 s)."""
    log = tmp_path / "a.log"
    proxy = ProxyProcess(_config(log, upstream.path), tmp_path / "proxy", "--concurrency", "2")
    proxy.start()
    try:
        assert wait_until(lambda: len(_children(proxy.pid)) == 2, 10)
        workers = _children(proxy.pid)
        for i in range(20):  # new connections: both workers serve some
            assert get(proxy.address(), "/x", headers={"User-Agent": f"early{i}"}).status == 200
        time.sleep(FLUSH_INTERVAL * 1.5)
        for i in range(5):  # within the last interval: these may be lost
            assert get(proxy.address(), "/x", headers={"User-Agent": f"late{i}"}).status == 200
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: "restarting" in proxy.stderr(), 10), proxy.stderr()
    finally:
        proxy.stop()
    lines = AccessLog(log).lines()
    early = [line for line in lines if " early" in line]
    assert len(early) == 20, lines
    assert all(line.startswith("200 - via_upstream ") for line in early)
