"""Fixtures: a real nginx on a unique socket under /dev/shm, helper upstreams, and the proxy.

Session-scoped (started once):
  site         generated files: index.html (612 B), files/100k.bin, 1m.bin, 10m.bin (random)
  nginx        nginx from conf/nginx-test.conf on /dev/shm/udsproxy-test-<pid>-<rand>-main.sock
  py_upstream  tests/integration/support.py:PyUpstream on its own socket (echo, sha256, slow, ...)
  ws_upstream  a websockets echo server on its own socket
  proxy        `python -m udsproxy --config-yaml ...` on 127.0.0.1:0 in front of all three,
               access log in a file (proxy.log); the address comes from its stderr
Per test:
  make_nginx   more nginx instances (e.g. keepalive_timeout 1s, or one to stop)
  inproc       factory: the embedding API (Server.start) on a uvloop thread, for dedicated configs
  sock_path    factory: fresh unique socket paths, removed afterwards

Without nginx the tests that need it skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .support import (
    AccessLog,
    InProcessProxy,
    LoopThread,
    NginxInstance,
    ProxyProcess,
    PyUpstream,
    Site,
    WsUpstream,
    bootstrap,
    cluster,
    find_nginx,
    index_html,
    listener,
    nginx_has_module,
    require,
    route,
    shm_dir,
    unlink_quietly,
    vhost,
)

RUN_ID = f"{os.getpid()}-{secrets.token_hex(3)}"

# Summary numbers other tests report (the slow reader's RSS), printed at the end of the run.
REPORT: dict[str, str] = {}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if REPORT:
        terminalreporter.section("udsproxy integration measurements")
        for key, value in REPORT.items():
            terminalreporter.write_line(f"{key}: {value}")


class SockPaths:
    def __init__(self) -> None:
        self.made: list[str] = []

    def __call__(self, name: str) -> str:
        path = str(shm_dir() / f"udsproxy-test-{RUN_ID}-{name}-{secrets.token_hex(2)}.sock")
        assert len(path.encode()) < 108, path
        self.made.append(path)
        return path

    def cleanup(self) -> None:
        for path in self.made:
            unlink_quietly(path)


@pytest.fixture(scope="session")
def session_sock_path() -> Iterator[SockPaths]:
    paths = SockPaths()
    yield paths
    paths.cleanup()


@pytest.fixture
def sock_path() -> Iterator[SockPaths]:
    paths = SockPaths()
    yield paths
    paths.cleanup()


@pytest.fixture(scope="session")
def nginx_bin() -> str:
    binary = find_nginx()
    require(binary is not None, "nginx is not installed (apt-get install nginx-light)")
    assert binary is not None
    return binary


@pytest.fixture(scope="session")
def nginx_dav(nginx_bin: str) -> bool:
    return nginx_has_module(nginx_bin, "http_dav_module")


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    s = Site(tmp_path_factory.mktemp("site"))
    s.add("/index.html", index_html(612))
    s.add_random("/files/100k.bin", 100 * 1024)
    s.add_random("/files/1m.bin", 1 << 20)
    s.add_random("/files/10m.bin", 10 << 20)
    (s.root / "upload").mkdir()
    return s


@pytest.fixture(scope="session")
def nginx(
    nginx_bin: str,
    nginx_dav: bool,
    site: Site,
    tmp_path_factory: pytest.TempPathFactory,
    session_sock_path: SockPaths,
) -> Iterator[NginxInstance]:
    inst = NginxInstance(
        nginx_bin,
        tmp_path_factory.mktemp("nginx-main"),
        session_sock_path("main"),
        site.root,
        dav=nginx_dav,
    )
    inst.start()
    yield inst
    inst.close()


@pytest.fixture
def make_nginx(
    nginx_bin: str, site: Site, tmp_path: Path, sock_path: SockPaths
) -> Iterator[Callable[..., NginxInstance]]:
    made: list[NginxInstance] = []

    def make(name: str = "extra", **kw: Any) -> NginxInstance:
        inst = NginxInstance(
            nginx_bin, tmp_path / f"nginx-{name}", sock_path(name), site.root, **kw
        )
        made.append(inst)
        return inst.start()

    yield make
    for inst in made:
        inst.close()


@pytest.fixture(scope="session")
def py_upstream(session_sock_path: SockPaths) -> Iterator[PyUpstream]:
    up = PyUpstream(session_sock_path("py"))
    yield up
    up.close()


@pytest.fixture(scope="session")
def ws_upstream(session_sock_path: SockPaths) -> Iterator[WsUpstream]:
    up = WsUpstream(session_sock_path("ws"))
    yield up
    up.close()


def main_routes() -> list[dict[str, Any]]:
    """The session proxy's routes (first match wins). Anything else is 404 NR."""
    return [
        route("ws", path="/ws-noupgrade"),
        route("ws", prefix="/ws/", websocket=True),
        route("py", prefix="/py/", timeout="1s"),
        route("py", regex="^/regex/[0-9]+$"),
        route("nginx", prefix="/rewrite/", prefix_rewrite="/files/"),
        route("nginx", path="/"),
        route("nginx", prefix="/index.html"),
        route("nginx", prefix="/files/"),
        route("nginx", prefix="/gzip/"),
        route("nginx", prefix="/status/"),
        route("nginx", prefix="/upload/"),
    ]


@pytest.fixture(scope="session")
def proxy_log_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("proxy") / "access.log"


@pytest.fixture(scope="session")
def proxy(
    nginx: NginxInstance,
    py_upstream: PyUpstream,
    ws_upstream: WsUpstream,
    proxy_log_path: Path,
) -> Iterator[ProxyProcess]:
    config = bootstrap(
        [listener([vhost("test", main_routes())], access_log=proxy_log_path)],
        [
            cluster("nginx", nginx.socket_path),
            cluster("py", py_upstream.socket_path),
            cluster("ws", ws_upstream.socket_path),
        ],
    )
    proc = ProxyProcess(config, proxy_log_path.parent).start()
    yield proc
    rc = proc.stop()
    assert rc == 0, f"udsproxy exited with {rc} on SIGTERM:\n{proc.stderr()}"


@pytest.fixture(scope="session")
def proxy_log(proxy: ProxyProcess, proxy_log_path: Path) -> AccessLog:
    return AccessLog(proxy_log_path)


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture
def inproc(loop_thread: LoopThread) -> Iterator[Callable[[dict[str, Any]], InProcessProxy]]:
    started: list[InProcessProxy] = []

    def start(config: dict[str, Any]) -> InProcessProxy:
        p = InProcessProxy(loop_thread, config)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


@pytest.fixture
def user_agent(request: pytest.FixtureRequest) -> str:
    """A User-Agent unique to the test, to find its access-log lines."""
    return f"udsproxy-test/{request.node.name}-{secrets.token_hex(3)}"
