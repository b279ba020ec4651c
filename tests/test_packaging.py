"""The wheel as users get it: built from the checkout, installed into a clean venv, and run as an
MCP stdio server from ``/``, far from the checkout.

That proves the wheel carries the Alembic scripts (force-included as
``mcp_background_job/migrations``) and that the installed server finds them: the checkout's
``migrations/`` is not reachable from the venv, so a database at the head revision can only
have been migrated by the packaged scripts.

Slow (a wheel build, and a pip install that may fetch the dependencies): ``-m "not slow"`` skips it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from fastmcp import Client
from fastmcp.client.transports import StdioTransport

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "mcp_background_job"
#: Build and install steps; generous, since pip may have to download the dependencies.
PIP_TIMEOUT_S = 600
CALL_TIMEOUT_S = 60.0


def _run(cmd: list[str], *, cwd: Path | str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a command, failing the test with its output if it fails."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited with {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        cwd=out,
        timeout=PIP_TIMEOUT_S,
    )
    wheels = list(out.glob(f"{PACKAGE}-*.whl"))
    assert len(wheels) == 1, f"expected one wheel, got {sorted(p.name for p in out.iterdir())}"
    return wheels[0]


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean venv (no system or dev site-packages) with the wheel and its dependencies."""
    venv = tmp_path_factory.mktemp("venv") / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd="/", timeout=120)
    python = venv / "bin" / "python"
    started = time.monotonic()
    _run([str(python), "-m", "pip", "install", "-q", str(wheel)], cwd="/", timeout=PIP_TIMEOUT_S)
    # Shown with -s or in the log of a failing run: the cost of this test is mostly this step.
    print(f"pip install of the wheel and its dependencies: {time.monotonic() - started:.1f} s")
    return venv


def test_wheel_contains_the_migrations(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    migrations = f"{PACKAGE}/migrations"
    expected = {f"{migrations}/env.py", f"{migrations}/script.py.mako"}
    versions = sorted((ROOT / "migrations" / "versions").glob("*.py"))
    assert versions, "no migration scripts in the checkout"
    expected |= {f"{migrations}/versions/{p.name}" for p in versions}
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    assert f"{PACKAGE}/py.typed" in names
    assert f"{PACKAGE}/cli.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    # Nothing outside the package and its metadata (no tests/, no top-level migrations/).
    others = {n.split("/", 1)[0] for n in names} - {PACKAGE}
    assert len(others) == 1, others
    assert others.pop().endswith(".dist-info")


def test_installed_package_is_the_wheel_not_the_checkout(venv: Path) -> None:
    proc = _run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import mcp_background_job as m, mcp_background_job.db as db;"
            "print(m.__file__); print(db.migrations_dir())",
        ],
        cwd="/",
        timeout=60,
    )
    module_file, migrations = (Path(line) for line in proc.stdout.splitlines())
    assert module_file.is_relative_to(venv), module_file
    assert migrations.is_relative_to(venv), migrations
    assert not module_file.is_relative_to(ROOT)


async def test_installed_console_script_serves_mcp_from_root_dir(
    venv: Path, tmp_path: Path
) -> None:
    db = tmp_path / "state" / "jobs.db"
    log = tmp_path / "server.log"
    exe = venv / "bin" / "mcp-background-job"
    assert exe.is_file()
    transport = StdioTransport(
        command=str(exe),
        args=["--db", str(db)],
        # Merged over the MCP SDK's minimal default environment (no PYTHONPATH, no VIRTUAL_ENV).
        env={"XDG_STATE_HOME": str(tmp_path / "xdg-state")},
        cwd="/",
        keep_alive=False,
        log_file=log,
    )
    try:
        async with Client(transport, timeout=CALL_TIMEOUT_S) as client:
            tools = {t.name for t in await client.list_tools()}
            assert {"execute", "wait", "output"} <= tools, tools

            started = await client.call_tool("execute", {"command": "echo hello"})
            assert started.structured_content is not None
            job_id = started.structured_content["id"]

            waited = await client.call_tool("wait", {"job_id": job_id, "timeout_s": 30})
            assert waited.structured_content is not None
            assert waited.structured_content["finished"], waited.structured_content
            job = waited.structured_content["job"]
            assert job["exit_code"] == 0, job
            assert job["cwd"] == "/", job

            out = await client.call_tool("output", {"job_id": job_id})
            assert out.structured_content is not None
            assert out.structured_content["text"] == "hello\n", out.structured_content
    except BaseException:
        print(f"--- server log ({log}) ---")
        print(log.read_text(errors="replace") if log.exists() else "(none)")
        raise

    head = ScriptDirectory(str(ROOT / "migrations")).get_current_head()
    assert head is not None
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    assert rows == [(head,)]
