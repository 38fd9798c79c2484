"""The soak benchmark does not rot: a few seconds of it, with one reload, one upstream restart
and one worker kill. Like the other bench smoke tests, nothing here judges a number beyond the
soak's own pass conditions on so short a run (no error outside the kill, one log line each)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .support import REPO

pytestmark = pytest.mark.integration


def test_soak_quick_run(nginx_bin: str, tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.soak",
            "--duration",
            "5",
            "--rate",
            "200",
            "--reload-every",
            "4",  # one CDS reload, at 2 s
            "--restart-every",
            "4.5",  # one nginx restart, at 3 s
            "--kill-at",
            "2.5",
            "--restart-gap",
            "0.2",
            "--warmup",
            "1",
            "--compare-duration",
            "0",
            "--results-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    [result] = tmp_path.glob("soak-*.json")
    data = json.loads(result.read_text())
    kinds = [e["kind"] for e in data["events"]]
    assert kinds.count("cds") == 1 and "nginx_restart" in kinds, kinds
    [kill] = [e for e in data["events"] if e["kind"] == "worker_kill"]
    assert kill["restarted_after_s"] is not None
    log = data["checks"]["one_log_line_per_request"]
    assert log["ok"] and log["duplicates"] == 0 and log["requests_completed"] > 0
    assert data["load"]["timeouts"] == 0
    assert len(data["samples"]) >= 3
    assert list(tmp_path.glob("soak-*.png")) or list(tmp_path.glob("soak-*.svg"))
