"""Conversion of the request/response shaping fields (part of ``convert``): header mutations at
the route, virtual host and route configuration levels, ``direct_response``, host rewrites and
``local_reply_config``. Same rules as ``convert``: refuse what is not implemented, by name. Pure.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Protocol

from udsproxy.accesslog.formatter import FormatError
from udsproxy.config.convert_matchers import header_matcher
from udsproxy.config.datasource import decode_base64
from udsproxy.config.schema import (
    AccessLogFilter,
    DataSource,
    DirectResponse,
    HeaderValueOption,
    LocalReplyConfig,
    ResponseMapper,
    SubstitutionFormat,
)
from udsproxy.config.validate import item, join
from udsproxy.flags import ResponseFlag
from udsproxy.headers import APPEND_ACTIONS, check_name, check_option
from udsproxy.localreply import BodyFormat

__all__ = [
    "HEADER_FIELDS",
    "ROUTE_ACTION_FIELDS",
    "direct_response",
    "header_fields",
    "host_rewrite",
    "local_reply_config",
]

Node = Mapping[str, Any]

HEADER_FIELDS = (
    "request_headers_to_add",
    "request_headers_to_remove",
    "response_headers_to_add",
    "response_headers_to_remove",
)
ROUTE_ACTION_FIELDS = (
    "host_rewrite_literal",
    "auto_host_rewrite",
    "host_rewrite_header",
    "append_x_forwarded_host",
)
DEFAULT_MAX_DIRECT_RESPONSE_BODY = 4096  # Envoy's max_direct_response_body_size_bytes default
_FILTERS = (
    "status_code_filter", "duration_filter", "not_health_check_filter", "header_filter",
    "response_flag_filter", "and_filter", "or_filter",
)  # fmt: skip


class Converter(Protocol):
    """What these functions use of ``convert._Converter``."""

    def error(self, path: str, message: str) -> None: ...

    def refuse(self, path: str, what: str = "", note: str = "") -> None: ...

    def only(self, node: Node, path: str, allowed: Collection[str]) -> None: ...

    def data_source(self, node: Node | None, path: str) -> DataSource | None: ...

    def log_format(
        self, node: Node, path: str
    ) -> tuple[str | None, dict[str, object] | None, bool]: ...


# --- header mutations --------------------------------------------------------------------------


def header_fields(c: Converter, node: Node, path: str) -> dict[str, Any]:
    """The four *_headers_to_add/remove fields of a route, virtual host or route configuration,
    as keyword arguments of its schema class (only those that are set)."""
    out: dict[str, Any] = {}
    for key in HEADER_FIELDS:
        if key not in node:
            continue
        key_path = join(path, key)
        if key.endswith("_to_add"):
            out[key] = header_options(c, node[key], key_path, request=key.startswith("request"))
        else:
            out[key] = header_names(c, node[key], key_path)
    return out


def header_names(c: Converter, names: list[str], path: str) -> tuple[str, ...]:
    for i, name in enumerate(names):
        problem = check_name(name, removing=True)
        if problem is not None:
            c.error(item(path, i), problem)
    return tuple(name.lower() for name in names)


def header_options(
    c: Converter, options: list[Node], path: str, *, request: bool
) -> tuple[HeaderValueOption, ...]:
    out = []
    for i, node in enumerate(options):
        option = header_option(c, node, item(path, i), request=request)
        if option is not None:
            out.append(option)
    return tuple(out)


def header_option(
    c: Converter, node: Node, path: str, *, request: bool
) -> HeaderValueOption | None:
    """A HeaderValueOption; ``append`` (deprecated) becomes its append_action."""
    c.only(node, path, ("header", "append", "append_action", "keep_empty_value"))
    header = node.get("header")
    if header is None:
        c.error(join(path, "header"), "is required")
        return None
    c.only(header, join(path, "header"), ("key", "value"))
    action = node.get("append_action", "APPEND_IF_EXISTS_OR_ADD")
    if "append" in node:
        if "append_action" in node:
            c.error(path, "Both append and append_action are set and it's not allowed")
            return None
        action = "APPEND_IF_EXISTS_OR_ADD" if node["append"] else "OVERWRITE_IF_EXISTS_OR_ADD"
    if action not in APPEND_ACTIONS:
        c.refuse(join(path, "append_action"), f"'{action}'", f"only {', '.join(APPEND_ACTIONS)}")
        return None
    key: str = header.get("key", "")
    if not key:
        c.error(join(path, "header.key"), "is required and must not be empty")
        return None
    option = HeaderValueOption(
        key=key.lower(),
        value=header.get("value", ""),
        append_action=action,
        keep_empty_value=node.get("keep_empty_value", False),
    )
    problem = check_option(option, request=request)
    if problem is not None:
        where = "header.key" if check_name(key) is not None else "header.value"
        c.error(join(path, where), problem)
        return None
    return option


# --- route actions -----------------------------------------------------------------------------


def host_rewrite(c: Converter, node: Node, path: str) -> dict[str, Any]:
    """host_rewrite_literal / auto_host_rewrite / host_rewrite_header, append_x_forwarded_host."""
    out: dict[str, Any] = {}
    literal = node.get("host_rewrite_literal")
    if literal is not None:
        if not literal or any(ch in literal for ch in "\r\n\0"):
            c.error(join(path, "host_rewrite_literal"), "must be a non-empty header value")
        out["host_rewrite_literal"] = literal
    if node.get("auto_host_rewrite"):
        out["auto_host_rewrite"] = True
    header = node.get("host_rewrite_header")
    if header is not None:
        if header.lower().startswith(":") or header.lower() == "host":
            c.refuse(join(path, "host_rewrite_header"), f"'{header}'", "only a regular header")
        out["host_rewrite_header"] = header.lower()
    if node.get("append_x_forwarded_host"):
        out["append_x_forwarded_host"] = True
    return out


def direct_response(c: Converter, node: Node, path: str, limit: int) -> DirectResponse | None:
    c.only(node, path, ("status", "body"))
    status: int = node.get("status", 0)
    if not 200 <= status < 600:
        c.error(join(path, "status"), f"{status} is not in [200, 600)")
    body = None
    if "body" in node:
        body = c.data_source(node["body"], join(path, "body"))
        data = _inline(body)
        if data is not None and len(data) > limit:
            message = f"response body size is {len(data)} bytes; maximum is {limit}"
            c.error(join(path, "body"), message)
    return DirectResponse(status=status, body=body)


def _inline(source: DataSource | None) -> bytes | None:
    """An inline DataSource's bytes (files and variables are read at load time, not here)."""
    if source is None:
        return None
    if source.kind == "inline_string":
        return source.value.encode()
    if source.kind == "inline_bytes":
        return decode_base64(source.value)
    return None


# --- local_reply_config ------------------------------------------------------------------------


def local_reply_config(c: Converter, node: Node, path: str) -> LocalReplyConfig:
    c.only(node, path, ("mappers", "body_format"))
    mappers_path = join(path, "mappers")
    mappers = [
        response_mapper(c, x, item(mappers_path, i)) for i, x in enumerate(node.get("mappers", []))
    ]
    body_format = None
    if "body_format" in node:
        body_format = substitution_format(c, node["body_format"], join(path, "body_format"))
    return LocalReplyConfig(
        mappers=tuple(x for x in mappers if x is not None), body_format=body_format
    )


def response_mapper(c: Converter, node: Node, path: str) -> ResponseMapper | None:
    fields = ("filter", "status_code", "body", "body_format_override", "headers_to_add")
    c.only(node, path, fields)
    if "filter" not in node:
        c.error(join(path, "filter"), "is required")
        return None
    match = access_log_filter(c, node["filter"], join(path, "filter"))
    status = node.get("status_code")
    if status is not None and not 200 <= status < 600:
        c.error(join(path, "status_code"), f"{status} is not in [200, 600)")
    body = c.data_source(node["body"], join(path, "body")) if "body" in node else None
    override = None
    if "body_format_override" in node:
        override_path = join(path, "body_format_override")
        override = substitution_format(c, node["body_format_override"], override_path)
    headers = header_options(
        c, node.get("headers_to_add", []), join(path, "headers_to_add"), request=False
    )
    if match is None:
        return None
    return ResponseMapper(
        filter=match,
        status_code=status,
        body=body,
        body_format_override=override,
        headers_to_add=headers,
    )


def access_log_filter(c: Converter, node: Node, path: str) -> AccessLogFilter | None:
    """The filters that make sense for a local reply; the others are refused by name."""
    kinds = [key for key in node if key != "@type"]
    if len(kinds) != 1:
        c.error(path, "exactly one filter is required")
        return None
    key = kinds[0]
    sub: Node = node[key]
    sub_path = join(path, key)
    if key not in _FILTERS:
        c.refuse(sub_path, note=f"only {', '.join(_FILTERS)}")
        return None
    kind = key.removesuffix("_filter")
    if kind in ("status_code", "duration"):
        c.only(sub, sub_path, ("comparison",))
        comparison = sub.get("comparison", {})
        comparison_path = join(sub_path, "comparison")
        c.only(comparison, comparison_path, ("op", "value"))
        value = comparison.get("value", {})
        # runtime_key is required by Envoy's API: layered_runtime may set it
        c.only(value, join(comparison_path, "value"), ("default_value", "runtime_key"))
        return AccessLogFilter(
            kind=kind,
            op=comparison.get("op", "EQ"),
            value=value.get("default_value", 0),
            runtime_key=value.get("runtime_key", ""),
        )
    if kind == "header":
        c.only(sub, sub_path, ("header",))
        matcher = header_matcher(c, sub.get("header", {}), join(sub_path, "header"))
        return None if matcher is None else AccessLogFilter(kind=kind, header=matcher)
    if kind == "response_flag":
        c.only(sub, sub_path, ("flags",))
        flags = tuple(sub.get("flags", ()))
        for i, flag in enumerate(flags):
            if flag not in ResponseFlag.__members__:
                c.error(item(join(sub_path, "flags"), i), f"unknown response flag '{flag}'")
        return AccessLogFilter(kind=kind, flags=flags)
    if kind in ("and", "or"):
        c.only(sub, sub_path, ("filters",))
        filters_path = join(sub_path, "filters")
        subs = [
            access_log_filter(c, x, item(filters_path, i))
            for i, x in enumerate(sub.get("filters", []))
        ]
        if len(subs) < 2:
            c.error(filters_path, "at least 2 filters are required")
        if any(x is None for x in subs):
            return None
        return AccessLogFilter(kind=kind, filters=tuple(x for x in subs if x is not None))
    c.only(sub, sub_path, ())
    return AccessLogFilter(kind=kind)  # not_health_check


def substitution_format(c: Converter, node: Node, path: str) -> SubstitutionFormat:
    text, json_format, omit = c.log_format(node, path)
    fmt = SubstitutionFormat(
        text_format=text,
        json_format=json_format,
        omit_empty_values=omit,
        content_type=node.get("content_type", ""),
    )
    try:
        BodyFormat(fmt)  # Envoy rejects a bad format at config load
    except FormatError as exc:
        c.error(path, str(exc))
    return fmt
