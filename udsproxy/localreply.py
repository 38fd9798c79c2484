"""``local_reply_config``: rewrite the proxy's own replies, compiled once. Pure: no I/O.

As in Envoy (``LocalReplyImpl::rewrite``): the mappers are tried in order against the reply as it
stands (its status in ``response_code``, the request's headers, the response flags); the first
whose filter matches may replace the body, add headers, change the status, and choose the body
format. Then the body format renders the body (``%LOCAL_REPLY_BODY%`` is the body so far). With no
format, the body stays as it is, as ``text/plain``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from udsproxy.accesslog.formatter import Formatter, compile_json, compile_text
from udsproxy.config import schema
from udsproxy.flags import ResponseFlag
from udsproxy.headermatch import HeaderMatch
from udsproxy.headers import HeaderMutations, compile_mutations
from udsproxy.runtime import Runtime
from udsproxy.streaminfo import StreamInfo

__all__ = ["BodyFormat", "LocalReplyRewriter", "compile_filter"]

Filter = Callable[[StreamInfo], bool]
TEXT_PLAIN = b"text/plain"


def _compare(
    op: str, value: int, get: Callable[[StreamInfo], int], key: str, runtime: Runtime | None
) -> Filter:
    live = runtime if key else None  # the runtime may set the value, and change it later

    def threshold() -> int:
        return value if live is None else live.integer(key, value)

    if op == "GE":
        return lambda i: get(i) >= threshold()
    if op == "LE":
        return lambda i: get(i) <= threshold()
    return lambda i: get(i) == threshold()


def _duration_ms(i: StreamInfo) -> int:
    end = i.end_mono if i.end_mono is not None else time.monotonic()
    return int((end - i.start_mono) * 1000)


def compile_filter(f: schema.AccessLogFilter, runtime: Runtime | None = None) -> Filter:
    """An AccessLogFilter tree as one callable on the stream."""
    kind = f.kind
    if kind == "status_code":
        return _compare(f.op, f.value, lambda i: i.response_code, f.runtime_key, runtime)
    if kind == "duration":
        return _compare(f.op, f.value, _duration_ms, f.runtime_key, runtime)
    if kind == "header":
        assert f.header is not None
        return HeaderMatch(f.header).match
    if kind == "response_flag":
        mask = 0
        for name in f.flags:
            mask |= ResponseFlag[name]
        if not mask:  # no flags listed: any flag
            return lambda i: i.response_flags != 0
        return lambda i: bool(i.response_flags & mask)
    subs = tuple(compile_filter(x, runtime) for x in f.filters)
    if kind == "and":
        return lambda i: all(s(i) for s in subs)
    if kind == "or":
        return lambda i: any(s(i) for s in subs)
    if kind == "not_health_check":
        return lambda i: True  # udsproxy has no health check filter: no request is one
    raise ValueError(f"unknown access log filter '{kind}'")


class BodyFormat:
    """A SubstitutionFormatString for local reply bodies."""

    __slots__ = ("content_type", "formatter")

    def __init__(self, fmt: schema.SubstitutionFormat) -> None:
        self.formatter: Formatter
        if fmt.json_format is not None:
            self.formatter = compile_json(fmt.json_format, omit_empty_values=fmt.omit_empty_values)
            default_type = "application/json"
        else:
            self.formatter = compile_text(
                fmt.text_format or "%LOCAL_REPLY_BODY%",
                omit_empty_values=fmt.omit_empty_values,
                where="local reply body format",
            )
            default_type = "text/plain"
        self.content_type = (fmt.content_type or default_type).encode()

    def render(self, info: StreamInfo) -> bytes:
        return self.formatter.render(info)


class _Mapper:
    __slots__ = ("body", "body_format", "headers", "match", "status_code")

    def __init__(
        self,
        m: schema.ResponseMapper,
        read: Callable[[schema.DataSource], bytes],
        runtime: Runtime | None,
    ):
        self.match = compile_filter(m.filter, runtime)
        self.status_code = m.status_code
        self.body = None if m.body is None else read(m.body)
        self.body_format = (
            None if m.body_format_override is None else BodyFormat(m.body_format_override)
        )
        self.headers: HeaderMutations | None = compile_mutations([(m.headers_to_add, ())])


class LocalReplyRewriter:
    """One listener's local_reply_config."""

    __slots__ = ("body_format", "mappers")

    def __init__(
        self,
        config: schema.LocalReplyConfig,
        read: Callable[[schema.DataSource], bytes],
        runtime: Runtime | None = None,
    ) -> None:
        """``read`` turns a mapper's body (a DataSource) into bytes, once; ``runtime`` gives
        the filters' runtime keys their values."""
        self.mappers = tuple(_Mapper(m, read, runtime) for m in config.mappers)
        self.body_format = None if config.body_format is None else BodyFormat(config.body_format)

    def rewrite(
        self, info: StreamInfo, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[bytes, bytes]:
        """Rewrite a local reply whose status is ``info.response_code`` and whose headers so
        far are ``headers`` (``info.response_headers``, mutated in place). Returns the body and
        its content type; the status may have changed in ``info.response_code``."""
        body_format = self.body_format
        for mapper in self.mappers:
            if not mapper.match(info):
                continue
            if mapper.body is not None:
                body = mapper.body
            if mapper.headers is not None:
                mapper.headers.apply(headers, info)
            if mapper.status_code is not None:
                info.response_code = mapper.status_code
            if mapper.body_format is not None:
                body_format = mapper.body_format
            break
        info.local_reply_body = body
        if body_format is None:
            return body, TEXT_PLAIN
        return body_format.render(info), body_format.content_type
