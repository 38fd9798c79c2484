"""Upstream TLS: a cluster's UpstreamTlsContext compiled once into an SSLContext, its SAN
matchers, and Envoy's wording for a failed handshake.

Envoy's rules kept here:
- without a validation_context (no ``trusted_ca``) the upstream certificate is not verified;
- the host name is never checked against the certificate: only the SAN matchers are, after
  the handshake (Envoy checks them inside certificate verification; the failure, the stats and
  the failure reason are the same);
- SNI is sent only if ``sni`` is set; the client defaults to TLS 1.2 only (Envoy's client
  defaults for tls_minimum/maximum_protocol_version).

A failed handshake raises ``TlsConnectError``, which the stream answers with 503 UF and
Envoy 1.24's transport failure reason, e.g. ``TLS error: 268435581:SSL
routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED``. The number is BoringSSL's packed error
code, which Python's OpenSSL does not have: it is looked up for the common reasons and left out
for the others.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Iterable, Sequence
from typing import Any

from udsproxy.codec import http1
from udsproxy.config import datasource, schema
from udsproxy.headermatch import StringMatch
from udsproxy.stats.store import SslStats
from udsproxy.tls import load_cert_chain

__all__ = ["ClusterTls", "TlsConnectError", "client_context", "failure_reason", "san_matches"]

_VERSIONS = {
    "TLSv1_0": ssl.TLSVersion.TLSv1,
    "TLSv1_1": ssl.TLSVersion.TLSv1_1,
    "TLSv1_2": ssl.TLSVersion.TLSv1_2,
    "TLSv1_3": ssl.TLSVersion.TLSv1_3,
}

# BoringSSL's reason codes in ERR_LIB_SSL (packed as 16 << 24 | reason), for what Envoy prints.
_BORINGSSL_SSL_REASONS = {
    "CERTIFICATE_VERIFY_FAILED": 125,
    "HTTP_REQUEST": 156,
    "WRONG_VERSION_NUMBER": 247,
    "SSLV3_ALERT_HANDSHAKE_FAILURE": 1040,
    "SSLV3_ALERT_BAD_CERTIFICATE": 1042,
    "TLSV1_ALERT_UNKNOWN_CA": 1048,
    "TLSV1_ALERT_PROTOCOL_VERSION": 1070,
    "TLSV1_ALERT_INTERNAL_ERROR": 1080,
    "TLSV1_UNRECOGNIZED_NAME": 1112,
    "TLSV1_ALERT_CERTIFICATE_REQUIRED": 1116,
    "TLSV1_ALERT_NO_APPLICATION_PROTOCOL": 1120,
}
# OpenSSL 3 spells a few reasons differently from BoringSSL.
_OPENSSL_TO_BORINGSSL = {"TLSV13_ALERT_CERTIFICATE_REQUIRED": "TLSV1_ALERT_CERTIFICATE_REQUIRED"}
_LIBRARIES = {"SSL": "SSL routines", "X509": "X.509 certificate routines", "PEM": "PEM routines"}
_VERIFY_FAILED = "TLS error: 268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED"
# Python's getpeercert() names for the SAN types Envoy matches.
_SAN_TYPES = {"DNS": "DNS", "URI": "URI", "IP Address": "IP_ADDRESS", "email": "EMAIL"}
_MAX_REPLIES = 64  # distinct failure reasons kept as ready replies


def client_context(config: schema.UpstreamTls) -> ssl.SSLContext:
    """The cluster's SSLContext, built once (files and variables are read now)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # Envoy never matches the host name; SAN matchers do that
    ctx.minimum_version = _VERSIONS[config.tls_minimum_protocol_version]
    ctx.maximum_version = _VERSIONS[config.tls_maximum_protocol_version]
    if config.trusted_ca is None:
        ctx.verify_mode = ssl.CERT_NONE  # Envoy: no validation_context, no verification
    else:
        ctx.verify_mode = ssl.CERT_REQUIRED
        with datasource.as_file(config.trusted_ca) as cafile:
            ctx.load_verify_locations(cafile=cafile)
    if config.certificate is not None:
        load_cert_chain(ctx, config.certificate)
    if config.alpn_protocols:
        ctx.set_alpn_protocols(list(config.alpn_protocols))
    return ctx


def failure_reason(exc: BaseException) -> str:
    """Envoy 1.24's %UPSTREAM_TRANSPORT_FAILURE_REASON% for a failed handshake."""
    reason = getattr(exc, "reason", None)
    if not isinstance(exc, ssl.SSLError) or not reason:
        return f"TLS error: {getattr(exc, 'strerror', None) or exc}"
    reason = _OPENSSL_TO_BORINGSSL.get(reason, reason)
    library = _LIBRARIES.get(exc.library or "", exc.library or "SSL routines")
    code = _BORINGSSL_SSL_REASONS.get(reason) if library == "SSL routines" else None
    number = f"{16 << 24 | code}:" if code is not None else ""
    return f"TLS error: {number}{library}:OPENSSL_internal:{reason}"


def _dns_match(name: str, san: str) -> bool:
    """Envoy's Utility::dnsNameMatch: exact, or a certificate wildcard '*.x' for one label."""
    name, san = name.lower(), san.lower()
    if name == san:
        return True
    if len(san) > 1 and san.startswith("*."):
        suffix = san[1:]
        return (
            len(name) > len(suffix)
            and name.endswith(suffix)
            and "." not in name[: len(name) - len(suffix)]
        )
    return False


def _normalized_sans(cert: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for kind, value in cert.get("subjectAltName", ()):
        san_type = _SAN_TYPES.get(kind)
        if san_type is None:
            continue
        if san_type == "IP_ADDRESS":
            try:  # Python writes IPv6 in full upper case; Envoy as inet_ntop does
                value = str(ipaddress.ip_address(value.strip()))
            except ValueError:
                continue
        out.append((san_type, value))
    return out


def san_matches(matchers: Sequence[schema.SanMatcher], sans: Iterable[tuple[str, str]]) -> bool:
    """Whether any (SAN type, value) satisfies any matcher (no matchers: any certificate).

    ``sans`` as Python's getpeercert() gives subjectAltName: ("DNS", name), ("IP Address",
    ip), ("URI", uri), ("email", address)."""
    if not matchers:
        return True
    normalized = _normalized_sans({"subjectAltName": tuple(sans)})
    for matcher in matchers:
        for san_type, value in normalized:
            if matcher.san_type and matcher.san_type != san_type:
                continue
            if san_type == "DNS" and matcher.exact is not None:
                if _dns_match(matcher.exact, value):
                    return True
            elif StringMatch(matcher).match_text(value):
                return True
    return False


class TlsConnectError(Exception):
    """A failed upstream TLS handshake: the reply the client gets and the failure reason."""

    def __init__(self, reason: str, reply: http1.LocalReply) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply


class ClusterTls:
    """What a cluster with TLS compiles once: its context, SNI and SAN matchers, its stats."""

    __slots__ = ("_replies", "config", "context", "kwargs", "matchers", "stats")

    def __init__(self, config: schema.UpstreamTls, stats: SslStats, connect_timeout: float) -> None:
        self.config = config
        self.context = client_context(config)
        self.matchers = config.san_matchers
        self.stats = stats
        # create_connection's TLS arguments. An empty server_hostname sends no SNI (asyncio
        # would otherwise send the connect address); the handshake shares connect_timeout.
        self.kwargs: dict[str, Any] = {
            "ssl": self.context,
            "server_hostname": config.sni,
            "ssl_handshake_timeout": connect_timeout or None,
        }
        self._replies: dict[str, http1.LocalReply] = {}

    def failed(self, exc: BaseException) -> TlsConnectError:
        """Count a failed handshake; the error the stream turns into its 503 UF."""
        stats = self.stats
        stats.connection_error += 1
        if isinstance(exc, ssl.SSLCertVerificationError):
            stats.fail_verify_error += 1
        return self._error(failure_reason(exc))

    def verified(self, transport: asyncio.BaseTransport | None) -> bool:
        """After the handshake: whether the certificate passes the SAN matchers (counted)."""
        if self.matchers:
            sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
            cert = sslobj.getpeercert() if sslobj is not None else None
            if not cert or not san_matches(self.matchers, cert.get("subjectAltName", ())):
                self.stats.connection_error += 1
                self.stats.fail_verify_san += 1
                return False
        self.stats.handshake += 1
        return True

    def san_failed(self) -> TlsConnectError:
        """The error for a certificate no SAN matcher accepts: Envoy rejects it inside
        certificate verification, so the reason is CERTIFICATE_VERIFY_FAILED."""
        return self._error(_VERIFY_FAILED)

    def _error(self, reason: str) -> TlsConnectError:
        reply = self._replies.get(reason)
        if reply is None:
            reply = http1.transport_failure(reason)
            if len(self._replies) < _MAX_REPLIES:
                self._replies[reason] = reply
        return TlsConnectError(reason, reply)
