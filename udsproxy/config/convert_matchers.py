"""Envoy's StringMatcher and HeaderMatcher (type.matcher.v3, config.route.v3) parsed into
``schema.StringMatcher``/``schema.HeaderMatcher``: the one parser for every place that has them
(local_reply_config, the http filters, ...). Pure; ``udsproxy.headermatch`` evaluates them.

Regexes are RE2 in Envoy; Python's ``re`` with ``fullmatch`` stands in (the patterns Envoy
configs use are in the common subset), checked here so that a bad one is a config error.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any, Protocol

from udsproxy.config.schema import HeaderMatcher, StringMatcher

__all__ = ["Reporter", "header_matcher", "string_matcher"]

Node = Mapping[str, Any]

_STRING_KINDS = ("exact", "prefix", "suffix", "contains", "safe_regex")
_LEGACY = ("exact_match", "prefix_match", "suffix_match", "contains_match")


class Reporter(Protocol):
    """What the parsers report to (``config.convert._Converter``)."""

    def error(self, path: str, message: str) -> None: ...

    def refuse(self, path: str, what: str = "", note: str = "") -> None: ...

    def only(self, node: Node, path: str, allowed: Collection[str]) -> None: ...


def string_matcher(c: Reporter, node: Node, path: str) -> StringMatcher | None:
    """None when refused (another kind, e.g. ``custom``) or the regex is invalid."""
    c.only(node, path, (*_STRING_KINDS, "ignore_case"))
    ignore_case = bool(node.get("ignore_case", False))
    for kind in _STRING_KINDS:
        if kind in node:
            value = node[kind]
            if kind == "safe_regex":
                value = regex(c, value, f"{path}.safe_regex")
                if value is None:
                    return None
            return StringMatcher(**{kind: value}, ignore_case=ignore_case)
    if all(k == "ignore_case" for k in node):
        # exact: "" is the proto default, which the canonical tree leaves out
        return StringMatcher(exact="", ignore_case=ignore_case)
    return None  # another kind: refused by only() above


def regex(c: Reporter, node: Node, path: str) -> str | None:
    """A RegexMatcher's regex; None (reported) when Python cannot compile it."""
    c.only(node, path, ("regex", "google_re2"))
    text: str = node.get("regex", "")
    try:
        re.compile(text)
    except re.error as exc:
        c.error(f"{path}.regex", f"invalid regex '{text}': {exc}")
        return None
    return text


def header_matcher(c: Reporter, node: Node, path: str) -> HeaderMatcher | None:
    """None when the matcher cannot be used (reported)."""
    specifiers = (
        "string_match", "present_match", "range_match", "safe_regex_match", *_LEGACY,
    )  # fmt: skip
    c.only(node, path, ("name", *specifiers, "invert_match", "treat_missing_header_as_empty"))
    name: str = node.get("name", "")
    if not name:
        c.error(f"{path}.name", "is required and must not be empty")
        return None
    kw: dict[str, Any] = {
        "name": name.lower(),
        "invert_match": node.get("invert_match", False),
        "treat_missing_header_as_empty": node.get("treat_missing_header_as_empty", False),
    }
    if "string_match" in node:
        string = string_matcher(c, node["string_match"], f"{path}.string_match")
        if string is None:
            return None
        kw.update(
            {k: getattr(string, k) for k in (*_STRING_KINDS, "ignore_case")},
        )
    elif "safe_regex_match" in node:
        text = regex(c, node["safe_regex_match"], f"{path}.safe_regex_match")
        if text is None:
            return None
        kw["safe_regex"] = text
    elif "range_match" in node:
        bounds = node["range_match"]
        c.only(bounds, f"{path}.range_match", ("start", "end"))
        kw["range"] = (int(bounds.get("start", 0)), int(bounds.get("end", 0)))
    elif "present_match" in node:
        kw["present"] = bool(node["present_match"])
    else:
        for legacy in _LEGACY:
            if legacy in node:
                kw[legacy.removesuffix("_match")] = node[legacy]
                break
        # none: the header must be present (Envoy), which no specifier means in HeaderMatcher
    return HeaderMatcher(**kw)
