"""Settings from the environment: every setting's documented values, generated from
``Settings.model_fields`` so that a new setting is covered (or this file says what to add)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from types import NoneType
from typing import Any, Literal, get_args, get_origin

import annotated_types
import pytest
from pydantic.fields import FieldInfo

from mcp_background_job.config import Settings, parse_since, parse_size
from mcp_background_job.db import utcnow
from mcp_background_job.errors import InvalidRequest

PREFIX = "MCP_BACKGROUND_JOB_"
#: Values some settings need from others (allow-list mode refuses an empty allow list).
COMPANIONS: dict[tuple[str, str], dict[str, str]] = {
    ("policy_mode", "allow-list"): {"POLICY_ALLOW": '["git *"]'},
}
SIZES = ("64K", "1M", "16M", "500M", "2G")
AGES = {
    "30d": timedelta(days=30),
    "12h": timedelta(hours=12),
    "90m": timedelta(minutes=90),
    "45s": timedelta(seconds=45),
    "2w": timedelta(weeks=2),
    "3600": timedelta(hours=1),
    "P30D": timedelta(days=30),
}


def _bounds(field: FieldInfo) -> tuple[float | None, float | None]:
    low = high = None
    for m in field.metadata:
        if isinstance(m, annotated_types.Ge):
            low = float(m.ge)  # type: ignore[arg-type]
        elif isinstance(m, annotated_types.Gt):
            low = float(m.gt) + 0.5  # type: ignore[arg-type]
        elif isinstance(m, annotated_types.Le):
            high = float(m.le)  # type: ignore[arg-type]
    return low, high


def _fits(value: float, low: float | None, high: float | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


def documented_values(name: str, field: FieldInfo) -> list[tuple[str, Any]]:
    """(text of the variable, the value it must give) for each documented form."""
    args = get_args(field.annotation)
    optional = NoneType in args
    base = next(a for a in args if a is not NoneType) if optional else field.annotation
    values: list[tuple[str, Any]] = [("none", None)] if optional else []
    low, high = _bounds(field)
    if get_origin(base) is Literal:
        values += [(v, v) for v in get_args(base)]
    elif base is bool:
        values += [("true", True), ("false", False), ("1", True), ("0", False)]
    elif base is int and name.endswith("_bytes"):
        sizes = [(s, parse_size(s)) for s in SIZES if _fits(parse_size(s), low, high)]
        assert sizes, f"no documented size fits {name}"
        values += [*sizes, (str(sizes[0][1]), sizes[0][1])]
    elif base is int:
        for bound in {low or 1, high} - {None}:
            assert bound is not None
            values.append((str(int(bound)), int(bound)))
    elif base is float:
        for bound in {low if low is not None else 0.5, high} - {None}:
            assert bound is not None
            values.append((str(bound), bound))
    elif base is timedelta:
        values += list(AGES.items())
    elif base is Path:
        values.append(("/tmp/settings-test/jobs.db", Path("/tmp/settings-test/jobs.db")))
    elif name == "db":  # a file, or a PostgreSQL database (kept as its URL)
        values.append(("/tmp/settings-test/jobs.db", Path("/tmp/settings-test/jobs.db")))
        values.append(("postgresql://u@/jobs?host=/tmp", "postgresql://u@/jobs?host=/tmp"))
    elif base is str:
        values.append(("/bin/bash", "/bin/bash"))
    elif name == "isolation_cache_dirs":  # paths as written: absolute, or ~/ (the server's home)
        values += [('["~/.cache", "/var/cache/x"]', ("~/.cache", "/var/cache/x")), ("[]", ())]
    elif get_origin(base) is tuple and get_args(base)[0] is str:
        values += [('["git *", "make *"]', ("git *", "make *")), ("[]", ())]
    elif get_origin(base) is tuple and get_args(base)[0] is Path:
        values += [('["/tmp", "/"]', (Path(os.path.realpath("/tmp")), Path("/"))), ("[]", ())]
    else:
        raise AssertionError(
            f"setting {name} ({field.annotation}) has no documented values here: add its "
            "forms to documented_values in tests/test_config.py"
        )
    return values


CASES = [
    pytest.param(name, text, expected, id=f"{name}={text}")
    for name, field in Settings.model_fields.items()
    for text, expected in documented_values(name, field)
]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.startswith(PREFIX):
            monkeypatch.delenv(key)
    return monkeypatch


@pytest.mark.parametrize(("name", "text", "expected"), CASES)
def test_every_documented_value_through_the_environment(
    clean_env: pytest.MonkeyPatch, name: str, text: str, expected: Any
) -> None:
    clean_env.setenv(PREFIX + name.upper(), text)
    for var, value in COMPANIONS.get((name, text), {}).items():
        clean_env.setenv(PREFIX + var, value)
    assert getattr(Settings(), name) == expected


def test_every_setting_has_documented_values() -> None:
    covered = {p.values[0] for p in CASES}
    assert covered == set(Settings.model_fields)


def test_none_is_a_real_value_where_a_setting_has_it(clean_env: pytest.MonkeyPatch) -> None:
    # ISOLATION=none stopped the server ("Input should be 'none', ..."): the generic "none"
    # meaning "unset" turned it into None. Optional settings still take "none" as unset.
    clean_env.setenv(PREFIX + "ISOLATION", "none")
    clean_env.setenv(PREFIX + "LIMIT_MEMORY_BYTES", "None")
    clean_env.setenv(PREFIX + "RETENTION_MAX_AGE", "none")
    settings = Settings()
    assert settings.isolation == "none"
    assert settings.limit_memory_bytes is None
    assert settings.retention_max_age is None


def test_the_command_line_takes_isolation_none(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    env.update({PREFIX + "ISOLATION": "none", PREFIX + "LIMIT_MEMORY_BYTES": "none"})
    exe = Path(sys.executable).with_name("mcp-background-job")
    proc = subprocess.run(
        [str(exe), "run", "--db", str(tmp_path / "jobs.db"), "-q", "--", "echo isolated-none"],
        env=env,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"isolated-none\n"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////tmp/jobs.db",
        "file:///tmp/jobs.db",
        "mysql://user@localhost/jobs",
        "postgresql+asyncpg://user@localhost/jobs",
        "postgresql://user@localhost/",
    ],
)
def test_an_unsupported_url_is_refused_with_a_clear_error(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, url: str
) -> None:
    clean_env.chdir(tmp_path)
    clean_env.setenv(PREFIX + "DB", url)
    with pytest.raises(ValueError, match=r"does not support|names no database"):
        Settings()
    exe = Path(sys.executable).with_name("mcp-background-job")
    for args in (["list"], ["run", "--", "true"], ["serve"]):
        proc = subprocess.run(
            [str(exe), *args, "--db", url],
            cwd=tmp_path,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 2, (args, proc.stderr)
        assert b"does not support" in proc.stderr or b"names no database" in proc.stderr
        assert b"Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no "postgresql:" directory, no file


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://user@db.example/jobs",
        "postgres://user:pw@localhost:5433/jobs?sslmode=require",
        "postgresql://postgres@/jobs?host=/run/postgresql",
        "postgresql+psycopg://user@localhost/jobs",
    ],
)
def test_a_postgresql_url_is_kept_as_a_url(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, url: str
) -> None:
    clean_env.chdir(tmp_path)
    clean_env.setenv(PREFIX + "DB", url)
    settings = Settings()
    assert settings.db == url  # not a path (which would collapse the //)
    # Spool files stay on this machine, outside the current directory.
    assert settings.spool_path.name.startswith("postgresql-")
    assert tmp_path not in settings.spool_path.parents
    assert Settings(db=Path("relative.db")).db == tmp_path / "relative.db"


def test_building_settings_does_not_load_the_shell_parser() -> None:
    """Settings compile the policy patterns at start-up, through the light ``patterns`` module:
    a CLI command that only needs settings must not pay for tree-sitter."""
    code = (
        "import sys\n"
        "from mcp_background_job.config import Settings\n"
        "Settings(policy_deny=('rm *', 're:^curl .*'), policy_allow=('git *',))\n"
        "Settings()\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('tree_sitter', "
        "'mcp_background_job.shell', 'mcp_background_job.policy')))\n"
        "print(loaded)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_parse_since() -> None:
    assert (utcnow() - parse_since("2h")).total_seconds() == pytest.approx(7200, abs=5)
    assert parse_since("2026-01-02").tzinfo is not None
    with pytest.raises(InvalidRequest, match="ISO 8601"):
        parse_since("yesterday")
