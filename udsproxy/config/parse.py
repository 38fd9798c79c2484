"""YAML and JSON text and files -> plain trees (dicts, lists, scalars); the one place config
files are parsed. Below both ``load`` (the bootstrap) and ``dynamic`` (the CDS/LDS files it names),
which each read files with ``parse_file``. Syntax errors and duplicate keys come back as one
ConfigError with ``file:line:column``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml

from udsproxy.errors import ConfigError

__all__ = ["parse_file", "parse_yaml"]

_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """SafeLoader that records duplicate keys instead of keeping the last one silently, and
    leaves dates as strings (Envoy's YAML reader has no timestamp type)."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[yaml.Mark, str]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        _record_duplicates(node, self.duplicates)
        return super().construct_mapping(node, deep=deep)


def _record_duplicates(node: yaml.MappingNode, duplicates: list[tuple[yaml.Mark, str]]) -> None:
    seen: set[tuple[str, str]] = set()
    for key_node, _ in node.value:
        # Keys brought in by a '<<' merge may be overridden; only literal repeats are errors.
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE:
            key = (key_node.tag, key_node.value)
            if key in seen:
                duplicates.append((key_node.start_mark, key_node.value))
            seen.add(key)


# libyaml's scanner and parser, with _Loader's resolvers and constructor: a few times faster
# than PyYAML's own (12 ms of a start for the sample config). Used only for a text without tabs
# (the tab rule below is PyYAML's) that it reads without an error or a duplicate key; any other
# text goes to _Loader, so every error message and position stays PyYAML's.
_FastLoader: type[Any] | None = None
if getattr(yaml, "__with_libyaml__", False):

    class _CLoader(yaml.CSafeLoader):
        yaml_implicit_resolvers = _Loader.yaml_implicit_resolvers

        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self.duplicates: list[tuple[yaml.Mark, str]] = []

        def construct_mapping(
            self, node: yaml.MappingNode, deep: bool = False
        ) -> dict[Hashable, Any]:
            _record_duplicates(node, self.duplicates)
            return super().construct_mapping(node, deep=deep)

    _FastLoader = _CLoader


def _where(filename: str, mark: yaml.Mark | None) -> str:
    return f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else filename


def _separating_tab(text: str, mark: yaml.Mark | None) -> int:
    """The offset of the tab at ``mark`` if YAML counts it as white space (after a line's
    first token, e.g. at its end), else -1. PyYAML refuses such tabs; YAML (and Envoy's parser)
    does not. A tab in indentation stays an error: YAML forbids it there."""
    if mark is None or not 0 <= mark.index < len(text) or text[mark.index] != "\t":
        return -1
    line_start = text.rfind("\n", 0, mark.index) + 1
    return mark.index if text[line_start : mark.index].strip() else -1


def parse_yaml(text: str, filename: str = "<string>") -> Any:
    """Parse YAML text into plain dicts/lists/scalars; syntax errors raise ConfigError."""
    for _ in range(text.count("\t") + 1):
        try:
            return _parse_yaml(text, filename)
        except _TabError as exc:
            # Read the tab as the space it stands for; the line and column stay the same.
            text = text[: exc.index] + " " + text[exc.index + 1 :]
    return _parse_yaml(text, filename)


class _TabError(Exception):
    def __init__(self, index: int) -> None:
        self.index = index


_UNSURE: Any = object()  # the fast reader met something only _Loader reports right


def _parse_fast(text: str) -> Any:
    if _FastLoader is None or "\t" in text:
        return _UNSURE
    loader = _FastLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError:
        return _UNSURE
    finally:
        loader.dispose()
    return _UNSURE if loader.duplicates else data


def _parse_yaml(text: str, filename: str) -> Any:
    data = _parse_fast(text)
    if data is not _UNSURE:
        return data
    try:
        # the reader refuses non-printable characters already here (found by fuzz/config.py)
        loader = _Loader(text)
    except yaml.YAMLError as exc:
        raise ConfigError([(filename, f"YAML error: {exc}")]) from None
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        tab = _separating_tab(text, exc.problem_mark)
        if tab >= 0:
            raise _TabError(tab) from None
        problem = exc.problem or "invalid YAML"
        context = f" ({exc.context})" if exc.context else ""
        where = _where(filename, exc.problem_mark or exc.context_mark)
        raise ConfigError([(where, f"YAML syntax error: {problem}{context}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([(filename, f"YAML error: {exc}")]) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        duplicates = sorted(loader.duplicates, key=lambda d: (d[0].line, d[0].column))
        errors = [(_where(filename, mark), f"duplicate key '{key}'") for mark, key in duplicates]
        raise ConfigError(errors)
    return data


def parse_file(path: str | os.PathLike[str], what: str = "config file") -> Any:
    """Read and parse a file: ``.json`` as JSON, anything else as YAML (like Envoy).

    Errors name the file (with line and column for syntax errors); ``what`` words the read error.
    """
    name = os.fspath(path)
    try:
        text = Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([(name, f"cannot read the {what}: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([(name, f"the {what} is not UTF-8: {exc.reason}")]) from None
    if name.endswith(".json"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                [(f"{name}:{exc.lineno}:{exc.colno}", f"JSON syntax error: {exc.msg}")]
            ) from None
    return parse_yaml(text, name)
