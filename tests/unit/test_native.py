"""The compiled form's bookkeeping (udsproxy/native.py, setup.py): the module list, what
`udsproxy --version` says, and stale compiled modules. No compiler is run here.

scripts/test runs the suite on both forms and says which it expects with
UDSPROXY_EXPECT_NATIVE (1: every listed module compiled and fresh; 0: none compiled, so a stray
compiled module in the working tree fails); unset, either form passes.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from udsproxy import __version__, native

ROOT = Path(__file__).resolve().parents[2]
EXPECT = os.environ.get("UDSPROXY_EXPECT_NATIVE", "")


def test_every_listed_module_exists_as_python_source() -> None:
    assert native.MODULES, "nothing to compile"
    assert len(set(native.MODULES)) == len(native.MODULES)
    for name in native.MODULES:
        assert name.startswith("udsproxy.")
        assert name != "udsproxy.native", "it reads the compiled modules: it stays Python"
        source = ROOT.joinpath(*name.split(".")).with_suffix(".py")
        assert source.is_file(), f"{name} is listed in udsproxy/native.py but {source} is gone"
        assert importlib.util.find_spec(name) is not None


def test_every_c_extension_has_its_source_and_a_stub() -> None:
    for name in native.C_EXTENSIONS:
        path = ROOT.joinpath(*name.split("."))
        assert path.with_suffix(".c").is_file()
        assert path.with_suffix(".pyi").is_file()


def test_version_says_which_form_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "udsproxy", "--version"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip()  # fmt: skip
    loaded = native.compiled_modules()
    compiled = [n for n in loaded if n not in native.C_EXTENSIONS]
    if loaded:
        c_loaded = [n for n in native.C_EXTENSIONS if n in loaded]
        c = f"; C: {', '.join(c_loaded)}" if c_loaded else ""
        assert out == f"udsproxy {__version__} (compiled with mypyc: {len(compiled)} modules{c})"
    else:
        assert out == f"udsproxy {__version__} (pure Python)"
    if EXPECT == "1":
        assert compiled == sorted(native.MODULES)
        assert [n for n in loaded if n in native.C_EXTENSIONS] == list(native.C_EXTENSIONS)
        assert native.stale_modules() == []
    elif EXPECT == "0":
        assert loaded == [], "compiled modules in a pure run: bash scripts/build-native --clean"


def _fake_compiled(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, source: bytes, recorded: bytes
) -> str:
    """A loaded 'compiled' module udsproxy.fakehot whose .py holds `source`, built from
    `recorded`."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (tmp_path / f"fakehot{suffix}").write_bytes(b"")
    (tmp_path / "fakehot.py").write_bytes(source)
    module = types.ModuleType("udsproxy.fakehot")
    module.__spec__ = importlib.machinery.ModuleSpec(
        "udsproxy.fakehot", None, origin=str(tmp_path / f"fakehot{suffix}")
    )
    monkeypatch.setitem(sys.modules, "udsproxy.fakehot", module)
    build = types.ModuleType("udsproxy._native_build")
    sources = {"udsproxy.fakehot": hashlib.sha256(recorded).hexdigest()}
    with contextlib.suppress(ImportError):  # a pure tree has no build record
        sources.update(importlib.import_module("udsproxy._native_build").SOURCES)
    build.SOURCES = sources  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "udsproxy._native_build", build)
    return "udsproxy.fakehot"


def test_a_compiled_module_is_read_from_its_spec(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    name = _fake_compiled(monkeypatch, tmp_path, b"x = 1\n", b"x = 1\n")
    assert name in native.compiled_modules()
    assert name not in native.stale_modules()
    assert native.describe().startswith("(compiled with mypyc: ")


def test_a_compiled_module_older_than_its_source_is_stale(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    name = _fake_compiled(monkeypatch, tmp_path, b"x = 2\n", b"x = 1\n")
    assert name in native.stale_modules()
    assert f"STALE, source changed since the build: {name}" in native.describe()


def test_the_build_fails_on_a_listed_module_that_does_not_exist(tmp_path: Path) -> None:
    (tmp_path / "udsproxy").mkdir()
    (tmp_path / "setup.py").write_bytes((ROOT / "setup.py").read_bytes())
    (tmp_path / "udsproxy" / "native.py").write_text(
        'MODULES: tuple[str, ...] = ("udsproxy.gone",)\n'
    )
    done = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env=dict(os.environ, UDSPROXY_MYPYC="1"),
    )  # fmt: skip
    assert done.returncode != 0
    assert "lists udsproxy.gone, which do not exist" in done.stderr
    assert not (tmp_path / "udsproxy" / "_native_build.py").exists()
