"""The fuzz harnesses (fuzz/) in CI: every seed, every regression and a few thousand mutations
each, with the coverage-less mutator (atheris is not needed). A long run is ``scripts/fuzz``.

A regression named ``*.xfail`` is a known finding not fixed yet: it is expected to fail with the
harness's known-finding tolerance turned off (``STRICT``), and xfail_strict makes it an error
once it is fixed, so that it is renamed."""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz import _common
from fuzz import config as fz_config
from fuzz import format as fz_format
from fuzz import request as fz_request
from fuzz import response as fz_response

HARNESSES = {
    "request": (fz_request, 1500),
    "response": (fz_response, 3000),
    "config": (fz_config, 300),
    "format": (fz_format, 3000),
}


@pytest.mark.parametrize("target", sorted(HARNESSES))
def test_seeds_and_mutations(target: str) -> None:
    module, mutations = HARNESSES[target]
    assert _common.seeds(target), "no seed corpus"
    assert _common.smoke(module.check, target, mutations) > mutations


def _regressions() -> list[object]:
    out: list[object] = []
    for target in sorted(HARNESSES):
        for path in _common.regressions(target):
            marks = [pytest.mark.xfail(raises=_common.Finding)] if path.suffix == ".xfail" else []
            out.append(pytest.param(target, path, marks=marks, id=f"{target}/{path.name}"))
    return out


@pytest.mark.parametrize(("target", "path"), _regressions())
def test_regression(target: str, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = HARNESSES[target][0]
    if hasattr(module, "STRICT"):
        monkeypatch.setattr(module, "STRICT", True)
    module.check(path.read_bytes())


def test_config_tree_mutations() -> None:
    # the config harness's tree mode (a first byte >= 0x80): seed configs edited as trees
    for i in range(800):
        fz_config.check(bytes([0x80 | (i & 0x7F), i >> 7, i & 0xFF]))
