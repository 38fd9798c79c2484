"""benchmarks/startup.py does not rot, and udsproxy starts and validates both with the cached
Envoy API table and without one (no writable cache directory: the forked loader, the slow path).

Nothing here looks at a time: start-up figures come from running the script (see its doc).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .support import REPO

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("table", [True, False], ids=["table", "no-table"])
def test_startup_script_runs(table: bool) -> None:
    command = [sys.executable, "-m", "benchmarks.startup", "-n", "1", "--json"]
    command += ["--udsproxy", f"{sys.executable} -m udsproxy", "--bytecode", "env"]
    if not table:
        command.append("--no-table")
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = {r["figure"]: r for r in json.loads(done.stdout)}
    assert set(figures) == {"exec->accept", "exec->first response", "validate"}
    assert all(r["runs"] == 1 and r["median_s"] > 0 for r in figures.values())
