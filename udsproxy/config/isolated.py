"""Load a bootstrap without leaving Envoy's generated classes in the serving process.

Validation reads Envoy's API from a cached table (``api_table``): small, and loaded in
milliseconds, so with the table the load runs here. Without it (the first start, before the table
is written, or where no cache directory is writable) validation imports envoy-data-plane's
generated classes: about 22 MiB that would stay in the process for good (0.7 s the first time).
The serving process needs only the frozen Bootstrap, so then a short-lived child does the
loading (and writes the table for next time, where it can) and hands the result back over a pipe
(pickled: the config dataclasses are plain frozen values). Where the schema is already imported
(tests) the child would save nothing and the load runs here too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import select
import signal
import sys
import warnings

from udsproxy.config import api_table, validate
from udsproxy.config.load import ConfigSource, load_and_resolve
from udsproxy.config.schema import Bootstrap
from udsproxy.errors import ConfigError

__all__ = ["load_isolated"]

_SCHEMA_MODULE = "envoy_data_plane"
_CHILD_TIMEOUT_S = 120.0  # until its first byte; a large config loads in seconds


def load_isolated(source: ConfigSource, *, child: bool = False) -> Bootstrap:
    """``load_and_resolve(source)``, here with the API table, else in a child process; raises
    what it would raise (ConfigError, OSError) here.

    ``child``: load in a child process even with the table (a reload while serving). Parsing
    YAML, reading the table and compiling regexes are C calls that hold the GIL for tens of
    milliseconds, so a thread alone would still stall the event loop; the child costs the
    loop only the fork and unpickling the result (a few ms).
    """
    held = api_table.is_loaded()  # someone keeps it (tests, a validating process): leave it
    if child and hasattr(os, "fork"):
        return _in_child(source, nice=10)
    if held or api_table.loaded_table() is not None:
        try:
            return load_and_resolve(source)
        finally:
            if not held:
                validate.release()  # read again on a reload: 4 MiB less while serving
    if _SCHEMA_MODULE in sys.modules or not hasattr(os, "fork"):
        return load_and_resolve(source)
    return _in_child(source)


def _in_child(source: ConfigSource, nice: int = 0) -> Bootstrap:
    r, w = os.pipe()
    with warnings.catch_warnings():
        # 3.12+ warns about fork() with threads; the child only loads and exits at once.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: load, write one pickled answer, and leave without cleanup
        os.close(r)
        if nice:
            with contextlib.suppress(OSError):
                os.nice(nice)  # on a busy machine, serving comes first
        code = 0
        try:
            answer: tuple[str, object]
            try:
                answer = ("ok", load_and_resolve(source))
            except ConfigError as exc:
                answer = ("config", exc.errors)
            except OSError as exc:
                answer = ("os", (exc.errno, exc.strerror, exc.filename))
            except BaseException as exc:
                answer = ("bug", f"{type(exc).__name__}: {exc}")
            with os.fdopen(w, "wb") as out:
                out.write(pickle.dumps(answer))
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        # a child that hangs (it never should) must not hold the reload lock forever
        if not select.select([pipe], [], [], _CHILD_TIMEOUT_S)[0]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise OSError(errno.ETIMEDOUT, "the config loader process did not answer in time")
        data = pipe.read()
    with contextlib.suppress(ChildProcessError):  # a process-wide reaper may be first
        os.waitpid(pid, 0)
    if not data:
        raise RuntimeError("the config loader process died without an answer")
    kind, value = pickle.loads(data)
    if kind == "ok":
        assert isinstance(value, Bootstrap)
        return value
    if kind == "config":
        raise ConfigError(value)
    if kind == "os":
        errno_, strerror, filename = value
        raise OSError(errno_, strerror, filename)
    raise RuntimeError(f"loading the config failed: {value}")
