"""Envoy's v3 API as the rows ``validate`` walks, read from envoy-data-plane's generated classes.

Importing those classes costs about 0.7 s and 22 MiB. ``validate`` needs little of what they
hold: per message its full name and fields (kind, repeated, presence, oneof group, target message
or enum, map key and value), per enum its value names. Nothing here is written by hand: every row
comes from betterproto2's metadata through ``LiveApi``, and ``build_table`` is ``LiveApi`` run
over every message envoy-data-plane defines (after importing all of it, once).

The table is kept in a marshal file that loads in milliseconds. Its name carries everything the
rows depend on: envoy-data-plane's and betterproto2's versions, the SHA-256 of this module (the
generator) and the Python version (marshal's format); the same key is stored inside and checked,
so a stale or foreign file is never used. It is written the first time the schema is needed (or
by ``python -m udsproxy.config.api_table`` at install time), in the first writable directory of:
``$UDSPROXY_CACHE_DIR`` (alone, if set), ``udsproxy/_cache`` beside the package, the user's cache
directory. Where none is writable, ``LiveApi`` reads the classes directly: slower, same rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import keyword
import logging
import marshal
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "Api", "EnumRow", "FieldRow", "LiveApi", "MessageRow", "TableApi", "api", "build_table",
    "cache_dirs", "cache_key", "is_loaded", "loaded_table", "release",
]  # fmt: skip

log = logging.getLogger("udsproxy.config")

_URL_PREFIX = "type.googleapis.com/"
_SCHEMA_PACKAGE = "envoy_data_plane"
# Imported up front by LiveApi: the bootstrap and the extensions udsproxy implements. Any other
# @type is imported on demand from its package name.
_KNOWN_PACKAGES = (
    "envoy.config.bootstrap.v3",
    "envoy.extensions.filters.network.http_connection_manager.v3",
    "envoy.extensions.filters.http.router.v3",
    "envoy.extensions.access_loggers.file.v3",
    "envoy.extensions.upstreams.http.v3",
)

# (proto name, kind, repeated, presence, oneof group, target key, map key kind, map value kind,
# map value target key). kind is betterproto2's proto_type ("message", "enum", "map", "string",
# "uint32", ...); presence False is proto3 implicit presence (the default value means unset).
FieldRow = tuple[str, str, bool, bool, str | None, str | None, str, str, str | None]
MessageRow = tuple[str, tuple[FieldRow, ...]]  # (full name, fields)
EnumRow = tuple[tuple[str, int], ...]  # (name, number) in declaration order


class Api(Protocol):
    def resolve(self, name: str) -> str | None:
        """The message key of a full message name, or None if the API has no such message."""

    def message(self, key: str) -> MessageRow: ...

    def enum(self, key: str) -> EnumRow: ...


# --- reading the generated classes --------------------------------------------------------------


class LiveApi:
    """Rows read from the generated classes, imported as they are needed (the slow path, and the
    generator). A message's key is its full name when envoy-data-plane registers it by type URL
    (every message a user can name), else its module and class name; an enum's is always the
    latter."""

    def __init__(self) -> None:
        for package in _KNOWN_PACKAGES:
            importlib.import_module(f"{_SCHEMA_PACKAGE}.{package}")
        pool = importlib.import_module(f"{_SCHEMA_PACKAGE}.message_pool").default_message_pool
        self._types: dict[str, Any] = pool.url_to_type  # filled as packages are imported
        self._urls: dict[Any, str] = pool.type_to_url
        self._messages: dict[str, Any] = {}
        self._enums: dict[str, Any] = {}

    def resolve(self, name: str) -> str | None:
        url = _URL_PREFIX + name
        if url not in self._types:
            parts = name.split(".")
            # Identifiers only, so a user's @type can only import a module of envoy_data_plane.
            if not all(part.isidentifier() for part in parts):
                return None
            for end in range(len(parts) - 1, 0, -1):
                try:
                    importlib.import_module(f"{_SCHEMA_PACKAGE}." + ".".join(parts[:end]))
                except ImportError:
                    continue
                break
            if url not in self._types:
                return None
        return self._message_key(self._types[url])

    def message(self, key: str) -> MessageRow:
        cls = self._messages[key]
        full_name = self._urls.get(cls, cls.__name__).removeprefix(_URL_PREFIX)
        rows = tuple(
            self._field(cls, py_name, meta)
            for py_name, meta in cls._betterproto.meta_by_field_name.items()
        )
        return full_name, rows

    def enum(self, key: str) -> EnumRow:
        cls = self._enums[key]
        renamed: dict[str, int] = cls.betterproto_renamed_proto_names_to_value()
        values = renamed or {member.name: member.value for member in cls}
        return tuple((sys.intern(name), int(number)) for name, number in values.items())

    def _message_key(self, cls: Any) -> str:
        url = self._urls.get(cls)
        key = sys.intern(url.removeprefix(_URL_PREFIX) if url else _class_key(cls))
        self._messages.setdefault(key, cls)
        return key

    def _enum_key(self, cls: Any) -> str:
        key = sys.intern(_class_key(cls))
        self._enums.setdefault(key, cls)
        return key

    def _target(self, kind: str, cls: Any) -> str | None:
        if kind == "message":
            return self._message_key(cls)
        return self._enum_key(cls) if kind == "enum" else None

    def _field(self, cls: Any, py_name: str, meta: Any) -> FieldRow:
        by_field = cls._betterproto.cls_by_field
        # betterproto2 appends "_" to Python keywords (e.g. "in"); the proto name has none.
        name = (
            py_name[:-1] if py_name.endswith("_") and keyword.iskeyword(py_name[:-1]) else py_name
        )
        name = sys.intern(name)
        if meta.proto_type == "map":
            key_meta, value_meta = meta.map_meta
            value_cls = value_meta.unwrap() if value_meta.unwrap else by_field[f"{py_name}.value"]
            value_kind = sys.intern(value_meta.proto_type)
            value_target = self._target(value_kind, value_cls)
            key_kind = sys.intern(key_meta.proto_type)
            return name, "map", False, False, None, None, key_kind, value_kind, value_target
        kind = sys.intern(meta.proto_type)
        target = self._target(kind, meta.unwrap() if meta.unwrap else by_field[py_name])
        presence = bool(meta.optional or meta.group or kind == "message") and not meta.repeated
        group = sys.intern(meta.group) if meta.group else None
        return name, kind, bool(meta.repeated), presence, group, target, "", "", None


def _class_key(cls: Any) -> str:
    return f"{cls.__module__.removeprefix(_SCHEMA_PACKAGE + '.')}:{cls.__qualname__}"


def _targets(row: MessageRow) -> Iterator[tuple[str, str]]:
    for _, kind, _, _, _, target, _, value_kind, value_target in row[1]:
        if target is not None:
            yield kind, target
        if value_target is not None:
            yield value_kind, value_target


def build_table() -> dict[str, Any]:
    """Every message and enum of envoy-data-plane as rows (imports all of it: seconds)."""
    import pkgutil

    package = importlib.import_module(_SCHEMA_PACKAGE)
    for module in pkgutil.walk_packages(package.__path__, f"{_SCHEMA_PACKAGE}."):
        importlib.import_module(module.name)
    live = LiveApi()
    names = sorted(url.removeprefix(_URL_PREFIX) for url in live._types)
    types = {name: live.resolve(name) for name in names}
    messages: dict[str, MessageRow] = {}
    enums: dict[str, EnumRow] = {}
    todo = [key for key in types.values() if key is not None]
    while todo:
        key = todo.pop()
        if key in messages:
            continue
        messages[key] = live.message(key)
        for kind, target in _targets(messages[key]):
            if kind == "enum" and target not in enums:
                enums[target] = live.enum(target)
            elif kind != "enum" and target not in messages:
                todo.append(target)
    return {"key": cache_key(), "types": types, "messages": messages, "enums": enums}


# --- the table and its cache file ---------------------------------------------------------------


class TableApi:
    """Rows from a table ``build_table`` made."""

    def __init__(self, table: dict[str, Any]) -> None:
        self._types: dict[str, str | None] = table["types"]
        self._messages: dict[str, MessageRow] = table["messages"]
        self._enums: dict[str, EnumRow] = table["enums"]

    def resolve(self, name: str) -> str | None:
        return self._types.get(name)

    def message(self, key: str) -> MessageRow:
        return self._messages[key]

    def enum(self, key: str) -> EnumRow:
        return self._enums[key]


def _dist_version(distribution: str, module: str) -> str | None:
    """The installed version of a distribution, from its .dist-info directory's name beside the
    module (importlib.metadata takes ~30 ms to import and scan; this takes well under 1)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    site = Path(spec.origin).parent.parent
    prefix = distribution.replace("-", "_").lower() + "-"
    with contextlib.suppress(OSError), os.scandir(site) as entries:
        for entry in entries:
            name = entry.name.lower()
            if name.startswith(prefix) and name.endswith((".dist-info", ".egg-info")):
                return entry.name[len(prefix) :].rsplit(".", 1)[0]
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        return version(distribution)
    return None


_key: str | None = None


def cache_key() -> str | None:
    """What a table depends on, or None if it cannot be known (then no cache is used)."""
    global _key
    if _key is None:
        envoy = _dist_version("envoy-data-plane", _SCHEMA_PACKAGE)
        betterproto = _dist_version("betterproto2", "betterproto2")
        try:
            generator = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
        except OSError:
            return None
        if envoy is None or betterproto is None:
            return None
        python = f"py{sys.version_info[0]}{sys.version_info[1]}m{marshal.version}"
        _key = f"edp{envoy}-bp{betterproto}-{generator}-{python}"
    return _key


def cache_dirs() -> list[Path]:
    """Where a table is looked for, and written to the first that is writable."""
    chosen = os.environ.get("UDSPROXY_CACHE_DIR")
    if chosen:
        return [Path(chosen)]
    dirs = [Path(__file__).resolve().parents[1] / "_cache"]
    home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    if os.path.isabs(home):
        dirs.append(Path(home) / "udsproxy")
    return dirs


def _file_name(key: str) -> str:
    return f"envoy-api-{key}.marshal"


def _read(key: str) -> dict[str, Any] | None:
    for directory in cache_dirs():
        path = directory / _file_name(key)
        try:
            data = path.read_bytes()
        except OSError:
            continue
        try:
            table = marshal.loads(data)
        except (EOFError, ValueError, TypeError):
            log.debug("ignoring the unreadable API table %s", path)
            continue
        if isinstance(table, dict) and table.get("key") == key:
            return table
        log.debug("ignoring the API table %s: it was made for something else", path)
    return None


def _write(table: dict[str, Any], key: str) -> Path | None:
    """Write the table to the first writable cache directory; None if there is none."""
    data = marshal.dumps(table)
    for directory in cache_dirs():
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".envoy-api-", suffix=".tmp")
        except OSError:
            continue
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.chmod(tmp, 0o644)  # readable by a service user when written at install time
            path = directory / _file_name(key)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            continue
        # Tables of other keys stay: another venv (another Python or envoy-data-plane) may
        # share this directory and would otherwise rebuild its own at every start.
        return path
    return None


def _writable_dir() -> bool:
    for directory in cache_dirs():
        with contextlib.suppress(OSError):
            directory.mkdir(parents=True, exist_ok=True)
        if os.access(directory, os.W_OK | os.X_OK):
            return True
    return False


_table: dict[str, Any] | None = None


def loaded_table() -> dict[str, Any] | None:
    """The cached table for this installation, read once; None if there is none yet. Never
    imports envoy-data-plane."""
    global _table
    if _table is None:
        key = cache_key()
        _table = _read(key) if key is not None else None
    return _table


def is_loaded() -> bool:
    return _table is not None


def release() -> None:
    """Drop the table read by ``loaded_table`` (read again when next needed)."""
    global _table
    _table = None


def api() -> Api:
    """The table if one is cached; else, where one can be written, a new table (written for the
    next time); else the generated classes themselves."""
    global _table
    table = loaded_table()
    if table is not None:
        return TableApi(table)
    key = cache_key()
    if key is not None and _writable_dir():
        table = build_table()
        path = _write(table, key)
        if path is not None:
            log.debug("wrote the API table %s", path)
            _table = table
            return TableApi(table)
    log.debug("no writable cache directory for the API table: reading envoy-data-plane itself")
    return LiveApi()


def main() -> int:
    """``python -m udsproxy.config.api_table``: write the table now (at install time)."""
    key = cache_key()
    if key is None:
        print("udsproxy: cannot key the API table (envoy-data-plane not found)", file=sys.stderr)
        return 1
    if _read(key) is None:
        _write(build_table(), key)
    for directory in cache_dirs():
        path = directory / _file_name(key)
        if path.is_file():
            print(path)
            return 0
    print("udsproxy: no writable cache directory for the API table", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
