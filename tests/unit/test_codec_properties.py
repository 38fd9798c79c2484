"""Property tests for the request codec (hypothesis): whatever bytes come in, the decoder
answers with a 4xx, or gives requests that re-encode, as the router sends them, into bytes a
strict parser reads back the same, without ambiguity (one Content-Length or chunked, never both;
no CR, LF or NUL in a value); and the same however the bytes are split.

The checks are fuzz/request.py's (``check``); here hypothesis builds the inputs: raw bytes, and
requests assembled from the pieces smuggling relies on. Deterministic (derandomize, no database)
and small, for CI; scripts/fuzz runs the same checks for hours.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import request as fz_request

SETTINGS = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

_MODES = st.sampled_from([0, 1, 2, 0xF0])  # ALLOW, DROP_HEADER, REJECT_REQUEST, small limits
_WS = st.sampled_from([b"", b" ", b"\t", b"  "])
_EOL = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"\r\n "])
_NAMES = st.sampled_from(
    [
        b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Upgrade", b"Expect",
        b"X-Forwarded-For", b"X-Request-Id", b"X_Under", b"Te", b"Keep-Alive", b"X-A",
        b"Transfer-Encoding ", b"Content-Length\t", b" Host",
    ]
)  # fmt: skip
_VALUES = st.one_of(
    st.sampled_from(
        [
            b"a", b"example.com:80", b"chunked", b"gzip, chunked", b"chunked, gzip", b"0",
            b"5", b"05", b"-1", b"+5", b"1_0", b"0x5", b"5, 5", b"close", b"keep-alive, X-A",
            b"upgrade", b"websocket", b"h2c", b"100-continue", b"a b", b"a\x00b", b"\xff",
        ]
    ),
    st.binary(max_size=8),
)  # fmt: skip
_METHODS = st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS", b"CONNECT", b"G T"])
_TARGETS = st.sampled_from(
    [b"/", b"/a?b=1", b"*", b"http://h:1/p?q", b"https://h", b"http://{}/", b"//x", b"/\x7f", b""]
)
_VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"http/1.1"])
_BODIES = st.sampled_from(
    [b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"0\r\n\r\n", b"5;x=y\r\nhello\r\n0\r\n\r\n",
     b"1_0\r\nx\r\n0\r\n\r\n", b"0\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", b"\r\n\r\n"]
)  # fmt: skip


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A request (or two, pipelined) assembled from smuggling-prone pieces."""
    out = []
    for _ in range(draw(st.integers(1, 2))):
        line = b" ".join([draw(_METHODS), draw(_TARGETS), draw(_VERSIONS)]) + b"\r\n"
        headers = b"".join(
            draw(_NAMES) + b":" + draw(_WS) + draw(_VALUES) + draw(_WS) + draw(_EOL)
            for _ in range(draw(st.integers(0, 5)))
        )
        out.append(line + headers + b"\r\n" + draw(_BODIES))
    return b"".join(out)


@SETTINGS
@given(_MODES, st.binary(max_size=200))
def test_any_bytes_give_a_4xx_or_unambiguous_requests(mode: int, data: bytes) -> None:
    fz_request.check(bytes([mode]) + data)


@SETTINGS
@given(_MODES, requests())
def test_assembled_requests_give_a_4xx_or_unambiguous_requests(mode: int, data: bytes) -> None:
    fz_request.check(bytes([mode]) + data)


@SETTINGS
@given(_MODES, st.binary(max_size=60), st.binary(max_size=60))
def test_a_valid_request_then_noise(mode: int, noise: bytes, body: bytes) -> None:
    head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body)
    fz_request.check(bytes([mode]) + head + body + noise)
