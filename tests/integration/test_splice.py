"""splice(2) relay between real sockets: exact bytes, early EOF, and a slow destination."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
import uvloop

from udsproxy.splice import AVAILABLE, Splicer

pytestmark = pytest.mark.skipif(not AVAILABLE, reason="splice(2) is Linux-only")


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.setblocking(False)
    b.setblocking(False)
    return a, b


async def _relay(payload: bytes, count: int, close_early: bool = False) -> tuple[bytes, str]:
    loop = asyncio.get_running_loop()
    src_w, src_r = _pair()
    dst_w, dst_r = _pair()
    done = loop.create_future()
    progress: list[int] = []
    splicer = Splicer(
        loop,
        src_r.fileno(),
        dst_w.fileno(),
        count,
        progress.append,
        lambda: done.set_result("done"),
        lambda exc, eof: done.set_result(f"error eof={eof}"),
    )
    splicer.start()

    async def feed() -> None:
        await loop.sock_sendall(src_w, payload)
        if close_early:
            src_w.close()

    async def drain() -> bytes:
        got = bytearray()
        while len(got) < count:
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(dst_r, 65536), 0.5)
            except TimeoutError:
                break
            if not chunk:
                break
            got += chunk
            await asyncio.sleep(0)  # a slow-ish reader: the pipe fills and the writer waits
        return bytes(got)

    feeder = asyncio.ensure_future(feed())
    got = await drain()
    result = await asyncio.wait_for(done, 5)
    await feeder
    assert sum(progress) == len(got)
    for s in (src_r, dst_w, dst_r):
        s.close()
    if not close_early:
        src_w.close()
    return got, result


def test_splice_moves_exact_bytes() -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)
    got, result = uvloop.run(_relay(payload + b"NEXT", len(payload)))
    assert result == "done"
    assert got == payload  # and not one byte of what follows


def test_splice_reports_early_eof() -> None:
    payload = os.urandom(1000)
    got, result = uvloop.run(_relay(payload, 5000, close_early=True))
    assert got == payload
    assert result == "error eof=True"
