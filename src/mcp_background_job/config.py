"""Settings, read from ``MCP_BACKGROUND_JOB_*`` environment variables and CLI flags.

Import rule: ``errors``, ``jobs`` and ``patterns`` only (layer ``config`` in
``tests/test_layers.py``): policy patterns are compiled by the light ``patterns`` module, so
building ``Settings`` never loads tree-sitter.

There is no module-level instance: the CLI (or a test) builds one ``Settings`` and passes it down.
A malformed value is an error at start-up, never a silent fallback to defaults.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .dburl import check_url
from .errors import InvalidRequest
from .patterns import compile_pattern

MiB = 1024 * 1024
GiB = 1024 * MiB

PolicyMode = Literal["deny-list", "allow-list"]
UnparseableAction = Literal["refuse", "allow-with-audit"]
IsolationMode = Literal["auto", "none", "rlimits", "landlock", "bwrap"]
CgroupMode = Literal["auto", "on", "off"]

#: Variables of the server's environment that jobs get (plus what the caller passes); everything
#: else -- tokens, keys, the server's own settings -- stays out of jobs' reach.
DEFAULT_ENV_ALLOW = (
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "LANGUAGE", "LC_ALL",
    "LC_CTYPE", "LC_MESSAGES", "TZ", "TMPDIR", "XDG_RUNTIME_DIR", "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "VIRTUAL_ENV", "PYTHONPATH",
    "GOPATH", "GOROOT", "CARGO_HOME", "RUSTUP_HOME", "JAVA_HOME", "NVM_DIR", "PNPM_HOME",
)  # fmt: skip

#: Writable by sandboxed jobs besides their cwd and the temp directories: where package managers
#: and build tools keep their caches (``~`` is the server's home). Not the tools' own install
#: directories (``~/.cargo/bin``, ``~/.rustup``, ``~/go/bin``, ``~/.local/bin``): a job could
#: replace a program run later outside the sandbox.
DEFAULT_CACHE_DIRS = (
    "~/.cache", "~/.npm", "~/.yarn", "~/.pnpm-store", "~/.local/share/pnpm",
    "~/.bun/install/cache", "~/.cargo/registry", "~/.cargo/git", "~/go/pkg/mod", "~/.m2/repository",
    "~/.gradle/caches", "~/.gradle/wrapper", "~/.gradle/daemon", "~/.gradle/native",
    "~/.ivy2/cache", "~/.sbt", "~/.nuget/packages", "~/.cabal/packages", "~/.stack",
    "~/.local/share/uv/python", "~/.deno",
)  # fmt: skip

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
#: ``scheme://...`` (or ``scheme:/...`` once a path has collapsed the double slash).
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")


def _optional(annotation: Any) -> bool:
    """True if None is a value of ``annotation`` and the word "none" is not."""
    args = get_args(annotation)
    if type(None) not in args:
        return False
    return not any("none" in get_args(a) for a in args if get_origin(a) is Literal)


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` as a duration; ValueError otherwise."""
    m = _AGE.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not an age: use a number and a unit, e.g. 30d, 12h, 90m")
    return timedelta(seconds=float(m[1]) * _AGE_UNITS[m[2]])


_EARLIEST = datetime.min.replace(tzinfo=UTC)


def parse_since(text: str) -> datetime:
    """An ISO 8601 time (UTC if no zone) or an age such as ``30m``, ``2h``, ``7d``. An age
    reaching back past year 1 means every job (it is not an error)."""
    if m := _AGE.match(text):
        try:
            return datetime.now(UTC) - timedelta(seconds=float(m[1]) * _AGE_UNITS[m[2]])
        except OverflowError:
            return _EARLIEST
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        shown = repr(text)
        if len(shown) > 60:  # quoted, escaped and cut, as checks.shown shows a value
            shown = f"{shown[:60]}... ({len(text)} characters)"
        raise InvalidRequest(
            f"since {shown} is not a time: use ISO 8601 (2026-11-25T10:00:00Z) or an age "
            "such as 30m, 2h, 7d."
        ) from None
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    try:
        return when.astimezone(UTC)  # the database compares UTC times
    except OverflowError:  # within a day of year 1 or of year 9999
        return _EARLIEST if when.year == 1 else datetime.max.replace(tzinfo=UTC)


def parse_size(text: str) -> int:
    """``1073741824``, ``500M``, ``2GiB``, ``64k`` as bytes (binary units); ValueError otherwise."""
    m = _SIZE.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not a size: use bytes or a number with K, M, G or T")
    return int(m[1]) << (10 * " kmgt".index(m[2].lower() or " "))


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
        env_prefix="MCP_BACKGROUND_JOB_",
        frozen=True,
        extra="forbid",
        validate_default=True,
        # No env_parse_none_str: it turned every "none" into None, also a real value such as
        # ISOLATION=none. ``_none_and_sizes`` does it for optional settings only.
    )

    db: Annotated[
        Path | str,
        Field(description="SQLite database file, or a PostgreSQL URL (postgresql://user@host/db)."),
    ] = Field(default_factory=default_db_path)
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
    detach: Annotated[
        bool,
        Field(
            description="Jobs keep running when their server stops (execute's detach default); "
            "a later server adopts them."
        ),
    ] = False
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
    # 4 MiB: 8 MiB stored 1 GB ~12% faster but peaked 8 MB higher (154 MB, over the 150 MB
    # target of scripts/bench).
    ingest_batch_bytes: Annotated[
        int, Field(ge=64 * 1024, description="Most output stored in one transaction.")
    ] = 4 * MiB
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
    host: Annotated[
        str,
        Field(
            min_length=1,
            max_length=255,
            description="This machine's name in a shared (PostgreSQL) database: jobs record it, "
            "and a server runs the jobs queued for its host. Default: the hostname.",
        ),
    ] = Field(default_factory=socket.gethostname)
    host_dead_after_s: Annotated[
        float,
        Field(
            ge=5,
            le=86400,
            description="A host none of whose servers has heart-beaten for this long is "
            "declared dead by a server of another host: its running jobs fail as 'lost: host "
            "NAME stopped answering' (detached ones wait for it). Servers beat every "
            "tenth of this (at most every 30 s).",
        ),
    ] = 180.0
    control_take_s: Annotated[
        float,
        Field(
            gt=0,
            le=600,
            description="How long kill and interact on another host's job wait for a server "
            "there to take the request before they give up (nothing is then done).",
        ),
    ] = 10.0
    retention_max_age: Annotated[
        timedelta | None,
        Field(
            description="Delete ended jobs (and their output) that ended longer ago than this: "
            "30d, 12h, 90m, or seconds. Default: keep for ever."
        ),
    ] = None
    retention_max_output_bytes: Annotated[
        int | None,
        Field(
            ge=0,
            description="Delete the oldest ended jobs while all stored output together is above "
            "this many bytes (500M, 2G). Default: no limit.",
        ),
    ] = None
    retention_interval_s: Annotated[
        float, Field(gt=0, description="How often the server applies the retention settings.")
    ] = 600.0

    @field_validator("retention_max_age", mode="before")
    @classmethod
    def _age(cls, value: Any) -> Any:
        if isinstance(value, str) and _AGE.match(value):
            value = parse_age(value)
        elif isinstance(value, str) and value.strip().replace(".", "", 1).isdigit():
            value = timedelta(seconds=float(value))
        if isinstance(value, timedelta) and value <= timedelta(0):
            raise ValueError("must be longer than 0 (or unset to keep jobs for ever)")
        return value  # otherwise ISO 8601 (P30D), parsed by pydantic

    # --- command policy (see policy.py) ----------------------------------------------------
    policy_mode: Annotated[
        PolicyMode,
        Field(description="deny-list: run what no deny rule matches; allow-list: run only what "
              "an allow rule matches (and no deny rule)."),
    ] = "deny-list"  # fmt: skip
    policy_allow: Annotated[
        tuple[str, ...],
        Field(description="Allow patterns (JSON list): glob over a normalized simple command, "
              "e.g. \"git *\", \"make\", \"pytest *\"; prefix re: for a regular expression."),
    ] = ()  # fmt: skip
    policy_deny: Annotated[
        tuple[str, ...], Field(description="Extra deny patterns (JSON list), same syntax.")
    ] = ()
    policy_builtin_deny: Annotated[
        bool, Field(description="Apply the built-in deny rules (destructive, download-and-run).")
    ] = True
    policy_unparseable: Annotated[
        UnparseableAction,
        Field(description="Deny-list mode: what to do with a command the parser cannot fully "
              "understand (allow-list mode always refuses it)."),
    ] = "refuse"  # fmt: skip
    allowed_cwd_roots: Annotated[
        tuple[Path, ...],
        Field(description="If set (JSON list), a job's cwd must be inside one of these."),
    ] = ()

    # --- isolation and resource limits (see isolation.py) -----------------------------------
    isolation: Annotated[
        IsolationMode,
        Field(description="auto | none | rlimits | landlock | bwrap. auto: landlock where the "
              "kernel has it, else rlimits (logged); an explicit mode this machine cannot "
              "provide is refused at start-up."),
    ] = "auto"  # fmt: skip
    # Default: on under auto (package managers fetch), off when landlock/bwrap are chosen.
    isolation_network: Annotated[
        bool, Field(description="landlock/bwrap: let jobs open network connections.")
    ] = Field(default_factory=lambda data: data.get("isolation") == "auto")
    isolation_writable: Annotated[
        tuple[Path, ...],
        Field(description="landlock/bwrap: writable paths besides the job's cwd (JSON list)."),
    ] = ()
    isolation_cache_dirs: Annotated[
        tuple[str, ...],
        Field(description="landlock/bwrap: cache directories jobs may write (JSON list; ~ is "
              "the server's home); missing ones are skipped."),
    ] = DEFAULT_CACHE_DIRS  # fmt: skip
    isolation_unix_sockets: Annotated[
        bool,
        Field(description="landlock/bwrap: let jobs create unix sockets (they reach D-Bus, "
              "docker.sock, ssh-agent: a way out of the sandbox)."),
    ] = False  # fmt: skip
    isolation_cgroup: Annotated[
        CgroupMode,
        Field(description="A cgroup per job for its memory and process limits: auto (where "
              "this server may make them), on (refuse to start without), off."),
    ] = "auto"  # fmt: skip
    env_allow: Annotated[
        tuple[str, ...],
        Field(description="Server variables passed on to jobs (JSON list); others are not."),
    ] = DEFAULT_ENV_ALLOW
    limit_memory_bytes: Annotated[
        int | None,
        Field(ge=16 * MiB, description="RLIMIT_DATA per process of a job, and the memory of "
              "the whole job where it has a cgroup (shared memory and /dev/shm included)."),
    ] = 8 * GiB  # fmt: skip
    limit_address_space_bytes: Annotated[
        int | None,
        Field(ge=16 * MiB, description="RLIMIT_AS per process (breaks JVM, Go, Node if low)."),
    ] = None
    limit_cpu_s: Annotated[int | None, Field(ge=1, description="RLIMIT_CPU per process.")] = None
    limit_processes: Annotated[
        int | None,
        Field(ge=8, description="RLIMIT_NPROC: processes of the user (ignored for root); and "
              "the processes of the whole job where it has a cgroup (root included)."),
    ] = 4096  # fmt: skip
    limit_file_size_bytes: Annotated[
        int | None,
        Field(ge=MiB, description="RLIMIT_FSIZE: largest file a job writes (stdout too)."),
    ] = None
    rate_limit_burst: Annotated[
        int, Field(ge=1, le=100_000, description="Jobs that may be created at once.")
    ] = 60
    rate_limit_per_s: Annotated[
        float, Field(gt=0, le=100_000, description="Sustained job creations per second.")
    ] = 5.0
    http_auth_failures: Annotated[
        int,
        Field(
            ge=1,
            le=10_000,
            description="serve --http: failed sign-ins an address may make "
            "at once before it gets 429 (a token bucket; see http_auth_refill_s).",
        ),
    ] = 10
    http_auth_refill_s: Annotated[
        float,
        Field(
            gt=0,
            le=86_400,
            description="serve --http: seconds for one more failed sign-in "
            "to be allowed (guessing is slowed to one try per this many seconds).",
        ),
    ] = 2.0

    # --- output redaction (see redact.py) ---------------------------------------------------
    redact_output: Annotated[
        bool, Field(description="Mask well-known secret formats in output returned to clients.")
    ] = True
    store_redacted: Annotated[
        bool,
        Field(description="Also mask them in the database (default: stored raw, masked on read)."),
    ] = False

    @field_validator("*", mode="before")
    @classmethod
    def _none_and_sizes(cls, value: Any, info: ValidationInfo) -> Any:
        """``none`` unsets an optional setting (LIMIT_MEMORY_BYTES=none: no limit), unless
        "none" is one of its own values (ISOLATION=none); a ``*_bytes`` setting takes sizes
        such as 500M or 2G."""
        if not isinstance(value, str) or info.field_name is None:
            return value
        annotation = cls.model_fields[info.field_name].annotation
        if value.strip().lower() == "none" and _optional(annotation):
            return None
        if info.field_name.endswith("_bytes") and _SIZE.match(value):
            return parse_size(value)
        return value

    @field_validator("db", mode="before")
    @classmethod
    def _path_or_url(cls, value: Any) -> Any:
        # A URL given as a path became a file in a new directory named "postgresql:": a URL is
        # a PostgreSQL database (kept as text) or refused, anything else is a path.
        if isinstance(value, (str, Path)) and _URL.match(str(value)):
            return check_url(str(value))
        return Path(value) if isinstance(value, str) else value

    @field_validator("db")
    @classmethod
    def _absolute_db(cls, value: Path | str) -> Path | str:
        return value if isinstance(value, str) else value.expanduser().absolute()

    @field_validator("spool_dir")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().absolute()

    @field_validator("allowed_cwd_roots", "isolation_writable")
    @classmethod
    def _absolute_paths(cls, value: tuple[Path, ...]) -> tuple[Path, ...]:
        for path in value:
            if not path.expanduser().is_absolute():
                raise ValueError(f"{str(path)!r} is not an absolute path")
        return tuple(Path(os.path.realpath(p.expanduser())) for p in value)

    @field_validator("isolation_cache_dirs")
    @classmethod
    def _cache_dirs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for path in value:
            if not (path.startswith("~/") or Path(path).is_absolute()) or "\0" in path:
                raise ValueError(f"{path!r} is neither absolute nor ~/...")
        return value

    @field_validator("policy_allow", "policy_deny")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Compiled here so a malformed pattern stops the server at start-up (fail closed).
        # ``patterns`` is light: building Settings must not load the shell parser (tree-sitter).
        for pattern in value:
            compile_pattern(pattern)
        return value

    @field_validator("env_allow")
    @classmethod
    def _env_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not name or "=" in name or "\0" in name:
                raise ValueError(f"{name!r} is not a variable name")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.policy_mode == "allow-list" and not self.policy_allow:
            raise ValueError(
                "policy_mode is allow-list but policy_allow is empty: nothing could run. "
                'Set MCP_BACKGROUND_JOB_POLICY_ALLOW to a JSON list such as ["git *", "make *"].'
            )
        return self

    @property
    def spool_path(self) -> Path:
        if self.spool_dir is not None:
            return self.spool_dir
        if isinstance(self.db, str):
            # Spool files are this machine's: beside the default database, one folder per
            # PostgreSQL database (named by a digest of its URL).
            digest = hashlib.sha256(self.db.encode()).hexdigest()[:12]
            return default_db_path().with_name(f"postgresql-{digest}.spool")
        return self.db.with_name(self.db.name + ".spool")
