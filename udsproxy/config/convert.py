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
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any, Literal, NamedTuple

from udsproxy.accesslog.formatter import FormatError, compile_access_log
from udsproxy.config import convert_filters as http_filter_types
from udsproxy.config import convert_governance as governance
from udsproxy.config import convert_health as health
from udsproxy.config import convert_lb as lb
from udsproxy.config import convert_mirror as mirror
from udsproxy.config import convert_overload as overload
from udsproxy.config import convert_shaping as shaping
from udsproxy.config import filter_schema
from udsproxy.config.datasource import decode_base64
from udsproxy.config.schema import (
    AccessLog,
    Address,
    Admin,
    Bootstrap,
    Cluster,
    ConnectionLimit,
    DataSource,
    DownstreamTls,
    DynamicResources,
    Endpoint,
    HttpConnectionManager,
    HttpFilter,
    Listener,
    Locality,
    PathConfigSource,
    Pipe,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    RuntimeLayer,
    SanMatcher,
    SocketAddress,
    TlsCertificate,
    UpgradeConfig,
    UpstreamTls,
    VirtualHost,
)
from udsproxy.config.validate import entry, item, join
from udsproxy.errors import ConfigError

__all__ = [
    "REFUSED", "Converted", "certificate_paths", "convert", "convert_resources", "hcm_path",
    "route_cluster_refs",
]  # fmt: skip

HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "envoy.extensions.filters.http.router.v3.Router"
ROUTER_NAME = "envoy.filters.http.router"
FILE_ACCESS_LOG = "envoy.extensions.access_loggers.file.v3.FileAccessLog"
UPSTREAM_HTTP = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
DOWNSTREAM_TLS = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
CONNECTION_LIMIT = "envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit"
TLS_INSPECTOR = "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
TLS_INSPECTOR_NAME = "envoy.filters.listener.tls_inspector"
UPSTREAM_TLS = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
RAW_BUFFER = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
RAW_BUFFER_NAME = "envoy.transport_sockets.raw_buffer"
DATA_SOURCE_KINDS = ("filename", "inline_bytes", "inline_string", "environment_variable")
STRING_MATCHER_KINDS = ("exact", "prefix", "suffix", "contains", "safe_regex")
SAN_TYPES = ("DNS", "URI", "IP_ADDRESS", "EMAIL")
REFUSED = "not supported by udsproxy"
_STREAM_ACCESS_LOGS = {
    "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog": "/dev/stdout",
    "envoy.extensions.access_loggers.stream.v3.StderrAccessLog": "/dev/stderr",
}
_ALPN_PATH = "typed_config.common_tls_context.alpn_protocols"
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the NUL

Node = Mapping[str, Any]


class _Converter:
    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []
        self.warnings: list[str] = []
        self.route_clusters: list[tuple[str, str]] = []  # (path, cluster name) to cross-check
        self.connection_limits: list[ConnectionLimit | None] = []  # the listener's chains'

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
        # node is identity only: harmless
        fields = (
            "static_resources", "dynamic_resources", "node", "admin", "layered_runtime",
            "overload_manager",
        )  # fmt: skip
        self.only(root, "", fields)
        admin = self.admin(root.get("admin"), "admin")
        max_connections = overload.overload_manager(
            self, root.get("overload_manager", {}), "overload_manager"
        )
        runtime = self.layered_runtime(root.get("layered_runtime", {}), "layered_runtime")
        static = root.get("static_resources", {})
        self.only(static, "static_resources", ("listeners", "clusters"))
        dynamic = self.dynamic_resources(root.get("dynamic_resources"), "dynamic_resources")
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
        self.check_listeners([(item(listeners_path, i), x) for i, x in enumerate(listeners)])
        if admin is not None:
            for x in listeners:
                if x is not None and x.address == admin.address and _fixed(admin.address):
                    message = f"{admin.address} is the address of listener '{x.name}'"
                    self.error("admin.address", message + ": the admin needs its own")
        cluster_names = self.unique(
            [(item(clusters_path, i), x.name) for i, x in enumerate(clusters)], "cluster"
        )
        if dynamic is None or dynamic.cds is None:
            # With CDS, routes may name its clusters: dynamic.resolve checks the merged set.
            self.check_route_clusters(cluster_names)
        return Bootstrap(
            layered_runtime=runtime,
            max_active_downstream_connections=max_connections,
            listeners=tuple(x for x in listeners if x is not None),
            clusters=tuple(clusters),
            dynamic_resources=dynamic,
            admin=admin,
            warnings=tuple(self.warnings),
        )

    def layered_runtime(self, node: Node, path: str) -> tuple[RuntimeLayer, ...]:
        self.only(node, path, ("layers",))
        layers: list[RuntimeLayer] = []
        for i, layer in enumerate(node.get("layers", [])):
            layer_path = item(join(path, "layers"), i)
            self.only(layer, layer_path, ("name", "static_layer", "disk_layer", "admin_layer"))
            name = layer.get("name", "")
            if "static_layer" in layer:
                values = dict(flatten(layer["static_layer"]))
                layers.append(RuntimeLayer(name=name, kind="static", values=values))
            elif "disk_layer" in layer:
                disk = layer["disk_layer"]
                disk_path = join(layer_path, "disk_layer")
                # append_service_cluster (a subdirectory per --service-cluster): not implemented
                self.only(disk, disk_path, ("symlink_root", "subdirectory"))
                kw = _pick(disk, "symlink_root", "subdirectory")
                layers.append(RuntimeLayer(name=name, kind="disk", **kw))
            elif "admin_layer" in layer:
                layers.append(RuntimeLayer(name=name, kind="admin"))
        layers_path = join(path, "layers")
        self.unique([(item(layers_path, i), x.name) for i, x in enumerate(layers)], "layer")
        return tuple(layers)

    def admin(self, node: Node | None, path: str) -> Admin | None:
        """The admin interface: an address of its own (never a proxy listener's)."""
        if node is None:
            return None
        self.only(node, path, ("address", "access_log", "access_log_path"))
        logs_path = join(path, "access_log")
        logs = [
            self.access_log(x, item(logs_path, i)) for i, x in enumerate(node.get("access_log", []))
        ]
        if "access_log_path" in node:
            self.deprecated(join(path, "access_log_path"), "access_log")
            logs.append(AccessLog(path=node["access_log_path"]))
        access_log = tuple(x for x in logs if x is not None)
        address = node.get("address")
        if address is None:
            default = SocketAddress(address="127.0.0.1", port_value=9901)
            return Admin(address=default, access_log=access_log)
        converted = self.address(address, join(path, "address"), listener=True)
        return Admin(address=converted, access_log=access_log) if converted is not None else None

    def check_route_clusters(self, cluster_names: Collection[str]) -> None:
        for path, name in self.route_clusters:
            if name not in cluster_names:
                self.error(path, f"unknown cluster '{name}'")

    def check_listeners(self, listeners: Sequence[tuple[str, Listener | None]]) -> None:
        """Listener names and addresses are unique (Envoy refuses a duplicate address)."""
        self.unique([(path, x.name if x else None) for path, x in listeners], "listener")
        seen: dict[Address, str] = {}
        for path, listener in listeners:
            if listener is None:
                continue
            if listener.address in seen:
                message = f"{listener.address} is already the address of listener"
                self.error(join(path, "address"), f"{message} '{seen[listener.address]}'")
            seen.setdefault(listener.address, listener.name)

    def unique(self, names: Sequence[tuple[str, str | None]], what: str) -> set[str]:
        """Report every repeated name (at ``<path>.name``); return the set of names."""
        seen: set[str] = set()
        for path, name in names:
            if name is not None and name in seen:
                self.error(join(path, "name"), f"duplicate {what} name '{name}'")
            if name is not None:
                seen.add(name)
        return seen

    # --- dynamic resources -----------------------------------------------------------------------

    def dynamic_resources(self, node: Node | None, path: str) -> DynamicResources | None:
        if node is None:
            return None
        self.only(node, path, ("cds_config", "lds_config"))
        cds = self.config_source(node.get("cds_config"), join(path, "cds_config"))
        lds = self.config_source(node.get("lds_config"), join(path, "lds_config"))
        return DynamicResources(cds=cds, lds=lds)

    def config_source(self, node: Node | None, path: str) -> PathConfigSource | None:
        """A file-based ConfigSource. Its files are read by ``dynamic.resolve``, not here."""
        if node is None:
            return None
        # initial_fetch_timeout is accepted: a file is read at once, so it can never expire.
        implemented = (
            "path",
            "path_config_source",
            "resource_api_version",
            "initial_fetch_timeout",
        )
        for key in node:
            if key not in implemented:
                self.refuse(join(path, key), note="only path and path_config_source")
        self.check_value(node, "resource_api_version", path, ("V3",))
        if "path" in node:
            self.deprecated(join(path, "path"), "path_config_source.path")
            return PathConfigSource(path=node["path"])
        if "path_config_source" not in node:
            return None  # another source: refused above, or none: reported by validate
        source_path = join(path, "path_config_source")
        source = node["path_config_source"]
        self.only(source, source_path, ("path", "watched_directory"))
        watched = source.get("watched_directory")
        if watched is not None:
            # watch_modify (reload on in-place writes too) is what udsproxy always does.
            self.only(watched, join(source_path, "watched_directory"), ("path", "watch_modify"))
        return PathConfigSource(
            path=source.get("path", ""),
            watched_directory=None if watched is None else watched.get("path", ""),
        )

    # --- addresses -------------------------------------------------------------------------------

    def address(
        self, node: Node, path: str, *, listener: bool, cluster_type: str = "STATIC"
    ) -> Address | None:
        self.only(node, path, ("socket_address", "pipe"))
        if "pipe" in node:
            if cluster_type in _DNS_TYPES:
                note = f"a {cluster_type} cluster resolves socket_address names; use STATIC"
                self.refuse(join(path, "pipe"), f"a pipe in a {cluster_type} cluster", note)
            return self.pipe(node["pipe"], join(path, "pipe"), listener=listener)
        if "socket_address" in node:
            return self.socket_address(
                node["socket_address"], join(path, "socket_address"), listener, cluster_type
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

    def socket_address(
        self, node: Node, path: str, listener: bool, cluster_type: str = "STATIC"
    ) -> SocketAddress:
        """``cluster_type`` is the endpoint's cluster's type as written (STATIC if unset)."""
        self.only(node, path, ("address", "port_value", "protocol"))
        self.check_value(node, "protocol", path, ("TCP",))
        address: str = node.get("address", "")
        if listener or cluster_type == "STATIC":
            try:
                ipaddress.ip_address(address)
            except ValueError:
                if listener:
                    self.error(join(path, "address"), f"'{address}' is not an IP address")
                else:
                    note = (
                        f"the cluster's type is {cluster_type}, which takes IP addresses;"
                        " a host name needs type STRICT_DNS or LOGICAL_DNS"
                    )
                    self.refuse(join(path, "address"), f"hostname '{address}'", note)
        elif not address and cluster_type in _DNS_TYPES:
            self.error(join(path, "address"), f"is required (the name a {cluster_type} resolves)")
        # (another type is refused already: nothing to say about its endpoints)
        return SocketAddress(address=address, port_value=node.get("port_value", 0))

    # --- listeners -------------------------------------------------------------------------------

    def listener(self, node: Node, path: str) -> Listener | None:
        # traffic_direction only labels the listener for tracing and stats: inert here, as in
        # Envoy for a listener without tracing.
        fields = (
            "name", "address", "filter_chains", "per_connection_buffer_limit_bytes",
            "listener_filters", "traffic_direction",
        )  # fmt: skip
        self.only(node, path, fields)
        address = None
        if "address" not in node:
            self.error(join(path, "address"), "is required")
        else:
            address = self.address(node["address"], join(path, "address"), listener=True)
        self.listener_filters(node.get("listener_filters", []), join(path, "listener_filters"))
        self.connection_limits = []
        hcm, tls = self.filter_chains(node.get("filter_chains", []), join(path, "filter_chains"))
        limits = self.connection_limits
        if limits and len(node.get("filter_chains", [])) > 1:
            # Envoy counts per filter chain; udsproxy's chains share one connection manager
            what = "a connection_limit filter with more than one filter chain"
            self.refuse(join(path, "filter_chains"), what)
        if address is None or hcm is None:
            return None
        kw: dict[str, Any] = _pick(node, "per_connection_buffer_limit_bytes")
        if limits and limits[0] is not None:
            kw["connection_limit"] = limits[0]
        # Envoy names unnamed listeners with a UUID; the address is as unique and more readable.
        name = node.get("name") or str(address)
        return Listener(name=name, address=address, http_connection_manager=hcm, tls=tls, **kw)

    def listener_filters(self, filters: list[Node], path: str) -> None:
        """Only the TLS inspector, which Envoy needs for SNI and udsproxy's TLS does anyway."""
        for i, node in enumerate(filters):
            filter_path = item(path, i)
            config = node.get("typed_config", {})
            kind = config.get("@type")
            if kind == TLS_INSPECTOR or (kind is None and node.get("name") == TLS_INSPECTOR_NAME):
                self.only(node, filter_path, ("name", "typed_config"))
                self.only(config, join(filter_path, "typed_config"), ())
            else:
                self.refuse(filter_path, f"listener filter '{kind or node.get('name') or ''}'")

    def filter_chains(
        self, chains: list[Node], path: str
    ) -> tuple[HttpConnectionManager | None, DownstreamTls | None]:
        """One plain-text filter chain, or TLS chains that differ only in their certificate and
        filter_chain_match.server_names (SNI); the chain without server_names is the default."""
        if not chains:
            self.error(path, "one filter chain with an http_connection_manager is required")
            return None, None
        with_tls = [i for i, chain in enumerate(chains) if "transport_socket" in chain]
        if not with_tls and len(chains) > 1:
            self.refuse(path, "more than one filter chain")
            chains = chains[:1]
        elif with_tls and len(with_tls) != len(chains):
            without = next(i for i in range(len(chains)) if i not in with_tls)
            note = "either every filter chain has a TLS transport_socket or none"
            self.refuse(item(path, without), "a plain-text filter chain beside TLS ones", note)
        hcms: list[HttpConnectionManager | None] = []
        certificates: list[TlsCertificate | None] = []
        alpn: list[tuple[str, tuple[str, ...]]] = []  # (path, alpn_protocols) per TLS chain
        default_chain: int | None = None
        names: dict[str, int] = {}  # server name -> its chain
        for i, chain in enumerate(chains):
            chain_path = item(path, i)
            self.only(
                chain, chain_path, ("name", "filters", "filter_chain_match", "transport_socket")
            )
            match_path = join(chain_path, "filter_chain_match")
            server_names = self.chain_match(
                chain.get("filter_chain_match", {}), match_path, "transport_socket" in chain
            )
            for j, name in enumerate(server_names):
                if name in names and names[name] != i:
                    where = item(join(match_path, "server_names"), j)
                    self.error(
                        where, f"'{name}' is already matched by filter_chains[{names[name]}]"
                    )
                names.setdefault(name, i)
            if not server_names and default_chain is not None:
                message = f"the same filter_chain_match as filter_chains[{default_chain}]"
                self.error(chain_path, f"{message} (only one chain may have no server_names)")
            elif not server_names:
                default_chain = i
            routes_before = len(self.route_clusters)
            hcms.append(self.chain_filters(chain.get("filters", []), join(chain_path, "filters")))
            if hcms[-1] is not None and hcms[0] is not None and hcms[-1] != hcms[0]:
                self.refuse(chain_path, "filter chains with different http_connection_manager")
            if i > 0:
                del self.route_clusters[routes_before:]  # equal chains: check the first one only
            if "transport_socket" in chain:
                socket_path = join(chain_path, "transport_socket")
                found = self.transport_socket(chain["transport_socket"], socket_path, server_names)
                certificates.append(found[0] if found else None)
                if found:
                    alpn.append((join(socket_path, _ALPN_PATH), found[1]))
        for alpn_path, protocols in alpn[1:]:
            if protocols != alpn[0][1]:
                self.refuse(alpn_path, "alpn_protocols different from the first filter chain's")
        tls = None
        if with_tls and alpn:
            valid = tuple(x for x in certificates if x is not None)
            tls = DownstreamTls(certificates=valid, alpn_protocols=alpn[0][1])
        return hcms[0], tls

    def chain_match(self, node: Node, path: str, tls: bool) -> tuple[str, ...]:
        self.only(node, path, ("server_names", "transport_protocol"))
        protocol = node.get("transport_protocol")
        protocol_path = join(path, "transport_protocol")
        if protocol is not None and protocol != "tls":
            self.refuse(protocol_path, f"'{protocol}'", "only 'tls' is matched")
        elif protocol is not None and not tls:
            # matching TLS on a chain that does not terminate it: TLS passthrough (tcp_proxy)
            what = "TLS passthrough (a chain that matches 'tls' without a TLS transport_socket)"
            self.refuse(protocol_path, what)
        server_names: list[str] = node.get("server_names", [])
        if server_names and not tls:
            self.refuse(join(path, "server_names"), note="SNI needs a TLS transport_socket")
        return tuple(server_names)

    def chain_filters(self, filters: list[Node], path: str) -> HttpConnectionManager | None:
        # a connection_limit filter may come first (kept in self.connection_limits)
        first = filters[0].get("typed_config", {}) if filters else {}
        skip = 0
        if first.get("@type") == CONNECTION_LIMIT:
            self.connection_limits.append(
                overload.connection_limit(self, filters[0], item(path, 0))
            )
            filters = filters[1:]
            skip = 1
        if len(filters) > 1:
            self.refuse(item(path, skip + 1), "more than one network filter")
        if not filters:
            self.error(path, "an http_connection_manager filter is required")
            return None
        filter_path = item(path, skip)
        self.only(filters[0], filter_path, ("name", "typed_config"))
        config = filters[0].get("typed_config", {})
        if config.get("@type") != HCM:
            what = config.get("@type") or filters[0].get("name", "")
            self.refuse(filter_path, f"network filter '{what}'")
            return None
        return self.hcm(config, join(filter_path, "typed_config"))

    # --- TLS -------------------------------------------------------------------------------------

    def transport_socket(
        self, node: Node, path: str, server_names: tuple[str, ...]
    ) -> tuple[TlsCertificate | None, tuple[str, ...]] | None:
        """envoy.transport_sockets.tls: one certificate chain and key file, ALPN http/1.1."""
        self.only(node, path, ("name", "typed_config"))
        config = node.get("typed_config", {})
        if config.get("@type") != DOWNSTREAM_TLS:
            what = config.get("@type") or node.get("name", "")
            self.refuse(path, f"transport socket '{what}'", "only a DownstreamTlsContext")
            return None
        path = join(path, "typed_config")
        self.only(config, path, ("common_tls_context", "require_client_certificate", "require_sni"))
        for key in ("require_client_certificate", "require_sni"):
            if config.get(key):
                self.refuse(join(path, key), "true")
        common = config.get("common_tls_context", {})
        common_path = join(path, "common_tls_context")
        self.only(common, common_path, ("tls_certificates", "alpn_protocols"))
        alpn: list[str] = common.get("alpn_protocols", [])
        for i, protocol in enumerate(alpn):
            if protocol != "http/1.1":
                alpn_path = item(join(common_path, "alpn_protocols"), i)
                self.refuse(alpn_path, f"'{protocol}'", "only http/1.1")
        return self.tls_certificates(common, common_path, server_names), tuple(alpn)

    def tls_certificates(
        self, common: Node, path: str, server_names: tuple[str, ...], *, required: bool = True
    ) -> TlsCertificate | None:
        certificates: list[Node] = common.get("tls_certificates", [])
        path = join(path, "tls_certificates")
        if not certificates:
            # certificates by SDS are refused already: "required" would only repeat it
            if required and "tls_certificate_sds_secret_configs" not in common:
                self.error(path, "one certificate is required")
            return None
        if len(certificates) > 1:
            self.refuse(item(path, 1), "more than one certificate per filter chain")
        path = item(path, 0)
        self.only(certificates[0], path, ("certificate_chain", "private_key"))
        chain = self.data_source(
            certificates[0].get("certificate_chain"), join(path, "certificate_chain")
        )
        key = self.data_source(certificates[0].get("private_key"), join(path, "private_key"))
        if chain is None or key is None:
            return None
        return TlsCertificate(certificate_chain=chain, private_key=key, server_names=server_names)

    def data_source(self, node: Node | None, path: str) -> DataSource | None:
        """An Envoy DataSource, kept as written. Files and environment variables are read at
        load time (``config.datasource.read``, called by dynamic.resolve and by whoever uses
        the value); inline_bytes is checked to be base64 here."""
        if node is None:
            self.error(path, "is required")
            return None
        self.only(node, path, DATA_SOURCE_KINDS)
        kinds = [key for key in DATA_SOURCE_KINDS if key in node]
        if len(kinds) > 1:
            self.error(path, f"only one of {', '.join(kinds)} may be set")
        if not kinds:
            if not any(key not in DATA_SOURCE_KINDS for key in node):  # else refused above
                self.error(path, f"one of {', '.join(DATA_SOURCE_KINDS)} is required")
            return None
        kind = kinds[0]
        value: str = node[kind]
        if kind == "inline_bytes" and decode_base64(value) is None:
            self.error(join(path, kind), "is not valid base64")
        elif kind in ("filename", "environment_variable") and not value:
            self.error(join(path, kind), "must not be empty")
        return DataSource(kind=kind, value=value)

    def upstream_tls(self, node: Node, path: str) -> UpstreamTls | None:
        """A cluster's transport_socket: raw_buffer (plain text, the default) or
        envoy.transport_sockets.tls with an UpstreamTlsContext."""
        self.only(node, path, ("name", "typed_config"))
        config = node.get("typed_config", {})
        kind = config.get("@type")
        if kind == RAW_BUFFER or (kind is None and node.get("name") == RAW_BUFFER_NAME):
            self.only(config, join(path, "typed_config"), ())
            return None
        if kind != UPSTREAM_TLS:
            what = kind or node.get("name", "")
            self.refuse(path, f"transport socket '{what}'", "only an UpstreamTlsContext")
            return None
        path = join(path, "typed_config")
        # allow_renegotiation, enforce_rsa_key_usage, ... are refused by name.
        self.only(config, path, ("sni", "common_tls_context", "max_session_keys"))
        if config.get("max_session_keys", 0):
            note = "udsproxy does not resume upstream TLS sessions; only 0"
            self.refuse(join(path, "max_session_keys"), f"{config['max_session_keys']}", note)
        common = config.get("common_tls_context", {})
        common_path = join(path, "common_tls_context")
        fields = ("tls_params", "tls_certificates", "validation_context", "alpn_protocols")
        self.only(common, common_path, fields)
        alpn: list[str] = common.get("alpn_protocols", [])
        for i, protocol in enumerate(alpn):
            if protocol != "http/1.1":
                note = "udsproxy speaks HTTP/1.1 to upstreams; only http/1.1"
                self.refuse(item(join(common_path, "alpn_protocols"), i), f"'{protocol}'", note)
        kw: dict[str, Any] = self.tls_params(
            common.get("tls_params", {}), join(common_path, "tls_params")
        )
        validation = common.get("validation_context")
        if validation is not None:
            kw.update(self.validation_context(validation, join(common_path, "validation_context")))
        return UpstreamTls(
            sni=config.get("sni", ""),
            certificate=self.tls_certificates(common, common_path, (), required=False),
            alpn_protocols=tuple(alpn),
            **kw,
        )

    def tls_params(self, node: Node, path: str) -> dict[str, Any]:
        """The protocol versions; cipher suites, curves and signature algorithms are BoringSSL
        names that OpenSSL does not all share: refused."""
        self.only(node, path, ("tls_minimum_protocol_version", "tls_maximum_protocol_version"))
        out = {
            key: node[key]
            for key in ("tls_minimum_protocol_version", "tls_maximum_protocol_version")
            if node.get(key, "TLS_AUTO") != "TLS_AUTO"
        }
        low = out.get("tls_minimum_protocol_version", "TLSv1_2")
        high = out.get("tls_maximum_protocol_version", "TLSv1_2")
        if "tls_minimum_protocol_version" in out and "tls_maximum_protocol_version" not in out:
            high = out["tls_maximum_protocol_version"] = max(low, high)
        elif "tls_maximum_protocol_version" in out and "tls_minimum_protocol_version" not in out:
            low = out["tls_minimum_protocol_version"] = min(low, high)
        if low > high:  # TLSv1_0 < TLSv1_1 < TLSv1_2 < TLSv1_3 as text too
            message = f"{low} is above tls_maximum_protocol_version {high}"
            self.error(join(path, "tls_minimum_protocol_version"), message)
        return out

    def validation_context(self, node: Node, path: str) -> dict[str, Any]:
        fields = ("trusted_ca", "match_typed_subject_alt_names", "match_subject_alt_names")
        self.only(node, path, fields)
        matchers: list[SanMatcher] = []
        typed_path = join(path, "match_typed_subject_alt_names")
        for i, typed in enumerate(node.get("match_typed_subject_alt_names", [])):
            typed_item = item(typed_path, i)
            self.only(typed, typed_item, ("san_type", "matcher"))
            san_type = typed.get("san_type")
            if san_type not in SAN_TYPES:
                what = f"san_type '{san_type}'" if san_type else "san_type"
                note = f"one of {', '.join(SAN_TYPES)}"
                if san_type is None:
                    self.error(join(typed_item, "san_type"), f"is required ({note})")
                else:
                    self.refuse(join(typed_item, "san_type"), what, f"only {note}")
                continue
            matcher = self.san_matcher(
                typed.get("matcher", {}), join(typed_item, "matcher"), san_type
            )
            if matcher is not None:
                matchers.append(matcher)
        legacy_path = join(path, "match_subject_alt_names")
        if "match_subject_alt_names" in node:
            self.deprecated(legacy_path, "match_typed_subject_alt_names")
        for i, legacy in enumerate(node.get("match_subject_alt_names", [])):
            # Envoy matches the untyped form against the SANs of every type.
            matcher = self.san_matcher(legacy, item(legacy_path, i), "")
            if matcher is not None:
                matchers.append(matcher)
        out: dict[str, Any] = {"san_matchers": tuple(matchers)}
        if "trusted_ca" in node:
            out["trusted_ca"] = self.data_source(node["trusted_ca"], join(path, "trusted_ca"))
        elif matchers:
            # Envoy's own refusal (DefaultCertValidator): a name proves nothing without a CA.
            message = "SAN-based verification of peer certificates without trusted CA is "
            self.error(path, message + "insecure and not allowed")
        return out

    def san_matcher(self, node: Node, path: str, san_type: str) -> SanMatcher | None:
        """A StringMatcher (type.matcher.v3) on the SANs of ``san_type`` ("" for any)."""
        self.only(node, path, (*STRING_MATCHER_KINDS, "ignore_case"))
        kinds = [key for key in STRING_MATCHER_KINDS if key in node]
        if len(kinds) != 1:
            if not kinds:
                self.error(path, f"one of {', '.join(STRING_MATCHER_KINDS)} is required")
            return None
        kind = kinds[0]
        value = node[kind]
        if kind == "safe_regex":
            self.only(value, join(path, "safe_regex"), ("regex",))
            value = value.get("regex", "")
            try:
                re.compile(value)
            except re.error as exc:
                self.error(join(path, "safe_regex.regex"), f"invalid regex '{value}': {exc}")
                return None
        ignore_case = node.get("ignore_case", False)
        return SanMatcher(san_type=san_type, ignore_case=ignore_case, **{kind: value})

    def hcm(self, node: Node, path: str) -> HttpConnectionManager:
        self.only(
            node,
            path,
            (
                "stat_prefix", "codec_type", "route_config", "access_log", "use_remote_address",
                "xff_num_trusted_hops", "server_name", "max_request_headers_kb",
                "common_http_protocol_options", "upgrade_configs", "stream_idle_timeout",
                "http_filters", "request_timeout", "generate_request_id", "normalize_path",
                "merge_slashes", "path_with_escaped_slashes_action", "local_reply_config",
                "request_headers_timeout", "drain_timeout", "http1_safe_max_connection_duration",
                "delayed_close_timeout",
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
            "request_timeout",
            "request_headers_timeout",
            "drain_timeout",
            "http1_safe_max_connection_duration",
            "delayed_close_timeout",
            "normalize_path",
            "merge_slashes",
            "path_with_escaped_slashes_action",
        )
        # a wrapped bool: an explicit false is kept by the canonical tree
        kw["generate_request_id"] = node.get("generate_request_id", True)
        options = node.get("common_http_protocol_options", {})
        options_path = join(path, "common_http_protocol_options")
        self.only(
            options,
            options_path,
            (
                "idle_timeout", "max_headers_count", "headers_with_underscores_action",
                "max_connection_duration", "max_requests_per_connection",
            ),
        )  # fmt: skip
        kw.update(
            _pick(
                options, "idle_timeout", "max_headers_count", "headers_with_underscores_action",
                "max_connection_duration", "max_requests_per_connection",
            )
        )  # fmt: skip
        logs_path = join(path, "access_log")
        logs = [
            self.access_log(x, item(logs_path, i)) for i, x in enumerate(node.get("access_log", []))
        ]
        kw["http_filters"] = self.http_filters(
            node.get("http_filters", []), join(path, "http_filters")
        )
        if "local_reply_config" in node:
            kw["local_reply_config"] = shaping.local_reply_config(
                self, node["local_reply_config"], join(path, "local_reply_config")
            )
        return HttpConnectionManager(
            stat_prefix=node.get("stat_prefix", ""),
            route_config=self.route_config(
                node.get("route_config", {}), join(path, "route_config")
            ),
            access_log=tuple(x for x in logs if x is not None),
            upgrade_configs=self.upgrades(node, path),
            **kw,
        )

    def http_filters(self, filters: list[Node], path: str) -> tuple[HttpFilter, ...]:
        """The filters before the router (udsproxy.filters), in order; the router is last."""
        out: list[HttpFilter] = []
        for i, node in enumerate(filters):
            filter_path = item(path, i)
            config = node.get("typed_config", {})
            kind = config.get("@type")
            if kind == ROUTER or (kind is None and node.get("name") == ROUTER_NAME):
                self.only(node, filter_path, ("name", "typed_config"))
                self.only(config, join(filter_path, "typed_config"), ())
                if i != len(filters) - 1:
                    self.error(filter_path, "the router filter must be the last http filter")
            elif kind in http_filter_types.SUPPORTED:
                self.only(node, filter_path, ("name", "typed_config"))
                name = node.get("name") or http_filter_types.SUPPORTED[kind]
                parsed = http_filter_types.parse_http_filter(
                    self, kind, config, join(filter_path, "typed_config")
                )
                if parsed is not None:
                    out.append(HttpFilter(name=name, config=parsed))
            else:
                what = f"http filter '{node.get('name') or kind or ''}'"
                self.refuse(filter_path, what, http_filter_types.refusal_note())
        return tuple(out)

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
        kind = config.get("@type")
        if kind in _STREAM_ACCESS_LOGS:
            return self.stream_access_log(config, join(path, "typed_config"), kind)
        if kind != FILE_ACCESS_LOG:
            what = kind or node.get("name", "")
            note = "only the file, stdout and stderr access loggers"
            self.refuse(path, f"access logger '{what}'", note)
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
        result = AccessLog(
            path=config.get("path", ""),
            text_format=text,
            json_format=json_format,
            omit_empty_values=omit_empty,
        )
        self.check_format(result, join(path, "log_format" if "log_format" in config else "format"))
        return result

    def stream_access_log(self, config: Node, path: str, kind: str) -> AccessLog:
        """envoy.access_loggers.stdout / stderr: the file logger's formats on fd 1 or 2."""
        self.only(config, path, ("log_format",))
        text, json_format, omit_empty = self.log_format(
            config.get("log_format", {}), join(path, "log_format")
        )
        log = AccessLog(
            path=_STREAM_ACCESS_LOGS[kind],
            text_format=text,
            json_format=json_format,
            omit_empty_values=omit_empty,
        )
        self.check_format(log, join(path, "log_format"))
        return log

    def check_format(self, log: AccessLog, path: str) -> None:
        try:
            compile_access_log(log)  # Envoy rejects a bad format at config load, and so do we
        except FormatError as exc:
            self.error(path, str(exc))

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
        fields = (
            "name", "virtual_hosts", *shaping.HEADER_FIELDS,
            "most_specific_header_mutations_wins", "max_direct_response_body_size_bytes",
        )  # fmt: skip
        self.only(node, path, fields)
        limit = node.get(
            "max_direct_response_body_size_bytes", shaping.DEFAULT_MAX_DIRECT_RESPONSE_BODY
        )
        vhosts_path = join(path, "virtual_hosts")
        vhosts = [
            self.virtual_host(x, item(vhosts_path, i), limit)
            for i, x in enumerate(node.get("virtual_hosts", []))
        ]
        return RouteConfiguration(
            name=node.get("name", ""),
            virtual_hosts=tuple(vhosts),
            **shaping.header_fields(self, node, path),
            **_pick(node, "most_specific_header_mutations_wins"),
            max_direct_response_body_size_bytes=limit,
        )

    def virtual_host(self, node: Node, path: str, body_limit: int) -> VirtualHost:
        fields = (
            "name", "domains", "routes", "typed_per_filter_config", "cors", "retry_policy",
            "include_request_attempt_count", "include_attempt_count_in_response",
        )  # fmt: skip
        self.only(node, path, (*fields, *shaping.HEADER_FIELDS))
        retry: dict[str, Any] = _pick(
            node, "include_request_attempt_count", "include_attempt_count_in_response"
        )
        if "retry_policy" in node:
            retry_path = join(path, "retry_policy")
            retry["retry_policy"] = governance.retry_policy(self, node["retry_policy"], retry_path)
        routes_path = join(path, "routes")
        routes = [
            self.route(x, item(routes_path, i), body_limit)
            for i, x in enumerate(node.get("routes", []))
        ]
        return VirtualHost(
            name=node.get("name", ""),
            domains=tuple(node.get("domains", ())),
            routes=tuple(x for x in routes if x is not None),
            typed_per_filter_config=self.per_filter_config(node, path),
            **shaping.header_fields(self, node, path),
            **retry,
        )

    def per_filter_config(self, node: Node, path: str) -> tuple[HttpFilter, ...]:
        """typed_per_filter_config of a virtual host or route; a virtual host's legacy ``cors``
        is the cors filter's entry unless typed_per_filter_config has one."""
        entries = http_filter_types.parse_per_route(
            self, node.get("typed_per_filter_config", {}), join(path, "typed_per_filter_config")
        )
        out = [HttpFilter(name=name, config=config) for name, config in entries]
        if "cors" in node:
            self.deprecated(join(path, "cors"), "typed_per_filter_config with a CorsPolicy")
            policy = http_filter_types.parse_cors_policy(self, node["cors"], join(path, "cors"))
            if not any(isinstance(x.config, filter_schema.CorsPolicy) for x in out):
                # every cors filter of the chain reads it, whatever its name
                out.append(HttpFilter(name=filter_schema.CORS_LEGACY_KEY, config=policy))
        return tuple(out)

    def route(self, node: Node, path: str, body_limit: int) -> Route | None:
        fields = (
            "name", "match", "route", "direct_response", "typed_per_filter_config",
            *shaping.HEADER_FIELDS,
        )  # fmt: skip
        self.only(node, path, fields)
        match = self.route_match(node.get("match", {}), join(path, "match"))
        headers = shaping.header_fields(self, node, path)
        headers["typed_per_filter_config"] = self.per_filter_config(node, path)
        if "direct_response" in node:
            direct = shaping.direct_response(
                self, node["direct_response"], join(path, "direct_response"), body_limit
            )
            return Route(match=match, direct_response=direct, **headers, **_pick(node, "name"))
        if "route" not in node:
            return None  # another action: refused above, or missing: reported by validate
        action = self.route_action(node["route"], join(path, "route"))
        if action is None:
            return None
        return Route(match=match, route=action, **headers, **_pick(node, "name"))

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
        fields = (
            "cluster", "timeout", "prefix_rewrite", "upgrade_configs", "idle_timeout",
            "retry_policy", "request_mirror_policies", *shaping.ROUTE_ACTION_FIELDS,
        )  # fmt: skip
        self.only(node, path, fields)
        if "cluster" not in node:
            return None  # another cluster_specifier: refused above
        self.route_clusters.append((join(path, "cluster"), node["cluster"]))
        kw = _pick(node, "cluster", "timeout", "prefix_rewrite", "idle_timeout")
        kw.update(shaping.host_rewrite(self, node, path))
        if "request_mirror_policies" in node:
            kw["request_mirror_policies"] = mirror.mirror_policies(
                self,
                node["request_mirror_policies"],
                join(path, "request_mirror_policies"),
                self.route_clusters,
            )
        if "retry_policy" in node:
            retry_path = join(path, "retry_policy")
            kw["retry_policy"] = governance.retry_policy(self, node["retry_policy"], retry_path)
        return RouteAction(upgrade_configs=self.upgrades(node, path), **kw)

    # --- clusters --------------------------------------------------------------------------------

    def cluster(self, node: Node, path: str) -> Cluster:
        fields = (
            "name", "type", "connect_timeout", "per_connection_buffer_limit_bytes", *lb.LB_FIELDS,
            "load_assignment", "typed_extension_protocol_options", "max_requests_per_connection",
            "transport_socket", "circuit_breakers", "health_checks", *_DNS_FIELDS,
            # true (what udsproxy does: a host that leaves DNS goes, checked or not); the
            # canonical tree has it only when true
            "ignore_health_on_host_removal",
        )  # fmt: skip
        self.only(node, path, fields)
        self.check_value(node, "type", path, _CLUSTER_TYPES)
        name: str = node.get("name", "")
        written = node.get("type", "STATIC")
        cluster_type = written if written in _CLUSTER_TYPES else "STATIC"
        # the endpoints are checked against the type as written: a refused type is not STATIC
        health_check = None
        if "health_checks" in node:
            checks_path = join(path, "health_checks")
            health_check = health.health_checks(self, node["health_checks"], checks_path)
        endpoints = self.load_assignment(
            node.get("load_assignment"),
            join(path, "load_assignment"),
            name,
            written,
            checked="health_checks" in node,
        )
        kw = _pick(node, "connect_timeout", "per_connection_buffer_limit_bytes")
        kw.update(self.dns_options(node, path, cluster_type, endpoints))
        kw.update(lb.lb_options(self, node, path))
        if "outlier_detection" in node:
            outlier_path = join(path, "outlier_detection")
            outlier = lb.outlier_detection(self, node["outlier_detection"], outlier_path)
            kw["outlier_detection"] = outlier
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
        if "transport_socket" in node:
            kw["tls"] = self.upstream_tls(node["transport_socket"], join(path, "transport_socket"))
        if "circuit_breakers" in node:
            kw["circuit_breakers"] = governance.circuit_breakers(
                self, node["circuit_breakers"], join(path, "circuit_breakers")
            )
        if health_check is not None:
            kw["health_check"] = health_check
        return Cluster(name=name, endpoints=endpoints, **kw)

    def dns_options(
        self, node: Node, path: str, cluster_type: str, endpoints: Sequence[Endpoint]
    ) -> dict[str, Any]:
        """type and the dns_* fields (udsproxy.dns). On a STATIC cluster Envoy ignores the
        dns_* fields; so does udsproxy."""
        kw: dict[str, Any] = _pick(node, "dns_lookup_family", "respect_dns_ttl")
        kw["type"] = cluster_type
        if cluster_type == "LOGICAL_DNS" and len(endpoints) > 1:
            self.error(
                join(path, "load_assignment"),
                "LOGICAL_DNS clusters must have a single locality_lb_endpoint and a single"
                " lb_endpoint (Envoy's rule)",
            )
        if "dns_refresh_rate" in node:
            rate: float = node["dns_refresh_rate"]
            if rate < 0.001:
                self.error(join(path, "dns_refresh_rate"), "must be at least 1ms (Envoy's rule)")
            kw["dns_refresh_rate"] = rate
        failure = node.get("dns_failure_refresh_rate")
        if failure is not None:
            failure_path = join(path, "dns_failure_refresh_rate")
            self.only(failure, failure_path, ("base_interval", "max_interval"))
            base: float = failure.get("base_interval", 0.0)
            top: float = failure.get("max_interval", base * 10)
            if base < 0.001:
                self.error(join(failure_path, "base_interval"), "is required, at least 1ms")
            elif top < base:
                self.error(
                    join(failure_path, "max_interval"),
                    f"{top:g}s is below base_interval {base:g}s; it must be greater or equal",
                )
            kw["dns_failure_refresh_rate"] = (base, top)
        return kw

    def load_assignment(
        self,
        node: Node | None,
        path: str,
        cluster: str,
        cluster_type: str = "STATIC",
        *,
        checked: bool = False,
    ) -> tuple[Endpoint, ...]:
        """Endpoints of every locality, flattened. STATIC clusters want IP addresses, the DNS
        types names; the endpoints of a refused type are not checked (its refusal says it).
        ``checked``: the cluster has health checks (its endpoints' health_check_config acts)."""
        out: list[Endpoint] = []
        node = node or {}
        self.only(node, path, ("cluster_name", "endpoints"))
        for i, locality in enumerate(node.get("endpoints", [])):
            locality_path = item(join(path, "endpoints"), i)
            self.only(locality, locality_path, _LOCALITY_FIELDS)
            if "priority" in locality:  # only a non-zero one is present in the tree
                self.refuse(
                    join(locality_path, "priority"),
                    f"priority {locality['priority']}",
                    "only priority 0: udsproxy has no failover between priority levels",
                )
            where = self.locality(locality, locality_path)
            for j, lb_endpoint in enumerate(locality.get("lb_endpoints", [])):
                lb_path = item(join(locality_path, "lb_endpoints"), j)
                self.only(lb_endpoint, lb_path, ("endpoint", "load_balancing_weight", "metadata"))
                endpoint = lb_endpoint.get("endpoint", {})
                self.only(endpoint, join(lb_path, "endpoint"), _ENDPOINT_FIELDS)
                endpoint_health = health.endpoint_health(
                    self,
                    endpoint.get("health_check_config"),
                    join(lb_path, "endpoint.health_check_config"),
                    checked,
                )
                address_path = join(lb_path, "endpoint.address")
                if "address" not in endpoint:
                    if "endpoint" in lb_endpoint:
                        self.error(address_path, "is required")
                    continue
                address = self.address(
                    endpoint["address"], address_path, listener=False, cluster_type=cluster_type
                )
                weight = lb_endpoint.get("load_balancing_weight", 1)
                if weight < 1:
                    self.error(join(lb_path, "load_balancing_weight"), "must be at least 1")
                if address is not None:
                    out.append(
                        Endpoint(
                            address=address,
                            load_balancing_weight=max(weight, 1),
                            hostname=endpoint.get("hostname", ""),
                            metadata=_plain(lb_endpoint.get("metadata")),
                            **where,
                            **endpoint_health,
                        )
                    )
        if not out:
            self.error(path, f"cluster '{cluster}' has no endpoints")
        return tuple(out)

    def locality(self, node: Node, path: str) -> dict[str, Any]:
        """What an Endpoint keeps of its LocalityLbEndpoints (for /config_dump)."""
        out: dict[str, Any] = {}
        if "locality" in node:
            self.only(node["locality"], join(path, "locality"), ("region", "zone", "sub_zone"))
            out["locality"] = Locality(**_pick(node["locality"], "region", "zone", "sub_zone"))
        if "load_balancing_weight" in node:
            weight: int = node["load_balancing_weight"]
            if weight < 1:
                self.error(join(path, "load_balancing_weight"), "must be at least 1")
            out["locality_load_balancing_weight"] = weight
        if "metadata" in node:
            out["locality_metadata"] = _plain(node["metadata"])
        return out

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


def flatten(tree: object, prefix: str = "") -> Iterator[tuple[str, str]]:
    """A runtime static layer as dotted keys and string values, as Envoy flattens it."""
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(tree, bool):
        yield prefix, "true" if tree else "false"
    elif isinstance(tree, float) and tree.is_integer():
        yield prefix, str(int(tree))
    elif tree is not None:
        yield prefix, str(tree)


_CLUSTER_TYPES = ("STATIC", "STRICT_DNS", "LOGICAL_DNS")
_DNS_TYPES = ("STRICT_DNS", "LOGICAL_DNS")
_LOCALITY_FIELDS = ("lb_endpoints", "locality", "load_balancing_weight", "metadata", "priority")
_ENDPOINT_FIELDS = ("address", "hostname", "health_check_config")
_DNS_FIELDS = (
    "dns_lookup_family", "dns_refresh_rate", "respect_dns_ttl", "dns_failure_refresh_rate",
)  # fmt: skip


def _plain(node: object) -> Any:
    """A canonical subtree as plain dicts and lists (metadata kept for /config_dump)."""
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    return node


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


class Converted(NamedTuple):
    """The resources of one CDS or LDS file."""

    clusters: tuple[Cluster, ...]
    listeners: tuple[Listener, ...]
    warnings: tuple[str, ...]


def convert_resources(
    kind: Literal["cds", "lds"], resources: Sequence[tuple[str, Mapping[str, Any]]]
) -> Converted:
    """Convert validated Cluster (cds) or Listener (lds) trees, each given with its YAML path.

    Names (and listener addresses) must be unique among them. Route clusters are not checked
    here: they may be in another file or in the bootstrap (``dynamic.resolve`` checks them).
    """
    converter = _Converter()
    clusters: list[tuple[str, Cluster]] = []
    listeners: list[tuple[str, Listener | None]] = []
    for path, node in resources:
        if kind == "cds":
            clusters.append((path, converter.cluster(node, path)))
        else:
            listeners.append((path, converter.listener(node, path)))
    converter.unique([(path, x.name) for path, x in clusters], "cluster")
    converter.check_listeners(listeners)
    if converter.errors:
        raise ConfigError(converter.errors)
    return Converted(
        clusters=tuple(x for _, x in clusters),
        listeners=tuple(x for _, x in listeners if x is not None),
        warnings=tuple(converter.warnings),
    )


def hcm_path(path: str) -> str:
    """The http_connection_manager of a converted listener at ``path`` (its first chain's)."""
    return join(path, "filter_chains[0].filters[0].typed_config")


def route_cluster_refs(listener: Listener, path: str) -> Iterator[tuple[str, str]]:
    """(YAML path, cluster name) of every route of a converted listener found at ``path``: the
    same paths the conversion reports, since a converted listener dropped no route."""
    vhosts_path = join(hcm_path(path), "route_config.virtual_hosts")
    for i, vhost in enumerate(listener.http_connection_manager.route_config.virtual_hosts):
        for j, route in enumerate(vhost.routes):
            if route.route is not None:  # a direct_response names no cluster
                route_path = item(join(item(vhosts_path, i), "routes"), j)
                yield join(route_path, "route.cluster"), route.route.cluster
                mirrors_path = join(route_path, "route.request_mirror_policies")
                for k, policy in enumerate(route.route.request_mirror_policies):
                    yield join(item(mirrors_path, k), "cluster"), policy.cluster


def certificate_paths(listener: Listener, path: str) -> Iterator[tuple[str, TlsCertificate]]:
    """(YAML path of its tls_certificates[0], certificate) for each TLS filter chain of a
    converted listener at ``path``; certificate i belongs to filter chain i."""
    for i, certificate in enumerate(listener.tls.certificates if listener.tls else ()):
        chain_path = item(join(path, "filter_chains"), i)
        common_path = join(chain_path, "transport_socket.typed_config.common_tls_context")
        yield item(join(common_path, "tls_certificates"), 0), certificate


def _fixed(address: Address) -> bool:
    """Not port 0: two port-0 sockets never share a port."""
    return not isinstance(address, SocketAddress) or address.port_value != 0
