"""Setting up a fresh Debian machine (apt-get, pip) and describing the machine and versions."""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.servers import which

# command -> Debian package
TOOLS = {"nginx": "nginx-light", "haproxy": "haproxy", "caddy": "caddy", "wrk": "wrk"}
REPO = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(f"==> {msg}", file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def _apt_prefix() -> list[str] | None:
    if shutil.which("apt-get") is None:
        return None
    if os.geteuid() == 0:
        return []
    sudo = shutil.which("sudo")
    if sudo and subprocess.run([sudo, "-n", "true"], capture_output=True).returncode == 0:
        return [sudo, "-n"]
    return None


def _apt_has(package: str) -> bool:
    out = subprocess.run(["apt-cache", "show", package], capture_output=True, check=False)
    return out.returncode == 0 and bool(out.stdout.strip())


def ensure_tools(wanted: set[str]) -> None:
    """apt-get install the missing programs among nginx, haproxy, caddy, wrk."""
    missing = [cmd for cmd in sorted(wanted) if cmd in TOOLS and which(cmd) is None]
    if not missing:
        return
    prefix = _apt_prefix()
    if prefix is None:
        warn(f"missing {', '.join(missing)} and no apt-get as root: install them yourself")
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log("apt-get update")
    subprocess.run([*prefix, "apt-get", "update", "-qq"], env=env, check=False, timeout=600)
    packages = []
    for cmd in missing:
        pkg = TOOLS[cmd]
        if pkg == "nginx-light" and not _apt_has(pkg):
            pkg = "nginx"
        if _apt_has(pkg):
            packages.append(pkg)
        else:
            warn(f"no Debian package for {cmd} here ({pkg}): its runs are skipped")
    if packages:
        log(f"apt-get install {' '.join(packages)}")
        subprocess.run(
            [*prefix, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
            env=env,
            check=False,
            timeout=1200,
        )
        # On a systemd machine the packages start their own services (caddy on :80, an idle
        # haproxy). They stay idle; the benchmarks run their own instances on other ports.


def ensure_matplotlib() -> bool:
    if importlib.util.find_spec("matplotlib") is not None:
        return True
    if sys.prefix == sys.base_prefix:
        warn("matplotlib is missing and this is not a venv: no chart (pip install matplotlib)")
        return False
    log(f"pip install matplotlib into {sys.prefix}")
    rc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "matplotlib"],
        check=False,
        timeout=900,
    ).returncode
    importlib.invalidate_caches()
    if rc != 0 or importlib.util.find_spec("matplotlib") is None:
        warn("pip install matplotlib failed: no chart")
        return False
    return True


def raise_nofile() -> None:
    """Children inherit this: 1000 idle connections plus pools need more than 1024 fds."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _run(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (out.stdout + out.stderr).strip()


def udsproxy_form(src: Path | None = None) -> str:
    """What `udsproxy --version` says of the udsproxy the harness runs: its version and whether
    it is pure Python or compiled (``--udsproxy-src`` build/native is compiled)."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "udsproxy", "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
            cwd=str(src) if src is not None else "/",
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.removeprefix("udsproxy ") or "?"


def versions(udsproxy_src: Path | None = None) -> dict[str, str]:
    v: dict[str, str] = {}
    if (nginx := which("nginx")) is not None:
        m = re.search(r"nginx/(\S+)", _run([nginx, "-v"]))
        v["nginx"] = m.group(1) if m else "?"
    if (haproxy := which("haproxy")) is not None:
        m = re.search(r"version (\S+)", _run([haproxy, "-v"]))
        v["haproxy"] = m.group(1) if m else "?"
    if (caddy := which("caddy")) is not None:
        out = _run([caddy, "version"]).split()
        v["caddy"] = out[0] if out else "?"
    if (wrk := which("wrk")) is not None:
        m = re.search(r"wrk (\S+)", _run([wrk, "-v"]))
        v["wrk"] = m.group(1) if m else "?"
    v["python"] = platform.python_version()
    v["udsproxy"] = udsproxy_form(udsproxy_src)
    for mod in ("uvloop", "httptools"):
        try:
            from importlib.metadata import version

            v[mod] = version(mod)
        except Exception:
            v[mod] = "?"
    return v


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    osname = "?"
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                osname = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    commit = _run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "kernel": platform.release(),
        "os": osname,
        "loadavg_at_start": os.getloadavg(),
        "git": (commit + ("-dirty" if dirty else "")) if commit else "?",
    }
