"""Envoy's StringMatcher and HeaderMatcher evaluated: the one evaluator for local_reply_config,
the http filters (rbac, fault, cors, csrf) and upstream SAN checks. Compiled once at config time
into one callable each. Pure: no I/O. ``config.convert_matchers`` parses them.

As Envoy: ``ignore_case`` applies to exact/prefix/suffix/contains, never to ``safe_regex``
(a full match). A header repeated in the request is matched as its values joined with ","
(``getAllOfHeaderAsString``). Pseudo-headers read the request line: ``:method``, ``:path``,
``:authority`` (also ``host``), and ``:scheme``, which for an HTTP/1 request is the sanitized
x-forwarded-proto (Envoy 1.24's headers doc: the absolute URL's scheme aside, the value of
x-forwarded-proto after sanitization).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from udsproxy.config import schema
    from udsproxy.streaminfo import StreamInfo

__all__ = ["HeaderMatch", "StringMatch", "header_value"]

Test = Callable[[bytes], bool]


class StringFields(Protocol):
    """A StringMatcher's fields: ``schema.StringMatcher``, the string part of a
    ``schema.HeaderMatcher``, a ``schema.SanMatcher``."""

    @property
    def exact(self) -> str | None: ...
    @property
    def prefix(self) -> str | None: ...
    @property
    def suffix(self) -> str | None: ...
    @property
    def contains(self) -> str | None: ...
    @property
    def safe_regex(self) -> str | None: ...
    @property
    def ignore_case(self) -> bool: ...


def compile_string(m: StringFields) -> Test | None:
    """The test of a value, or None when no kind is set (per request: a bound C method or one
    small lambda, measured faster than a matcher object's method)."""
    if m.safe_regex is not None:
        fullmatch = re.compile(m.safe_regex.encode()).fullmatch
        return lambda v: fullmatch(v) is not None
    fold = m.ignore_case
    if m.exact is not None:
        want = m.exact.encode()
        if fold:
            want = want.lower()
            return lambda v: v.lower() == want
        return want.__eq__
    if m.prefix is not None:
        want = m.prefix.encode()
        if fold:
            want = want.lower()
            return lambda v: v.lower().startswith(want)
        return lambda v: v.startswith(want)
    if m.suffix is not None:
        want = m.suffix.encode()
        if fold:
            want = want.lower()
            return lambda v: v.lower().endswith(want)
        return lambda v: v.endswith(want)
    if m.contains is not None:
        want = m.contains.encode()
        if fold:
            want = want.lower()
            return lambda v: want in v.lower()
        return lambda v: want in v
    return None


class StringMatch:
    """``match(value)``: whether bytes match the StringMatcher."""

    __slots__ = ("match",)

    def __init__(self, m: StringFields) -> None:
        test = compile_string(m)
        # no kind set: the parser never makes one; match nothing rather than everything
        self.match: Test = test if test is not None else _never

    def match_text(self, value: str) -> bool:
        return self.match(value.encode())


def _never(value: bytes) -> bool:
    return False


Getter = Callable[["StreamInfo"], "bytes | None"]


def _joined(name: bytes) -> Getter:
    def get(i: StreamInfo) -> bytes | None:
        values = [v for n, v in i.request_headers if n == name]
        if not values:
            return None
        return values[0] if len(values) == 1 else b",".join(values)

    return get


_PSEUDO: dict[bytes, Getter] = {
    b":method": lambda i: i.method or None,
    b":path": lambda i: i.path or None,
    b":authority": lambda i: i.authority or None,
    b"host": lambda i: i.authority or None,
    # the proxy replaced x-forwarded-proto by its sanitized value before routing
    b":scheme": _joined(b"x-forwarded-proto"),
}


def getter(name: bytes) -> Getter:
    """How to read request header ``name`` (lower case) from a stream, chosen once."""
    return _PSEUDO.get(name) or _joined(name)


def header_value(info: StreamInfo, name: bytes) -> bytes | None:
    """Request header ``name`` as the matchers see it (for a one-off read)."""
    return getter(name)(info)


def _range(bounds: tuple[int, int]) -> Test:
    start, end = bounds

    def in_range(v: bytes) -> bool:
        try:
            n = int(v)
        except ValueError:
            return False
        return start <= n < end

    return in_range


class HeaderMatch:
    """``match(info)``: whether the request (a Stream, or its StreamInfo) matches the
    HeaderMatcher."""

    __slots__ = ("_get", "_test", "invert", "missing_empty", "name", "present")

    def __init__(self, m: schema.HeaderMatcher) -> None:
        self.name = m.name.lower().encode()
        self.invert = m.invert_match
        self.missing_empty = m.treat_missing_header_as_empty
        self.present = m.present
        self._get = getter(self.name)
        test = compile_string(m)
        if test is None and m.range is not None:
            test = _range(m.range)
        self._test = test  # None: a presence match

    def match(self, info: StreamInfo) -> bool:
        value = self._get(info)
        if value is None and self.missing_empty:
            value = b""
        test = self._test
        if test is None:  # presence: present_match (true when unset)
            found = (value is not None) == (self.present is not False)
            return found != self.invert
        if value is None:
            return False  # an absent header matches no value test, inverted or not
        return test(value) != self.invert
