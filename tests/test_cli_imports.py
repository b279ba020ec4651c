"""The command line imports only what a command needs: ``--version`` no pydantic, the reading
commands no Alembic (the schema revision is checked against the scripts' own lines)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from alembic.script import ScriptDirectory

from mcp_background_job import db
from mcp_background_job.db import migrate


def _imported(*argv: str, env: dict[str, str] | None = None) -> set[str]:
    """Top-level packages the command line imported for ``argv`` (from ``-X importtime``)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mcp_background_job.cli", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=True,
    )
    return {
        line.split("|")[2].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


def test_revisions_read_from_the_scripts_are_alembics() -> None:
    scripts = ScriptDirectory(str(migrate.migrations_dir()))
    known, head = migrate._revisions(str(migrate.migrations_dir()))
    assert known == {r.revision for r in scripts.walk_revisions()}
    assert head == scripts.get_current_head() == db.head_revision()


def test_version_imports_no_pydantic() -> None:
    imported = _imported("--version")
    assert not imported & {"pydantic", "pydantic_settings", "sqlalchemy", "alembic", "rich"}


def test_reading_commands_import_no_alembic(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    db.create_database(path)
    env = {"MCP_BACKGROUND_JOB_DB": str(path)}
    for argv in (("list",), ("stats",)):
        imported = _imported(*argv, env=env)
        assert "sqlalchemy" in imported  # (it did run against the database)
        assert "alembic" not in imported, argv
        assert "fastmcp" not in imported, argv
