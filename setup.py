"""Builds udsproxy as plain Python, or with UDSPROXY_MYPYC=1 its hot modules with mypyc.

The compiled modules are udsproxy.native.MODULES (the one list), and the hand-written C
extensions udsproxy.native.C_EXTENSIONS are built with them. A listed module that does not
exist fails the build. A compiled build also writes udsproxy/_native_build.py: the SHA-256 of
each compiled module's source, which `udsproxy --version` checks against the .py beside it.
Everything else is in pyproject.toml.
"""

from __future__ import annotations

import ast
import hashlib
import os
import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent


def _listed_modules() -> list[str]:
    # read, not imported: the build environment has none of udsproxy's dependencies
    tree = ast.parse((HERE / "udsproxy" / "native.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "MODULES":
            assert node.value is not None
            return list(ast.literal_eval(node.value))
    sys.exit("setup.py: no MODULES in udsproxy/native.py")


def _c_extensions() -> list[str]:
    tree = ast.parse((HERE / "udsproxy" / "native.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "C_EXTENSIONS":
            assert node.value is not None
            return list(ast.literal_eval(node.value))
    sys.exit("setup.py: no C_EXTENSIONS in udsproxy/native.py")


def _sources(modules: list[str]) -> dict[str, Path]:
    paths = {m: HERE.joinpath(*m.split(".")).with_suffix(".py") for m in modules}
    missing = [m for m, p in paths.items() if not p.is_file()]
    if missing:
        sys.exit(
            f"setup.py: udsproxy.native.MODULES lists {', '.join(missing)}, which "
            "do not exist: update the list in udsproxy/native.py"
        )
    return paths


def _record(paths: dict[str, Path]) -> None:
    lines = [
        '"""Written by a compiled build (setup.py): the source each module was compiled from."""',
        "",
        "SOURCES = {",
        *(f"    {m!r}: {hashlib.sha256(p.read_bytes()).hexdigest()!r}," for m, p in paths.items()),
        "}",
        "",
    ]
    (HERE / "udsproxy" / "_native_build.py").write_text("\n".join(lines))


if os.environ.get("UDSPROXY_MYPYC") == "1":
    try:
        from mypyc.build import mypycify
    except ImportError:
        # pip's isolated build asks first what to install: mypy, then it runs this again
        setup(setup_requires=["mypy>=1.10"])
    else:
        from setuptools import Extension

        paths = _sources(_listed_modules())
        c_paths = {m: HERE.joinpath(*m.split(".")).with_suffix(".c") for m in _c_extensions()}
        _record({**paths, **c_paths})
        extensions = mypycify([str(p.relative_to(HERE)) for p in paths.values()])
        extensions += [
            Extension(m, [str(p.relative_to(HERE))], extra_compile_args=["-O2"])
            for m, p in c_paths.items()
        ]
        setup(ext_modules=extensions)
else:
    setup()
