"""HTTP filters (``http_filters`` of the connection manager), the data path: ``build_chain``
compiles a listener's filters once (used by ``context``) from the frozen configs
``config.convert_filters`` made (``config.filter_schema``). The router is not a filter here: it
is what the stream does after the chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from udsproxy.config import filter_schema as fs
from udsproxy.filters import (
    buffer,
    compressor,
    cors,
    csrf,
    decompressor,
    fault,
    local_ratelimit,
    rbac,
)
from udsproxy.filters.base import DEFAULT_RUNTIME, FilterChain, HttpFilter, Runtime

if TYPE_CHECKING:
    from udsproxy.config import schema
    from udsproxy.router.routes import RouteTable
    from udsproxy.stats.store import StatsStore

__all__ = ["build_chain"]


def build_chain(
    filters: Sequence[schema.HttpFilter],
    router: RouteTable,
    store: StatsStore,
    stat_prefix: str,
    runtime: Runtime = DEFAULT_RUNTIME,
    workers: int = 1,
) -> FilterChain | None:
    """Compile a connection manager's filters; None when it has none (then the stream skips
    every filter hook). ``workers``: the processes serving (local_ratelimit splits its bucket)."""
    if not filters:
        return None
    root = f"http.{stat_prefix}."
    built: list[HttpFilter] = []
    for f in filters:
        config = f.config
        if isinstance(config, fs.Cors):
            built.append(cors.CorsFilter(f.name, runtime, store.filter_stats(root + "cors.")))
        elif isinstance(config, fs.FaultConfig):
            stats = store.filter_stats(root + "fault.")
            built.append(fault.FaultFilter(f.name, config, runtime, stats))
        elif isinstance(config, fs.CompressorConfig):
            stats = store.filter_stats(root + config.stat_prefix)
            built.append(compressor.CompressorFilter(f.name, config, runtime, stats))
        elif isinstance(config, fs.DecompressorConfig):
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
        elif isinstance(config, fs.Rbac):
            built.append(rbac.RbacFilter(f.name, config, store.filter_stats(root + "rbac.")))
        elif isinstance(config, fs.CsrfPolicy):
            stats = store.filter_stats(root + "csrf.")
            built.append(csrf.CsrfFilter(f.name, config, runtime, stats))
        elif isinstance(config, fs.BufferConfig):
            built.append(buffer.BufferFilter(f.name, config, store.http_for(stat_prefix)))
        elif isinstance(config, fs.LocalRateLimit):
            # stats at the root, <stat_prefix>.http_local_rate_limit.*, as in Envoy
            built.append(
                local_ratelimit.LocalRateLimitFilter(f.name, config, runtime, store, workers)
            )
    encodings = frozenset(
        x.config.encoding for x in built if isinstance(x, compressor.CompressorFilter)
    )
    for x in built:
        if isinstance(x, compressor.CompressorFilter):
            x.chain_encodings = encodings
    chain = FilterChain(built)
    chain.compile_routes(router.routes())
    return chain
