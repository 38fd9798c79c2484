"""Process behaviour with real processes: log rotation under load (SIGUSR1, POST /reopen_logs,
logrotate itself), per-worker random state, Envoy's command-line flags, PID 1.

The proxy runs as ``python -m udsproxy -c FILE`` in front of the session's nginx; the load is
real HTTP/1.1 keep-alive clients, each request carrying a unique path that its access-log line
records, so a lost line is found by name.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .support import (
    CI,
    FILE_LOG_TYPE,
    REPO,
    BackgroundClients,
    CliProxy,
    NginxInstance,
    bootstrap,
    cluster,
    listener,
    route,
    vhost,
    wait_until,
)

pytestmark = pytest.mark.integration

UNSHARE = ["unshare", "--pid", "--fork", "--kill-child"]
ADMIN = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}


def config(nginx: NginxInstance, log: Path, fmt: str, *, admin: bool = True) -> dict[str, Any]:
    lst = listener([vhost("all", [route("nginx", prefix="/")])])
    hcm = lst["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["access_log"] = [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": FILE_LOG_TYPE,
                "path": str(log),
                "log_format": {"text_format_source": {"inline_string": fmt}},
            },
        }
    ]
    cfg = bootstrap([lst], [cluster("nginx", nginx.socket_path)])
    if admin:
        cfg["admin"] = ADMIN
    return cfg


class Proxy(CliProxy):
    def __init__(self, tmp: Path, cfg: dict[str, Any], *args: str) -> None:
        path = tmp / "proxy.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        super().__init__(path, *args)

    @property
    def port(self) -> int:
        return self.wait_listening("ingress_http")

    def post(self, path: str) -> int:
        assert wait_until(lambda: bool(self.admin_port), 30), self.stderr
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=5)
        try:
            conn.request("POST", path)
            return conn.getresponse().status
        finally:
            conn.close()


@contextlib.contextmanager
def running(tmp: Path, cfg: dict[str, Any], *args: str) -> Iterator[Proxy]:
    proxy = Proxy(tmp, cfg, *args)
    try:
        proxy.port  # noqa: B018 - waits until it listens
        yield proxy
    finally:
        rc = proxy.stop()
    assert rc == 0, f"udsproxy exited with {rc}:\n{proxy.stderr}"


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Load(BackgroundClients):
    """Keep-alive clients sending GET /load/<client>/<n> until stopped; records the 200s."""

    def __init__(self, port: int, clients: int = 4) -> None:
        self.port = port
        self.ok: set[str] = set()
        self.failed: list[str] = []
        self._lock = threading.Lock()
        super().__init__(clients, join_timeout=30)

    def __enter__(self) -> Load:
        super().__enter__()
        return self

    def client(self, client: int) -> None:
        conn: http.client.HTTPConnection | None = None
        n = 0
        while self.running():
            path = f"/load/{client}/{n}"
            n += 1
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                if resp.status in (200, 404):  # nginx answers 404: the line is what counts
                    with self._lock:
                        self.ok.add(path)
                else:
                    self.failed.append(f"{path}: {resp.status}")
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                self.failed.append(f"{path}: {exc!r}")
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def count(self) -> int:
        with self._lock:
            return len(self.ok)


def logged(files: list[Path]) -> list[str]:
    return [line for f in files if f.exists() for line in f.read_text().splitlines()]


# --------------------------------------------------------------------------------------------
# 1. log rotation under load


@pytest.mark.parametrize("concurrency", ["1", "2"])
def test_rotation_under_load_loses_no_line(
    tmp_path: Path, nginx: NginxInstance, concurrency: str
) -> None:
    """Rename the log, SIGUSR1 (twice) and POST /reopen_logs (once), all while four keep-alive
    clients send requests: every request is in one file or another, and after each reopen no
    worker writes the renamed file any more."""
    log = tmp_path / "access.log"
    cfg = config(nginx, log, "%REQ(:PATH)%\n")
    with running(tmp_path, cfg, "--concurrency", concurrency) as proxy:
        if concurrency == "2":
            assert wait_until(lambda: len(children(proxy.pid)) == 2, 10)
        workers = children(proxy.pid)
        rotated: list[Path] = []
        with Load(proxy.port) as load:
            for k, how in enumerate(["USR1", "POST", "USR1"]):
                want = 200 * (k + 1)
                assert wait_until(lambda: load.count() > want, 30)  # noqa: B023
                old = tmp_path / f"access.log.{k}"
                log.rename(old)
                rotated.append(old)
                if how == "USR1":
                    os.kill(proxy.pid, signal.SIGUSR1)
                else:
                    assert proxy.post("/reopen_logs") == 200
                # every worker writes the new file within its flush interval (1 s)
                assert wait_until(lambda: log.exists() and log.stat().st_size > 0, 10)
            time.sleep(1.5)
            sizes = {p: p.stat().st_size for p in rotated}  # settled: nobody writes them now
            assert wait_until(lambda: load.count() > 200 * 4 + 300, 30)
        assert proxy.proc.poll() is None, f"the proxy died:\n{proxy.stderr}"
        assert children(proxy.pid) == workers, "a worker died or was restarted"
    assert {p: p.stat().st_size for p in rotated} == sizes, "a worker kept writing an old file"
    lines = logged([*rotated, log])
    sent = load.ok
    lost = sent - set(lines)
    print(
        f"\nrotation under load, --concurrency {concurrency}: {len(sent)} requests, "
        f"{len(lines)} lines in {len(rotated) + 1} files, {len(lost)} lost, "
        f"{len(load.failed)} failed requests"
    )
    assert not load.failed, load.failed[:5]
    assert not lost, sorted(lost)[:10]
    assert len(lines) == len(set(lines)) == len(sent)  # no line twice either
    assert all(p.stat().st_size > 0 for p in [*rotated, log])


@pytest.mark.parametrize("concurrency", [1, 2])
def test_sigusr1_keeps_serving_and_reopens_log_path(
    tmp_path: Path, nginx: NginxInstance, concurrency: int
) -> None:
    """--log-path (udsproxy's own log) is reopened with the access logs, as in Envoy: by the
    serving process, and with workers by the supervisor too (its lines must not go on into
    the rotated file, which logrotate may compress and delete)."""
    log = tmp_path / "access.log"
    own = tmp_path / "udsproxy.log"
    cfg = config(nginx, log, "%REQ(:PATH)%\n", admin=False)
    with running(tmp_path, cfg, "--concurrency", str(concurrency), "--log-path", str(own)) as proxy:
        assert own.exists()
        rotated = tmp_path / "udsproxy.log.1"
        own.rename(rotated)
        os.kill(proxy.pid, signal.SIGUSR1)
        assert wait_until(lambda: own.exists() and "reopened" in own.read_text(), 10)
        if concurrency > 1:
            assert wait_until(lambda: "every worker reopens" in own.read_text(), 10)
            assert "every worker reopens" not in rotated.read_text()
        assert proxy.proc.poll() is None


# --------------------------------------------------------------------------------------------
# 2. per-worker random state


def test_two_workers_generate_distinct_request_ids(tmp_path: Path, nginx: NginxInstance) -> None:
    log = tmp_path / "access.log"
    cfg = config(nginx, log, "%REQ(X-REQUEST-ID)%\n", admin=False)
    with running(tmp_path, cfg, "--concurrency", "2") as proxy:
        assert wait_until(lambda: len(children(proxy.pid)) == 2, 10)
        for n in range(200):  # a new connection each: both workers take some
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
            conn.request("GET", f"/id/{n}", headers={"connection": "close"})
            conn.getresponse().read()
            conn.close()
    ids = log.read_text().split()
    assert len(ids) == 200
    assert len(set(ids)) == 200, f"{len(set(ids))} distinct ids of 200"


# --------------------------------------------------------------------------------------------
# 5. Envoy's flags


def test_envoy_command_line_runs(tmp_path: Path, nginx: NginxInstance) -> None:
    """A typical Envoy container/systemd command line, flags and all."""
    log = tmp_path / "access.log"
    cfg = config(nginx, log, "%REQ(:PATH)%\n")
    args = ["--concurrency", "1", "--service-cluster", "front", "--service-node", "front-1",
            "--service-zone", "eu-1a", "--base-id", "1", "--restart-epoch", "0",
            "--parent-shutdown-time-s", "30", "--disable-hot-restart",
            "--reject-unknown-dynamic-fields", "--log-format", "[%Y-%m-%d %T.%e][%t][%l][%n] %v",
            "--component-log-level", "admin:debug,upstream:info"]  # fmt: skip
    with running(tmp_path, cfg, *args) as proxy:
        assert wait_until(lambda: bool(proxy.admin_port), 30)
        conn = http.client.HTTPConnection("127.0.0.1", proxy.admin_port, timeout=5)
        conn.request("GET", "/server_info")
        info = json.loads(conn.getresponse().read())
        conn.close()
        assert info["node"] == {"id": "front-1", "cluster": "front", "locality": {"zone": "eu-1a"}}
        assert info["command_line_options"]["service_cluster"] == "front"
    # Envoy's level names and layout: "[2024-05-01 12:00:00.123][1234][info][udsproxy...] ..."
    assert any("][info][udsproxy" in line for line in proxy.lines), proxy.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--restart-epoch", "1"], "--restart-epoch 1: udsproxy has no hot restart"),
        (["--allow-unknown-static-fields"], "--allow-unknown-static-fields is not supported"),
        (["--hot-restart-version"], "--hot-restart-version is not supported"),
        (["--file-flush-interval-msec", "100"], "--file-flush-interval-msec is not supported"),
        (["--log-format", "%q %v"], "%q is not a flag udsproxy supports"),
        (["--component-log-level", "upstream"], "is not <component>:<level>"),
    ],
)
def test_envoy_flags_refused_by_name(tmp_path: Path, args: list[str], words: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "udsproxy", "--config-yaml", "{}", "--mode", "validate", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert words in proc.stderr, proc.stderr


# --------------------------------------------------------------------------------------------
# 4. PID 1


def _pid1_supported() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"):
        return False
    probe = subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True)
    return probe.returncode == 0


def _state(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.split()[1]
    except OSError:
        return "gone"
    return "?"


@pytest.mark.parametrize("concurrency", ["1", "2"])
def test_as_pid_1_reaps_orphans_and_handles_signals(
    tmp_path: Path, nginx: NginxInstance, concurrency: str
) -> None:
    """udsproxy as PID 1 of a PID namespace (what a container gives it): SIGUSR1 and SIGHUP
    reach it (the kernel drops signals PID 1 has no handler for), an orphan re-parented to it
    is reaped, SIGTERM stops it with exit 0."""
    if not _pid1_supported():
        msg = "needs root and unshare --pid (util-linux) to run udsproxy as PID 1"
        if CI:
            pytest.fail(msg)
        pytest.skip(msg)
    log = tmp_path / "access.log"
    cfg_path = tmp_path / "proxy.yaml"
    cfg_path.write_text(yaml.safe_dump(config(nginx, log, "%REQ(:PATH)%\n", admin=False)))
    proc = subprocess.Popen(
        [
            *UNSHARE,
            sys.executable,
            "-m",
            "udsproxy",
            "-c",
            str(cfg_path),
            "--concurrency",
            concurrency,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO)),
    )
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr or []), daemon=True)
    reader.start()
    try:
        assert wait_until(lambda: any("listening on" in line for line in err), 30), err
        (init,) = children(proc.pid)  # unshare's child: PID 1 inside
        assert _nspid(init, init) == 1
        port = int(next(ln for ln in err if "listening on" in ln).rsplit(":", 1)[1].split()[0])

        def get(path: str) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", path)
            status = conn.getresponse().status
            conn.close()
            return status

        assert get("/a") in (200, 404)
        # an orphan: a shell inside the namespace starts a short sleep and exits at once
        out = subprocess.run(
            [
                "nsenter",
                "-t",
                str(init),
                "-p",
                "--",
                "sh",
                "-c",
                "sleep 1 >/dev/null 2>&1 & echo $!",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
        orphan_ns = int(out.stdout.split()[0])
        # its shell exited at once, so the kernel hands the sleep to PID 1: udsproxy
        found: list[int] = []

        def adopted() -> bool:
            found[:] = [c for c in children(init) if _nspid(c, init) == orphan_ns]
            return bool(found)

        assert wait_until(adopted, 5), (out, children(init))
        orphan = found[0]
        # once the sleep ends, PID 1 must reap it: no zombie left behind
        assert wait_until(lambda: _state(orphan) == "gone", 10), _state(orphan)
        log.rename(tmp_path / "access.log.1")
        os.kill(init, signal.SIGUSR1)
        time.sleep(0.3)
        assert get("/b") in (200, 404)
        os.kill(init, signal.SIGHUP)
        assert wait_until(lambda: any("SIGHUP" in line for line in err), 10), err
        assert wait_until(lambda: log.exists() and "/b" in log.read_text(), 10)
        assert _state(init) not in ("gone", "Z")
        os.kill(init, signal.SIGTERM)
        assert proc.wait(20) == 0, "".join(err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        reader.join(5)
        if proc.stderr is not None:
            proc.stderr.close()


def _nspid(pid: int, init: int) -> int | None:
    """``pid``'s number inside init's namespace, if it is in it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        if os.readlink(f"/proc/{pid}/ns/pid") != os.readlink(f"/proc/{init}/ns/pid"):
            return None
    except OSError:
        return None
    nspid = status.split("NSpid:")[1].split("\n")[0].split()
    return int(nspid[-1])
