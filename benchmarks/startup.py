"""Start-up time: exec to the first accepted connection, and ``--mode validate`` end to end.

    python -m benchmarks.startup [-n 15] [--config conf/proxy.yaml] [--udsproxy .venv/bin/udsproxy]

Serve: each run copies the config with its listener port (``--port``, default 10000) changed to
a free one, execs ``udsproxy -c <copy>`` and connects to that port every millisecond. "accept"
is the time from just before the exec to the first connection the kernel accepts (the listener
is bound and listening); "response" is the first byte of an answer to ``GET /`` on it (any
status: without nginx it is a 503, which still proves the event loop serves). The process is
then stopped with SIGTERM (SIGKILL after 5 s) by its PID.

Validate: the wall time of ``udsproxy --mode validate -c <config>`` from exec to exit.

Bytecode: by default (``--bytecode cached``) the runs see what an installed udsproxy sees,
compiled bytecode: Python may write it (PYTHONDONTWRITEBYTECODE is removed), into a private
PYTHONPYCACHEPREFIX, and one untimed run first compiles everything. ``--bytecode env`` leaves
the environment as it is: with PYTHONDONTWRITEBYTECODE=1 and no udsproxy/__pycache__ (an
editable install that never wrote one) every run compiles udsproxy's 600 KB of source, about
0.1 s; scripts/lib.sh writes that bytecode at install. ``--no-table``
points UDSPROXY_CACHE_DIR at a directory that cannot exist, so the cached API table is not used
(the slow path: envoy-data-plane's classes).

The connect loop sleeps 1 ms between tries rather than spinning: on a 2-core machine a spinning
client takes a core from the process it measures. The page cache stays warm (no cache is
dropped: other processes share the machine), so the median is a warm start. Prints one line per
figure; ``--json`` prints them as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve_once(
    command: list[str], port: int, env: dict[str, str], timeout: float = 10.0
) -> tuple[float, float]:
    """Seconds from exec to the first accepted connection, and to the first response byte."""
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, env=env)
        try:
            while True:
                if proc.poll() is not None:
                    errors.seek(0)
                    message = errors.read().decode(errors="replace")[-2000:]
                    raise RuntimeError(f"udsproxy exited with {proc.returncode}:\n{message}")
                if time.perf_counter() - start > timeout:
                    raise RuntimeError(f"no connection accepted within {timeout} s")
                try:
                    conn = socket.create_connection(("127.0.0.1", port), timeout=timeout)
                except ConnectionRefusedError:
                    time.sleep(0.001)
                    continue
                accepted = time.perf_counter() - start
                with conn:
                    conn.sendall(b"GET / HTTP/1.1\r\nHost: startup\r\nConnection: close\r\n\r\n")
                    conn.recv(1)
                return accepted, time.perf_counter() - start
        finally:
            _stop(proc)


def validate_once(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, check=False, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"validate failed:\n{done.stderr.decode(errors='replace')}")
    return elapsed


def _summary(name: str, values: list[float]) -> dict[str, float | str]:
    return {
        "figure": name,
        "runs": len(values),
        "median_s": round(statistics.median(values), 4),
        "min_s": round(min(values), 4),
        "max_s": round(max(values), 4),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__)
    p.add_argument("-n", "--runs", type=int, default=15)
    p.add_argument("--config", default=str(ROOT / "conf" / "proxy.yaml"))
    p.add_argument("--port", type=int, default=10000, help="the config's listener port")
    default_binary = ROOT / ".venv" / "bin" / "udsproxy"
    p.add_argument("--udsproxy", default=str(default_binary), help="the command (shell words)")
    p.add_argument("--bytecode", choices=("cached", "env"), default="cached")
    p.add_argument("--no-table", action="store_true", help="do not use the cached API table")
    p.add_argument("--skip-serve", action="store_true")
    p.add_argument("--skip-validate", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("extra", nargs="*", help="more udsproxy arguments (after --)")
    args = p.parse_args(argv)

    text = Path(args.config).read_text(encoding="utf-8")
    pattern = re.compile(rf"(port_value:\s*){args.port}\b")
    if not args.skip_serve and not pattern.search(text):
        p.error(f"no 'port_value: {args.port}' in {args.config} (use --port)")
    results = []
    with tempfile.TemporaryDirectory(prefix="udsproxy-startup-") as tmp:
        env = dict(os.environ)
        if args.bytecode == "cached":
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        if args.no_table:
            env["UDSPROXY_CACHE_DIR"] = str(Path(tmp) / "proxy.yaml" / "cannot-exist")
        binary = shlex.split(args.udsproxy)
        validate = [*binary, "--mode", "validate", "-c", args.config]
        if args.bytecode == "cached":  # untimed: compiles what validate imports
            validate_once(validate, env)
        if not args.skip_serve:
            accepts, responses = [], []
            for run in range(args.runs + (args.bytecode == "cached")):
                port = _free_port()
                config = Path(tmp) / "proxy.yaml"
                config.write_text(pattern.sub(rf"\g<1>{port}", text), encoding="utf-8")
                command = [*binary, "-c", str(config), *args.extra]
                accepted, responded = serve_once(command, port, env)
                if run or args.bytecode != "cached":  # the first compiled the rest
                    accepts.append(accepted)
                    responses.append(responded)
            results.append(_summary("exec->accept", accepts))
            results.append(_summary("exec->first response", responses))
        if not args.skip_validate:
            times = [validate_once(validate, env) for _ in range(args.runs)]
            results.append(_summary("validate", times))
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            print(
                f"{r['figure']:<22} median {r['median_s']:.3f} s  min {r['min_s']:.3f}  "
                f"max {r['max_s']:.3f}  ({r['runs']} runs)"
            )
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
