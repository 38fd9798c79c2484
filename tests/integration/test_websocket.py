"""WebSocket tunnels through the proxy to a websockets server on a Unix socket."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from .support import (
    AccessLog,
    ProxyProcess,
    RawConn,
    WsUpstream,
    bootstrap,
    cluster,
    listener,
    request_bytes,
    route,
    vhost,
)

pytestmark = pytest.mark.integration


def _ws_url(proxy: ProxyProcess, path: str) -> str:
    host, port = proxy.address()
    return f"ws://{host}:{port}{path}"


def test_websocket_round_trip(proxy: ProxyProcess, ws_upstream: WsUpstream) -> None:
    big = os.urandom(1 << 20)
    with connect(
        _ws_url(proxy, "/ws/echo"),
        proxy=None,
        open_timeout=5,
        close_timeout=5,
        max_size=4 << 20,
        compression=None,
    ) as ws:
        ws.send("hello through udsproxy")
        assert ws.recv(timeout=5) == "hello through udsproxy"
        ws.send(big)
        assert ws.recv(timeout=10) == big
        for i in range(20):
            ws.send(f"msg {i}")
        assert [ws.recv(timeout=5) for _ in range(20)] == [f"msg {i}" for i in range(20)]


def test_websocket_handshake_reaches_upstream(
    proxy: ProxyProcess, ws_upstream: WsUpstream, proxy_log: AccessLog
) -> None:
    with connect(
        _ws_url(proxy, "/ws/info?x=1"),
        proxy=None,
        open_timeout=5,
        close_timeout=5,
        user_agent_header="ws-info-client",
    ) as ws:
        info = json.loads(ws.recv(timeout=5))
    headers = {k.lower(): v for k, v in info["headers"]}
    assert info["path"] == "/ws/info?x=1"
    assert headers["upgrade"].lower() == "websocket"
    assert "upgrade" in headers["connection"].lower()
    line = proxy_log.wait_for_line('"ws-info-client"')
    assert '"GET /ws/info?x=1 HTTP/1.1" 101 - ' in line, line


def test_upgrade_on_route_without_upgrade_config_is_403(proxy: ProxyProcess) -> None:
    with pytest.raises(InvalidStatus) as excinfo:
        connect(_ws_url(proxy, "/ws-noupgrade"), proxy=None, open_timeout=5)
    assert excinfo.value.response.status_code == 403

    host = f"{proxy.address()[0]}:{proxy.port}"
    with RawConn(proxy.address()) as conn:
        conn.send(
            request_bytes(
                "GET",
                "/ws-noupgrade",
                host,
                [
                    ("Connection", "Upgrade"),
                    ("Upgrade", "websocket"),
                    ("Sec-WebSocket-Version", "13"),
                    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ],
            )
        )
        resp = conn.read_response()
    assert resp.status == 403
    assert resp.body == b""


def _pipes(pid: int) -> int:
    fd_dir = f"/proc/{pid}/fd"
    n = 0
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(OSError):  # closed meanwhile
            n += os.readlink(f"{fd_dir}/{fd}").startswith("pipe:")
    return n


@pytest.mark.parametrize("splice", ["default", "off"])
def test_websocket_tunnel_by_splice_or_relay(
    tmp_path: Path, ws_upstream: WsUpstream, splice: str, user_agent: str
) -> None:
    """By default a tunnel moves to splice(2) once the 101 is out (its two pipes show in the
    proxy's fds); with --splice-min-bytes 0 it stays on the transport relay. Either way small
    and large messages cross in order, the close is passed on, and the log counts the bytes."""
    log_path = tmp_path / "access.log"
    config = bootstrap(
        [listener([vhost("t", [route("ws", prefix="/ws/", websocket=True)])], access_log=log_path)],
        [cluster("ws", ws_upstream.socket_path)],
    )
    args = () if splice == "default" else ("--splice-min-bytes", "0")
    proxy = ProxyProcess(config, tmp_path, *args).start()
    try:
        assert proxy.proc is not None
        before = _pipes(proxy.proc.pid)
        big = os.urandom(3 << 20)
        with connect(
            _ws_url(proxy, "/ws/echo"),
            proxy=None,
            open_timeout=5,
            close_timeout=5,
            max_size=8 << 20,
            compression=None,
            user_agent_header=user_agent,
        ) as ws:
            ws.send("first")
            assert ws.recv(timeout=5) == "first"
            during = _pipes(proxy.proc.pid)
            ws.send(big)
            assert ws.recv(timeout=10) == big
            for i in range(50):
                ws.send(f"msg {i}")
            assert [ws.recv(timeout=5) for _ in range(50)] == [f"msg {i}" for i in range(50)]
        if splice == "default":
            assert during >= before + 4, (before, during)  # two splicers, a pipe each
        else:
            assert during == before, (before, during)
        line = AccessLog(log_path).wait_for_line(user_agent)
        received, sent = (int(x) for x in line.split('" 101 - ', 1)[1].split()[:2])
        assert received > len(big) and sent > len(big), line  # frames, both ways
    finally:
        assert proxy.stop() == 0, proxy.stderr()
