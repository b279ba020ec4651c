"""``mcp-background-job grep`` through the real console script, on real databases: jobs run by
``run`` (no server running), and the fixture generator's database (a running job, a dropped
middle)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .fixtures.make_db import make_db
from .test_cli import cli, ok

GITHUB = "ghp_1234567890abcdefghijABCDEFGHIJ123456"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "jobs.db"


@pytest.fixture
def old_db(tmp_path: Path) -> Path:
    return make_db(tmp_path / "old" / "jobs.db", "0001")


def _ids(db: Path) -> list[str]:
    """Job ids, oldest first."""
    return [j["id"] for j in reversed(json.loads(ok(cli("list", "--json", db=db))))]


def test_grep_prints_like_grep_with_its_exit_statuses(db: Path) -> None:
    script = "for i in $(seq 1 12); do echo line $i; done; echo 'ERROR: boom' >&2; echo done"
    ok(cli("run", "-q", "--label", "build", "--", script, db=db))
    ok(cli("run", "-q", "--", "echo 'other line 5'", db=db))
    first, second = _ids(db)
    # All jobs, newest first; stderr lines are ID/stderr.
    out = ok(cli("grep", r"line 5$|boom", db=db))
    assert out == f"{second}:1:other line 5\n{first}:5:line 5\n{first}/stderr:1:ERROR: boom\n"
    # -C merges the context of nearby matches; a match that is another's context keeps ':'.
    out = ok(cli("grep", "-C", "1", r"^line (3|5|6|12)$", first, db=db))
    assert out.splitlines() == [
        f"{first}-2-line 2", f"{first}:3:line 3", f"{first}-4-line 4", f"{first}:5:line 5",
        f"{first}:6:line 6", f"{first}-7-line 7", "--", f"{first}-11-line 11",
        f"{first}:12:line 12", f"{first}-13-done",
    ]  # fmt: skip
    # -i, --label, --since, and ids as prefixes
    assert ok(cli("grep", "-i", "error", first[:6], db=db)) == f"{first}/stderr:1:ERROR: boom\n"
    assert ok(cli("grep", "--label", "build", "line 5", db=db)) == f"{first}:5:line 5\n"
    assert ok(cli("grep", "--since", "1h", "other", db=db)) == f"{second}:1:other line 5\n"
    assert ok(cli("grep", "--since", "2000-01-01", "nothing here", db=db), 1) == ""
    [hit] = [json.loads(x) for x in ok(cli("grep", "--json", "^done$", db=db)).splitlines()]
    assert (hit["job_id"], hit["stream"], hit["line_number"], hit["line"]) == (
        first, "stdout", 13, "done"
    )  # fmt: skip
    # 2: every error (grep's 1 means "nothing matched")
    for args, message in [
        (["a(?=b)"], "lookahead"),
        (["x", "ffffffffffff"], "No job with id"),
        (["-C", "99", "x"], "-C must be"),
        (["x", "--since", "yesterday-ish"], "not a time"),
    ]:
        proc = cli("grep", *args, db=db)
        assert proc.returncode == 2 and message in proc.stderr.decode(), (args, proc.stderr)
        assert b"Traceback" not in proc.stderr


def test_grep_errors_on_a_missing_or_bad_database(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_text("not a database\n")
    for path, message in [(bad, "not an SQLite database"), (tmp_path / "none.db", "No database")]:
        proc = cli("grep", "x", db=path)
        assert proc.returncode == 2 and message in proc.stderr.decode(), proc.stderr
    assert not (tmp_path / "none.db").exists()


def test_grep_masks_secrets_and_cannot_probe_them(db: Path) -> None:
    ok(cli("run", "-q", "--", f"echo 'token {GITHUB} here'", db=db))
    for n in range(5, 12):
        ok(cli("grep", "token " + GITHUB[:n], db=db), 1)
    out = ok(cli("grep", "token", db=db))
    assert GITHUB[6:] not in out and "ghp_***" in out


def test_grep_a_running_job_and_a_dropped_middle(old_db: Path) -> None:
    # dddd: still running (its server registered); cccc: 1000 bytes dropped between two lines.
    assert ok(cli("grep", "going", "dddd", db=old_db)) == "dddd00000005:1:still going\n"
    # Context never reaches across the gap ("start" is before it); line numbers are of the
    # stored lines.
    out = ok(cli("grep", "-C", "5", "^end$", "cccc", db=old_db))
    assert out.splitlines() == ["cccc00000004:2:end"]
    assert ok(cli("grep", "^start$", "cccc", db=old_db)) == "cccc00000004:1:start\n"


def test_grep_does_not_load_more_for_other_commands() -> None:
    """The masking stack is imported by ``grep`` only: ``list`` loads what it did before."""
    code = (
        "import sys\nfrom mcp_background_job import cli\n"
        "try:\n    cli.main(['list', '--db', '/nonexistent/x.db'])\nexcept SystemExit:\n    pass\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('mcp_background_job.'))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    loaded = proc.stdout.split()
    assert "mcp_background_job.cli" in loaded, proc.stderr
    for heavy in ("historygrep", "grepping", "masking", "matching"):
        assert f"mcp_background_job.{heavy}" not in loaded, loaded
