"""Summing stats across worker processes at scrape time, and admin commands sent to all.

Every worker answers its siblings on an abstract Unix socket named after the supervisor; the
worker that receives an admin request asks the others for their raw stats and adds them to its
own. Nothing is shared or locked on the request path: counters stay plain integers per worker.
A mutating admin request (/healthcheck/fail, /drain_listeners, /logging, /reset_counters)
reaches one worker through the shared admin socket; ``broadcast`` applies it in every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import mmap
import socket
import struct
from collections.abc import Awaitable, Callable

from udsproxy.stats import DEFAULT_BUCKETS, Histogram, Snapshot
from udsproxy.stats.store import Raw

__all__ = ["HostStats", "PeerGroup", "RestartCounter", "merge", "to_snapshot"]

HostStats = dict[str, dict[str, dict[str, int]]]  # cluster -> host -> stat -> value

log = logging.getLogger("udsproxy.stats.peers")

_TIMEOUT = 2.0


class RestartCounter:
    """One integer the supervisor writes and every worker reads: a shared anonymous mapping,
    created before fork."""

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, 8)

    def add(self, n: int = 1) -> None:
        self._map[:8] = struct.pack("q", self.value + n)

    @property
    def value(self) -> int:
        return int(struct.unpack("q", self._map[:8])[0])


def _socket_name(group: int, index: int) -> str:
    return f"\0udsproxy-{group}-stats-{index}"


_NOT_SUMMED = (".version", ".warming_state")


def merge(parts: list[Raw]) -> Raw:
    counters: dict[str, int] = {}
    gauges: dict[str, int] = {}
    hists: dict[str, list[float]] = {}
    for c, g, h in parts:
        for k, v in c.items():
            counters[k] = counters.get(k, 0) + v
        for k, v in g.items():
            # per-process gauges (memory, uptime) add up too; uptime, a version's hash and a
            # cluster's warming_state are the same in every worker, not a sum
            if k == "server.uptime" or k.endswith(_NOT_SUMMED):
                gauges[k] = max(gauges.get(k, 0), v)
            else:
                gauges[k] = gauges.get(k, 0) + v
        for k, vals in h.items():
            acc = hists.get(k)
            hists[k] = (
                list(vals) if acc is None else [a + b for a, b in zip(acc, vals, strict=True)]
            )
    return counters, gauges, hists


def to_snapshot(raw: Raw) -> Snapshot:
    counters, gauges, hists = raw
    return Snapshot(
        counters=counters,
        gauges=gauges,
        histograms={
            name: Histogram(
                bounds=DEFAULT_BUCKETS,
                counts=tuple(int(x) for x in vals[2:]),
                sum=vals[0],
                count=int(vals[1]),
            )
            for name, vals in hists.items()
        },
    )


class PeerGroup:
    def __init__(
        self,
        group: int,
        index: int,
        workers: int,
        local: Callable[[], Raw],
        apply: Callable[[str, str], Awaitable[None]],
    ) -> None:
        self.group = group
        self.index = index
        self.workers = workers
        self._local = local
        # runs an admin command in this process: (name, argument)
        self.apply = apply
        # per-host counts for /clusters: cluster -> host -> stat -> value
        self.hosts: Callable[[], HostStats] = dict
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        if self.workers > 1:
            self._server = await asyncio.start_unix_server(
                self._answer, path=_socket_name(self.group, self.index)
            )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            line = (await reader.readline()).strip().decode("utf-8", "replace")
            command, _, arg = line.partition(" ")
            if command == "stats":
                writer.write(json.dumps(self._local()).encode())
            elif command == "hosts":
                writer.write(json.dumps(self.hosts()).encode())
            else:
                await self.apply(command, arg)
                writer.write(b"{}")
            await writer.drain()
        writer.close()

    async def _ask_json(self, index: int, command: str) -> object | None:
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                sock.connect(_socket_name(self.group, index))
            except OSError:
                sock.close()
                raise
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(sock=sock), _TIMEOUT
            )
            writer.write(command.encode() + b"\n")
            data = await asyncio.wait_for(reader.read(), _TIMEOUT)
            writer.close()
        except (OSError, TimeoutError) as exc:
            log.warning("worker %d did not answer %r: %s", index, command, exc)
            return None
        return json.loads(data) if data else None

    async def collect_hosts(self) -> HostStats:
        """Every worker's per-host counts, summed (a worker that does not answer is left out)."""
        others = [i for i in range(self.workers) if i != self.index]
        answers = await asyncio.gather(*(self._ask_json(i, "hosts") for i in others))
        total: HostStats = {}
        for part in [self.hosts(), *(a for a in answers if isinstance(a, dict))]:
            for cluster, hosts in part.items():
                dst = total.setdefault(cluster, {})
                for host, stats in hosts.items():
                    acc = dst.setdefault(host, {})
                    for k, v in stats.items():
                        acc[k] = acc.get(k, 0) + v
        return total

    async def _ask(self, index: int, command: str) -> Raw | None:
        data = await self._ask_json(index, command)
        if command != "stats" or not isinstance(data, list):
            return None
        counters, gauges, hists = data
        return counters, gauges, hists

    async def collect(self) -> Raw:
        """Everyone's stats, summed; a worker that does not answer (restarting) is left out."""
        others = [i for i in range(self.workers) if i != self.index]
        answers = await asyncio.gather(*(self._ask(i, "stats") for i in others))
        return merge([self._local(), *(a for a in answers if a is not None)])

    async def broadcast(self, command: str, arg: str = "") -> None:
        """Run an admin command here and in every other worker (one line: no newlines)."""
        if "\n" in command or "\n" in arg:
            raise ValueError("an admin command is one line")
        await self.apply(command, arg)
        others = [i for i in range(self.workers) if i != self.index]
        await asyncio.gather(*(self._ask(i, f"{command} {arg}") for i in others))
