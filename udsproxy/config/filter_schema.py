"""The http filters' configs (``http_filters`` and ``typed_per_filter_config``) as frozen
dataclasses: what ``config.convert_filters`` makes of the validated tree and what
``udsproxy.filters`` (the data path) compiles. Pure data, no behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass

from udsproxy.config.schema import HeaderMatcher, HeaderValueOption, StringMatcher

# typed_config @types
CORS_TYPE = "envoy.extensions.filters.http.cors.v3.Cors"
CORS_POLICY_TYPE = "envoy.extensions.filters.http.cors.v3.CorsPolicy"
CORS_LEGACY_KEY = "cors"
FAULT_TYPE = "envoy.extensions.filters.http.fault.v3.HTTPFault"
COMPRESSOR_TYPE = "envoy.extensions.filters.http.compressor.v3.Compressor"
COMPRESSOR_PER_ROUTE_TYPE = "envoy.extensions.filters.http.compressor.v3.CompressorPerRoute"
GZIP_COMPRESSOR_TYPE = "envoy.extensions.compression.gzip.compressor.v3.Gzip"
BROTLI_COMPRESSOR_TYPE = "envoy.extensions.compression.brotli.compressor.v3.Brotli"
DECOMPRESSOR_TYPE = "envoy.extensions.filters.http.decompressor.v3.Decompressor"
GZIP_DECOMPRESSOR_TYPE = "envoy.extensions.compression.gzip.decompressor.v3.Gzip"
RBAC_TYPE = "envoy.extensions.filters.http.rbac.v3.RBAC"
RBAC_PER_ROUTE_TYPE = "envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
RBAC_ACTION_TYPE = "envoy.config.rbac.v3.Action"
HEADER_INPUT_TYPE = "envoy.type.matcher.v3.HttpRequestHeaderMatchInput"
CSRF_TYPE = "envoy.extensions.filters.http.csrf.v3.CsrfPolicy"
LOCAL_RATELIMIT_TYPE = "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
BUFFER_TYPE = "envoy.extensions.filters.http.buffer.v3.Buffer"
BUFFER_PER_ROUTE_TYPE = "envoy.extensions.filters.http.buffer.v3.BufferPerRoute"


@dataclass(frozen=True, slots=True, kw_only=True)
class Fraction:
    """A FractionalPercent, or a RuntimeFractionalPercent when ``runtime_key`` is set."""

    numerator: int
    denominator: int = 100
    runtime_key: str = ""


# zlib parameters by their Envoy names (codecs maps them to zlib constants)
GZIP_LEVELS = (
    "DEFAULT_COMPRESSION", "BEST_SPEED", "BEST_COMPRESSION",
    *(f"COMPRESSION_LEVEL_{n}" for n in range(1, 10)),
)  # fmt: skip
GZIP_STRATEGIES = ("DEFAULT_STRATEGY", "FILTERED", "HUFFMAN_ONLY", "RLE", "FIXED")


@dataclass(frozen=True, slots=True, kw_only=True)
class GzipConfig:
    """envoy.extensions.compression.gzip.compressor.v3.Gzip (Envoy's defaults)."""

    memory_level: int = 5
    compression_level: str = "DEFAULT_COMPRESSION"
    compression_strategy: str = "DEFAULT_STRATEGY"
    window_bits: int = 12


@dataclass(frozen=True, slots=True, kw_only=True)
class BrotliConfig:
    """envoy.extensions.compression.brotli.compressor.v3.Brotli (Envoy's defaults)."""

    quality: int = 3
    encoder_mode: str = "DEFAULT"
    window_bits: int = 18
    input_block_bits: int = 24


@dataclass(frozen=True, slots=True, kw_only=True)
class GzipDecompressorConfig:
    """envoy.extensions.compression.gzip.decompressor.v3.Gzip (Envoy's defaults)."""

    window_bits: int = 15
    chunk_size: int = 4096
    max_inflate_ratio: int = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class Cors:
    """The filter's own config (``cors.v3.Cors``): empty, the policies are per route."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CorsPolicy:
    allow_origin_string_match: tuple[StringMatcher, ...] = ()
    allow_methods: str = ""
    allow_headers: str = ""
    expose_headers: str = ""
    max_age: str = ""
    allow_credentials: bool | None = None
    filter_enabled: Fraction | None = None  # None: enabled
    shadow_enabled: Fraction | None = None  # None: off
    allow_private_network_access: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultConfig:
    """HTTPFault (also its per-route form: the same message in typed_per_filter_config)."""

    delay_ms: int | None = None  # fixed_delay; None: header_delay or no delay
    header_delay: bool = False
    delay_percentage: Fraction | None = None  # None: no delay block
    abort_status: int | None = None  # http_status; None: header_abort or no abort
    header_abort: bool = False
    abort_percentage: Fraction | None = None  # None: no abort block
    upstream_cluster: str = ""
    headers: tuple[HeaderMatcher, ...] = ()
    max_active_faults: int | None = None


DEFAULT_CONTENT_TYPES = (
    "application/javascript", "application/json", "application/xhtml+xml", "image/svg+xml",
    "text/css", "text/html", "text/plain", "text/xml",
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


@dataclass(frozen=True, slots=True, kw_only=True)
class Direction:
    enabled: bool
    runtime_key: str = ""
    ignore_no_transform_header: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class DecompressorConfig:
    library_name: str
    library: GzipDecompressorConfig
    request: Direction = Direction(enabled=True)
    response: Direction = Direction(enabled=True)
    advertise_accept_encoding: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """A permission or principal (or a matcher predicate): ``kind`` names its field."""

    kind: str  # any, header, url_path, ip, direct_ip, port, dest_ip, and, or, not
    header: HeaderMatcher | None = None
    string: StringMatcher | None = None
    cidr: str = ""
    port: int = 0
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    name: str
    permissions: tuple[Rule, ...]
    principals: tuple[Rule, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Rules:
    """config.rbac.v3.RBAC: ALLOW (allowed when a policy matches) or DENY."""

    action: str = "ALLOW"
    policies: tuple[Policy, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class MatcherCase:
    predicate: Rule
    name: str  # the rbac Action's name: the "policy" of the response details
    allow: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class MatcherRules:
    """The ``matcher`` form: the first case whose predicate matches decides, else on_no_match."""

    cases: tuple[MatcherCase, ...] = ()
    no_match: tuple[str, bool] | None = None  # (name, allow); None: allowed


@dataclass(frozen=True, slots=True, kw_only=True)
class Rbac:
    rules: Rules | MatcherRules | None = None  # None: nothing enforced
    shadow_rules: Rules | None = None
    rules_stat_prefix: str = ""
    shadow_rules_stat_prefix: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CsrfPolicy:
    filter_enabled: Fraction
    shadow_enabled: Fraction | None = None
    additional_origins: tuple[StringMatcher, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalRateLimit:
    """local_ratelimit's LocalRateLimit (also its per-route form: the same message in
    typed_per_filter_config, where token_bucket is required)."""

    stat_prefix: str
    # token_bucket; fill_interval 0 (no token_bucket): no bucket, every request is allowed
    max_tokens: int = 0
    tokens_per_fill: int = 1
    fill_interval: float = 0.0  # seconds
    filter_enabled: Fraction | None = None  # None: 0%, the bucket is never consulted
    filter_enforced: Fraction | None = None  # None: 0%, no request is refused
    status: int = 429
    response_headers_to_add: tuple[HeaderValueOption, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class BufferConfig:
    """envoy.filters.http.buffer: the whole request body is held before the router goes on."""

    max_request_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BufferPerRoute:
    """BufferPerRoute: ``disabled``, or another ``buffer`` for the route."""

    disabled: bool = False
    buffer: BufferConfig | None = None
