"""Conversion of the overload protections (part of ``convert``): the connection_limit network
filter and the overload manager's global downstream connection limit. Same rules: what
udsproxy does not do is refused by name. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from udsproxy.config.convert_matchers import Reporter
from udsproxy.config.schema import ConnectionLimit
from udsproxy.config.validate import item, join

__all__ = ["connection_limit", "overload_manager"]

Node = Mapping[str, Any]
DOWNSTREAM_CONNECTIONS = (
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
)


def connection_limit(c: Reporter, node: Node, path: str) -> ConnectionLimit | None:
    """envoy.filters.network.connection_limit (the HCM follows it)."""
    c.only(node, path, ("name", "typed_config"))
    path = join(path, "typed_config")
    config = node["typed_config"]
    c.only(config, path, ("stat_prefix", "max_connections", "delay", "runtime_enabled"))
    if not config.get("max_connections"):
        # Envoy's schema requires it (>= 1)
        c.error(join(path, "max_connections"), "is required (at least 1)")
        return None
    kw: dict[str, Any] = {}
    enabled = config.get("runtime_enabled")
    if enabled is not None:
        c.only(enabled, join(path, "runtime_enabled"), ("default_value", "runtime_key"))
        kw["runtime_key"] = enabled.get("runtime_key") or None
        kw["runtime_default"] = bool(enabled.get("default_value", True))
    return ConnectionLimit(
        stat_prefix=config.get("stat_prefix", ""),
        max_connections=int(config["max_connections"]),
        delay=float(config.get("delay") or 0.0),
        **kw,
    )


def overload_manager(c: Reporter, node: Node, path: str) -> int | None:
    """Only the global_downstream_max_connections resource monitor: the listeners' global
    connection limit. Actions (and what they act on) are refused by name."""
    # refresh_interval is inert here: this monitor is checked at each accept, not polled
    c.only(node, path, ("resource_monitors", "refresh_interval"))
    limit: int | None = None
    for i, monitor in enumerate(node.get("resource_monitors", [])):
        monitor_path = item(join(path, "resource_monitors"), i)
        config = monitor.get("typed_config", {})
        if config.get("@type") != DOWNSTREAM_CONNECTIONS:
            what = config.get("@type") or monitor.get("name", "")
            c.refuse(monitor_path, f"resource monitor '{what}'")
            continue
        c.only(monitor, monitor_path, ("name", "typed_config"))
        config_path = join(monitor_path, "typed_config")
        c.only(config, config_path, ("max_active_downstream_connections",))
        value = int(config.get("max_active_downstream_connections") or 0)
        if value <= 0:
            # Envoy refuses the monitor without a positive limit
            c.error(join(config_path, "max_active_downstream_connections"), "must be > 0")
            continue
        limit = value
    return limit
