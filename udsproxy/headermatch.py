"""Envoy's HeaderMatcher against a request, compiled once. Pure: no I/O.

A header repeated in the request is matched as its values joined with "," (Envoy's
``getAllOfHeaderAsString``). Pseudo-headers read the request line: ``:method``, ``:path``,
``:authority`` (also ``host``) and ``:scheme`` (the sanitized x-forwarded-proto).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from udsproxy.config import schema
from udsproxy.streaminfo import StreamInfo

__all__ = ["HeaderMatch"]


def _pseudo(name: str) -> Callable[[StreamInfo], bytes | None] | None:
    if name == ":method":
        return lambda i: i.method or None
    if name == ":path":
        return lambda i: i.path or None
    if name in (":authority", "host"):
        return lambda i: i.authority or None
    if name == ":scheme":
        return lambda i: _get(i.request_headers, b"x-forwarded-proto")
    return None


def _get(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    values = [v for n, v in headers if n == name]
    return b",".join(values) if values else None


class HeaderMatch:
    """``match(info)``: whether the request matches the HeaderMatcher."""

    __slots__ = ("_get", "_test", "invert", "missing_empty", "name", "present")

    def __init__(self, m: schema.HeaderMatcher) -> None:
        self.name = m.name.lower().encode()
        self.invert = m.invert_match
        self.missing_empty = m.treat_missing_header_as_empty
        self.present = m.present
        pseudo = _pseudo(m.name.lower())
        name = self.name
        self._get: Callable[[StreamInfo], bytes | None] = pseudo or (
            lambda i: _get(i.request_headers, name)
        )
        self._test = self._compile(m)

    @staticmethod
    def _compile(m: schema.HeaderMatcher) -> Callable[[bytes], bool] | None:
        """A test of the value, or None for a presence match."""
        fold = m.ignore_case

        def norm(text: str) -> bytes:
            data = text.encode()
            return data.lower() if fold else data

        if m.safe_regex is not None:
            rx = re.compile(m.safe_regex.encode(), re.IGNORECASE if fold else 0)
            return lambda v: rx.fullmatch(v) is not None
        if m.range is not None:
            start, end = m.range

            def in_range(v: bytes) -> bool:
                try:
                    n = int(v)
                except ValueError:
                    return False
                return start <= n < end

            return in_range
        for attr, test in (
            ("exact", bytes.__eq__),
            ("prefix", bytes.startswith),
            ("suffix", bytes.endswith),
            ("contains", bytes.__contains__),
        ):
            text = getattr(m, attr)
            if text is not None:
                want = norm(text)
                if fold:
                    return lambda v, t=test, w=want: bool(t(v.lower(), w))  # type: ignore[misc]
                return lambda v, t=test, w=want: bool(t(v, w))  # type: ignore[misc]
        return None

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
