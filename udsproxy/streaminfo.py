"""What a finished request leaves behind: the record the access log and stats read.

The data path fills one ``StreamInfo`` per request; observers (access log, stats) only read it.
Header names are lower-case bytes, values raw bytes, in the order they were received/sent.
Times: ``start_time`` is wall-clock (for %START_TIME%), everything else is ``time.monotonic()``.
"""

from __future__ import annotations

from typing import Any, Protocol

from udsproxy.codec.request import RequestHead

__all__ = ["HostDescription", "Peer", "StreamInfo"]


class HostDescription(Protocol):
    """The upstream host a request went to, as the stats read it (Envoy's HostDescription)."""

    @property
    def text(self) -> str: ...

    @property
    def ledger_key(self) -> tuple[Any, str]: ...

    @property
    def cluster(self) -> Any: ...

    rq_timeout: int

    @property
    def outlier(self) -> Any: ...  # upstream.outlier.HostMonitor | None (a route timeout's)

    def auto_host(self) -> bytes | None: ...


class Peer:
    """A socket address as Envoy prints it: ``ip:port``, ``[v6]:port``, or a pipe path."""

    __slots__ = ("host", "port", "text")

    def __init__(self, host: str, port: int | None) -> None:
        self.host = host
        self.port = port  # None for pipes: "only IP addresses have ports"
        if port is None:
            self.text = host
        elif ":" in host:
            self.text = f"[{host}]:{port}"
        else:
            self.text = f"{host}:{port}"

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Peer({self.text!r})"


class StreamInfo(RequestHead):
    """The request as parsed (``RequestHead``), and what became of it."""

    __slots__ = (
        "attempt_count",
        "bytes_received",
        "bytes_sent",
        "connection_id",
        "downstream_direct_remote",
        "downstream_local",
        "downstream_remote",
        "end_mono",
        "first_upstream_rx_mono",
        "host",
        "last_downstream_rx_mono",
        "last_upstream_tx_mono",
        "local_reply_body",  # set by local replies only: read with getattr (%LOCAL_REPLY_BODY%)
        "request_headers",
        "response_code",
        "response_code_details",
        "response_flags",
        "response_headers",
        "retried",
        "route_name",
        "start_mono",
        "start_time",
        "upstream_cluster",
        "upstream_host",
        "upstream_local",
        "upstream_protocol",
        "upstream_transport_failure_reason",
    )

    local_reply_body: bytes  # not set in __init__: it costs nothing unless there is one

    def __init__(self, start_time: float, start_mono: float) -> None:
        RequestHead.__init__(self)
        self.start_time = start_time
        self.start_mono = start_mono
        self.end_mono: float | None = None  # last byte sent downstream
        self.last_downstream_rx_mono: float | None = None  # %REQUEST_DURATION%
        self.last_upstream_tx_mono: float | None = None  # %REQUEST_TX_DURATION%
        self.first_upstream_rx_mono: float | None = None  # %RESPONSE_DURATION%
        # request (method, path, authority, protocol: RequestHead)
        self.request_headers: list[tuple[bytes, bytes]] = []
        # response
        self.response_code = 0  # 0: no response was started
        self.response_code_details = ""
        self.response_flags = 0  # flags.ResponseFlag bits
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.bytes_received = 0  # request body bytes
        self.bytes_sent = 0  # response body bytes
        # upstream
        self.upstream_cluster: str | None = None
        self.upstream_host: str | None = None  # endpoint address; a pipe renders as its path
        self.upstream_local: Peer | None = None
        self.upstream_protocol: str | None = None
        self.upstream_transport_failure_reason: str | None = None
        self.attempt_count = 0
        self.host: HostDescription | None = None  # the host picked for it
        self.retried = False
        # downstream connection
        self.connection_id = 0
        self.downstream_remote: Peer | None = None  # after XFF trust rules
        self.downstream_direct_remote: Peer | None = None  # the socket peer
        self.downstream_local: Peer | None = None
        self.route_name: str | None = None
