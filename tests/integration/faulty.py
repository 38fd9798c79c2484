"""A scripted faulty HTTP/1.1 upstream on a unix socket: each request it reads takes the next
step of its script (the last step repeats). Steps:

- ``"200"``, ``"503"``... (any status): answered, keep-alive, a short body naming the status;
- ``"reset"``: the connection is closed at once, no response (before headers);
- ``"hang"``: the request is read and never answered (until the server closes);
- ``"delay:0.3"``: answered 200 after 0.3 s;
- ``"partial"``: a 200 head with Content-Length 100 and 5 body bytes, then a close.
- ``"stall"``: a 200 head with Content-Length 100 and 5 body bytes, then nothing (until close).
- ``"badchunk"``: a chunked 200, one good chunk, then a chunk size that is not hex (the
  connection stays open: the proxy must see a protocol error, not a close).

It records every request it read (method, path, headers) and which connection it came on.
Real sockets, no mock: what the proxy sees is what a broken upstream does.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any

__all__ = ["FaultyUpstream"]


class FaultyUpstream:
    def __init__(self, path: str, script: Iterable[str] = ("200",)) -> None:
        self.path = path
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._step = 0
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(path)
        self._server.listen(128)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def set_script(self, script: Iterable[str]) -> None:
        with self._lock:
            self.script = list(script)
            self._step = 0

    def _next(self) -> str:
        with self._lock:
            step = self.script[min(self._step, len(self.script) - 1)]
            self._step += 1
            return step

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number = self.connections
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _read_request(self, conn: socket.socket, buf: bytearray) -> dict[str, Any] | None:
        while b"\r\n\r\n" not in buf:
            data = conn.recv(65536)
            if not data:
                return None
            buf += data
        head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = [tuple(x.split(":", 1)) for x in lines[1:]]
        hdrs = [(k.strip().lower(), v.strip()) for k, v in headers]
        length = int(next((v for k, v in hdrs if k == "content-length"), "0"))
        while len(rest) < length:
            data = conn.recv(65536)
            if not data:
                return None
            rest += data
        buf[:] = rest[length:]
        return {"method": method, "path": target, "headers": hdrs, "body": rest[:length]}

    def _serve(self, conn: socket.socket, number: int) -> None:
        buf = bytearray()
        with conn:
            while not self._stop.is_set():
                try:
                    req = self._read_request(conn, buf)
                except OSError:
                    return
                if req is None:
                    return
                req["conn"] = number
                step = self._next()
                req["step"] = step
                with self._lock:
                    self.requests.append(req)
                try:
                    if not self._act(conn, step):
                        return
                except OSError:
                    return

    def _act(self, conn: socket.socket, step: str) -> bool:
        """Do one step; False: the connection is over."""
        if step == "reset":
            return False
        if step == "hang":
            self._stop.wait()
            return False
        if step == "partial":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello")
            return False
        if step == "stall":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello")
            self._stop.wait()
            return False
        if step == "badchunk":
            head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            conn.sendall(head + b"5\r\nhello\r\n")
            time.sleep(0.1)  # the head goes downstream before the error is read
            conn.sendall(b"zz\r\n")
            self._stop.wait()
            return False
        status = 200
        if step.startswith("delay:"):
            time.sleep(float(step.split(":", 1)[1]))
        else:
            status = int(step)
        body = b"status %d\n" % status
        conn.sendall(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body))
        return True

    def paths(self) -> list[str]:
        with self._lock:
            return [r["path"] for r in self.requests]

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._server.close()
        with self._lock:
            for c in self._conns:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
