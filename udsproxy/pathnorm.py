"""Request path normalization, as Envoy's connection manager does it before routing. Pure.

Configured by the HTTP connection manager's ``path_with_escaped_slashes_action``,
``normalize_path`` and ``merge_slashes``, applied in that order (Envoy's
``ConnectionManagerUtility::maybeNormalizePath``) to the path without its query string:

* escaped slashes (``%2F``, ``%5C``, any case) are kept, or the request is rejected (400), or they
  are unescaped and the request forwarded, or unescaped and the client redirected (307);
* ``normalize_path``: RFC 3986 section 6 without case normalization: percent-encoded unreserved
  characters are decoded, the other escapes get upper-case hex, ``\\`` counts as ``/`` and dot
  segments are removed. A malformed escape is a 400;
* ``merge_slashes``: ``//a///b`` becomes ``/a/b``.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["ESCAPED_SLASH_ACTIONS", "KEEP_UNCHANGED", "PathNormalizer", "Result"]

KEEP_UNCHANGED = "KEEP_UNCHANGED"
_REJECT = "REJECT_REQUEST"
_REDIRECT = "UNESCAPE_AND_REDIRECT"
_FORWARD = "UNESCAPE_AND_FORWARD"
ESCAPED_SLASH_ACTIONS = (KEEP_UNCHANGED, _REJECT, _REDIRECT, _FORWARD)

_ESCAPED_SLASH = re.compile(rb"%(?:2[fF]|5[cC])")
_ESCAPE = re.compile(rb"%(..)?")
_SLASHES = re.compile(rb"//+")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset(b"0123456789abcdefABCDEF")


class Result(NamedTuple):
    """``path`` is the new path (with its query); ``reject`` answers 400, ``redirect`` 307."""

    path: bytes
    reject: bool = False
    redirect: bool = False


def _unescape_slash(match: re.Match[bytes]) -> bytes:
    return b"/" if match[0][1:2] == b"2" else b"\\"


def _decode(match: re.Match[bytes]) -> bytes:
    pair = match[1]
    if pair is None or not (pair[0] in _HEX and pair[1] in _HEX):
        raise ValueError("malformed percent-encoding")
    byte = int(pair, 16)
    return bytes((byte,)) if byte in _UNRESERVED else b"%" + pair.upper()


def remove_dot_segments(path: bytes) -> bytes:
    """RFC 3986 5.2.4 on an absolute path (it starts with ``/``)."""
    out: list[bytes] = []
    segments = path.split(b"/")[1:]
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == b"..":
            if out:
                out.pop()
            if last:
                out.append(b"")
        elif segment == b".":
            if last:
                out.append(b"")
        else:
            out.append(segment)
    return b"/" + b"/".join(out)


def canonical_path(path: bytes) -> bytes | None:
    """``normalize_path`` on a path without query; None if it cannot be normalized."""
    if not path.startswith(b"/"):
        return None
    try:
        decoded = _ESCAPE.sub(_decode, path) if b"%" in path else path
    except ValueError:
        return None
    return remove_dot_segments(decoded.replace(b"\\", b"/"))


class PathNormalizer:
    """One connection manager's path settings, compiled. Only built when one of them is on."""

    __slots__ = ("escaped_slashes", "merge_slashes", "normalize")

    def __init__(self, normalize: bool, merge_slashes: bool, escaped_slashes: str) -> None:
        self.normalize = normalize
        self.merge_slashes = merge_slashes
        self.escaped_slashes = escaped_slashes

    @staticmethod
    def needed(normalize: bool, merge_slashes: bool, escaped_slashes: str) -> bool:
        return normalize or merge_slashes or escaped_slashes not in ("", KEEP_UNCHANGED)

    def __call__(self, target: bytes) -> Result:
        path, sep, query = target.partition(b"?")
        redirect = False
        action = self.escaped_slashes
        if action not in ("", KEEP_UNCHANGED) and _ESCAPED_SLASH.search(path):
            if action == _REJECT:
                return Result(target, reject=True)
            path = _ESCAPED_SLASH.sub(_unescape_slash, path)
            redirect = action == _REDIRECT
        if self.normalize:
            canonical = canonical_path(path)
            if canonical is None:
                return Result(target, reject=True)
            path = canonical
        if self.merge_slashes and b"//" in path:
            path = _SLASHES.sub(b"/", path)
        return Result(path + sep + query, redirect=redirect)
