"""Read the v2-era spellings of Envoy configs (Envoy <= 1.17) as their v3 equivalents. Pure.

Only the forms real v2 configs of this path use are mapped (envoy-parity 2.4): the resource types
``envoy.api.v2.Cluster`` / ``envoy.api.v2.Listener``, the extension names
``envoy.http_connection_manager``, ``envoy.router`` and ``envoy.file_access_log``, their untyped
``config:`` (a Struct, replaced by ``typed_config`` in v3), the v2 ``@type`` of the connection
manager and of the file access log, and a cluster's ``hosts:`` list. Each mapping is reported as
``"<path>: deprecated v2 form '<x>' read as '<y>'"``. Anything else v2 is left alone, so
``validate`` refuses it like any other unknown field or type.

The input is never modified: the functions return a copy with plain dicts and lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from udsproxy.config.validate import item, join

__all__ = ["upgrade_bootstrap", "upgrade_resource"]

_URL = "type.googleapis.com/"
CLUSTER = "envoy.config.cluster.v3.Cluster"
LISTENER = "envoy.config.listener.v3.Listener"
HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "envoy.extensions.filters.http.router.v3.Router"
FILE_ACCESS_LOG = "envoy.extensions.access_loggers.file.v3.FileAccessLog"

# v2 message name -> v3 message name
_TYPES = {
    "envoy.api.v2.Cluster": CLUSTER,
    "envoy.api.v2.Listener": LISTENER,
    "envoy.config.filter.network.http_connection_manager.v2.HttpConnectionManager": HCM,
    "envoy.config.accesslog.v2.FileAccessLog": FILE_ACCESS_LOG,
}
# Extension name (v2, or the v3 one a late v2 config paired with 'config:') -> (v3 name, v3 type)
_NETWORK_FILTERS = {
    "envoy.http_connection_manager": ("envoy.filters.network.http_connection_manager", HCM),
    "envoy.filters.network.http_connection_manager": (
        "envoy.filters.network.http_connection_manager",
        HCM,
    ),
}
_HTTP_FILTERS = {
    "envoy.router": ("envoy.filters.http.router", ROUTER),
    "envoy.filters.http.router": ("envoy.filters.http.router", ROUTER),
}
_ACCESS_LOGGERS = {
    "envoy.file_access_log": ("envoy.access_loggers.file", FILE_ACCESS_LOG),
    "envoy.access_loggers.file": ("envoy.access_loggers.file", FILE_ACCESS_LOG),
}

Node = dict[str, Any]


def _copy(value: Any) -> Any:
    """A deep copy made of plain dicts and lists (mappings become dicts)."""
    if isinstance(value, Mapping):
        return {key: _copy(element) for key, element in value.items()}
    if isinstance(value, list):
        return [_copy(element) for element in value]
    return value


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _key(node: Node, name: str) -> str | None:
    """The key under which ``node`` holds field ``name`` (snake_case or lowerCamelCase)."""
    for key in (name, _camel(name)):
        if key in node:
            return key
    return None


def _elements(node: Node, name: str, path: str) -> list[tuple[Node, str]]:
    """The mappings of repeated field ``name`` with their paths; a lone mapping is one element
    (as validate accepts it)."""
    key = _key(node, name)
    value = node.get(key) if key else None
    if isinstance(value, dict):
        return [(value, join(path, name))]
    if isinstance(value, list):
        return [(x, item(join(path, name), i)) for i, x in enumerate(value) if isinstance(x, dict)]
    return []


class _Upgrader:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def read_as(self, path: str, old: str, new: str) -> None:
        self.warnings.append(f"{path}: deprecated v2 form '{old}' read as '{new}'")

    def type_url(self, node: Node, path: str) -> str | None:
        """Map a v2 '@type' in place; return the (new) message name, if it is a string."""
        type_url = node.get("@type")
        if not isinstance(type_url, str):
            return None
        prefix, _, name = type_url.rpartition("/")
        if name in _TYPES:
            new = f"{prefix}/{_TYPES[name]}" if prefix else _TYPES[name]
            self.read_as(join(path, "@type"), type_url, new)
            node["@type"] = new
            return _TYPES[name]
        return name

    def extension(
        self, node: Node, path: str, names: Mapping[str, tuple[str, str]]
    ) -> tuple[Node, str | None] | None:
        """Map an extension entry (name + config/typed_config) in place; return its typed_config
        and that config's message name."""
        name = node.get("name")
        known = names.get(name) if isinstance(name, str) else None
        config_key = _key(node, "typed_config")
        if known and config_key is None and isinstance(node.get("config", {}), dict | None):
            if "config" in node:
                self.read_as(join(path, "config"), "config", "typed_config")
                node["typed_config"] = {"@type": _URL + known[1], **(node.pop("config") or {})}
                config_key = "typed_config"
            elif name != known[0]:
                # Without a typed_config the name selects the factory; with one it is a label.
                self.read_as(join(path, "name"), str(name), known[0])
                node["name"] = known[0]
        config = node.get(config_key) if config_key else None
        if not isinstance(config, dict):
            return None
        return config, self.type_url(config, join(path, "typed_config"))

    # --- resources -------------------------------------------------------------------------------

    def cluster(self, node: Node, path: str) -> None:
        hosts_key = _key(node, "hosts")
        if hosts_key is None or _key(node, "load_assignment") is not None:
            return  # both: validate reports 'hosts' as unknown
        hosts = node.pop(hosts_key)
        hosts = hosts if isinstance(hosts, list) else [hosts]
        name = node.get("name")
        self.read_as(
            join(path, hosts_key),
            "hosts",
            "load_assignment.endpoints[0].lb_endpoints[*].endpoint.address",
        )
        node["load_assignment"] = {
            "cluster_name": name if isinstance(name, str) and name else "unnamed",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": host}} for host in hosts]}],
        }

    def listener(self, node: Node, path: str) -> None:
        for chain, chain_path in _elements(node, "filter_chains", path):
            for network_filter, filter_path in _elements(chain, "filters", chain_path):
                found = self.extension(network_filter, filter_path, _NETWORK_FILTERS)
                if found is not None and found[1] == HCM:
                    self.hcm(found[0], join(filter_path, "typed_config"))

    def hcm(self, node: Node, path: str) -> None:
        for http_filter, http_path in _elements(node, "http_filters", path):
            self.extension(http_filter, http_path, _HTTP_FILTERS)
        for log, log_path in _elements(node, "access_log", path):
            self.extension(log, log_path, _ACCESS_LOGGERS)


def upgrade_bootstrap(tree: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The bootstrap with the v2 forms of its static listeners and clusters read as v3."""
    out: Node = _copy(tree)
    upgrader = _Upgrader()
    static_key = _key(out, "static_resources")
    static = out.get(static_key) if static_key else None
    if isinstance(static, dict):
        for listener, path in _elements(static, "listeners", "static_resources"):
            upgrader.listener(listener, path)
        for cluster, path in _elements(static, "clusters", "static_resources"):
            upgrader.cluster(cluster, path)
    return out, upgrader.warnings


def upgrade_resource(
    tree: Mapping[str, Any], kind: Literal["cds", "lds"], path: str
) -> tuple[dict[str, Any], list[str]]:
    """One entry of a CDS/LDS file's ``resources`` (with its ``@type``), read as v3."""
    out: Node = _copy(tree)
    upgrader = _Upgrader()
    upgrader.type_url(out, path)
    if kind == "cds":
        upgrader.cluster(out, path)
    else:
        upgrader.listener(out, path)
    return out, upgrader.warnings
