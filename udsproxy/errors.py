"""Typed errors shared across layers. Pure: no I/O."""

from __future__ import annotations

__all__ = ["ConfigError", "ProtocolError"]


class ConfigError(Exception):
    """One or more config problems, each ``(yaml_path, message)``; all are reported at once."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = list(errors)
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(f"{path}: {msg}" if path else msg for path, msg in self.errors)


class ProtocolError(Exception):
    """A peer broke HTTP/1.1. ``status`` is what a downstream peer is answered with."""

    def __init__(self, message: str, status: int = 400, details: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.details = details or message
