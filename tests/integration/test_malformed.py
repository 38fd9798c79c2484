"""Strict parsing: malformed requests get 400 and a closed connection, and the request smuggling
corpora in ./corpora (or $UDSPROXY_CORPORA) never get two requests past the proxy.

The upstream for these is the lenient Python server (http.server): if the proxy forwarded
ambiguous framing, a second, smuggled request would show up in its request log.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import pytest

from .support import ProxyProcess, PyUpstream, RawConn

pytestmark = pytest.mark.integration

HOST = "blog.example.com"


def _req(path: str, *headers: str, body: bytes = b"", version: str = "HTTP/1.1") -> bytes:
    head = f"POST {path} {version}\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"
    return head.encode("latin-1") + body


# (id, request builder taking the unique path) -> must be 400 + close, never reach the upstream.
MUST_REJECT: list[tuple[str, Any]] = [
    ("cl-and-te", lambda p: _req(p, f"Host: {HOST}", "Content-Length: 5",
                                 "Transfer-Encoding: chunked", body=b"0\r\n\r\n")),
    ("te-and-cl", lambda p: _req(p, f"Host: {HOST}", "Transfer-Encoding: chunked",
                                 "Content-Length: 5", body=b"0\r\n\r\n")),
    ("duplicate-cl-differing", lambda p: _req(p, f"Host: {HOST}", "Content-Length: 5",
                                              "Content-Length: 6", body=b"hello!")),
    ("cl-list-differing", lambda p: _req(p, f"Host: {HOST}", "Content-Length: 5, 6",
                                         body=b"hello!")),
    ("cl-not-a-number", lambda p: _req(p, f"Host: {HOST}", "Content-Length: 5x", body=b"hello")),
    ("cl-negative", lambda p: _req(p, f"Host: {HOST}", "Content-Length: -5", body=b"hello")),
    ("bad-chunk-size", lambda p: _req(p, f"Host: {HOST}", "Transfer-Encoding: chunked",
                                      body=b"zz\r\nhello\r\n0\r\n\r\n")),
    ("chunk-size-0x", lambda p: _req(p, f"Host: {HOST}", "Transfer-Encoding: chunked",
                                     body=b"0x5\r\nhello\r\n0\r\n\r\n")),
    ("chunk-size-overflow", lambda p: _req(p, f"Host: {HOST}", "Transfer-Encoding: chunked",
                                           body=b"fffffffffffffffff1\r\nhello\r\n0\r\n\r\n")),
    ("chunk-missing-crlf", lambda p: _req(p, f"Host: {HOST}", "Transfer-Encoding: chunked",
                                          body=b"5\r\nhelloXX0\r\n\r\n")),
    ("te-last-not-chunked", lambda p: _req(p, f"Host: {HOST}", "Transfer-Encoding: chunked, gzip",
                                           body=b"0\r\n\r\n")),
    ("te-unknown", lambda p: _req(p, f"Host: {HOST}", "Transfer-Encoding: xchunked",
                                  body=b"0\r\n\r\n")),
    ("nul-in-value", lambda p: _req(p, f"Host: {HOST}", "X-A: a\x00b", "Content-Length: 0")),
    ("nul-in-name", lambda p: _req(p, f"Host: {HOST}", "X\x00A: b", "Content-Length: 0")),
    ("ctl-in-value", lambda p: _req(p, f"Host: {HOST}", "X-A: a\x01b", "Content-Length: 0")),
    ("bare-cr-in-value", lambda p: _req(p, f"Host: {HOST}", "X-A: a\rb", "Content-Length: 0")),
    ("space-before-colon", lambda p: _req(p, f"Host: {HOST}", "Content-Length : 0")),
    ("space-in-name", lambda p: _req(p, f"Host: {HOST}", "X A: b", "Content-Length: 0")),
    ("obs-fold", lambda p: _req(p, f"Host: {HOST}", "X-A: a", " folded", "Content-Length: 0")),
    ("obs-fold-tab", lambda p: _req(p, f"Host: {HOST}", "X-A: a", "\tfolded", "Content-Length: 0")),
    ("missing-host", lambda p: _req(p, "Content-Length: 0")),
    ("duplicate-host", lambda p: _req(p, f"Host: {HOST}", "Host: evil.example.com",
                                      "Content-Length: 0")),
    ("bad-target", lambda p: _req(p.lstrip("/"), f"Host: {HOST}", "Content-Length: 0")),
    ("space-in-target", lambda p: _req(p + " x", f"Host: {HOST}", "Content-Length: 0")),
]  # fmt: skip


def _unique(name: str) -> str:
    return f"/py/malformed/{name}-{secrets.token_hex(3)}"


def _assert_400_and_close(conn: RawConn) -> None:
    resp = conn.read_response()
    assert resp.status == 400, (resp.status, resp.headers, resp.body[:200])
    assert conn.closed_by_peer(), "the connection stayed open after a 400"


@pytest.mark.parametrize(("name", "build"), MUST_REJECT, ids=[c[0] for c in MUST_REJECT])
def test_malformed_request_is_400_and_close(
    proxy: ProxyProcess, py_upstream: PyUpstream, name: str, build: Any
) -> None:
    path = _unique(name)
    with RawConn(proxy.address(), timeout=5) as conn:
        conn.send(build(path))
        _assert_400_and_close(conn)
    assert not [p for p in py_upstream.paths() if path.lstrip("/") in p]


def test_400_after_a_good_pipelined_request(proxy: ProxyProcess) -> None:
    """The good request is answered; the bad one after it gets 400 and the connection closes."""
    good = f"GET /py/good HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    bad = _req("/py/bad", f"Host: {HOST}", "Content-Length: 1", "Content-Length: 2", body=b"xy")
    with RawConn(proxy.address(), timeout=5) as conn:
        conn.send(good + bad)
        first = conn.read_response()
        assert (first.status, first.body) == (200, b"GET /py/good\n")
        _assert_400_and_close(conn)


# --------------------------------------------------------------------------------------------
# The corpora


def _corpora_dir() -> Path | None:
    for candidate in (
        os.environ.get("UDSPROXY_CORPORA"),
        str(Path(__file__).with_name("corpora")),
    ):
        if candidate and (Path(candidate) / "smuggler_mutations.json").is_file():
            return Path(candidate)
    return None


def _corpus_cases() -> list[Any]:
    root = _corpora_dir()
    if root is None:  # reported as a failure by the test below, never a silent skip
        return [pytest.param(None, id="corpora-missing")]
    smuggler = json.loads((root / "smuggler_mutations.json").read_text())
    ps = json.loads((root / "portswigger_permutations.json").read_text())
    return [
        *(pytest.param(("te-first", m["gadget"]), id=f"smuggler-{m['name']}") for m in smuggler),
        *(
            pytest.param(("te-after-host", m["gadget"]), id=f"portswigger-te-{m['name']}")
            for m in ps.get("te", [])
        ),
        *(pytest.param(("cl", m["gadget"]), id=f"portswigger-cl-{m['name']}") for m in ps["cl"]),
    ]


def _build_corpus_request(kind: str, gadget: str, token: str) -> tuple[bytes, int]:
    """A POST whose body holds a second request. Read with Content-Length, the body is data;
    read any other way (chunked, or a different length), the second request comes out."""
    smuggled = f"GET /py/smuggled/{token} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    target = f"POST /py/smuggle/{token} HTTP/1.1"
    ua = "User-Agent: udsproxy-corpus"
    ctype = "Content-Type: application/x-www-form-urlencoded"
    if kind == "cl":
        body = smuggled
        lines = [target, f"Host: {HOST}", ua, ctype, gadget.replace("{n}", str(len(body)))]
    else:
        body = b"0\r\n\r\n" + smuggled
        cl = f"Content-Length: {len(body)}"
        if kind == "te-first":  # smuggler: gadget, Host, User-Agent, Content-type, Content-Length
            lines = [target, gadget, f"Host: {HOST}", ua, ctype, cl]
        else:  # PortSwigger: the gadget right after Host
            lines = [target, f"Host: {HOST}", gadget, ua, ctype, cl]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body, len(body)


@pytest.mark.parametrize("case", _corpus_cases())
def test_smuggling_corpus(
    proxy: ProxyProcess, py_upstream: PyUpstream, case: tuple[str, str] | None
) -> None:
    """Each case is rejected with 400 (and the connection closed), or forwarded as exactly one
    request whose body is the data sent. Never two requests, never a hang."""
    if case is None:
        pytest.fail("smuggling corpora not found in tests/integration/corpora")
    kind, gadget = case
    token = secrets.token_hex(4)
    with RawConn(proxy.address(), timeout=5) as conn:
        request, body_length = _build_corpus_request(kind, gadget, token)
        conn.send(request)
        first = conn.read_response()
        if first.status == 400:
            assert conn.closed_by_peer(), "the connection stayed open after a 400"
        else:
            assert first.status == 200, (first.status, first.body[:200])
            assert first.header("x-upstream") == "py"
            assert first.body == f"POST /py/smuggle/{token}\n".encode()
            # The next response on this connection must be the answer to our next request.
            sentinel = f"GET /py/sentinel/{token} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close"
            conn.send(sentinel.encode() + b"\r\n\r\n")
            second = conn.read_response()
            assert second.body == f"GET /py/sentinel/{token}\n".encode(), second.body[:200]
            assert conn.closed_by_peer()
    seen = [r for r in py_upstream.requests() if token in r["path"]]
    assert not [r for r in seen if "/smuggled/" in r["path"]], "a smuggled request got through"
    posts = [r for r in seen if "/smuggle/" in r["path"]]
    if first.status == 400:
        assert posts == []
    else:
        assert [r["body_length"] for r in posts] == [body_length]
