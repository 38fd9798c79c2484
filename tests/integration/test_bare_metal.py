"""Bare metal: the systemd unit (systemd-analyze verify, its settings), the sd_notify protocol
against a socket the test listens on, and logrotate run for real under load with 0 lines lost.

systemd cannot run as PID 1 here, so the unit is checked statically and the notify protocol by
playing systemd's part: a datagram socket named by $NOTIFY_SOCKET.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .support import CI, REPO, NginxInstance, wait_until
from .test_process import Load, children, config, running

pytestmark = pytest.mark.integration

UNIT = REPO / "deploy" / "systemd" / "udsproxy.service"
LOGROTATE = REPO / "deploy" / "logrotate" / "udsproxy"
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"


def need(tool: str) -> str:
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists() else "")
    if not path:
        msg = f"{tool} is not installed (apt-get install {tool}; scripts/lib.sh does it)"
        if CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


# --------------------------------------------------------------------------------------------
# the unit


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = need("systemd-analyze")
    udsproxy = shutil.which("udsproxy") or str(REPO / ".venv" / "bin" / "udsproxy")
    unit = tmp_path / "udsproxy.service"  # verify checks that ExecStart's binary exists
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/udsproxy", udsproxy))
    proc = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "udsproxy.service" not in proc.stderr, proc.stderr  # no warning about our unit


def test_unit_settings() -> None:
    s = unit_settings()
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["all"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    drain = float(re.search(r"--drain-time-s (\S+)", s["ExecStart"][0])[1])  # type: ignore[index]
    # the supervisor kills workers still draining at drain + 2 s; systemd must wait longer
    assert float(s["TimeoutStopSec"][0]) > drain + 2
    assert s["KillMode"] == ["mixed"] and s["KillSignal"] == ["SIGTERM"]
    assert s["CapabilityBoundingSet"] == [""] and s["AmbientCapabilities"] == [""]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "DynamicUser"):
        assert s[key] == ["yes"], key
    assert s["ProtectSystem"] == ["strict"]
    assert s["RuntimeDirectory"] == ["udsproxy"] and s["LogsDirectory"] == ["udsproxy"]
    assert int(s["LimitNOFILE"][0]) >= 65536
    assert "PrivateDevices" not in s  # it would hide nginx's socket in /dev/shm
    assert "USR1" in LOGROTATE.read_text()


# --------------------------------------------------------------------------------------------
# sd_notify


@pytest.mark.parametrize("concurrency", ["1", "2"])
def test_sd_notify_ready_reloading_stopping(
    tmp_path: Path, nginx: NginxInstance, concurrency: str
) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    os.environ["NOTIFY_SOCKET"] = path  # inherited by the proxy started below
    try:
        cfg = config(nginx, tmp_path / "access.log", "%REQ(:PATH)%\n", admin=False)
        with running(tmp_path, cfg, "--concurrency", concurrency) as proxy:
            assert sock.recv(4096) == b"READY=1"
            os.kill(proxy.pid, signal.SIGHUP)
            msg = sock.recv(4096).decode()
            assert msg.startswith("RELOADING=1\nMONOTONIC_USEC="), msg
            assert sock.recv(4096) == b"READY=1"  # the reload is done
            proxy.proc.send_signal(signal.SIGTERM)
            assert sock.recv(4096) == b"STOPPING=1"
    finally:
        del os.environ["NOTIFY_SOCKET"]
        sock.close()


# --------------------------------------------------------------------------------------------
# logrotate


def read_all(directory: Path) -> list[str]:
    lines: list[str] = []
    for f in sorted(directory.glob("access.log*")):
        data = gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes()
        lines += data.decode().splitlines()
    return lines


def test_logrotate_under_load_loses_no_line(tmp_path: Path, nginx: NginxInstance) -> None:
    """The shipped logrotate file, rendered to this test's paths (postrotate: kill -USR1 of
    the supervisor instead of systemctl), run for real three times under load with 2 workers."""
    tool = need("logrotate")
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "access.log"
    cfg = config(nginx, log, "%REQ(:PATH)%\n", admin=False)
    with running(tmp_path, cfg, "--concurrency", "2") as proxy:
        assert wait_until(lambda: len(children(proxy.pid)) == 2, 10)
        text = LOGROTATE.read_text().replace("/var/log/udsproxy/*.log", str(log))
        shipped = "systemctl kill --kill-whom=main --signal=USR1 udsproxy.service"
        assert shipped in text
        text = text.replace(shipped, f"kill -USR1 {proxy.pid}")
        text = text.replace("    dateext\n", "")  # three rotations within a second: numbered
        conf = tmp_path / "logrotate.conf"
        conf.write_text(text)
        state = tmp_path / "logrotate.state"
        with Load(proxy.port) as load:
            for k in range(3):
                want = 300 * (k + 1)
                assert wait_until(lambda: load.count() > want, 30)  # noqa: B023
                # lines reach the file within the flush interval (1 s); notifempty skips it before
                assert wait_until(lambda: log.exists() and log.stat().st_size > 0, 10)
                done = subprocess.run(
                    [tool, "-f", "-s", str(state), str(conf)], capture_output=True, text=True
                )
                assert done.returncode == 0, done.stderr
                time.sleep(0.2)
            assert wait_until(lambda: load.count() > 300 * 4, 30)
        assert proxy.proc.poll() is None and not load.failed, load.failed[:5]
    names = sorted(p.name for p in logs.iterdir())
    assert {"access.log", "access.log.1", "access.log.2.gz", "access.log.3.gz"} <= set(names)
    lines = read_all(logs)
    lost = load.ok - set(lines)
    print(
        f"\nlogrotate under load, --concurrency 2: {len(load.ok)} requests, {len(lines)} lines "
        f"in {names}, {len(lost)} lost"
    )
    assert not lost, sorted(lost)[:10]
    assert len(lines) == len(load.ok)
