"""The sample configs ship in the wheel and are found through importlib.resources."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

from udsproxy.sample_conf import packaged_root, resolve_sample

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ["conf/proxy.yaml", "conf/nginx.conf", "conf/article/envoy.yaml",
           "conf/article/cds.yaml", "conf/article/lds.yaml"]  # fmt: skip


def test_package_data_covers_the_samples() -> None:
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["udsproxy"]
    for name in SHIPPED:
        assert any(fnmatch.fnmatch(name, g) for g in globs), name
    assert (REPO / "udsproxy" / "conf").resolve() == (REPO / "conf").resolve()


def test_found_through_importlib_resources() -> None:
    for name in SHIPPED:
        assert (packaged_root() / name).is_file(), name


def test_resolve_sample(tmp_path: Path) -> None:
    assert resolve_sample("conf/article/envoy.yaml", tmp_path) == packaged_root()
    assert resolve_sample("conf/article/envoy.yaml", REPO) is None  # the tree's own copy
    assert resolve_sample("conf/nope.yaml", tmp_path) is None
    assert resolve_sample("/etc/x.yaml", tmp_path) is None
