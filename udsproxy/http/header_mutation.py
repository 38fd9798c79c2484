"""What Envoy's connection manager does to request headers before routing. Pure functions.

x-forwarded-for (append the peer, or trust ``xff_num_trusted_hops`` proxies), x-forwarded-proto,
and x-request-id (kept, or a fresh version-4 UUID).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable

from udsproxy.streaminfo import Peer, StreamInfo

__all__ = ["append_forwarded_host", "mutate_request_headers", "request_id", "trusted_client"]

_rng = random.Random(os.urandom(16))
_getrandbits = _rng.getrandbits
# Workers are forked after this import: each must draw its own x-request-id sequence.
os.register_at_fork(after_in_child=lambda: _rng.seed(os.urandom(16)))
# Version 4 and variant 10xx (RFC 9562) set in one random 128-bit draw.
_V4_MASK = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_V4_BITS = (0x4 << 76) | (0x2 << 62)


def _request_id() -> bytes:
    """A random (version 4) UUID, as Envoy generates for x-request-id."""
    h = b"%032x" % ((_getrandbits(128) & _V4_MASK) | _V4_BITS)
    return b"-".join((h[:8], h[8:12], h[12:16], h[16:20], h[20:]))


request_id: Callable[[], bytes]
try:  # the compiled form's: the same ids, from getrandom(2), a tenth of the cost
    from udsproxy.http._request_id import request_id
except ImportError:
    request_id = _request_id


def trusted_client(xff: bytes, nth: int) -> Peer | None:
    """The client address Envoy trusts: the nth entry from the right of x-forwarded-for."""
    entries = xff.split(b",")
    if nth <= len(entries):
        ip = entries[-nth].strip().decode("latin-1")
        if ip:
            return Peer(ip, None)
    return None


def mutate_request_headers(
    s: StreamInfo,
    peer_ip: bytes,
    scheme: bytes,
    use_remote_address: bool,
    trusted_hops: int,
    generate_request_id: bool,
) -> None:
    """Envoy's order: the trusted client address, x-forwarded-for, x-forwarded-proto, then
    x-request-id. The headers become the record's request headers (every log line has them)."""
    headers = s.headers
    xff = s.xff
    if xff is not None and (trusted_hops or not use_remote_address):
        client = trusted_client(xff, trusted_hops if use_remote_address else trusted_hops + 1)
        if client is not None:
            s.downstream_remote = client
    if use_remote_address and peer_ip:  # only IP peers are appended
        headers.append((b"x-forwarded-for", xff + b", " + peer_ip if xff else peer_ip))
    elif xff is not None:
        headers.append((b"x-forwarded-for", xff))
    xfp = s.xfp
    headers.append((b"x-forwarded-proto", xfp if trusted_hops and xfp is not None else scheme))
    if not s.request_id_seen and generate_request_id:
        headers.append((b"x-request-id", request_id()))
    s.request_headers = headers


def append_forwarded_host(headers: list[tuple[bytes, bytes]], host: bytes) -> None:
    """Envoy's append_x_forwarded_host: add the original Host unless it is the last one."""
    for i in range(len(headers) - 1, -1, -1):
        name, value = headers[i]
        if name == b"x-forwarded-host":
            if value.rsplit(b",", 1)[-1].strip() != host:
                headers[i] = (name, value + b"," + host)
            return
    headers.append((b"x-forwarded-host", host))
