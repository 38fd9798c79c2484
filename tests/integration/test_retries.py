"""Retries, per-try timeouts and circuit breakers through the real proxy, against a scripted
faulty upstream on a unix socket: status, flags, details, attempts, stats and the log line."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import SockPaths
from .faulty import FaultyUpstream
from .support import (
    FILE_LOG_TYPE,
    UF_BODY,
    UT_BODY,
    AccessLog,
    InProcessProxy,
    ProxyProcess,
    bootstrap,
    cluster,
    get,
    listener,
    vhost,
    wait_until,
)

pytestmark = pytest.mark.integration

Inproc = Callable[[dict[str, Any]], InProcessProxy]
FORMAT = (
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% "
    "%UPSTREAM_REQUEST_ATTEMPT_COUNT% %REQ(USER-AGENT)%\n"
)


def _config(
    log: Path,
    endpoints: list[str],
    *,
    retry_policy: dict[str, Any] | None = None,
    timeout: str | None = None,
    breakers: dict[str, Any] | None = None,
    vhost_fields: dict[str, Any] | None = None,
    **hcm: Any,
) -> dict[str, Any]:
    action: dict[str, Any] = {"cluster": "c"}
    if retry_policy is not None:
        action["retry_policy"] = retry_policy
    if timeout is not None:
        action["timeout"] = timeout
    vh = vhost("v", [{"match": {"prefix": "/"}, "route": action}])
    vh.update(vhost_fields or {})
    access_log = [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": FILE_LOG_TYPE,
                "path": str(log),
                "log_format": {"text_format_source": {"inline_string": FORMAT}},
            },
        }
    ]
    c = cluster("c", *endpoints)
    if breakers is not None:
        c["circuit_breakers"] = {"thresholds": [breakers]}
    return bootstrap([_with_log(listener([vh], **hcm), access_log)], [c])


def _with_log(lst: dict[str, Any], access_log: list[dict[str, Any]]) -> dict[str, Any]:
    lst["filter_chains"][0]["filters"][0]["typed_config"]["access_log"] = access_log
    return lst


def _stats(p: InProcessProxy) -> dict[str, int]:
    async def raw() -> Any:
        return p.server.store.raw()

    counters, gauges, _ = p.loop_thread.run(raw())
    out = {k.removeprefix("cluster.c."): v for k, v in counters.items()}
    out.update({k.removeprefix("cluster.c."): v for k, v in gauges.items()})
    return out


def _line(p: InProcessProxy, log: Path, ua: str) -> str:
    p.stop()  # flushes the access log
    lines = AccessLog(log).find(ua)
    assert len(lines) == 1, lines
    return lines[0].rsplit(" ", 1)[0]


@pytest.fixture
def upstream(sock_path: SockPaths) -> Iterator[FaultyUpstream]:
    up = FaultyUpstream(sock_path("faulty"))
    yield up
    up.close()


def _get(p: InProcessProxy, ua: str, **kw: Any) -> Any:
    headers = {"User-Agent": ua, **kw.pop("headers", {})}
    return get(p.address(), "/x", headers=headers, **kw)


def test_a_5xx_is_retried_and_the_client_sees_the_retry_s_answer(
    inproc: Inproc, upstream: FaultyUpstream, tmp_path: Path
) -> None:
    upstream.set_script(["503", "200"])
    log = tmp_path / "a.log"
    p = inproc(_config(log, [upstream.path], retry_policy={"retry_on": "5xx", "num_retries": 2}))
    r = _get(p, "retry-5xx")
    assert (r.status, r.body) == (200, b"status 200\n")
    assert [x["step"] for x in upstream.requests] == ["503", "200"]
    s = _stats(p)
    assert (s["upstream_rq_retry"], s["upstream_rq_retry_success"]) == (1, 1)
    assert s["upstream_rq_retry_limit_exceeded"] == 0
    assert _line(p, log, "retry-5xx") == "200 - via_upstream 2"


def test_retries_used_up_forward_the_last_answer_flagged_urx(
    inproc: Inproc, upstream: FaultyUpstream, tmp_path: Path
) -> None:
    upstream.set_script(["503"])
    log = tmp_path / "a.log"
    policy = {"retry_on": "gateway-error", "num_retries": 2}
    p = inproc(_config(log, [upstream.path], retry_policy=policy))
    r = _get(p, "retry-urx")
    assert (r.status, r.body) == (503, b"status 503\n")
    assert len(upstream.requests) == 3
    s = _stats(p)
    assert (s["upstream_rq_retry"], s["upstream_rq_retry_success"]) == (2, 0)
    assert s["upstream_rq_retry_limit_exceeded"] == 1
    assert _line(p, log, "retry-urx") == "503 URX via_upstream 3"


def test_a_status_the_policy_does_not_name_is_not_retried(
    inproc: Inproc, upstream: FaultyUpstream, tmp_path: Path
) -> None:
    upstream.set_script(["500", "418", "409", "200"])
    log = tmp_path / "a.log"
    policy = {"retry_on": "gateway-error", "num_retries": 3}
    p = inproc(_config(log, [upstream.path], retry_policy=policy))
    assert _get(p, "no-retry").status == 500  # not a gateway error
    policy = {
        "retry_on": "retriable-status-codes,retriable-4xx",
        "retriable_status_codes": [418],
        "num_retries": 3,
    }
    p.stop()
    p = inproc(_config(log, [upstream.path], retry_policy=policy))
    assert _get(p, "codes").status == 200  # 418, 409 (retriable-4xx), then 200
    assert _stats(p)["upstream_rq_retry"] == 2


def test_a_reset_before_the_response_is_retried_and_a_retried_reply_says_so(
    inproc: Inproc, upstream: FaultyUpstream, tmp_path: Path
) -> None:
    upstream.set_script(["reset", "200"])
    log = tmp_path / "a.log"
    p = inproc(_config(log, [upstream.path], retry_policy={"retry_on": "reset"}))
    assert _get(p, "reset-ok").status == 200
    upstream.set_script(["reset"])
    r = _get(p, "reset-urx")
    assert r.status == 503
    assert r.body == (
        b"upstream connect error or disconnect/reset before headers. retried and the latest"
        b" reset reason: connection termination"
    )
    s = _stats(p)
    assert s["upstream_rq_retry"] == 2 and s["upstream_rq_retry_limit_exceeded"] == 1
    p.stop()
    lines = AccessLog(log).find("reset-")
    assert [x.rsplit(" ", 1)[0] for x in lines] == [
        "200 - via_upstream 2",
        # on the pooled connection, again on a fresh one (the stale keep-alive retry,
        # not the policy's), then the policy's one retry
        "503 UC,URX upstream_reset_before_response_started{connection_termination} 3",
    ]


def test_connect_failure_retries_on_another_host(
    inproc: Inproc, upstream: FaultyUpstream, tmp_path: Path, sock_path: SockPaths
) -> None:
    missing = sock_path("missing")
    log = tmp_path / "a.log"
    policy = {"retry_on": "connect-failure", "num_retries": 1}
    p = inproc(_config(log, [missing, upstream.path], retry_policy=policy))
    assert [_get(p, f"cf-{i}").status for i in range(4)] == [200] * 4
    s = _stats(p)
    # a first try that went to the missing socket is retried on the other host
    n = s["upstream_cx_connect_fail"]
    assert n >= 2 and s["upstream_rq_retry"] == n and s["upstream_rq_retry_success"] == n
    # without a retry policy that names it, a connect failure is not retried
    p.stop()
    p = inproc(_config(log, [missing], retry_policy={"retry_on": "retriable-4xx"}))
    r = _get(p, "cf-none")
    assert (r.status, r.body) == (503, UF_BODY)


def test_per_try_timeout_retries_a_hung_try(
    inproc: Inproc, upstream: FaultyUpstream, tmp_path: Path
) -> None:
    upstream.set_script(["hang", "200"])
    log = tmp_path / "a.log"
    policy = {"retry_on": "5xx", "per_try_timeout": "0.2s", "num_retries": 1}
    p = inproc(_config(log, [upstream.path], retry_policy=policy, timeout="5s"))
    assert _get(p, "ptt-ok").status == 200
    s = _stats(p)
    assert s["upstream_rq_per_try_timeout"] == 1 and s["upstream_rq_retry"] == 1
    assert s["upstream_rq_timeout"] == 0
    # no retry left: 504 UT with the per-try timeout's details
    upstream.set_script(["hang"])
    r = _get(p, "ptt-504")
    assert (r.status, r.body) == (504, UT_BODY)
    assert _stats(p)["upstream_rq_per_try_timeout"] == 3
    assert _line(p, log, "ptt-504") == "504 UT,URX upstream_per_try_timeout 2"


def test_no_retry_goes_past_the_route_timeout(
    inproc: Inproc, upstream: FaultyUpstream, tmp_path: Path
) -> None:
    upstream.set_script(["hang"])
    log = tmp_path / "a.log"
    policy = {"retry_on": "5xx", "per_try_timeout": "0.2s", "num_retries": 10}
    p = inproc(_config(log, [upstream.path], retry_policy=policy, timeout="0.5s"))
    t0 = time.monotonic()
    r = _get(p, "route-timeout")
    elapsed = time.monotonic() - t0
    assert (r.status, r.body) == (504, UT_BODY)
    assert elapsed < 3.0  # the route timeout (0.5 s) ended it, not ten tries
    s = _stats(p)
    assert s["upstream_rq_timeout"] == 1 and 1 <= s["upstream_rq_per_try_timeout"] <= 2
    line = _line(p, log, "route-timeout")
    assert line.startswith("504 UT upstream_response_timeout "), line


def test_a_body_over_the_buffer_limit_is_not_retried(
    inproc: Inproc, upstream: FaultyUpstream, tmp_path: Path
) -> None:
    upstream.set_script(["503", "200"])
    log = tmp_path / "a.log"
    policy = {"retry_on": "5xx", "num_retries": 1}
    p = inproc(_config(log, [upstream.path], retry_policy=policy, buffer_limit=16384))
    r = _get(p, "big-body", method="POST", body=b"x" * 200_000)
    assert (r.status, r.body) == (503, b"status 503\n")
    s = _stats(p)
    assert s["retry_or_shadow_abandoned"] == 1 and s["upstream_rq_retry"] == 0
    # a small body is held, and sent again
    upstream.set_script(["503", "200"])
    r = _get(p, "small-body", method="POST", body=b"y" * 1000)
    assert r.status == 200
    assert [x["body"] for x in upstream.requests[-2:]] == [b"y" * 1000] * 2


def test_retriable_request_headers_limit_what_is_retried(
    inproc: Inproc, upstream: FaultyUpstream, tmp_path: Path
) -> None:
    upstream.set_script(["503", "200"])
    log = tmp_path / "a.log"
    policy = {
        "retry_on": "5xx",
        "retriable_request_headers": [{"name": ":method", "string_match": {"exact": "GET"}}],
    }
    p = inproc(_config(log, [upstream.path], retry_policy=policy))
    assert _get(p, "post", method="POST", body=b"p").status == 503
    upstream.set_script(["503", "200"])
    assert _get(p, "get").status == 200


def test_attempt_count_headers_when_the_virtual_host_asks(
    inproc: Inproc, upstream: FaultyUpstream, tmp_path: Path
) -> None:
    upstream.set_script(["503", "200"])
    log = tmp_path / "a.log"
    fields = {"include_request_attempt_count": True, "include_attempt_count_in_response": True}
    p = inproc(_config(log, [upstream.path], retry_policy={"retry_on": "5xx"}, vhost_fields=fields))
    r = _get(p, "attempts")
    assert r.status == 200 and r.header("x-envoy-attempt-count") == "2"
    sent = [dict(x["headers"]).get("x-envoy-attempt-count") for x in upstream.requests]
    assert sent == ["1", "2"]


@pytest.mark.parametrize("edge", [True, False])
def test_x_envoy_max_retries_and_retry_on_are_honoured_only_off_the_edge(
    edge: bool, inproc: Inproc, upstream: FaultyUpstream, tmp_path: Path
) -> None:
    upstream.set_script(["503", "503", "200"])
    log = tmp_path / "a.log"
    p = inproc(_config(log, [upstream.path], use_remote_address=edge))
    headers = {"x-envoy-retry-on": "5xx", "x-envoy-max-retries": "2"}
    r = _get(p, "hdr", headers=headers)
    assert r.status == (503 if edge else 200)
    assert len(upstream.requests) == (1 if edge else 3)
    # never forwarded upstream
    assert all(
        not k.startswith("x-envoy-retry") and k != "x-envoy-max-retries"
        for x in upstream.requests
        for k, _ in x["headers"]
    )


# -- circuit breakers --------------------------------------------------------------------------


def _hold(p: InProcessProxy) -> socket.socket:
    """A request the upstream never answers: it holds a connection and a request."""
    s = socket.create_connection(p.address(), timeout=5)
    s.sendall(b"GET /hold HTTP/1.1\r\nHost: x\r\nUser-Agent: hold\r\n\r\n")
    return s


def test_max_requests_overflow_is_503_uo_with_x_envoy_overloaded(
    inproc: Inproc, upstream: FaultyUpstream, tmp_path: Path
) -> None:
    upstream.set_script(["hang"])
    log = tmp_path / "a.log"
    breakers = {"max_requests": 1, "track_remaining": True}
    p = inproc(_config(log, [upstream.path], breakers=breakers))
    held = _hold(p)
    try:
        assert wait_until(lambda: len(upstream.requests) == 1, 5)
        s = _stats(p)
        assert s["circuit_breakers.default.rq_open"] == 1
        assert s["circuit_breakers.default.remaining_rq"] == 0
        r = _get(p, "overflow")
        assert r.status == 503 and r.header("x-envoy-overloaded") == "true"
        assert (
            r.body
            == b"upstream connect error or disconnect/reset before headers. reset reason: overflow"
        )
        assert _stats(p)["upstream_rq_pending_overflow"] == 1
    finally:
        held.close()
    assert wait_until(lambda: _stats(p)["circuit_breakers.default.rq_open"] == 0, 5)
    assert _stats(p)["circuit_breakers.default.remaining_rq"] == 1
    assert _line(p, log, "overflow") == (
        "503 UO upstream_reset_before_response_started{overflow} 1"
    )


def test_max_connections_queues_and_max_pending_fails_fast(
    inproc: Inproc, upstream: FaultyUpstream, tmp_path: Path
) -> None:
    upstream.set_script(["delay:0.3", "200"])
    log = tmp_path / "a.log"
    breakers = {"max_connections": 1, "max_pending_requests": 1}
    p = inproc(_config(log, [upstream.path], breakers=breakers))
    results: list[int] = []

    def one(i: int) -> None:
        results.append(_get(p, f"q{i}").status)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join(10)
    # one on the connection, one waiting for it, the third over max_pending
    assert sorted(results) == [200, 200, 503]
    assert upstream.connections == 1
    s = _stats(p)
    assert s["upstream_cx_overflow"] >= 1 and s["upstream_rq_pending_overflow"] == 1
    assert s["circuit_breakers.default.cx_open"] == 1  # the one connection is still open


def test_max_retries_overflow_stops_a_retry(
    inproc: Inproc, upstream: FaultyUpstream, tmp_path: Path
) -> None:
    upstream.set_script(["503", "200"])
    log = tmp_path / "a.log"
    p = inproc(
        _config(log, [upstream.path], retry_policy={"retry_on": "5xx"}, breakers={"max_retries": 0})
    )
    assert _get(p, "retry-overflow").status == 503
    s = _stats(p)
    assert s["upstream_rq_retry_overflow"] == 1 and s["upstream_rq_retry"] == 0
    assert _line(p, log, "retry-overflow") == "503 UO via_upstream 1"


def test_breakers_are_shared_out_per_worker(upstream: FaultyUpstream, tmp_path: Path) -> None:
    """With --concurrency 2 each worker gets ceil(threshold / 2): the remaining gauges add up
    over the workers to the threshold (an odd one rounds up)."""
    log = tmp_path / "a.log"
    config = _config(
        log,
        [upstream.path],
        breakers={"max_requests": 3, "max_retries": 4, "track_remaining": True},
    )
    config["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
    proc = ProxyProcess(config, tmp_path / "w", "--concurrency", "2").start()
    try:
        from .test_local_ratelimit import admin

        def gauges() -> dict[str, int]:
            out = {}
            for line in admin(proc, "/stats").splitlines():
                name, _, value = line.partition(": ")
                if name.startswith("cluster.c.circuit_breakers.default.remaining_"):
                    out[name.rsplit(".", 1)[1]] = int(value)
            return out

        assert wait_until(lambda: gauges().get("remaining_rq") == 4, 10), gauges()
        assert gauges()["remaining_retries"] == 4
    finally:
        proc.stop()


def test_a_socket_that_disappears_and_comes_back(
    inproc: Inproc, tmp_path: Path, sock_path: SockPaths
) -> None:
    """The upstream's socket goes away (its server stopped, the file unlinked) and comes back
    at the same path: retries are used up with Envoy's reply, then traffic resumes by itself."""
    path = sock_path("flaky")
    up = FaultyUpstream(path, ["200"])
    log = tmp_path / "a.log"
    policy = {"retry_on": "connect-failure", "num_retries": 1}
    p = inproc(_config(log, [path], retry_policy=policy))
    try:
        assert _get(p, "before").status == 200
        up.close()  # gone: the pooled connection closes, the file is unlinked
        r = _get(p, "gone")
        assert r.status == 503
        assert r.body == (
            b"upstream connect error or disconnect/reset before headers. retried and the latest"
            b" reset reason: connection failure"
        )
        up = FaultyUpstream(path, ["200"])  # back, a new server on the same path
        assert _get(p, "back").status == 200
        s = _stats(p)
        assert s["upstream_cx_connect_fail"] == 2 and s["upstream_rq_retry"] == 1
        p.stop()
        lines = [x.rsplit(" ", 1)[0] for x in AccessLog(log).lines()]
        assert lines == [
            "200 - via_upstream 1",
            "503 UF,URX upstream_reset_before_response_started{connection_failure} 2",
            "200 - via_upstream 1",
        ]
    finally:
        up.close()
