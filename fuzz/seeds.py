"""Rebuilds the seed corpora in fuzz/corpus/ from ../shared/corpora (run once; the seeds are
committed, so CI does not need the shared corpora).

    .venv/bin/python -m fuzz.seeds /work/shared/corpora
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"

_BLOCK = re.compile(r"<!-- meta=(\{.*?\}) -->\s*```http\n(.*?)```", re.S)
_PAYLOAD = re.compile(r"Payload: `([^`]+)`")
_ESCAPES = {"\\r": "\r", "\\n": "\n", "\\t": "\t", "\\0": "\0", "\\\\": "\\"}


def _unescape(text: str) -> str:
    return re.sub(r"\\[rnt0\\]", lambda m: _ESCAPES[m.group(0)], text)


def _llhttp_block(text: str) -> bytes:
    # llhttp's test blocks: each line ends with CRLF unless it carries its own escapes
    out = []
    for line in text.split("\n")[:-1]:
        if "\\r" in line or "\\n" in line:
            out.append(_unescape(line))
        else:
            out.append(line + "\r\n")
    return "".join(out).encode("latin-1", "replace")


def _write(target: str, data: bytes, prefix: str, mode: bytes = b"\x00") -> None:
    """Every harness reads its first byte as a mode: the seeds take the plain one."""
    data = mode + data
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    name = f"{prefix}-{hashlib.sha1(data).hexdigest()[:12]}"
    (d / name).write_bytes(data)


def _with_host(req: bytes) -> bytes:
    line, sep, rest = req.partition(b"\r\n")
    return line + sep + b"Host: a\r\n" + rest if sep else req


def main(shared: Path) -> None:
    for sub in ("request", "response", "config", "format"):
        shutil.rmtree(CORPUS / sub, ignore_errors=True)
    # llhttp's own test cases: requests (also with a Host, which udsproxy insists on)
    for md in sorted((shared / "llhttp").rglob("*.md")):
        for meta, block in _BLOCK.findall(md.read_text()):
            kind = json.loads(meta).get("type", "request")
            data = _llhttp_block(block)
            if kind.startswith("request"):
                _write("request", data, "llhttp")
                _write("request", _with_host(data), "llhttp-host")
            elif kind.startswith("response"):
                _write("response", data, "llhttp")
    # smuggling gadgets, placed in a POST with a body as the tools do
    for name in ("smuggler_mutations.json", "portswigger_permutations.json"):
        doc = json.loads((shared / name).read_text())
        entries = doc if isinstance(doc, list) else [e for v in doc.values() for e in v]
        for e in entries:
            gadget = e["gadget"].encode("latin-1", "replace")
            if e.get("placement") == "first-header":
                head = b"POST / HTTP/1.1\r\n" + gadget + b"\r\nHost: a\r\n"
            else:
                head = b"POST / HTTP/1.1\r\nHost: a\r\n" + gadget + b"\r\n"
            body = b"Content-Length: 5\r\n\r\n0\r\n\r\nG"
            _write("request", head + body, "smuggle")
    # HTTP Garden's trophy payloads
    for payload in _PAYLOAD.findall((shared / "http-garden" / "TROPHIES.md").read_text()):
        data = _unescape(payload).encode("latin-1", "replace")
        target = "response" if data.startswith(b"HTTP/") else "request"
        _write(target, data, "garden")
    # Envoy configs as people write them
    for y in sorted((shared / "envoy-configs").rglob("*.yaml")):
        _write("config", y.read_bytes(), "envoy")
    # responses of every framing the upstream codec knows
    for data in _RESPONSES:
        _write("response", data, "basic")
    for data in _FORMATS:
        _write("format", data, "basic")
    _write("format", _JSON_FORMAT, "json", b"\x03")
    for data in _RESPONSES[:2]:
        _write("response", data, "head", b"\x01")  # the answer to a HEAD
    _write("response", _RESPONSES[4], "upgrade", b"\x02")  # to an upgrade


_RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nT: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nX: y\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nws",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n",
]
_FORMATS = [
    b'[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    b"%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    b'%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    b'"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n',
    b"%START_TIME(%Y/%m/%dT%H:%M:%S.%3f%z %s %f %%)% %REQ(USER-AGENT):10% %%\n",
    b"%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %RESPONSE_CODE_DETAILS% %UPSTREAM_CLUSTER%",
    b"%REQ(:AUTHORITY)% %DYNAMIC_METADATA(a:b)% %FILTER_STATE(x)%\n",
]
_JSON_FORMAT = (
    b'{"status": "%RESPONSE_CODE%", "ua": "%REQ(USER-AGENT)%", "n": 1, '
    b'"nested": {"d": "%DURATION%", "l": ["%PROTOCOL%", true, null]}}'
)

if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/corpora"))
