"""WebSocket tunnels through the proxy to a websockets server on a Unix socket."""

from __future__ import annotations

import json
import os

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from .support import AccessLog, ProxyProcess, RawConn, WsUpstream, request_bytes

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
