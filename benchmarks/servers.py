"""The upstream nginx and the proxies under test ("subjects"), rendered from benchmarks/configs/.

Every subject listens on its own 127.0.0.1 port for the whole run and sits idle while the
others are measured. ``pids()`` lists every process whose CPU and memory count as the proxy's
(nginx: master and workers).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.procs import Proc, StartError, children, free_port, tcp_live, unix_live

CONFIGS = Path(__file__).resolve().parent / "configs"

SITE_FILES = {"/index.html": 612, "/1k.bin": 1024, "/100k.bin": 100 * 1024, "/1m.bin": 1 << 20}


# The "governed" subject's route and cluster: what the closing note of issue 11 prices against
# the same route without them (limits high enough never to trip on the benchmark's load).
GOVERNED_ROUTE = (
    ", retry_policy: {retry_on: '5xx,reset,connect-failure', num_retries: 2, per_try_timeout: 5s}"
)
GOVERNED_CLUSTER = """
    circuit_breakers:
      thresholds: [{max_connections: 4096, max_pending_requests: 4096, max_requests: 4096,
                    max_retries: 16, track_remaining: true}]
    outlier_detection: {consecutive_5xx: 5, interval: 10s, base_ejection_time: 30s}"""


def render(template: str, **values: object) -> str:
    text = (CONFIGS / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", str(value))
    if "@@" in text.replace("@@NAME@@", ""):
        start = text.index("@@")
        raise ValueError(f"{template}: unfilled placeholder near {text[start : start + 30]!r}")
    return text


def index_html(size: int) -> bytes:
    head = (
        b"<!DOCTYPE html>\n<html>\n<head>\n<title>Welcome to nginx!</title>\n</head>\n<body>\n"
        b"<h1>Welcome to nginx!</h1>\n<p>The page udsproxy's benchmarks fetch.</p>\n"
    )
    tail = b"</body>\n</html>\n"
    pad = size - len(head) - len(tail) - len(b"<!--  -->\n")
    return head + b"<!-- " + b"x" * pad + b" -->\n" + tail


def make_site(root: Path) -> dict[str, bytes]:
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, size in SITE_FILES.items():
        data = index_html(size) if name.endswith(".html") else os.urandom(size)
        assert len(data) == size
        (root / name.lstrip("/")).write_bytes(data)
        out[name] = data
    # /post: the static handler refuses POST with 405 only for a file that exists (see the
    # upstream's nginx.conf), so it must exist.
    (root / "post").write_bytes(b"ok\n")
    return out


def which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/usr/local/sbin", "/usr/local/bin"):
        if os.access(f"{d}/{name}", os.X_OK):
            return f"{d}/{name}"
    return None


def unlink_quietly(path: str | Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# nginx as a proxy: the buffers for the workloads (benchmarks/README.md, "Tuning"), or its own.
NGINX_BUFFERS = {
    "tuned": """\
# Responses: the stock proxy_buffers (8 x 4k) hold 32 KiB, so a 100 KiB or 1 MiB body
            # goes through a temp file (or, without one, throttles the upstream read).
            # 16k + 64 x 16k holds 1 MiB in memory, and never touch the disk.
            proxy_buffer_size 16k;
            proxy_buffers 64 16k;
            proxy_busy_buffers_size 256k;
            proxy_max_temp_file_size 0;
            # Requests: the stock client_body_buffer_size (16k) writes a 16 KiB POST body to a
            # temp file; 2m keeps 1 MiB uploads in memory too.
            client_max_body_size 8m;
            client_body_buffer_size 2m;""",
    "stock": """\
# nginx's stock buffers (only the body size limit is raised, for the 1 MiB POST).
            client_max_body_size 8m;""",
}

# HAProxy: extra frontend/backend options per variant.
HAPROXY_OPTIONS = {"default": "", "splice": "option splice-auto"}


# --- the upstream ----------------------------------------------------------------------------


class Upstream:
    """nginx, one worker, on a UDS in /dev/shm, a UDS on disk and 127.0.0.1 TCP.

    "direct" is a second instance of it on the proxy's CPU: wrk talks to it over TCP with no
    proxy, so that one core serving the files itself is the ceiling the proxies are held to.
    """

    def __init__(
        self, workdir: Path, disk_dir: Path, cpus: str | None, name: str = "upstream"
    ) -> None:
        self.name = name
        self.workdir = workdir / name
        self.site = workdir / "site"
        self.sock_shm = str(workdir / f"{name}.sock")
        self.sock_disk = str(disk_dir / f"{name}.sock")
        for path in (self.sock_shm, self.sock_disk):
            if len(path.encode()) >= 108:
                raise StartError(f"socket path too long for AF_UNIX: {path}")
        self.port = free_port()
        self.cpus = cpus
        self.files: dict[str, bytes] = {}
        self.proc: Proc | None = None

    def start(self) -> None:
        nginx = which("nginx")
        if nginx is None:
            raise StartError("nginx is not installed")
        if not self.site.is_dir():
            make_site(self.site)
        self.files = {name: (self.site / name.lstrip("/")).read_bytes() for name in SITE_FILES}
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "nginx.conf"
        conf.write_text(
            render(
                "nginx-upstream.conf",
                DIR=self.workdir,
                SITE=self.site,
                SOCK_SHM=self.sock_shm,
                SOCK_DISK=self.sock_disk,
                PORT=self.port,
            )
        )
        for path in (self.sock_shm, self.sock_disk):
            unlink_quietly(path)  # nginx does not remove a stale socket file
        self.proc = Proc(
            f"{self.name}-nginx",
            [nginx, "-c", str(conf), "-p", str(self.workdir)],
            self.workdir,
            cpus=self.cpus,
            stop_signal=signal.SIGTERM,
        )
        self.proc.start(
            lambda: tcp_live(self.port) and unix_live(self.sock_shm) and unix_live(self.sock_disk)
        )

    def pids(self) -> list[int]:
        if self.proc is None or not self.proc.alive():
            return []
        return [self.proc.pid, *children(self.proc.pid)]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
        for path in (self.sock_shm, self.sock_disk):
            unlink_quietly(path)


# --- subjects ------------------------------------------------------------------------------


@dataclass
class Subject:
    """One proxy configuration under test (or "direct": no proxy)."""

    name: str  # key: udsproxy, udsproxy-nolog, nginx, haproxy, ...
    label: str  # for tables
    kind: str  # udsproxy | nginx | haproxy | caddy | pyfloor | direct
    log: bool = False
    transport: str = "uds-shm"  # uds-shm | uds-disk | tcp: how the proxy reaches the upstream
    pool: bool = True  # upstream keep-alive pool
    splice_min: int | None = None  # udsproxy --splice-min-bytes (None: its default)
    stats: bool = True  # udsproxy: False runs it with --disable-request-stats
    splice_responses: bool = False  # udsproxy --splice-responses
    governed: bool = False  # udsproxy: a retry policy, circuit breakers, outlier detection
    workers: int = 1
    variant: str = ""  # nginx: tuned | stock buffers; haproxy: default | splice
    port: int = 0
    proc: Proc | None = None
    log_path: Path | None = None
    argv: list[str] = field(default_factory=list)
    config_path: Path | None = None

    def pids(self) -> list[int]:
        if self.proc is None or not self.proc.alive():
            return []
        pid = self.proc.pid
        return [pid, *children(pid)] if self.kind in ("nginx", "direct") else [pid]


class Subjects:
    """Starts, restarts and stops subjects against one Upstream."""

    def __init__(
        self,
        workdir: Path,
        upstream: Upstream,
        cpus: str | None,
        python: str = sys.executable,
        udsproxy_concurrency_flag: bool = False,
        udsproxy_src: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.upstream = upstream
        self.cpus = cpus
        self.python = python
        # udsproxy gained --concurrency (default: one worker per core): pass it explicitly.
        self.concurrency_flag = udsproxy_concurrency_flag
        # Another checkout of udsproxy to measure (a directory holding the udsproxy package).
        self.udsproxy_src = udsproxy_src

    def _upstream_target(self, subject: Subject) -> tuple[str, str]:
        """(kind, address) of the upstream for this subject's transport."""
        if subject.transport == "tcp":
            return "tcp", f"127.0.0.1:{self.upstream.port}"
        path = (
            self.upstream.sock_disk if subject.transport == "uds-disk" else self.upstream.sock_shm
        )
        return "unix", path

    def start(self, s: Subject) -> None:
        if s.kind == "direct":
            direct = Upstream(
                self.workdir, Path(self.upstream.sock_disk).parent, self.cpus, name=s.name
            )
            if s.port:
                direct.port = s.port
            direct.start()
            s.port, s.proc = direct.port, direct.proc
            s.config_path = direct.workdir / "nginx.conf"
            s.argv = direct.proc.argv if direct.proc else []
            return
        if not s.port:
            s.port = free_port()
        d = self.workdir / s.name
        d.mkdir(parents=True, exist_ok=True)
        kind, addr = self._upstream_target(s)
        env: dict[str, str] = {}
        stop_signal = signal.SIGTERM
        if s.kind == "udsproxy":
            s.log_path = d / "access.log" if s.log else None
            log = (
                f'[{{name: envoy.access_loggers.file, typed_config: {{"@type": '
                f'"type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog", '
                f'path: "{s.log_path}"}}}}]'
                if s.log_path
                else "[]"
            )
            common = "{idle_timeout: 60s" + ("" if s.pool else ", max_requests_per_connection: 1")
            if kind == "tcp":
                host, tcp_port = addr.rsplit(":", 1)
                target = f"{{socket_address: {{address: {host}, port_value: {tcp_port}}}}}"
            else:
                target = f'{{pipe: {{path: "{addr}"}}}}'
            s.config_path = d / "udsproxy.yaml"
            s.config_path.write_text(
                render(
                    "udsproxy.yaml",
                    PORT=s.port,
                    ACCESS_LOG=log,
                    COMMON_OPTIONS=common + "}",
                    UPSTREAM=target,
                    ROUTE_EXTRA=GOVERNED_ROUTE if s.governed else "",
                    CLUSTER_EXTRA=GOVERNED_CLUSTER if s.governed else "",
                )
            )
            s.argv = [self.python, "-m", "udsproxy", "-c", str(s.config_path), "-l", "warning"]
            if s.splice_min is not None:
                s.argv += ["--splice-min-bytes", str(s.splice_min)]
            if not s.stats:
                s.argv.append("--disable-request-stats")
            if s.splice_responses:
                s.argv.append("--splice-responses")
            if self.concurrency_flag:
                s.argv += ["--concurrency", str(s.workers)]
            env["PYTHONUNBUFFERED"] = "1"
            if self.udsproxy_src is not None:
                env["PYTHONPATH"] = str(self.udsproxy_src)
        elif s.kind == "nginx":
            s.log_path = d / "access.log" if s.log else None
            nginx = which("nginx")
            if nginx is None:
                raise StartError("nginx is not installed")
            s.config_path = d / "nginx.conf"
            s.config_path.write_text(
                render(
                    "nginx-proxy.conf",
                    DIR=d,
                    WORKERS=s.workers,
                    PORT=s.port,
                    ACCESS_LOG=(
                        f"access_log {s.log_path} combined buffer=64k flush=1s;"
                        if s.log_path
                        else "access_log off;"
                    ),
                    UPSTREAM=f"unix:{addr}" if kind == "unix" else addr,
                    BUFFERS=NGINX_BUFFERS[s.variant or "tuned"],
                    KEEPALIVE=(
                        "keepalive 256;\n        keepalive_requests 1000000;\n"
                        "        keepalive_timeout 60s;"
                        if s.pool
                        else "# no keepalive: a new upstream connection per request"
                    ),
                )
            )
            s.argv = [nginx, "-c", str(s.config_path), "-p", str(d)]
            stop_signal = signal.SIGTERM
        elif s.kind == "pyfloor":
            if kind != "unix":
                raise StartError("the Python floor reaches its upstream over a Unix socket only")
            s.log_path = d / "access.log" if s.log else None
            s.argv = [self.python, "-m", "benchmarks.floor", "--listen", f"127.0.0.1:{s.port}"]
            s.argv += ["--upstream", addr]
            if s.log_path:
                s.argv += ["--log", str(s.log_path)]
            env["PYTHONPATH"] = str(CONFIGS.parent.parent)  # benchmarks/ is not installed
        elif s.kind == "haproxy":
            haproxy = which("haproxy")
            if haproxy is None:
                raise StartError("haproxy is not installed")
            s.config_path = d / "haproxy.cfg"
            s.config_path.write_text(
                render(
                    "haproxy.cfg",
                    DIR=d,
                    THREADS=s.workers,
                    PORT=s.port,
                    UPSTREAM=f"unix@{addr}" if kind == "unix" else addr,
                    OPTIONS=HAPROXY_OPTIONS[s.variant or "default"],
                )
            )
            s.argv = [haproxy, "-db", "-f", str(s.config_path)]
            stop_signal = signal.SIGTERM
        elif s.kind == "caddy":
            caddy = which("caddy")
            if caddy is None:
                raise StartError("caddy is not installed")
            s.config_path = d / "Caddyfile"
            s.config_path.write_text(
                render(
                    "Caddyfile",
                    PORT=s.port,
                    UPSTREAM=f"unix/{addr}" if kind == "unix" else addr,
                )
            )
            s.argv = [caddy, "run", "--config", str(s.config_path), "--adapter", "caddyfile"]
            env.update(
                GOMAXPROCS=str(s.workers),
                HOME=str(d),
                XDG_CONFIG_HOME=str(d / "config"),
                XDG_DATA_HOME=str(d / "data"),
            )
        else:
            raise ValueError(s.kind)
        s.proc = Proc(s.name, s.argv, d, cpus=self.cpus, env=env, stop_signal=stop_signal)
        timeout = 60.0 if s.kind == "udsproxy" else 30.0
        port = s.port
        s.proc.start(lambda: tcp_live(port), timeout=timeout)

    def stop(self, s: Subject) -> None:
        if s.proc is not None:
            s.proc.stop()
            s.proc = None

    def restart(self, s: Subject) -> None:
        self.stop(s)
        self.start(s)


def udsproxy_has_concurrency(python: str = sys.executable, src: Path | None = None) -> bool:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    out = subprocess.run(
        [python, "-m", "udsproxy", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd="/",
        check=False,
    )
    return "--concurrency" in out.stdout
