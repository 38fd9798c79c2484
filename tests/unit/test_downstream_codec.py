"""The downstream HTTP/1.1 codec, driven through a fake transport: every case is fed whole, one
byte at a time, and followed by trailing data (h11's ``tr()`` technique)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.fakes import Harness
from udsproxy.config import schema
from udsproxy.flags import ResponseFlag

MODES = ["whole", "bytes"]


@pytest.fixture
def make() -> Iterator[type[Harness]]:
    made: list[Harness] = []

    def factory(**kw: object) -> Harness:
        h = Harness(**kw)
        made.append(h)
        return h

    yield factory  # type: ignore[misc]
    for h in made:
        h.loop.close()


def upstream_head(h: Harness) -> bytes:
    s = h.conn.active
    assert s is not None, h.transport.buffer
    return s.head


@pytest.mark.parametrize("mode", MODES)
def test_simple_get_builds_upstream_head(make, mode):
    h = make(use_remote_address=True)
    h.feed(b"GET /a?b=1 HTTP/1.1\r\nHost: Example.com\r\nUser-Agent: t\r\n\r\n", mode)
    head = upstream_head(h)
    assert head.startswith(b"GET /a?b=1 HTTP/1.1\r\nhost: Example.com\r\nuser-agent: t\r\n")
    assert b"x-forwarded-for: 203.0.113.7\r\n" in head
    assert b"x-forwarded-proto: http\r\n" in head
    assert b"x-request-id: " in head
    assert b"x-envoy-expected-rq-timeout-ms: 15000\r\n" in head
    assert head.endswith(b"\r\n\r\n")
    assert h.transport.buffer == b""  # nothing answered yet: the upstream is connecting


@pytest.mark.parametrize("mode", MODES)
def test_pipelined_requests_queue_in_order(make, mode):
    h = make()
    h.feed(
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n",
        mode,
    )
    assert upstream_head(h).startswith(b"GET /1 ")
    assert [s.path for s in h.conn.queue] == [b"/2", b"/3"]


def test_trailing_partial_request_is_kept(make):
    h = make()
    h.feed(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTT")
    assert upstream_head(h).startswith(b"GET /1 ")
    assert not h.conn.queue
    h.feed(b"P/1.1\r\nHost: a\r\n\r\n")
    assert [s.path for s in h.conn.queue] == [b"/2"]


@pytest.mark.parametrize("mode", MODES)
def test_absolute_form_target_sets_host(make, mode):
    h = make()
    h.feed(b"GET http://Other.example:8080/x?y HTTP/1.1\r\nHost: ignored\r\n\r\n", mode)
    head = upstream_head(h)
    assert head.startswith(b"GET /x?y HTTP/1.1\r\nhost: Other.example:8080\r\n")


@pytest.mark.parametrize("mode", MODES)
def test_hop_by_hop_and_nominated_headers_are_removed(make, mode):
    h = make()
    h.feed(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n"
        b"Keep-Alive: 300\r\nTE: trailers\r\nProxy-Connection: x\r\nX-Envoy-Internal: true\r\n"
        b"X-Envoy-Original-Path: /forged\r\nX-Keep: yes\r\n\r\n",
        mode,
    )
    head = upstream_head(h).lower()
    for name in (b"x-secret", b"keep-alive", b"te:", b"proxy-connection", b"x-envoy-internal"):
        assert name not in head
    assert b"x-envoy-original-path" not in head
    assert b"x-keep: yes\r\n" in head


@pytest.mark.parametrize("mode", MODES)
def test_xff_is_appended_with_use_remote_address(make, mode):
    h = make(use_remote_address=True)
    h.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 198.51.100.1\r\n\r\n", mode)
    assert b"x-forwarded-for: 198.51.100.1, 203.0.113.7\r\n" in upstream_head(h)


def test_xff_left_alone_without_use_remote_address(make):
    h = make()
    h.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 198.51.100.1\r\n\r\n")
    assert b"x-forwarded-for: 198.51.100.1\r\n" in upstream_head(h)


def test_client_request_id_is_kept(make):
    h = make()
    h.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: abc\r\n\r\n")
    head = upstream_head(h)
    assert head.count(b"x-request-id") == 1
    assert b"x-request-id: abc\r\n" in head


@pytest.mark.parametrize("mode", MODES)
def test_chunked_request_body_is_buffered_while_connecting(make, mode):
    h = make()
    h.feed(
        b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        mode,
    )
    s = h.conn.active
    assert s is not None
    assert b"transfer-encoding: chunked\r\n" in s.head
    assert b"".join(s.body) == b"hello world"
    assert s.request_complete and s.bytes_received == 11


def test_expect_continue_is_answered_by_the_proxy(make):
    h = make()
    h.feed(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    assert h.transport.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert b"\r\nexpect:" not in upstream_head(h).lower()


def test_http10_without_host_is_accepted(make):
    h = make()
    h.feed(b"GET / HTTP/1.0\r\n\r\n")
    s = h.conn.active
    assert s is not None and s.protocol == "HTTP/1.0" and not s.keep_alive


BAD_REQUESTS = {
    "cl_and_te": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "duplicate_cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
    b"Content-Length: 2\r\n\r\nab",
    "cl_list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\na",
    "cl_negative": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    "te_not_chunked_last": b"POST / HTTP/1.1\r\nHost: a\r\n"
    b"Transfer-Encoding: chunked, gzip\r\n\r\n",
    "te_gzip": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    "obs_fold": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
    "bare_cr": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
    "nul_value": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    "ctl_value": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",
    "space_before_colon": b"GET / HTTP/1.1\r\nHost: a\r\nX : b\r\n\r\n",
    "missing_host": b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n",
    "duplicate_host": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "bad_target": b"GET foo HTTP/1.1\r\nHost: a\r\n\r\n",
    "bad_chunk_size": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "lf_only": b"GET / HTTP/1.1\nHost: a\n\n",
    "connect": b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_malformed_requests_get_400_and_close(make, case, mode):
    h = make()
    h.feed(BAD_REQUESTS[case] + b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", mode)
    out = h.transport.take()
    assert out.startswith(b"HTTP/1.1 400 Bad Request\r\n"), out
    assert b"connection: close\r\n" in out
    assert h.transport.closed
    assert h.conn.active is None and not h.conn.queue
    info = h.recorder.infos[-1]
    assert info.response_code == 400 and info.response_flags & ResponseFlag.DPE


def test_complete_request_before_malformed_one_is_still_served(make):
    h = make()
    h.feed(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nX: a\x00\r\n\r\n")
    assert upstream_head(h).startswith(b"GET /ok ")
    assert h.transport.buffer == b""  # the 400 waits its turn behind /ok


def test_too_many_headers_gives_431(make):
    h = make(max_headers_count=5)
    h.feed(
        b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(6)) + b"\r\n"
    )
    out = h.transport.take()
    assert out.startswith(b"HTTP/1.1 431 ")
    assert h.recorder.infos[-1].response_code_details == "http1.too_many_headers"


def test_headers_over_max_request_headers_kb_give_431(make):
    h = make(max_request_headers_kb=1)
    h.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 2000 + b"\r\n\r\n", "whole")
    assert h.transport.take().startswith(b"HTTP/1.1 431 ")
    assert h.transport.closed


def test_no_route_is_404_nr_with_empty_body(make):
    routes = (
        schema.Route(
            match=schema.RouteMatch(prefix="/api"), route=schema.RouteAction(cluster="hugo")
        ),
    )
    h = make(routes=routes)
    h.feed(b"GET /other HTTP/1.1\r\nHost: example.com\r\n\r\n")
    out = h.transport.take()
    assert out.startswith(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n")
    assert b"server: envoy\r\n" in out and b"content-type" not in out
    info = h.recorder.infos[-1]
    assert (info.response_code, info.response_flags) == (404, ResponseFlag.NR)
    assert info.response_code_details == "route_not_found"
    assert not h.transport.closed  # keep-alive survives a local reply


def test_upgrade_on_route_without_upgrade_config_is_403(make):
    h = make()
    h.feed(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    out = h.transport.take()
    assert out.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert h.recorder.infos[-1].response_code_details == "upgrade_failed"


def test_upgrade_on_enabled_route_is_forwarded_with_upgrade_headers(make):
    h = make(upgrade_configs=(schema.UpgradeConfig(upgrade_type="websocket"),))
    h.feed(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    head = upstream_head(h)
    assert b"connection: upgrade\r\nupgrade: websocket\r\n" in head


def test_server_name_controls_the_server_header(make):
    h = make(server_name="udsproxy-edge")
    h.feed(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n")
    # the route matches; the connect to /nonexistent fails at once: a local reply
    assert h.conn.active is not None
    h.loop.run_tasks()
    out = h.transport.take()
    assert b"server: udsproxy-edge\r\n" in out
    assert out.endswith(
        b"upstream connect error or disconnect/reset before headers. "
        b"reset reason: connection failure"
    )
    info = h.recorder.infos[-1]
    assert (info.response_code, info.response_flags) == (503, ResponseFlag.UF)
    assert info.upstream_host == "/nonexistent"
    assert h.transport.closed  # Connection: close was honoured


def test_idle_connection_times_out(make):
    h = make(idle_timeout=10.0)
    h.loop.advance(9.0)
    assert not h.transport.closed
    h.loop.advance(2.0)
    assert h.transport.closed


def test_xff_num_trusted_hops_picks_client_address_and_trusts_xfp(make):
    h = make(use_remote_address=True, xff_num_trusted_hops=1)
    h.feed(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 192.0.2.9, 198.51.100.1\r\n"
        b"X-Forwarded-Proto: https\r\n\r\n"
    )
    s = h.conn.active
    assert s is not None
    assert str(s.downstream_remote) == "198.51.100.1"
    assert str(s.downstream_direct_remote) == "203.0.113.7:40000"
    assert b"x-forwarded-proto: https\r\n" in s.head


def test_untrusted_xfp_is_overwritten(make):
    h = make(use_remote_address=True)
    h.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\n\r\n")
    assert b"x-forwarded-proto: http\r\n" in upstream_head(h)


def test_close_half_closes_then_drains_for_a_second(make):
    h = make()
    h.transport.half_close = True
    h.feed(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\nX: a\x00\r\n\r\n")
    assert h.transport.take().startswith(b"HTTP/1.1 400 ")
    assert h.transport.eof_sent and not h.transport.closed
    h.feed(b"x" * 50)  # late request bytes are read and dropped, not answered
    assert h.transport.buffer == b""
    h.loop.advance(1.1)
    assert h.transport.closed


def test_never_ending_header_is_cut_at_the_limit(make):
    h = make(max_request_headers_kb=1)
    h.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX: ")
    for _ in range(3):
        h.feed(b"a" * 512)
    assert h.transport.take().startswith(b"HTTP/1.1 431 ")
    assert h.transport.closed


def test_many_pipelined_local_replies_do_not_recurse(make):
    routes = (
        schema.Route(
            match=schema.RouteMatch(path="/only"), route=schema.RouteAction(cluster="hugo")
        ),
    )
    h = make(routes=routes)
    h.feed(b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n" * 600)
    assert h.transport.take().count(b"HTTP/1.1 404 Not Found") == 600


def test_bytes_after_connection_close_request_are_ignored(make):
    h = make()
    h.feed(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert not h.conn.queue
    assert len(h.recorder.infos) == 0  # no phantom stream


def test_h2c_upgrade_is_stripped_and_request_proxied(make):
    h = make()
    h.feed(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    head = upstream_head(h).lower()
    assert b"upgrade" not in head and b"http2-settings" not in head
    assert [s.path for s in h.conn.queue] == [b"/2"]
