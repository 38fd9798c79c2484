"""envoy.filters.http.compressor: compress response bodies (gzip, or brotli) as they stream.

Negotiation follows Envoy: the request's ``accept-encoding`` with q-values picks the encoding
(``identity`` or ``q=0`` means no), the response must have a body, a content-length of at least
``min_content_length`` (or chunked framing), an allowed content-type, no content-encoding, no
``cache-control: no-transform``, and (with ``disable_on_etag_header``) no etag. A compressed
response loses its content-length (chunked to HTTP/1.1 clients), gains ``content-encoding`` and
``vary: Accept-Encoding``, and a strong etag is removed (or weakened). Request compression
(``request_direction_config``) is not implemented.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from udsproxy.config.filter_schema import CompressorConfig, GzipConfig
from udsproxy.filters.base import Headers, HttpFilter, Outcome, Runtime, header_value, state_of
from udsproxy.filters.codecs import BrotliCompressor, GzipCompressor

if TYPE_CHECKING:
    from udsproxy.filters.base import FilterCallbacks
    from udsproxy.router.routes import CompiledRoute
    from udsproxy.stats.store import FilterStats

__all__ = ["CompressorFilter", "choose_encoding"]


_RESPONSE_STATS = (
    "compressed", "not_compressed", "total_uncompressed_bytes", "total_compressed_bytes",
    "content_length_too_small", "no_accept_header", "header_identity", "header_compressor_used",
    "header_compressor_overshadowed", "header_wildcard", "header_not_valid",
    "not_compressed_etag",
)  # fmt: skip


def _qvalue(params: str) -> float | None:
    """The q of ``;q=0.5`` parameters (1 when absent); None when it does not parse."""
    for param in params.split(";"):
        key, eq, value = param.partition("=")
        if eq and key.strip().lower() == "q":
            try:
                return float(value.strip())
            except ValueError:
                return None
    return 1.0


def choose_encoding(accept: str, available: frozenset[str]) -> tuple[str, str]:
    """Envoy's choice: (encoding or "", the stat that explains it)."""
    pairs: list[tuple[str, float]] = []
    allowed = set(available)
    for token in accept.split(","):
        name, _, params = token.partition(";")
        name = name.strip().lower()
        if not name:
            continue
        q = _qvalue(params)
        if q is None:
            continue
        pairs.append((name, q))
        if not q:
            allowed.discard(name)  # "gzip;q=0": never gzip
    if not pairs or not allowed:
        return "", "header_not_valid"
    best, best_q = "", 0.0
    for name, q in pairs:
        if q > best_q and (name in allowed or name in ("identity", "*")):
            best, best_q = name, q
    if not best_q:
        return "", "header_not_valid"
    if best == "identity":
        return "", "header_identity"
    if best == "*":
        return min(allowed), "header_wildcard"
    return best, "header_compressor_used"


class _Response:
    """One request's compressor: what the request accepted, applied to the response headers."""

    __slots__ = ("accept", "filter")
    on_local_reply = False

    def __init__(self, f: CompressorFilter, accept: bytes | None) -> None:
        self.filter = f
        self.accept = accept

    def encode_headers(self, s: FilterCallbacks, code: int, headers: Headers, length: int) -> int:
        f = self.filter
        config = f.config
        stats = f.counters
        if s.is_head or code in (204, 304) or s.resp_coder is not None or s.upgrade is not None:
            return length  # no body to compress (Envoy: headers with end_stream)
        if config.enabled_runtime_key:
            enabled = f.runtime.integer(config.enabled_runtime_key, int(config.enabled))
        else:
            enabled = config.enabled
        if not enabled:
            return length
        if length >= 0:
            if length < config.min_content_length:
                stats["content_length_too_small"] += 1
                return length
        elif not s.upstream_chunked:
            return length  # neither content-length nor chunked: Envoy leaves it
        content_type = b""
        etag_at = -1
        for i, (name, value) in enumerate(headers):
            if name == b"content-encoding":
                return length
            if name == b"cache-control" and b"no-transform" in value.lower():
                return length
            if name == b"content-type":
                content_type = value
            elif name == b"etag":
                etag_at = i
        if content_type and not f.content_type_allowed(content_type):
            return length
        if etag_at >= 0 and config.disable_on_etag_header:
            stats["not_compressed_etag"] += 1
            return length
        if code in config.uncompressible_response_codes:
            return length
        _add_vary(headers)
        if self.accept is None:
            stats["no_accept_header"] += 1
            stats["not_compressed"] += 1
            return length
        encoding, why = choose_encoding(self.accept.decode("latin-1"), f.chain_encodings)
        if encoding and encoding != config.encoding:
            why = "header_compressor_overshadowed"
        stats[why] += 1
        if encoding != config.encoding:
            stats["not_compressed"] += 1
            return length
        stats["compressed"] += 1
        if etag_at >= 0:
            _sanitize_etag(headers, etag_at, config.weaken_etag_on_compress)
        headers.append((b"content-encoding", f.encoding))
        s.resp_coder = f.coder()
        return -1


def _add_vary(headers: Headers) -> None:
    for i, (name, value) in enumerate(headers):
        if name == b"vary":
            if b"accept-encoding" not in value.lower() and value.strip() != b"*":
                headers[i] = (name, value + b", Accept-Encoding")
            return
    headers.append((b"vary", b"Accept-Encoding"))


def _sanitize_etag(headers: Headers, i: int, weaken: bool) -> None:
    value = headers[i][1]
    if value[:2] in (b"W/", b"w/"):
        return
    if weaken:
        headers[i] = (b"etag", b"W/" + value)
    else:
        del headers[i]  # a strong etag promises the exact bytes, which are no longer sent


class CompressorFilter(HttpFilter):
    def __init__(
        self, name: str, config: CompressorConfig, runtime: Runtime, stats: FilterStats
    ) -> None:
        self.name = name
        self.config = config
        self.runtime = runtime
        self.counters = stats.counter_set(*_RESPONSE_STATS)
        self.encoding = config.encoding.encode()
        self.content_types = frozenset(t.lower().encode() for t in config.content_type)
        # every compressor encoding of the chain: another filter's choice "overshadows" this one
        self.chain_encodings: frozenset[str] = frozenset({config.encoding})

    def coder(self) -> GzipCompressor | BrotliCompressor:
        library = self.config.library
        if isinstance(library, GzipConfig):
            return GzipCompressor(library, self.counters)
        return BrotliCompressor(library, self.counters)

    def content_type_allowed(self, value: bytes) -> bool:
        return value.partition(b";")[0].strip().lower() in self.content_types

    def compile_route(self, configs: tuple[Any, ...]) -> bool:
        return bool(configs[0])  # CompressorPerRoute.disabled of the most specific level

    def decode_headers(self, s: FilterCallbacks, route: CompiledRoute | None) -> Outcome:
        if route is not None and route.filter_configs.get(self.name):
            return None  # disabled on this route
        accept = header_value(s, b"accept-encoding")
        if self.config.remove_accept_encoding_header and accept is not None:
            s.headers[:] = [h for h in s.headers if h[0] != b"accept-encoding"]
        state_of(s).encoders.append(_Response(self, accept))
        return None
