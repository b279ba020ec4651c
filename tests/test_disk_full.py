"""A full disk under the database and the spool directory, on a real (small) file system.

The scenario (``tests/fixtures/disk_full.py``) runs in a private mount namespace on a 32 MiB
tmpfs: mounted with ``unshare --mount`` as root, or in a user namespace (``unshare --user
--map-root-user --mount``) otherwise, so it needs no privilege and leaves no mount behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_a_full_disk_is_said_plainly_logged_once_and_true_ends_are_recorded_once_space_returns(
    tmp_path: Path,
) -> None:
    unshare = shutil.which("unshare")
    assert unshare is not None, "unshare (util-linux) is needed to mount a small file system"
    namespace = ["--mount"] if os.geteuid() == 0 else ["--user", "--map-root-user", "--mount"]
    result = subprocess.run(
        [unshare, *namespace, sys.executable, "-m", "tests.fixtures.disk_full", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout)
    # While the disk was full, neither end could be written: both jobs stayed known (running).
    assert set(report["while_full"].values()) == {"running"}, report
    # The job whose output write failed says "disk full" in its reason; its output up to the
    # failure is kept.
    writer = report["writer"]
    assert (writer["status"], writer["exit_code"]) == ("failed", 1), report
    assert "disk full" in writer["reason"], report
    assert writer["stored"] > 0, report
    # The job that exited 0 meanwhile is recorded completed once space returned, not lost.
    assert report["quiet"] == {"status": "completed", "exit_code": 0, "reason": None, "stored": 0}
    # Logged once with a traceback per kind of failure (storing output, recording ends), then
    # counted: not one traceback per attempt.
    assert 1 <= report["tracebacks_while_full"] <= 2, report
    assert any("disk full" in m for m in report["errors_while_full"]), report
    assert report["spool_left"] == [], report
