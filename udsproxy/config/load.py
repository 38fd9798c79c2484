"""Load an Envoy v3 bootstrap (YAML/JSON file, YAML text or an already-parsed mapping).

With ``parse`` and ``dynamic``, where ``udsproxy.config`` reads files: ``load_config`` reads the
bootstrap alone (``parse.parse_file``); ``load_and_resolve`` also reads the CDS/LDS files it names
and checks the TLS certificate files (``dynamic.resolve``). Problems come back as one ConfigError:
YAML syntax errors and duplicate keys with ``file:line:column``; otherwise every schema error
(``validate``) followed by every feature udsproxy refuses (``convert``). While the schema has
errors, convert's consistency checks (required fields, unknown clusters, ...) are held back: a
value dropped for a schema error would make them report something that is not the real problem.
The v2-era spellings listed in ``v2`` are read as v3, each with a warning in Bootstrap.warnings.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from udsproxy.config.convert import REFUSED, convert
from udsproxy.config.dynamic import resolve
from udsproxy.config.parse import parse_file, parse_yaml
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
    return resolve(source if isinstance(source, Bootstrap) else load_config(source))
