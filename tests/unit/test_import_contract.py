"""The import contract (issue 10): no import cycles in udsproxy/, lower layers never import higher
ones, only the CLI imports the tools, and the pure modules import nothing that does I/O.

Every import counts: at module level, inside functions, under ``if TYPE_CHECKING:``. The modules
are parsed with ``ast``, never imported, so this is fast and opens no socket. Importing
``a.b.c`` also runs the ``__init__`` of ``a`` and ``a.b``; those implicit parent imports are not
edges (a package's ``__init__`` importing its own submodules is not a cycle). Imports spelled as
strings (``importlib.import_module``) are not seen.
"""

from __future__ import annotations

import ast
import functools
import itertools
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

# ==== The contract: edit here when modules move ==================================================
#
# Layers, low to high. A module may import modules of its own layer and of the layers below it,
# never above. A pattern names a module or a package with everything under it; the longest pattern
# that matches a module wins, and a module that no pattern matches fails the test (place it). A
# pattern may name a module that does not exist (yet, or any more): it matches nothing.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "core: values, the codec, and what compiles the config (no I/O but the config's readers)",
        (
            "udsproxy",  # the package itself: __version__
            "udsproxy.errors",
            "udsproxy.flags",
            "udsproxy.streaminfo",
            "udsproxy.codec",
            "udsproxy.router.routes",  # the route table: compiled config
            "udsproxy.router.retry",  # a retry policy compiled, a request's retries (values)
            "udsproxy.upstream.resources",  # a cluster's circuit breakers: counters and limits
            "udsproxy.headers",
            "udsproxy.headermatch",
            "udsproxy.pathnorm",
            "udsproxy.lb",
            "udsproxy.localreply",
            "udsproxy.runtime",  # Envoy's runtime values (not the process layer below)
            "udsproxy.config",
            # Below config: config.convert compiles log formats with it at config time.
            "udsproxy.accesslog.formatter",
        ),
    ),
    (
        "observers: stats, the access log's sink, udsproxy's own log",
        ("udsproxy.stats", "udsproxy.accesslog", "udsproxy.applog"),
    ),
    # The data path, along Envoy's seams, from the upstream socket up to the listener's socket.
    # Where two seams call each other, the lower one declares what it needs (a Protocol or a base
    # class) and the higher one provides it: nothing imports upward, not even for a type.
    (
        "transport helpers: splice(2), TLS contexts, DNS",
        (
            "udsproxy.splice",
            "udsproxy.tunnel",
            "udsproxy.tls",
            "udsproxy.upstream_tls",
            "udsproxy.dns",
            "udsproxy.write_batch",
            "udsproxy.http.read_gate",
            "udsproxy.http.header_mutation",
            "udsproxy.http._request_id",  # C (its .pyi is read here)
        ),
    ),
    ("upstream: the pool (knows no stream)", ("udsproxy.upstream.pool",)),
    ("upstream: the connection (codec client)", ("udsproxy.upstream.connection",)),
    ("upstream: the cluster, its hosts and load balancer", ("udsproxy.upstream",)),
    ("http filters (see a stream through FilterCallbacks)", ("udsproxy.filters",)),
    (
        "the connection manager's compiled config and observers",
        ("udsproxy.http.conn_manager", "udsproxy.http.admission"),
    ),
    ("the active stream (Envoy's ActiveStream)", ("udsproxy.http.active_stream",)),
    ("the router: one upstream request per try", ("udsproxy.router",)),
    ("the downstream connection (codec server)", ("udsproxy.http",)),
    (
        "runtime: listeners, server and reload, admin, supervisor, and what the CLI needs",
        (
            "udsproxy.server",
            "udsproxy.admin",
            "udsproxy.supervisor",
            "udsproxy.watch",
            "udsproxy.sdnotify",
            "udsproxy.procsignals",
            "udsproxy.envoy_flags",
            "udsproxy.cpus",
            "udsproxy.native",
            "udsproxy.sample_conf",
        ),
    ),
    ("tools: udsproxy demo, udsproxy bench (never imported by the proxy)", ("udsproxy.tools",)),
    ("entry points: the CLI dispatches to the runtime and the tools", ("udsproxy.cli",)),
)
# The entry point's own module sits with the CLI.
LAYER_ALIASES = {"udsproxy.__main__": "udsproxy.cli"}

# Packages only these modules may import (besides the package's own modules).
ONLY_IMPORTED_BY: Mapping[str, frozenset[str]] = {
    "udsproxy.tools": frozenset({"udsproxy.cli"}),
}

# Free of I/O: config, the codec, the route table, the access log's formatter and the values they
# use. They may not import these modules (nor submodules of them) nor call open(), print() or
# input(): they compile and compute; the layers above do the reading, writing and logging. `time`
# stays allowed (the Date header, the log's START_TIME).
IO_FREE: tuple[str, ...] = (
    "udsproxy.config",
    "udsproxy.codec",
    "udsproxy.router.routes",
    "udsproxy.router.retry",
    "udsproxy.upstream.resources",
    "udsproxy.accesslog.formatter",
    "udsproxy.errors",
    "udsproxy.flags",
    "udsproxy.streaminfo",
    "udsproxy.headers",
    "udsproxy.headermatch",
    "udsproxy.pathnorm",
    "udsproxy.lb",
    "udsproxy.localreply",
)
# Modules under an IO_FREE package that are where it reads files, and why.
IO_FREE_EXCEPT: Mapping[str, str] = {
    "udsproxy.config.parse": "reads the bootstrap and the CDS/LDS files",
    "udsproxy.config.load": "loads a bootstrap from a path",
    "udsproxy.config.dynamic": "reads the CDS/LDS files and checks TLS certificate files",
    "udsproxy.config.datasource": "reads DataSources (files, environment) at config time",
    "udsproxy.config.isolated": "validates in a child process when the API table is not cached",
    "udsproxy.config.api_table": "caches the table of Envoy's API on disk",
}
IO_MODULES: frozenset[str] = frozenset(
    {
        "asyncio", "concurrent", "fcntl", "http.client", "http.server", "logging", "mmap",
        "multiprocessing", "os", "pathlib", "select", "selectors", "shutil", "signal", "socket",
        "socketserver", "ssl", "subprocess", "sys", "tempfile", "threading", "urllib.request",
        "uvloop", "watchfiles",
    }
)  # fmt: skip
IO_BUILTINS = frozenset({"open", "print", "input"})
# One named I/O import a pure module may keep, with the reason. Stale entries fail.
IO_ALLOWED: Mapping[tuple[str, str], str] = {
    ("udsproxy.accesslog.formatter", "socket"): "gethostname(), once, when %HOSTNAME% is compiled",
}

# ---- KNOWN CYCLES: the allowlist. ---------------------------------------------------------------
# Each entry is the exact set of modules of one import cycle (a strongly connected component) that
# is tolerated for now. The test fails on any other cycle, on a known one that grew or shrank, and
# on an entry that is no longer a cycle: when the data path's restructuring breaks it, delete the
# entry. The goal is an empty tuple.
KNOWN_CYCLES: tuple[frozenset[str], ...] = ()
# ==================================================================================================

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "udsproxy"
SPELLED_CYCLES = 8  # per cycle found; the shortest through each module, first by name


def module_files(root: Path = ROOT / PACKAGE) -> dict[str, Path]:
    files: dict[str, Path] = {}
    # a C extension is known by its stub (.pyi): its imports are the module's interface
    stubs = [p for p in root.rglob("*.pyi") if not p.with_suffix(".py").exists()]
    for path in sorted([*root.rglob("*.py"), *stubs]):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if "__pycache__" in parts or any(p.startswith("_cache") for p in parts):
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        files[name] = path
    return files


def imported_names(module: str, is_package: bool, tree: ast.AST) -> list[tuple[str, int]]:
    """Every dotted name an import statement brings in, with its line: ``from a import b`` is
    ``a.b`` (which ``resolve`` turns into ``a`` when b is not a module); relative imports are
    resolved against ``module``."""
    names: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join([*base, *([node.module] if node.module else [])])
            else:
                prefix = node.module or ""
            names += [(f"{prefix}.{alias.name}", node.lineno) for alias in node.names]
    return names


def resolve(name: str, modules: Iterable[str]) -> str:
    """The longest existing module that ``name`` starts with (``a.b.func`` -> ``a.b``)."""
    known = set(modules)
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


@functools.cache
def parsed() -> dict[str, ast.Module]:
    return {name: ast.parse(path.read_text(), str(path)) for name, path in module_files().items()}


@functools.cache
def graph() -> dict[str, dict[str, int]]:
    """module -> {imported udsproxy module: first line}, implicit parent packages left out."""
    files = module_files()
    edges: dict[str, dict[str, int]] = {}
    for name, tree in parsed().items():
        out: dict[str, int] = {}
        is_package = files[name].name == "__init__.py"
        for dotted, line in imported_names(name, is_package, tree):
            if dotted == PACKAGE or dotted.startswith(PACKAGE + "."):
                target = resolve(dotted, files)
                out[target] = min(line, out.get(target, line))
        out.pop(name, None)
        edges[name] = out
    return edges


def strongly_connected(edges: Mapping[str, Iterable[str]]) -> list[frozenset[str]]:
    """Tarjan's algorithm, iterative; components of more than one module, or one that imports
    itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[frozenset[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work: list[tuple[str, Iterable[str]]] = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in edges:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in edges[node]:
                        found.append(frozenset(component))
    return found


def shortest_cycle(edges: Mapping[str, Iterable[str]], start: str) -> list[str]:
    """The shortest path start -> ... -> start (breadth first), or [] when there is none."""
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(edges.get(node, ())):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if child not in came_from:
                came_from[child] = node
                queue.append(child)
    return []


def spell_cycles(edges: Mapping[str, Mapping[str, int]], component: frozenset[str]) -> str:
    """Each distinct shortest cycle through a member, as ``a -> b -> a`` with the import lines."""
    files = module_files()
    inside = {m: {t: ln for t, ln in edges[m].items() if t in component} for m in component}
    seen: set[frozenset[tuple[str, str]]] = set()
    lines = []
    for member in sorted(component):
        cycle = shortest_cycle(inside, member)
        hops = frozenset(itertools.pairwise(cycle))
        if not cycle or hops in seen:
            continue
        if len(seen) == SPELLED_CYCLES:
            lines.append(f"    ... and more through {', '.join(sorted(component))}")
            break
        seen.add(hops)
        lines.append("    " + " -> ".join(cycle))
        for a, b in itertools.pairwise(cycle):
            where = files[a].relative_to(ROOT)
            lines.append(f"        {where}:{inside[a][b]} imports {b}")
    return "\n".join(lines)


def matching(module: str, patterns: Iterable[str]) -> str | None:
    hits = [p for p in patterns if module == p or module.startswith(p + ".")]
    return max(hits, key=len) if hits else None


def layer_of(module: str) -> int | None:
    module = LAYER_ALIASES.get(module, module)
    best: tuple[int, int] | None = None  # (pattern length, layer)
    for number, (_, patterns) in enumerate(LAYERS):
        pattern = matching(module, patterns)
        if pattern is not None and (best is None or len(pattern) > best[0]):
            best = (len(pattern), number)
    return None if best is None else best[1]


def is_io_free(module: str) -> bool:
    return matching(module, IO_FREE) is not None and module not in IO_FREE_EXCEPT


# ---- the contract -------------------------------------------------------------------------------


def test_no_import_cycles_but_the_known_ones() -> None:
    edges = graph()
    components = strongly_connected(edges)
    problems = []
    for component in components:
        if component in KNOWN_CYCLES:
            continue
        note = ""
        for known in (k for k in KNOWN_CYCLES if k & component):
            joined, left = sorted(component - known), sorted(known - component)
            note += f" (a known cycle changed: joined {joined or 'none'}, left {left or 'none'})"
        problems.append(f"an import cycle{note}:\n{spell_cycles(edges, component)}")
    problems += [
        "KNOWN_CYCLES lists a cycle that no longer exists (delete or update the entry):\n"
        f"    {', '.join(sorted(known))}"
        for known in KNOWN_CYCLES
        if known not in components
    ]
    assert not problems, "\n".join(problems)


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(m for m in graph() if layer_of(m) is None)
    assert not unplaced, f"modules in no layer (add them to LAYERS): {', '.join(unplaced)}"


def test_lower_layers_never_import_higher_ones() -> None:
    files = module_files()
    problems = []
    for module, imports in sorted(graph().items()):
        mine = layer_of(module)
        for target, line in sorted(imports.items()):
            theirs = layer_of(target)
            if mine is not None and theirs is not None and theirs > mine:
                problems.append(
                    f"{module} ({LAYERS[mine][0].split(':')[0]}) imports {target} "
                    f"({LAYERS[theirs][0].split(':')[0]}): {files[module].relative_to(ROOT)}:{line}"
                )
    assert not problems, "layer violations:\n" + "\n".join(problems)


def test_restricted_packages_are_imported_only_by_their_users() -> None:
    files = module_files()
    problems = []
    for module, imports in sorted(graph().items()):
        for target, line in sorted(imports.items()):
            package = matching(target, ONLY_IMPORTED_BY)
            if package is None or matching(module, [package]) is not None:
                continue
            if module not in ONLY_IMPORTED_BY[package]:
                where = f"{files[module].relative_to(ROOT)}:{line}"
                problems.append(f"{module} imports {target} ({where})")
    assert not problems, "imports of a package only its users may import:\n" + "\n".join(problems)


def _io_uses(module: str, tree: ast.Module, is_package: bool) -> list[tuple[str, int]]:
    uses = [
        (denied, line)
        for dotted, line in imported_names(module, is_package, tree)
        if (denied := matching(dotted, IO_MODULES)) is not None
    ]
    uses += [
        (f"{node.func.id}()", node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in IO_BUILTINS
    ]
    return uses


def test_pure_modules_do_no_io() -> None:
    files = module_files()
    problems = []
    used_allowances = set()
    pure = [m for m in parsed() if is_io_free(m)]
    assert "udsproxy.accesslog.formatter" in pure and "udsproxy.config.convert" in pure
    for module in sorted(pure):
        is_package = files[module].name == "__init__.py"
        for what, line in sorted(set(_io_uses(module, parsed()[module], is_package))):
            if (module, what) in IO_ALLOWED:
                used_allowances.add((module, what))
                continue
            problems.append(f"{module} uses {what}: {files[module].relative_to(ROOT)}:{line}")
    problems += [
        f"IO_ALLOWED lists {stale}, which is no longer used: delete it"
        for stale in sorted(set(IO_ALLOWED) - used_allowances)
    ]
    problems += [
        f"IO_FREE_EXCEPT lists {module}, which no longer exists: delete it"
        for module in sorted(set(IO_FREE_EXCEPT) - set(parsed()))
    ]
    assert not problems, "I/O in a module that must be free of it:\n" + "\n".join(problems)


# ---- the checker checks itself on small made-up graphs ------------------------------------------


def test_cycles_are_found_and_spelled() -> None:
    edges = {"a": {"b"}, "b": {"a", "c"}, "c": set(), "d": {"d"}}
    edges |= {"e": {"f"}, "f": {"g"}, "g": {"e"}}
    assert sorted(map(sorted, strongly_connected(edges))) == [["a", "b"], ["d"], ["e", "f", "g"]]
    assert shortest_cycle(edges, "a") == ["a", "b", "a"]
    assert shortest_cycle(edges, "f") == ["f", "g", "e", "f"]
    assert shortest_cycle(edges, "c") == []


@pytest.mark.parametrize(
    ("module", "is_package", "source", "expected"),
    [
        ("p.m", False, "from . import x", {"p.x"}),
        ("p.m", False, "from .x import y, z", {"p.x.y", "p.x.z"}),
        ("p", True, "from .x import y", {"p.x.y"}),
        ("p.q.m", False, "from ..r import s", {"p.r.s"}),
        ("p.m", False, "import a.b as c", {"a.b"}),
        ("p.m", False, "def f():\n    if T:\n        import z", {"z"}),
    ],
)
def test_import_names_are_resolved(
    module: str, is_package: bool, source: str, expected: set[str]
) -> None:
    names = {name for name, _ in imported_names(module, is_package, ast.parse(source))}
    assert names == expected


def test_layers_take_the_longest_pattern() -> None:
    assert layer_of("udsproxy.accesslog.formatter") == 0
    assert layer_of("udsproxy.accesslog.sink") == 1
    assert layer_of("udsproxy.__main__") == layer_of("udsproxy.cli") == len(LAYERS) - 1
    assert layer_of("elsewhere") is None


def test_resolve_takes_the_longest_module() -> None:
    modules = {"p", "p.m"}
    assert resolve("p.m.func", modules) == "p.m"
    assert resolve("p.__version__", modules) == "p"
    assert resolve("p.m", modules) == "p.m"
