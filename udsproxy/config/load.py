"""Load an Envoy v3 bootstrap (YAML/JSON file, YAML text or an already-parsed mapping).

With ``dynamic``, the only modules of ``udsproxy.config`` that do I/O: ``load_config`` reads the
bootstrap alone; ``load_and_resolve`` also reads the CDS/LDS files it names and checks the TLS
certificate files (``dynamic.resolve``). Problems come back as one ConfigError:
YAML syntax errors and duplicate keys with ``file:line:column``; otherwise every schema error
(``validate``) followed by every feature udsproxy refuses (``convert``). While the schema has
errors, convert's consistency checks (required fields, unknown clusters, ...) are held back: a
value dropped for a schema error would make them report something that is not the real problem.
The v2-era spellings listed in ``v2`` are read as v3, each with a warning in Bootstrap.warnings.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import yaml

from udsproxy.config.convert import REFUSED, convert
from udsproxy.config.schema import Bootstrap
from udsproxy.config.v2 import upgrade_bootstrap
from udsproxy.config.validate import check, describe
from udsproxy.errors import ConfigError

__all__ = [
    "ConfigSource", "load_and_resolve", "load_config", "load_file", "load_tree", "load_yaml",
    "parse_file", "parse_yaml",
]  # fmt: skip

# What a config may be given as: a Bootstrap, a parsed mapping, YAML text or a file path.
ConfigSource = Bootstrap | Mapping[str, Any] | str | os.PathLike[str]

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
    loader = _Loader(text)
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


def load_tree(tree: object) -> Bootstrap:
    """Validate and convert an already-parsed bootstrap. Pure."""
    if tree is None:
        raise ConfigError([("", "the config is empty")])
    if not isinstance(tree, Mapping):
        raise ConfigError([("", f"expected a mapping at the top level, got {describe(tree)}")])
    if "resources" in tree and "static_resources" not in tree:
        # The file a path-based xDS config points at; easy to pass by mistake.
        message = "unknown field 'resources': this is an xDS resource file, not a bootstrap"
        raise ConfigError([("resources", message)])
    upgraded, warnings = upgrade_bootstrap(tree)
    canonical, errors = check(upgraded)
    try:
        bootstrap = convert(canonical)
    except ConfigError as exc:
        refused = [e for e in exc.errors if not errors or REFUSED in e[1]]
        raise ConfigError(errors + refused) from None
    if errors:
        raise ConfigError(errors)
    if warnings:
        bootstrap = dataclasses.replace(bootstrap, warnings=(*warnings, *bootstrap.warnings))
    return bootstrap


def load_yaml(text: str, filename: str = "<string>") -> Bootstrap:
    """Load a bootstrap from YAML (or JSON) text; ``filename`` only labels syntax errors."""
    return load_tree(parse_yaml(text, filename))


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


def load_file(path: str | os.PathLike[str]) -> Bootstrap:
    """Load a bootstrap file: ``.json`` is read as JSON, anything else as YAML (like Envoy)."""
    return load_tree(parse_file(path))


def load_config(source: Mapping[str, Any] | str | os.PathLike[str]) -> Bootstrap:
    """Load from a parsed mapping, YAML text, or a file path.

    A ``str`` is YAML text if it contains a newline, '{' or ':' (no sane config path does, and
    no useful bootstrap fits on one line without them); otherwise it is a path.
    """
    if isinstance(source, Mapping):
        return load_tree(source)
    if isinstance(source, str) and any(c in source for c in "\n{:"):
        return load_yaml(source)
    return load_file(source)


def load_and_resolve(source: ConfigSource) -> Bootstrap:
    """``load_config``, then ``dynamic.resolve``: the CDS/LDS files the bootstrap names are read
    and merged in, and every TLS certificate file is checked. What ``--mode validate`` runs.

    A Bootstrap is resolved as it is (its files re-read, if it is a resolved one).
    """
    from udsproxy.config.dynamic import resolve  # dynamic reads files with parse_file

    return resolve(source if isinstance(source, Bootstrap) else load_config(source))
