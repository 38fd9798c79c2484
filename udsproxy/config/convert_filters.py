"""Conversion of the http filters' configs (``http_filters[*].typed_config`` and
``typed_per_filter_config`` entries) into ``config.filter_schema``: part of ``convert``, with its
rules (refuse what is not implemented, by name). Pure; ``udsproxy.filters`` runs what this makes.
"""

from __future__ import annotations

import importlib.util
import ipaddress
from collections.abc import Mapping
from typing import Any

from udsproxy.config import convert_shaping
from udsproxy.config.convert_matchers import Reporter, header_matcher, string_matcher
from udsproxy.config.filter_schema import (
    BROTLI_COMPRESSOR_TYPE,
    BUFFER_PER_ROUTE_TYPE,
    BUFFER_TYPE,
    COMPRESSOR_PER_ROUTE_TYPE,
    COMPRESSOR_TYPE,
    CORS_POLICY_TYPE,
    CORS_TYPE,
    CSRF_TYPE,
    DECOMPRESSOR_TYPE,
    FAULT_TYPE,
    GZIP_COMPRESSOR_TYPE,
    GZIP_DECOMPRESSOR_TYPE,
    GZIP_LEVELS,
    GZIP_STRATEGIES,
    HEADER_INPUT_TYPE,
    LOCAL_RATELIMIT_TYPE,
    RBAC_ACTION_TYPE,
    RBAC_PER_ROUTE_TYPE,
    RBAC_TYPE,
    BrotliConfig,
    BufferConfig,
    BufferPerRoute,
    CompressorConfig,
    Cors,
    CorsPolicy,
    CsrfPolicy,
    DecompressorConfig,
    Direction,
    FaultConfig,
    Fraction,
    GzipConfig,
    GzipDecompressorConfig,
    LocalRateLimit,
    MatcherCase,
    MatcherRules,
    Policy,
    Rbac,
    Rule,
    Rules,
)
from udsproxy.config.schema import HeaderMatcher

__all__ = ["SUPPORTED", "parse_http_filter", "parse_per_route", "refusal_note"]

Node = Mapping[str, Any]
_STRING_KINDS = ("exact", "prefix", "suffix", "contains", "safe_regex")


SUPPORTED = {
    CORS_TYPE: "envoy.filters.http.cors",
    FAULT_TYPE: "envoy.filters.http.fault",
    COMPRESSOR_TYPE: "envoy.filters.http.compressor",
    DECOMPRESSOR_TYPE: "envoy.filters.http.decompressor",
    RBAC_TYPE: "envoy.filters.http.rbac",
    CSRF_TYPE: "envoy.filters.http.csrf",
    LOCAL_RATELIMIT_TYPE: "envoy.filters.http.local_ratelimit",
    BUFFER_TYPE: "envoy.filters.http.buffer",
}


_NAMES = ", ".join(sorted({*SUPPORTED.values(), "envoy.filters.http.router"}))


_PER_ROUTE_NAMES = (
    "CorsPolicy, HTTPFault, RBACPerRoute, CompressorPerRoute, CsrfPolicy, LocalRateLimit,"
    " BufferPerRoute"
)


def parse_http_filter(conv: Reporter, kind: str | None, config: Node, path: str) -> Any:
    """The config of one http filter (its typed_config at ``path``), or None if refused."""
    if kind == CORS_TYPE:
        conv.only(config, path, ())
        return Cors()
    if kind == FAULT_TYPE:
        return parse_fault(conv, config, path)
    if kind == COMPRESSOR_TYPE:
        return parse_compressor(conv, config, path)
    if kind == DECOMPRESSOR_TYPE:
        return parse_decompressor(conv, config, path)
    if kind == RBAC_TYPE:
        return parse_rbac(conv, config, path)
    if kind == CSRF_TYPE:
        return parse_csrf(conv, config, path)
    if kind == LOCAL_RATELIMIT_TYPE:
        return parse_local_ratelimit(conv, config, path)
    if kind == BUFFER_TYPE:
        return parse_buffer(conv, config, path)
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
        if kind == CORS_POLICY_TYPE:
            parsed = parse_cors_policy(conv, node, entry_path)
        elif kind == FAULT_TYPE:
            parsed = parse_fault(conv, node, entry_path)
        elif kind == RBAC_PER_ROUTE_TYPE:
            parsed = parse_rbac_per_route(conv, node, entry_path)
        elif kind == COMPRESSOR_PER_ROUTE_TYPE:
            parsed = parse_compressor_per_route(conv, node, entry_path)
        elif kind == CSRF_TYPE:
            parsed = parse_csrf(conv, node, entry_path)
        elif kind == LOCAL_RATELIMIT_TYPE:
            parsed = parse_local_ratelimit(conv, node, entry_path, per_route=True)
        elif kind == BUFFER_PER_ROUTE_TYPE:
            parsed = parse_buffer_per_route(conv, node, entry_path)
        else:
            conv.refuse(entry_path, f"per-route config '{kind or ''}'", f"only {_PER_ROUTE_NAMES}")
            continue
        out.append((name, parsed))
    return tuple(out)


_DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}


def parse_fraction(
    conv: Reporter, node: Node | None, path: str, default: int, *, runtime: bool = False
) -> Fraction:
    """FractionalPercent (``runtime=False``) or RuntimeFractionalPercent; absent: ``default``%."""
    if node is None:
        return Fraction(numerator=default)
    key = ""
    if runtime:
        conv.only(node, path, ("default_value", "runtime_key"))
        key = node.get("runtime_key", "")
        if "default_value" not in node:
            return Fraction(numerator=default, runtime_key=key)
        path = f"{path}.default_value"
        node = node["default_value"]
    conv.only(node, path, ("numerator", "denominator"))
    denominator = _DENOMINATORS.get(node.get("denominator", "HUNDRED"), 100)
    numerator = int(node.get("numerator", 0))
    return Fraction(numerator=min(numerator, denominator), denominator=denominator, runtime_key=key)


def parse_cors_policy(conv: Reporter, node: Node, path: str) -> CorsPolicy:
    """A CorsPolicy (the filter's per-route message, or the legacy route.v3 one: same fields)."""
    fields = (
        "allow_origin_string_match", "allow_methods", "allow_headers", "expose_headers",
        "max_age", "allow_credentials", "filter_enabled", "shadow_enabled",
        "allow_private_network_access", "forward_not_matching_preflights",
    )  # fmt: skip
    conv.only(node, path, fields)
    if node.get("forward_not_matching_preflights") is False:
        note = "a preflight from an origin that is not allowed always goes upstream"
        conv.refuse(f"{path}.forward_not_matching_preflights", "false", note)
    origins_path = f"{path}.allow_origin_string_match"
    origins = [
        string_matcher(conv, x, f"{origins_path}[{i}]")
        for i, x in enumerate(node.get("allow_origin_string_match", ()))
    ]
    enabled = node.get("filter_enabled")
    shadow = node.get("shadow_enabled")
    return CorsPolicy(
        allow_origin_string_match=tuple(x for x in origins if x is not None),
        allow_methods=node.get("allow_methods", ""),
        allow_headers=node.get("allow_headers", ""),
        expose_headers=node.get("expose_headers", ""),
        max_age=node.get("max_age", ""),
        allow_credentials=node.get("allow_credentials"),
        filter_enabled=None
        if enabled is None
        else parse_fraction(conv, enabled, f"{path}.filter_enabled", 100, runtime=True),
        shadow_enabled=None
        if shadow is None
        else parse_fraction(conv, shadow, f"{path}.shadow_enabled", 0, runtime=True),
        allow_private_network_access=node.get("allow_private_network_access"),
    )


def parse_fault(conv: Reporter, node: Node, path: str) -> FaultConfig:
    fields = ("delay", "abort", "upstream_cluster", "headers", "max_active_faults")
    conv.only(node, path, fields)
    kw: dict[str, Any] = {}
    if "delay" in node:
        delay, delay_path = node["delay"], f"{path}.delay"
        conv.only(delay, delay_path, ("fixed_delay", "header_delay", "percentage"))
        if "fixed_delay" in delay:
            kw["delay_ms"] = round(delay["fixed_delay"] * 1000)
        elif "header_delay" in delay:
            kw["header_delay"] = True
        else:
            conv.error(delay_path, "one of fixed_delay or header_delay is required")
        kw["delay_percentage"] = parse_fraction(
            conv, delay.get("percentage"), f"{delay_path}.percentage", 0
        )
    if "abort" in node:
        abort, abort_path = node["abort"], f"{path}.abort"
        conv.only(abort, abort_path, ("http_status", "header_abort", "percentage"))
        if "http_status" in abort:
            status = abort["http_status"]
            if not 200 <= status < 600:
                conv.error(f"{abort_path}.http_status", f"{status} is not in [200, 600)")
            kw["abort_status"] = status
        elif "header_abort" in abort:
            kw["header_abort"] = True
        else:
            conv.error(abort_path, "one of http_status or header_abort is required")
        kw["abort_percentage"] = parse_fraction(
            conv, abort.get("percentage"), f"{abort_path}.percentage", 0
        )
    headers_path = f"{path}.headers"
    headers = [
        header_matcher(conv, x, f"{headers_path}[{i}]")
        for i, x in enumerate(node.get("headers", ()))
    ]
    kw["headers"] = tuple(x for x in headers if x is not None)
    if "upstream_cluster" in node:
        kw["upstream_cluster"] = node["upstream_cluster"]
    if "max_active_faults" in node:
        kw["max_active_faults"] = node["max_active_faults"]
    return FaultConfig(**kw)


def parse_compressor(conv: Reporter, node: Node, path: str) -> CompressorConfig | None:
    fields = (
        "compressor_library", "response_direction_config", "request_direction_config",
        "content_length", "content_type", "disable_on_etag_header",
        "remove_accept_encoding_header",
    )  # fmt: skip
    conv.only(node, path, fields)
    kw: dict[str, Any] = {}
    # deprecated top-level spellings of the response settings
    if "content_length" in node:
        kw["min_content_length"] = node["content_length"]
    if "content_type" in node:
        kw["content_type"] = tuple(node["content_type"])
    for key in ("disable_on_etag_header", "remove_accept_encoding_header"):
        if key in node:
            kw[key] = node[key]
    request = node.get("request_direction_config")
    if request is not None:
        request_path = f"{path}.request_direction_config"
        enabled = request.get("common_config", {}).get("enabled", {})
        if set(request) - {"common_config"} or enabled.get("default_value", True):
            conv.refuse(request_path, note="request compression; only responses are compressed")
    response = node.get("response_direction_config")
    if response is not None:
        kw["legacy_stats"] = False
        kw.update(_response_direction(conv, response, f"{path}.response_direction_config"))
    library_path = f"{path}.compressor_library"
    library = node.get("compressor_library")
    if library is None:
        conv.error(library_path, "is required")
        return None
    conv.only(library, library_path, ("name", "typed_config"))
    parsed = _library(conv, library.get("typed_config", {}), f"{library_path}.typed_config")
    if parsed is None:
        return None
    return CompressorConfig(library_name=library.get("name", ""), library=parsed, **kw)


def _response_direction(conv: Reporter, node: Node, path: str) -> dict[str, Any]:
    fields = (
        "common_config", "disable_on_etag_header", "weaken_etag_on_compress",
        "remove_accept_encoding_header", "uncompressible_response_codes",
    )  # fmt: skip
    conv.only(node, path, fields)
    kw: dict[str, Any] = {}
    for key in (
        "disable_on_etag_header",
        "weaken_etag_on_compress",
        "remove_accept_encoding_header",
    ):
        if key in node:
            kw[key] = node[key]
    if "uncompressible_response_codes" in node:
        kw["uncompressible_response_codes"] = tuple(node["uncompressible_response_codes"])
    common = node.get("common_config", {})
    common_path = f"{path}.common_config"
    conv.only(common, common_path, ("enabled", "min_content_length", "content_type"))
    if "min_content_length" in common:
        kw["min_content_length"] = common["min_content_length"]
    if "content_type" in common:
        kw["content_type"] = tuple(common["content_type"])
    if "enabled" in common:
        conv.only(common["enabled"], f"{common_path}.enabled", ("default_value", "runtime_key"))
        kw["enabled"] = bool(common["enabled"].get("default_value", False))
        kw["enabled_runtime_key"] = common["enabled"].get("runtime_key", "")
    return kw


def _library(conv: Reporter, node: Node, path: str) -> GzipConfig | BrotliConfig | None:
    kind = node.get("@type")
    if kind == GZIP_COMPRESSOR_TYPE:
        fields = ("memory_level", "compression_level", "compression_strategy", "window_bits")
        conv.only(node, path, (*fields, "chunk_size"))  # chunk_size: zlib's buffer, no effect
        kw = {k: node[k] for k in fields if k in node}
        if kw.get("compression_level", GZIP_LEVELS[0]) not in GZIP_LEVELS:
            conv.error(f"{path}.compression_level", f"unknown level '{kw['compression_level']}'")
            return None
        if kw.get("compression_strategy", GZIP_STRATEGIES[0]) not in GZIP_STRATEGIES:
            conv.error(f"{path}.compression_strategy", "unknown strategy")
            return None
        return GzipConfig(**kw)
    if kind == BROTLI_COMPRESSOR_TYPE:
        if importlib.util.find_spec("brotli") is None:
            conv.refuse(path, f"compressor library '{kind}'", "the brotli package is not installed")
            return None
        fields = ("quality", "encoder_mode", "window_bits", "input_block_bits")
        conv.only(node, path, (*fields, "chunk_size", "disable_literal_context_modeling"))
        if node.get("disable_literal_context_modeling"):
            conv.refuse(f"{path}.disable_literal_context_modeling", "true")
        return BrotliConfig(**{k: node[k] for k in fields if k in node})
    conv.refuse(path, f"compressor library '{kind or ''}'", "only gzip and brotli")
    return None


def parse_compressor_per_route(conv: Reporter, node: Node, path: str) -> bool:
    """CompressorPerRoute: ``disabled`` (the response compression of this route)."""
    conv.only(node, path, ("disabled",))
    return bool(node.get("disabled", False))


def _direction(conv: Reporter, node: Node, path: str, extra: tuple[str, ...] = ()) -> Direction:
    conv.only(node, path, ("common_config", *extra))
    common = node.get("common_config", {})
    common_path = f"{path}.common_config"
    conv.only(common, common_path, ("enabled", "ignore_no_transform_header"))
    enabled = common.get("enabled", {})
    conv.only(enabled, f"{common_path}.enabled", ("default_value", "runtime_key"))
    return Direction(
        # RuntimeFeatureFlag: a set flag without default_value is false (proto default)
        enabled=bool(enabled.get("default_value", False)) if "enabled" in common else True,
        runtime_key=enabled.get("runtime_key", ""),
        ignore_no_transform_header=common.get("ignore_no_transform_header", False),
    )


def parse_decompressor(conv: Reporter, node: Node, path: str) -> DecompressorConfig | None:
    conv.only(
        node,
        path,
        ("decompressor_library", "request_direction_config", "response_direction_config"),
    )
    kw: dict[str, Any] = {}
    if "request_direction_config" in node:
        request_path = f"{path}.request_direction_config"
        request = node["request_direction_config"]
        kw["request"] = _direction(conv, request, request_path, ("advertise_accept_encoding",))
        kw["advertise_accept_encoding"] = request.get("advertise_accept_encoding", True)
    if "response_direction_config" in node:
        response_path = f"{path}.response_direction_config"
        kw["response"] = _direction(conv, node["response_direction_config"], response_path)
    library_path = f"{path}.decompressor_library"
    library = node.get("decompressor_library")
    if library is None:
        conv.error(library_path, "is required")
        return None
    conv.only(library, library_path, ("name", "typed_config"))
    config = library.get("typed_config", {})
    config_path = f"{library_path}.typed_config"
    if config.get("@type") != GZIP_DECOMPRESSOR_TYPE:
        what = f"decompressor library '{config.get('@type') or ''}'"
        conv.refuse(config_path, what, "only gzip")
        return None
    fields = ("window_bits", "chunk_size", "max_inflate_ratio")
    conv.only(config, config_path, fields)
    gzip = GzipDecompressorConfig(**{k: config[k] for k in fields if k in config})
    return DecompressorConfig(library_name=library.get("name", ""), library=gzip, **kw)


def parse_rbac(conv: Reporter, node: Node, path: str) -> Rbac:
    fields = (
        "rules", "matcher", "shadow_rules", "rules_stat_prefix", "shadow_rules_stat_prefix",
    )  # fmt: skip
    conv.only(node, path, fields)
    kw: dict[str, Any] = {
        key: node[key] for key in ("rules_stat_prefix", "shadow_rules_stat_prefix") if key in node
    }
    if "rules" in node:
        kw["rules"] = _rules(conv, node["rules"], f"{path}.rules")
    elif "matcher" in node:
        kw["rules"] = _matcher(conv, node["matcher"], f"{path}.matcher")
    if "shadow_rules" in node:
        kw["shadow_rules"] = _rules(conv, node["shadow_rules"], f"{path}.shadow_rules")
    return Rbac(**kw)


def parse_rbac_per_route(conv: Reporter, node: Node, path: str) -> Rbac:
    """RBACPerRoute: its ``rbac`` replaces the filter's; absent, RBAC is off for the route."""
    conv.only(node, path, ("rbac",))
    return parse_rbac(conv, node.get("rbac", {}), f"{path}.rbac")


def _rules(conv: Reporter, node: Node, path: str) -> Rules:
    conv.only(node, path, ("action", "policies"))
    action = node.get("action", "ALLOW")
    if action not in ("ALLOW", "DENY"):
        conv.refuse(f"{path}.action", f"'{action}'", "only ALLOW and DENY")
    policies = []
    for name, policy in sorted(node.get("policies", {}).items()):
        policy_path = f'{path}.policies["{name}"]'
        conv.only(policy, policy_path, ("permissions", "principals"))
        permissions = _list(conv, policy.get("permissions", ()), f"{policy_path}.permissions", True)
        principals = _list(conv, policy.get("principals", ()), f"{policy_path}.principals", False)
        policies.append(Policy(name=name, permissions=permissions, principals=principals))
    return Rules(action=action, policies=tuple(policies))


def _list(conv: Reporter, nodes: Any, path: str, permission: bool) -> tuple[Rule, ...]:
    out = [_rule(conv, x, f"{path}[{i}]", permission) for i, x in enumerate(nodes)]
    return tuple(x for x in out if x is not None)


_PERMISSIONS = {
    "any": "any", "header": "header", "url_path": "url_path", "destination_port": "port",
    "destination_ip": "dest_ip", "and_rules": "and", "or_rules": "or", "not_rule": "not",
}  # fmt: skip


_PRINCIPALS = {
    "any": "any", "header": "header", "url_path": "url_path", "remote_ip": "ip",
    "direct_remote_ip": "direct_ip", "source_ip": "direct_ip", "and_ids": "and", "or_ids": "or",
    "not_id": "not",
}  # fmt: skip


def _rule(conv: Reporter, node: Node, path: str, permission: bool) -> Rule | None:
    names = _PERMISSIONS if permission else _PRINCIPALS
    conv.only(node, path, tuple(names))
    for key, kind in names.items():
        if key not in node:
            continue
        value, sub = node[key], f"{path}.{key}"
        if kind == "any":
            return Rule(kind="any")
        if kind == "header":
            header = header_matcher(conv, value, sub)
            return Rule(kind="header", header=header) if header is not None else None
        if kind == "url_path":
            conv.only(value, sub, ("path",))
            string = string_matcher(conv, value.get("path", {}), f"{sub}.path")
            return Rule(kind="url_path", string=string) if string is not None else None
        if kind == "port":
            return Rule(kind="port", port=int(value))
        if kind in ("ip", "direct_ip", "dest_ip"):
            cidr = _cidr(conv, value, sub)
            return Rule(kind=kind, cidr=cidr) if cidr else None
        if kind == "not":
            inner = _rule(conv, value, sub, permission)
            return Rule(kind="not", rules=(inner,)) if inner is not None else None
        list_key = "rules" if permission else "ids"
        conv.only(value, sub, (list_key,))
        return Rule(kind=kind, rules=_list(conv, value.get(list_key, ()), sub, permission))
    return None


def _cidr(conv: Reporter, node: Node, path: str) -> str:
    conv.only(node, path, ("address_prefix", "prefix_len"))
    text = f"{node.get('address_prefix', '')}/{node.get('prefix_len', 0)}"
    if "prefix_len" not in node:
        # prefix_len absent (0 in the canonical tree): Envoy reads it as the full address
        text = node.get("address_prefix", "")
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        conv.error(path, f"'{text}' is not a CIDR range")
        return ""


def _matcher(conv: Reporter, node: Node, path: str) -> MatcherRules:
    conv.only(node, path, ("matcher_list", "on_no_match"))
    cases = []
    if "matcher_list" in node:
        list_path = f"{path}.matcher_list"
        conv.only(node["matcher_list"], list_path, ("matchers",))
        for i, m in enumerate(node["matcher_list"].get("matchers", ())):
            m_path = f"{list_path}.matchers[{i}]"
            conv.only(m, m_path, ("predicate", "on_match"))
            predicate = _predicate(conv, m.get("predicate", {}), f"{m_path}.predicate")
            action = _on_match(conv, m.get("on_match", {}), f"{m_path}.on_match")
            if predicate is not None and action is not None:
                cases.append(MatcherCase(predicate=predicate, name=action[0], allow=action[1]))
    no_match = None
    if "on_no_match" in node:
        no_match = _on_match(conv, node["on_no_match"], f"{path}.on_no_match")
    return MatcherRules(cases=tuple(cases), no_match=no_match)


def _on_match(conv: Reporter, node: Node, path: str) -> tuple[str, bool] | None:
    conv.only(node, path, ("action",))
    action = node.get("action")
    if action is None:
        conv.refuse(path, note="only an action (nested matchers are not supported)")
        return None
    conv.only(action, f"{path}.action", ("name", "typed_config"))
    config = action.get("typed_config", {})
    config_path = f"{path}.action.typed_config"
    if config.get("@type") != RBAC_ACTION_TYPE:
        conv.refuse(
            config_path, f"action '{config.get('@type') or ''}'", f"only {RBAC_ACTION_TYPE}"
        )
        return None
    conv.only(config, config_path, ("name", "action"))
    kind = config.get("action", "ALLOW")
    if kind not in ("ALLOW", "DENY"):
        conv.refuse(f"{config_path}.action", f"'{kind}'", "only ALLOW and DENY")
    return config.get("name", ""), kind == "ALLOW"


def _predicate(conv: Reporter, node: Node, path: str) -> Rule | None:
    conv.only(node, path, ("single_predicate", "or_matcher", "and_matcher", "not_matcher"))
    if "not_matcher" in node:
        inner = _predicate(conv, node["not_matcher"], f"{path}.not_matcher")
        return Rule(kind="not", rules=(inner,)) if inner is not None else None
    for key, kind in (("or_matcher", "or"), ("and_matcher", "and")):
        if key in node:
            conv.only(node[key], f"{path}.{key}", ("predicate",))
            parts = [
                _predicate(conv, x, f"{path}.{key}.predicate[{i}]")
                for i, x in enumerate(node[key].get("predicate", ()))
            ]
            return Rule(kind=kind, rules=tuple(x for x in parts if x is not None))
    if "single_predicate" not in node:
        return None
    single, sub = node["single_predicate"], f"{path}.single_predicate"
    conv.only(single, sub, ("input", "value_match"))
    source = single.get("input", {}).get("typed_config", {})
    if source.get("@type") != HEADER_INPUT_TYPE:
        what = f"matcher input '{source.get('@type') or ''}'"
        conv.refuse(f"{sub}.input", what, "only request headers (HttpRequestHeaderMatchInput)")
        return None
    conv.only(source, f"{sub}.input.typed_config", ("header_name",))
    if "value_match" not in single:
        conv.refuse(sub, note="only value_match")
        return None
    string = string_matcher(conv, single["value_match"], f"{sub}.value_match")
    if string is None:
        return None
    # A missing header gives no value, which no value_match matches (xDS matcher semantics).
    header = HeaderMatcher(
        name=source.get("header_name", "").lower(),
        **{k: getattr(string, k) for k in (*_STRING_KINDS, "ignore_case")},
    )
    return Rule(kind="header", header=header)


def parse_buffer(conv: Reporter, node: Node, path: str) -> BufferConfig:
    conv.only(node, path, ("max_request_bytes",))
    size = node.get("max_request_bytes")
    if not size:
        conv.error(f"{path}.max_request_bytes", "is required (at least 1)")
    return BufferConfig(max_request_bytes=int(size or 1))


def parse_buffer_per_route(conv: Reporter, node: Node, path: str) -> BufferPerRoute:
    conv.only(node, path, ("disabled", "buffer"))
    if "buffer" in node:
        return BufferPerRoute(buffer=parse_buffer(conv, node["buffer"], f"{path}.buffer"))
    if not node.get("disabled"):
        conv.error(path, "one of disabled (true) or buffer is required")
    return BufferPerRoute(disabled=True)


def parse_csrf(conv: Reporter, node: Node, path: str) -> CsrfPolicy:
    conv.only(node, path, ("filter_enabled", "shadow_enabled", "additional_origins"))
    if "filter_enabled" not in node:
        conv.error(f"{path}.filter_enabled", "is required")
    origins_path = f"{path}.additional_origins"
    origins = [
        string_matcher(conv, x, f"{origins_path}[{i}]")
        for i, x in enumerate(node.get("additional_origins", ()))
    ]
    shadow = node.get("shadow_enabled")
    return CsrfPolicy(
        filter_enabled=parse_fraction(
            conv, node.get("filter_enabled"), f"{path}.filter_enabled", 0, runtime=True
        ),
        shadow_enabled=None
        if shadow is None
        else parse_fraction(conv, shadow, f"{path}.shadow_enabled", 0, runtime=True),
        additional_origins=tuple(x for x in origins if x is not None),
    )


# LocalRateLimit fields udsproxy refuses, each with why (the rest are supported).
_LOCAL_RATELIMIT_REFUSED = {
    "descriptors": "per-descriptor buckets; the filter's one token bucket is supported",
    "rate_limits": "descriptors from the request; the filter's one token bucket is supported",
    "max_dynamic_descriptors": "descriptors are not supported",
    "always_consume_default_token_bucket": "descriptors are not supported",
    "vh_rate_limits": "route rate_limits descriptors are not supported",
    "stage": "route rate_limits descriptors are not supported",
    "local_rate_limit_per_downstream_connection": "the bucket is per worker process",
    "local_cluster_rate_limit": "no local cluster membership to share the bucket by",
    "request_headers_to_add_when_not_enforced": "not yet supported",
    "enable_x_ratelimit_headers": "not yet supported",
    "rate_limited_as_resource_exhausted": "a gRPC status; udsproxy proxies HTTP/1.1",
}
# envoy.type.v3.StatusCode's names of the statuses >= 400 (the validated tree holds names)
_ERROR_CODES = {
    "BadRequest": 400, "Unauthorized": 401, "PaymentRequired": 402, "Forbidden": 403,
    "NotFound": 404, "MethodNotAllowed": 405, "NotAcceptable": 406,
    "ProxyAuthenticationRequired": 407, "RequestTimeout": 408, "Conflict": 409, "Gone": 410,
    "LengthRequired": 411, "PreconditionFailed": 412, "PayloadTooLarge": 413, "URITooLong": 414,
    "UnsupportedMediaType": 415, "RangeNotSatisfiable": 416, "ExpectationFailed": 417,
    "MisdirectedRequest": 421, "UnprocessableEntity": 422, "Locked": 423,
    "FailedDependency": 424, "UpgradeRequired": 426, "PreconditionRequired": 428,
    "TooManyRequests": 429, "RequestHeaderFieldsTooLarge": 431, "InternalServerError": 500,
    "NotImplemented": 501, "BadGateway": 502, "ServiceUnavailable": 503, "GatewayTimeout": 504,
    "HTTPVersionNotSupported": 505, "VariantAlsoNegotiates": 506, "InsufficientStorage": 507,
    "LoopDetected": 508, "NotExtended": 510, "NetworkAuthenticationRequired": 511,
}  # fmt: skip
_MIN_FILL_INTERVAL = 0.05  # Envoy's "fill timer must be >= 50ms"


def parse_local_ratelimit(
    conv: Reporter, node: Node, path: str, *, per_route: bool = False
) -> LocalRateLimit | None:
    """envoy.filters.http.local_ratelimit's LocalRateLimit (filter or per-route config)."""
    fields = (
        "stat_prefix", "token_bucket", "filter_enabled", "filter_enforced", "status",
        "response_headers_to_add",
    )  # fmt: skip
    for key in node:
        if key in _LOCAL_RATELIMIT_REFUSED:
            conv.refuse(f"{path}.{key}", note=_LOCAL_RATELIMIT_REFUSED[key])
    conv.only(node, path, (*fields, *_LOCAL_RATELIMIT_REFUSED))
    ok = True
    if not node.get("stat_prefix"):
        conv.error(f"{path}.stat_prefix", "is required and must not be empty")
        ok = False
    kw: dict[str, Any] = {}
    bucket = node.get("token_bucket")
    if bucket is None:
        if per_route:  # Envoy: a per-route config without a bucket would limit nothing
            conv.error(
                f"{path}.token_bucket",
                "local rate limit token bucket must be set for per filter configs",
            )
            ok = False
    else:
        bucket_path = f"{path}.token_bucket"
        conv.only(bucket, bucket_path, ("max_tokens", "tokens_per_fill", "fill_interval"))
        kw["max_tokens"] = int(bucket.get("max_tokens", 0))
        kw["tokens_per_fill"] = int(bucket.get("tokens_per_fill", 1))
        interval = float(bucket.get("fill_interval", 0.0))
        if kw["max_tokens"] <= 0:
            conv.error(f"{bucket_path}.max_tokens", "must be greater than 0")
            ok = False
        if kw["tokens_per_fill"] <= 0:
            conv.error(f"{bucket_path}.tokens_per_fill", "must be greater than 0")
            ok = False
        if "fill_interval" not in bucket:
            conv.error(f"{bucket_path}.fill_interval", "is required")
            ok = False
        elif int(interval * 1000) < _MIN_FILL_INTERVAL * 1000:  # Envoy reads whole ms
            message = "local rate limit token bucket fill timer must be >= 50ms"
            conv.error(f"{bucket_path}.fill_interval", message)
            ok = False
        kw["fill_interval"] = int(interval * 1000) / 1000
    for key in ("filter_enabled", "filter_enforced"):
        if key in node:  # absent: 0%, as in Envoy
            kw[key] = parse_fraction(conv, node[key], f"{path}.{key}", 0, runtime=True)
    if "status" in node:
        status_path = f"{path}.status"
        conv.only(node["status"], status_path, ("code",))
        name = node["status"].get("code")
        if not name:
            conv.error(f"{status_path}.code", "is required")
            ok = False
        # Envoy answers 429 for a status below 400 (the names not in the table)
        kw["status"] = _ERROR_CODES.get(str(name), 429)
    if "response_headers_to_add" in node:
        options = convert_shaping.header_options(
            conv,  # type: ignore[arg-type]  # only its Reporter part is used
            node["response_headers_to_add"],
            f"{path}.response_headers_to_add",
            request=False,
        )
        kw["response_headers_to_add"] = options
    if not ok:
        return None
    return LocalRateLimit(stat_prefix=node.get("stat_prefix", ""), **kw)
