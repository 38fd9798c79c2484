"""systemd's readiness protocol (sd_notify(3)) without libsystemd: one datagram per state.

With ``Type=notify`` systemd passes ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace) and waits for ``READY=1`` before it calls the unit started. udsproxy sends ``READY=1``
once its listeners accept, ``RELOADING=1`` on SIGHUP (then ``READY=1`` when the reload is
done) and ``STOPPING=1`` when it starts to drain. Without the variable every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time

__all__ = ["notify", "reloading"]


def _address(value: str) -> str | bytes | None:
    if value.startswith("@"):  # abstract namespace: a leading NUL instead of the @
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock and other forms: not used on this path


def notify(state: str, environ: dict[str, str] | None = None) -> bool:
    """Send ``state`` (``"READY=1"``, ``"STOPPING=1"``, several lines allowed) to systemd.
    Returns whether it was sent; never raises, since the service must not fail over it."""
    value = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    address = _address(value)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError:
        return False
    return True


def reloading(environ: dict[str, str] | None = None) -> bool:
    """``RELOADING=1`` with the timestamp systemd 253+ asks for (older ones ignore it)."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}", environ)
