"""Which of udsproxy's modules are compiled with mypyc, and whether the running ones are.

MODULES is the one list of compiled modules: setup.py reads it (with UDSPROXY_MYPYC=1, as
`scripts/build-native` and the Dockerfile run it) and fails when a listed module does not exist.
Every module keeps working as plain Python: without a build nothing changes.

What runs is read from the loaded modules themselves (an extension module's spec), never from a
flag. A build also writes udsproxy/_native_build.py with the SHA-256 of each compiled module's
source, so a compiled module whose .py changed since is reported as stale, not trusted silently.
This module is never compiled: it has to read the others.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.machinery
import sys
from pathlib import Path

__all__ = ["MODULES", "compiled_modules", "describe", "stale_modules"]

# Edit here when modules move: the build fails loudly on a name that is not a module.
MODULES: tuple[str, ...] = (
    "udsproxy.accesslog.formatter",
    "udsproxy.codec.encode",
    "udsproxy.codec.http1",
    "udsproxy.codec.request",
    "udsproxy.codec.response",
    "udsproxy.filters.callbacks",
    "udsproxy.flags",
    "udsproxy.headers",
    "udsproxy.http.active_stream",
    "udsproxy.http.conn_manager",
    "udsproxy.http.downstream",
    "udsproxy.http.header_mutation",
    "udsproxy.http.read_gate",
    "udsproxy.lb",
    "udsproxy.pathnorm",
    "udsproxy.router.retry",
    "udsproxy.router.router",
    "udsproxy.router.routes",
    "udsproxy.router.upstream_request",
    "udsproxy.streaminfo",
    "udsproxy.upstream.cluster",
    "udsproxy.upstream.connection",
    "udsproxy.upstream.health",
    "udsproxy.upstream.outlier",
    "udsproxy.upstream.pool",
    "udsproxy.upstream.resources",
    "udsproxy.write_batch",
)

# Hand-written C extensions, built with the mypyc modules (setup.py): each has a pure-Python
# fallback in the module that imports it (the C scanner: llhttp's callbacks; x-request-id:
# header_mutation's Python generator).
C_EXTENSIONS: tuple[str, ...] = ("udsproxy.codec._scan", "udsproxy.http._request_id")

_EXTENSION_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def _is_extension(name: str) -> bool:
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None)
    origin = getattr(spec, "origin", None) or ""
    return origin.endswith(_EXTENSION_SUFFIXES)


def compiled_modules() -> list[str]:
    """udsproxy's modules that run compiled: the listed ones are imported first, then every
    loaded udsproxy module is looked at (one built from an older list counts too)."""
    for name in (*MODULES, *C_EXTENSIONS):
        # one moved without updating MODULES is skipped here: tests/unit/test_native.py fails
        with contextlib.suppress(ModuleNotFoundError):
            importlib.import_module(name)
    return sorted(n for n in list(sys.modules) if n.startswith("udsproxy.") and _is_extension(n))


def stale_modules() -> list[str]:
    """Compiled modules whose source changed after the build (or whose build left no record)."""
    compiled = compiled_modules()
    if not compiled:
        return []
    try:
        recorded: dict[str, str] = dict(importlib.import_module("udsproxy._native_build").SOURCES)
    except ImportError:
        recorded = {}
    stale = []
    for name in compiled:
        spec = sys.modules[name].__spec__
        origin = Path(spec.origin if spec and spec.origin else "")
        suffix = ".c" if name in C_EXTENSIONS else ".py"
        source = origin.parent / (name.rpartition(".")[2] + suffix)
        try:
            digest = hashlib.sha256(source.read_bytes()).hexdigest()
        except OSError:
            continue  # installed without its source: nothing it could be stale against
        if recorded.get(name) != digest:
            stale.append(name)
    return stale


def describe() -> str:
    """What `udsproxy --version` adds: '(pure Python)' or '(compiled with mypyc: N modules; C:
    ...)'."""
    loaded = compiled_modules()
    if not loaded:
        return "(pure Python)"
    compiled = [n for n in loaded if n not in C_EXTENSIONS]
    text = f"compiled with mypyc: {len(compiled)} modules"
    native = [n for n in C_EXTENSIONS if n in loaded]
    if native:
        text += f"; C: {', '.join(native)}"
    pure = [n for n in (*MODULES, *C_EXTENSIONS) if n not in loaded]
    if pure:
        text += f"; pure: {', '.join(pure)}"
    stale = stale_modules()
    if stale:
        text += f"; STALE, source changed since the build: {', '.join(stale)}"
    return f"({text})"
