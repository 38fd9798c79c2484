"""HTTP/1.1 constants shared by both sides of the proxy, and the local replies. Pure: no I/O.

Everything here is computed once at import: status lines, header classes and the local-reply
bodies. The data path only looks things up.
"""

from __future__ import annotations

import http
import time
from email.utils import formatdate

from udsproxy.flags import ResponseFlag

__all__ = [
    "AUTHORITY_TABLE",
    "BAD_REQUEST",
    "CONNECTION_TERMINATION",
    "CONNECT_FAILURE",
    "HEADERS_TOO_LARGE",
    "HOP_BY_HOP",
    "IDEMPOTENT_METHODS",
    "INVALID_AUTHORITY",
    "MISSING_HOST",
    "NO_CLUSTER",
    "NO_HEALTHY_UPSTREAM",
    "NO_ROUTE",
    "OVERLOADED_HEADERS",
    "PATH_NORMALIZATION_FAILED",
    "PATH_NORMALIZATION_REDIRECT",
    "PENDING_OVERFLOW",
    "REQUEST_HEADER_TIMEOUT",
    "REQUEST_SANITIZED",
    "REQUEST_TIMEOUT",
    "SPECIAL_REQUEST_HEADERS",
    "STATUS_LINES",
    "STREAM_IDLE_TIMEOUT",
    "TOO_MANY_HEADERS",
    "UNDERSCORE_IN_HEADER",
    "UPGRADE_FAILED",
    "UPSTREAM_PER_TRY_TIMEOUT",
    "UPSTREAM_PROTOCOL_ERROR",
    "UPSTREAM_TIMEOUT",
    "LocalReply",
    "date_header",
    "retried",
    "status_line",
    "transport_failure",
]


def _status_line(code: int) -> bytes:
    try:
        phrase = http.HTTPStatus(code).phrase
    except ValueError:
        phrase = ""
    return b"HTTP/1.1 %d %s\r\n" % (code, phrase.encode())


STATUS_LINES: dict[int, bytes] = {code: _status_line(code) for code in range(100, 600)}


def status_line(code: int) -> bytes:
    line = STATUS_LINES.get(code)
    return line if line is not None else b"HTTP/1.1 %d \r\n" % code


# Removed in both directions: they describe one hop, not the message (RFC 9110 7.6.1).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"content-length",  # re-framed by the proxy
        b"expect",  # the proxy answers 100-continue itself, as Envoy does by default
    }
)

# Envoy strips these from requests that arrive from outside (header_sanitizing.rst).
REQUEST_SANITIZED = frozenset(
    {
        b"x-envoy-decorator-operation",
        b"x-envoy-downstream-service-cluster",
        b"x-envoy-downstream-service-node",
        b"x-envoy-expected-rq-timeout-ms",
        b"x-envoy-external-address",
        b"x-envoy-force-trace",
        b"x-envoy-internal",
        b"x-envoy-ip-tags",
        b"x-envoy-max-retries",
        b"x-envoy-original-path",
        b"x-envoy-retry-grpc-on",
        b"x-envoy-retry-on",
        b"x-envoy-upstream-alt-stat-name",
        b"x-envoy-upstream-rq-per-try-timeout-ms",
        b"x-envoy-upstream-rq-timeout-alt-response",
        b"x-envoy-upstream-rq-timeout-ms",
        b"x-forwarded-client-cert",
        b"x-forwarded-proto",
    }
)

# Request headers the parser must look at; every other header is forwarded untouched.
SPECIAL_REQUEST_HEADERS = (
    HOP_BY_HOP | REQUEST_SANITIZED | {b"host", b"x-forwarded-for", b"x-request-id", b"expect"}
)

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

# What a Host value may hold (Envoy's authorityIsValid, nghttp2_check_authority): RFC 3986's
# unreserved and sub-delims, and ":", "@", "[", "]", "%" (port, userinfo, IP-literal,
# pct-encoding).
_AUTHORITY_CHARS = (
    b"!$%&'()*+,-.0123456789:;=@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]_abcdefghijklmnopqrstuvwxyz~"
)
# Those bytes map to themselves, every other byte to another one: a value is valid if
# ``value.translate(AUTHORITY_TABLE) == value`` (one C pass; a deletion set instead would make
# translate build its table on every call, 2.5 times the cost).
AUTHORITY_TABLE = bytes(c if c in _AUTHORITY_CHARS else c ^ 1 for c in range(256))

_date_cache: list[object] = [0, b""]


def date_header() -> bytes:
    """``date: ...\\r\\n``, rebuilt at most once a second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = b"date: %s\r\n" % formatdate(now, usegmt=True).encode()
    value = _date_cache[1]
    assert isinstance(value, bytes)
    return value


# Envoy's local-reply wording, pinned to Envoy 1.24: "reset reason: connection failure" with no
# transport-failure suffix, as 1.24 sends for a plain connect failure (envoyproxy/envoy#24812).
# The suffix exists since 1.16 (envoyproxy/envoy#12321) but only when the transport reports a
# reason; later releases add ", transport failure reason: delayed connect error: 111" here.
_RESET_PREFIX = "upstream connect error or disconnect/reset before headers. reset reason: "


class LocalReply:
    """A reply the proxy generates itself: status, body, flag and %RESPONSE_CODE_DETAILS%.

    ``router``: sent by Envoy's router filter once a route was found, so the route's
    response_headers_to_add apply to it (they do not to the connection manager's own replies).
    """

    __slots__ = ("after_retries", "body", "code", "details", "flag", "late_details", "router")

    def __init__(
        self,
        code: int,
        body: str | bytes,
        flag: int,
        details: str,
        *,
        router: bool = False,
        late_details: str | None = None,
    ) -> None:
        self.code = code
        self.body = body.encode() if isinstance(body, str) else body
        self.flag = flag
        self.details = details
        # Envoy's details when this happens after the response started and the client's
        # connection is reset instead (a reset's "..._after_response_started{reason}")
        self.late_details = details if late_details is None else late_details
        self.router = router
        self.after_retries: LocalReply | None = None  # retried(): made once, kept here


def _reset(code: int, reason: str, flag: ResponseFlag, detail: str) -> LocalReply:
    return LocalReply(
        code,
        _RESET_PREFIX + reason,
        flag,
        f"upstream_reset_before_response_started{{{detail}}}",
        router=True,
        late_details=f"upstream_reset_after_response_started{{{detail}}}",
    )


def transport_failure(reason: str) -> LocalReply:
    """A connect failure the transport explains (a TLS handshake): since envoyproxy/envoy#12321
    the body ends with the reason, and the details carry it with spaces as '_'."""
    body = f"connection failure, transport failure reason: {reason}"
    detail = f"connection_failure,{reason}".replace(" ", "_")
    return _reset(503, body, ResponseFlag.UF, detail)


def _codec_error(code: int, details: str) -> LocalReply:
    # Envoy answers codec errors with the status phrase as the body and closes the connection.
    return LocalReply(code, http.HTTPStatus(code).phrase, ResponseFlag.DPE, details)


NO_ROUTE = LocalReply(404, "", ResponseFlag.NR, "route_not_found")
NO_CLUSTER = LocalReply(503, "", ResponseFlag.NC, "cluster_not_found", router=True)
NO_HEALTHY_UPSTREAM = LocalReply(
    503, "no healthy upstream", ResponseFlag.UH, "no_healthy_upstream", router=True
)
CONNECT_FAILURE = _reset(503, "connection failure", ResponseFlag.UF, "connection_failure")
# the pool's limit on waiting requests (a circuit breaker's max_pending_requests)
PENDING_OVERFLOW = _reset(503, "overflow", ResponseFlag.UO, "overflow")
CONNECTION_TERMINATION = _reset(
    503, "connection termination", ResponseFlag.UC, "connection_termination"
)
UPSTREAM_PROTOCOL_ERROR = _reset(502, "protocol error", ResponseFlag.UPE, "protocol_error")
UPSTREAM_TIMEOUT = LocalReply(
    504, "upstream request timeout", ResponseFlag.UT, "upstream_response_timeout", router=True
)
UPSTREAM_PER_TRY_TIMEOUT = LocalReply(
    504, "upstream request timeout", ResponseFlag.UT, "upstream_per_try_timeout", router=True
)
# a circuit breaker's overflow: Envoy tells the client the upstream is overloaded
OVERLOADED_HEADERS = ((b"x-envoy-overloaded", b"true"),)


def retried(reply: LocalReply) -> LocalReply:
    """``reply`` after retries: Envoy's body says "retried and the latest reset reason"."""
    out = reply.after_retries
    if out is None:
        body = reply.body.replace(b"reset reason: ", b"retried and the latest reset reason: ", 1)
        out = LocalReply(
            reply.code,
            body,
            reply.flag,
            reply.details,
            router=reply.router,
            late_details=reply.late_details,
        )
        reply.after_retries = out
    return out


STREAM_IDLE_TIMEOUT = LocalReply(408, "stream timeout", ResponseFlag.SI, "stream_idle_timeout")
UPGRADE_FAILED = LocalReply(403, "", 0, "upgrade_failed")
BAD_REQUEST = _codec_error(400, "http1.codec_error")
MISSING_HOST = _codec_error(400, "missing_host_header")
INVALID_AUTHORITY = _codec_error(400, "http.invalid_authority")
HEADERS_TOO_LARGE = _codec_error(431, "http1.headers_too_large")
TOO_MANY_HEADERS = _codec_error(431, "http1.too_many_headers")
UNDERSCORE_IN_HEADER = _codec_error(400, "http1.unexpected_underscore")
PATH_NORMALIZATION_FAILED = LocalReply(400, "", 0, "path_normalization_failed")
PATH_NORMALIZATION_REDIRECT = LocalReply(307, "", 0, "path_normalization_redirect")
REQUEST_TIMEOUT = LocalReply(408, "request timeout", 0, "request_overall_timeout")
REQUEST_HEADER_TIMEOUT = LocalReply(408, "request header timeout", 0, "request_header_timeout")
