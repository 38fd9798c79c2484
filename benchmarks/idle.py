"""The idle-connections client: ``python -m benchmarks.idle --port P --conns 1000``.

Opens N keep-alive connections to 127.0.0.1:P (in batches, so the listen backlog never
overflows), sends one GET on each and reads the response, then prints ``READY {json}`` and
holds every connection open and idle until its stdin closes. Then it counts the connections the
server closed meanwhile, prints ``DONE {json}`` and exits.
"""

from __future__ import annotations

import argparse
import json
import resource
import selectors
import socket
import sys
import time


def _raise_nofile(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, n + 64)) if hard != resource.RLIM_INFINITY else max(soft, n + 64)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.start = 0.0
        self.status = 0
        self.done = False

    def feed(self, data: bytes) -> None:
        self.buf += data
        head_end = self.buf.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = self.buf[:head_end].decode("latin-1").split("\r\n")
        self.status = int(head[0].split()[1])
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if len(self.buf) >= head_end + 4 + length:
            self.done = True


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/index.html")
    p.add_argument("--conns", type=int, default=1000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args()
    _raise_nofile(args.conns)
    request = f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n\r\n".encode()
    conns: list[Conn] = []
    counts = {"ok": 0, "connect": 0, "read": 0, "status": 0}
    latencies: list[float] = []
    deadline = time.monotonic() + args.timeout
    sel = selectors.DefaultSelector()
    for first in range(0, args.conns, args.batch):
        batch: list[Conn] = []
        for _ in range(first, min(args.conns, first + args.batch)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(5)
            try:
                sock.connect((args.host, args.port))
            except OSError:
                counts["connect"] += 1
                sock.close()
                continue
            sock.setblocking(False)
            c = Conn(sock)
            c.start = time.monotonic()
            try:
                sock.send(request)
            except OSError:
                counts["read"] += 1
                sock.close()
                continue
            sel.register(sock, selectors.EVENT_READ, c)
            batch.append(c)
        pending = len(batch)
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1.0):
                c = key.data
                try:
                    data = c.sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    counts["read"] += 1
                    sel.unregister(c.sock)
                    c.sock.close()
                    pending -= 1
                    continue
                c.feed(data)
                if c.done:
                    sel.unregister(c.sock)
                    pending -= 1
                    latencies.append(time.monotonic() - c.start)
                    if 200 <= c.status < 400:
                        counts["ok"] += 1
                    else:
                        counts["status"] += 1
                    conns.append(c)
    latencies.sort()

    def pct(q: float) -> float | None:
        if not latencies:
            return None
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 3)

    print("READY " + json.dumps({**counts, "p50_ms": pct(0.5), "p99_ms": pct(0.99)}), flush=True)
    sys.stdin.read()  # hold until the harness closes our stdin
    closed = 0
    for c in conns:
        c.sock.setblocking(False)
        try:
            if c.sock.recv(1) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
        c.sock.close()
    print("DONE " + json.dumps({"open": len(conns) - closed, "closed_by_peer": closed}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
