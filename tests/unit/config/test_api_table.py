"""The cached table of Envoy's API (config/api_table) and the libyaml fast path of config.parse.

The table must hold exactly the rows the generated classes give, must never be read when it was
made for anything else, and its absence (no writable cache directory) must only make things
slower. The libyaml reader must read every config exactly as PyYAML's own loader does.
"""

from __future__ import annotations

import functools
import marshal
import os
import subprocess
import sys
from pathlib import Path

import pytest

from udsproxy.config import api_table, parse, validate
from udsproxy.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]


@functools.cache
def _table() -> dict[str, object]:
    """The cached table (the session fixture's first check wrote it), or, where no cache
    directory is writable, one built now (seconds)."""
    return api_table.loaded_table() or api_table.build_table()


def test_table_rows_are_the_generated_classes_rows() -> None:
    table = api_table.TableApi(_table())
    live = api_table.LiveApi()  # the bootstrap and udsproxy's extensions, from the classes
    todo = [
        validate.BOOTSTRAP,
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "envoy.extensions.filters.http.router.v3.Router",
        "envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    ]
    keys = [live.resolve(name) for name in todo]
    assert keys == [table.resolve(name) for name in todo]
    seen: set[str] = set()
    pending = [k for k in keys if k is not None]
    while pending:
        key = pending.pop()
        if key in seen:
            continue
        seen.add(key)
        row = live.message(key)
        assert table.message(key) == row, key
        for _, kind, *_rest, target, _key_kind, value_kind, value_target in row[1]:
            for k, t in ((kind, target), (value_kind, value_target)):
                if t is None:
                    continue
                if k == "enum":
                    assert table.enum(t) == live.enum(t), t
                else:
                    pending.append(t)
    assert len(seen) > 300  # the whole bootstrap tree was compared


def test_unknown_names_resolve_to_nothing() -> None:
    table = api_table.TableApi(_table())
    assert table.resolve("acme.v1.Magic") is None
    assert table.resolve("envoy.config.cluster.v3.Cluster.CommonLbConfig") is not None


def test_a_table_made_for_something_else_is_never_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UDSPROXY_CACHE_DIR", str(tmp_path))
    key = api_table.cache_key()
    assert key is not None
    name = tmp_path / f"envoy-api-{key}.marshal"
    table = dict(_table())
    name.write_bytes(marshal.dumps({**table, "key": "edp0.0.1-bp0.0.1-0000-py311m4"}))
    assert api_table._read(key) is None  # right file name, wrong key inside
    name.write_bytes(b"\x00garbage")
    assert api_table._read(key) is None
    name.write_bytes(marshal.dumps([1, 2]))
    assert api_table._read(key) is None


def test_write_then_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UDSPROXY_CACHE_DIR", str(tmp_path / "cache"))
    key = api_table.cache_key()
    assert key is not None
    (tmp_path / "cache").mkdir()
    old = tmp_path / "cache" / "envoy-api-edp1.0.0-bp0.1-abc-py311m4.marshal"
    old.write_bytes(b"old")
    path = api_table._write(_table(), key)
    assert path == tmp_path / "cache" / f"envoy-api-{key}.marshal"
    assert api_table._read(key) == _table()
    assert old.read_bytes() == b"old"  # another venv's table is left alone
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([old.name, path.name])


def test_the_key_names_what_the_table_depends_on() -> None:
    key = api_table.cache_key()
    assert key is not None
    assert key.startswith("edp2.") and "-bp0." in key
    assert f"py{sys.version_info[0]}{sys.version_info[1]}" in key


def test_no_writable_cache_directory_is_only_slower(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {**os.environ, "UDSPROXY_CACHE_DIR": str(blocker / "cache")}
    config = ROOT / "conf" / "proxy.yaml"
    command = [sys.executable, "-m", "udsproxy", "--mode", "validate", "-c", str(config)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    assert "OK" in done.stdout
    probe = "from udsproxy.config import api_table; print(type(api_table.api()).__name__)"
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=False
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "LiveApi\n", "")


def _yaml_files() -> list[Path]:
    roots = [ROOT / "tests" / "corpora", ROOT / "conf", ROOT / "tests" / "unit" / "config"]
    return sorted(p for r in roots for p in r.rglob("*.y*ml"))


def test_libyaml_reads_every_config_as_pyyaml_does() -> None:
    fast = 0
    for path in _yaml_files():
        text = path.read_text(encoding="utf-8")
        got = parse._parse_fast(text)
        if got is parse._UNSURE:
            continue
        fast += 1
        loader = parse._Loader(text)
        try:
            assert got == loader.get_single_data(), path
        finally:
            loader.dispose()
    if parse._FastLoader is not None:
        assert fast > 30


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("a: 1\na: 2\n", "<string>:2:1: duplicate key 'a'"),
        ("a: [1\n", "YAML syntax error"),
        ("a: 1\t\nb: 2\n", None),  # a separating tab: PyYAML's loader with the tab rule
        ("when: 2024-01-01\n", None),  # no timestamps, in both readers
    ],
)
def test_errors_and_tabs_go_to_pyyaml(text: str, error: str | None) -> None:
    assert parse._parse_fast(text) is parse._UNSURE or error is None
    if error is None:
        data = parse.parse_yaml(text)
        assert all(isinstance(v, int | str) for v in data.values())
        return
    with pytest.raises(ConfigError) as info:
        parse.parse_yaml(text)
    assert error in info.value.render()
