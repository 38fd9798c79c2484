"""udsproxy's own log (not the access log): Envoy's ``--log-path``, ``--log-format`` and
``--component-log-level``, and the reopen that SIGUSR1 and ``POST /reopen_logs`` trigger.

``--log-format`` takes Envoy's spdlog pattern (``[%Y-%m-%d %T.%e][%t][%l][%n] %v``); it is
compiled once into a list of pieces, and a flag spdlog has but udsproxy cannot fill is an error
at start, never printed as garbage.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from udsproxy.accesslog.sink import SinkRegistry

__all__ = [
    "LEVELS",
    "SpdlogFormatter",
    "compile_spdlog",
    "parse_component_levels",
    "reopen_logs",
    "setup_logging",
]

LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO,
          "warning": logging.WARNING, "warn": logging.WARNING, "error": logging.ERROR,
          "critical": logging.CRITICAL, "off": logging.CRITICAL + 10}  # fmt: skip
_ENVOY_LEVEL = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
                logging.ERROR: "error", logging.CRITICAL: "critical"}  # fmt: skip
DEFAULT_FORMAT = "[%(asctime)s][%(levelname)s][%(name)s] %(message)s"

_Piece = Callable[[logging.LogRecord], str]


def _strftime(fmt: str) -> _Piece:
    return lambda r: time.strftime(fmt, time.localtime(r.created))


def _offset(r: logging.LogRecord) -> str:
    z = time.strftime("%z", time.localtime(r.created))  # +0100
    return f"{z[:3]}:{z[3:]}" if len(z) == 5 else z


_FLAGS: dict[str, _Piece] = {
    "v": lambda r: r.getMessage(),
    "t": lambda r: str(r.thread),
    "P": lambda r: str(r.process),
    "n": lambda r: r.name,
    "l": lambda r: _ENVOY_LEVEL.get(r.levelno, r.levelname.lower()),
    "L": lambda r: _ENVOY_LEVEL.get(r.levelno, r.levelname)[0].upper(),
    "e": lambda r: f"{int(r.msecs):03d}",
    "f": lambda r: f"{int((r.created % 1) * 1e6):06d}",
    "F": lambda r: f"{int((r.created % 1) * 1e9):09d}",
    "z": _offset,
    "%": lambda r: "%",
    "@": lambda r: f"{r.filename}:{r.lineno}",
    "s": lambda r: r.filename,
    "g": lambda r: r.pathname,
    "#": lambda r: str(r.lineno),
    "!": lambda r: r.funcName,
}
for _flag, _fmt in {"a": "%a", "A": "%A", "b": "%b", "B": "%B", "c": "%a %b %d %H:%M:%S %Y",
                    "C": "%y", "Y": "%Y", "D": "%m/%d/%y", "x": "%m/%d/%y", "m": "%m", "d": "%d",
                    "H": "%H", "I": "%I", "M": "%M", "S": "%S", "p": "%p", "r": "%I:%M:%S %p",
                    "R": "%H:%M", "T": "%H:%M:%S", "X": "%H:%M:%S"}.items():  # fmt: skip
    _FLAGS[_flag] = _strftime(_fmt)


def compile_spdlog(pattern: str) -> list[str | _Piece]:
    """Envoy's ``--log-format`` flags (the ones its docs list) into pieces; raises ValueError
    naming a flag it does not know."""
    pieces: list[str | _Piece] = []
    text: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch != "%":
            text.append(ch)
            i += 1
            continue
        flag = pattern[i + 1 : i + 2]
        piece = _FLAGS.get(flag)
        if piece is None:
            shown = f"%{flag}" if flag else "a trailing %"
            raise ValueError(f"--log-format: {shown} is not a flag udsproxy supports")
        if flag == "%":
            text.append("%")
        else:
            if text:
                pieces.append("".join(text))
                text = []
            pieces.append(piece)
        i += 2
    if text:
        pieces.append("".join(text))
    return pieces


class SpdlogFormatter(logging.Formatter):
    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pieces = compile_spdlog(pattern)

    def format(self, record: logging.LogRecord) -> str:
        line = "".join(p if isinstance(p, str) else p(record) for p in self.pieces)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def parse_component_levels(text: str) -> dict[str, int]:
    """``upstream:debug,connection:trace`` -> logger name -> level (the udsproxy.<name> loggers,
    as ``POST /logging?<name>=<level>`` sets them). Raises ValueError."""
    wanted: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, level = item.partition(":")
        if not sep or not name or level.lower() not in LEVELS:
            raise ValueError(
                f"--component-log-level: '{item}' is not <component>:<level> with a level among "
                + ", ".join(LEVELS)
            )
        wanted[f"udsproxy.{name.removeprefix('udsproxy.')}"] = LEVELS[level.lower()]
    return wanted


_file_handlers: list[logging.FileHandler] = []


def setup_logging(
    level: str,
    *,
    log_path: str | None = None,
    log_format: str | None = None,
    component_levels: dict[str, int] | None = None,
) -> None:
    """The root logger to stderr, or to ``log_path`` (reopened with the access logs)."""
    handler: logging.Handler
    if log_path and log_path not in ("/dev/stderr", "/dev/stdout"):
        file_handler = logging.FileHandler(log_path, encoding="utf-8")
        _file_handlers.append(file_handler)
        handler = file_handler
    else:
        handler = logging.StreamHandler(sys.stdout if log_path == "/dev/stdout" else sys.stderr)
    formatter = SpdlogFormatter(log_format) if log_format else logging.Formatter(DEFAULT_FORMAT)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level, logging.INFO))
    for name, lvl in (component_levels or {}).items():
        logging.getLogger(name).setLevel(lvl)


def reopen_logs(sinks: SinkRegistry) -> None:
    """SIGUSR1 / ``POST /reopen_logs``: every access log file and the ``--log-path`` file."""
    count = sinks.reopen_all()
    reopen_log_path()
    logging.getLogger("udsproxy").info(
        "reopened %d access log file(s)%s", count, " and the log file" if _file_handlers else ""
    )


def reopen_log_path() -> None:
    """The ``--log-path`` file only: what the supervisor, which has no access log, reopens."""
    for handler in _file_handlers:
        handler.acquire()
        try:
            old = handler.stream
            handler.stream = handler._open()
            if old is not None:
                old.close()
        except OSError as exc:
            logging.getLogger("udsproxy").warning("cannot reopen %s: %s", handler.baseFilename, exc)
        finally:
            handler.release()
