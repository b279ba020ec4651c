"""Settings, read from ``MCP_BACKGROUND_JOB_*`` environment variables and CLI flags.

There is no module-level instance: the CLI (or a test) builds one ``Settings`` and passes it down.
A malformed value is an error at start-up, never a silent fallback to defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


def default_db_path() -> Path:
    """``$XDG_STATE_HOME/mcp-background-job/jobs.db``, or ``~/.local/state/...`` without it."""
    state = os.environ.get("XDG_STATE_HOME") or ""
    base = Path(state) if Path(state).is_absolute() else Path.home() / ".local" / "state"
    return base / "mcp-background-job" / "jobs.db"


def default_max_concurrent() -> int:
    # Jobs are mostly builds, tests and dev servers that wait on I/O or run for ever; a limit near
    # the core count would queue the fifth dev server behind four that never end.
    return max(8, 2 * (os.cpu_count() or 1))


class Settings(BaseSettings):
    """Every knob of the server. Each field is also the env var ``MCP_BACKGROUND_JOB_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="MCP_BACKGROUND_JOB_", frozen=True, extra="forbid", validate_default=True
    )

    db: Annotated[Path, Field(description="SQLite database file.")] = Field(
        default_factory=default_db_path
    )
    spool_dir: Annotated[
        Path | None,
        Field(description="Where jobs write stdout/stderr before ingestion; default: DB.spool/"),
    ] = None
    shell: Annotated[str, Field(description="Shell that runs command lines with -c.")] = "/bin/sh"
    max_concurrent: Annotated[
        int, Field(ge=1, le=10_000, description="Running jobs per server; more wait queued.")
    ] = Field(default_factory=default_max_concurrent)
    max_output_bytes: Annotated[
        int,
        Field(
            ge=64 * 1024,
            description="Stored bytes per job and stream; past it the start and the most recent "
            "output are kept and the middle is dropped (counted).",
        ),
    ] = 64 * MiB
    pty_rows: Annotated[
        int, Field(ge=2, le=1000, description="Terminal rows of PTY jobs that set none.")
    ] = 24
    pty_cols: Annotated[
        int, Field(ge=10, le=1000, description="Terminal columns of PTY jobs that set none.")
    ] = 120
    default_timeout_s: Annotated[
        float | None, Field(gt=0, description="Timeout for jobs started without timeout_s.")
    ] = None
    kill_grace_s: Annotated[
        float, Field(ge=0, le=300, description="Default wait between SIGTERM and SIGKILL.")
    ] = 5.0
    shutdown_grace_s: Annotated[
        float,
        Field(ge=0, le=10, description="Grace for jobs at server shutdown (clients allow ~2 s)."),
    ] = 0.5
    ingest_interval_s: Annotated[
        float, Field(gt=0, le=5, description="How often spooled output is stored.")
    ] = 0.05
    ingest_batch_bytes: Annotated[
        int, Field(ge=64 * 1024, description="Most output stored in one transaction.")
    ] = 8 * MiB
    chunk_bytes: Annotated[
        int, Field(ge=4096, le=16 * MiB, description="Largest output row in the database.")
    ] = MiB
    storage_nice: Annotated[
        int,
        Field(
            ge=0,
            le=19,
            description="Nice value of the threads that store output, so that busy jobs are "
            "not slowed by their own capture (0: same priority as the jobs).",
        ),
    ] = 10
    subreaper: Annotated[
        bool,
        Field(description="Adopt orphaned grandchildren so kill reaches setsid/nohup children."),
    ] = True
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("db", "spool_dir")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().absolute()

    @property
    def spool_path(self) -> Path:
        return self.spool_dir or self.db.with_name(self.db.name + ".spool")
