"""Fuzz harness: the access-log format compiler (udsproxy/accesslog/formatter.py). Any format
either compiles or raises FormatError; one that compiles then renders a record without error.

The first byte picks text (``compile_text``, with or without omit_empty_values) or JSON
(``compile_json`` of the rest parsed as JSON, when it is an object).
"""

from __future__ import annotations

import json

from fuzz._common import Finding, main
from udsproxy.accesslog.formatter import FormatError, Formatter, compile_json, compile_text
from udsproxy.streaminfo import StreamInfo

# Known findings are tolerated while fuzzing (see fuzz/response.py); their regressions set it.
STRICT = False


def _info() -> StreamInfo:
    info = StreamInfo(1_700_000_000.25, 5000.0)
    info.end_mono = 5000.01
    info.method, info.path, info.authority = b"GET", b"/a", b"example.com"
    info.request_headers = [(b"user-agent", b"t"), (b"x-a", b'\xff"\\')]
    info.response_headers = [(b"x-b", b"1")]
    info.response_code = 200
    info.upstream_host = "/dev/shm/x.sock"
    return info


def check(data: bytes) -> None:
    if not data:
        return
    mode, text = data[0], data[1:].decode("utf-8", "replace")
    try:
        f: Formatter
        if mode % 4 == 3:
            try:
                struct = json.loads(text)
            except ValueError:
                return
            if not isinstance(struct, dict):
                return
            f = compile_json(struct, omit_empty_values=bool(mode & 4))
        else:
            f = compile_text(text, omit_empty_values=bool(mode & 4))
    except FormatError:
        return
    info = _info()
    try:
        line = f.render(info)
        view = f.format(info)
    except ValueError as exc:
        if not STRICT and "embedded null" in str(exc):
            return  # finding 2: a NUL in a START_TIME format compiles, then fails each line
        raise Finding(f"compiled, but rendering raised {exc!r}") from exc
    except Exception as exc:
        raise Finding(f"compiled, but rendering raised {exc!r}") from exc
    if not isinstance(line, bytes) or not isinstance(view, str):
        raise Finding("render/format returned the wrong type")


if __name__ == "__main__":
    main(check, "format")
