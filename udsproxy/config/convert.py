"""Convert a validated bootstrap (``validate.validate``'s canonical tree) into ``schema.Bootstrap``.

Everything udsproxy does not implement is refused with its YAML path and the words "not supported
by udsproxy" -- never silently ignored. Because the canonical tree omits implicit-presence
scalars at their default (protobuf semantics), writing a default value such as
``lb_policy: ROUND_ROBIN`` or ``merge_slashes: false`` is the same as leaving it out and is
accepted; anything else present outside the implemented subset is refused. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from udsproxy.config.schema import (
    AccessLog,
    Address,
    Bootstrap,
    Cluster,
    Endpoint,
    HttpConnectionManager,
    Listener,
    Pipe,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    SocketAddress,
    UpgradeConfig,
    VirtualHost,
)
from udsproxy.config.validate import entry, item, join
from udsproxy.errors import ConfigError

__all__ = ["REFUSED", "convert"]

HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "envoy.extensions.filters.http.router.v3.Router"
ROUTER_NAME = "envoy.filters.http.router"
FILE_ACCESS_LOG = "envoy.extensions.access_loggers.file.v3.FileAccessLog"
UPSTREAM_HTTP = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
REFUSED = "not supported by udsproxy"
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the NUL

Node = Mapping[str, Any]


class _Converter:
    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []
        self.warnings: list[str] = []
        self.route_clusters: list[tuple[str, str]] = []  # (path, cluster name) to cross-check

    def error(self, path: str, message: str) -> None:
        self.errors.append((path, message))

    def refuse(self, path: str, what: str = "", note: str = "") -> None:
        message = f"{what} {REFUSED}" if what else REFUSED
        self.error(path, f"{message} ({note})" if note else message)

    def deprecated(self, path: str, instead: str) -> None:
        self.warnings.append(f"{path}: deprecated in Envoy; use {instead}")

    def only(self, node: Node, path: str, allowed: Collection[str]) -> None:
        """Refuse every field of ``node`` that udsproxy does not implement."""
        for key in node:
            if key not in allowed and key != "@type":
                self.refuse(join(path, key))

    def check_value(self, node: Node, key: str, path: str, allowed: Sequence[str]) -> None:
        value = node.get(key)
        if value is not None and value not in allowed:
            self.refuse(join(path, key), f"'{value}'", f"only {', '.join(allowed)}")

    # --- bootstrap -------------------------------------------------------------------------------

    def bootstrap(self, root: Node) -> Bootstrap:
        self.only(root, "", ("static_resources", "node"))  # node is identity only: harmless
        static = root.get("static_resources", {})
        self.only(static, "static_resources", ("listeners", "clusters"))
        listeners_path = "static_resources.listeners"
        listeners = [
            self.listener(node, item(listeners_path, i))
            for i, node in enumerate(static.get("listeners", []))
        ]
        clusters_path = "static_resources.clusters"
        clusters = [
            self.cluster(node, item(clusters_path, i))
            for i, node in enumerate(static.get("clusters", []))
        ]
        self.unique([x.name if x else None for x in listeners], listeners_path, "listener")
        cluster_names = self.unique([x.name for x in clusters], clusters_path, "cluster")
        for path, name in self.route_clusters:
            if name not in cluster_names:
                self.error(path, f"unknown cluster '{name}'")
        return Bootstrap(
            listeners=tuple(x for x in listeners if x is not None),
            clusters=tuple(clusters),
            warnings=tuple(self.warnings),
        )

    def unique(self, names: list[str | None], path: str, what: str) -> set[str]:
        seen: set[str] = set()
        for i, name in enumerate(names):
            if name is not None and name in seen:
                self.error(join(item(path, i), "name"), f"duplicate {what} name '{name}'")
            if name is not None:
                seen.add(name)
        return seen

    # --- addresses -------------------------------------------------------------------------------

    def address(self, node: Node, path: str, *, listener: bool) -> Address | None:
        self.only(node, path, ("socket_address", "pipe"))
        if "pipe" in node:
            return self.pipe(node["pipe"], join(path, "pipe"), listener=listener)
        if "socket_address" in node:
            return self.socket_address(
                node["socket_address"], join(path, "socket_address"), listener
            )
        return None

    def pipe(self, node: Node, path: str, *, listener: bool) -> Pipe:
        self.only(node, path, ("path", "mode"))
        raw: str = node.get("path", "")
        # Envoy's own spelling for abstract sockets is '@name'; accept a literal NUL too.
        sock_path = "@" + raw[1:] if raw.startswith("\0") else raw
        mode: int = node.get("mode", 0)
        if "\0" in sock_path:
            self.error(join(path, "path"), "NUL is only allowed as the first character")
        if sock_path == "@":
            self.error(join(path, "path"), "abstract socket name must not be empty")
        if len(sock_path.encode()) > _SUN_PATH_MAX:
            self.error(join(path, "path"), f"longer than {_SUN_PATH_MAX} bytes (sun_path limit)")
        if not listener and "mode" in node:
            self.error(join(path, "mode"), "only applies to listener pipes, not to endpoints")
        elif mode and sock_path.startswith("@"):
            self.error(join(path, "mode"), "not applicable to abstract sockets")
        return Pipe(path=sock_path, mode=mode)

    def socket_address(self, node: Node, path: str, listener: bool) -> SocketAddress:
        self.only(node, path, ("address", "port_value", "protocol"))
        self.check_value(node, "protocol", path, ("TCP",))
        address: str = node.get("address", "")
        try:
            ipaddress.ip_address(address)
        except ValueError:
            if listener:
                self.error(join(path, "address"), f"'{address}' is not an IP address")
            else:
                note = "STATIC clusters need an IP address"
                self.refuse(join(path, "address"), f"hostname '{address}'", note)
        return SocketAddress(address=address, port_value=node.get("port_value", 0))

    # --- listeners -------------------------------------------------------------------------------

    def listener(self, node: Node, path: str) -> Listener | None:
        self.only(
            node, path, ("name", "address", "filter_chains", "per_connection_buffer_limit_bytes")
        )
        address = None
        if "address" not in node:
            self.error(join(path, "address"), "is required")
        else:
            address = self.address(node["address"], join(path, "address"), listener=True)
        hcm = self.filter_chains(node.get("filter_chains", []), join(path, "filter_chains"))
        if address is None or hcm is None:
            return None
        kw: dict[str, Any] = _pick(node, "per_connection_buffer_limit_bytes")
        # Envoy names unnamed listeners with a UUID; the address is as unique and more readable.
        name = node.get("name") or str(address)
        return Listener(name=name, address=address, http_connection_manager=hcm, **kw)

    def filter_chains(self, chains: list[Node], path: str) -> HttpConnectionManager | None:
        if len(chains) > 1:
            self.refuse(path, "more than one filter chain")
        if not chains:
            self.error(path, "one filter chain with an http_connection_manager is required")
            return None
        chain_path = item(path, 0)
        self.only(chains[0], chain_path, ("filters",))
        filters: list[Node] = chains[0].get("filters", [])
        filters_path = join(chain_path, "filters")
        if len(filters) > 1:
            self.refuse(filters_path, "more than one network filter")
        if not filters:
            self.error(filters_path, "an http_connection_manager filter is required")
            return None
        filter_path = item(filters_path, 0)
        self.only(filters[0], filter_path, ("name", "typed_config"))
        config = filters[0].get("typed_config", {})
        if config.get("@type") != HCM:
            what = config.get("@type") or filters[0].get("name", "")
            self.refuse(filter_path, f"network filter '{what}'")
            return None
        return self.hcm(config, join(filter_path, "typed_config"))

    def hcm(self, node: Node, path: str) -> HttpConnectionManager:
        self.only(
            node,
            path,
            (
                "stat_prefix", "codec_type", "route_config", "access_log", "use_remote_address",
                "xff_num_trusted_hops", "server_name", "max_request_headers_kb",
                "common_http_protocol_options", "upgrade_configs", "stream_idle_timeout",
                "http_filters",
            ),
        )  # fmt: skip
        self.check_value(node, "codec_type", path, ("AUTO", "HTTP1"))
        kw = _pick(
            node,
            "use_remote_address",
            "xff_num_trusted_hops",
            "server_name",
            "max_request_headers_kb",
            "stream_idle_timeout",
        )
        options = node.get("common_http_protocol_options", {})
        options_path = join(path, "common_http_protocol_options")
        self.only(options, options_path, ("idle_timeout", "max_headers_count"))
        kw.update(_pick(options, "idle_timeout", "max_headers_count"))
        logs_path = join(path, "access_log")
        logs = [
            self.access_log(x, item(logs_path, i)) for i, x in enumerate(node.get("access_log", []))
        ]
        self.http_filters(node.get("http_filters", []), join(path, "http_filters"))
        return HttpConnectionManager(
            stat_prefix=node.get("stat_prefix", ""),
            route_config=self.route_config(
                node.get("route_config", {}), join(path, "route_config")
            ),
            access_log=tuple(x for x in logs if x is not None),
            upgrade_configs=self.upgrades(node, path),
            **kw,
        )

    def http_filters(self, filters: list[Node], path: str) -> None:
        for i, node in enumerate(filters):
            filter_path = item(path, i)
            config = node.get("typed_config", {})
            kind = config.get("@type")
            if kind == ROUTER or (kind is None and node.get("name") == ROUTER_NAME):
                self.only(node, filter_path, ("name", "typed_config"))
                self.only(config, join(filter_path, "typed_config"), ())
                if i != len(filters) - 1:
                    self.error(filter_path, "the router filter must be the last http filter")
            else:
                self.refuse(filter_path, f"http filter '{node.get('name') or kind or ''}'")

    def upgrades(self, node: Node, path: str) -> tuple[UpgradeConfig, ...]:
        out = []
        list_path = join(path, "upgrade_configs")
        for i, upgrade in enumerate(node.get("upgrade_configs", [])):
            upgrade_path = item(list_path, i)
            self.only(upgrade, upgrade_path, ("upgrade_type", "enabled"))
            if not upgrade.get("upgrade_type"):
                self.error(join(upgrade_path, "upgrade_type"), "is required and must not be empty")
            out.append(
                UpgradeConfig(
                    upgrade_type=upgrade.get("upgrade_type", ""), **_pick(upgrade, "enabled")
                )
            )
        return tuple(out)

    # --- access logs -----------------------------------------------------------------------------

    def access_log(self, node: Node, path: str) -> AccessLog | None:
        self.only(node, path, ("name", "typed_config"))
        config = node.get("typed_config", {})
        if config.get("@type") != FILE_ACCESS_LOG:
            what = config.get("@type") or node.get("name", "")
            self.refuse(path, f"access logger '{what}'")
            return None
        path = join(path, "typed_config")
        fields = ("path", "log_format", "format", "json_format", "typed_json_format")
        self.only(config, path, fields)
        text: str | None = None
        json_format: dict[str, object] | None = None
        omit_empty = False
        if "format" in config:
            self.deprecated(join(path, "format"), "log_format.text_format_source.inline_string")
            text = config["format"] or None  # Envoy: an empty format means the default one
        for key in ("json_format", "typed_json_format"):
            if key in config:
                self.deprecated(join(path, key), "log_format.json_format")
                json_format = config[key]
        if "log_format" in config:
            text, json_format, omit_empty = self.log_format(
                config["log_format"], join(path, "log_format")
            )
        return AccessLog(
            path=config.get("path", ""),
            text_format=text,
            json_format=json_format,
            omit_empty_values=omit_empty,
        )

    def log_format(
        self, node: Node, path: str
    ) -> tuple[str | None, dict[str, object] | None, bool]:
        # content_type only matters for local reply bodies, which udsproxy does not customise.
        fields = (
            "text_format",
            "text_format_source",
            "json_format",
            "omit_empty_values",
            "content_type",
        )
        self.only(node, path, fields)
        text: str | None = None
        if "text_format" in node:
            self.deprecated(join(path, "text_format"), "text_format_source.inline_string")
            text = node["text_format"]
        if "text_format_source" in node:
            self.only(
                node["text_format_source"], join(path, "text_format_source"), ("inline_string",)
            )
            text = node["text_format_source"].get("inline_string")
        return text, node.get("json_format"), node.get("omit_empty_values", False)

    # --- routes ----------------------------------------------------------------------------------

    def route_config(self, node: Node, path: str) -> RouteConfiguration:
        self.only(node, path, ("name", "virtual_hosts"))
        vhosts_path = join(path, "virtual_hosts")
        vhosts = [
            self.virtual_host(x, item(vhosts_path, i))
            for i, x in enumerate(node.get("virtual_hosts", []))
        ]
        return RouteConfiguration(name=node.get("name", ""), virtual_hosts=tuple(vhosts))

    def virtual_host(self, node: Node, path: str) -> VirtualHost:
        self.only(node, path, ("name", "domains", "routes"))
        routes_path = join(path, "routes")
        routes = [self.route(x, item(routes_path, i)) for i, x in enumerate(node.get("routes", []))]
        return VirtualHost(
            name=node.get("name", ""),
            domains=tuple(node.get("domains", ())),
            routes=tuple(x for x in routes if x is not None),
        )

    def route(self, node: Node, path: str) -> Route | None:
        self.only(node, path, ("name", "match", "route"))
        match = self.route_match(node.get("match", {}), join(path, "match"))
        if "route" not in node:
            return None  # another action: refused above, or missing: reported by validate
        action = self.route_action(node["route"], join(path, "route"))
        if action is None:
            return None
        return Route(match=match, route=action, **_pick(node, "name"))

    def route_match(self, node: Node, path: str) -> RouteMatch:
        self.only(node, path, ("prefix", "path", "safe_regex", "case_sensitive"))
        kw = _pick(node, "prefix", "path", "case_sensitive")
        if "safe_regex" in node:
            regex_path = join(path, "safe_regex")
            self.only(node["safe_regex"], regex_path, ("regex",))
            regex: str = node["safe_regex"].get("regex", "")
            try:
                re.compile(regex)
            except re.error as exc:
                self.error(join(regex_path, "regex"), f"invalid regex '{regex}': {exc}")
            kw["safe_regex"] = regex
        return RouteMatch(**kw)

    def route_action(self, node: Node, path: str) -> RouteAction | None:
        self.only(node, path, ("cluster", "timeout", "prefix_rewrite", "upgrade_configs"))
        if "cluster" not in node:
            return None  # another cluster_specifier: refused above
        self.route_clusters.append((join(path, "cluster"), node["cluster"]))
        kw = _pick(node, "cluster", "timeout", "prefix_rewrite")
        return RouteAction(upgrade_configs=self.upgrades(node, path), **kw)

    # --- clusters --------------------------------------------------------------------------------

    def cluster(self, node: Node, path: str) -> Cluster:
        fields = (
            "name", "type", "lb_policy", "connect_timeout", "per_connection_buffer_limit_bytes",
            "load_assignment", "typed_extension_protocol_options", "max_requests_per_connection",
        )  # fmt: skip
        self.only(node, path, fields)
        self.check_value(node, "type", path, ("STATIC",))
        self.check_value(node, "lb_policy", path, ("ROUND_ROBIN",))
        name: str = node.get("name", "")
        endpoints = self.load_assignment(
            node.get("load_assignment"), join(path, "load_assignment"), name
        )
        kw = _pick(node, "connect_timeout", "per_connection_buffer_limit_bytes")
        options_path = join(path, "typed_extension_protocol_options")
        kw.update(
            self.protocol_options(node.get("typed_extension_protocol_options", {}), options_path)
        )
        if "max_requests_per_connection" in node:
            deprecated_path = join(path, "max_requests_per_connection")
            self.deprecated(deprecated_path, f'typed_extension_protocol_options["{UPSTREAM_HTTP}"]')
            if "max_requests_per_connection" in kw:
                self.error(
                    deprecated_path, "also set in typed_extension_protocol_options; set only one"
                )
            kw["max_requests_per_connection"] = node["max_requests_per_connection"]
        return Cluster(name=name, endpoints=endpoints, **kw)

    def load_assignment(self, node: Node | None, path: str, cluster: str) -> tuple[Endpoint, ...]:
        out: list[Endpoint] = []
        node = node or {}
        self.only(node, path, ("cluster_name", "endpoints"))
        for i, locality in enumerate(node.get("endpoints", [])):
            locality_path = item(join(path, "endpoints"), i)
            self.only(locality, locality_path, ("lb_endpoints",))
            for j, lb_endpoint in enumerate(locality.get("lb_endpoints", [])):
                lb_path = item(join(locality_path, "lb_endpoints"), j)
                self.only(lb_endpoint, lb_path, ("endpoint",))
                endpoint = lb_endpoint.get("endpoint", {})
                self.only(endpoint, join(lb_path, "endpoint"), ("address",))
                address_path = join(lb_path, "endpoint.address")
                if "address" not in endpoint:
                    if "endpoint" in lb_endpoint:
                        self.error(address_path, "is required")
                    continue
                address = self.address(endpoint["address"], address_path, listener=False)
                if address is not None:
                    out.append(Endpoint(address=address))
        if not out:
            self.error(path, f"cluster '{cluster}' has no endpoints")
        return tuple(out)

    def protocol_options(self, options: Node, path: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, config in options.items():
            entry_path = entry(path, key)
            if key != UPSTREAM_HTTP or config.get("@type") != UPSTREAM_HTTP:
                self.refuse(entry_path, f"'{config.get('@type') or key}'")
                continue
            self.only(config, entry_path, ("common_http_protocol_options", "explicit_http_config"))
            common = config.get("common_http_protocol_options", {})
            common_path = join(entry_path, "common_http_protocol_options")
            self.only(common, common_path, ("idle_timeout", "max_requests_per_connection"))
            out.update(_pick(common, "idle_timeout", "max_requests_per_connection"))
            explicit = config.get("explicit_http_config", {})
            explicit_path = join(entry_path, "explicit_http_config")
            self.only(explicit, explicit_path, ("http_protocol_options",))
            http1 = explicit.get("http_protocol_options", {})
            self.only(http1, join(explicit_path, "http_protocol_options"), ())
        return out


def _pick(node: Node, *keys: str) -> dict[str, Any]:
    """The given fields that are set, so unset ones keep schema.py's defaults."""
    return {key: node[key] for key in keys if key in node}


def convert(tree: Mapping[str, Any]) -> Bootstrap:
    """Build the Bootstrap from a validated tree; raise ConfigError listing every refusal."""
    converter = _Converter()
    bootstrap = converter.bootstrap(tree)
    if converter.errors:
        raise ConfigError(converter.errors)
    return bootstrap
