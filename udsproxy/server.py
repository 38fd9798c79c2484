"""The embedding API: start a proxy from a config on the running loop, report where it listens,
reload it, stop it gracefully.

    server = await Server.start("proxy.yaml")     # or a dict, YAML text, or a Bootstrap
    host, port = server.address()                  # port_value: 0 binds an ephemeral port
    await server.reload()                          # re-read the files; keep serving on error
    await server.stop()

A reload builds everything new before it swaps anything. Listeners whose address is unchanged
keep their socket (no connection is refused during the swap); requests in flight keep the
routes and cluster they started with; connections of a replaced listener config finish their
current request and close; replaced clusters close their idle pool and retire busy connections
as they finish.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import hashlib
import logging
import os
import socket
import ssl
import sys
import time
from collections.abc import Coroutine, Mapping
from types import TracebackType
from typing import Any

from udsproxy.accesslog.sink import SinkRegistry, build_access_loggers
from udsproxy.config import schema
from udsproxy.config.isolated import load_isolated
from udsproxy.config.load import ConfigSource
from udsproxy.dns import DNS_WARM_TIMEOUT
from udsproxy.errors import ConfigError
from udsproxy.http.admission import GlobalConnections, share
from udsproxy.http.conn_manager import ListenerContext
from udsproxy.http.downstream import DownstreamConnection
from udsproxy.runtime import Runtime
from udsproxy.stats.peers import RestartCounter
from udsproxy.stats.store import Raw, StatsStore
from udsproxy.tls import TlsContexts
from udsproxy.upstream.cluster import Cluster
from udsproxy.watch import watch_targets

__all__ = ["DEFAULT_SPLICE_MIN_BYTES", "Server"]

log = logging.getLogger("udsproxy.server")

_BACKLOG = 1024
_RUNTIME_POLL_S = 2.0  # how often disk runtime layers are re-read
# Below this a body is relayed through Python (memoryview, no copies of our own); above it
# splice(2) moves it kernel-side. The benchmark issue measures where the crossover is.
DEFAULT_SPLICE_MIN_BYTES = 256 * 1024


# Out of descriptors at accept(): these errnos mean "no fd (or kernel memory) for one more".
_FD_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_FD_BACKOFF_S = 0.05  # paused listener: retry accept() this often (one syscall each, no spin)
_FD_LOG_INTERVAL_S = 10.0  # at most one warning per listener per interval, with the count
_ACCEPT_BATCH = 64  # connections accepted per readiness event before yielding to the loop


class _Acceptor:
    """Accepts on a listening socket itself, then hands each connection to the loop.

    The loop's own server (libuv) answers EMFILE by closing a spare descriptor, accepting and
    closing every pending connection with it, and saying nothing: each client gets a reset.
    Here a refused accept() is counted (``listener.<address>.downstream_cx_fd_exhausted``,
    udsproxy's own name: Envoy has no such stat), logged at most once per interval, and the
    listener stops reading until a retry after a short back-off succeeds: the clients wait in
    the kernel's backlog meanwhile and are served once a descriptor is free.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        slot: _ListenerSlot,
        ssl_ctx: ssl.SSLContext | None,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.sockets = (sock,)
        self.slot = slot
        self.ssl = ssl_ctx
        self.fd = sock.fileno()
        self.family = sock.family
        self.closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._unlogged = 0  # refusals since the last warning
        self._logged_at = -_FD_LOG_INTERVAL_S
        sock.setblocking(False)
        sock.listen(_BACKLOG)
        loop.add_reader(self.fd, self._on_readable)

    def _on_readable(self) -> None:
        sock = self.sock
        for _ in range(_ACCEPT_BATCH):
            try:
                # _accept: the bare fd (socket.accept() wraps it with enum look-ups and a
                # timeout check that cost more than the syscall)
                fd, _addr = sock._accept()  # type: ignore[attr-defined]
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _FD_EXHAUSTED:
                    self._exhausted(exc)
                    return
                # ECONNABORTED and the like: that one client is gone; the listener is fine
                log.debug("listener '%s': accept: %s", self.slot.config.name, exc)
                continue
            # The loop's coroutine builds the transport synchronously up to its first await
            # (connection_made, or the TLS handshake): driven by hand, no Task per connection.
            conn = socket.socket(self.family, socket.SOCK_STREAM, 0, fd)
            coro = self.loop.connect_accepted_socket(self.slot.new_connection, conn, ssl=self.ssl)
            try:
                waiter = coro.send(None)
            except StopIteration:
                continue
            except Exception as exc:  # one connection failed, not the listener
                log.debug("connection setup failed: %s", exc)
                continue
            waiter.add_done_callback(_Setup(coro))

    def _exhausted(self, exc: OSError) -> None:
        self.slot.ctx.listener_stats.downstream_cx_fd_exhausted += 1
        self._unlogged += 1
        now = self.loop.time()
        if now - self._logged_at >= _FD_LOG_INTERVAL_S:
            log.warning(
                "listener '%s': %d connection(s) not accepted in the last %gs: %s;"
                " accepting paused, new clients wait in the backlog until a descriptor frees",
                self.slot.config.name,
                self._unlogged,
                _FD_LOG_INTERVAL_S,
                os.strerror(exc.errno or errno.EMFILE),
            )
            self._unlogged = 0
            self._logged_at = now
        self.loop.remove_reader(self.fd)
        self._timer = self.loop.call_later(_FD_BACKOFF_S, self._resume)

    def _resume(self) -> None:
        self._timer = None
        if not self.closed:
            self.loop.add_reader(self.fd, self._on_readable)
            self._on_readable()  # a client may be waiting already: no need for a new event

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.loop.remove_reader(self.fd)
        self.sock.close()


class _Setup:
    """Resumes a connection's setup coroutine once what it awaits is done (it then returns)."""

    __slots__ = ("coro",)

    def __init__(self, coro: Coroutine[Any, Any, object]) -> None:
        self.coro = coro

    def __call__(self, _done: object) -> None:
        try:
            again = self.coro.send(None)
        except StopIteration:
            return
        except Exception as exc:  # a failed TLS handshake: that client only
            log.debug("connection setup failed: %s", exc)
            return
        again.add_done_callback(self)  # it awaited once more (not uvloop's code today)


class _ListenerSlot:
    """A bound listener. Its socket outlives reloads; ``ctx`` is swapped under it."""

    def __init__(self, config: schema.Listener, ctx: ListenerContext) -> None:
        self.config = config
        self.ctx = ctx
        self.old: list[ListenerContext] = []  # replaced contexts still draining connections
        self.server: _Acceptor | None = None
        self.tls: TlsContexts | None = TlsContexts(config.tls) if config.tls else None
        self.bound: tuple[str, int] | str = ""
        self.owns_path = True  # an inherited pipe socket belongs to the supervisor
        self.shared: socket.socket | None = None  # inherited: the supervisor holds it too

    def stop_accepting(self) -> None:
        if self.shared is not None:
            # The supervisor keeps its copy open, so closing ours leaves the kernel accepting
            # into a backlog nobody reads. shutdown() ends the listen for every process; it
            # must come first, as closing the server closes our descriptor.
            with contextlib.suppress(OSError):
                self.shared.shutdown(socket.SHUT_RD)
            self.shared = None
        if self.server is not None:
            self.server.close()

    def new_connection(self) -> DownstreamConnection:
        return DownstreamConnection(self.ctx)

    def contexts(self) -> list[ListenerContext]:
        return [self.ctx, *self.old]


class Server:
    def __init__(
        self,
        bootstrap: schema.Bootstrap,
        loop: asyncio.AbstractEventLoop,
        *,
        source: ConfigSource | None = None,
        splice_min_bytes: int = DEFAULT_SPLICE_MIN_BYTES,
        splice_responses: bool = False,
        reuse_port: bool = False,
        inherited: Mapping[str, socket.socket] | None = None,
        announce: bool = False,
        request_stats: bool = True,
        concurrency: int = 1,
        worker: int = 0,
    ) -> None:
        self.bootstrap = bootstrap
        self.request_stats = request_stats
        self.store = StatsStore()
        self.started_at = time.time()
        self.state = "PRE_INITIALIZING"
        # set by the process layer: which worker publishes server.*, and its restart counter
        self.primary = True
        self.concurrency = concurrency  # the worker processes (per-worker shares of limits)
        self.worker = worker  # this worker's index (health checks take turns by it)
        self.restarts: RestartCounter | None = None
        self.loop = loop
        self.source = source
        self.splice_min_bytes = splice_min_bytes
        self.splice_responses = splice_responses
        self.reuse_port = reuse_port
        self.inherited = dict(inherited or {})
        self.announce = announce
        self.sinks = SinkRegistry()
        self.runtime = Runtime(bootstrap.layered_runtime)
        # overload_manager's global connection limit, this worker's share (None: no limit)
        limit = bootstrap.max_active_downstream_connections
        self.global_connections = (
            GlobalConnections(share(limit, concurrency)) if limit is not None else None
        )
        self._runtime_timer: asyncio.TimerHandle | None = None
        self.clusters: dict[str, Cluster] = {}
        self.slots: dict[str, _ListenerSlot] = {}
        # Envoy's names; the admin issue publishes them.
        self.stats: collections.Counter[str] = collections.Counter()
        self._reload_lock = asyncio.Lock()
        self._digest = b""  # the files' hash at the last reload attempt (see reload)
        self._digest_applied = True  # whether that attempt was applied
        self.drain_time = 5.0  # --drain-time-s: /drain_listeners?graceful waits this long
        self._drain_timer: asyncio.TimerHandle | None = None
        self._stopped = asyncio.Event()
        self._stopping = False
        self._watch_runtime()

    # -- start -------------------------------------------------------------------------------
    @classmethod
    async def start(
        cls,
        config: ConfigSource,
        *,
        announce: bool = False,
        splice_min_bytes: int = DEFAULT_SPLICE_MIN_BYTES,
        splice_responses: bool = False,
        reuse_port: bool = False,
        inherited: Mapping[str, socket.socket] | None = None,
        request_stats: bool = True,
        loaded: schema.Bootstrap | None = None,
        concurrency: int = 1,
        worker: int = 0,
    ) -> Server:
        """Build and bind everything; raises ConfigError or OSError before serving anything.

        ``config`` may be a path (re-read by ``reload()``), YAML text, a dict or a Bootstrap.
        Dynamic CDS/LDS files named in it are read too, unless ``loaded`` is what loading it
        gave already. ``splice_min_bytes=0`` keeps every body on the Python relay path.
        """
        bootstrap = loaded if loaded is not None else load_isolated(config)
        server = cls(
            bootstrap,
            asyncio.get_running_loop(),
            source=config,
            splice_min_bytes=splice_min_bytes,
            splice_responses=splice_responses,
            reuse_port=reuse_port,
            inherited=inherited,
            announce=announce,
            request_stats=request_stats,
            concurrency=concurrency,
            worker=worker,
        )
        try:
            await server._apply(bootstrap)
        except BaseException:
            await server.stop(timeout=0)
            raise
        server._record_versions(bootstrap)
        if isinstance(config, str | os.PathLike) or bootstrap.dynamic_resources is not None:
            server._digest = server._files_digest()  # the content running now
        server._count_first_update()
        server.state = "LIVE"
        return server

    def address(self, listener: str | None = None) -> tuple[str, int]:
        """The bound TCP address of the named (or first) listener."""
        name = listener if listener is not None else next(iter(self.slots))
        bound = self.slots[name].bound
        if isinstance(bound, str):
            raise ValueError(f"listener '{name}' is a pipe: {bound}")
        return bound

    @property
    def addresses(self) -> dict[str, tuple[str, int] | str]:
        return {name: slot.bound for name, slot in self.slots.items()}

    # -- reload ------------------------------------------------------------------------------
    async def reload(self, reason: str = "reload", *, if_changed: bool = False) -> bool:
        """Re-read the bootstrap source and its dynamic files; apply them if they are valid.

        On any error the running config stays, the error is logged with its YAML path and
        counted (``*.update_rejected``). Returns whether the new config is in effect.

        ``if_changed`` (the file watcher): do nothing when the bytes of the files (bootstrap,
        CDS/LDS, certificates) are those of the last attempt: one change seen twice (an inotify
        event and the poll, or a rename's several events) is applied once, and content that
        was rejected is not tried again until it changes. SIGHUP always re-reads.
        """
        async with self._reload_lock:
            if self._stopping:
                return False
            digest = await asyncio.to_thread(self._files_digest)
            if if_changed and digest == self._digest:
                log.debug("%s: the files are unchanged since the last reload: skipped", reason)
                return self._digest_applied
            self._digest, self._digest_applied = digest, False
            dyn = self.bootstrap.dynamic_resources
            kinds = [k for k, src in (("cds", dyn and dyn.cds), ("lds", dyn and dyn.lds)) if src]
            for kind in kinds:
                self.stats[_manager(kind) + ".update_attempt"] += 1
            source = self.source if self.source is not None else self.bootstrap
            try:
                # Parsing and validating is CPU work in C calls that hold the GIL: a child
                # process does it (the thread only waits for its answer).
                new = await asyncio.to_thread(load_isolated, source, child=True)
                await self._apply(new)
            except (ConfigError, OSError) as exc:
                text = exc.render() if isinstance(exc, ConfigError) else str(exc)
                log.error("%s rejected; the running config stays:\n%s", reason, text)
                for kind in _blamed(exc, dyn, kinds):
                    self.stats[_manager(kind) + ".update_rejected"] += 1
                return False
            for kind in kinds:
                self.stats[_manager(kind) + ".update_success"] += 1
            self._digest_applied = True
            self._record_versions(new)
            log.info(
                "%s applied (%d listeners, %d clusters)",
                reason,
                len(self.slots),
                len(self.clusters),
            )
            return True

    def _files_digest(self) -> bytes:
        """A hash of every file the config is read from (a missing one counts as missing)."""
        _dirs, files = watch_targets(self.bootstrap)
        if isinstance(self.source, str | os.PathLike):
            files.add(os.path.abspath(os.fspath(self.source)))
        digest = hashlib.blake2b(digest_size=16)
        for path in sorted(files):
            digest.update(path.encode(errors="surrogateescape") + b"\0")
            try:
                with open(path, "rb") as f:
                    digest.update(hashlib.blake2b(f.read(), digest_size=16).digest())
            except OSError as exc:
                digest.update(f"<{exc.errno}>".encode())
        return digest.digest()

    def _watch_runtime(self) -> None:
        """Re-read disk runtime layers every few seconds (Envoy watches their symlink)."""
        self._runtime_timer = None
        if any(layer.kind == "disk" for layer in self.runtime.layers) and not self._stopping:
            self.runtime.refresh()
            self._runtime_timer = self.loop.call_later(_RUNTIME_POLL_S, self._watch_runtime)

    def _count_first_update(self) -> None:
        """Envoy counts the first read of a CDS/LDS file as an update like any later one, and
        its subscription counters are there from then on (0 until something fails)."""
        dyn = self.bootstrap.dynamic_resources
        for kind, src in (("cds", dyn and dyn.cds), ("lds", dyn and dyn.lds)):
            if src:
                prefix = _manager(kind)
                self.stats[prefix + ".update_attempt"] += 1
                self.stats[prefix + ".update_success"] += 1
                for name in (".update_failure", ".update_rejected"):
                    self.stats[prefix + name] += 0

    def _record_versions(self, bootstrap: schema.Bootstrap) -> None:
        limit = bootstrap.max_active_downstream_connections
        if self.global_connections is not None and limit is not None:
            self.global_connections.limit = share(limit, self.concurrency)
        if bootstrap.layered_runtime != self.runtime.layers:
            self.runtime.set_layers(bootstrap.layered_runtime)
            if self._runtime_timer is None:
                self._watch_runtime()
        self.bootstrap = bootstrap
        for kind, version in (("cds", bootstrap.cds_version), ("lds", bootstrap.lds_version)):
            # Envoy's `version` stat is a hash of version_info; we keep the text beside it.
            self.stats[_manager(kind) + ".version"] = _version_number(version)
        for warning in bootstrap.warnings:
            log.warning("%s", warning)

    async def _apply(self, new: schema.Bootstrap) -> None:
        """Build every new piece first (binding new sockets may fail), then swap."""
        if (new.max_active_downstream_connections is None) != (self.global_connections is None):
            # the listeners that stay would not count (or keep counting) their connections
            what = "global_downstream_max_connections cannot be added or removed by a reload"
            raise ConfigError([("overload_manager", what + "; restart udsproxy")])
        old_clusters = self.clusters
        clusters: dict[str, Cluster] = {}
        for cconf in new.clusters:
            old = old_clusters.get(cconf.name)
            keep = old is not None and old.config == cconf
            if old is not None and keep:
                clusters[cconf.name] = old
            else:
                stats = self.store.cluster_for(cconf.name)
                clusters[cconf.name] = Cluster(
                    cconf, self.loop, stats, self.concurrency, worker=self.worker, publish=False
                )
                self.stats[
                    "cluster_manager.cluster_modified" if old else "cluster_manager.cluster_added"
                ] += 1
        built = [c for name, c in clusters.items() if c is not old_clusters.get(name)]
        for cluster in built:
            cluster.start()  # DNS clusters: first lookups
        fresh: dict[str, _ListenerSlot] = {}  # listeners that need a new socket
        contexts: dict[str, ListenerContext] = {}  # kept listeners whose config changed
        try:
            await _warm(built)
            for config in new.listeners:
                slot = self.slots.get(config.name)
                if slot is None or slot.config.address != config.address:
                    self._check_new_address(config)
                    fresh[config.name] = await self._start_slot(config, clusters)
                    continue
                if (slot.tls is None) != (config.tls is None):
                    raise ConfigError(
                        [
                            (
                                f"listener '{config.name}'",
                                "TLS cannot be switched on or off in place;"
                                " give the listener a new address, or restart udsproxy",
                            )
                        ]
                    )
                if config.tls is not None and slot.tls is not None:
                    slot.tls.load(config.tls)  # new certificates for new handshakes
                if slot.config != config:
                    # built before the swap: opening an access log file may still fail
                    contexts[config.name] = self._context(config, clusters)
        except BaseException:
            for slot in fresh.values():
                await self._close_slot(slot)
            for cluster in built:
                cluster.close()  # their DNS timers go with them
            raise
        # Swap: nothing below can fail on the config.
        self.clusters = clusters
        for cluster in built:
            cluster.publish_stats()
        wanted = {c.name for c in new.listeners}
        for name in [n for n in self.slots if n not in wanted or n in fresh]:
            log.info("listener '%s' removed or moved: draining", name)
            await self._close_slot(self.slots.pop(name))
        self.slots.update(fresh)
        for config in new.listeners:
            slot = self.slots[config.name]
            if config.name in fresh:
                continue
            if slot.config == config:
                slot.ctx.clusters = clusters  # same routes: new requests see the new clusters
            else:
                old_ctx = slot.ctx
                slot.ctx = contexts[config.name]
                slot.config = config
                if not slot.ctx.adopt(old_ctx):
                    old_ctx.drain()  # its connections finish their request and close
                    slot.old = [c for c in slot.old if c.connections] + [old_ctx]
        for name, cluster in old_clusters.items():
            if clusters.get(name) is not cluster:
                cluster.drain()
            if name not in clusters:
                self.stats["cluster_manager.cluster_removed"] += 1

    def _check_new_address(self, config: schema.Listener) -> None:
        """With workers, a pipe or port-0 listener is one socket that the supervisor binds at
        start and every worker inherits. A reload cannot add one: each worker would bind its own
        (a pipe binds once, port 0 differs per worker) and the workers would disagree."""
        address = config.address
        shared = isinstance(address, schema.Pipe) or address.port_value == 0
        # at start the supervisor's socket is there to inherit
        if self.concurrency > 1 and shared and config.name not in self.inherited:
            raise ConfigError(
                [
                    (
                        f"listener '{config.name}'",
                        f"a new {'pipe' if isinstance(address, schema.Pipe) else 'port 0'}"
                        " listener needs a restart with --concurrency > 1 (its socket is bound"
                        " once, by the supervisor); use a fixed TCP port or restart",
                    )
                ]
            )

    def _context(self, config: schema.Listener, clusters: dict[str, Cluster]) -> ListenerContext:
        loggers = build_access_loggers(config.http_connection_manager.access_log, self.sinks)
        ctx = ListenerContext(
            config,
            clusters,
            loggers,
            self.loop,
            self.splice_min_bytes,
            splice_responses=self.splice_responses,
            stats=self.store,
            request_stats=self.request_stats,
            batched=True,
            runtime=self.runtime,
            workers=self.concurrency,
            global_connections=self.global_connections,
        )
        return ctx

    async def _start_slot(
        self, config: schema.Listener, clusters: dict[str, Cluster]
    ) -> _ListenerSlot:
        slot = _ListenerSlot(config, self._context(config, clusters))
        address = config.address
        ssl_ctx = slot.tls.front if slot.tls is not None else None
        inherited = self.inherited.pop(config.name, None)
        slot.owns_path = inherited is None
        slot.shared = inherited
        if isinstance(address, schema.SocketAddress):
            sock = inherited if inherited is not None else self._bind_tcp(address)
            srv = _Acceptor(self.loop, sock, slot, ssl_ctx)
            name = sock.getsockname()
            slot.bound = (name[0], name[1])
            text = str(schema.SocketAddress(address=name[0], port_value=name[1]))
            if address.port_value == 0:  # Envoy names listener stats by the bound address
                prefix = config.http_connection_manager.stat_prefix
                self.store.listeners.pop(str(address).replace(":", "_"), None)
                slot.ctx.listener_stats = self.store.listener_for(text, prefix)
        else:
            sock = inherited if inherited is not None else bind_unix(address)
            srv = _Acceptor(self.loop, sock, slot, ssl_ctx)
            slot.bound = text = address.path
        slot.server = srv
        if self.announce:
            print(f"udsproxy: listener '{config.name}' listening on {text}", file=sys.stderr)
            sys.stderr.flush()
        return slot

    def _bind_tcp(self, address: schema.SocketAddress) -> socket.socket:
        host, port = address.address, address.port_value
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:  # "::" is IPv6 only (Envoy's ipv4_compat: false)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _close_slot(self, slot: _ListenerSlot) -> None:
        slot.stop_accepting()
        for ctx in slot.contexts():
            ctx.drain()
        address = slot.config.address
        if isinstance(address, schema.Pipe) and not address.abstract and slot.owns_path:
            _unlink_quietly(address.path)

    # -- stats -------------------------------------------------------------------------------
    def raw_stats(self) -> Raw:
        """This process's stats under Envoy's names, gauges read now."""
        counters, gauges, hists = self.store.raw()
        counters.update(self.stats)
        fs_counters, fs_gauges = self.sinks.stats()
        counters.update(fs_counters)
        gauges.update(fs_gauges)
        for name, cluster in self.clusters.items():
            prefix = f"cluster.{name}."
            # no upstream pipelining: a connection that is open and not idle carries a request
            idle = sum(len(h.pool.idle) for h in cluster.hosts)
            gauges[prefix + "upstream_rq_active"] = max(
                gauges.get(prefix + "upstream_cx_active", 0) - idle, 0
            )
            gauges[prefix + "membership_total"] = len(cluster.hosts)
            gauges[prefix + "membership_healthy"] = cluster.healthy_count
            pipes = [h.address for h in cluster.hosts if isinstance(h.address, schema.Pipe)]
            if pipes:
                gauges.update(pipe_gauges(prefix, pipes))
        gauges["server.total_connections"] = sum(
            len(ctx.connections) for slot in self.slots.values() for ctx in slot.contexts()
        )
        gauges["server.memory_allocated"] = _rss_bytes()  # summed over the workers
        gauges["server.memory_heap_size"] = _heap_bytes()  # likewise
        if self.primary:  # process-wide values, published once
            gauges["cluster_manager.active_clusters"] = len(self.clusters)
            gauges["listener_manager.total_listeners_active"] = len(self.slots)
            # a listener is bound before it is swapped in: none is ever seen warming; draining:
            # replaced listener configs whose connections are still finishing
            gauges["listener_manager.total_listeners_warming"] = 0
            gauges["listener_manager.total_listeners_draining"] = sum(
                any(old.connections for old in slot.old) for slot in self.slots.values()
            )
            gauges["server.live"] = 1 if self.state == "LIVE" else 0
            gauges["server.state"] = _STATES.get(self.state, 0)
            gauges["server.uptime"] = int(time.time() - self.started_at)
            gauges["server.concurrency"] = self.concurrency
            counters["server.worker_restarts"] = self.restarts.value if self.restarts else 0
            for name in [n for n in counters if n.endswith(".version")]:
                gauges[name] = counters.pop(name)  # Envoy: a gauge (the version's hash)
        else:
            for name in [n for n in gauges if n.startswith("cluster.") and ".uds_" in n]:
                del gauges[name]  # the filesystem is the same for every worker
            for name in [n for n in gauges if n.startswith("cluster.") and ".membership_" in n]:
                del gauges[name]
            # each worker checks on its own (upstream.health_check): one's view, not a sum
            for name in [n for n in gauges if n.endswith(".health_check.healthy")]:
                del gauges[name]
            # Every worker applies every reload; one of them counts it.
            for name in [n for n in counters if n.startswith(_MANAGERS) or n.endswith(".version")]:
                del counters[name]
        return counters, gauges, hists

    def host_stats(self) -> dict[str, dict[str, dict[str, int]]]:
        """cluster -> host -> its /clusters counts, in this process."""
        results = self.store.host_results()
        return {
            name: {h.text: h.stats(results.get(h.ledger_key, (0, 0))) for h in cluster.hosts}
            for name, cluster in self.clusters.items()
        }

    def discourage_keepalive(self, on: bool) -> None:
        """/healthcheck/fail: every response says connection: close (and /healthcheck/ok)."""
        for slot in self.slots.values():
            slot.ctx.draining = on

    async def drain_listeners(self, graceful: bool = False) -> None:
        """/drain_listeners: stop accepting; open connections finish and close.

        With ``graceful`` (Envoy's ``?graceful``), the listeners keep accepting for the drain
        time while every response says ``connection: close``, so clients and load balancers
        move away first; then they stop accepting.
        """
        self.state = "DRAINING"
        for slot in self.slots.values():
            for ctx in slot.contexts():
                ctx.drain()
        if graceful and self.drain_time > 0:
            if self._drain_timer is None:
                self._drain_timer = self.loop.call_later(self.drain_time, self._stop_accepting)
            return
        self._stop_accepting()

    def _stop_accepting(self) -> None:
        self._drain_timer = None
        for slot in self.slots.values():
            slot.stop_accepting()

    def reset_counters(self) -> None:
        self.store.reset()
        self.sinks.reset_counters()
        for name in list(self.stats):
            if not name.endswith(".version"):
                self.stats[name] = 0

    # -- stop --------------------------------------------------------------------------------
    async def serve_forever(self) -> None:
        await self._stopped.wait()

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let requests in flight finish (up to ``timeout``; their responses
        carry ``connection: close``), close idle connections, then close what is left and
        count it (``server.drain_forced_close``)."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        self.state = "DRAINING"
        if self._runtime_timer is not None:
            self._runtime_timer.cancel()
            self._runtime_timer = None
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        for slot in list(self.slots.values()):
            await self._close_slot(slot)
        contexts = [ctx for slot in self.slots.values() for ctx in slot.contexts()]
        deadline = self.loop.time() + timeout
        while self.loop.time() < deadline and any(ctx.connections for ctx in contexts):
            await asyncio.sleep(0.02)
        forced = 0
        for ctx in contexts:
            for conn in list(ctx.connections):
                forced += 1
                conn.abort()
        if forced:
            self.stats["server.drain_forced_close"] += forced
            log.warning("drain time over: closed %d connection(s) still open", forced)
        for cluster in self.clusters.values():
            cluster.close()
        await asyncio.sleep(0)  # let transports run connection_lost
        for slot in self.slots.values():
            for ctx in slot.contexts():
                ctx.flush()  # requests finished in this loop iteration
        self.sinks.close_all()
        self._stopped.set()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


_MANAGERS = ("cluster_manager.", "listener_manager.")


def _blamed(
    exc: ConfigError | OSError, dyn: schema.DynamicResources | None, kinds: list[str]
) -> list[str]:
    """The sources a rejected update counts against: those whose file the errors name (each
    error path starts with its file), or every one when the bootstrap itself is at fault."""
    files = {
        "cds": dyn.cds.path if dyn and dyn.cds else "",
        "lds": dyn.lds.path if dyn and dyn.lds else "",
    }
    if isinstance(exc, ConfigError):
        paths = [path for path, _ in exc.errors]
    else:
        paths = [exc.filename] if isinstance(exc.filename, str) else []
    named = [k for k in kinds if files[k] and any(p.startswith(files[k]) for p in paths)]
    return named or kinds or ["cds", "lds"]


_STATES = {"LIVE": 0, "DRAINING": 1, "PRE_INITIALIZING": 2, "INITIALIZING": 3}


def pipe_gauges(prefix: str, pipes: list[schema.Pipe]) -> dict[str, int]:
    """Beyond Envoy: the filesystem behind a cluster's sockets (a Memory emptyDir at /dev/shm
    fills up unseen) and how many of the socket files exist."""
    present = 0
    used = total = 0
    for pipe in pipes:
        if pipe.abstract:
            present += 1  # no file: it exists as long as someone listens
            continue
        if os.path.exists(pipe.path):
            present += 1
        if not total:
            try:
                st = os.statvfs(os.path.dirname(pipe.path) or "/")
            except OSError:
                continue
            total = st.f_blocks * st.f_frsize
            used = (st.f_blocks - st.f_bfree) * st.f_frsize
    return {
        prefix + "uds_socket_present": present,
        prefix + "uds_fs_used_bytes": used,
        prefix + "uds_fs_total_bytes": total,
    }


def _heap_bytes() -> int:
    """Envoy's memory_heap_size (the allocator's reserved heap): the private writable memory
    the process has reserved (statm's data: heap, anonymous mappings and stack)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[5]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


async def _warm(clusters: list[Cluster]) -> None:
    """Envoy warms a DNS cluster (its first answers) before listeners serve it, and a changed
    cluster before it replaces the old one. udsproxy waits at most DNS_WARM_TIMEOUT: a name
    whose lookup takes longer joins its cluster when it answers (503 UH until then)."""
    dns = [c for c in clusters if c.resolver is not None or c.checker is not None]
    if not dns:
        return
    # A health-checked cluster also waits for each host's first check (bounded by its timeout).
    answered = await asyncio.gather(*(c.warm(DNS_WARM_TIMEOUT) for c in dns))
    for cluster, ok in zip(dns, answered, strict=True):
        if not ok:
            log.warning(
                "cluster '%s': no DNS answer within %gs; serving without its unresolved hosts",
                cluster.name,
                DNS_WARM_TIMEOUT,
            )


def _manager(kind: str) -> str:
    return "cluster_manager.cds" if kind == "cds" else "listener_manager.lds"


def _version_number(version: str) -> int:
    """A stable number for a version_info text (Envoy publishes a hash)."""
    import zlib

    return zlib.crc32(version.encode()) if version else 0


def bind_unix(address: schema.Pipe) -> socket.socket:
    """Bind a pipe listener; a stale socket file (nobody listening) is replaced."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if not address.abstract and os.path.exists(address.path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(address.path)
            except ConnectionRefusedError:
                _unlink_quietly(address.path)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
            else:
                raise OSError(errno.EADDRINUSE, f"{address.path} is in use by another process")
            finally:
                probe.close()
        sock.bind(address.sockaddr)
        if address.mode and not address.abstract:
            os.chmod(address.path, address.mode)  # after bind, before listen (Envoy #11809)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
