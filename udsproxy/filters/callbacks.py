"""What the http filters see of a stream (Envoy's filter callbacks), and the two shapes the
stream sees of them. The data path's stream (``http.active_stream``) implements
``FilterCallbacks``; the filters (``filters.base`` and the filters) only use it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from udsproxy.codec import http1
from udsproxy.streaminfo import StreamInfo

if TYPE_CHECKING:
    from udsproxy.router.routes import CompiledRoute

__all__ = ["BodyCoder", "FilterCallbacks", "FilterStateLike"]

Headers = list[tuple[bytes, bytes]]


class BodyCoder(Protocol):
    """Transforms a body as it streams (compress/decompress); output may be empty. ``encode``
    returns the first piece of what ``data`` makes, ``more`` the next ones until b"" (a
    decompressor's pieces are bounded by the buffer limit)."""

    def encode(self, data: bytes | memoryview) -> bytes: ...

    def more(self) -> bytes: ...

    def finish(self) -> bytes: ...


class FilterStateLike(Protocol):
    """One request's filter state (``filters.base.FilterState``), as the stream calls it."""

    body_limit: int  # a buffer filter's limit while it waits for the whole body (else 0)

    def encode_headers(
        self, s: FilterCallbacks, code: int, headers: Headers, length: int
    ) -> int: ...

    def local_reply_headers(
        self, s: FilterCallbacks, code: int, extra: Sequence[tuple[bytes, bytes]]
    ) -> Sequence[tuple[bytes, bytes]]: ...

    def on_body(self, s: FilterCallbacks) -> None: ...

    def body_complete(self, s: FilterCallbacks) -> None: ...

    def close(self) -> None: ...


class FilterCallbacks(StreamInfo):
    """What the filters see of a stream (Envoy's filter callbacks): the request and its
    record, its body coders and held body, and the two ways to act (answer it, or let it go
    on). The data path's stream implements it."""

    # slots the filters set; the stream's __init__ fills them
    __slots__ = (
        "body", "body_size", "done", "filter_state", "req_coder", "request_complete", "resp_coder",
    )  # fmt: skip

    done: bool
    request_complete: bool
    filter_state: FilterStateLike | None
    req_coder: BodyCoder | None
    resp_coder: BodyCoder | None
    body: list[bytes]
    body_size: int

    @property
    def upstream_chunked(self) -> bool:
        raise NotImplementedError

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        raise NotImplementedError

    @property
    def buffer_limit(self) -> int:
        raise NotImplementedError

    def take_held_body(self) -> list[bytes]:
        """The request body held so far, no longer held (nor counted) by the stream."""
        raise NotImplementedError

    def send_local_reply(
        self, reply: http1.LocalReply, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        raise NotImplementedError

    def resume(self, route: CompiledRoute | None) -> None:
        raise NotImplementedError

    def hold_body(self) -> None:
        """The request waits for its whole body (buffer filter): a client that expects
        100-continue gets it now, and the held body may outgrow the buffer limit."""
        raise NotImplementedError
