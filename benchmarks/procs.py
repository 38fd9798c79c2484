"""Processes the harness starts, and what it reads about them from /proc.

Every process runs in its own session (so a stray child can be found by its group) and is
stopped by its PID: SIGTERM (nginx: SIGQUIT then SIGTERM), a bounded wait, then SIGKILL to that
PID and its group. Nothing is ever killed by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


class StartError(RuntimeError):
    pass


def pin_prefix(cpus: str | None) -> list[str]:
    """``taskset -c CPUS`` (the command is exec'd, so the PID stays the program's own)."""
    if not cpus:
        return []
    taskset = shutil.which("taskset")
    if taskset is None:
        raise StartError("taskset is missing (apt-get install util-linux)")
    return [taskset, "-c", cpus]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tcp_live(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def unix_live(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(path)
        except OSError:
            return False
        return True


class Proc:
    """One started program: its command, log files and PID."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        workdir: Path,
        *,
        cpus: str | None = None,
        env: dict[str, str] | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.argv = [*pin_prefix(cpus), *argv]
        self.cpus = cpus
        self.workdir = workdir
        self.env = env
        self.stop_signal = stop_signal
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self, ready: Callable[[], bool], timeout: float = 30.0) -> Proc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if self.env:
            env.update(self.env)
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self.workdir,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise StartError(f"{self.name} exited at start:\n{self.tail()}")
            if ready():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise StartError(f"{self.name} not ready after {timeout:.0f}s:\n{self.tail()}")
            time.sleep(0.02)

    def tail(self, lines: int = 15) -> str:
        out: list[str] = []
        for path in (self.stderr_path, self.stdout_path):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                out.extend(f"  {path.name}: {line}" for line in text)
        return "\n".join(out) or "  (no output)"

    def stop(self, timeout: float = 10.0) -> int | None:
        popen = self.popen
        if popen is None:
            return None
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(popen.pid, self.stop_signal)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(popen.pid, signal.SIGKILL)
                popen.wait(5)
        # Children left in the session we created for it (an nginx worker whose master died).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        return popen.returncode


# --- /proc ---------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields from 3 (state) on


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (nginx workers of a master)."""
    found = []
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        pass
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields and int(fields[1]) == pid:
                found.append(int(entry))
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of the processes (all their threads), in seconds."""
    return sum(cpu_split(pids))


def cpu_split(pids: Sequence[int]) -> tuple[float, float]:
    """(utime, stime) of the processes (all their threads), in seconds: user and kernel."""
    user = system = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            user += int(fields[11])  # utime (field 14)
            system += int(fields[12])  # stime (field 15)
    return user / CLK_TCK, system / CLK_TCK


def status_kib(pids: Sequence[int], key: str) -> int:
    """Sum of a /proc/<pid>/status field in KiB (VmRSS, VmHWM) over the processes."""
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith(key + ":"):
                total += int(line.split()[1])
                break
    return total


def cpus_allowed(pid: int) -> str:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return "?"
    for line in text.splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    return "?"


class RssSampler:
    """Polls the summed VmRSS of some processes in a thread; keeps the maximum."""

    def __init__(self, pids: Callable[[], Sequence[int]], interval: float = 0.05) -> None:
        self._pids = pids
        self._interval = interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()

    def sample(self) -> int:
        kib = status_kib(self._pids(), "VmRSS")
        self.peak_kib = max(self.peak_kib, kib)
        return kib

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()
