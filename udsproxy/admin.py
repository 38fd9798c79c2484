"""Envoy's admin interface on its own listener (admin.address; bind it to loopback).

GET:  /ready /server_info /stats (?filter= ?usedonly ?format=json|prometheus) /stats/prometheus
      /clusters (?format=json) /config_dump /listeners (?format=json) /runtime / and /help
POST: /healthcheck/fail /healthcheck/ok /drain_listeners (?graceful) /quitquitquit /reopen_logs
      /logging (?level= or ?<logger>=<level>) /reset_counters /runtime_modify (?key=value)
A GET on a mutating endpoint is answered 400, as Envoy does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from udsproxy import __version__
from udsproxy.accesslog.sink import build_access_loggers
from udsproxy.applog import reopen_logs
from udsproxy.config.schema import Pipe
from udsproxy.envoy_flags import self_node
from udsproxy.server import pipe_gauges
from udsproxy.stats import Snapshot
from udsproxy.stats.peers import PeerGroup, to_snapshot
from udsproxy.stats.render import render_json, render_prometheus, render_text
from udsproxy.streaminfo import Peer, StreamInfo
from udsproxy.upstream.health import flag_text, flags_from_stats, health_status

if TYPE_CHECKING:
    from udsproxy.server import Server
    from udsproxy.upstream.cluster import Host

__all__ = ["AdminServer"]

log = logging.getLogger("udsproxy.admin")

_MAX_HEAD = 64 * 1024
_Handler = Callable[["AdminServer", dict[str, str]], Awaitable[tuple[int, str, bytes]]]
_GET: dict[str, _Handler] = {}
_POST: dict[str, _Handler] = {}
_HELP: dict[str, str] = {}


def _endpoint(path: str, help_text: str, *, post: bool = False) -> Callable[[_Handler], _Handler]:
    def register(fn: _Handler) -> _Handler:
        (_POST if post else _GET)[path] = fn
        _HELP[path] = help_text
        return fn

    return register


def _admin_request(
    start: tuple[float, float],
    method: str,
    target: str,
    version: str,
    headers: dict[str, str],
    status: int,
    body: bytes,
) -> StreamInfo:
    """The record of one admin request, for admin.access_log."""
    info = StreamInfo(*start)
    info.end_mono = time.monotonic()
    info.method = method.encode("latin-1")
    info.path = target.encode("latin-1")
    info.protocol = version
    info.authority = headers.get("host", "").encode("latin-1")
    info.request_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    info.response_code = status
    info.bytes_sent = len(body)
    return info


def _peer(writer: asyncio.StreamWriter) -> Peer | None:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple):
        return Peer(peer[0], peer[1])
    return Peer(peer, None) if isinstance(peer, str) and peer else None


def _text(body: str, status: int = 200) -> tuple[int, str, bytes]:
    return status, "text/plain; charset=UTF-8", body.encode()


def _json(obj: object, status: int = 200) -> tuple[int, str, bytes]:
    return status, "application/json", (json.dumps(obj, indent=2, default=str) + "\n").encode()


class AdminServer:
    def __init__(
        self,
        server: Server,
        peers: PeerGroup,
        *,
        ready_requires_upstream: bool = False,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.server = server
        self.peers = peers
        self.ready_requires_upstream = ready_requires_upstream
        self.options = options or {}
        self.healthcheck_failed = False
        self._srv: asyncio.AbstractServer | None = None
        admin = server.bootstrap.admin
        # admin.access_log: every admin request, formatted like a proxied one
        self.access_loggers = build_access_loggers(admin.access_log if admin else (), server.sinks)

    async def start(self, **listen: Any) -> str:
        """Listen on TCP; returns the bound address as text."""
        self._srv = await asyncio.start_server(self._connection, **listen)
        name = self._srv.sockets[0].getsockname()
        return f"{name[0]}:{name[1]}"

    async def start_unix(self, **listen: Any) -> None:
        self._srv = await asyncio.start_unix_server(self._connection, **listen)

    async def stop(self) -> None:
        if self._srv is not None:
            self._srv.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            while True:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                if len(head) > _MAX_HEAD:
                    break
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                if len(parts) != 3:
                    writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                    break
                method, target, version = parts
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                length = int(headers.get("content-length", "0") or 0)
                if length:
                    await reader.readexactly(min(length, _MAX_HEAD))
                start = time.time(), time.monotonic()
                status, ctype, body = await self._dispatch(method, target)
                close = version == "HTTP/1.0" or headers.get("connection", "").lower() == "close"
                writer.write(
                    b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
                    b"cache-control: no-cache, max-age=0\r\nx-content-type-options: nosniff\r\n"
                    b"%s\r\n"
                    % (
                        status,
                        _reason(status),
                        ctype.encode(),
                        len(body),
                        b"connection: close\r\n" if close else b"",
                    )
                )
                if method != "HEAD":
                    writer.write(body)
                if self.access_loggers:
                    info = _admin_request(start, method, target, version, headers, status, body)
                    info.downstream_remote = info.downstream_direct_remote = _peer(writer)
                    for logger in self.access_loggers:
                        logger.log(info)
                await writer.drain()
                if close:
                    break
        writer.close()

    async def _dispatch(self, method: str, target: str) -> tuple[int, str, bytes]:
        url = urlsplit(target)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        path = url.path
        if method in ("GET", "HEAD"):
            handler = _GET.get(path)
            if handler is None and path in _POST:
                return _text("This endpoint is only available via POST\n", 400)
        elif method == "POST":
            handler = _POST.get(path) or _GET.get(path)
        else:
            return _text("method not allowed\n", 405)
        if handler is None:
            return _text(f"invalid path. admin commands are:\n{_help_text()}", 404)
        try:
            return await handler(self, query)
        except ValueError as exc:
            return _text(f"{exc}\n", 400)

    # -- helpers --------------------------------------------------------------------------------
    def state(self) -> str:
        return self.server.state

    def upstream_present(self) -> bool:
        """Whether any cluster's pipe endpoint socket exists (every worker sees the same files)."""
        return any(
            pipe_gauges("", [h.address for h in cluster.hosts if isinstance(h.address, Pipe)])[
                "uds_socket_present"
            ]
            for cluster in self.server.clusters.values()
        )

    async def apply(self, command: str, arg: str) -> None:
        """An admin command in this process; ``peers.broadcast`` runs it in every worker."""
        server = self.server
        if command in ("hc_fail", "hc_ok"):
            self.healthcheck_failed = command == "hc_fail"
            server.discourage_keepalive(self.healthcheck_failed)
        elif command == "drain":
            await server.drain_listeners(graceful=arg == "graceful")
        elif command == "reset":
            server.reset_counters()
        elif command == "reopen":
            reopen_logs(server.sinks)
        elif command == "runtime":
            server.runtime.modify(json.loads(arg))
        elif command == "logging":
            for name, level in json.loads(arg).items():
                logging.getLogger(name).setLevel(level)
        else:
            log.warning("unknown admin command from a sibling worker: %r", command)


def _reason(status: int) -> bytes:
    import http

    return http.HTTPStatus(status).phrase.encode()


def _help_text() -> str:
    return "".join(f"  {path}: {text}\n" for path, text in sorted(_HELP.items()))


# -- GET endpoints ---------------------------------------------------------------------------------
@_endpoint("/", "the list of admin endpoints")
async def _index(admin: AdminServer, q: dict[str, str]) -> tuple[int, str, bytes]:
    return _text("admin commands are:\n" + _help_text())


_endpoint("/help", "print out list of admin commands")(_index)


@_endpoint("/ready", "LIVE (200) once serving, 503 with the state otherwise")
async def _ready(admin: AdminServer, q: dict[str, str]) -> tuple[int, str, bytes]:
    state = admin.state()
    if state == "LIVE" and admin.ready_requires_upstream and not admin.upstream_present():
        return _text("NO_UPSTREAM_SOCKET\n", 503)
    return _text(state + "\n", 200 if state == "LIVE" else 503)


@_endpoint("/server_info", "version, state, uptime and command line options (JSON)")
async def _server_info(admin: AdminServer, q: dict[str, str]) -> tuple[int, str, bytes]:
    uptime = int(time.time() - admin.server.started_at)
    return _json(
        {
            "version": f"udsproxy/{__version__}",
            "state": admin.state(),
            "hot_restart_version": "disabled",
            "command_line_options": admin.options,
            "node": self_node(admin.options),
            "uptime_current_epoch": f"{uptime}s",
            "uptime_all_epochs": f"{uptime}s",
        }
    )


async def _snapshot(admin: AdminServer):  # type: ignore[no-untyped-def]
    return to_snapshot(await admin.peers.collect())


@_endpoint("/stats", "Envoy's stats: ?filter=<regex> ?usedonly ?format=json|prometheus")
async def _stats(admin: AdminServer, q: dict[str, str]) -> tuple[int, str, bytes]:
    snap = await _snapshot(admin)
    fmt = q.get("format", "")
    used = "usedonly" in q
    flt = q.get("filter") or None
    if fmt == "prometheus":
        return _prometheus_answer(snap, flt, used)
    if fmt == "json":
        return 200, "application/json", render_json(snap, flt, used).encode()
    if fmt:
        raise ValueError(f"usage: /stats?format=json|prometheus (got '{fmt}')")
    return _text(render_text(snap, flt, used))


@_endpoint("/stats/prometheus", "the stats in Prometheus text format: ?filter=<regex> ?usedonly")
async def _prometheus(admin: AdminServer, q: dict[str, str]) -> tuple[int, str, bytes]:
    snap = await _snapshot(admin)
    return _prometheus_answer(snap, q.get("filter") or None, "usedonly" in q)


def _prometheus_answer(snap: Snapshot, flt: str | None, used: bool) -> tuple[int, str, bytes]:
    """As Envoy: the filter is a regex searched in the stat's own (dotted) name, not in the
    Prometheus name; usedonly drops zero counters and gauges and histograms without samples."""
    body = render_prometheus(snap, filter=flt, used_only=used)
    return 200, "text/plain; version=0.0.4; charset=utf-8", body


@_endpoint("/clusters", "upstream clusters and hosts with their stats (?format=json)")
async def _clusters(admin: AdminServer, q: dict[str, str]) -> tuple[int, str, bytes]:
    per_host = await admin.peers.collect_hosts()
    out: list[dict[str, Any]] = []
    lines: list[str] = []
    for name, cluster in admin.server.clusters.items():
        hosts = []
        for host in cluster.hosts:
            stats = dict(per_host.get(name, {}).get(host.text) or host.stats())  # none: ours
            # flags set in any worker (each has its own outlier detection)
            flags = flags_from_stats(stats) | host.health_flags
            # Envoy's text form: cluster::host::stat::value
            lines += (f"{name}::{host.text}::{key}::{value}" for key, value in stats.items())
            lines.append(f"{name}::{host.text}::health_flags::{flag_text(flags)}")
            lines += _host_lines(f"{name}::{host.text}::", host)
            hosts.append(
                {
                    "address": host.text,
                    "stats": stats,
                    "health_status": health_status(flags),
                    **_host(host),
                }
            )
        out.append({"name": name, "added_via_api": False, "host_statuses": hosts})
    if q.get("format") == "json":
        return _json({"cluster_statuses": out})
    return _text("\n".join(lines) + "\n")


def _host(host: Host) -> dict[str, Any]:
    """A host's endpoint fields as Envoy's /clusters JSON has them."""
    endpoint = host.endpoint
    locality = endpoint.locality if endpoint is not None else None
    out: dict[str, Any] = {"weight": host.weight, "hostname": host.hostname}
    if locality is not None:
        out["locality"] = {k: v for k, v in dataclasses.asdict(locality).items() if v}
    return out


def _host_lines(prefix: str, host: Host) -> list[str]:
    """Envoy's text form of the same: weight, region, zone, sub_zone, hostname."""
    locality = host.endpoint.locality if host.endpoint is not None else None
    keys = ("region", "zone", "sub_zone")
    return [
        f"{prefix}weight::{host.weight}",
        *(f"{prefix}{key}::{getattr(locality, key) if locality else ''}" for key in keys),
        f"{prefix}hostname::{host.hostname}",
    ]


@_endpoint("/config_dump", "the running config as JSON")
async def _config_dump(admin: AdminServer, q: dict[str, str]) -> tuple[int, str, bytes]:
    bootstrap = admin.server.bootstrap
    dump = dataclasses.asdict(bootstrap)
    dump.pop("static", None)
    _redact(dump)
    return _json({"configs": [{"@type": "udsproxy.Bootstrap", **dump}]})


def _redact(node: object) -> None:
    """Envoy's config_dump rule: a private key given inline shows as "[redacted]"."""
    if isinstance(node, dict):
        key = node.get("private_key")
        if isinstance(key, dict) and key.get("kind") in ("inline_string", "inline_bytes"):
            key["value"] = "[redacted]"
        for value in node.values():
            _redact(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _redact(value)


@_endpoint("/listeners", "listener names and addresses (?format=json)")
async def _listeners(admin: AdminServer, q: dict[str, str]) -> tuple[int, str, bytes]:
    bound = admin.server.addresses
    if q.get("format") == "json":
        return _json(
            {"listener_statuses": [{"name": n, "local_address": str(a)} for n, a in bound.items()]}
        )
    return _text("".join(f"{n}::{_addr(a)}\n" for n, a in bound.items()))


def _addr(a: tuple[str, int] | str) -> str:
    return a if isinstance(a, str) else f"{a[0]}:{a[1]}"


# -- POST endpoints --------------------------------------------------------------------------------
@_endpoint("/healthcheck/fail", "answer every response with connection: close", post=True)
async def _hc_fail(admin: AdminServer, q: dict[str, str]) -> tuple[int, str, bytes]:
    await admin.peers.broadcast("hc_fail")
    return _text("OK\n")


@_endpoint("/healthcheck/ok", "undo /healthcheck/fail", post=True)
async def _hc_ok(admin: AdminServer, q: dict[str, str]) -> tuple[int, str, bytes]:
    await admin.peers.broadcast("hc_ok")
    return _text("OK\n")


@_endpoint(
    "/drain_listeners",
    "stop accepting (?graceful: answer with connection: close for the drain time first)",
    post=True,
)
async def _drain(admin: AdminServer, q: dict[str, str]) -> tuple[int, str, bytes]:
    await admin.peers.broadcast("drain", "graceful" if "graceful" in q else "")
    return _text("OK\n")


@_endpoint("/quitquitquit", "drain and exit", post=True)
async def _quit(admin: AdminServer, q: dict[str, str]) -> tuple[int, str, bytes]:
    # the supervisor (or this process) drains every worker the same way as on SIGTERM
    target = os.getppid() if admin.peers.workers > 1 else os.getpid()
    asyncio.get_running_loop().call_later(0.05, os.kill, target, signal.SIGTERM)
    return _text("OK\n")


@_endpoint("/logging", "?level=<level> or ?<logger>=<level>", post=True)
async def _logging(admin: AdminServer, q: dict[str, str]) -> tuple[int, str, bytes]:
    levels = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO,
              "warning": logging.WARNING, "warn": logging.WARNING, "error": logging.ERROR,
              "critical": logging.CRITICAL, "off": logging.CRITICAL + 10}  # fmt: skip
    wanted: dict[str, int] = {}
    for key, value in q.items():
        level = levels.get(value.lower())
        if level is None:
            raise ValueError(f"unknown log level '{value}'")
        name = "udsproxy" if key == "level" else f"udsproxy.{key.removeprefix('udsproxy.')}"
        wanted[name] = level
    await admin.peers.broadcast("logging", json.dumps(wanted))
    return _text(
        "active loggers:\n"
        + "".join(
            f"  {n}: {logging.getLevelName(logging.getLogger(n).getEffectiveLevel()).lower()}\n"
            for n in sorted(k for k in logging.root.manager.loggerDict if k.startswith("udsproxy"))
        )
    )


@_endpoint("/runtime", "print the runtime values (?format=json is the only format)")
async def _runtime(admin: AdminServer, q: dict[str, str]) -> tuple[int, str, bytes]:
    return _json(admin.server.runtime.dump())


@_endpoint("/runtime_modify", "?key1=value1&key2=value2: set runtime values", post=True)
async def _runtime_modify(admin: AdminServer, q: dict[str, str]) -> tuple[int, str, bytes]:
    if not admin.server.runtime.has_admin_layer:
        # Envoy's answer when layered_runtime has no admin_layer
        return _text("No admin layer specified\n", 503)
    if not q:
        raise ValueError("usage: /runtime_modify?key1=value1&key2=value2")
    await admin.peers.broadcast("runtime", json.dumps(q))
    return _text("OK\n")


@_endpoint("/reopen_logs", "reopen every access log file, in every worker (as SIGUSR1)", post=True)
async def _reopen_logs(admin: AdminServer, q: dict[str, str]) -> tuple[int, str, bytes]:
    await admin.peers.broadcast("reopen")
    return _text("OK\n")


@_endpoint("/reset_counters", "reset every counter to zero", post=True)
async def _reset(admin: AdminServer, q: dict[str, str]) -> tuple[int, str, bytes]:
    await admin.peers.broadcast("reset")
    return _text("OK\n")
