"""The connection manager's request options from Envoy configs (issue 8): path normalization,
escaped slashes, generate_request_id, headers_with_underscores_action, request_timeout, the
route's idle_timeout, the stdout access logger and the admin access log. Real clients against
the in-process proxy and the Python upstream on a Unix socket (it echoes what it received)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .support import (
    AccessLog,
    CliProxy,
    InProcessProxy,
    ProxyProcess,
    PyUpstream,
    RawConn,
    bootstrap,
    cluster,
    get,
    listener,
    route,
    single_route_config,
    vhost,
    wait_until,
)

pytestmark = pytest.mark.integration

Inproc = Callable[[dict[str, Any]], InProcessProxy]


def config(py: PyUpstream, log: Path | None = None, **hcm: Any) -> dict[str, Any]:
    return bootstrap(
        [listener([vhost("py", [route("py", prefix="/")])], access_log=log, **hcm)],
        [cluster("py", py.socket_path)],
    )


def echoed(response: Any) -> dict[str, Any]:
    assert response.status == 200, response
    info: dict[str, Any] = json.loads(response.body)
    return info


def header_names(info: dict[str, Any]) -> list[str]:
    return [k.lower() for k, _ in info["headers"]]


def test_normalize_path_and_merge_slashes(inproc: Inproc, py_upstream: PyUpstream) -> None:
    p = inproc(config(py_upstream, normalize_path=True, merge_slashes=True))
    # dot segments, a doubled slash and an escaped unreserved character, query untouched
    info = echoed(get(p.address(), "/py/a/..//%68eaders?x=//y"))
    assert info["path"] == "/py/headers?x=//y"


def test_malformed_escape_is_400(inproc: Inproc, py_upstream: PyUpstream, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    p = inproc(config(py_upstream, log, normalize_path=True))
    response = get(p.address(), "/py/%zz", headers={"User-Agent": "norm-400"})
    assert response.status == 400
    p.stop()
    assert '"GET /py/%zz HTTP/1.1" 400 - 0 0' in AccessLog(log).wait_for_line("norm-400")


@pytest.mark.parametrize(
    ("action", "status"), [("REJECT_REQUEST", 400), ("UNESCAPE_AND_REDIRECT", 307)]
)
def test_escaped_slashes(inproc: Inproc, py_upstream: PyUpstream, action: str, status: int) -> None:
    p = inproc(config(py_upstream, path_with_escaped_slashes_action=action))
    response = get(p.address(), "/py%2Fheaders")
    assert response.status == status
    if status == 307:
        assert response.header("location") == "/py/headers"
    assert echoed(get(p.address(), "/py/headers"))["path"] == "/py/headers"  # none to escape


def test_escaped_slashes_unescaped_and_forwarded(inproc: Inproc, py_upstream: PyUpstream) -> None:
    p = inproc(config(py_upstream, path_with_escaped_slashes_action="UNESCAPE_AND_FORWARD"))
    assert echoed(get(p.address(), "/py%2fheaders"))["path"] == "/py/headers"


def test_generate_request_id_false(inproc: Inproc, py_upstream: PyUpstream) -> None:
    p = inproc(config(py_upstream, generate_request_id=False))
    assert "x-request-id" not in header_names(echoed(get(p.address(), "/py/headers")))
    given = echoed(get(p.address(), "/py/headers", headers={"X-Request-Id": "abc"}))
    assert ["X-Request-Id", "abc"] in [[k.title(), v] for k, v in given["headers"]]
    q = inproc(config(py_upstream))
    assert "x-request-id" in header_names(echoed(get(q.address(), "/py/headers")))


def underscores(action: str) -> dict[str, Any]:
    return {"common_http_protocol_options": {"headers_with_underscores_action": action}}


def test_headers_with_underscores_dropped(inproc: Inproc, py_upstream: PyUpstream) -> None:
    p = inproc(config(py_upstream, **underscores("DROP_HEADER")))
    info = echoed(get(p.address(), "/py/headers", headers={"x_a": "1", "x-b": "2"}))
    assert "x_a" not in header_names(info) and "x-b" in header_names(info)


def test_headers_with_underscores_rejected(
    inproc: Inproc, py_upstream: PyUpstream, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    p = inproc(config(py_upstream, log, **underscores("REJECT_REQUEST")))
    response = get(p.address(), "/py/headers", headers={"x_a": "1", "User-Agent": "underscore"})
    assert response.status == 400
    assert echoed(get(p.address(), "/py/headers", headers={"x-a": "1"}))
    p.stop()
    # rejected in the middle of its head: like Envoy's codec errors, logged without method
    assert '"- - HTTP/1.1" 400 DPE 0 11 ' in AccessLog(log).wait_for_line(" 400 DPE ")


def test_request_timeout_on_a_slow_head_and_a_slow_body(
    inproc: Inproc, py_upstream: PyUpstream, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    p = inproc(config(py_upstream, log, request_timeout="0.5s"))
    with RawConn(p.address(), 5) as conn:  # half a head, then silence
        conn.send(b"GET /py/headers HTTP/1.1\r\nHost: a\r\nUser-Agent: slow-head\r\n")
        t0 = time.monotonic()
        response = conn.read_response()
        assert response.status == 408 and response.body == b"request timeout"
        assert 0.4 < time.monotonic() - t0 < 3
    with RawConn(p.address(), 5) as conn:  # the whole head, half the body
        conn.send(b"POST /py/echo HTTP/1.1\r\nHost: a\r\nUser-Agent: slow-body\r\n")
        conn.send(b"Content-Length: 10\r\n\r\nabc")
        response = conn.read_response()
        assert response.status == 408 and response.body == b"request timeout"
    # a request that arrives in time is not affected, on a connection idle for longer
    with RawConn(p.address(), 5) as conn:
        time.sleep(0.7)
        conn.send(b"GET /py/headers HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert conn.read_response().status == 200
    p.stop()
    access = AccessLog(log)
    # the head never ended: logged without its request line, like Envoy's codec-level replies
    assert '"- - HTTP/1.1" 408 - 0 15 ' in access.wait_for_line('"- - HTTP/1.1" 408')
    assert '"POST /py/echo HTTP/1.1" 408 - 3 15 ' in access.wait_for_line('"slow-body"')


def test_route_idle_timeout_overrides_the_stream_idle_timeout(
    inproc: Inproc, py_upstream: PyUpstream
) -> None:
    slow = route("py", prefix="/py/slow")
    slow["route"]["idle_timeout"] = "0.3s"
    cfg = bootstrap(
        [listener([vhost("py", [slow, route("py", prefix="/")])])],
        [cluster("py", py_upstream.socket_path)],
    )
    p = inproc(cfg)
    response = get(p.address(), "/py/slow?ms=1500")
    assert response.status == 408 and response.body == b"stream timeout"
    assert get(p.address(), "/py/other?ms=1500").status == 200  # the HCM's 5 minutes


def test_stdout_access_log(tmp_path: Path, py_upstream: PyUpstream) -> None:
    cfg = single_route_config(py_upstream.socket_path)
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    hcm["typed_config"]["access_log"] = [
        {
            "name": "envoy.access_loggers.stdout",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3"
                ".StdoutAccessLog",
                "log_format": {"text_format_source": {"inline_string": "stdout %PROTOCOL%\n"}},
            },
        }
    ]
    proxy = ProxyProcess(cfg, tmp_path).start()
    try:
        assert get(proxy.address(), "/py/x").status == 200
        assert wait_until(lambda: "stdout HTTP/1.1" in proxy.stdout(), 5)
    finally:
        assert proxy.stop() == 0, proxy.stderr()


def test_admin_access_log(tmp_path: Path, py_upstream: PyUpstream) -> None:
    log = tmp_path / "admin.log"
    cfg = single_route_config(py_upstream.socket_path)
    cfg["admin"] = {
        "access_log_path": str(log),
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
    }
    path = tmp_path / "proxy.yaml"
    path.write_text(json.dumps(cfg))
    proxy = CliProxy(path)
    try:
        assert wait_until(lambda: bool(proxy.admin_port), 30), proxy.stderr
        assert get(("127.0.0.1", proxy.admin_port), "/ready").status == 200
    finally:
        proxy.stop()
    assert '"GET /ready HTTP/1.1" 200 - 0 5 ' in AccessLog(log).wait_for_line("/ready")


def test_runtime_layers_on_the_admin(tmp_path: Path, py_upstream: PyUpstream) -> None:
    cfg = single_route_config(py_upstream.socket_path)
    cfg["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
    cfg["layered_runtime"] = {
        "layers": [
            {"name": "static_layer_0", "static_layer": {"envoy": {"a": 1}, "b": "x"}},
            {"name": "admin_layer_0", "admin_layer": {}},
        ]
    }
    path = tmp_path / "proxy.yaml"
    path.write_text(json.dumps(cfg))
    proxy = CliProxy(path)
    try:
        assert wait_until(lambda: bool(proxy.admin_port), 30), proxy.stderr
        admin = ("127.0.0.1", proxy.admin_port)
        assert get(admin, "/runtime_modify?b=y&c=z", method="POST").status == 200
        dump = json.loads(get(admin, "/runtime").body)
        assert dump["layers"] == ["static_layer_0", "admin_layer_0"]
        values = {k: v["final_value"] for k, v in dump["entries"].items()}
        assert values == {"envoy.a": "1", "b": "y", "c": "z"}
        assert get(admin, "/runtime_modify?b=y").status == 400  # a GET on a POST endpoint
    finally:
        proxy.stop()


def test_request_timeout_of_a_request_pipelined_behind_a_slow_one(
    inproc: Inproc, py_upstream: PyUpstream
) -> None:
    """Its clock starts when the one before it is done (Envoy reads it only then): no early
    408, and no request left hanging."""
    p = inproc(config(py_upstream, request_timeout="0.5s"))
    with RawConn(p.address(), 10) as conn:
        conn.send(
            b"GET /py/slow?ms=1000 HTTP/1.1\r\nHost: a\r\n\r\nGET /py/b HTTP/1.1\r\nHost: a\r\n"
        )
        t0 = time.monotonic()
        assert conn.read_response().status == 200  # after 1 s: longer than request_timeout
        second = conn.read_response()
        assert second.status == 408 and second.body == b"request timeout"
        assert 1.3 < time.monotonic() - t0 < 4
