"""HTTP filters (``http_filters`` of the connection manager) and their per-route configs.

``parse_http_filter``/``parse_per_route`` turn the validated tree into frozen configs (used by
``config.convert``); ``build_chain`` compiles a listener's filters once (used by ``context``).
The router is not a filter here: it is what the stream does after the chain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from udsproxy.filters import compressor, cors, csrf, decompressor, fault, rbac
from udsproxy.filters.base import DEFAULT_RUNTIME, FilterChain, HttpFilter, Node, Reporter, Runtime

if TYPE_CHECKING:
    from udsproxy.config import schema
    from udsproxy.router import Router
    from udsproxy.stats.store import StatsStore

__all__ = ["SUPPORTED", "build_chain", "parse_http_filter", "parse_per_route"]

# filter @type -> the name Envoy documents it under (for messages)
SUPPORTED = {
    cors.FILTER_TYPE: "envoy.filters.http.cors",
    fault.FILTER_TYPE: "envoy.filters.http.fault",
    compressor.FILTER_TYPE: "envoy.filters.http.compressor",
    decompressor.FILTER_TYPE: "envoy.filters.http.decompressor",
    rbac.FILTER_TYPE: "envoy.filters.http.rbac",
    csrf.FILTER_TYPE: "envoy.filters.http.csrf",
}
_NAMES = ", ".join(sorted({*SUPPORTED.values(), "envoy.filters.http.router"}))
_PER_ROUTE_NAMES = "CorsPolicy, HTTPFault, RBACPerRoute, CompressorPerRoute, CsrfPolicy"


def parse_http_filter(conv: Reporter, kind: str | None, config: Node, path: str) -> Any:
    """The config of one http filter (its typed_config at ``path``), or None if refused."""
    if kind == cors.FILTER_TYPE:
        conv.only(config, path, ())
        return cors.Cors()
    if kind == fault.FILTER_TYPE:
        return fault.parse_fault(conv, config, path)
    if kind == compressor.FILTER_TYPE:
        return compressor.parse_compressor(conv, config, path)
    if kind == decompressor.FILTER_TYPE:
        return decompressor.parse_decompressor(conv, config, path)
    if kind == rbac.FILTER_TYPE:
        return rbac.parse_rbac(conv, config, path)
    if kind == csrf.FILTER_TYPE:
        return csrf.parse_csrf(conv, config, path)
    return None


def refusal_note() -> str:
    return f"only {_NAMES}"


def parse_per_route(conv: Reporter, entries: Mapping[str, Node], path: str) -> tuple[Any, ...]:
    """typed_per_filter_config: ((filter name, config), ...)."""
    out: list[tuple[str, Any]] = []
    for name, node in entries.items():
        entry_path = f'{path}["{name}"]'
        kind = node.get("@type")
        parsed: Any = None
        if kind == cors.POLICY_TYPE:
            parsed = cors.parse_policy(conv, node, entry_path)
        elif kind == fault.FILTER_TYPE:
            parsed = fault.parse_fault(conv, node, entry_path)
        elif kind == rbac.PER_ROUTE_TYPE:
            parsed = rbac.parse_per_route(conv, node, entry_path)
        elif kind == compressor.PER_ROUTE_TYPE:
            parsed = compressor.parse_per_route(conv, node, entry_path)
        elif kind == csrf.FILTER_TYPE:
            parsed = csrf.parse_csrf(conv, node, entry_path)
        else:
            conv.refuse(entry_path, f"per-route config '{kind or ''}'", f"only {_PER_ROUTE_NAMES}")
            continue
        out.append((name, parsed))
    return tuple(out)


def build_chain(
    filters: Sequence[schema.HttpFilter],
    router: Router,
    store: StatsStore,
    stat_prefix: str,
    runtime: Runtime = DEFAULT_RUNTIME,
) -> FilterChain | None:
    """Compile a connection manager's filters; None when it has none (then the stream skips
    every filter hook)."""
    if not filters:
        return None
    root = f"http.{stat_prefix}."
    built: list[HttpFilter] = []
    for f in filters:
        config = f.config
        if isinstance(config, cors.Cors):
            built.append(cors.CorsFilter(f.name, runtime, store.filter_stats(root + "cors.")))
        elif isinstance(config, fault.FaultConfig):
            stats = store.filter_stats(root + "fault.")
            built.append(fault.FaultFilter(f.name, config, runtime, stats))
        elif isinstance(config, compressor.CompressorConfig):
            stats = store.filter_stats(root + config.stat_prefix)
            built.append(compressor.CompressorFilter(f.name, config, runtime, stats))
        elif isinstance(config, decompressor.DecompressorConfig):
            prefix = f"{root}decompressor.{config.library_name}.gzip."
            built.append(
                decompressor.DecompressorFilter(
                    f.name,
                    config,
                    runtime,
                    store.filter_stats(prefix + "request."),
                    store.filter_stats(prefix + "response."),
                )
            )
        elif isinstance(config, rbac.Rbac):
            built.append(rbac.RbacFilter(f.name, config, store.filter_stats(root + "rbac.")))
        elif isinstance(config, csrf.CsrfPolicy):
            stats = store.filter_stats(root + "csrf.")
            built.append(csrf.CsrfFilter(f.name, config, runtime, stats))
    encodings = frozenset(
        x.config.encoding for x in built if isinstance(x, compressor.CompressorFilter)
    )
    for x in built:
        if isinstance(x, compressor.CompressorFilter):
            x.chain_encodings = encodings
    chain = FilterChain(built)
    chain.compile_routes(router.routes())
    return chain
