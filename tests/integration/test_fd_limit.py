"""Out of file descriptors at accept() (issue 12, EMFILE): a client beyond the limit is not reset
but waits in the kernel's backlog and is served once a descriptor frees; the refusal is counted
(``listener.<address>.downstream_cx_fd_exhausted``) and logged once per interval; the paused
listener does not spin."""

from __future__ import annotations

import os
import re
import resource
import socket
import time
from pathlib import Path

import pytest

from tests.integration.support import ProxyProcess, bootstrap, listener, vhost, wait_until

_REQUEST = b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n"


def _direct(body: str) -> dict[str, object]:
    return {
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_string": body}},
    }


def _served(sock: socket.socket, timeout: float) -> bytes:
    """The response head and body of a direct response on ``sock`` ('' if none came)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\nok" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_fd_limit_queues_clients_counts_and_logs(tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    cfg = bootstrap([listener([vhost("v", [_direct("ok")])], access_log=log_path)], [])
    cfg["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
    proxy = ProxyProcess(cfg, tmp_path).start()
    held: list[socket.socket] = []
    try:
        assert wait_until(lambda: "admin listening on" in proxy.stderr(), 10), proxy.stderr()
        admin_port = int(re.search(r"admin listening on \S+:(\d+)", proxy.stderr())[1])  # type: ignore[index]
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        in_use = len(os.listdir(f"/proc/{proxy.pid}/fd"))
        resource.prlimit(proxy.pid, resource.RLIMIT_NOFILE, (in_use + 3, hard))
        waiting = None
        for _ in range(10):
            sock = socket.create_connection(proxy.address())  # the kernel's backlog accepts it
            sock.sendall(_REQUEST)
            try:
                got = _served(sock, 1.0)
            except TimeoutError:
                waiting = sock  # not accepted: it waits, it is not reset
                break
            assert got.startswith(b"HTTP/1.1 200"), got
            held.append(sock)
        assert waiting is not None and held, "the limit was never reached"
        # While at the limit the listener is paused: a retry every 50 ms, not a busy loop.
        before = _cpu_s(proxy.pid)
        time.sleep(1.0)
        assert _cpu_s(proxy.pid) - before < 0.3
        waiting.settimeout(0.2)
        with pytest.raises(TimeoutError):  # neither served nor closed: still in the backlog
            waiting.recv(1)
        held.pop().close()  # a descriptor frees: the waiting client is accepted and served
        got = _served(waiting, 10.0)
        assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"ok"), got
        held.append(waiting)
        warnings = [
            line for line in proxy.stderr().splitlines() if "not accepted in the last" in line
        ]
        assert len(warnings) == 1, proxy.stderr()  # many refusals within one 10 s interval
        assert "listener 'ingress_http'" in warnings[0]
        assert "Too many open files" in warnings[0]
        for sock in held:
            sock.close()
        held.clear()
        resource.prlimit(proxy.pid, resource.RLIMIT_NOFILE, (soft, hard))
        with socket.create_connection(("127.0.0.1", admin_port), timeout=5) as admin:
            admin.sendall(b"GET /stats?filter=fd_exhausted HTTP/1.1\r\nhost: a\r\n\r\n")
            text = b""
            while b"fd_exhausted:" not in text or not text.endswith(b"\n"):
                text += admin.recv(4096)
        counts = re.findall(rb"listener\.127\.0\.0\.1_\d+\.downstream_cx_fd_exhausted: (\d+)", text)
        assert counts and int(counts[0]) >= 1, text
        # one access-log line per served request, the one that waited included
        assert wait_until(lambda: log_path.exists() and log_path.read_text().count("\n") >= 2, 5)
        lines = log_path.read_text().splitlines()
        assert all('"GET /x HTTP/1.1" 200' in line for line in lines), lines
    finally:
        for sock in held:
            sock.close()
        proxy.stop()
