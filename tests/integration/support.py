"""Real processes and real sockets for the integration tests.

- ``NginxInstance``: nginx from ``conf/nginx-test.conf``, on a unique socket under /dev/shm.
- ``PyUpstream``: a small threaded HTTP/1.1 server on a Unix socket for what nginx cannot do
  natively (echo a request body, hash an upload, sleep, send a broken response, record requests).
- ``WsUpstream``: a ``websockets`` echo server on a Unix socket.
- ``ProxyProcess``: ``python -m udsproxy --config-yaml ...``, address read from its stderr.
- ``LoopThread`` / ``InProcessProxy``: the embedding API on a uvloop in a background thread.
- Helpers: config builders, a raw HTTP/1.1 client connection, the access-log reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.server
import itertools
import json
import os
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
NGINX_TEMPLATE = REPO / "conf" / "nginx-test.conf"

CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")

# Envoy's local replies (pinned wording: the "older Envoy" forms of envoy-parity.md section 4.3).
UF_BODY = (
    b"upstream connect error or disconnect/reset before headers. reset reason: connection failure"
)
UC_BODY = (
    b"upstream connect error or disconnect/reset before headers. "
    b"reset reason: connection termination"
)
UT_BODY = b"upstream request timeout"

ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
FILE_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def require(ok: bool, what: str) -> None:
    """Skip when a tool is missing, except under CI=true, where a skip would hide a gap: fail."""
    if ok:
        return
    if CI:
        pytest.fail(f"{what} (CI=true: integration tests must run, not skip)", pytrace=False)
    pytest.skip(what)


def find_nginx() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def shm_dir() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path("/tmp")


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def unix_socket_live(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(path)
        except OSError:
            return False
        return True


def unlink_quietly(path: str | Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# nginx


@dataclass
class Site:
    """The files nginx serves: name -> bytes are on disk, sizes and digests kept here."""

    root: Path
    sizes: dict[str, int] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, data: bytes) -> None:
        path = self.root / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.sizes[name] = len(data)
        self.digests[name] = sha256(data)

    def add_random(self, name: str, size: int) -> None:
        path = self.root / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        with path.open("wb") as f:
            left = size
            while left:
                chunk = os.urandom(min(left, 1 << 20))
                h.update(chunk)
                f.write(chunk)
                left -= len(chunk)
        self.sizes[name] = size
        self.digests[name] = h.hexdigest()


def index_html(size: int = 612) -> bytes:
    head = (
        b"<!DOCTYPE html>\n<html>\n<head>\n<title>Welcome to udsproxy's test nginx!</title>\n"
        b"</head>\n<body>\n<h1>It works</h1>\n<p>Served by nginx over a Unix domain socket.</p>\n"
    )
    tail = b"</body>\n</html>\n"
    pad = size - len(head) - len(tail) - len(b"<!--  -->\n")
    assert pad >= 0
    body = head + b"<!-- " + b"x" * pad + b" -->\n" + tail
    assert len(body) == size
    return body


def nginx_has_module(binary: str, module: str) -> bool:
    out = subprocess.run([binary, "-V"], capture_output=True, timeout=10, check=False)
    return module.encode() in out.stderr + out.stdout


DAV_LOCATION = """\
        # WebDAV PUT: a real nginx request-body sink for the upload tests (read back with GET).
        location /upload/ {
            dav_methods PUT DELETE;
            create_full_put_path on;
            client_max_body_size 64m;
            client_body_buffer_size 1m;
        }
"""


class NginxInstance:
    """One nginx master (own process group) rendered from conf/nginx-test.conf."""

    def __init__(
        self,
        binary: str,
        prefix: Path,
        socket_path: str,
        root: Path,
        *,
        keepalive_timeout: str = "75s",
        keepalive_requests: int = 1000,
        dav: bool = False,
    ) -> None:
        self.binary = binary
        self.prefix = prefix
        self.socket_path = socket_path
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None
        prefix.mkdir(parents=True, exist_ok=True)
        conf = NGINX_TEMPLATE.read_text()
        subs = {
            "USER": "user root;" if os.geteuid() == 0 else "",
            "PREFIX": str(prefix),
            "SOCKET": socket_path,
            "ROOT": str(root),
            "KEEPALIVE_TIMEOUT": keepalive_timeout,
            "KEEPALIVE_REQUESTS": str(keepalive_requests),
            "DAV_LOCATION": DAV_LOCATION if dav else "",
        }
        for key, value in subs.items():
            conf = conf.replace(f"@@{key}@@", value)
        assert not re.search(r"@@[A-Z_]+@@", conf), conf
        self.conf_path = prefix / "nginx.conf"
        self.conf_path.write_text(conf)

    def start(self, timeout: float = 10.0) -> NginxInstance:
        unlink_quietly(self.socket_path)  # nginx will not bind over a stale socket file
        with (self.prefix / "stderr.log").open("ab") as err:
            self.proc = subprocess.Popen(
                [self.binary, "-p", str(self.prefix), "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
        proc = self.proc
        if not wait_until(
            lambda: proc.poll() is not None or unix_socket_live(self.socket_path), timeout
        ):
            self.kill()
            raise RuntimeError(f"nginx did not listen on {self.socket_path}:\n{self.logs()}")
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {proc.returncode}:\n{self.logs()}")
        return self

    def logs(self) -> str:
        out = []
        for name in ("stderr.log", "error.log"):
            path = self.prefix / name
            if path.exists():
                out.append(f"--- {name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(out)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        """Graceful (SIGQUIT): workers finish, nginx unlinks its socket."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL master and workers: like a crash or OOM kill, the socket file stays behind."""
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)

    def close(self) -> None:
        self.stop()
        self.kill()
        unlink_quietly(self.socket_path)


# --------------------------------------------------------------------------------------------
# A Python upstream on a Unix socket


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = False

    def __init__(self, path: str) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.conn_ids = itertools.count(1)
        super().__init__(path, _PyHandler)


def _decode_chunked(rfile: Any, sink: Callable[[bytes], None]) -> None:
    while True:
        line = rfile.readline(1024)
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return
        left = size
        while left:
            chunk = rfile.read(min(left, 1 << 16))
            if not chunk:
                raise ConnectionError("eof in chunk")
            sink(chunk)
            left -= len(chunk)
        rfile.readline(16)


class _PyHandler(http.server.BaseHTTPRequestHandler):
    """Paths (all under /py/):

    sha256       200 JSON {sha256, length, chunked, content_length} of the request body
    slow-sink?slow_s=S   the same, reading the body at ~1.6 MB/s for the first S seconds
    echo         200, the request body back (Content-Length)
    headers      200 JSON {method, path, version, headers: [[name, value], ...]}
    slow?ms=N    sleeps N ms, then 200 "slow"
    chunked?n=K&size=S   a chunked response: chunk i is S bytes of chr(65 + i % 26)
    early-hints  103 then 200
    bad-cl       a response with two different Content-Length values (must become 502 UPE)
    nul-header   a response with a NUL in a header value (502 UPE)
    drop         closes the connection without answering (503 UC)
    close        200 with Connection: close
    status/N     answers status N with no body
    anything else  200 "<METHOD> <path>\\n"; every request is recorded in server.requests
    """

    protocol_version = "HTTP/1.1"
    server: _UnixHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def address_string(self) -> str:
        return "unix"

    def setup(self) -> None:
        super().setup()
        self.conn_id = next(self.server.conn_ids)  # one handler per upstream connection

    def _body(self, keep: bool, slow_s: float = 0.0) -> tuple[bytes, str, int, bool]:
        h = hashlib.sha256()
        parts: list[bytes] = []
        length = 0
        slow_until = time.monotonic() + slow_s

        def sink(chunk: bytes) -> None:
            nonlocal length
            h.update(chunk)
            length += len(chunk)
            if keep:
                parts.append(chunk)
            if slow_s and time.monotonic() < slow_until:
                time.sleep(0.01)

        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        if chunked:
            _decode_chunked(self.rfile, sink)
        else:
            left = int(self.headers.get("Content-Length", "0") or 0)
            while left:
                chunk = self.rfile.read(min(left, 16384 if slow_s else 1 << 16))
                if not chunk:
                    raise ConnectionError("eof in body")
                sink(chunk)
                left -= len(chunk)
        return b"".join(parts), h.hexdigest(), length, chunked

    def _reply(
        self,
        status: int,
        body: bytes = b"",
        ctype: str = "text/plain",
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("X-Upstream", "py")
        if status not in (204, 304) and not 100 <= status < 200:
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
        for k, v in extra or []:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and status not in (204, 304):
            self.wfile.write(body)

    def _raw(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()
        self.close_connection = True

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, ValueError):
            self.close_connection = True

    def _handle(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        name = url.path.removeprefix("/py/")
        slow_s = float(query.get("slow_s", "0")) if name == "slow-sink" else 0.0
        body, digest, length, chunked = self._body(keep=name == "echo", slow_s=slow_s)
        with self.server.lock:
            self.server.requests.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": list(self.headers.items()),
                    "body_length": length,
                    "body_sha256": digest,
                    "conn": self.conn_id,
                }
            )
        if name in ("sha256", "slow-sink"):
            info = {
                "sha256": digest,
                "length": length,
                "chunked": chunked,
                "content_length": self.headers.get("Content-Length"),
            }
            self._reply(200, json.dumps(info).encode(), "application/json")
        elif name == "echo":
            self._reply(200, body, self.headers.get("Content-Type", "application/octet-stream"))
        elif name == "headers":
            info2 = {
                "method": self.command,
                "path": self.path,
                "version": self.request_version,
                "headers": [[k, v] for k, v in self.headers.items()],
            }
            self._reply(200, json.dumps(info2).encode(), "application/json")
        elif name == "slow":
            time.sleep(int(query.get("ms", "1000")) / 1000)
            self._reply(200, b"slow\n")
        elif name == "chunked":
            n, size = int(query.get("n", "10")), int(query.get("size", "1000"))
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(n):
                chunk = bytes([65 + i % 26]) * size
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        elif name == "early-hints":
            self.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            self.wfile.flush()
            self._reply(200, b"after hints\n")
        elif name == "bad-cl":
            self._raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")
        elif name == "nul-header":
            self._raw(b"HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\nContent-Length: 2\r\n\r\nok")
        elif name == "drop":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        elif name == "close":
            self._reply(200, b"closing\n", extra=[("Connection", "close")])
            self.close_connection = True
        elif name.startswith("status/"):
            self._reply(int(name.split("/", 1)[1]))
        else:
            self._reply(200, f"{self.command} {self.path}\n".encode())

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = do_PATCH = do_OPTIONS = _handle


class PyUpstream:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        unlink_quietly(socket_path)
        self.server = _UnixHTTPServer(socket_path)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def requests(self) -> list[dict[str, Any]]:
        with self.server.lock:
            return list(self.server.requests)

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests()]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
        unlink_quietly(self.socket_path)


class WsUpstream:
    """websockets' sync server on a Unix socket: /ws/echo echoes, /ws/info sends the handshake."""

    def __init__(self, socket_path: str) -> None:
        from websockets.sync.server import ServerConnection, unix_serve

        def handler(conn: ServerConnection) -> None:
            request = conn.request
            assert request is not None
            if request.path.startswith("/ws/info"):
                conn.send(
                    json.dumps({"path": request.path, "headers": list(request.headers.raw_items())})
                )
            for message in conn:
                conn.send(message)

        self.socket_path = socket_path
        unlink_quietly(socket_path)
        self.server = unix_serve(handler, socket_path, max_size=16 << 20, compression=None)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(5)
        unlink_quietly(self.socket_path)


# --------------------------------------------------------------------------------------------
# Config builders (Envoy v3 bootstrap dicts)


def route(
    cluster: str,
    *,
    prefix: str | None = None,
    path: str | None = None,
    regex: str | None = None,
    timeout: str | None = None,
    prefix_rewrite: str | None = None,
    websocket: bool = False,
) -> dict[str, Any]:
    if prefix is not None:
        match: dict[str, Any] = {"prefix": prefix}
    elif path is not None:
        match = {"path": path}
    else:
        assert regex is not None
        match = {"safe_regex": {"regex": regex}}
    action: dict[str, Any] = {"cluster": cluster}
    if timeout is not None:
        action["timeout"] = timeout
    if prefix_rewrite is not None:
        action["prefix_rewrite"] = prefix_rewrite
    if websocket:
        action["upgrade_configs"] = [{"upgrade_type": "websocket"}]
    return {"match": match, "route": action}


def vhost(
    name: str, routes: list[dict[str, Any]], domains: list[str] | None = None
) -> dict[str, Any]:
    return {"name": name, "domains": domains or ["*"], "routes": routes}


def listener(
    virtual_hosts: list[dict[str, Any]],
    *,
    name: str = "ingress_http",
    access_log: str | Path | None = None,
    port: int = 0,
    address: str = "127.0.0.1",
    buffer_limit: int | None = None,
    **hcm_fields: Any,
) -> dict[str, Any]:
    hcm: dict[str, Any] = {
        "@type": HCM_TYPE,
        "stat_prefix": name,
        "codec_type": "AUTO",
        "use_remote_address": True,
        "route_config": {"name": "local_route", "virtual_hosts": virtual_hosts},
        "http_filters": [
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}
        ],
    }
    if access_log is not None:
        hcm["access_log"] = [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {"@type": FILE_LOG_TYPE, "path": str(access_log)},
            }
        ]
    hcm.update(hcm_fields)
    out: dict[str, Any] = {
        "name": name,
        "address": {"socket_address": {"address": address, "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }
    if buffer_limit is not None:
        out["per_connection_buffer_limit_bytes"] = buffer_limit
    return out


def cluster(
    name: str,
    *socket_paths: str,
    connect_timeout: str = "0.25s",
    idle_timeout: str | None = "60s",
    max_requests_per_connection: int | None = None,
    buffer_limit: int | None = None,
) -> dict[str, Any]:
    common: dict[str, Any] = {}
    if idle_timeout is not None:
        common["idle_timeout"] = idle_timeout
    if max_requests_per_connection is not None:
        common["max_requests_per_connection"] = max_requests_per_connection
    out: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "lb_policy": "ROUND_ROBIN",
        "connect_timeout": connect_timeout,
        "typed_extension_protocol_options": {
            HTTP_OPTIONS_KEY: {
                "@type": "type.googleapis.com/" + HTTP_OPTIONS_KEY,
                "common_http_protocol_options": common,
                "explicit_http_config": {"http_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"pipe": {"path": p}}}} for p in socket_paths
                    ]
                }
            ],
        },
    }
    if buffer_limit is not None:
        out["per_connection_buffer_limit_bytes"] = buffer_limit
    return out


def bootstrap(listeners: list[dict[str, Any]], clusters: list[dict[str, Any]]) -> dict[str, Any]:
    return {"static_resources": {"listeners": listeners, "clusters": clusters}}


def single_route_config(
    socket_path: str, access_log: Path | None = None, **cluster_kw: Any
) -> dict[str, Any]:
    """prefix "/" -> cluster "hugo" -> one pipe endpoint: the article's shape, on port 0."""
    return bootstrap(
        [listener([vhost("hugo", [route("hugo", prefix="/")])], access_log=access_log)],
        [cluster("hugo", socket_path, **cluster_kw)],
    )


# --------------------------------------------------------------------------------------------
# The proxy: as a subprocess, and in-process


_LISTENING = re.compile(r"udsproxy: listener '(?P<name>[^']*)' listening on (?P<addr>\S+)")


def _parse_addr(text: str) -> tuple[str, int] | str:
    if text.startswith(("/", "@")):
        return text
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, int(port)


class ProxyProcess:
    """``python -m udsproxy --config-yaml <yaml>``; listeners found from its stderr."""

    def __init__(self, config: dict[str, Any], workdir: Path, *extra_args: str) -> None:
        self.config = config
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.args = [
            sys.executable,
            "-m",
            "udsproxy",
            "--config-yaml",
            yaml.safe_dump(config, sort_keys=False),
            # one process unless a test asks for workers: its pid is the serving process
            *(() if "--concurrency" in extra_args else ("--concurrency", "1")),
            *extra_args,
        ]
        self.proc: subprocess.Popen[str] | None = None
        self.stderr_lines: list[str] = []
        self.listeners: dict[str, tuple[str, int] | str] = {}
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._stdout_file = workdir / "proxy.stdout"

    def start(self, timeout: float = 30.0) -> ProxyProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with self._stdout_file.open("w") as out:
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.PIPE,
                text=True,
                cwd=self.workdir,
                env=env,
            )
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        expected = len(self.config["static_resources"]["listeners"])
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.listeners) < expected:
                if self.proc.poll() is not None and not self._reader.is_alive():
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.1))
        if len(self.listeners) < expected:
            self.stop()
            raise RuntimeError(
                f"udsproxy did not announce its listeners (exit {self.proc.returncode}):\n"
                + self.stderr()
            )
        return self

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.stderr_lines.append(line)
                m = _LISTENING.search(line)
                if m:
                    self.listeners[m["name"]] = _parse_addr(m["addr"])
                self._cond.notify_all()
        self.proc.stderr.close()

    def stderr(self) -> str:
        with self._cond:
            return "".join(self.stderr_lines)

    def stdout(self) -> str:
        return self._stdout_file.read_text(errors="replace")

    def address(self, name: str | None = None) -> tuple[str, int]:
        addr = self.listeners[name] if name else next(iter(self.listeners.values()))
        assert isinstance(addr, tuple), addr
        return addr

    @property
    def port(self) -> int:
        return self.address()[1]

    @property
    def url(self) -> str:
        host, port = self.address()
        return f"http://{host}:{port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)
        return proc.returncode


class LoopThread:
    """A uvloop event loop running in a daemon thread, for in-process proxies."""

    def __init__(self) -> None:
        import uvloop

        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="proxy-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def _cancel_rest() -> None:
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(_cancel_rest(), 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class InProcessProxy:
    """``Server.start(config)`` on a LoopThread."""

    def __init__(self, loop_thread: LoopThread, config: dict[str, Any]) -> None:
        from udsproxy.server import Server

        self.loop_thread = loop_thread
        self.config = config

        async def _start() -> Any:
            return await Server.start(config)

        self.server = loop_thread.run(_start())
        self._stopped = False

    def address(self, name: str | None = None) -> tuple[str, int]:
        async def _addr() -> tuple[str, int]:
            host, port = self.server.address(name)
            return ("127.0.0.1" if host in ("0.0.0.0", "") else host), port

        result: tuple[str, int] = self.loop_thread.run(_addr())
        return result

    @property
    def port(self) -> int:
        return self.address()[1]

    @property
    def url(self) -> str:
        host, port = self.address()
        return f"http://{host}:{port}"

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.loop_thread.run(self.server.stop())


# --------------------------------------------------------------------------------------------
# Clients


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    chunked: bool = False
    interim: list[int] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]


class RawConn:
    """A TCP client: writes exact bytes, parses HTTP/1.1 responses off one buffered stream."""

    def __init__(
        self, address: tuple[str, int], timeout: float = 5.0, rcvbuf: int | None = None
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self.rfile = self.sock.makefile("rb")

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _line(self) -> bytes:
        line = self.rfile.readline(65537)
        if not line:
            raise EOFError("connection closed")
        if not line.endswith(b"\n"):
            raise AssertionError(f"overlong or truncated line: {line[:100]!r}")
        return line

    def read_head(self) -> tuple[int, str, list[tuple[str, str]]]:
        status_line = self._line().rstrip(b"\r\n")
        version, _, rest = status_line.partition(b" ")
        assert version in (b"HTTP/1.1", b"HTTP/1.0"), status_line
        code, _, reason = rest.partition(b" ")
        headers: list[tuple[str, str]] = []
        while True:
            line = self._line()
            if line in (b"\r\n", b"\n"):
                break
            name, sep, value = line.rstrip(b"\r\n").partition(b":")
            assert sep, line
            headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        return int(code), reason.decode("latin-1"), headers

    def read_response(self, *, head: bool = False, skip_interim: bool = True) -> Response:
        interim: list[int] = []
        while True:
            status, reason, headers = self.read_head()
            if 100 <= status < 200 and status != 101 and skip_interim:
                interim.append(status)
                continue
            break
        resp = Response(status, reason, headers, b"", interim=interim)
        if head or status in (204, 304) or 100 <= status < 200:
            return resp
        te = (resp.header("transfer-encoding") or "").lower()
        if "chunked" in te:
            resp.chunked = True
            parts: list[bytes] = []
            _decode_chunked(self.rfile, parts.append)
            resp.body = b"".join(parts)
        elif resp.header("content-length") is not None:
            resp.body = self.read_exact(int(resp.header("content-length") or 0))
        else:
            resp.body = self.read_until_eof()
        return resp

    def read_exact(self, n: int) -> bytes:
        parts = []
        while n:
            chunk = self.rfile.read(min(n, 1 << 20))
            if not chunk:
                raise EOFError(f"eof with {n} bytes to go")
            parts.append(chunk)
            n -= len(chunk)
        return b"".join(parts)

    def read_until_eof(self) -> bytes:
        parts = []
        while True:
            try:
                chunk = self.rfile.read1(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            parts.append(chunk)
        return b"".join(parts)

    def closed_by_peer(self, timeout: float = 3.0) -> bool:
        """True if the peer closes (EOF or RST) with no further bytes within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            return self.rfile.read1(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def get(
    address: tuple[str, int],
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    timeout: float = 10.0,
) -> Response:
    """One request on a fresh connection (Connection: close)."""
    host, port = address
    hdrs = {"Host": f"{host}:{port}", "User-Agent": "udsproxy-tests", "Connection": "close"}
    hdrs.update(headers or {})
    if body or method in ("POST", "PUT"):
        hdrs.setdefault("Content-Length", str(len(body)))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    with RawConn(address, timeout) as conn:
        conn.send(head.encode("latin-1") + b"\r\n" + body)
        return conn.read_response(head=method == "HEAD")


def request_bytes(
    method: str,
    path: str,
    host: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --------------------------------------------------------------------------------------------
# Access log


UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
START_TIME_RE = r"\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\]"


def envoy_log_re(
    *,
    method: str = "GET",
    path: str,
    status: int,
    flags: str = "-",
    received: int | str = 0,
    sent: int | str,
    service_time: str = r"\d+",
    xff: str = "127.0.0.1",
    user_agent: str,
    request_id: str = UUID_RE,
    authority: str,
    upstream: str,
    protocol: str = "HTTP/1.1",
) -> re.Pattern[str]:
    """Envoy's default format (envoy-parity.md 1.1), the variable parts as regexes."""
    e = re.escape
    return re.compile(
        rf"^{START_TIME_RE} "
        rf'"{e(method)} {e(path)} {e(protocol)}" {status} {e(flags)} {received} {sent} \d+ '
        rf'{service_time} "{e(xff)}" "{e(user_agent)}" "{request_id}" "{e(authority)}" '
        rf'"{e(upstream)}"$'
    )


class AccessLog:
    """Reads a file access log; the proxy flushes it at most every second."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[str]:
        try:
            return self.path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def find(self, needle: str) -> list[str]:
        return [line for line in self.lines() if needle in line]

    def wait_for_line(self, needle: str, timeout: float = 5.0) -> str:
        found: list[str] = []

        def check() -> bool:
            found[:] = self.find(needle)
            return bool(found)

        if not wait_until(check, timeout, 0.05):
            tail = "\n".join(self.lines()[-20:])
            raise AssertionError(f"no access log line containing {needle!r}; last lines:\n{tail}")
        assert len(found) == 1, found
        return found[0]


def iter_chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


_LISTENER_LINE = re.compile(r"udsproxy: listener '([^']*)' listening on 127\.0\.0\.1:(\d+)")
_ADMIN_LINE = re.compile(r"udsproxy: admin listening on 127\.0\.0\.1:(\d+)")


class CliProxy:
    """``python -m udsproxy -c FILE [args]`` as a subprocess; listener and admin ports are read
    from its stderr as it announces them."""

    def __init__(self, config_path: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "udsproxy", "-c", str(config_path), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        self.lines: list[str] = []
        self.ports: dict[str, int] = {}
        self.admin_port = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if m := _LISTENER_LINE.search(line):
                self.ports[m.group(1)] = int(m.group(2))
            if m := _ADMIN_LINE.search(line):
                self.admin_port = int(m.group(1))

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_listening(self, name: str, timeout: float = 30) -> int:
        assert wait_until(lambda: name in self.ports or self.proc.poll() is not None, timeout)
        assert name in self.ports, self.stderr
        return self.ports[name]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise
        finally:
            self._reader.join(5)
            if self.proc.stderr is not None:
                self.proc.stderr.close()


class BackgroundClients:
    """Client threads for load tests: each runs ``self.client(i)`` while ``running()``: until
    the with-block ends, and never longer than ``bound`` seconds (a load stops by itself)."""

    def __init__(self, clients: int, join_timeout: float, bound: float = 60.0) -> None:
        self._stop = threading.Event()
        self._deadline = time.monotonic() + bound
        self._join_timeout = join_timeout
        self._threads = [
            threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(clients)
        ]

    def client(self, i: int) -> None:
        raise NotImplementedError

    def running(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self._deadline

    def __enter__(self) -> BackgroundClients:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self._join_timeout)
