"""Read an Envoy DataSource (``schema.DataSource``) into bytes. I/O: files and the environment.

``convert`` keeps a DataSource as written (pure); its bytes are read where they are used: at
config load (``dynamic.resolve`` checks every one, so a missing file or an unset variable is a
config error naming the field), and again when a listener or cluster builds its TLS context,
so a file changed on disk is picked up by a reload, as before.

``as_file`` serves APIs that only take a path (``ssl.SSLContext.load_cert_chain``): a file is
passed by its own name; inline and environment values go into a memfd and are passed as
``/proc/self/fd/N``. A memfd was chosen over a 0600 temporary file because a private key then
never reaches a file system: no window where it sits in /tmp, nothing to clean up if the
process dies, and nothing another process of the same user can open by name.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
from collections.abc import Iterator

from udsproxy.config.schema import DataSource

__all__ = ["MAX_BYTES", "DataSourceError", "as_file", "decode_base64", "read"]

# A DataSource is a certificate, a key, a CA bundle or a response body: a bound, so that a
# filename such as /dev/zero is an error rather than a process that reads until it is killed.
MAX_BYTES = 16 * 1024 * 1024


class DataSourceError(OSError):
    """The source cannot be read; the message names it (a path, a variable) but never its
    contents."""


def decode_base64(text: str) -> bytes | None:
    """inline_bytes as protobuf's JSON mapping takes it: standard or URL-safe base64, padding
    optional. None if it is not base64."""
    text = "".join(text.split())
    if "-" in text or "_" in text:
        text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def read(source: DataSource) -> bytes:
    """The source's bytes; DataSourceError says why not."""
    kind, value = source.kind, source.value
    if kind == "inline_string":
        return value.encode()
    if kind == "inline_bytes":
        data = decode_base64(value)
        if data is None:
            raise DataSourceError("inline_bytes is not valid base64")
        return data
    if kind == "environment_variable":
        env = os.environb.get(value.encode())
        if env is None:
            raise DataSourceError(f"environment variable '{value}' is not set")
        return env
    if kind == "filename":
        try:
            with open(value, "rb") as f:
                data = f.read(MAX_BYTES + 1)
        except OSError as exc:
            raise DataSourceError(f"cannot read '{value}': {exc.strerror or exc}") from None
        if len(data) > MAX_BYTES:
            raise DataSourceError(f"'{value}' is larger than {MAX_BYTES} bytes")
        return data
    raise DataSourceError(f"unknown DataSource kind '{kind}'")


@contextlib.contextmanager
def as_file(source: DataSource, data: bytes | None = None) -> Iterator[str]:
    """A path that opens to the source's bytes while the block runs (``data``: already read).

    A filename is its own path (OpenSSL reads the file itself); anything else goes into an
    anonymous memory file that is closed when the block ends.
    """
    if source.kind == "filename":
        yield source.value
        return
    if data is None:
        data = read(source)
    fd = os.memfd_create("udsproxy-datasource", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)
