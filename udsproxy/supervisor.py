"""Processes: one worker serving in this process, or a supervisor and N forked workers.

With ``--concurrency N`` the supervisor binds what must be shared before forking (pipe
listeners, and TCP listeners on port 0 so every worker gets the same port) and the workers
inherit those sockets; explicit TCP ports are bound by each worker with SO_REUSEPORT, so the
kernel spreads connections across them. The supervisor runs no event loop: it waits for
signals, forwards SIGHUP (reload), SIGUSR1 (reopen the logs) and SIGTERM/SIGINT (drain) to
every worker, reaps every child (it may be PID 1 in a container: orphans come to it) and
restarts a worker that dies, counting it.

Signals: the kernel drops a signal sent to PID 1 unless it has a handler or blocks it, so each
one udsproxy answers is handled in both paths: the supervisor blocks them and waits with
sigtimedwait; a serving process installs loop handlers, and a worker keeps them blocked from
the fork until those handlers are in place (a SIGUSR1 or SIGHUP meanwhile waits, not kills).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

import uvloop

from udsproxy import sdnotify
from udsproxy.admin import AdminServer
from udsproxy.applog import reopen_log_path, reopen_logs
from udsproxy.config import schema
from udsproxy.errors import ConfigError
from udsproxy.procsignals import HANDLED
from udsproxy.server import Server, bind_unix
from udsproxy.stats.peers import PeerGroup, RestartCounter
from udsproxy.watch import ConfigWatcher, watch_targets

__all__ = ["run_workers", "serve"]

log = logging.getLogger("udsproxy.supervisor")

_HANDLED = set(HANDLED)
_SIGNALS = _HANDLED | {signal.SIGCHLD}


async def serve(
    source: object,
    *,
    drain_time: float,
    splice_min_bytes: int,
    splice_responses: bool = False,
    reuse_port: bool = False,
    inherited: dict[str, socket.socket] | None = None,
    worker: int | None = None,
    workers: int = 1,
    group: int = 0,
    request_stats: bool = True,
    ready_requires_upstream: bool = False,
    options: dict[str, Any] | None = None,
    restarts: RestartCounter | None = None,
    loaded: schema.Bootstrap | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT; SIGHUP and file changes reload. ``loaded``: the source,
    already loaded."""
    inherited = dict(inherited or {})
    admin_sock = inherited.pop(ADMIN_KEY, None)
    server = await Server.start(
        source,  # type: ignore[arg-type]
        announce=worker is None or worker == 0,
        splice_min_bytes=splice_min_bytes,
        splice_responses=splice_responses,
        reuse_port=reuse_port,
        inherited=inherited,
        request_stats=request_stats,
        loaded=loaded,
        concurrency=workers,
        worker=worker or 0,
    )
    server.primary = not worker  # one process publishes the process-wide server.* stats
    server.drain_time = drain_time
    server.concurrency = workers
    server.restarts = restarts
    peers = PeerGroup(group or os.getpid(), worker or 0, workers, server.raw_stats, _no_command)
    admin: AdminServer | None = None
    if server.bootstrap.admin is not None:
        admin = AdminServer(
            server, peers, ready_requires_upstream=ready_requires_upstream, options=options
        )
        peers.apply = admin.apply
        peers.hosts = server.host_stats
    await peers.start()
    if admin is not None and server.bootstrap.admin is not None:
        await _start_admin(
            admin,
            server.bootstrap.admin.address,
            admin_sock,
            reuse_port,
            announce=worker is None or worker == 0,
        )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    pending: set[asyncio.Task[bool]] = set()
    announce = worker is None or worker == 0

    def ready_again(_: object) -> None:
        if not stop.is_set():  # never READY=1 after STOPPING=1
            sdnotify.notify("READY=1")

    def reload(reason: str) -> None:
        if stop.is_set():
            return  # draining: no reload any more
        if worker is None:
            sdnotify.reloading()  # with workers the supervisor says it
        task = loop.create_task(server.reload(reason))
        pending.add(task)
        task.add_done_callback(pending.discard)
        if announce:
            task.add_done_callback(ready_again)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload, "SIGHUP")
    loop.add_signal_handler(signal.SIGUSR1, reopen_logs, server.sinks)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED)  # a worker's: blocked since the fork
    if announce:
        sdnotify.notify("READY=1")
    watcher = ConfigWatcher(
        lambda: watch_targets(server.bootstrap),
        lambda why: server.reload(why, if_changed=True),  # one application per content
    )
    watcher.start()
    await stop.wait()
    if worker is None:
        sdnotify.notify("STOPPING=1")
    log.info("shutting down: draining for up to %.1fs", drain_time)
    await watcher.stop()
    if admin is not None:
        admin.server.state = "DRAINING"
    await server.stop(timeout=drain_time)
    if admin is not None:
        await admin.stop()
    await peers.stop()


async def _no_command(command: str, arg: str) -> None:
    """Without an admin interface no sibling sends commands."""


_FAST_DEATH_S = 5.0  # a worker that dies sooner than this after its start failed to start
_MAX_FAST_DEATHS = 5
_BACKOFF_S = 0.5
_MAX_BACKOFF_S = 8.0

ADMIN_KEY = "\0admin"  # the admin socket's key among the inherited listener sockets


async def _start_admin(
    admin: AdminServer,
    address: schema.Address,
    sock: socket.socket | None,
    reuse_port: bool,
    *,
    announce: bool,
) -> None:
    if sock is not None:
        if sock.family == socket.AF_UNIX:
            await admin.start_unix(sock=sock)
            text = str(address)
        else:
            text = await admin.start(sock=sock)
    elif isinstance(address, schema.Pipe):
        await admin.start_unix(sock=bind_unix(address))
        text = str(address)
    else:
        text = await admin.start(
            host=address.address,
            port=address.port_value,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )
    if announce:
        print(f"udsproxy: admin listening on {text}", file=sys.stderr)
        sys.stderr.flush()


def _shared_sockets(bootstrap: schema.Bootstrap) -> dict[str, socket.socket]:
    """Sockets every worker must share: pipes (one path) and TCP port 0 (one port)."""
    shared: dict[str, socket.socket] = {}
    named = [(listener.name, listener.address) for listener in bootstrap.listeners]
    if bootstrap.admin is not None:
        named.append((ADMIN_KEY, bootstrap.admin.address))
    for name, address in named:
        if isinstance(address, schema.Pipe):
            shared[name] = bind_unix(address)
        elif address.port_value == 0:
            family = socket.AF_INET6 if ":" in address.address else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address.address, 0))
            sock.setblocking(False)
            shared[name] = sock
    return shared


class _Supervisor:
    def __init__(
        self,
        source: object,
        bootstrap: schema.Bootstrap,
        concurrency: int,
        drain_time: float,
        serve_options: dict[str, Any],
    ) -> None:
        self.source = source
        self.concurrency = concurrency
        self.drain_time = drain_time
        self.serve_options = serve_options
        self.shared = _shared_sockets(bootstrap)
        self.loaded: schema.Bootstrap | None = bootstrap  # for the first start of each worker
        self.spawned: set[int] = set()
        self.workers: dict[int, int] = {}  # pid -> worker index
        self.restarts = RestartCounter()  # shared with the workers, who publish it
        self.stopping = False
        self.started: dict[int, float] = {}  # worker index -> when it was last forked
        self.fast_failures: dict[int, int] = {}  # consecutive deaths soon after a start
        self.due: dict[int, float] = {}  # worker index -> when to restart it
        self.exit_code = 0
        self.kill_at = 0.0  # once stopping: when workers still running get SIGKILL

    def spawn(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                # The handled signals stay blocked until serve() installs its handlers.
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
                for sig in _HANDLED:
                    signal.signal(sig, signal.SIG_DFL)
                uvloop.run(
                    serve(
                        self.source,
                        drain_time=self.drain_time,
                        reuse_port=True,
                        inherited=dict(self.shared),
                        worker=index,
                        workers=self.concurrency,
                        group=os.getppid(),
                        restarts=self.restarts,
                        # a restarted worker reads the files again: they may have changed
                        loaded=None if index in self.spawned else self.loaded,
                        **self.serve_options,
                    )
                )
                code = 0
            except ConfigError as exc:
                log.error("worker %d: %s", index, exc.render())
            except OSError as exc:  # a port in use, a socket file that cannot be made
                log.error("worker %d: %s", index, exc)
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                os._exit(code)
        self.workers[pid] = index
        self.spawned.add(index)
        self.started[index] = time.monotonic()
        log.info("worker %d started (pid %d)", index, pid)

    def forward(self, sig: int) -> None:
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def reap(self) -> None:
        # waitpid(-1): as PID 1 any orphan in the container is ours to reap, not only workers
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            index = self.workers.pop(pid, None)
            if index is None:
                continue
            if self.stopping:
                log.info("worker %d (pid %d) exited", index, pid)
                continue
            if self.concurrency == 1 and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
                # the only worker drained and left on its own (/quitquitquit): so do we
                log.info("worker %d (pid %d) exited", index, pid)
                self.stopping = True
                continue
            self.restarts.add(1)
            # A worker that dies right after it started (a port in use, a bad file) would die
            # again at once: back off, and give up after a few such deaths in a row.
            lived = time.monotonic() - self.started.get(index, 0.0)
            fast = self.fast_failures[index] = (
                self.fast_failures.get(index, 0) + 1 if lived < _FAST_DEATH_S else 0
            )
            if fast >= _MAX_FAST_DEATHS:
                log.error(
                    "worker %d (pid %d) died (%s) %d times in a row right after starting;"
                    " giving up (see the errors above)",
                    index,
                    pid,
                    _describe(status),
                    fast,
                )
                self.exit_code = 1
                self.stop()
                continue
            delay = min(_BACKOFF_S * 2 ** max(fast - 1, 0), _MAX_BACKOFF_S) if fast else 0.0
            log.error(
                "worker %d (pid %d) died (%s); restarting in %.1fs (server.worker_restarts=%d)",
                index,
                pid,
                _describe(status),
                delay,
                self.restarts.value,
            )
            self.due[index] = time.monotonic() + delay

    def stop(self) -> None:
        sdnotify.notify("STOPPING=1")
        self.stopping = True
        self.kill_at = time.monotonic() + self.drain_time + 2.0
        self.forward(signal.SIGTERM)

    def restart_due(self) -> None:
        now = time.monotonic()
        for index, when in list(self.due.items()):
            if self.stopping:
                self.due.clear()
            elif when <= now:
                del self.due[index]
                self.spawn(index)

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        for index in range(self.concurrency):
            self.spawn(index)
        while self.workers or (self.due and not self.stopping):
            wait = 0.5 if not self.due else max(0.01, min(self.due.values()) - time.monotonic())
            info = signal.sigtimedwait(_SIGNALS, min(wait, 0.5))
            if info is not None:
                if info.si_signo == signal.SIGHUP and self.stopping:
                    log.info("SIGHUP while stopping: no reload")
                elif info.si_signo == signal.SIGHUP:
                    log.info("SIGHUP: reloading every worker")
                    sdnotify.reloading()  # worker 0 says READY=1 when its reload is done
                    self.forward(signal.SIGHUP)
                elif info.si_signo == signal.SIGUSR1:
                    reopen_log_path()  # the supervisor's own --log-path, rotated too
                    log.info("SIGUSR1: every worker reopens its log files")
                    self.forward(signal.SIGUSR1)
                elif info.si_signo in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
                    self.stop()
            self.reap()
            self.restart_due()
            if self.stopping and self.workers and time.monotonic() > self.kill_at:
                log.warning("workers still running after the drain time: killing them")
                self.forward(signal.SIGKILL)
        for sock in self.shared.values():
            if sock.family == socket.AF_UNIX:
                path = sock.getsockname()
                if isinstance(path, str) and path and not path.startswith("\0"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
            sock.close()
        return self.exit_code


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.WEXITSTATUS(status)}"


def run_workers(
    source: object,
    bootstrap: schema.Bootstrap,
    concurrency: int,
    drain_time: float,
    **serve_options: Any,
) -> int:
    return _Supervisor(source, bootstrap, concurrency, drain_time, serve_options).run()
