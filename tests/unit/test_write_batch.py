"""Writes held to the end of the event-loop iteration (udsproxy/write_batch.py).

The batch alone on a fake loop, then the proxy's two connections on a real uvloop loop with
in-memory transports (benchmarks.micro's rig, the objects the server wires): the iteration's first
write goes out at once, later ones at its end, in order, and whatever bypasses the held bytes (a
body, a close, a reset) flushes or drops them first.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop

from benchmarks.micro import NGINX_200, WRK_GET, Rig
from udsproxy.write_batch import WriteBatch


class SoonLoop:
    def __init__(self) -> None:
        self.soon: list[Callable[[], None]] = []

    def call_soon(self, cb: Callable[[], None]) -> None:
        self.soon.append(cb)

    def end_iteration(self) -> None:
        soon, self.soon = self.soon, []
        for cb in soon:
            cb()


class Holder:
    def __init__(self, log: list[str], name: str, fail: bool = False) -> None:
        self.log, self.name, self.fail = log, name, fail

    def flush_held(self) -> None:
        self.log.append(self.name)
        if self.fail:
            raise RuntimeError("boom")


def test_the_first_write_of_an_iteration_goes_out_the_rest_wait_for_its_end() -> None:
    loop = SoonLoop()
    batch = WriteBatch(loop)  # type: ignore[arg-type]
    log: list[str] = []
    assert batch.first()  # written at once; the end of the iteration is scheduled once
    assert not batch.first() and not batch.first()
    batch.hold(Holder(log, "a", fail=True))  # one failing does not keep the others' bytes
    batch.hold(Holder(log, "b"))
    assert len(loop.soon) == 1 and log == []
    loop.end_iteration()
    assert log == ["a", "b"] and batch.held == []
    assert batch.first()  # a new iteration
    loop.end_iteration()
    assert log == ["a", "b"]


@pytest.fixture
def rig() -> Iterator[tuple[Rig, asyncio.AbstractEventLoop]]:
    loop = uvloop.new_event_loop()
    with tempfile.TemporaryDirectory() as d:
        r = Rig(loop, os.path.join(d, "access.log"))
        yield r, loop
        r.close()
    loop.close()


def _sent(t: Any) -> bytes:
    return b"".join(bytes(x) for x in t.out)


def test_a_response_written_after_the_iterations_first_write_waits_for_its_end(rig) -> None:
    r, loop = rig

    async def go() -> None:
        r.down.data_received(WRK_GET)
        assert _sent(r.up_t).startswith(b"GET / HTTP/1.1\r\n")  # the first write: at once
        r.up.data_received(NGINX_200)
        assert _sent(r.down_t) == b""  # the second: held, corked
        assert r.down.held and r.down.corked
        await asyncio.sleep(0)
        got = _sent(r.down_t)
        assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(b"x" * 612)
        assert not r.down.held and not r.down.corked

    loop.run_until_complete(go())


def test_held_bytes_keep_their_order_with_what_follows_them(rig) -> None:
    r, loop = rig

    async def go() -> None:
        await asyncio.sleep(0)
        assert r.ctx.write_batch is not None and r.ctx.write_batch.first()  # used up
        r.down.data_received(WRK_GET)
        assert _sent(r.up_t) == b"" and r.up.held is not None  # the request head waits too
        await asyncio.sleep(0)
        assert _sent(r.up_t).startswith(b"GET / HTTP/1.1\r\n") and r.up.held is None
        r.up_t.out.clear()
        assert r.ctx.write_batch.first()  # used up again: the response below is held
        r.up.data_received(NGINX_200)
        r.down.write(b"after")  # anything written meanwhile queues behind it
        await asyncio.sleep(0)
        got = _sent(r.down_t)
        assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(b"x" * 612 + b"after")

    loop.run_until_complete(go())


def test_a_body_or_a_close_flushes_held_bytes_first_and_a_reset_drops_them(rig) -> None:
    r, loop = rig
    up = r.up

    async def go() -> None:
        await asyncio.sleep(0)
        batch = r.ctx.write_batch
        assert batch is not None and batch.first()
        up.held = [b"HEAD-"]
        batch.hold(up)
        up.write(b"body")  # a body never overtakes its head
        assert _sent(r.up_t) == b"HEAD-body" and up.held is None
        # the downstream: a close writes what is held before the FIN
        r.down.cork()
        r.down.write(b"held")
        r.down.release()
        assert r.down.held and _sent(r.down_t) == b""
        r.down.uncork()  # what close() does first
        assert _sent(r.down_t) == b"held"
        await asyncio.sleep(0)  # the batch's flush finds nothing left to write
        assert _sent(r.down_t) == b"held" and not r.down.held
        # a reset drops a request that was never sent
        assert batch.first()  # a new iteration: used up
        up.held = [b"dropped"]
        batch.hold(up)
        aborted: list[bool] = []
        r.up_t.abort = lambda: aborted.append(True)  # type: ignore[method-assign]
        up.abort()
        await asyncio.sleep(0)
        assert aborted and up.held is None and _sent(r.up_t) == b"HEAD-body"

    loop.run_until_complete(go())


def test_large_or_unfinished_responses_are_written_at_once(rig) -> None:
    r, loop = rig
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 20000\r\n\r\n" + b"y" * 20000

    async def go() -> None:
        await asyncio.sleep(0)
        for response in (big, big[:5000]):  # whole but large; a body still coming
            r.down.data_received(WRK_GET)
            assert r.ctx.write_batch is not None
            r.ctx.write_batch.first()  # this iteration has written: small ones would wait
            r.up.data_received(response)
            assert _sent(r.down_t).startswith(b"HTTP/1.1 200 OK\r\n") and not r.down.held
            if response is not big:
                r.up.data_received(big[5000:])  # the rest: the response ends
            r.down_t.out.clear()
            r.up_t.out.clear()
            await asyncio.sleep(0)

    loop.run_until_complete(go())
