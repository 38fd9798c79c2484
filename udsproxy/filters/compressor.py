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

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from udsproxy.filters.base import (
    Headers,
    HttpFilter,
    Node,
    Outcome,
    Reporter,
    Runtime,
    header_value,
    state_of,
)
from udsproxy.filters.codecs import (
    GZIP_LEVELS,
    GZIP_STRATEGIES,
    BrotliCompressor,
    BrotliConfig,
    GzipCompressor,
    GzipConfig,
    brotli_available,
)

if TYPE_CHECKING:
    from udsproxy.router import CompiledRoute
    from udsproxy.stats.store import FilterStats
    from udsproxy.stream import Stream

__all__ = ["CompressorConfig", "CompressorFilter", "choose_encoding", "parse_compressor"]

FILTER_TYPE = "envoy.extensions.filters.http.compressor.v3.Compressor"
PER_ROUTE_TYPE = "envoy.extensions.filters.http.compressor.v3.CompressorPerRoute"
GZIP_TYPE = "envoy.extensions.compression.gzip.compressor.v3.Gzip"
BROTLI_TYPE = "envoy.extensions.compression.brotli.compressor.v3.Brotli"

# Envoy's default content types
DEFAULT_CONTENT_TYPES = (
    "application/javascript", "application/json", "application/xhtml+xml", "image/svg+xml",
    "text/css", "text/html", "text/plain", "text/xml",
)  # fmt: skip
_RESPONSE_STATS = (
    "compressed", "not_compressed", "total_uncompressed_bytes", "total_compressed_bytes",
    "content_length_too_small", "no_accept_header", "header_identity", "header_compressor_used",
    "header_compressor_overshadowed", "header_wildcard", "header_not_valid",
    "not_compressed_etag",
)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class CompressorConfig:
    library_name: str  # compressor_library.name: part of the stat prefix
    library: GzipConfig | BrotliConfig
    enabled: bool = True  # response_direction_config.common_config.enabled.default_value
    enabled_runtime_key: str = ""
    min_content_length: int = 30
    content_type: tuple[str, ...] = DEFAULT_CONTENT_TYPES
    disable_on_etag_header: bool = False
    weaken_etag_on_compress: bool = False
    remove_accept_encoding_header: bool = False
    uncompressible_response_codes: tuple[int, ...] = ()
    legacy_stats: bool = True  # no response_direction_config: stats without ".response"

    @property
    def encoding(self) -> str:
        return "gzip" if isinstance(self.library, GzipConfig) else "br"

    @property
    def stat_prefix(self) -> str:
        """compressor.<library name>.<library stat prefix>[.response]."""
        kind = "gzip" if isinstance(self.library, GzipConfig) else "brotli"
        tail = "" if self.legacy_stats else ".response"
        return f"compressor.{self.library_name}.{kind}{tail}."


def parse_compressor(conv: Reporter, node: Node, path: str) -> CompressorConfig | None:
    fields = (
        "compressor_library", "response_direction_config", "request_direction_config",
        "content_length", "content_type", "disable_on_etag_header",
        "remove_accept_encoding_header",
    )  # fmt: skip
    conv.only(node, path, fields)
    kw: dict[str, Any] = {}
    # deprecated top-level spellings of the response settings
    if "content_length" in node:
        kw["min_content_length"] = node["content_length"]
    if "content_type" in node:
        kw["content_type"] = tuple(node["content_type"])
    for key in ("disable_on_etag_header", "remove_accept_encoding_header"):
        if key in node:
            kw[key] = node[key]
    request = node.get("request_direction_config")
    if request is not None:
        request_path = f"{path}.request_direction_config"
        enabled = request.get("common_config", {}).get("enabled", {})
        if set(request) - {"common_config"} or enabled.get("default_value", True):
            conv.refuse(request_path, note="request compression; only responses are compressed")
    response = node.get("response_direction_config")
    if response is not None:
        kw["legacy_stats"] = False
        kw.update(_response_direction(conv, response, f"{path}.response_direction_config"))
    library_path = f"{path}.compressor_library"
    library = node.get("compressor_library")
    if library is None:
        conv.error(library_path, "is required")
        return None
    conv.only(library, library_path, ("name", "typed_config"))
    parsed = _library(conv, library.get("typed_config", {}), f"{library_path}.typed_config")
    if parsed is None:
        return None
    return CompressorConfig(library_name=library.get("name", ""), library=parsed, **kw)


def _response_direction(conv: Reporter, node: Node, path: str) -> dict[str, Any]:
    fields = (
        "common_config", "disable_on_etag_header", "weaken_etag_on_compress",
        "remove_accept_encoding_header", "uncompressible_response_codes",
    )  # fmt: skip
    conv.only(node, path, fields)
    kw: dict[str, Any] = {}
    for key in (
        "disable_on_etag_header",
        "weaken_etag_on_compress",
        "remove_accept_encoding_header",
    ):
        if key in node:
            kw[key] = node[key]
    if "uncompressible_response_codes" in node:
        kw["uncompressible_response_codes"] = tuple(node["uncompressible_response_codes"])
    common = node.get("common_config", {})
    common_path = f"{path}.common_config"
    conv.only(common, common_path, ("enabled", "min_content_length", "content_type"))
    if "min_content_length" in common:
        kw["min_content_length"] = common["min_content_length"]
    if "content_type" in common:
        kw["content_type"] = tuple(common["content_type"])
    if "enabled" in common:
        conv.only(common["enabled"], f"{common_path}.enabled", ("default_value", "runtime_key"))
        kw["enabled"] = bool(common["enabled"].get("default_value", False))
        kw["enabled_runtime_key"] = common["enabled"].get("runtime_key", "")
    return kw


def _library(conv: Reporter, node: Node, path: str) -> GzipConfig | BrotliConfig | None:
    kind = node.get("@type")
    if kind == GZIP_TYPE:
        fields = ("memory_level", "compression_level", "compression_strategy", "window_bits")
        conv.only(node, path, (*fields, "chunk_size"))  # chunk_size: zlib's buffer, no effect
        kw = {k: node[k] for k in fields if k in node}
        if kw.get("compression_level", GZIP_LEVELS[0]) not in GZIP_LEVELS:
            conv.error(f"{path}.compression_level", f"unknown level '{kw['compression_level']}'")
            return None
        if kw.get("compression_strategy", GZIP_STRATEGIES[0]) not in GZIP_STRATEGIES:
            conv.error(f"{path}.compression_strategy", "unknown strategy")
            return None
        return GzipConfig(**kw)
    if kind == BROTLI_TYPE:
        if not brotli_available():
            conv.refuse(path, f"compressor library '{kind}'", "the brotli package is not installed")
            return None
        fields = ("quality", "encoder_mode", "window_bits", "input_block_bits")
        conv.only(node, path, (*fields, "chunk_size", "disable_literal_context_modeling"))
        if node.get("disable_literal_context_modeling"):
            conv.refuse(f"{path}.disable_literal_context_modeling", "true")
        return BrotliConfig(**{k: node[k] for k in fields if k in node})
    conv.refuse(path, f"compressor library '{kind or ''}'", "only gzip and brotli")
    return None


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

    def encode_headers(self, s: Stream, code: int, headers: Headers, length: int) -> int:
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
        elif s.upstream is None or not s.upstream.resp_chunked:
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

    def decode_headers(self, s: Stream, route: CompiledRoute | None) -> Outcome:
        if route is not None and route.filter_configs.get(self.name):
            return None  # disabled on this route
        accept = header_value(s, b"accept-encoding")
        if self.config.remove_accept_encoding_header and accept is not None:
            s.headers[:] = [h for h in s.headers if h[0] != b"accept-encoding"]
        state_of(s).encoders.append(_Response(self, accept))
        return None


def parse_per_route(conv: Reporter, node: Node, path: str) -> bool:
    """CompressorPerRoute: ``disabled`` (the response compression of this route)."""
    conv.only(node, path, ("disabled",))
    return bool(node.get("disabled", False))
