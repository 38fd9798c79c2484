"""Envoy's command-line flags beyond the ones udsproxy always had, so that an Envoy container
spec or systemd unit runs unchanged: each is implemented, a documented no-op for a proxy
without hot restart, or refused by name with the reason. None is silently ignored.

Hot restart (a second Envoy taking the sockets over from the first) does not exist in
udsproxy: a restart binds the sockets again, a reload (SIGHUP, file watch) keeps them. So
``--base-id``, ``--use-dynamic-base-id``, ``--disable-hot-restart`` and
``--parent-shutdown-time-s`` change nothing, and ``--restart-epoch`` other than 0 is an error.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

__all__ = ["REFUSED", "add_envoy_flags", "check_envoy_flags", "self_node"]

# Envoy flags udsproxy does not take, and why (a user who passes one learns it at start).
REFUSED: dict[str, str] = {
    "--allow-unknown-static-fields": "udsproxy validates every field and refuses unknown ones",
    "--allow-unknown-fields": "udsproxy validates every field and refuses unknown ones",
    "--ignore-unknown-dynamic-fields": "udsproxy validates every field and refuses unknown ones",
    "--hot-restart-version": "udsproxy has no hot restart",
    "--base-id-path": "udsproxy has no hot restart, so no shared-memory base id to write",
    "--file-flush-interval-msec": "access logs are flushed every second or 64 KiB (not settable)",
    "--drain-strategy": "the drain is udsproxy's own (--drain-time-s; see the README)",
    "--local-address-ip-version": "x-forwarded-for gets the peer address (see the README)",
    "--log-format-escaped": "not supported",
    "--enable-fine-grain-logging": "not supported; use --component-log-level",
    "--enable-mutex-tracing": "udsproxy has no mutex contention stats",
    "--enable-core-dump": "not supported; use the system's core dump settings",
    "--disable-extensions": "extensions udsproxy lacks are refused in the config itself",
    "--admin-address-path": "not supported; the admin address is printed on stderr",
    "--socket-path": "udsproxy has no hot restart",
    "--socket-mode": "udsproxy has no hot restart",
    "--stats-tag": "not supported",
    "--bootstrap-version": "udsproxy reads v3 (and v2 spellings with a warning) by itself",
}

_NO_OP = "accepted and ignored: udsproxy has no hot restart"


class _Refuse(argparse.Action):
    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        parser.error(f"Envoy's {option_string} is not supported by udsproxy: {self.help}")


def add_envoy_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Envoy's flags (an Envoy command line runs unchanged)")
    g.add_argument("--service-cluster", help="node.cluster (overrides the bootstrap's, as Envoy)")
    g.add_argument("--service-node", help="node.id (overrides the bootstrap's, as Envoy)")
    g.add_argument("--service-zone", help="node.locality.zone (overrides the bootstrap's)")
    g.add_argument("--log-path", help="write udsproxy's own log to this file (reopened on SIGUSR1)")
    g.add_argument(
        "--log-format", help="Envoy's spdlog pattern, e.g. '[%%Y-%%m-%%d %%T.%%e][%%l] %%v'"
    )
    g.add_argument(
        "--component-log-level",
        help="per-component levels, e.g. upstream:debug,admin:warning (udsproxy.<name> loggers)",
    )
    g.add_argument("--restart-epoch", type=int, default=0, help="0 only (no hot restart)")
    g.add_argument("--base-id", type=int, help=_NO_OP)
    g.add_argument("--use-dynamic-base-id", action="store_true", help=_NO_OP)
    g.add_argument("--parent-shutdown-time-s", type=int, help=_NO_OP)
    g.add_argument("--disable-hot-restart", action="store_true", help=_NO_OP)
    g.add_argument(
        "--reject-unknown-dynamic-fields",
        action="store_true",
        help="accepted: udsproxy always rejects unknown fields, in dynamic files too",
    )
    g.add_argument(
        "--cpuset-threads",
        action="store_true",
        help="accepted: the default --concurrency always follows the CPU affinity and quota",
    )
    r = p.add_argument_group("Envoy's flags udsproxy refuses (with the reason)")
    for flag, reason in REFUSED.items():
        r.add_argument(flag, nargs="?", metavar="X", action=_Refuse, help=reason)


def check_envoy_flags(args: argparse.Namespace) -> str | None:
    """An error message for a combination udsproxy cannot honour, else None."""
    if args.restart_epoch:
        return (
            f"--restart-epoch {args.restart_epoch}: udsproxy has no hot restart; start it with "
            "epoch 0 (a plain restart) and use SIGHUP or a watched directory to reload"
        )
    return None


def self_node(options: dict[str, Any]) -> dict[str, Any]:
    """``/server_info``'s node: what --service-node/--service-cluster/--service-zone set."""
    node: dict[str, Any] = {}
    if options.get("service_node"):
        node["id"] = options["service_node"]
    if options.get("service_cluster"):
        node["cluster"] = options["service_cluster"]
    if options.get("service_zone"):
        node["locality"] = {"zone": options["service_zone"]}
    return node
