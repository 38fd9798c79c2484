"""Route header mutations (``request_headers_to_add`` and the three others), compiled once.

Pure: no I/O. A header value without format commands becomes bytes at config time and costs no
formatting per request; one with commands (``%REQ(x)%``, ``%START_TIME%``...) is compiled by the
access-log formatter. As in Envoy, each level (route, virtual host, route configuration) first
removes its ``*_headers_to_remove``, then formats every value against the headers as they are at
that point, then applies the overwrites, then the appends; the next level sees the result. By
default the route is applied first and the route configuration last, so the least specific level
wins an overwrite; ``most_specific_header_mutations_wins`` reverses that.
"""

from __future__ import annotations

from collections.abc import Sequence

from udsproxy.accesslog.formatter import (
    FormatError,
    Formatter,
    command_names,
    compile_text,
    literal,
)
from udsproxy.config import schema
from udsproxy.streaminfo import StreamInfo

__all__ = [
    "APPEND_ACTIONS",
    "HeaderMutations",
    "Headers",
    "check_name",
    "check_option",
    "compile_mutations",
]

Headers = list[tuple[bytes, bytes]]

APPEND, ADD_IF_ABSENT, OVERWRITE_OR_ADD, OVERWRITE_IF_EXISTS = range(4)
APPEND_ACTIONS = {
    "APPEND_IF_EXISTS_OR_ADD": APPEND,
    "ADD_IF_ABSENT": ADD_IF_ABSENT,
    "OVERWRITE_IF_EXISTS_OR_ADD": OVERWRITE_OR_ADD,
    "OVERWRITE_IF_EXISTS": OVERWRITE_IF_EXISTS,
}

# udsproxy frames each message itself (and keeps the Host apart), so these are not the config's.
_FRAMING = frozenset(
    {"content-length", "transfer-encoding", "connection", "upgrade", "keep-alive", "te"}
)
# Commands that stand for nothing yet when Envoy evaluates request headers (before the response).
_NOT_IN_REQUEST = frozenset(
    {
        "RESP", "TRAILER", "RESPONSE_CODE", "RESPONSE_CODE_DETAILS", "RESPONSE_FLAGS",
        "RESPONSE_FLAGS_LONG", "BYTES_SENT", "RESPONSE_DURATION", "RESPONSE_TX_DURATION",
        "LOCAL_REPLY_BODY",
    }
)  # fmt: skip
_NOT_IN_RESPONSE = frozenset({"TRAILER", "LOCAL_REPLY_BODY"})  # trailers are not kept
_REFUSED = "not supported by udsproxy"


def check_name(name: str, *, removing: bool = False) -> str | None:
    """Why ``name`` cannot be mutated (Envoy's rule, then udsproxy's framing), or None."""
    lower = name.lower()
    if lower.startswith(":") or lower == "host":
        return f":-prefixed or host headers may not be {'removed' if removing else 'modified'}"
    if lower in _FRAMING:
        return f"header '{lower}' {_REFUSED} (udsproxy frames each message itself)"
    return None


def check_option(option: schema.HeaderValueOption, *, request: bool) -> str | None:
    """Why a header value cannot be used, or None: its name, and its format commands."""
    problem = check_name(option.key)
    if problem is not None:
        return problem
    if any(c in option.value for c in "\r\n\0"):
        return "header values may not contain CR, LF or NUL"
    try:
        names = command_names(option.value, "header value")
        _formatter(option.value)
    except FormatError as exc:
        return str(exc)
    refused = _NOT_IN_REQUEST if request else _NOT_IN_RESPONSE
    for name in names:
        if name in refused:
            side = "request" if request else "response"
            return f"%{name}% in a {side} header {_REFUSED} (it has no value there)"
    return None


def _formatter(value: str) -> Formatter:
    # Envoy formats header values omitting empty values: an unset command is "", not "-", so a
    # value that renders empty drops the header unless keep_empty_value.
    return compile_text(value, omit_empty_values=True, where="header value")


class _Add:
    __slots__ = ("action", "keep_empty", "name", "render", "value")

    def __init__(self, option: schema.HeaderValueOption) -> None:
        self.name = option.key.lower().encode()
        self.action = APPEND_ACTIONS[option.append_action]
        self.keep_empty = option.keep_empty_value
        self.value = literal(option.value)
        self.render = None if self.value is not None else _formatter(option.value).render


class _Level:
    """One level's removals and additions."""

    __slots__ = ("adds", "remove")

    def __init__(self, adds: Sequence[schema.HeaderValueOption], remove: Sequence[str]) -> None:
        self.remove = frozenset(name.lower().encode() for name in remove)
        self.adds = tuple(_Add(option) for option in adds)

    def apply(self, headers: Headers, info: StreamInfo) -> None:
        remove = self.remove
        if remove:
            headers[:] = [h for h in headers if h[0] not in remove]  # in place: info reads it
        overwrites: Headers = []
        appends: Headers = []
        for add in self.adds:
            value = add.value
            if value is None:
                assert add.render is not None
                value = add.render(info)
            if not value and not add.keep_empty:
                continue
            action = add.action
            if action == APPEND:
                appends.append((add.name, value))
            elif action == OVERWRITE_OR_ADD:
                overwrites.append((add.name, value))
            else:
                present = any(h[0] == add.name for h in headers)
                if action == ADD_IF_ABSENT and not present:
                    appends.append((add.name, value))
                elif action == OVERWRITE_IF_EXISTS and present:
                    overwrites.append((add.name, value))
        for name, value in overwrites:
            headers[:] = [h for h in headers if h[0] != name]
            headers.append((name, value))
        headers += appends

    @property
    def plain_appends(self) -> Headers | None:
        """The headers this level adds if it only appends fixed values, else None."""
        if self.remove:
            return None
        out: Headers = []
        for add in self.adds:
            if add.action != APPEND or add.value is None:
                return None
            if add.value or add.keep_empty:
                out.append((add.name, add.value))
        return out


class HeaderMutations:
    """One direction's mutations of a route, its virtual host and its route configuration."""

    __slots__ = ("levels", "plain")

    def __init__(self, levels: Sequence[_Level]) -> None:
        self.levels = tuple(levels)
        plain: Headers = []
        for level in self.levels:
            adds = level.plain_appends
            if adds is None:
                self.plain: tuple[tuple[bytes, bytes], ...] | None = None
                break
            plain += adds
        else:
            self.plain = tuple(plain)  # fixed values only: one extend per request

    def apply(self, headers: Headers, info: StreamInfo) -> None:
        """Mutate ``headers`` in place (the list the access log reads)."""
        if self.plain is not None:
            headers += self.plain
            return
        for level in self.levels:
            level.apply(headers, info)


def compile_mutations(
    levels: Sequence[tuple[Sequence[schema.HeaderValueOption], Sequence[str]]],
    *,
    most_specific_wins: bool = False,
    skip: frozenset[str] = frozenset(),
) -> HeaderMutations | None:
    """``levels``: (headers_to_add, headers_to_remove) from the most specific (route) to the
    least (route configuration). None if there is nothing to do, so the data path tests one
    attribute. Names in ``skip`` are dropped (headers something else sets afterwards anyway)."""
    compiled = []
    for adds, remove in levels:
        adds = [a for a in adds if a.key.lower() not in skip]
        remove = [r for r in remove if r.lower() not in skip]
        if adds or remove:
            compiled.append(_Level(adds, remove))
    if not compiled:
        return None
    if most_specific_wins:
        compiled.reverse()
    return HeaderMutations(compiled)
