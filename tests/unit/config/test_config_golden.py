"""Golden files: each golden/*/X.yaml loads to X.json (the Bootstrap) or fails with X.err.

valid/ must load, invalid/ must fail, corpora/ (unmodified Envoy configs) may do either.
Regenerate with ``UDSPROXY_UPDATE_GOLDEN=1 pytest tests/unit/config`` and review the diff.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from udsproxy.config.load import load_yaml
from udsproxy.errors import ConfigError

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(GOLDEN.glob("*/*.yaml"))
UPDATE = os.environ.get("UDSPROXY_UPDATE_GOLDEN") == "1"


def outcome(path: Path) -> tuple[str, str]:
    """(".json", bootstrap as JSON) or (".err", the rendered ConfigError)."""
    try:
        bootstrap = load_yaml(path.read_text(encoding="utf-8"), path.name)
    except ConfigError as exc:
        return ".err", str(exc) + "\n"
    return ".json", json.dumps(dataclasses.asdict(bootstrap), indent=2) + "\n"


def test_golden_cases_exist() -> None:
    kinds = {path.parent.name for path in CASES}
    assert kinds == {"valid", "invalid", "corpora"}
    assert len(CASES) >= 30


@pytest.mark.parametrize("path", CASES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_golden(path: Path) -> None:
    suffix, actual = outcome(path)
    expected_path = path.with_suffix(suffix)
    other_path = path.with_suffix(".err" if suffix == ".json" else ".json")
    if UPDATE:
        expected_path.write_text(actual, encoding="utf-8")
        other_path.unlink(missing_ok=True)
        return
    if path.parent.name == "valid":
        assert suffix == ".json", actual
    if path.parent.name == "invalid":
        assert suffix == ".err", f"{path.name} loaded but should fail"
    assert not other_path.exists(), f"{path.name} now gives {suffix}:\n{actual}"
    assert actual == expected_path.read_text(encoding="utf-8")
