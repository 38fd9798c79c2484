"""Fuzz harness: the config loader (udsproxy/config/load.py). Any input either loads or raises
ConfigError, never another exception.

Two ways in, picked by the first byte: the bytes as YAML text (``load_yaml``: the YAML parser,
tabs, odd scalars), or a seed config parsed and then mutated as a tree (``load_tree``: keys
dropped, values swapped for other types, unknown fields, deep copies moved around), which
reaches the validator and the converter far more often than byte noise does. The tree edits
are drawn from a random generator seeded with the input, so an input always means the same
tree.
"""

from __future__ import annotations

import contextlib
import copy
import random
from typing import Any

from fuzz._common import Finding, main, seeds
from udsproxy.config.load import load_tree, load_yaml
from udsproxy.config.parse import parse_yaml
from udsproxy.errors import ConfigError

_TREES: list[Any] = []
_SCALARS: list[Any] = [
    None, True, False, 0, -1, 1, 2**31, 2**64, 0.5, -0.0, float("inf"), float("nan"), "", "0",
    "1s", "-1s", "0.05s", "1e9s", "abc", "/dev/null", "127.0.0.1", "::1", "[::1]:80", "%",
    "%REQ(:PATH)%", "STRICT_DNS", "ROUND_ROBIN", "unix:/tmp/x.sock", "\x00", "é", [], {}, [{}],
]  # fmt: skip


def _trees() -> list[Any]:
    if not _TREES:
        for data in seeds("config"):
            with contextlib.suppress(ConfigError):
                _TREES.append(parse_yaml(data[1:].decode("utf-8", "replace")))
    return _TREES


def _nodes(tree: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key) pair in the tree."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.append((tree, k))
            _nodes(v, out)
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out.append((tree, i))
            _nodes(v, out)
    return out


def mutate_tree(tree: Any, rng: random.Random) -> Any:
    tree = copy.deepcopy(tree)
    for _ in range(rng.randint(1, 6)):
        nodes = _nodes(tree, [])
        if not nodes:
            break
        parent, key = rng.choice(nodes)
        op = rng.randrange(6)
        if op == 0:
            del parent[key]
        elif op == 1:
            parent[key] = copy.deepcopy(rng.choice(_SCALARS))
        elif op == 2:  # another node's value, anywhere: right shape, wrong place
            other, okey = rng.choice(nodes)
            parent[key] = copy.deepcopy(other[okey])
        elif op == 3 and isinstance(parent, dict):
            parent[rng.choice(["unknown", "name", "typed_config", "@type", key + "_x"])] = (
                copy.deepcopy(rng.choice(_SCALARS))
            )
        elif op == 4 and isinstance(parent[key], list) and parent[key]:
            parent[key].append(copy.deepcopy(rng.choice(parent[key])))
        elif op == 5 and isinstance(parent[key], str):
            s = parent[key]
            i = rng.randint(0, len(s))
            parent[key] = s[:i] + rng.choice(["", "x", "0", "%", ":", "/", "\n", "*"]) + s[i + 1 :]
    return tree


def check(data: bytes) -> None:
    if not data:
        return
    try:
        if data[0] < 0x80:
            load_yaml(data[1:].decode("utf-8", "replace"))
        else:
            trees = _trees()
            rng = random.Random(data)
            load_tree(mutate_tree(rng.choice(trees), rng))
    except ConfigError:
        pass
    except RecursionError as exc:  # a YAML alias loop or a very deep document
        raise Finding("RecursionError") from exc


if __name__ == "__main__":
    main(check, "config")
