"""``udsproxy demo``: the article's scenario on one machine.

nginx serves a small sample site on a Unix socket (``/dev/shm/hugo.sock`` by default) and udsproxy
listens on TCP :10000 in front of it, logging every request in Envoy's default format on stdout.
The proxy config is the one in ``conf/proxy.yaml``, with the chosen port and socket.

nginx runs as a child process with a config written to a temp dir (pid, logs and temp paths
there), and is stopped by its PID on exit. nginx does not unlink a stale socket file when it
starts, so the demo removes one first (but never a socket something is still listening on).
Without nginx the demo says so and serves the site from a small built-in HTTP/1.1 upstream on the
same socket instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import errno
import grp
import mimetypes
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any, cast

import httptools

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_SOCKET",
    "SITE_DIR",
    "BuiltinUpstream",
    "DemoError",
    "Nginx",
    "find_nginx",
    "main",
    "proxy_config",
    "remove_stale_socket",
]

DEFAULT_PORT = 10000
DEFAULT_SOCKET = "/dev/shm/hugo.sock"
SITE_DIR = Path(__file__).resolve().with_name("demo_site")

NGINX_START_TIMEOUT = 10.0
NGINX_STOP_TIMEOUT = 5.0


class DemoError(Exception):
    """A problem the demo reports in one line and exits 1 on."""


def proxy_config(
    port: int = DEFAULT_PORT,
    socket_path: str = DEFAULT_SOCKET,
    address: str = "0.0.0.0",
    access_log_path: str = "/dev/stdout",
) -> dict[str, Any]:
    """The bootstrap in ``conf/proxy.yaml`` with the given listener and socket.

    A test checks that ``proxy_config()`` equals the parsed ``conf/proxy.yaml``.
    """
    access_log = {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": access_log_path,  # no log_format: Envoy's default format
        },
    }
    route_config = {
        "name": "local_route",
        "virtual_hosts": [
            {
                "name": "hugo",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "hugo"}}],
            }
        ],
    }
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        },
    }
    hcm = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network."
            "http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "ingress_http",
            "codec_type": "AUTO",
            "use_remote_address": True,
            "access_log": [access_log],
            "route_config": route_config,
            "http_filters": [router],
        },
    }
    upstream_http = {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "common_http_protocol_options": {"idle_timeout": "60s"},
        "explicit_http_config": {"http_protocol_options": {}},
    }
    endpoint = {"endpoint": {"address": {"pipe": {"path": socket_path}}}}
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress_http",
                    "address": {"socket_address": {"address": address, "port_value": port}},
                    "filter_chains": [{"filters": [hcm]}],
                }
            ],
            "clusters": [
                {
                    "name": "hugo",
                    "type": "STATIC",
                    "lb_policy": "ROUND_ROBIN",
                    "connect_timeout": "0.25s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": upstream_http
                    },
                    "load_assignment": {
                        "cluster_name": "hugo",
                        "endpoints": [{"lb_endpoints": [endpoint]}],
                    },
                }
            ],
        }
    }


# --------------------------------------------------------------------------------------------
# The upstream socket


def _socket_is_live(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(path)
        except OSError:
            return False
        return True


def remove_stale_socket(path: str) -> bool:
    """Remove a leftover socket file at ``path`` so a server can bind there.

    Returns True if a file was removed. Raises DemoError if ``path`` is not a socket, or if
    something still accepts connections on it (removing that would orphan a live server).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise DemoError(f"{path} exists and is not a socket; refusing to remove it")
    if _socket_is_live(path):
        raise DemoError(
            f"something is already listening on {path} (another nginx or demo?); "
            "stop it or pass --socket PATH"
        )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return True


async def _wait_for_socket(path: str, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise DemoError(f"nginx exited with status {proc.returncode} (see its messages above)")
        if _socket_is_live(path):
            return
        if time.monotonic() > deadline:
            raise DemoError(f"nothing listens on {path} after {timeout:.0f}s")
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------------------------
# nginx


def find_nginx() -> str | None:
    """The nginx binary: on PATH, else Debian's /usr/sbin/nginx (root's PATH may lack sbin)."""
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _nginx_user_directive() -> str:
    """Workers drop root to nobody; the directive is meaningless (and warned about) otherwise."""
    if os.geteuid() != 0:
        return ""
    try:
        pw = pwd.getpwnam("nobody")
        group = grp.getgrgid(pw.pw_gid).gr_name
    except KeyError:
        return "user root root;"
    return f"user nobody {group};"


def render_nginx_conf(*, socket_path: str, site_dir: Path, workdir: Path) -> str:
    """A self-contained runtime config: everything nginx writes goes to ``workdir``."""
    w = workdir
    return f"""\
# Written by `udsproxy demo`; see conf/nginx.conf for the production equivalent.
{_nginx_user_directive()}
daemon off;
master_process on;
worker_processes 1;
pid {w}/nginx.pid;
error_log {w}/error.log warn;

events {{
    worker_connections 1024;
}}

http {{
    types {{
        text/html html htm;
        text/css css;
        text/plain txt;
        application/javascript js;
        image/svg+xml svg;
    }}
    default_type application/octet-stream;
    access_log off;
    server_tokens off;
    client_body_temp_path {w}/client_body;
    proxy_temp_path {w}/proxy;
    fastcgi_temp_path {w}/fastcgi;
    uwsgi_temp_path {w}/uwsgi;
    scgi_temp_path {w}/scgi;
    sendfile on;
    keepalive_timeout 75s;
    keepalive_requests 1000;

    server {{
        listen unix:{socket_path};
        server_name _;
        root {site_dir};
        index index.html;
    }}
}}
"""


class Nginx:
    """An nginx master process started by us, stopped by its PID."""

    def __init__(self, binary: str, socket_path: str, site_dir: Path, workdir: Path) -> None:
        self.binary = binary
        self.socket_path = socket_path
        self.workdir = workdir
        self.conf_path = workdir / "nginx.conf"
        self.conf_path.write_text(
            render_nginx_conf(socket_path=socket_path, site_dir=site_dir, workdir=workdir)
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def version(self) -> str:
        out = subprocess.run(
            [self.binary, "-v"], capture_output=True, timeout=10, check=False
        ).stderr.decode(errors="replace")
        return out.strip().removeprefix("nginx version: ") or "nginx"

    def start(self) -> None:
        # Own session: a Ctrl-C in the terminal reaches us only, and we stop nginx after the
        # proxy (graceful shutdown in order).
        self.proc = subprocess.Popen(
            [self.binary, "-p", str(self.workdir), "-c", str(self.conf_path)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    async def wait_ready(self, timeout: float = NGINX_START_TIMEOUT) -> None:
        try:
            await _wait_for_socket(self.socket_path, self.proc, timeout)
        except DemoError:
            log = self.workdir / "error.log"
            if log.exists():
                sys.stderr.write(log.read_text(errors="replace"))
            raise

    def stop(self) -> None:
        """SIGQUIT (graceful: nginx unlinks its socket), then SIGTERM, then SIGKILL."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in (
            (signal.SIGQUIT, NGINX_STOP_TIMEOUT),
            (signal.SIGTERM, 2.0),
            (signal.SIGKILL, 2.0),
        ):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


# --------------------------------------------------------------------------------------------
# The built-in upstream (used when nginx is not installed)


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


class _SiteProtocol(asyncio.Protocol):
    """A minimal HTTP/1.1 static file server: keep-alive, pipelining, GET and HEAD."""

    def __init__(self, files: dict[str, tuple[bytes, str]]) -> None:
        self._files = files
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(400, b"bad request\n", "text/plain", head=False, keep_alive=False)

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_message_complete(self) -> None:
        method = self._parser.get_method()
        keep_alive = self._parser.should_keep_alive()
        if method not in (b"GET", b"HEAD"):
            self._send(405, b"method not allowed\n", "text/plain", head=False, keep_alive=False)
            return
        path = urllib.parse.unquote(httptools.parse_url(self._url).path.decode("latin-1"))
        if path.endswith("/"):
            path += "index.html"
        found = self._files.get(path)
        if found is None:
            status, body, ctype = 404, b"not found\n", "text/plain"
        else:
            status, (body, ctype) = 200, found
        self._send(status, body, ctype, head=method == b"HEAD", keep_alive=keep_alive)

    def _send(self, status: int, body: bytes, ctype: str, *, head: bool, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        head_bytes = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
            f"Server: udsproxy-demo-upstream\r\n"
            f"Date: {email.utils.formatdate(usegmt=True)}\r\n"
            f"Content-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n"
            + ("" if keep_alive else "Connection: close\r\n")
            + "\r\n"
        ).encode("latin-1")
        transport.write(head_bytes if head else head_bytes + body)
        if not keep_alive:
            transport.close()


def _load_site(site_dir: Path) -> dict[str, tuple[bytes, str]]:
    files: dict[str, tuple[bytes, str]] = {}
    for path in sorted(site_dir.rglob("*")):
        if path.is_file():
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if ctype.startswith("text/"):
                ctype += "; charset=utf-8"
            files["/" + path.relative_to(site_dir).as_posix()] = (path.read_bytes(), ctype)
    return files


class BuiltinUpstream:
    """Serves ``site_dir`` over HTTP/1.1 on a Unix socket, from memory."""

    def __init__(self, socket_path: str, site_dir: Path) -> None:
        self.socket_path = socket_path
        self.files = _load_site(site_dir)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        files = self.files
        self._server = await loop.create_unix_server(
            lambda: _SiteProtocol(files), path=self.socket_path
        )
        os.chmod(self.socket_path, 0o666)  # as nginx does

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)


# --------------------------------------------------------------------------------------------
# The demo


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="udsproxy demo",
        description="Run the article's scenario: nginx on a Unix socket, udsproxy on TCP in front.",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (default %(default)s)")
    p.add_argument("--address", default="0.0.0.0", help="listen address (default %(default)s)")
    p.add_argument(
        "--socket",
        default=DEFAULT_SOCKET,
        help="the upstream's Unix socket (default %(default)s)",
    )
    p.add_argument(
        "--upstream",
        choices=("auto", "nginx", "builtin"),
        default="auto",
        help="nginx, the built-in upstream, or nginx when installed (default %(default)s)",
    )
    p.add_argument(
        "--site", type=Path, default=SITE_DIR, help="the site to serve (default: the sample blog)"
    )
    p.add_argument(
        "--config",
        help="serve this Envoy bootstrap instead of the built-in one (e.g. the article's own "
        "files: conf/article/envoy.yaml); its cluster must point at --socket",
    )
    return p.parse_args(argv)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def _run(args: argparse.Namespace) -> int:
    from udsproxy.server import Server  # the data path is only needed here

    socket_path: str = args.socket
    site_dir: Path = args.site.resolve()
    if not (site_dir / "index.html").is_file():
        raise DemoError(f"no index.html in {site_dir}")
    nginx_bin = find_nginx() if args.upstream in ("auto", "nginx") else None
    if nginx_bin is None and args.upstream == "nginx":
        raise DemoError("nginx is not installed (apt-get install nginx-light)")

    Path(socket_path).parent.mkdir(parents=True, exist_ok=True)
    if remove_stale_socket(socket_path):
        _say(f"udsproxy demo: removed a stale socket file {socket_path}")

    workdir = Path(tempfile.mkdtemp(prefix="udsproxy-demo-"))
    nginx: Nginx | None = None
    builtin: BuiltinUpstream | None = None
    server: Server | None = None
    try:
        if nginx_bin is not None:
            # nginx workers run as nobody when we are root: give them a readable copy of the site.
            workdir.chmod(0o755)
            site_copy = workdir / "site"
            shutil.copytree(site_dir, site_copy)
            nginx = Nginx(nginx_bin, socket_path, site_copy, workdir)
            nginx.start()
            await nginx.wait_ready()
            assert nginx.proc is not None
            upstream_desc = f"{nginx.version()} (pid {nginx.proc.pid}, config {nginx.conf_path})"
        else:
            if args.upstream == "auto":
                _say(
                    "udsproxy demo: nginx is not installed (apt-get install nginx-light); "
                    "falling back to the built-in upstream"
                )
            builtin = BuiltinUpstream(socket_path, site_dir)
            await builtin.start()
            upstream_desc = "the built-in upstream (udsproxy.tools.demo.BuiltinUpstream)"

        if args.config:
            from udsproxy.sample_conf import resolve_sample

            packaged = resolve_sample(args.config)
            if packaged is not None:  # an installed wheel: the packaged conf/ copy
                _say(f"udsproxy demo: {args.config} from the installed package ({packaged})")
                os.chdir(packaged)
        config: Any = args.config or proxy_config(args.port, socket_path, args.address)
        try:
            server = await Server.start(config)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise DemoError(f"port {args.port} is in use; pass --port N") from e
            raise
        host, port = server.address()
        curl_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        if ":" in curl_host:
            curl_host = f"[{curl_host}]"
        url = f"http://{curl_host}:{port}/"
        _say(
            "\n".join(
                [
                    "udsproxy demo: the article's scenario is running",
                    f"  upstream: {upstream_desc}",
                    f"            serving {site_dir} on unix:{socket_path}",
                    f"  proxy:    udsproxy listening on {host}:{port} -> cluster hugo -> "
                    f"{socket_path}",
                    f"  try:      curl -i {url}",
                    f"            curl -s {url}prometheus-histograms.html",
                    "  The access log (Envoy's default format) follows on stdout. "
                    "Ctrl-C stops everything.",
                ]
            )
        )

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        rc = 0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            if nginx is not None and nginx.proc is not None and nginx.proc.poll() is not None:
                _say(f"udsproxy demo: nginx exited unexpectedly (status {nginx.proc.returncode})")
                rc = 1
                break
        _say("udsproxy demo: stopping")
        return rc
    finally:
        if server is not None:
            await server.stop()
        if nginx is not None:
            nginx.stop()
        if builtin is not None:
            await builtin.stop()
        if nginx is not None:
            with contextlib.suppress(DemoError, OSError):
                remove_stale_socket(socket_path)  # left behind if nginx had to be killed
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``udsproxy demo``. Returns the exit status."""
    args = _parse_args(argv)
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(_run(args))
    except DemoError as e:
        _say(f"udsproxy demo: {e}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
