"""File-based dynamic configuration (Envoy's path-based CDS/LDS) and the TLS files check. I/O.

A CDS or LDS file is shaped like a DiscoveryResponse::

    version_info: "7"
    resources:
    - "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster   # LDS: ...listener.v3.Listener
      name: hugo
      ...

Each resource is validated against Envoy's v3 API and converted like a static one. Every error
comes back at once, its YAML path prefixed with the file (``/etc/envoy/cds.yaml: resources[0].
connect_timeout``). The v2 form of the article (``envoy.api.v2.Cluster`` ...) is read as v3
(``v2``), with one warning per mapping.

``resolve`` merges the files into the bootstrap ``load_config`` returned and cross-checks the
result: names and listener addresses stay unique, static clusters and listeners cannot be
replaced from a file (Envoy's rule), every route names an existing cluster, and every
certificate chain loads with its private key, and every CA a cluster's TLS trusts.
DataSources (``config.datasource``) are read here: a missing file or an unset environment
variable is an error at the field that names it.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from udsproxy.config import datasource
from udsproxy.config.convert import (
    REFUSED,
    certificate_paths,
    convert_resources,
    hcm_path,
    route_cluster_refs,
)
from udsproxy.config.parse import parse_file
from udsproxy.config.schema import (
    Bootstrap,
    Cluster,
    DataSource,
    DynamicResources,
    Listener,
    PathConfigSource,
    TlsCertificate,
)
from udsproxy.config.v2 import CLUSTER, LISTENER, upgrade_resource
from udsproxy.config.validate import check, describe, item, join
from udsproxy.errors import ConfigError

__all__ = [
    "Resources", "cluster_tls_errors", "load_resources", "resolve", "resources_from_tree",
    "tls_errors",
]  # fmt: skip

Kind = Literal["cds", "lds"]

_URL = "type.googleapis.com/"
_DISCOVERY_RESPONSE = "envoy.service.discovery.v3.DiscoveryResponse"
_RESOURCE_TYPES: dict[Kind, str] = {"cds": CLUSTER, "lds": LISTENER}
# DiscoveryResponse fields that mean nothing in a file (gRPC bookkeeping): accepted.
_IGNORED = ("nonce", "control_plane")
_BOOTSTRAP_FIELDS = ("static_resources", "dynamic_resources", "node", "admin")


@dataclass(frozen=True, slots=True, kw_only=True)
class Resources:
    """The content of one CDS file (clusters) or LDS file (listeners)."""

    version_info: str = ""
    clusters: tuple[Cluster, ...] = ()
    listeners: tuple[Listener, ...] = ()
    # Each "<file>: <path>: <message>", e.g. a v2 form read as v3.
    warnings: tuple[str, ...] = dataclasses.field(default=(), compare=False)


def _at(source: str, path: str) -> str:
    """An error location inside file ``source``."""
    return f"{source}: {path}" if path else source


def _in_file(source: str, errors: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(_at(source, path), message) for path, message in errors]


def load_resources(path: str | os.PathLike[str], kind: Kind) -> Resources:
    """Read a CDS (``kind="cds"``) or LDS file; raise ConfigError listing every problem."""
    name = os.fspath(path)
    return resources_from_tree(parse_file(name, f"{kind.upper()} file"), kind, name)


def resources_from_tree(tree: object, kind: Kind, source: str = "<string>") -> Resources:
    """Validate and convert a parsed CDS/LDS file; ``source`` prefixes every path. Pure."""
    expected = _RESOURCE_TYPES[kind]
    if tree is None:
        message = "the file is empty (an update that removes every resource is 'resources: []')"
        raise ConfigError([(source, message)])
    if not isinstance(tree, Mapping):
        message = f"expected a mapping with 'resources' at the top level, got {describe(tree)}"
        raise ConfigError([(source, message)])
    bootstrap_fields = [key for key in tree if key in _BOOTSTRAP_FIELDS]
    if bootstrap_fields and "resources" not in tree:
        # The bootstrap itself; easy to pass by mistake.
        field = bootstrap_fields[0]
        message = f"unknown field '{field}': this is a bootstrap, not an xDS resource file"
        raise ConfigError([(_at(source, field), message)])
    top, errors = check({k: v for k, v in tree.items() if k != "resources"}, _DISCOVERY_RESPONSE)
    refused = [(key, REFUSED) for key in top if key not in ("version_info", "type_url", *_IGNORED)]
    type_url = top.get("type_url")
    if type_url is not None and type_url.rpartition("/")[2] != expected:
        refused.append(("type_url", f"expected '{_URL}{expected}' in a {kind.upper()} file"))
    warnings: list[str] = []
    resources: list[tuple[str, dict[str, Any]]] = []
    raw = tree.get("resources")
    raw = [] if raw is None else [raw] if isinstance(raw, Mapping) else raw
    if not isinstance(raw, list):
        errors.append(("resources", f"expected a list, got {describe(raw)}"))
        raw = []
    for i, resource in enumerate(raw):
        path = item("resources", i)
        if not isinstance(resource, Mapping):
            errors.append((path, f"expected a mapping with '@type', got {describe(resource)}"))
            continue
        upgraded, found = upgrade_resource(resource, kind, path)
        warnings += found
        type_url = upgraded.pop("@type", None)
        if type_url is None:
            errors.append((path, f"missing '@type' (expected '{_URL}{expected}')"))
            continue
        if not isinstance(type_url, str) or type_url.rpartition("/")[2] != expected:
            shown = f"'{type_url}'" if isinstance(type_url, str) else describe(type_url)
            message = f"expected '{_URL}{expected}' in a {kind.upper()} file, got {shown}"
            errors.append((join(path, "@type"), message))
            continue
        canonical, found_errors = check(upgraded, expected, path)
        errors += found_errors
        resources.append((path, canonical))
    try:
        converted = convert_resources(kind, resources)
    except ConfigError as exc:
        refused += [e for e in exc.errors if not errors or REFUSED in e[1]]
        raise ConfigError(_in_file(source, errors + refused)) from None
    if errors or refused:
        raise ConfigError(_in_file(source, errors + refused))
    return Resources(
        version_info=top.get("version_info", ""),
        clusters=converted.clusters,
        listeners=converted.listeners,
        warnings=tuple(_at(source, w) for w in (*warnings, *converted.warnings)),
    )


def _load(source: PathConfigSource, kind: Kind, errors: list[tuple[str, str]]) -> Resources:
    """Read a file the bootstrap names; add its errors to ``errors`` (then the result is empty)."""
    where = f"dynamic_resources.{kind}_config"
    missing: list[tuple[str, str]] = []
    if not os.path.exists(source.path):
        message = "the path to the source must exist at config load time"
        missing.append((where, f"'{source.path}' does not exist ({message})"))
    if source.watched_directory is not None and not os.path.isdir(source.watched_directory):
        message = f"watched_directory '{source.watched_directory}' is not a directory"
        missing.append((where, message))
    errors += missing
    if missing:
        return Resources()
    try:
        return load_resources(source.path, kind)
    except ConfigError as exc:
        errors += exc.errors
        return Resources()


def resolve(
    bootstrap: Bootstrap, *, cds: Resources | None = None, lds: Resources | None = None
) -> Bootstrap:
    """Merge the bootstrap's CDS/LDS files into it, and check the result (see the module doc).

    ``bootstrap`` is what ``load_config`` returned, or an earlier result of ``resolve``: then
    its static part (``Bootstrap.static``) is resolved again, so a file that changed is simply
    resolved anew. ``cds``/``lds`` are used instead of reading that file when given (an update
    already read and counted on its own). The result has clusters = static + CDS, listeners =
    static + LDS, the files' version_info, every warning, and ``static``. Raises ConfigError with
    every problem: the files' own first; the cross-checks only when both files are valid.
    """
    bootstrap = bootstrap.static or bootstrap
    dynamic = bootstrap.dynamic_resources or DynamicResources()
    errors: list[tuple[str, str]] = []
    if dynamic.cds is not None and cds is None:
        cds = _load(dynamic.cds, "cds", errors)
    if dynamic.lds is not None and lds is None:
        lds = _load(dynamic.lds, "lds", errors)
    if errors:
        raise ConfigError(errors)
    cds_file = dynamic.cds.path if dynamic.cds else "<cds>"
    lds_file = dynamic.lds.path if dynamic.lds else "<lds>"
    cds, lds = cds or Resources(), lds or Resources()

    static_clusters = {cluster.name for cluster in bootstrap.clusters}
    for i, cluster in enumerate(cds.clusters):
        if cluster.name in static_clusters:
            message = f"cluster '{cluster.name}' is a static cluster: CDS cannot replace it"
            errors.append((_at(cds_file, join(item("resources", i), "name")), message))
    static_listeners = {listener.name for listener in bootstrap.listeners}
    addresses = {listener.address: listener.name for listener in bootstrap.listeners}
    for i, listener in enumerate(lds.listeners):
        path = item("resources", i)
        if listener.name in static_listeners:
            message = f"listener '{listener.name}' is a static listener: LDS cannot replace it"
            errors.append((_at(lds_file, join(path, "name")), message))
        elif listener.address in addresses:
            message = f"{listener.address} is already the address of listener"
            owner = addresses[listener.address]
            errors.append((_at(lds_file, join(path, "address")), f"{message} '{owner}'"))

    listeners = [
        (item("static_resources.listeners", i), listener)
        for i, listener in enumerate(bootstrap.listeners)
    ] + [(_at(lds_file, item("resources", i)), x) for i, x in enumerate(lds.listeners)]
    cluster_names = static_clusters | {cluster.name for cluster in cds.clusters}
    for path, listener in listeners:
        for ref_path, name in route_cluster_refs(listener, path):
            if name not in cluster_names:
                errors.append((ref_path, f"unknown cluster '{name}'"))
    for path, listener in listeners:
        errors += tls_errors(listener, path)
    # Response bodies in files or variables are read here, once, into the config: the data
    # path builds routes without I/O, a too-large file is a config error (not a crash at
    # start), and a reload sees a changed file as a changed config.
    static_listeners_read = tuple(
        _read_bodies(x, item("static_resources.listeners", i), errors)
        for i, x in enumerate(bootstrap.listeners)
    )
    lds_listeners_read = tuple(
        _read_bodies(x, _at(lds_file, item("resources", i)), errors)
        for i, x in enumerate(lds.listeners)
    )
    clusters = [
        (item("static_resources.clusters", i), cluster)
        for i, cluster in enumerate(bootstrap.clusters)
    ] + [(_at(cds_file, item("resources", i)), x) for i, x in enumerate(cds.clusters)]
    for path, cluster in clusters:
        errors += cluster_tls_errors(cluster, path)
    if errors:
        raise ConfigError(errors)
    return dataclasses.replace(
        bootstrap,
        clusters=bootstrap.clusters + cds.clusters,
        listeners=static_listeners_read + lds_listeners_read,
        cds_version=cds.version_info,
        lds_version=lds.version_info,
        warnings=bootstrap.warnings + cds.warnings + lds.warnings,
        static=bootstrap,
    )


# --- response bodies ----------------------------------------------------------------------------


def _inline(source: DataSource, path: str, limit: int, errors: list[tuple[str, str]]) -> DataSource:
    """``source`` read into an inline_bytes DataSource (kept as is if it is inline already)."""
    if source.kind in ("inline_string", "inline_bytes"):
        return source
    try:
        data = datasource.read(source)
    except datasource.DataSourceError as exc:
        errors.append((path, str(exc)))
        return source
    if len(data) > limit:
        errors.append((path, f"response body size is {len(data)} bytes; maximum is {limit}"))
    return DataSource(kind="inline_bytes", value=base64.b64encode(data).decode())


def _read_bodies(listener: Listener, path: str, errors: list[tuple[str, str]]) -> Listener:
    """The listener with its direct_response and local_reply_config bodies read."""
    hcm = listener.http_connection_manager
    hcm_at = hcm_path(path)
    config = hcm.route_config
    limit = config.max_direct_response_body_size_bytes
    vhosts = []
    for i, vhost in enumerate(config.virtual_hosts):
        routes = []
        for j, route in enumerate(vhost.routes):
            direct = route.direct_response
            if direct is not None and direct.body is not None:
                route_path = f"{hcm_at}.route_config.virtual_hosts[{i}].routes[{j}]"
                body = _inline(direct.body, f"{route_path}.direct_response.body", limit, errors)
                direct = dataclasses.replace(direct, body=body)
                route = dataclasses.replace(route, direct_response=direct)
            routes.append(route)
        vhosts.append(dataclasses.replace(vhost, routes=tuple(routes)))
    replies = hcm.local_reply_config
    if replies is not None:
        mappers = []
        for k, mapper in enumerate(replies.mappers):
            if mapper.body is not None:
                mapper_path = f"{hcm_at}.local_reply_config.mappers[{k}].body"
                body = _inline(mapper.body, mapper_path, datasource.MAX_BYTES, errors)
                mapper = dataclasses.replace(mapper, body=body)
            mappers.append(mapper)
        replies = dataclasses.replace(replies, mappers=tuple(mappers))
    route_config = dataclasses.replace(config, virtual_hosts=tuple(vhosts))
    hcm = dataclasses.replace(hcm, route_config=route_config, local_reply_config=replies)
    return dataclasses.replace(listener, http_connection_manager=hcm)


# --- TLS files ----------------------------------------------------------------------------------


def tls_errors(listener: Listener, path: str = "") -> list[tuple[str, str]]:
    """Check that each certificate chain of a listener loads with its private key.

    ``path`` is where the listener is in its YAML (``static_resources.listeners[0]``, or
    ``<file>: resources[0]``), so each error names the filter chain's certificate.
    """
    errors: list[tuple[str, str]] = []
    for certificate_path, certificate in certificate_paths(listener, path):
        errors += _certificate_errors(certificate, certificate_path)
    return errors


def cluster_tls_errors(cluster: Cluster, path: str = "") -> list[tuple[str, str]]:
    """Check a cluster's UpstreamTlsContext: its trusted_ca and its client certificate load."""
    tls = cluster.tls
    if tls is None:
        return []
    common_path = join(path, "transport_socket.typed_config.common_tls_context")
    errors: list[tuple[str, str]] = []
    if tls.certificate is not None:
        certificate_path = item(join(common_path, "tls_certificates"), 0)
        errors += _certificate_errors(tls.certificate, certificate_path)
    if tls.trusted_ca is not None:
        ca_path = join(common_path, "validation_context.trusted_ca")
        errors += _ca_errors(tls.trusted_ca, join(ca_path, tls.trusted_ca.kind))
    return errors


def _no_password() -> bytes:
    # Without a callback, OpenSSL would prompt on the terminal for an encrypted key's password.
    raise ValueError("encrypted")


def _read_pem(
    source: DataSource, path: str, marker: bytes, what: str, errors: list[tuple[str, str]]
) -> bytes | None:
    try:
        data = datasource.read(source)
    except datasource.DataSourceError as exc:
        errors.append((path, str(exc)))
        return None
    if marker not in data:
        errors.append((path, f"{source} does not hold {what}"))
        return None
    return data


def _ca_errors(source: DataSource, path: str) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    data = _read_pem(source, path, b"-----BEGIN CERTIFICATE-----", "a PEM certificate", errors)
    if data is None:
        return errors
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        with datasource.as_file(source, data) as name:
            context.load_verify_locations(cafile=name)
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return [(path, f"{source} does not load as CA certificates: {reason}")]
    return []


def _certificate_errors(certificate: TlsCertificate, path: str) -> list[tuple[str, str]]:
    chain, key = certificate.certificate_chain, certificate.private_key
    chain_path = join(path, f"certificate_chain.{chain.kind}")
    key_path = join(path, f"private_key.{key.kind}")
    errors: list[tuple[str, str]] = []
    chain_data = _read_pem(
        chain, chain_path, b"-----BEGIN CERTIFICATE-----", "a PEM certificate", errors
    )
    key_data = _read_pem(key, key_path, b"PRIVATE KEY-----", "a PEM private key", errors)
    if key_data is not None and b"ENCRYPTED" in key_data:
        errors.append((key_path, f"{key} is encrypted: encrypted private keys {REFUSED}"))
    if errors or chain_data is None or key_data is None:
        return errors
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        with (
            datasource.as_file(chain, chain_data) as chain_name,
            datasource.as_file(key, key_data) as key_name,
        ):
            context.load_cert_chain(chain_name, key_name, password=_no_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            return [(key_path, f"{key} is not the private key of {chain}")]
        return [(path, f"{chain} and {key} do not load: {exc.reason or exc}")]
    except (OSError, ValueError) as exc:
        return [(path, f"{chain} and {key} do not load: {exc}")]
    return []
