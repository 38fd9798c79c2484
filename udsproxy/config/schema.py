"""udsproxy's own config model: frozen dataclasses holding only what udsproxy implements.

The user's YAML is validated against Envoy's v3 API (``config.validate``) and then converted once
(``config.convert``) into these types. Field names are Envoy's YAML names so they grep 1:1.
Durations are float seconds; 0.0 means "disabled" where Envoy says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_BUFFER_LIMIT",
    "DEFAULT_UPSTREAM_IDLE_TIMEOUT",
    "AccessLog",
    "AccessLogFilter",
    "Address",
    "Admin",
    "Bootstrap",
    "CircuitBreakerThresholds",
    "Cluster",
    "ConnectionLimit",
    "DataSource",
    "DirectResponse",
    "DownstreamTls",
    "DynamicResources",
    "Endpoint",
    "HeaderMatcher",
    "HeaderValueOption",
    "HealthCheck",
    "HttpConnectionManager",
    "HttpFilter",
    "Listener",
    "LocalReplyConfig",
    "Locality",
    "OutlierDetection",
    "PathConfigSource",
    "Pipe",
    "RequestMirrorPolicy",
    "ResponseMapper",
    "RetryPolicy",
    "Route",
    "RouteAction",
    "RouteConfiguration",
    "RouteMatch",
    "RuntimeLayer",
    "SanMatcher",
    "SocketAddress",
    "StringMatcher",
    "SubstitutionFormat",
    "TlsCertificate",
    "UpgradeConfig",
    "UpstreamTls",
    "VirtualHost",
]

DEFAULT_BUFFER_LIMIT = 1024 * 1024
# Deviation from Envoy (1 h): below nginx's 75 s keepalive_timeout, so the proxy closes an idle
# upstream connection before nginx does and never races a request into a closing socket (503 UC).
DEFAULT_UPSTREAM_IDLE_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SocketAddress:
    address: str
    port_value: int

    def __str__(self) -> str:
        if ":" in self.address:
            return f"[{self.address}]:{self.port_value}"
        return f"{self.address}:{self.port_value}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Pipe:
    """A Unix domain socket. ``path`` keeps Envoy's spelling: ``@name`` is abstract."""

    path: str
    mode: int = 0

    @property
    def abstract(self) -> bool:
        return self.path.startswith("@")

    @property
    def sockaddr(self) -> str:
        """What to hand to connect()/bind(): abstract names start with NUL."""
        return "\0" + self.path[1:] if self.abstract else self.path

    def __str__(self) -> str:
        return self.path


Address = SocketAddress | Pipe


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessLog:
    """envoy.access_loggers.file. Exactly one of text_format / json_format is set, or neither
    (then Envoy's default format applies)."""

    path: str
    text_format: str | None = None
    # json_format keeps the user's nesting; leaves are format strings or typed literals.
    json_format: dict[str, object] | None = None
    omit_empty_values: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class UpgradeConfig:
    upgrade_type: str  # compared case-insensitively
    enabled: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteMatch:
    """Exactly one of prefix / path / safe_regex is set."""

    prefix: str | None = None
    path: str | None = None
    safe_regex: str | None = None
    case_sensitive: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderValueOption:
    """One entry of a ``*_headers_to_add`` list. ``value`` may hold Envoy format commands
    (``%REQ(x)%``, ``%START_TIME%``...), compiled once by ``udsproxy.headers``."""

    key: str  # lower case
    value: str = ""
    # APPEND_IF_EXISTS_OR_ADD | ADD_IF_ABSENT | OVERWRITE_IF_EXISTS_OR_ADD | OVERWRITE_IF_EXISTS
    append_action: str = "APPEND_IF_EXISTS_OR_ADD"
    keep_empty_value: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectResponse:
    """A route's direct_response: the proxy answers itself, with no upstream."""

    status: int
    body: DataSource | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """envoy.config.route.v3.RetryPolicy (a route's, or its virtual host's)."""

    retry_on: tuple[str, ...] = ()  # the comma-separated conditions, split
    num_retries: int = 1
    per_try_timeout: float = 0.0  # 0: none
    retry_back_off: tuple[float, float] | None = None  # (base_interval, max_interval)
    retriable_status_codes: tuple[int, ...] = ()
    retriable_request_headers: tuple[HeaderMatcher, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreakerThresholds:
    """envoy.config.cluster.v3.CircuitBreakers.Thresholds (Envoy's defaults)."""

    priority: str = "DEFAULT"
    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 3
    track_remaining: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestMirrorPolicy:
    """RouteAction.RequestMirrorPolicy: one shadow copy of the route's requests. The runtime
    fraction is kept as its parts (filter_schema.Fraction sits above this module)."""

    cluster: str
    numerator: int = 100  # no runtime_fraction: every request (Envoy)
    denominator: int = 100
    runtime_key: str = ""
    disable_shadow_host_suffix_append: bool = False
    host_rewrite_literal: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteAction:
    cluster: str
    retry_policy: RetryPolicy | None = None
    timeout: float = 15.0  # 0 disables
    idle_timeout: float | None = None  # overrides the HCM's stream_idle_timeout; 0 disables
    prefix_rewrite: str | None = None
    upgrade_configs: tuple[UpgradeConfig, ...] = ()
    host_rewrite_literal: str | None = None
    auto_host_rewrite: bool = False
    host_rewrite_header: str | None = None  # lower case
    append_x_forwarded_host: bool = False
    request_mirror_policies: tuple[RequestMirrorPolicy, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    name: str = ""
    match: RouteMatch
    route: RouteAction | None = None  # exactly one of route / direct_response is set
    direct_response: DirectResponse | None = None
    request_headers_to_add: tuple[HeaderValueOption, ...] = ()
    request_headers_to_remove: tuple[str, ...] = ()
    response_headers_to_add: tuple[HeaderValueOption, ...] = ()
    response_headers_to_remove: tuple[str, ...] = ()
    typed_per_filter_config: tuple[HttpFilter, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class VirtualHost:
    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...] = ()
    # typed_per_filter_config, and the legacy ``cors`` as the cors filter's entry
    typed_per_filter_config: tuple[HttpFilter, ...] = ()
    request_headers_to_add: tuple[HeaderValueOption, ...] = ()
    request_headers_to_remove: tuple[str, ...] = ()
    response_headers_to_add: tuple[HeaderValueOption, ...] = ()
    response_headers_to_remove: tuple[str, ...] = ()
    retry_policy: RetryPolicy | None = None  # for its routes that have none
    include_request_attempt_count: bool = False  # x-envoy-attempt-count upstream
    include_attempt_count_in_response: bool = False  # and downstream


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteConfiguration:
    name: str = ""
    virtual_hosts: tuple[VirtualHost, ...] = ()
    request_headers_to_add: tuple[HeaderValueOption, ...] = ()
    request_headers_to_remove: tuple[str, ...] = ()
    response_headers_to_add: tuple[HeaderValueOption, ...] = ()
    response_headers_to_remove: tuple[str, ...] = ()
    # False: route, then virtual host, then route configuration, so the least specific wins
    most_specific_header_mutations_wins: bool = False
    max_direct_response_body_size_bytes: int = 4096


@dataclass(frozen=True, slots=True, kw_only=True)
class StringMatcher:
    """envoy.type.matcher.v3.StringMatcher: exactly one of exact / prefix / suffix / contains /
    safe_regex is set. ``ignore_case`` does not apply to safe_regex (Envoy)."""

    exact: str | None = None
    prefix: str | None = None
    suffix: str | None = None
    contains: str | None = None
    safe_regex: str | None = None
    ignore_case: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderMatcher:
    """envoy.config.route.v3.HeaderMatcher. At most one of exact / prefix / suffix / contains /
    safe_regex / present / range is set; none means "present"."""

    name: str  # lower case; pseudo-headers (":method") allowed
    exact: str | None = None
    prefix: str | None = None
    suffix: str | None = None
    contains: str | None = None
    safe_regex: str | None = None
    present: bool | None = None
    range: tuple[int, int] | None = None  # [start, end)
    ignore_case: bool = False
    invert_match: bool = False
    treat_missing_header_as_empty: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessLogFilter:
    """One node of an envoy.config.accesslog.v3.AccessLogFilter tree (local_reply_config)."""

    kind: str  # status_code | duration | header | response_flag | and | or | not_health_check
    op: str = "EQ"  # status_code / duration: EQ | GE | LE
    value: int = 0  # status_code, or duration in ms: the default_value
    runtime_key: str = ""  # a runtime key that overrides value when it is set
    header: HeaderMatcher | None = None
    flags: tuple[str, ...] = ()  # response_flag: short names; () means any flag
    filters: tuple[AccessLogFilter, ...] = ()  # and / or


@dataclass(frozen=True, slots=True, kw_only=True)
class SubstitutionFormat:
    """A SubstitutionFormatString (local reply bodies): text or JSON, and its content type."""

    text_format: str | None = None
    json_format: dict[str, object] | None = None
    omit_empty_values: bool = False
    content_type: str = ""  # "" : text/plain for text, application/json for JSON


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseMapper:
    filter: AccessLogFilter
    status_code: int | None = None
    body: DataSource | None = None
    body_format_override: SubstitutionFormat | None = None
    headers_to_add: tuple[HeaderValueOption, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalReplyConfig:
    """http_connection_manager.local_reply_config: the first matching mapper rewrites."""

    mappers: tuple[ResponseMapper, ...] = ()
    body_format: SubstitutionFormat | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpFilter:
    """An http_filters entry (the router excluded), or a typed_per_filter_config entry: the
    filter's name and its frozen config from ``config.filter_schema``."""

    name: str
    config: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpConnectionManager:
    stat_prefix: str
    route_config: RouteConfiguration
    http_filters: tuple[HttpFilter, ...] = ()
    access_log: tuple[AccessLog, ...] = ()
    use_remote_address: bool = False
    xff_num_trusted_hops: int = 0
    server_name: str = "envoy"
    max_request_headers_kb: int = 60
    # common_http_protocol_options
    idle_timeout: float = 3600.0
    max_headers_count: int = 100
    upgrade_configs: tuple[UpgradeConfig, ...] = ()
    stream_idle_timeout: float = 300.0
    local_reply_config: LocalReplyConfig | None = None
    request_timeout: float = 0.0  # the whole request received within it; 0 disables
    # the head, from its first byte; 0 disables. udsproxy's default is 10 s where Envoy has
    # none (README, Deviations): a half-sent head must not hold a connection for an hour
    request_headers_timeout: float = 10.0
    # common_http_protocol_options.max_requests_per_connection: the Nth response carries
    # `connection: close` (0: unlimited)
    max_requests_per_connection: int = 0
    # after a local close, unread request bytes are read and dropped for this long (0: none)
    delayed_close_timeout: float = 1.0
    # common_http_protocol_options.max_connection_duration (0: none), then a drain of
    # drain_timeout (HTTP/1: `connection: close` on the next response; closed when idle)
    max_connection_duration: float = 0.0
    http1_safe_max_connection_duration: bool = False  # no drain timer: the next response closes
    drain_timeout: float = 5.0
    generate_request_id: bool = True
    headers_with_underscores_action: str = "ALLOW"  # or REJECT_REQUEST, DROP_HEADER
    normalize_path: bool = False
    merge_slashes: bool = False
    path_with_escaped_slashes_action: str = "KEEP_UNCHANGED"


@dataclass(frozen=True, slots=True, kw_only=True)
class DataSource:
    """envoy.config.core.v3.DataSource, as written: ``kind`` is the field that was set and
    ``value`` its text (a path, the inline text, the base64 of inline_bytes, or a variable's
    name). Files and environment variables are read where the value is used (config load,
    listener start, reload: ``config.datasource.read``), never by convert."""

    kind: str  # "filename" | "inline_string" | "inline_bytes" | "environment_variable"
    value: str = field(repr=False)  # may be a private key: kept out of reprs and logs

    def __str__(self) -> str:
        if self.kind == "filename":
            return f"'{self.value}'"
        if self.kind == "environment_variable":
            return f"environment variable '{self.value}'"
        return f"the {self.kind}"


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsCertificate:
    """One filter chain's certificate (read when the listener starts or reloads)."""

    certificate_chain: DataSource  # PEM chain
    private_key: DataSource  # PEM key
    # filter_chain_match.server_names of its chain; () marks the default chain (no SNI match)
    server_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class DownstreamTls:
    """transport_socket envoy.transport_sockets.tls with a DownstreamTlsContext, per chain."""

    certificates: tuple[TlsCertificate, ...]
    alpn_protocols: tuple[str, ...] = ("http/1.1",)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionLimit:
    """envoy.filters.network.connection_limit before the connection manager."""

    stat_prefix: str
    max_connections: int
    delay: float = 0.0  # seconds a rejected connection stays open (read paused) before closing
    # runtime_enabled (a RuntimeFeatureFlag): off when the key says so
    runtime_key: str | None = None
    runtime_default: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Listener:
    name: str
    address: Address
    http_connection_manager: HttpConnectionManager
    per_connection_buffer_limit_bytes: int = DEFAULT_BUFFER_LIMIT
    tls: DownstreamTls | None = None
    connection_limit: ConnectionLimit | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PathConfigSource:
    """cds_config/lds_config: ``path`` (legacy oneof) or ``path_config_source``."""

    path: str
    watched_directory: str | None = None  # reload when an entry here is moved to (ConfigMaps)


@dataclass(frozen=True, slots=True, kw_only=True)
class DynamicResources:
    cds: PathConfigSource | None = None
    lds: PathConfigSource | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Locality:
    region: str = ""
    zone: str = ""
    sub_zone: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """One lb_endpoint, flattened with what its LocalityLbEndpoints says about it.

    In a STRICT_DNS/LOGICAL_DNS cluster ``address`` holds the name to resolve."""

    address: Address
    load_balancing_weight: int = 1  # lb_endpoint's: honoured by round robin
    hostname: str = ""  # endpoint.hostname: what auto_host_rewrite sends
    metadata: dict[str, Any] | None = field(default=None, hash=False)  # lb_endpoint's
    # From the LocalityLbEndpoints: kept for /config_dump. Its load_balancing_weight only acts
    # with common_lb_config.locality_weighted_lb_config, which udsproxy refuses.
    locality: Locality | None = None
    locality_load_balancing_weight: int = 0  # 0: not set
    locality_metadata: dict[str, Any] | None = field(default=None, hash=False)
    # endpoint.health_check_config (udsproxy.upstream.health_check)
    health_check_hostname: str = ""  # its Host in health checks ("" : the check's own)
    disable_active_health_check: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class SanMatcher(StringMatcher):
    """One entry of match_typed_subject_alt_names: a StringMatcher on SANs of one type."""

    san_type: str  # DNS | URI | IP_ADDRESS | EMAIL; "" any (the legacy match_subject_alt_names)


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamTls:
    """A cluster's transport_socket envoy.transport_sockets.tls with an UpstreamTlsContext.

    Without ``trusted_ca`` the upstream certificate is not verified (Envoy's behaviour)."""

    sni: str = ""  # "" sends no SNI
    trusted_ca: DataSource | None = None
    san_matchers: tuple[SanMatcher, ...] = ()  # any one matching accepts the certificate
    certificate: TlsCertificate | None = None  # client certificate (tls_certificates[0])
    alpn_protocols: tuple[str, ...] = ()
    # tls_params; Envoy's client defaults: TLS 1.2 only
    tls_minimum_protocol_version: str = "TLSv1_2"
    tls_maximum_protocol_version: str = "TLSv1_2"


@dataclass(frozen=True, slots=True, kw_only=True)
class OutlierDetection:
    """envoy.config.cluster.v3.OutlierDetection: the consecutive-failure detectors (Envoy's
    defaults; the success-rate and failure-percentage ones are refused)."""

    consecutive_5xx: int = 5
    consecutive_gateway_failure: int = 5
    consecutive_local_origin_failure: int = 5
    split_external_local_origin_errors: bool = False
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0  # at least base_ejection_time
    max_ejection_time_jitter: float = 0.0
    max_ejection_percent: int = 10
    always_eject_one_host: bool = False
    enforcing_consecutive_5xx: int = 100
    enforcing_consecutive_gateway_failure: int = 0
    enforcing_consecutive_local_origin_failure: int = 100
    successful_active_health_check_uneject_host: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthCheck:
    """envoy.config.core.v3.HealthCheck with an http_health_check (udsproxy.upstream.
    health_check). Every interval Envoy derives from another is resolved here."""

    timeout: float
    interval: float
    unhealthy_threshold: int
    healthy_threshold: int
    interval_jitter: float = 0.0
    interval_jitter_percent: int = 0
    initial_jitter: float = 0.0
    no_traffic_interval: float = 60.0  # until the cluster has had a connection
    no_traffic_healthy_interval: float = 60.0  # default: no_traffic_interval
    unhealthy_interval: float = 0.0  # default: interval
    unhealthy_edge_interval: float = 0.0  # default: unhealthy_interval
    healthy_edge_interval: float = 0.0  # default: interval
    reuse_connection: bool = True
    # http_health_check
    path: str = "/"
    host: str = ""  # "": the cluster's name
    method: str = "GET"  # GET | HEAD
    expected_statuses: tuple[tuple[int, int], ...] = ((200, 201),)  # [start, end)
    retriable_statuses: tuple[tuple[int, int], ...] = ()
    request_headers_to_add: tuple[HeaderValueOption, ...] = ()  # literal values only
    request_headers_to_remove: tuple[str, ...] = ()
    service_name_matcher: StringMatcher | None = None  # x-envoy-upstream-healthchecked-cluster


@dataclass(frozen=True, slots=True, kw_only=True)
class Cluster:
    name: str
    endpoints: tuple[Endpoint, ...]
    connect_timeout: float = 5.0
    per_connection_buffer_limit_bytes: int = DEFAULT_BUFFER_LIMIT
    # typed_extension_protocol_options[...HttpProtocolOptions]
    idle_timeout: float = DEFAULT_UPSTREAM_IDLE_TIMEOUT  # 0 disables
    max_requests_per_connection: int = 0  # 0 = unlimited
    tls: UpstreamTls | None = None  # transport_socket
    # Load balancing (upstream.cluster, lb): lb_policy, least_request_lb_config.choice_count,
    # common_lb_config.healthy_panic_threshold (percent; 0 disables panic)
    lb_policy: str = "ROUND_ROBIN"  # ROUND_ROBIN | LEAST_REQUEST | RANDOM
    choice_count: int = 2
    healthy_panic_threshold: float = 50.0
    outlier_detection: OutlierDetection | None = None  # upstream.outlier
    health_check: HealthCheck | None = None  # health_checks[0] (udsproxy.upstream.health_check)
    # common_lb_config's: a host is out of the load balancer until its first health check
    ignore_new_hosts_until_first_hc: bool = False
    # circuit_breakers.thresholds by priority; empty: none configured
    circuit_breakers: tuple[CircuitBreakerThresholds, ...] = ()
    # Service discovery (udsproxy.dns): endpoints are names unless STATIC.
    type: str = "STATIC"  # STATIC | STRICT_DNS | LOGICAL_DNS
    dns_lookup_family: str = "AUTO"  # Envoy's default (the v3 enum's zero value)
    dns_refresh_rate: float = 5.0
    respect_dns_ttl: bool = False  # accepted; getaddrinfo has no TTL: the refresh rate applies
    dns_failure_refresh_rate: tuple[float, float] | None = None  # (base_interval, max_interval)


@dataclass(frozen=True, slots=True, kw_only=True)
class Admin:
    """The admin interface (admin.address). Bind it to loopback: it can stop the proxy."""

    address: Address
    access_log: tuple[AccessLog, ...] = ()  # admin requests, in the listeners' formats


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeLayer:
    """One layer of layered_runtime: ``kind`` is static, disk or admin."""

    name: str
    kind: str
    values: dict[str, str] = field(default_factory=dict)  # static: the flattened keys
    symlink_root: str = ""  # disk
    subdirectory: str = ""  # disk


@dataclass(frozen=True, slots=True, kw_only=True)
class Bootstrap:
    listeners: tuple[Listener, ...] = ()
    clusters: tuple[Cluster, ...] = ()
    dynamic_resources: DynamicResources | None = None
    admin: Admin | None = None
    layered_runtime: tuple[RuntimeLayer, ...] = ()
    # overload_manager's envoy.resource_monitors.global_downstream_max_connections (None: none)
    max_active_downstream_connections: int | None = None
    # version_info of the CDS/LDS files merged into listeners/clusters ("" when none)
    cds_version: str = ""
    lds_version: str = ""
    # Warnings that do not stop the config (e.g. deprecated spellings accepted).
    warnings: tuple[str, ...] = field(default=(), compare=False)
    # What dynamic.resolve() merged the CDS/LDS files into (None if this is not its result), so
    # resolving a resolved Bootstrap again starts from the static resources, not from the merge.
    static: Bootstrap | None = field(default=None, compare=False, repr=False)
