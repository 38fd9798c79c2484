"""Envoy access-log formats, compiled once into one straight-line Python function.

Envoy parses a format into a list of providers at config load (``SubstitutionFormatParser``). We go
one step further and generate a function per format, so a request costs attribute reads, one
scan of each header list it reads and one ``%``-template: no parsing, no per-operator call.
``Formatter.source`` shows the code.

A text format renders ``bytes`` directly (``Formatter.render``): header values go in as received,
config text and ``str`` fields as UTF-8, so ``FileSink`` writes the line unchanged. ``format``
returns the same line as a *byte view* (a ``str`` whose every character is < 256 and stands for one
byte); ``json_format`` is built as a byte view and encoded once.
"""

from __future__ import annotations

import functools
import json
import re
import socket
import time
from collections.abc import Callable
from json.encoder import encode_basestring
from typing import Any, Final, NamedTuple, cast

from udsproxy.config import schema
from udsproxy.flags import render_flags, render_flags_long
from udsproxy.streaminfo import StreamInfo

__all__ = [
    "DEFAULT_FORMAT",
    "FormatError",
    "Formatter",
    "command_names",
    "compile_access_log",
    "compile_json",
    "compile_text",
    "literal",
]

# Envoy's SubstitutionFormatUtils::DEFAULT_FORMAT: one line, single spaces, "\n"-terminated.
DEFAULT_FORMAT: Final = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "
    '"%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" '
    '"%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
)


class FormatError(ValueError):
    """A format Envoy would reject at config load; the message names the operator and position."""


class Formatter:
    """A compiled format. ``render(info)`` returns one log line as bytes, ``format(info)`` the
    same line as a byte view (see module doc)."""

    __slots__ = ("format", "render", "source")

    def __init__(
        self,
        render: Callable[[StreamInfo], bytes],
        format: Callable[[StreamInfo], str],
        source: str,
    ) -> None:
        # the generated functions themselves: no method hop per request
        self.render = render
        self.format = format
        self.source = source

    def __repr__(self) -> str:
        return f"<Formatter\n{self.source}>"


# -- parsing ----------------------------------------------------------------------------------

# Envoy's commandWithArgsRegex: %COMMAND%, %COMMAND(SUBCOMMAND)%, optional :LENGTH.
_COMMAND = re.compile(r"%([A-Z0-9_]+)(?:\(([^)]*)\))?(?::([0-9]+))?%")
_HEADER_NAME = re.compile(r":?[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class _Command(NamedTuple):
    name: str
    arg: str  # "" when there were no parentheses
    length: int | None
    pos: int


def _parse(fmt: str, where: str) -> list[str | _Command]:
    """Split a format into literal text and commands, exactly where Envoy's parser does."""
    out: list[str | _Command] = []
    text: list[str] = []
    pos = 0
    while (nxt := fmt.find("%", pos)) >= 0:
        text.append(fmt[pos:nxt])
        if fmt.startswith("%%", nxt):
            text.append("%")
            pos = nxt + 2
            continue
        m = _COMMAND.match(fmt, nxt)
        if m is None:
            raise FormatError(
                f"{where}: no valid command operator at position {nxt} ({fmt[nxt : nxt + 24]!r});"
                " expected %NAME%, %NAME(arg)% or %NAME(arg):N%"
            )
        if lit := "".join(text):
            out.append(lit)
        text = []
        out.append(_Command(m[1], m[2] or "", int(m[3]) if m[3] else None, nxt))
        pos = m.end()
    if lit := "".join(text) + fmt[pos:]:
        out.append(lit)
    return out


def _check(cmd: _Command, where: str, *, params: str = "none", length: bool = False) -> None:
    """Envoy's CommandSyntaxChecker. ``params``: "none", "optional" or "required"."""
    at = f"{where}: %{cmd.name}% at position {cmd.pos}"
    if params == "none" and (cmd.arg or cmd.length is not None):
        raise FormatError(f"{at} does not take any parameters or length")
    if params == "required" and not cmd.arg:
        raise FormatError(f"{at} requires parameters")
    if cmd.length is not None and not length:
        raise FormatError(f"{at} does not allow a length")


# -- START_TIME -------------------------------------------------------------------------------

_MS_Z: Final = tuple(f"{n:03d}Z" for n in range(1000))
# Envoy's DateFormatter specifiers (%s, %f, %1f..%9f) plus the absl::FormatTime ones that render
# differently from strftime; %% is matched so that "%%f" stays a literal.
_TIME_SPEC = re.compile(r"%(?:%|([1-9]?)f|s|E([1-9])S|E\*S|Ez|E4Y|Z)")
_TIME_NEWLINE = re.compile(r"%[-_0^#]*[1-9]*[EO]?n")


_MS_Z_BYTES: Final = tuple(z.encode() for z in _MS_Z)


def _default_start_time() -> Callable[[float], str]:
    """``2016-04-15T20:17:00.310Z``: UTC, milliseconds truncated; the seconds part is cached."""
    cache = (-1, "")  # (second, "2016-04-15T20:17:00."), swapped as one object

    def render(t: float) -> str:
        nonlocal cache
        ms = int(t * 1e6 + 0.5) // 1000  # round the float to µs first, then truncate like Envoy
        sec = ms // 1000
        if sec != cache[0]:
            cache = (sec, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec)))
        return cache[1] + _MS_Z[ms - sec * 1000]

    return render


# The default START_TIME in bytes, inline in the generated code (a call costs more than the rest):
# a one-element list holds (second, b"2016-04-15T20:17:00."), swapped as one object.
_START_TIME_BYTES: Final = """\
$v = int(i.start_time * 1e6 + 0.5) // 1000
t_ = $C[0]
if t_[0] != $v // 1000: t_ = _tick($C, $v // 1000)
$v = t_[1] + _msz[$v % 1000]"""


def _tick(cache: list[tuple[int, bytes]], sec: int) -> tuple[int, bytes]:
    cache[0] = now = (sec, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec)).encode())
    return now


def _start_time(fmt: str, where: str) -> Callable[[float], str]:
    """A START_TIME renderer returning a byte view (config text is UTF-8)."""
    if not fmt:
        return _default_start_time()
    if _TIME_NEWLINE.search(fmt):
        raise FormatError(f"{where}: START_TIME format contains a newline")
    if "\x00" in fmt:
        raise FormatError(f"{where}: START_TIME format contains a NUL byte")  # strftime refuses it
    # Segments: str = strftime text, None = %s (epoch seconds), int = digits of the fraction.
    segs: list[str | int | None] = []
    pos = 0
    for m in _TIME_SPEC.finditer(fmt):
        segs.append(fmt[pos : m.start()])
        spec, pos = m[0], m.end()
        if spec.endswith("f"):
            segs.append(int(m[1] or 9))
        elif spec == "%s":
            segs.append(None)
        elif m[2]:  # %E3S: Envoy formats via absl at whole-second precision, so ".000"
            segs.append("%S." + "0" * int(m[2]))
        else:
            segs.append({"%Ez": "+00:00", "%E4Y": "%Y", "%Z": "UTC", "%E*S": "%S"}.get(spec, spec))
    segs.append(fmt[pos:])
    cache: tuple[int, list[str | int]] = (-1, [])  # this second's text; ints: fraction widths

    def render(t: float) -> str:
        nonlocal cache
        us = int(t * 1e6 + 0.5)
        sec = us // 1_000_000
        if sec != cache[0]:
            tm = time.gmtime(sec)
            new: list[str | int] = [""]
            for seg in segs:
                if isinstance(seg, int):
                    new += [seg, ""]
                else:
                    new[-1] = f"{new[-1]}{sec if seg is None else time.strftime(seg, tm)}"
            cache = (sec, [_bv(p) if isinstance(p, str) else p for p in new])
        parts = cache[1]
        if len(parts) == 1:
            return cast(str, parts[0])
        digits = f"{us - sec * 1_000_000:06d}000"  # nanoseconds; a float only holds µs
        return "".join(p if isinstance(p, str) else digits[:p] for p in parts)

    return render


# -- operators --------------------------------------------------------------------------------

_STR, _INT, _PORT = "str", "int", "port"  # typed-JSON kinds; _PORT: "" in text, null typed
# Operator code assigns the raw value to $v, or $d when unset ("-"/"" in text, None in JSON).
# str fields -> byte view (see module doc); bytes output encodes them as UTF-8 instead
_BV = "\n$BV"
_BV_STR = "if $v and not $v.isascii(): $v = _bv($v)"
_MS = "int(($v - i.start_mono) * 1e3 + 1e-6)"  # Envoy truncates to ms; 1e-6 absorbs float error


def _since(field: str) -> str:
    return f"$v = i.{field}\n$v = $d if $v is None else {_MS}"


def _field(attr: str, then: str = "$v", *, port: bool = False) -> str:
    return f"$v = i.{attr}\n$v = $d if $v is None else {then}" + ("" if port else _BV)


# Operators that read StreamInfo fields: name -> (JSON kind, may be unset, code).
_FIELDS: dict[str, tuple[str, bool, str]] = {
    "PROTOCOL": (_STR, True, "$v = i.protocol or $d"),
    "UPSTREAM_PROTOCOL": (_STR, True, "$v = i.upstream_protocol or $d"),
    "RESPONSE_CODE": (_INT, False, "$v = i.response_code"),
    # Envoy prints "-" for no flags even with omit_empty_values: it is a value, not "unset".
    "RESPONSE_FLAGS": (_STR, False, "$v = _flags(i.response_flags)"),
    "RESPONSE_FLAGS_LONG": (_STR, False, "$v = _flags_long(i.response_flags)"),
    "BYTES_RECEIVED": (_INT, False, "$v = i.bytes_received"),
    "BYTES_SENT": (_INT, False, "$v = i.bytes_sent"),
    "UPSTREAM_REQUEST_ATTEMPT_COUNT": (_INT, False, "$v = i.attempt_count"),
    "CONNECTION_ID": (_INT, False, "$v = i.connection_id"),
    # Envoy's DURATION is currentDuration(): a stream logged before it completed still gets one.
    "DURATION": (_INT, False, f"$v = i.end_mono\nif $v is None: $v = _now()\n$v = {_MS}"),
    "REQUEST_DURATION": (_INT, True, _since("last_downstream_rx_mono")),
    "REQUEST_TX_DURATION": (_INT, True, _since("last_upstream_tx_mono")),
    "RESPONSE_DURATION": (_INT, True, _since("first_upstream_rx_mono")),
    "RESPONSE_TX_DURATION": (
        _INT,
        True,
        "$v = i.first_upstream_rx_mono\n$v = $d if $v is None or i.end_mono is None"
        " else int((i.end_mono - $v) * 1e3 + 1e-6)",
    ),
    "UPSTREAM_CLUSTER": (_STR, True, "$v = i.upstream_cluster or $d" + _BV),
    "UPSTREAM_CLUSTER_RAW": (_STR, True, "$v = i.upstream_cluster or $d" + _BV),
    "UPSTREAM_TRANSPORT_FAILURE_REASON": (
        _STR,
        True,
        "$v = i.upstream_transport_failure_reason or $d\nif $v: $v = $v.replace(' ', '_')" + _BV,
    ),
    "ROUTE_NAME": (_STR, True, "$v = i.route_name or $d" + _BV),
    "REQUESTED_SERVER_NAME": (_STR, True, "$v = $d"),  # no TLS, so never an SNI
    "CONNECTION_TERMINATION_DETAILS": (_STR, True, "$v = $d"),
}
# The upstream host is one address string: a pipe path or "ip:port".
for _name in ("UPSTREAM_HOST", "UPSTREAM_HOST_NAME", "UPSTREAM_REMOTE_ADDRESS"):
    _FIELDS[_name] = (_STR, True, _field("upstream_host"))
for _name in ("UPSTREAM_HOST_NAME_WITHOUT_PORT", "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT"):
    _FIELDS[_name] = (_STR, True, _field("upstream_host", "_split_host($v)[0]"))
_FIELDS["UPSTREAM_REMOTE_PORT"] = (
    _PORT,
    True,
    _field("upstream_host", "_split_host($v)[1]", port=True),
)
# Peer-backed addresses. "Only IP addresses have ports": a pipe's port is "" in text, null typed.
for _prefix, _attr in (
    ("UPSTREAM_LOCAL", "upstream_local"),
    ("DOWNSTREAM_LOCAL", "downstream_local"),
    ("DOWNSTREAM_DIRECT_LOCAL", "downstream_local"),
    ("DOWNSTREAM_REMOTE", "downstream_remote"),
    ("DOWNSTREAM_DIRECT_REMOTE", "downstream_direct_remote"),
):
    _FIELDS[f"{_prefix}_ADDRESS"] = (_STR, True, _field(_attr, "$v.text"))
    _FIELDS[f"{_prefix}_ADDRESS_WITHOUT_PORT"] = (_STR, True, _field(_attr, "$v.host"))
    _port = _field(_attr, "'' if $v.port is None else $v.port", port=True)
    _FIELDS[f"{_prefix}_PORT"] = (_PORT, True, _port)
del _name, _prefix, _attr, _port

# Envoy operators whose data udsproxy never has (no TLS, no dynamic metadata or filter state).
# Envoy prints "-" for them in the same situation, so configs that use them keep working.
_ALWAYS_UNSET: Final = frozenset(
    f"{side}_{what}"
    for side in ("DOWNSTREAM", "UPSTREAM")
    for what in (
        *("TLS_VERSION", "TLS_CIPHER", "TLS_SESSION_ID", "PEER_SUBJECT", "PEER_ISSUER"),
        *("PEER_CERT", "PEER_URI_SAN", "PEER_DNS_SAN", "PEER_IP_SAN", "LOCAL_URI_SAN"),
    )
) | {"DOWNSTREAM_LOCAL_SUBJECT", "DOWNSTREAM_PEER_SERIAL", "DOWNSTREAM_PEER_FINGERPRINT_256"}
_ALWAYS_UNSET_WITH_ARGS: Final = frozenset({"DYNAMIC_METADATA", "FILTER_STATE"})

# Envoy's HTTP/1 codec stores Host as :authority, so REQ(HOST) and REQ(:AUTHORITY) are one header.
# Values are bytes or None; "$h(name)" is the header's value from the one scan of the list.
_REQ_PSEUDO: Final = {
    ":method": "i.method or None",
    ":path": "i.path or None",
    ":authority": "i.authority or None",
    "host": "i.authority or None",
    # Envoy's HTTP/1 :scheme is the sanitized x-forwarded-proto, which udsproxy always sets
    ":scheme": "$h(x-forwarded-proto) or b'http'",
}
_RESP_PSEUDO: Final = {":status": "b'%d' % i.response_code if i.response_code else None"}
_HEADER_REF = re.compile(r"\$h\(([^)]*)\)")
# Envoy keeps these as one inline header and joins repeats with ","; other repeats log the first.
_JOINED: Final = frozenset(
    {
        *(b"user-agent", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"host"),
        *(b"x-request-id", b"x-envoy-original-path", b"expect", b"te", b"connection", b"via"),
        *(b"content-type", b"upgrade", b"keep-alive", b"transfer-encoding"),
    }
)
_WHITESPACE = re.compile(r"[ \t\f\v\n\r]")


def _bv(s: str) -> str:
    """The byte view of a ``str``: its UTF-8 bytes, one character each."""
    return s.encode("utf-8", "surrogateescape").decode("latin-1")


class _Utf8(dict[object, bytes]):
    """str -> UTF-8 bytes and int -> decimal bytes, memoized: the str fields a line prints
    (protocol, upstream host, cluster, flags) take few values. Bounded: cleared when large."""

    def __missing__(self, key: object) -> bytes:
        if len(self) >= 4096:
            self.clear()
        value = (
            key.encode("utf-8", "surrogateescape")
            if isinstance(key, str)
            else b"%d" % cast(int, key)
        )
        self[key] = value
        return value


class _Flags(dict[int, bytes]):
    def __init__(self, render: Callable[[int], str]) -> None:
        super().__init__()
        self._render = render

    def __missing__(self, bits: int) -> bytes:
        if len(self) >= 4096:
            self.clear()
        value = self[bits] = self._render(bits).encode()
        return value


@functools.lru_cache(maxsize=256)  # a handful of upstream hosts
def _split_host(host: str) -> tuple[str, int | str]:
    if host[:1] in ("/", "@") or ":" not in host or (host[0] != "[" and host.count(":") > 1):
        return host, ""  # a pipe, a name, or a bare IPv6 address: no port
    addr, _, port = host.rpartition(":")
    return addr.strip("[]"), int(port) if port.isdigit() else ""


_HELPERS: Final[dict[str, object]] = {
    "_flags": render_flags,
    "_flags_long": render_flags_long,
    "_fb": _Flags(render_flags),
    "_fbl": _Flags(render_flags_long),
    "_u8": _Utf8(),
    "_bv": _bv,
    "_tick": _tick,
    "_msz": _MS_Z_BYTES,
    "_js": encode_basestring,  # C-accelerated, keeps bytes >= 0x80 raw like Envoy
    "_now": time.monotonic,
    "_split_host": _split_host,
    "_ws": functools.partial(_WHITESPACE.sub, "_"),
}
# Operators rendered natively as bytes; any other goes through its str code and ``_u8``.
_INT_FIELDS: Final = frozenset(
    k for k, (kind, nullable, _code) in _FIELDS.items() if kind == _INT and not nullable
)


# -- code generation --------------------------------------------------------------------------


class _Gen:
    """Collects the statements and constants of one generated ``_render(i)`` function.

    ``binary``: operator values are bytes (or ints for %d) for a bytes %-template; otherwise
    byte-view str (or ints) for f-strings and JSON."""

    def __init__(self, empty: str, *, binary: bool = False) -> None:
        self.ns: dict[str, object] = dict(_HELPERS)
        self.body: list[str] = []
        self.empty = empty  # what text shows for an unset value: "-", or "" with omit_empty_values
        self.binary = binary
        # header name -> local holding its value, per list ("rq"/"rs"); filled by one scan
        self.headers: dict[str, dict[bytes, str]] = {"rq": {}, "rs": {}}
        self.sort_keys = True
        self._count = 0

    def name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def const(self, value: object) -> str:
        name = self.name("_k")
        self.ns[name] = value
        return name

    def emit(self, code: str, var: str, unset: str) -> None:
        for line in code.replace("$v", var).replace("$d", unset).split("\n"):
            if line == "$BV":
                if self.binary:
                    continue
                line = _BV_STR.replace("$v", var)
            self.body.append(line)

    def header_var(self, src: str, name: bytes) -> str:
        slots = self.headers[src]
        if name not in slots:
            slots[name] = self.name(f"{src}_")
        return slots[name]

    def op(self, cmd: _Command, where: str, unset: str) -> tuple[str, str, bool]:
        """Emit code putting one operator's value (str or int) in a new local, or ``unset`` (an
        expression) when there is none. Returns (local, JSON kind, may be unset)."""
        var, name = self.name("v"), cmd.name
        if (spec := _FIELDS.get(name)) is not None:
            _check(cmd, where)
            self.emit(spec[2], var, unset)
            return var, spec[0], spec[1]
        if name in ("REQ", "RESP", "TRAILER"):
            self._header(cmd, var, where, unset)
        elif name == "START_TIME":
            _check(cmd, where, params="optional")
            self.emit(f"$v = {self.const(_start_time(cmd.arg, where))}(i.start_time)", var, unset)
            return var, _STR, False
        elif name == "RESPONSE_CODE_DETAILS":
            _check(cmd, where, params="optional")
            self.emit("$v = i.response_code_details or $d" + _BV, var, unset)
            if cmd.arg != "ALLOW_WHITESPACES":  # Envoy replaces whitespace unless told not to
                self.emit("if $v: $v = _ws($v)", var, unset)
        elif name == "LOCAL_REPLY_BODY":
            # set only on local replies (Stream._local_reply); empty elsewhere, as in Envoy
            _check(cmd, where)
            self.emit("$v = getattr(i, 'local_reply_body', b'').decode('latin-1')", var, unset)
            return var, _STR, False
        elif name == "HOSTNAME":
            _check(cmd, where)
            try:
                host = self.const(_bv(socket.gethostname()))
            except OSError:
                host = "$d"
            self.emit(f"$v = {host}", var, unset)
        elif name in _ALWAYS_UNSET or name in _ALWAYS_UNSET_WITH_ARGS:
            args = "required" if name in _ALWAYS_UNSET_WITH_ARGS else "none"
            _check(cmd, where, params=args, length=args == "required")
            self.emit("$v = $d", var, unset)
        else:
            raise FormatError(f"{where}: unknown command operator %{name}% at position {cmd.pos}")
        return var, _STR, True

    def op_bytes(self, cmd: _Command, where: str) -> tuple[str, str]:
        """Emit code putting one operator's value in a new local: bytes, or an int where the
        template says %d. Returns (local, "%b" or "%d")."""
        unset = repr(self.empty.encode())
        name = cmd.name
        if name in _INT_FIELDS:
            return self.op(cmd, where, unset)[0], "%d"
        var = self.name("v")
        if name in ("REQ", "RESP", "TRAILER"):
            self._header(cmd, var, where, unset)
        elif name == "START_TIME":
            _check(cmd, where, params="optional")
            if cmd.arg:  # a byte view: config text is UTF-8 already
                fn = self.const(_start_time(cmd.arg, where))
                self.emit(f"$v = {fn}(i.start_time).encode('latin-1')", var, unset)
            else:
                cache = self.const([(-1, b"")])
                self.emit(_START_TIME_BYTES.replace("$C", cache), var, unset)
        elif name in ("RESPONSE_FLAGS", "RESPONSE_FLAGS_LONG"):
            _check(cmd, where)
            table = "_fb" if name == "RESPONSE_FLAGS" else "_fbl"
            self.emit(f"$v = {table}[i.response_flags]", var, unset)
        elif name == "LOCAL_REPLY_BODY":
            _check(cmd, where)
            self.emit("$v = getattr(i, 'local_reply_body', b'')", var, unset)
        elif name == "HOSTNAME":
            _check(cmd, where)
            try:
                host = self.const(socket.gethostname().encode("utf-8", "surrogateescape"))
            except OSError:
                host = unset
            self.emit(f"$v = {host}", var, unset)
        else:  # the str code (no byte view), then its UTF-8 bytes
            raw = self.op(cmd, where, "None")[0]
            self.emit(f"$v = {unset} if {raw} is None else _u8[{raw}]", var, unset)
        return var, "%b"

    def _header(self, cmd: _Command, var: str, where: str, unset: str) -> None:
        _check(cmd, where, params="required", length=True)
        names = cmd.arg.lower().split("?")
        if len(names) > 2:
            raise FormatError(f"{where}: more than 1 alternative header in %{cmd.name}({cmd.arg})%")
        if not all(_HEADER_NAME.fullmatch(n) for n in names):
            raise FormatError(f"{where}: invalid header name in %{cmd.name}({cmd.arg})%")
        if cmd.name == "TRAILER":  # HTTP/1.1 trailers are not kept
            self.emit("$v = $d", var, unset)
            return
        pseudo, src = (_REQ_PSEUDO, "rq") if cmd.name == "REQ" else (_RESP_PSEUDO, "rs")
        for n, name in enumerate(names):
            if (lookup := pseudo.get(name)) is None:
                lookup = "None" if name.startswith(":") else f"$h({name})"
            lookup = _HEADER_REF.sub(lambda m: self.header_var(src, m[1].encode()), lookup)
            self.emit(f"$v = {lookup}" if n == 0 else f"if $v is None: $v = {lookup}", var, unset)
        cut = "" if cmd.length is None else f"[:{cmd.length}]"
        if self.binary:
            if cut:
                self.emit(f"$v = $d if $v is None else $v{cut}", var, unset)
            else:
                self.emit("if $v is None: $v = $d", var, unset)
        else:
            self.emit(f"$v = $d if $v is None else $v{cut}.decode('latin-1')", var, unset)

    def text(self, pieces: list[str | _Command], where: str) -> str:
        """Emit the operators of a format; return an expression for the whole text."""
        parts: list[str] = []
        for piece in pieces:
            if isinstance(piece, str):
                parts.append(repr(_bv(piece)))
            else:
                var = self.op(piece, where, repr(self.empty))[0]
                parts.append(f"f'{{{var}}}'")  # adjacent literals: Python joins them when compiling
        return "(" + " ".join(parts) + ")" if parts else "''"

    def template(self, pieces: list[str | _Command], where: str) -> str:
        """Emit the operators of a text format as bytes; return an expression for the line."""
        template: list[bytes] = []
        args: list[str] = []
        for piece in pieces:
            if isinstance(piece, str):
                template.append(piece.encode("utf-8", "surrogateescape").replace(b"%", b"%%"))
            else:
                var, conv = self.op_bytes(piece, where)
                template.append(conv.encode())
                args.append(var)
        if not args:
            return repr(b"".join(template).replace(b"%%", b"%"))
        return f"{self.const(b''.join(template))} % ({', '.join(args)},)"

    def _scans(self) -> list[str]:
        """One pass over each header list the format reads: first value of each name, or the
        ","-join of repeats for Envoy's inline headers. Cheaper than a dict of every header."""
        out: list[str] = []
        for src, field in (("rq", "request_headers"), ("rs", "response_headers")):
            slots = self.headers[src]
            if not slots:
                continue
            out.append(" = ".join([*slots.values(), "None"]))
            out.append(f"for n, h in i.{field}:")
            out.append(f"    if n in {self.const(frozenset(slots))}:")
            for k, (name, var) in enumerate(slots.items()):
                out.append(f"        {'if' if k == 0 else 'elif'} n == {name!r}:")
                out.append(f"            if {var} is None: {var} = h")
                if name in _JOINED:
                    out.append(f"            else: {var} += b',' + h")
        return out

    def build(self, result: str) -> Formatter:
        body = ["    " + line for line in [*self._scans(), *self.body, f"return {result}"]]
        if self.binary:  # the byte view of the same line, for callers that want str
            lines = ["def _render(i):", *body, "def _format(i):"]
            lines.append("    return _render(i).decode('latin-1')")
        else:  # json_format: built as a byte view, encoded once
            lines = ["def _format(i):", *body, "def _render(i):"]
            lines.append("    return _format(i).encode('latin-1')")
        source = "\n".join(lines) + "\n"
        exec(compile(source, "<udsproxy access log format>", "exec"), self.ns)
        return Formatter(
            cast(Callable[[StreamInfo], bytes], self.ns["_render"]),
            cast(Callable[[StreamInfo], str], self.ns["_format"]),
            source,
        )


def command_names(fmt: str, where: str = "format") -> list[str]:
    """The command operators of a format, in order (``%%`` is not one); FormatError if the
    format does not parse."""
    return [p.name for p in _parse(fmt, where) if isinstance(p, _Command)]


def literal(fmt: str) -> bytes | None:
    """The bytes a format without commands stands for (``%%`` is ``%``), or None."""
    pieces = _parse(fmt, "format")
    if any(isinstance(p, _Command) for p in pieces):
        return None
    return "".join(p for p in pieces if isinstance(p, str)).encode()


def compile_text(
    fmt: str, *, omit_empty_values: bool = False, where: str = "access log format"
) -> Formatter:
    """Compile an Envoy text format (a ``text_format_source`` string, usually "\\n"-terminated).
    ``where`` starts the error messages."""
    g = _Gen("" if omit_empty_values else "-", binary=True)
    return g.build(g.template(_parse(fmt, where), where))


# -- json_format ------------------------------------------------------------------------------


def _json_leaf(g: _Gen, value: object, where: str) -> tuple[str, bool]:
    """Emit one json_format value; return (expression of its JSON text, may be omitted)."""
    if isinstance(value, dict):
        return _json_object(g, value, where, root=False)
    if isinstance(value, list | tuple):
        items = [_json_leaf(g, v, f"{where}[{n}]") for n, v in enumerate(value)]
        return _json_join(g, "[", "]", [("", *item) for item in items]), False
    if isinstance(value, bool) or value is None:
        return repr(json.dumps(value)), False
    if isinstance(value, int | float):  # Envoy prints integral numbers without ".0"
        return repr(json.dumps(int(value) if float(value).is_integer() else value)), False
    if not isinstance(value, str):
        raise FormatError(f"{where}: unsupported value {value!r} (strings, numbers, bools, maps)")
    pieces = _parse(value, where)
    commands = [p for p in pieces if isinstance(p, _Command)]
    if not commands:
        return repr(encode_basestring(_bv("".join(p for p in pieces if isinstance(p, str))))), False
    if len(pieces) != 1:  # text and operators: a string, unset parts print "-" (or "")
        out = g.name("j")
        g.body.append(f"{out} = _js({g.text(pieces, where)})")
        return out, False
    var, kind, nullable = g.op(commands[0], where, "None")  # a whole value: typed
    out, omit = g.name("j"), g.empty == ""
    null = "None" if omit else "'null'"  # None: leave the member out
    conv = {_STR: f"_js({var})", _INT: f"str({var})"}.get(kind)
    if conv is None:  # PORT: a pipe has none, and typed JSON says so with null
        g.body.append(f"{out} = {null} if {var} is None or {var} == '' else str({var})")
    elif nullable:
        g.body.append(f"{out} = {null} if {var} is None else {conv}")
    else:
        g.body.append(f"{out} = {conv}")
    return out, omit and (nullable or kind == _PORT)


def _json_join(g: _Gen, open_: str, close: str, items: list[tuple[str, str, bool]]) -> str:
    """Emit code joining (key prefix, value expr, may be omitted) items; return the local."""
    out = g.name("o")
    if not any(omittable for _key, _expr, omittable in items):
        parts = [repr(open_)]
        for n, (key, expr, _omittable) in enumerate(items):
            value = expr if expr[0] in "'\"" else f"f'{{{expr}}}'"  # a constant or a local
            parts += [repr(("," if n else "") + key), value]
        g.body.append(f"{out} = ({' '.join([*parts, repr(close)])})")
        return out
    acc = g.name("p")  # omit_empty_values: decide per request which members are present
    g.body.append(f"{acc} = []")
    for key, expr, omittable in items:
        add = f"{acc}.append({repr(key) + ' + ' if key else ''}{expr})"
        g.body.append(f"if {expr} is not None: {add}" if omittable else add)
    g.body.append(f"{out} = {open_!r} + ','.join({acc}) + {close!r}")
    return out


def _json_object(g: _Gen, struct: dict[Any, object], where: str, *, root: bool) -> tuple[str, bool]:
    members = list(struct.items())
    if g.sort_keys:
        members.sort(key=lambda kv: str(kv[0]))
    items: list[tuple[str, str, bool]] = []
    for key, value in members:
        if not isinstance(key, str):
            raise FormatError(f"{where}: keys must be strings, got {key!r}")
        expr, omittable = _json_leaf(g, value, f"{where}.{key}")
        items.append((_js_key(key), expr, omittable))
    out = _json_join(g, "{", "}", items)
    if root or g.empty != "" or not items:
        return out, False
    # omit_empty_values collapses a nested object whose members were all omitted.
    g.body.append(f"if {out} == '{{}}': {out} = None")
    return out, True


def _js_key(key: str) -> str:
    return encode_basestring(_bv(key)) + ":"


def compile_json(
    struct: dict[str, object], *, omit_empty_values: bool = False, sort_keys: bool = True
) -> Formatter:
    """Compile a ``json_format`` struct into one compact JSON object per line.

    An operator that is a whole string value renders typed (numbers, null when unset); anything
    else renders as a string. Keys are sorted like current Envoy (since the 1.32 JSON formatter;
    ``sort_keys=False`` keeps config order). With ``omit_empty_values``, null members are left out
    and nested objects left empty disappear; the root object is always printed.
    """
    g = _Gen("" if omit_empty_values else "-")
    g.sort_keys = sort_keys
    if not isinstance(struct, dict):
        raise FormatError("json_format: expected a map")
    out, _ = _json_object(g, struct, "json_format", root=True)
    return g.build(f"{out} + '\\n'")


def compile_access_log(cfg: schema.AccessLog) -> Formatter:
    """The formatter for one ``envoy.access_loggers.file`` config (default format if none)."""
    if cfg.json_format is not None:
        return compile_json(cfg.json_format, omit_empty_values=cfg.omit_empty_values)
    if cfg.text_format is not None:
        return compile_text(cfg.text_format, omit_empty_values=cfg.omit_empty_values)
    return compile_text(DEFAULT_FORMAT)
