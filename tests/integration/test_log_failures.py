"""Quiet failures made loud (issue 12): what the access log says about a response cut short,
what a log file that cannot be written costs, and what a worker killed with -9 loses.

Real sockets and processes: a scripted faulty upstream on a unix socket, /dev/full as a log
file (every write fails with ENOSPC), and a supervisor whose worker is killed with SIGKILL."""

from __future__ import annotations

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
    RawConn,
    bootstrap,
    cluster,
    listener,
    vhost,
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
