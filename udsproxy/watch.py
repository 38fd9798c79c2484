"""Reload on file changes: dynamic CDS/LDS files and TLS certificates.

Envoy reloads a path-based config source only when the file is replaced by a rename (or, with
``watched_directory``, when an entry there is moved). udsproxy also reloads on an in-place edit
and on delete+recreate. Events are debounced, so a file being written is read once it is
complete; a half-written file fails validation and is retried on its next event. A slow stat()
poll runs beside the watcher for filesystems that send no events (NFS, some overlays).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from udsproxy.config import schema

if TYPE_CHECKING:
    import watchfiles

__all__ = ["ConfigWatcher", "watch_targets"]

log = logging.getLogger("udsproxy.watch")

_DEBOUNCE_MS = 250
_POLL_INTERVAL = 5.0


def watch_targets(bootstrap: schema.Bootstrap) -> tuple[set[str], set[str]]:
    """(directories whose every change matters, files watched through their directory)."""
    dirs: set[str] = set()
    files: set[str] = set()
    dyn = bootstrap.dynamic_resources
    for src in (dyn.cds, dyn.lds) if dyn else ():
        if src is None:
            continue
        if src.watched_directory:
            dirs.add(os.path.abspath(src.watched_directory))
        files.add(os.path.abspath(src.path))
    for listener in bootstrap.listeners:
        if listener.tls is not None:
            for cert in listener.tls.certificates:
                for source in (cert.certificate_chain, cert.private_key):
                    if source.kind == "filename":  # inline and environment values never change
                        files.add(os.path.abspath(source.value))
    return dirs, files


def _signature(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks: a ConfigMap's ..data swap changes the target
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class _Filter:
    """Events under a watched directory, or on one of the watched file names."""

    def __init__(self, dirs: set[str], names: set[str]) -> None:
        self.prefixes = tuple(d + os.sep for d in dirs)
        self.names = names

    def __call__(self, _change: watchfiles.Change, path: str) -> bool:
        return path.startswith(self.prefixes) or os.path.basename(path) in self.names


class ConfigWatcher:
    def __init__(
        self,
        targets: Callable[[], tuple[set[str], set[str]]],
        on_change: Callable[[str], Awaitable[object]],
        *,
        poll_interval: float = _POLL_INTERVAL,
        force_polling: bool = False,
    ) -> None:
        self._targets = targets  # re-evaluated after each reload: the files may change
        self._on_change = on_change
        self._poll_interval = poll_interval
        self._force_polling = force_polling
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._seen: dict[str, tuple[int, int, int] | None] = {}
        self._restart = asyncio.Event()

    def start(self) -> None:
        self._snapshot()
        self._tasks = [
            asyncio.ensure_future(self._watch_loop()),
            asyncio.ensure_future(self._poll_loop()),
        ]

    async def stop(self) -> None:
        self._stop.set()
        self._restart.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _snapshot(self) -> None:
        _dirs, files = self._targets()
        self._seen = {f: _signature(f) for f in files}

    async def _changed(self, why: str) -> None:
        await self._on_change(why)
        old_targets = set(self._seen)
        self._snapshot()
        if set(self._seen) != old_targets:
            self._restart.set()  # the set of watched files changed: re-arm the watcher

    async def _watch_loop(self) -> None:
        while not self._stop.is_set():
            dirs, files = self._targets()
            watch = sorted(dirs | {os.path.dirname(f) for f in files})
            watch = [d for d in watch if os.path.isdir(d)]
            if not watch:
                await self._stop.wait()
                return
            self._restart.clear()
            names = {os.path.basename(f) for f in files}

            relevant = _Filter(dirs, names)
            import watchfiles  # only where there is something to watch: 6 ms of start-up

            try:
                async for changes in watchfiles.awatch(
                    *watch,
                    watch_filter=relevant,
                    debounce=_DEBOUNCE_MS,
                    step=50,
                    stop_event=self._restart,
                    recursive=bool(dirs),
                    force_polling=self._force_polling,
                ):
                    paths = sorted({p for _c, p in changes})
                    await self._changed("file change: " + ", ".join(paths))
            except (OSError, RuntimeError) as exc:
                log.warning(
                    "file watcher failed (%s); relying on the %ss poll", exc, self._poll_interval
                )
                await self._stop.wait()
                return

    async def _poll_loop(self) -> None:
        while not self._stop.is_set():
            await asyncio.sleep(self._poll_interval)
            changed = [f for f, sig in self._seen.items() if _signature(f) != sig]
            if changed:
                await self._changed("poll: " + ", ".join(sorted(changed)))
