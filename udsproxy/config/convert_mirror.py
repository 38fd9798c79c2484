"""Conversion of a route's ``request_mirror_policies`` (part of ``convert``). Same rules: Envoy's
defaults, and what udsproxy does not do is refused by name. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from udsproxy.config.convert_filters import parse_fraction
from udsproxy.config.convert_matchers import Reporter
from udsproxy.config.schema import RequestMirrorPolicy
from udsproxy.config.validate import item, join

__all__ = ["MIRROR_FIELDS", "mirror_policies"]

Node = Mapping[str, Any]

# trace_sampled is accepted and has no effect: udsproxy has no tracing (no span to sample).
MIRROR_FIELDS = (
    "cluster",
    "runtime_fraction",
    "disable_shadow_host_suffix_append",
    "host_rewrite_literal",
    "trace_sampled",
)


def mirror_policies(
    c: Reporter, nodes: Sequence[Node], path: str, clusters: list[tuple[str, str]]
) -> tuple[RequestMirrorPolicy, ...]:
    """Each policy; its cluster goes to ``clusters`` (path, name) to be checked like a route's.
    cluster_header and request_headers_mutations are refused by ``only``."""
    out: list[RequestMirrorPolicy] = []
    for i, node in enumerate(nodes):
        policy_path = item(path, i)
        c.only(node, policy_path, MIRROR_FIELDS)
        cluster = node.get("cluster", "")
        if not cluster:
            if "cluster_header" not in node:  # refused above if present
                c.error(join(policy_path, "cluster"), "is required (cluster_header is not)")
            continue
        clusters.append((join(policy_path, "cluster"), cluster))
        fraction = parse_fraction(
            c,
            node.get("runtime_fraction"),
            join(policy_path, "runtime_fraction"),
            100,  # Envoy: no runtime_fraction means every request
            runtime=True,
        )
        literal = node.get("host_rewrite_literal")
        if literal is not None and any(ch in literal for ch in "\r\n\0"):
            c.error(join(policy_path, "host_rewrite_literal"), "must be a header value")
        out.append(
            RequestMirrorPolicy(
                cluster=cluster,
                numerator=fraction.numerator,
                denominator=fraction.denominator,
                runtime_key=fraction.runtime_key,
                disable_shadow_host_suffix_append=bool(
                    node.get("disable_shadow_host_suffix_append", False)
                ),
                host_rewrite_literal=literal or None,
            )
        )
    return tuple(out)
