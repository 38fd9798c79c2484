"""Envoy's StringMatcher and HeaderMatcher, parsed into frozen configs and compiled to matchers.

Pure: no I/O. Regexes are RE2 in Envoy; Python's ``re`` with ``fullmatch`` stands in (the
patterns Envoy configs use are in the common subset).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from udsproxy.filters.base import Node, Reporter, header_value

if TYPE_CHECKING:
    from udsproxy.stream import Stream

__all__ = [
    "HeaderMatch", "HeaderMatcher", "StringMatch", "StringMatcher", "parse_header_match",
    "parse_string_match",
]  # fmt: skip

_STRING_KINDS = ("exact", "prefix", "suffix", "contains", "safe_regex")


@dataclass(frozen=True, slots=True, kw_only=True)
class StringMatch:
    """envoy.type.matcher.v3.StringMatcher: one of exact/prefix/suffix/contains/safe_regex."""

    kind: str
    value: str
    ignore_case: bool = False


def parse_string_match(conv: Reporter, node: Node, path: str) -> StringMatch | None:
    conv.only(node, path, (*_STRING_KINDS, "ignore_case"))
    for kind in _STRING_KINDS:
        if kind in node:
            value = node[kind]
            if kind == "safe_regex":
                conv.only(value, f"{path}.safe_regex", ("regex", "google_re2"))
                value = value.get("regex", "")
                try:
                    re.compile(value)
                except re.error as exc:
                    conv.error(f"{path}.safe_regex.regex", f"invalid regex '{value}': {exc}")
                    return None
            return StringMatch(kind=kind, value=value, ignore_case=node.get("ignore_case", False))
    if all(k == "ignore_case" for k in node):
        # exact: "" is the proto default, which the canonical tree leaves out
        return StringMatch(kind="exact", value="", ignore_case=node.get("ignore_case", False))
    return None  # another kind: refused by only() above


class StringMatcher:
    __slots__ = ("ignore_case", "kind", "regex", "value")

    def __init__(self, m: StringMatch) -> None:
        self.kind = m.kind
        self.ignore_case = m.ignore_case and m.kind != "safe_regex"
        raw = m.value.encode()
        self.value = raw.lower() if self.ignore_case else raw
        self.regex = re.compile(raw) if m.kind == "safe_regex" else None

    def match(self, value: bytes) -> bool:
        if self.regex is not None:
            return self.regex.fullmatch(value) is not None
        if self.ignore_case:
            value = value.lower()
        kind = self.kind
        if kind == "exact":
            return value == self.value
        if kind == "prefix":
            return value.startswith(self.value)
        if kind == "suffix":
            return value.endswith(self.value)
        return self.value in value


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderMatch:
    """config.route.v3.HeaderMatcher (the string, presence and range forms)."""

    name: str
    string: StringMatch | None = None
    present: bool | None = None
    range_start: int | None = None
    range_end: int | None = None
    invert_match: bool = False
    treat_missing_header_as_empty: bool = False


_LEGACY = {
    "exact_match": "exact",
    "prefix_match": "prefix",
    "suffix_match": "suffix",
    "contains_match": "contains",
}


def parse_header_match(conv: Reporter, node: Node, path: str) -> HeaderMatch | None:
    fields = (
        "name", "string_match", "present_match", "range_match", "invert_match",
        "treat_missing_header_as_empty", "safe_regex_match", *_LEGACY,
    )  # fmt: skip
    conv.only(node, path, fields)
    name = node.get("name", "").lower()
    kw: dict[str, object] = {
        "invert_match": node.get("invert_match", False),
        "treat_missing_header_as_empty": node.get("treat_missing_header_as_empty", False),
    }
    if "string_match" in node:
        kw["string"] = parse_string_match(conv, node["string_match"], f"{path}.string_match")
    elif "safe_regex_match" in node:
        kw["string"] = parse_string_match(
            conv, {"safe_regex": node["safe_regex_match"]}, f"{path}.safe_regex_match"
        )
    elif "range_match" in node:
        r = node["range_match"]
        conv.only(r, f"{path}.range_match", ("start", "end"))
        kw["range_start"] = int(r.get("start", 0))
        kw["range_end"] = int(r.get("end", 0))
    elif "present_match" in node:
        kw["present"] = bool(node["present_match"])
    else:
        for key, kind in _LEGACY.items():
            if key in node:
                kw["string"] = StringMatch(kind=kind, value=node[key])
                break
        else:
            kw["present"] = True  # no match specifier: the header must be present (Envoy)
    if "string" in kw and kw["string"] is None:
        return None
    return HeaderMatch(name=name, **kw)  # type: ignore[arg-type]


class HeaderMatcher:
    __slots__ = ("invert", "missing_empty", "name", "present", "range", "string")

    def __init__(self, m: HeaderMatch) -> None:
        self.name = m.name.encode()
        self.string = StringMatcher(m.string) if m.string is not None else None
        self.present = m.present
        self.range = (m.range_start or 0, m.range_end or 0) if m.range_start is not None else None
        self.invert = m.invert_match
        self.missing_empty = m.treat_missing_header_as_empty

    def match(self, s: Stream) -> bool:
        value = header_value(s, self.name)
        if value is None and self.missing_empty:
            value = b""
        if self.present is not None:
            # present_match: false matches a missing header (Envoy's present_match semantics)
            return ((value is not None) == self.present) != self.invert
        if value is None:
            return False  # a missing header never matches, inverted or not
        if self.string is not None:
            ok = self.string.match(value)
        elif self.range is not None:
            try:
                n = int(value)
            except ValueError:
                ok = False
            else:
                ok = self.range[0] <= n < self.range[1]
        else:
            ok = True
        return ok != self.invert
