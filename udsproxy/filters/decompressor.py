"""envoy.filters.http.decompressor (gzip): inflate request bodies (on by default) and response
bodies (off by default) whose ``content-encoding`` names gzip, as they stream.

The decompressed message loses its content-length (a request goes upstream chunked) and gzip
from its content-encoding. With response decompression on, ``advertise_accept_encoding`` (default
true) appends gzip to the request's accept-encoding. Stats:
``http.<stat_prefix>.decompressor.<library name>.gzip.<request|response>.*``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from udsproxy.config.filter_schema import DecompressorConfig, Direction
from udsproxy.filters.base import Headers, HttpFilter, Outcome, Runtime, state_of
from udsproxy.filters.codecs import GzipDecompressor

if TYPE_CHECKING:
    from udsproxy.filters.base import FilterCallbacks
    from udsproxy.router.routes import CompiledRoute
    from udsproxy.stats.store import FilterStats

__all__ = ["DecompressorFilter"]

_STATS = (
    "decompressed", "not_decompressed", "total_uncompressed_bytes", "total_compressed_bytes",
    "zlib_data_error",
)  # fmt: skip


def _strip_gzip(headers: Headers, i: int) -> None:
    """Remove the gzip coding (the first listed, as Envoy does) from content-encoding ``i``."""
    rest = headers[i][1].split(b",", 1)
    if len(rest) > 1 and rest[1].strip():
        headers[i] = (b"content-encoding", rest[1].strip())
    else:
        del headers[i]


def _gzip_at(headers: Headers) -> int:
    for i, (name, value) in enumerate(headers):
        if name == b"content-encoding":
            return i if value.split(b",", 1)[0].strip().lower() == b"gzip" else -1
    return -1


def _no_transform(headers: Headers) -> bool:
    return any(n == b"cache-control" and b"no-transform" in v.lower() for n, v in headers)


class _Response:
    __slots__ = ("filter",)
    on_local_reply = False

    def __init__(self, f: DecompressorFilter) -> None:
        self.filter = f

    def encode_headers(self, s: FilterCallbacks, code: int, headers: Headers, length: int) -> int:
        f = self.filter
        if s.is_head or code in (204, 304) or s.resp_coder is not None:
            return length
        at = _gzip_at(headers)
        direction = f.config.response
        if at < 0 or (not direction.ignore_no_transform_header and _no_transform(headers)):
            f.response_stats["not_decompressed"] += 1
            return length
        _strip_gzip(headers, at)
        f.response_stats["decompressed"] += 1
        s.resp_coder = GzipDecompressor(f.config.library, f.response_stats, s.buffer_limit)
        return -1


class DecompressorFilter(HttpFilter):
    def __init__(
        self,
        name: str,
        config: DecompressorConfig,
        runtime: Runtime,
        request_stats: FilterStats,
        response_stats: FilterStats,
    ) -> None:
        self.name = name
        self.config = config
        self.runtime = runtime
        self.request_stats = request_stats.counter_set(*_STATS)
        self.response_stats = response_stats.counter_set(*_STATS)
        self.encoder = _Response(self)

    def _enabled(self, direction: Direction) -> bool:
        if direction.runtime_key:
            return bool(self.runtime.integer(direction.runtime_key, int(direction.enabled)))
        return direction.enabled

    def decode_headers(self, s: FilterCallbacks, route: CompiledRoute | None) -> Outcome:
        config = self.config
        if self._enabled(config.response):
            state_of(s).encoders.append(self.encoder)
            if config.advertise_accept_encoding:
                _advertise(s)
        if self._enabled(config.request) and (s.req_cl > 0 or s.req_chunked):
            self._request(s)
        return None

    def _request(self, s: FilterCallbacks) -> None:
        headers = s.headers
        at = _gzip_at(headers)
        stats = self.request_stats
        if at < 0 or (
            not self.config.request.ignore_no_transform_header and _no_transform(headers)
        ):
            stats["not_decompressed"] += 1
            return
        _strip_gzip(headers, at)
        stats["decompressed"] += 1
        coder = GzipDecompressor(self.config.library, stats, s.buffer_limit)
        s.req_chunked = True  # the length changes: chunked upstream (and never spliced)
        if s.body:
            # What arrived before the stream started (a pipelined request): it stays compressed
            # in the coder and is inflated a piece at a time as the upstream takes it.
            for chunk in s.take_held_body():
                coder.feed(chunk)
        s.req_coder = coder


def _advertise(s: FilterCallbacks) -> None:
    headers = s.headers
    for i, (name, value) in enumerate(headers):
        if name == b"accept-encoding":
            if b"gzip" not in value.lower():
                headers[i] = (name, value + b", gzip")
            return
    headers.append((b"accept-encoding", b"gzip"))
