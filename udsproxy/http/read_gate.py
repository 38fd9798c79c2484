"""Why a downstream connection stopped reading: one bit per reason.

Each reason sets and clears its own bit, so a resume for one reason never undoes a pause for
another; the transport reads again only when no bit is left.
"""

from __future__ import annotations

__all__ = [
    "BLOCK_BODY_BUFFER",
    "BLOCK_CLIENT_WRITE",
    "BLOCK_DONE",
    "BLOCK_PIPELINE",
    "BLOCK_SPLICE",
    "BLOCK_UPSTREAM_WRITE",
]

BLOCK_UPSTREAM_WRITE = 1  # the upstream socket is backed up (slow upload)
BLOCK_BODY_BUFFER = 2  # request body buffered while the upstream connects
BLOCK_PIPELINE = 4  # too many pipelined requests queued
BLOCK_DONE = 8  # no more requests will be read (error, upgrade, closing)
BLOCK_CLIENT_WRITE = 16  # the client is not reading its responses: stop taking new requests
BLOCK_SPLICE = 32  # the rest of a request body moves with splice(2), not through the parser
