"""Downstream TLS: one front SSLContext per listener whose SNI callback picks the chain's context.

The front context is what the listening socket keeps for its whole life; the per-name contexts
behind it are rebuilt from the certificate files on reload, so new handshakes use new
certificates without touching the socket.
"""

from __future__ import annotations

import logging
import ssl

from udsproxy.config import datasource, schema

__all__ = ["TlsContexts", "load_cert_chain"]

log = logging.getLogger("udsproxy.tls")


def load_cert_chain(ctx: ssl.SSLContext, cert: schema.TlsCertificate) -> None:
    """ctx.load_cert_chain from DataSources: files by their name (re-read on every call, so a
    reload sees new files), inline and environment values through a memfd (config.datasource).
    Raises ssl.SSLError, OSError or DataSourceError."""
    with (
        datasource.as_file(cert.certificate_chain) as chain,
        datasource.as_file(cert.private_key) as key,
    ):
        ctx.load_cert_chain(chain, key)


def _context(cert: schema.TlsCertificate, alpn: tuple[str, ...]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # Envoy's default minimum for servers
    load_cert_chain(ctx, cert)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


class TlsContexts:
    def __init__(self, config: schema.DownstreamTls) -> None:
        self.config = config
        self._exact: dict[str, ssl.SSLContext] = {}
        self._wildcards: list[tuple[str, ssl.SSLContext]] = []
        self._default: ssl.SSLContext | None = None
        self.front = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.front.minimum_version = ssl.TLSVersion.TLSv1_2
        self.front.sni_callback = self._on_sni
        self.load(config)

    def load(self, config: schema.DownstreamTls) -> None:
        """(Re)read every certificate; raises ssl.SSLError/OSError and keeps the old set if any
        file is bad."""
        exact: dict[str, ssl.SSLContext] = {}
        wildcards: list[tuple[str, ssl.SSLContext]] = []
        default: ssl.SSLContext | None = None
        default_cert = config.certificates[0]
        for cert in config.certificates:
            ctx = _context(cert, config.alpn_protocols)
            if not cert.server_names:
                default, default_cert = ctx, cert
            for name in cert.server_names:
                name = name.lower()
                if name.startswith("*."):
                    wildcards.append((name[1:], ctx))
                else:
                    exact.setdefault(name, ctx)
        # Clients without SNI (or with an unknown name) get the default chain's certificate.
        load_cert_chain(self.front, default_cert)
        if config.alpn_protocols:
            self.front.set_alpn_protocols(list(config.alpn_protocols))
        self._exact = exact
        self._wildcards = sorted(wildcards, key=lambda w: -len(w[0]))
        self._default = default
        self.config = config

    def files(self) -> list[str]:
        """The certificate files (inline and environment sources have none)."""
        sources = [
            s for c in self.config.certificates for s in (c.certificate_chain, c.private_key)
        ]
        return [s.value for s in sources if s.kind == "filename"]

    def _on_sni(self, sslobj: ssl.SSLObject, name: str | None, _front: ssl.SSLContext) -> None:
        ctx = self.lookup(name)
        if ctx is not None:
            sslobj.context = ctx

    def lookup(self, name: str | None) -> ssl.SSLContext | None:
        if name:
            name = name.lower()
            ctx = self._exact.get(name)
            if ctx is not None:
                return ctx
            for suffix, ctx in self._wildcards:
                if name.endswith(suffix):
                    return ctx
        return self._default
