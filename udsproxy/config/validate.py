"""Validate a YAML-loaded tree against Envoy's own v3 API (the envoy-data-plane generated classes).

No Envoy schema is written here: the walker reads betterproto2's field metadata, so every message,
enum and oneof Envoy defines is checked, and every problem is reported at once as
``ConfigError([(yaml_path, message), ...])``. The metadata comes as rows from ``api_table``: a
cached table generated from envoy-data-plane (milliseconds to load), or the classes themselves.

What comes back is the tree in canonical form, which is what ``convert`` relies on:

* keys are proto (snake_case) names; lowerCamelCase JSON names are accepted on input;
* repeated fields are lists (a single element in place of a list is accepted, as Envoy's legacy
  JSON parser does: real configs write ``clusters: {name: ...}``); ``null`` means "unset";
* durations are float seconds, wrappers plain scalars, enums their names, Struct/Value plain JSON;
* ``Any`` is ``{"@type": "full.message.Name", **fields}``;
* like protobuf itself, implicit-presence scalars at their default (0, "", false, the zero enum
  value, empty list/map) are dropped, so ``merge_slashes: false`` equals leaving it out.

Durations follow Envoy exactly: a string of seconds ending in a single ``s`` (``"5s"``,
``"0.25s"``). ``"200ms"`` is refused, as Envoy does, but with the seconds spelling as a hint, so a
config udsproxy accepts stays loadable by Envoy. Negative durations are refused (Envoy does too).
A subset of Envoy's protoc-gen-validate rules is enforced from the small ``_RULES`` table.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from udsproxy.config import api_table
from udsproxy.errors import ConfigError

__all__ = [
    "BOOTSTRAP", "check", "describe", "entry", "item", "join", "release", "resolve_type",
    "validate",
]  # fmt: skip

BOOTSTRAP = "envoy.config.bootstrap.v3.Bootstrap"


# --- YAML paths ---------------------------------------------------------------------------------


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def item(path: str, index: int) -> str:
    return f"{path}[{index}]"


def entry(path: str, key: object) -> str:
    return f"{path}[{json.dumps(str(key))}]"


def describe(value: object) -> str:
    """A short, user-facing description of a YAML value for 'got ...' messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool " + ("true" if value else "false")
    if isinstance(value, int | float):
        return f"{type(value).__name__} {value}"
    if isinstance(value, str):
        return f"string {value if len(value) <= 64 else value[:61] + '...'!r}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


# --- the API -----------------------------------------------------------------------------------


@functools.cache
def _api() -> api_table.Api:
    return api_table.api()


@functools.cache
def resolve_type(type_url: str) -> _Message | None:
    """The message for a type URL or full message name, or None if Envoy's API has no such one."""
    key = _api().resolve(type_url.rsplit("/", 1)[-1])
    return None if key is None else _message(key)


def release() -> None:
    """Forget the API (the table is ~4 MiB in memory) until the next check: for a process that
    serves and validates only at start and on reload."""
    for cached in (_api, resolve_type, _message, _enum_values):
        cached.cache_clear()
    api_table.release()


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    kind: str  # betterproto2 proto_type: "message", "enum", "map", "string", "uint32", ...
    repeated: bool = False
    presence: bool = True  # False: proto3 implicit presence, the default value means unset
    group: str | None = None
    target: str | None = None  # message key (the wrapped one for WKTs) or enum key
    key_kind: str = ""  # maps only
    value: _Field | None = None  # maps only


@dataclass(frozen=True, slots=True)
class _Message:
    full_name: str
    fields: dict[str, _Field]
    aliases: dict[str, str]  # proto name and JSON name -> proto name
    groups: dict[str, tuple[str, ...]]


def _json_name(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _make_field(row: api_table.FieldRow) -> _Field:
    name, kind, repeated, presence, group, target, key_kind, value_kind, value_target = row
    if kind == "map":
        value = _Field(name, value_kind, target=value_target)
        return _Field(name, "map", presence=False, key_kind=key_kind, value=value)
    return _Field(name, kind, repeated, presence, group, target)


@functools.cache
def _message(key: str) -> _Message:
    full_name, rows = _api().message(key)
    fields: dict[str, _Field] = {}
    aliases: dict[str, str] = {}
    groups: dict[str, list[str]] = {}
    for row in rows:
        f = _make_field(row)
        fields[f.name] = f
        aliases[f.name] = aliases[_json_name(f.name)] = f.name
        if f.group:
            groups.setdefault(f.group, []).append(f.name)
    return _Message(full_name, fields, aliases, {g: tuple(m) for g, m in groups.items()})


@functools.cache
def _enum_values(key: str) -> dict[str, int]:
    return dict(_api().enum(key))


# --- scalars ------------------------------------------------------------------------------------

_INT_RANGES = {
    **dict.fromkeys(("int32", "sint32", "sfixed32"), (-(2**31), 2**31 - 1)),
    **dict.fromkeys(("uint32", "fixed32"), (0, 2**32 - 1)),
    **dict.fromkeys(("int64", "sint64", "sfixed64"), (-(2**63), 2**63 - 1)),
    **dict.fromkeys(("uint64", "fixed64"), (0, 2**64 - 1)),
}
_INT_STRING = re.compile(r"-?\d+")
_FLOAT_STRING = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_FLOAT_NAMES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_DURATION = re.compile(r"(-?\d+)(?:\.(\d+))?s")
_OTHER_UNIT = re.compile(r"(\d+(?:\.\d+)?)(ms|us|ns|m|h)")
_UNIT_SECONDS = {"ms": 1e-3, "us": 1e-6, "ns": 1e-9, "m": 60.0, "h": 3600.0}
_MAX_DURATION_SECONDS = 315_576_000_000  # protobuf's limit: 10,000 years
_WRAPPERS = {
    f"google.protobuf.{name}Value": kind
    for name, kind in (
        ("Double", "double"), ("Float", "float"), ("Int64", "int64"), ("UInt64", "uint64"),
        ("Int32", "int32"), ("UInt32", "uint32"), ("Bool", "bool"), ("String", "string"),
        ("Bytes", "bytes"),
    )
}  # fmt: skip
# Well-known types whose JSON form is not an object of their fields.
_SPECIAL_JSON = {*_WRAPPERS} | {
    f"google.protobuf.{name}"
    for name in ("Duration", "Timestamp", "FieldMask", "Struct", "Value", "ListValue", "Any")
}

# A subset of Envoy's protoc-gen-validate annotations, as "rule=field[:bound]" per message (an
# indented line continues the one above). They run on canonical values, where "" and 0 were
# dropped, so a missing field fails min_len. Bounds ending in "s" are durations.
_RULE_SPEC = """
envoy.config.core.v3.Address oneof=address
envoy.config.core.v3.Pipe min_len=path lte=mode:0o777
envoy.config.core.v3.SocketAddress min_len=address oneof=port_specifier lte=port_value:65535
envoy.config.core.v3.HttpProtocolOptions gte=max_headers_count:1
envoy.config.core.v3.SubstitutionFormatString oneof=format
envoy.config.core.v3.DataSource oneof=specifier
envoy.config.core.v3.ConfigSource oneof=config_source_specifier
envoy.config.core.v3.PathConfigSource min_len=path
envoy.config.core.v3.WatchedDirectory min_len=path
envoy.config.listener.v3.Filter min_len=name
envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
    min_len=stat_prefix oneof=route_specifier
    gt=max_request_headers_kb:0 lte=max_request_headers_kb:8192
envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter min_len=name
envoy.config.route.v3.VirtualHost min_len=name min_items=domains
envoy.config.route.v3.Route required=match oneof=action
envoy.config.route.v3.RouteMatch oneof=path_specifier
envoy.config.route.v3.RouteAction oneof=cluster_specifier min_len=cluster
envoy.type.matcher.v3.RegexMatcher min_len=regex
envoy.config.cluster.v3.Cluster min_len=name gt=connect_timeout:0s
envoy.config.core.v3.HealthCheck required=timeout required=interval required=unhealthy_threshold
    required=healthy_threshold oneof=health_checker gt=timeout:0s gt=interval:0s
envoy.config.core.v3.HealthCheck.HttpHealthCheck min_len=path
envoy.config.endpoint.v3.ClusterLoadAssignment min_len=cluster_name
envoy.extensions.access_loggers.file.v3.FileAccessLog min_len=path
envoy.extensions.upstreams.http.v3.HttpProtocolOptions oneof=upstream_protocol_options
"""


def _parse_rules(spec: str) -> dict[str, list[tuple[str, str, str]]]:
    rules: dict[str, list[tuple[str, str, str]]] = {}
    current: list[tuple[str, str, str]] = []
    for line in spec.splitlines():
        words = line.split()
        if words and not line[0].isspace():
            current = rules.setdefault(words.pop(0), [])
        for word in words:
            rule, _, target = word.partition("=")
            name, _, bound = target.partition(":")
            current.append((rule, name, bound))
    return rules


_RULES = _parse_rules(_RULE_SPEC)


def _quoted(names: list[str] | tuple[str, ...]) -> str:
    return ", ".join(f"'{n}'" for n in names)


_BAD: Any = object()  # a value that failed validation; its error is already recorded


class _Walker:
    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []

    def fail(self, path: str, message: str) -> Any:
        self.errors.append((path, message))
        return _BAD

    def message(self, value: object, info: _Message, path: str) -> Any:
        if info.full_name in _SPECIAL_JSON:
            return self.well_known(value, info.full_name, path)
        if not isinstance(value, Mapping):
            return self.fail(path, f"expected a mapping, got {describe(value)}")
        out: dict[str, Any] = {}
        written: dict[str, str] = {}  # proto name -> the key as written
        failed: set[str] = set()  # already reported: no "is required" on top
        for key, raw in value.items():
            key_path = join(path, str(key))
            if not isinstance(key, str):
                self.fail(key_path, f"field names must be strings, got {describe(key)}")
                continue
            name = info.aliases.get(key)
            if name is None:
                self.fail(key_path, _unknown_field(key, info))
                continue
            if name in written:
                self.fail(key_path, f"field '{name}' is already given as '{written[name]}'")
                continue
            if raw is None:  # protobuf JSON: null leaves the field unset
                continue
            written[name] = key
            f = info.fields[name]
            result = self.field(raw, f, key_path)
            if result is _BAD:
                failed.add(name)
            if result is _BAD or (not f.presence and _is_default(result, f)):
                continue
            out[name] = result
        for group, members in info.groups.items():
            given = [m for m in members if m in written]
            if len(given) > 1:
                self.fail(path, f"only one of {_quoted(given)} may be set (oneof '{group}')")
        self.check_rules(info, out, failed, path)
        return out

    def field(self, raw: object, f: _Field, path: str) -> Any:
        if f.kind == "map":
            return self.map(raw, f, path)
        if not f.repeated:
            return self.single(raw, f, path)
        if not isinstance(raw, list):
            result = self.single(raw, f, path)
            return result if result is _BAD else [result]
        out = []
        for index, element in enumerate(raw):
            if element is None:
                self.fail(item(path, index), "null is not allowed in a list")
                continue
            result = self.single(element, f, item(path, index))
            if result is not _BAD:
                out.append(result)
        return out

    def map(self, raw: object, f: _Field, path: str) -> Any:
        if not isinstance(raw, Mapping):
            return self.fail(path, f"expected a mapping, got {describe(raw)}")
        assert f.value is not None
        out: dict[Any, Any] = {}
        for key, element in raw.items():
            map_key = self.scalar(key, f.key_kind, entry(path, key))
            result = _BAD if element is None else self.single(element, f.value, entry(path, key))
            if map_key is not _BAD and result is not _BAD:
                out[map_key] = result
        return out

    def single(self, raw: object, f: _Field, path: str) -> Any:
        if f.kind == "message":
            return self.message(raw, _message(str(f.target)), path)
        if f.kind == "enum":
            return self.enum(raw, str(f.target), path)
        return self.scalar(raw, f.kind, path)

    def scalar(self, raw: object, kind: str, path: str) -> Any:
        if kind in ("string", "bytes"):
            if isinstance(raw, str):
                return raw
            return self.fail(path, f"expected a string, got {describe(raw)}")
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            if raw in ("true", "false"):  # Envoy's legacy JSON parser takes quoted booleans
                return raw == "true"
            return self.fail(path, f"expected true or false, got {describe(raw)}")
        if kind in _INT_RANGES:
            number = _as_int(raw)
            if number is None:
                return self.fail(path, f"expected an integer, got {describe(raw)}")
            low, high = _INT_RANGES[kind]
            if not low <= number <= high:
                return self.fail(path, f"{number} is out of range for {kind} ({low}..{high})")
            return number
        if kind in ("float", "double"):
            real = _as_float(raw)
            if real is None:
                return self.fail(path, f"expected a number, got {describe(raw)}")
            return real
        return self.fail(path, f"unsupported field type {kind}")

    def enum(self, raw: object, key: str, path: str) -> Any:
        values = _enum_values(key)
        if isinstance(raw, str):
            if raw in values:
                return raw
            # Envoy parses YAML with protobuf's case_insensitive_enum_parsing (upper-cased, then
            # looked up), so 'strict_dns' and 'round_robin' load there: they load here too.
            if raw.upper() in values:
                return raw.upper()
        if isinstance(raw, int) and not isinstance(raw, bool):
            for name, number in values.items():
                if number == raw:
                    return name
        shown = ", ".join(list(values)[:12]) + (", ..." if len(values) > 12 else "")
        if isinstance(raw, str | int) and not isinstance(raw, bool):
            return self.fail(path, f"unknown enum value {raw!r} (expected one of {shown})")
        return self.fail(path, f"expected one of {shown}, got {describe(raw)}")

    def well_known(self, raw: object, full_name: str, path: str) -> Any:
        if full_name in _WRAPPERS:
            return self.scalar(raw, _WRAPPERS[full_name], path)
        if full_name == "google.protobuf.Duration":
            return self.duration(raw, path)
        if full_name == "google.protobuf.Any":
            return self.any(raw, path)
        if full_name == "google.protobuf.Struct" and not isinstance(raw, Mapping):
            return self.fail(path, f"expected a mapping, got {describe(raw)}")
        if full_name == "google.protobuf.ListValue" and not isinstance(raw, list):
            return self.fail(path, f"expected a list, got {describe(raw)}")
        if full_name in ("google.protobuf.Timestamp", "google.protobuf.FieldMask"):
            return self.scalar(raw, "string", path)
        return self.json(raw, path)

    def duration(self, raw: object, path: str) -> Any:
        if not isinstance(raw, str):
            return self.fail(path, f"expected a duration like '5s' or '0.25s', got {describe(raw)}")
        bad = f"invalid duration '{raw}'"
        match, other = _DURATION.fullmatch(raw), _OTHER_UNIT.fullmatch(raw)
        if other is not None:
            seconds = f"{float(other[1]) * _UNIT_SECONDS[other[2]]:.9f}".rstrip("0").rstrip(".")
            return self.fail(path, f"{bad}: must end with a single 's' (write '{seconds}s')")
        if match is None:
            return self.fail(path, f"{bad}: expected seconds ending in 's', e.g. '5s'")
        if raw.startswith("-"):
            return self.fail(path, f"{bad}: must not be negative")
        if len(match[2] or "") > 9:
            return self.fail(path, f"{bad}: at most 9 digits after the point (nanoseconds)")
        if int(match[1]) > _MAX_DURATION_SECONDS:
            return self.fail(path, f"{bad}: out of range")
        return int(match[1]) + int((match[2] or "").ljust(9, "0")) / 1e9

    def any(self, raw: object, path: str) -> Any:
        if not isinstance(raw, Mapping):
            return self.fail(path, f"expected a mapping with '@type', got {describe(raw)}")
        type_url = raw.get("@type")
        if type_url is None:
            # Envoy's legacy parser takes an empty Any; anything else needs a type.
            return {} if not raw else self.fail(path, "missing '@type'")
        if not isinstance(type_url, str) or "/" not in type_url:
            return self.fail(
                join(path, "@type"),
                f"expected 'type.googleapis.com/<message name>', got {describe(type_url)}",
            )
        info = resolve_type(type_url)
        if info is None:
            return self.fail(path, f"unknown @type '{type_url}'")
        full_name = info.full_name
        body = {k: v for k, v in raw.items() if k != "@type"}
        if full_name in _SPECIAL_JSON:
            if set(body) != {"value"}:
                return self.fail(path, f"an Any holding {full_name} takes its content in 'value'")
            result = self.message(body["value"], info, join(path, "value"))
            return result if result is _BAD else {"@type": full_name, "value": result}
        result = self.message(body, info, path)
        return result if result is _BAD else {"@type": full_name, **result}

    def json(self, raw: object, path: str) -> Any:
        """Struct/Value content: any JSON value, copied."""
        if raw is None or isinstance(raw, bool | int | float | str):
            return raw
        if isinstance(raw, list):
            return [self.json(element, item(path, i)) for i, element in enumerate(raw)]
        if isinstance(raw, Mapping):
            out: dict[str, Any] = {}
            for key, element in raw.items():
                if not isinstance(key, str):
                    self.fail(entry(path, key), f"keys must be strings, got {describe(key)}")
                    continue
                out[key] = self.json(element, join(path, key))
            return out
        return self.fail(path, f"not a JSON value: {describe(raw)}")

    def check_rules(
        self, info: _Message, out: Mapping[str, Any], failed: set[str], path: str
    ) -> None:
        for rule, name, bound in _RULES.get(info.full_name, ()):
            if name in failed or (rule == "oneof" and failed & set(info.groups[name])):
                continue
            if rule == "oneof":
                if not any(m in out for m in info.groups[name]):
                    self.fail(path, f"one of {_quoted(info.groups[name])} is required")
                continue
            field_path, value = join(path, name), out.get(name)
            if rule == "required" and value is None:
                self.fail(field_path, "is required")
            elif rule == "min_len" and not value and (name in out or not info.fields[name].group):
                self.fail(field_path, "is required and must not be empty")
            elif rule == "min_items" and not value:
                self.fail(field_path, "must have at least one entry")
            elif rule in _COMPARE and isinstance(value, int | float):
                compare, words = _COMPARE[rule]
                if not compare(value, int(bound.rstrip("s"), 0)):
                    self.fail(field_path, f"must be {words} {bound}, got {_shown(value, bound)}")


_COMPARE = {
    "lte": (operator.le, "at most"),
    "gt": (operator.gt, "greater than"),
    "gte": (operator.ge, "at least"),
}


def _shown(value: float, bound: str) -> str:
    """``value`` in the notation of ``bound``: octal for modes, seconds for durations."""
    if bound.startswith("0o"):
        return f"{int(value):#o}"
    return f"{value:g}s" if bound.endswith("s") else f"{value:g}"


def _is_default(value: object, f: _Field) -> bool:
    if f.kind == "enum":
        return _enum_values(str(f.target)).get(str(value)) == 0
    if isinstance(value, list | dict):
        return not value
    return value in (0, "")  # also False and 0.0


def _as_int(raw: object) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str) and _INT_STRING.fullmatch(raw):
        return int(raw)
    return None


def _as_float(raw: object) -> float | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        return float(raw)
    if isinstance(raw, str):
        if raw in _FLOAT_NAMES:
            return _FLOAT_NAMES[raw]
        if _FLOAT_STRING.fullmatch(raw):
            return float(raw)
    return None


def _unknown_field(key: str, info: _Message) -> str:
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).lower()
    close = difflib.get_close_matches(snake, list(info.fields), n=1, cutoff=0.75)
    return f"unknown field '{key}'" + (f" (did you mean '{close[0]}'?)" if close else "")


def check(
    tree: object, type_name: str = BOOTSTRAP, path: str = ""
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Check ``tree`` as the protobuf JSON form of ``type_name``.

    Returns the canonical form and every error, each with its YAML path (prefixed by ``path``).
    Values with errors are left out of the canonical form, so it is always well-typed.
    """
    info = resolve_type(type_name)
    if info is None:
        raise ValueError(f"unknown message type {type_name!r}")
    walker = _Walker()
    result = walker.message(tree, info, path)
    return ({} if result is _BAD else result), walker.errors


def validate(tree: object, type_name: str = BOOTSTRAP, path: str = "") -> dict[str, Any]:
    """Like ``check``, but raise ConfigError listing every problem if there is any."""
    result, errors = check(tree, type_name, path)
    if errors:
        raise ConfigError(errors)
    return result
