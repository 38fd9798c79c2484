"""Request mirroring (request_mirror_policies): nginx answers the request, a copy goes to the
shadow cluster with a ``-shadow`` Host and the body, and nothing the shadow does (hang, reset,
absence) ever changes the primary request's status, its log line or its timing."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import SockPaths
from .support import (
    AccessLog,
    InProcessProxy,
    NginxInstance,
    PyUpstream,
    RawConn,
    bootstrap,
    cluster,
    envoy_log_re,
    get,
    listener,
    unlink_quietly,
    vhost,
    wait_until,
)

pytestmark = pytest.mark.integration

Inproc = Callable[[dict[str, Any]], InProcessProxy]

NGINX_ECHO = "/echo/headers"  # nginx's `return 200`: any method, the body read and dropped


class FaultyUpstream:
    """A Unix socket that misbehaves: ``hang`` accepts and never answers (reading what comes),
    ``reset`` accepts and closes at once. Counts the connections it accepted."""

    def __init__(self, path: str, mode: str) -> None:
        self.path = path
        self.mode = mode
        self.accepted = 0
        self.held: list[socket.socket] = []
        unlink_quietly(path)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(128)
        self.server.settimeout(0.05)
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.server.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            if self.mode == "reset":
                conn.close()
            else:
                conn.setblocking(False)
                self.held.append(conn)
            for held in self.held:  # drain what is sent, never answer
                try:
                    while held.recv(65536):
                        pass
                except OSError:
                    pass

    def close(self) -> None:
        self.stopping = True
        self.thread.join(5)
        for conn in self.held:
            conn.close()
        self.server.close()
        unlink_quietly(self.path)


@pytest.fixture
def faulty(sock_path: SockPaths) -> Iterator[Callable[[str], FaultyUpstream]]:
    made: list[FaultyUpstream] = []

    def make(mode: str) -> FaultyUpstream:
        up = FaultyUpstream(sock_path(f"faulty-{mode}"), mode)
        made.append(up)
        return up

    yield make
    for up in made:
        up.close()


@pytest.fixture
def shadow_py(sock_path: SockPaths) -> Iterator[PyUpstream]:
    up = PyUpstream(sock_path("shadow-py"))  # its own: the requests it records are this test's
    yield up
    up.close()


def mirror_route(
    prefix: str, *policies: dict[str, Any], timeout: str | None = None
) -> dict[str, Any]:
    action: dict[str, Any] = {"cluster": "nginx", "request_mirror_policies": list(policies)}
    if timeout is not None:
        action["timeout"] = timeout
    return {"match": {"prefix": prefix}, "route": action}


def config(
    primary: NginxInstance | PyUpstream,
    routes: list[dict[str, Any]],
    shadows: dict[str, str],
    log: Path | None = None,
    **listener_kw: Any,
) -> dict[str, Any]:
    """The routes' cluster, "nginx", is ``primary`` (nginx but where a test needs otherwise)."""
    return bootstrap(
        [listener([vhost("mirror", routes)], access_log=log, **listener_kw)],
        [cluster("nginx", primary.socket_path)]
        + [cluster(name, path) for name, path in shadows.items()],
    )


def post_chunked(address: tuple[str, int], path: str, body: bytes) -> int:
    host, port = address
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nTransfer-Encoding: chunked\r\n"
        "Connection: close\r\n\r\n"
    )
    with RawConn(address, 5) as conn:
        conn.send(head.encode() + body)
        return conn.read_response().status


def counters(p: InProcessProxy) -> dict[str, int]:
    async def raw() -> dict[str, int]:
        return p.server.raw_stats()[0]

    result: dict[str, int] = p.loop_thread.run(raw())
    return result


def wait_counter(p: InProcessProxy, name: str, value: int, timeout: float = 5.0) -> dict[str, int]:
    seen: dict[str, int] = {}

    def check() -> bool:
        seen.update(counters(p))
        return seen.get(name) == value

    assert wait_until(check, timeout, 0.02), f"{name}={seen.get(name)}, want {value}"
    return seen


def test_mirror_sends_the_request_with_a_shadow_host_and_its_body(
    nginx: NginxInstance, shadow_py: PyUpstream, inproc: Inproc, tmp_path: Path, user_agent: str
) -> None:
    log_path = tmp_path / "access.log"
    routes = [mirror_route("/", {"cluster": "shadow"})]
    p = inproc(config(nginx, routes, {"shadow": shadow_py.socket_path}, log_path))
    host, port = p.address()
    body = bytes(range(256)) * 40  # 10 KiB
    resp = get(
        (host, port),
        NGINX_ECHO,
        method="POST",
        body=body,
        headers={"User-Agent": user_agent, "x-envoy-internal": "false"},
    )
    assert resp.status == 200
    assert resp.body.startswith(b"host=127.0.0.1\n")  # nginx saw the client's Host, no suffix

    c = wait_counter(p, "cluster.shadow.upstream_rq_total", 1)
    assert c["cluster.shadow.upstream_rq_200"] == 1
    assert c["cluster.shadow.upstream_cx_total"] == 1
    assert c["cluster.nginx.upstream_rq_total"] == 1
    assert c["http.ingress_http.downstream_rq_total"] == 1  # the shadow is no downstream request
    assert c["cluster.shadow.upstream_rq_shadow_overflow"] == 0
    assert c["cluster.nginx.retry_or_shadow_abandoned"] == 0

    (shadowed,) = shadow_py.requests()
    headers = {k.lower(): v for k, v in shadowed["headers"]}
    assert shadowed["method"] == "POST"
    assert shadowed["path"] == NGINX_ECHO
    assert headers["host"] == f"127.0.0.1-shadow:{port}"  # before the port, as Envoy
    assert headers["user-agent"] == user_agent
    assert headers["x-envoy-internal"] == "true"
    assert headers["content-length"] == str(len(body))
    assert shadowed["body_length"] == len(body)
    assert shadowed["body_sha256"] == hashlib.sha256(body).hexdigest()

    p.stop()  # flushes the access log: one line, the primary's, as without a mirror
    (line,) = AccessLog(log_path).find(user_agent)
    expected = envoy_log_re(
        method="POST",
        path=NGINX_ECHO,
        status=200,
        received=len(body),
        sent=len(resp.body),
        user_agent=user_agent,
        authority=f"{host}:{port}",
        upstream=nginx.socket_path,
    )
    assert expected.match(line), line
    assert headers["x-request-id"] in line  # the same request id on the copy


def test_sampling_none_all_and_several_policies(
    nginx: NginxInstance, shadow_py: PyUpstream, inproc: Inproc, sock_path: SockPaths
) -> None:
    """0 %: never; no runtime_fraction: always; two policies: two copies, each its own Host
    rules (disable_shadow_host_suffix_append, host_rewrite_literal). A chunked request body is
    mirrored with a Content-Length."""
    other = PyUpstream(sock_path("shadow-other"))
    try:
        never = {"default_value": {"numerator": 0}}
        routes = [
            mirror_route("/index.html", {"cluster": "shadow", "runtime_fraction": never}),
            mirror_route(
                NGINX_ECHO,
                {"cluster": "shadow"},
                {
                    "cluster": "other",
                    "disable_shadow_host_suffix_append": True,
                    "host_rewrite_literal": "mirror.example",
                },
            ),
        ]
        shadows = {"shadow": shadow_py.socket_path, "other": other.socket_path}
        p = inproc(config(nginx, routes, shadows))
        for _ in range(5):
            assert get(p.address(), "/index.html").status == 200
        for _ in range(3):
            assert post_chunked(p.address(), NGINX_ECHO, b"5\r\nhello\r\n0\r\n\r\n") == 200
        c = wait_counter(p, "cluster.other.upstream_rq_total", 3)
        c = wait_counter(p, "cluster.shadow.upstream_rq_total", 3)
        assert c["cluster.nginx.upstream_rq_total"] == 8
        assert all(r["path"] == NGINX_ECHO for r in shadow_py.requests())
        for r in other.requests():
            headers = {k.lower(): v for k, v in r["headers"]}
            assert headers["host"] == "mirror.example"
            assert headers["content-length"] == "5"
            assert "transfer-encoding" not in headers
            assert r["body_length"] == 5
    finally:
        other.close()


@pytest.mark.parametrize("retry", [False, True])
def test_body_over_the_buffer_limit_is_not_mirrored(
    retry: bool, nginx: NginxInstance, shadow_py: PyUpstream, inproc: Inproc
) -> None:
    """No mirror, and retry_or_shadow_abandoned once on the route's cluster, also when the
    route may retry too (Envoy gives up both at once and counts once)."""
    routes = [mirror_route("/", {"cluster": "shadow"})]
    if retry:
        routes[0]["route"]["retry_policy"] = {"retry_on": "5xx"}
    p = inproc(config(nginx, routes, {"shadow": shadow_py.socket_path}, buffer_limit=4096))
    small = get(p.address(), NGINX_ECHO, method="POST", body=b"x" * 1000)
    big = get(p.address(), NGINX_ECHO, method="POST", body=b"y" * 64 * 1024)
    assert (small.status, big.status) == (200, 200)
    c = wait_counter(p, "cluster.nginx.retry_or_shadow_abandoned", 1)
    c = wait_counter(p, "cluster.shadow.upstream_rq_total", 1)
    assert c["cluster.nginx.upstream_rq_total"] == 2
    assert c["cluster.nginx.retry_or_shadow_abandoned"] == 1
    assert [r["body_length"] for r in shadow_py.requests()] == [1000]


@pytest.mark.parametrize("mode", ["hang", "reset", "missing"])
def test_a_failing_shadow_never_touches_the_primary(
    mode: str,
    nginx: NginxInstance,
    inproc: Inproc,
    faulty: Callable[[str], FaultyUpstream],
    sock_path: SockPaths,
    tmp_path: Path,
    user_agent: str,
) -> None:
    """The shadow accepts and hangs (it ends at the route timeout: 504, upstream_rq_timeout),
    resets (503), or has no socket file (503, a connect failure). The primary answers 200 each
    time, and its log lines are the same as without a mirror."""
    shadow_path = sock_path("gone") if mode == "missing" else faulty(mode).path
    log_path = tmp_path / "access.log"
    routes = [mirror_route("/", {"cluster": "shadow"}, timeout="0.3s")]
    p = inproc(config(nginx, routes, {"shadow": shadow_path}, log_path))
    n = 4
    for _ in range(n):
        resp = get(p.address(), "/index.html", headers={"User-Agent": user_agent}, timeout=5)
        assert resp.status == 200
    want = {"hang": 504, "reset": 503, "missing": 503}[mode]
    c = wait_counter(p, f"cluster.shadow.upstream_rq_{want}", n)
    assert c["cluster.shadow.upstream_rq_total"] == n
    assert c["cluster.nginx.upstream_rq_200"] == n
    assert c["http.ingress_http.downstream_rq_2xx"] == n
    if mode == "hang":
        assert c["cluster.shadow.upstream_rq_timeout"] == n
        wait_counter(p, "cluster.shadow.upstream_cx_destroy_local", n)  # each one aborted
    elif mode == "missing":
        assert c["cluster.shadow.upstream_cx_connect_fail"] == n
    p.stop()
    host, port = p.address()
    lines = AccessLog(log_path).find(user_agent)
    assert len(lines) == n, lines
    expected = envoy_log_re(
        path="/index.html",
        status=200,
        sent=612,
        user_agent=user_agent,
        authority=f"{host}:{port}",
        upstream=nginx.socket_path,
    )
    assert all(expected.match(line) for line in lines), lines


def test_shadows_in_flight_are_bounded(
    nginx: NginxInstance,
    inproc: Inproc,
    faulty: Callable[[str], FaultyUpstream],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At the cap, a mirror is dropped and counted (upstream_rq_shadow_overflow); the primary
    never waits for room."""
    from udsproxy.router import shadow

    monkeypatch.setattr(shadow, "MAX_IN_FLIGHT", 2)
    hang = faulty("hang")
    routes = [mirror_route("/", {"cluster": "shadow"}, timeout="1s")]
    p = inproc(config(nginx, routes, {"shadow": hang.path}))
    for _ in range(5):
        assert get(p.address(), "/index.html", timeout=5).status == 200
    c = wait_counter(p, "cluster.shadow.upstream_rq_shadow_overflow", 3)
    assert c["cluster.shadow.upstream_rq_total"] == 0  # the two in flight still hang
    assert wait_until(lambda: hang.accepted == 2, 5)
    # the route timeout ends them and gives their room back
    c = wait_counter(p, "cluster.shadow.upstream_rq_504", 2)
    assert shadow.in_flight() == (0, 0)
    assert get(p.address(), "/index.html", timeout=5).status == 200
    wait_counter(p, "cluster.shadow.upstream_rq_shadow_overflow", 3)  # room again: no overflow
    assert wait_until(lambda: hang.accepted == 3, 5)


def test_mirroring_with_two_workers(
    nginx: NginxInstance, shadow_py: PyUpstream, tmp_path: Path
) -> None:
    """Each worker mirrors what it serves (the in-flight bound is per worker)."""
    from .support import ProxyProcess

    routes = [mirror_route("/", {"cluster": "shadow"})]
    cfg = config(nginx, routes, {"shadow": shadow_py.socket_path})
    proc = ProxyProcess(cfg, tmp_path, "--concurrency", "2").start()
    try:
        n = 20
        for i in range(n):
            assert get(proc.address(), f"/index.html?i={i}").status == 200
        assert wait_until(lambda: len(shadow_py.requests()) == n, 10), len(shadow_py.requests())
        assert sorted(r["path"] for r in shadow_py.requests()) == sorted(
            f"/index.html?i={i}" for i in range(n)
        )
    finally:
        assert proc.stop() == 0, proc.stderr()


def test_the_shadow_starts_when_the_request_is_complete(
    py_upstream: PyUpstream, shadow_py: PyUpstream, inproc: Inproc
) -> None:
    """A body sent in two parts: nothing is mirrored before its last byte (Envoy shadows at the
    end of the request), then the whole body is. The primary here reads the whole body before
    answering (nginx's `return` answers at once, and a request answered before it is complete
    is not mirrored, in Envoy neither: its router is gone by then)."""
    routes = [mirror_route("/", {"cluster": "shadow"})]
    p = inproc(config(py_upstream, routes, {"shadow": shadow_py.socket_path}))
    host, port = p.address()
    head = (
        f"POST /py/sha256 HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 10\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with RawConn((host, port), 5) as conn:
        conn.send(head + b"01234")
        time.sleep(0.2)
        assert shadow_py.requests() == []
        conn.send(b"56789")
        assert conn.read_response().status == 200
    assert wait_until(lambda: len(shadow_py.requests()) == 1, 5)
    assert shadow_py.requests()[0]["body_sha256"] == hashlib.sha256(b"0123456789").hexdigest()
