"""The command line for people, through the real console script, on real databases with real
jobs (started by ``run``, or left by the fixture generator as an older version would have)."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory

from mcp_background_job import proctree
from mcp_background_job.db import alembic_config

from .conftest import ENGINES
from .fixtures.make_db import JOBS, Sql, Target, make_db
from .fixtures.schema import assert_search_in_sync
from .pg import PgServer

EXE = Path(sys.executable).with_name("mcp-background-job")
ANSI = b"\x1b["


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_BACKGROUND_JOB_")}
    env.pop("FORCE_COLOR", None)
    env.update(extra)
    return env


def cli(
    *args: str | Path, db: Target | None = None, input: bytes | None = None, **extra: str
) -> subprocess.CompletedProcess[bytes]:
    """Run the console script; ``db`` (a file or a PostgreSQL URL) goes in the environment (as
    MCP_BACKGROUND_JOB_DB)."""
    env = _env(**extra)
    if db is not None:
        env["MCP_BACKGROUND_JOB_DB"] = str(db)
    return subprocess.run(
        [str(EXE), *map(str, args)],
        env=env,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
        check=False,
    )


def ok(proc: subprocess.CompletedProcess[bytes], code: int = 0) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout.decode()


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)


def query(db: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    if not db.exists():
        return []  # not created yet (and connecting would create it)
    con = sqlite3.connect(db, timeout=10)
    try:
        return con.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []  # no tables yet
    finally:
        con.close()


def query_any(target: Target, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """``query`` on either engine (the database must exist)."""
    if isinstance(target, Path):
        return query(target, sql, *params)
    with Sql(target) as con:
        return con.execute(sql, params)


def job_where(db: Path, command: str, status: str | None = None) -> str | None:
    rows = query(db, "select id, status from jobs where command = ?", command)
    for job_id, st in rows:
        if status is None or st == status:
            return str(job_id)
    return None


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "jobs.db"


@pytest.fixture
def old_db(tmp_path: Path) -> Path:
    return make_db(tmp_path / "old" / "jobs.db", "0001")


@pytest.fixture(params=ENGINES)
def old_target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    """``old_db``'s history on each engine: the history commands read and migrate both."""
    if request.param == "sqlite":
        return make_db(tmp_path / "old" / "jobs.db", "0001")
    server: PgServer = request.getfixturevalue("pg_server")
    return make_db(server.new_database(), "0001")


# --- run and kill ------------------------------------------------------------------------------


def test_run_streams_output_byte_exact_and_exits_with_the_jobs_code(db: Path) -> None:
    proc = cli(
        "run", "--label", "ci", "--", "sh", "-c", "printf 'out€'; printf err >&2; exit 3", db=db
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "out€".encode()
    assert b"err" in proc.stderr
    assert b"failed (exit 3)" in proc.stderr  # the closing note
    [job] = json.loads(ok(cli("list", "--json", db=db)))
    assert (job["status"], job["exit_code"], job["labels"]) == ("failed", 3, ["ci"])
    assert job["command"] == "sh -c 'printf '\"'\"'out€'\"'\"'; printf err >&2; exit 3'"


def test_run_forwards_stdin_and_keeps_binary_output_exact(db: Path) -> None:
    data = bytes(range(256)) * 1200 + b"\xff\xfe no newline at the end"  # > one 256 KiB chunk
    proc = cli("run", "-q", "--", "cat", db=db, input=data)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == data
    assert proc.stderr == b""  # -q: no notes
    # One argument is a shell command line; env and cwd are passed on.
    line = cli(
        "run",
        "-q",
        "--env",
        "WHO=there",
        "--cwd",
        "/",
        "--",
        "echo hi $WHO | tr a-z A-Z; pwd",
        db=db,
    )
    assert line.stdout == b"HI THERE\n/\n"


def test_run_timeout_exits_124(db: Path) -> None:
    proc = cli("run", "-q", "--timeout", "0.5", "--", "sleep 30", db=db)
    assert proc.returncode == 124
    assert query(db, "select status from jobs") == [("timed_out",)]


def test_ctrl_c_stops_the_job_and_exits_like_a_shell(db: Path) -> None:
    proc = subprocess.Popen(
        [str(EXE), "run", "--", "sleep 60"],
        env=_env(MCP_BACKGROUND_JOB_DB=str(db)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        job_id = wait_until(lambda: job_where(db, "sleep 60", "running"))
        # Ctrl-C once the shell waits for `sleep`: sh defers a SIGINT that comes in its first
        # milliseconds, before it forks, until the child ends (the kill's SIGKILL, here).
        wait_until(lambda: _process(b"sleep\x0060\x00", f"{proctree.MARKER}={job_id}\x00".encode()))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert query(db, "select status, signal from jobs") == [("killed", "SIGINT")]


def _process(cmdline: bytes, env_entry: bytes) -> bool:
    """Whether a live process has exactly ``cmdline`` and ``env_entry`` in its environment."""
    with os.scandir("/proc") as entries:
        for entry in entries:
            try:
                if (
                    entry.name.isdigit()
                    and Path(entry.path, "cmdline").read_bytes() == cmdline
                    and env_entry in Path(entry.path, "environ").read_bytes()
                ):
                    return True
            except OSError:
                continue
    return False


def test_kill_stops_a_job_of_another_live_process(db: Path) -> None:
    owner = subprocess.Popen(
        [str(EXE), "run", "-q", "--", "sleep 60"],
        env=_env(MCP_BACKGROUND_JOB_DB=str(db)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        job_id = wait_until(lambda: job_where(db, "sleep 60", "running"))
        out = ok(cli("kill", job_id[:6], "--grace", "5", db=db))
        assert out == f"job {job_id} killed (SIGTERM)\n"
        assert owner.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        owner.kill()
        owner.wait()
    again = ok(cli("kill", job_id, db=db))
    assert "had already ended: killed" in again


# --- reading -------------------------------------------------------------------------------------


def test_list_filters_json_and_placement_of_db(db_target: Target, tmp_path: Path) -> None:
    db = db_target  # on each engine: the jobs are run by ``run`` into either
    ok(cli("run", "-q", "--label", "build", "--", "echo one", db=db))
    ok(cli("run", "-q", "--label", "test", "--", "exit 4", db=db), 4)
    ok(cli("run", "-q", "--", "echo three", db=db))

    def ids(*args: str) -> list[str]:
        return [j["command"] for j in json.loads(ok(cli("list", "--json", *args, db=db)))]

    assert ids() == ["echo three", "exit 4", "echo one"]  # newest first
    assert ids("--status", "failed") == ["exit 4"]
    assert ids("--status", "failed", "--status", "completed", "--limit", "2") == [
        "echo three",
        "exit 4",
    ]
    assert ids("--label", "build") == ["echo one"]
    assert ids("--command", "three") == ["echo three"]
    assert ids("--exit-code", "4") == ["exit 4"]
    assert ids("--since", "1h") == ["echo three", "exit 4", "echo one"]
    assert ids("--until", "1h") == []
    # --db before or after the command's arguments, and the history alias; flags beat the env.
    elsewhere = tmp_path / "empty.db"
    for args in (
        ["--db", str(db), "history", "--json"],
        ["list", "--db", str(db), "--json"],
        ["list", "--json", "--db", str(db)],
    ):
        assert len(json.loads(ok(cli(*args, db=elsewhere)))) == 3
    # Piped: plain text, full ids, ISO times, no colors, no trailing spaces.
    text = ok(cli("list", db=db))
    lines = text.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "EXIT", "STARTED", "DURATION", "COMMAND"]
    assert lines[2].split()[1:3] == ["failed", "4"]
    assert len(lines[1].split()[0]) == 12 and "Z" in lines[1].split()[3]
    assert "\x1b[" not in text and all(line == line.rstrip() for line in lines)


def test_list_on_a_terminal_has_colors_and_relative_times(db: Path) -> None:
    ok(cli("run", "-q", "--", "echo on a terminal", db=db))
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [str(EXE), "list"],
        env=_env(MCP_BACKGROUND_JOB_DB=str(db), COLUMNS="100", TERM="xterm-256color"),
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.PIPE,
    )
    os.close(slave)
    out = b""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not data:
            break
        out += data
    os.close(master)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert ANSI in out
    assert b"just now" in out or b" ago" in out  # relative times
    assert b"echo on a terminal" in out and b"completed" in out


def test_show_by_prefix_with_transitions_and_last_lines(old_target: Target) -> None:
    old_db = old_target
    text = ok(cli("show", "aaaa00000001", "--lines", "2", db=old_db))
    assert "fixture command 0 --flag 'quoted arg'" in text
    assert "build, ci" in text
    for status in ("queued", "running", "completed"):
        assert status in text
    assert "Last 2 lines of output" in text
    assert text.rstrip().endswith("€\nthird line")
    data = json.loads(ok(cli("show", "bbbb", "--json", db=old_db)))
    assert (data["status"], data["signal"]) == ("killed", "SIGTERM")
    assert [t["status"] for t in data["transitions"]] == ["queued", "running", "killed"]
    assert data["last_lines"] == "\x00\x01binary\ufffd\ufffd"


@pytest.mark.parametrize(
    ("job_id", "message"),
    [
        ("aaaa", "matches several jobs: give more characters"),
        ("eeee", "No job with id 'eeee'"),
        ("not-hex!", "No job with id 'not-hex!'"),
    ],
)
def test_bad_ids_are_usage_errors_with_a_message(old_db: Path, job_id: str, message: str) -> None:
    for command in ("show", "logs", "kill"):
        proc = cli(command, job_id, db=old_db)
        assert proc.returncode == 2, (command, proc.stderr)
        assert message in proc.stderr.decode()
        assert b"Traceback" not in proc.stderr


def test_logs_are_byte_exact_per_stream_and_tail(old_target: Target) -> None:
    old_db = old_target
    first = JOBS[0]
    both = cli("logs", "aaaa00000001", db=old_db)
    assert (both.returncode, both.stdout, both.stderr) == (0, first.stdout, first.stderr)
    assert cli("logs", "aaaa00000001", "--stream", "stderr", db=old_db).stdout == first.stderr
    assert cli("logs", "bbbb", "--stream", "stdout", db=old_db).stdout == JOBS[2].stdout
    tail = cli("logs", "aaaa00000001", "--stream", "stdout", "--tail", "2", db=old_db)
    assert tail.stdout == "wörld €\nthird line\n".encode()
    tail = cli("logs", "aaaa00000001", "--tail", "1", db=old_db)  # both streams, as stored
    assert (tail.stdout, tail.stderr) == (b"third line\n", b"")
    assert cli("logs", "aaaa00000001", "-n", "0", db=old_db).stdout == b""
    dropped = cli("logs", "cccc", db=old_db)
    assert dropped.stdout == b"start\nend\n"
    assert b"[... 1000 bytes of stdout dropped by the output limit ...]" in dropped.stderr


def test_logs_follow_streams_a_job_until_it_ends(db: Path, tmp_path: Path) -> None:
    go = tmp_path / "go"
    script = f"echo first; while [ ! -e {go} ]; do sleep 0.05; done; echo second"
    owner = subprocess.Popen(
        [str(EXE), "run", "-q", "--", script],
        env=_env(MCP_BACKGROUND_JOB_DB=str(db)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        job_id = wait_until(lambda: job_where(db, script, "running"))
        wait_until(lambda: query(db, "select stdout_bytes from jobs where id = ?", job_id)[0][0])
        follower = subprocess.Popen(
            [str(EXE), "logs", job_id[:5], "--follow"],
            env=_env(MCP_BACKGROUND_JOB_DB=str(db)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert follower.stdout is not None
        assert follower.stdout.readline() == b"first\n"  # printed while the job still runs
        go.touch()
        rest, err = follower.communicate(timeout=60)
        assert (follower.returncode, rest) == (0, b"second\n"), err
        assert owner.wait(timeout=60) == 0
    finally:
        owner.kill()
        owner.wait()


def test_stats(old_target: Target) -> None:
    old_db = old_target
    data = json.loads(ok(cli("stats", "--json", "--longest", "1", db=old_db)))
    assert data["jobs"] == len(JOBS)
    assert data["by_status"]["running"] == 1
    assert data["output_dropped_bytes"] == 1000
    assert data["database_bytes"] > 0
    assert [j["id"] for j in data["longest"]] == ["dddd00000005"]
    text = ok(cli("stats", db=old_db))
    for word in ("completed", "output stored", "database", "Longest jobs", "dddd00000005"):
        assert word in text


def test_a_missing_database_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "jobs.db"
    proc = cli("list", db=missing)
    assert proc.returncode == 1
    assert b"No database at" in proc.stderr and not missing.exists()


# --- db ------------------------------------------------------------------------------------------


def test_db_upgrade_current_history_and_downgrade(old_target: Target) -> None:
    old_db = old_target
    assert ok(cli("db", "current", db=old_db)).split() == ["0001"]
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert f"0001 -> {head}" in ok(cli("db", "upgrade", db=old_db))
    assert ok(cli("db", "current", db=old_db)).split() == [head, "(head)"]
    if isinstance(old_db, Path):
        assert_search_in_sync(old_db)
    history = ok(cli("db", "history", db=old_db))
    assert f"-> {head} (head) (current)" in history and "<base> -> 0001" in history
    ok(cli("db", "downgrade", "0001", db=old_db))
    assert ok(cli("db", "current", db=old_db)).split() == ["0001"]
    assert query_any(old_db, "select count(*) from output_chunks") == [(9,)]


def test_db_prune_and_vacuum(old_target: Target) -> None:
    old_db = old_target
    dry = ok(cli("db", "prune", "--older-than", "30d", "--dry-run", db=old_db))
    assert dry.startswith("would delete 2 ended jobs")
    assert len(query_any(old_db, "select id from jobs")) == len(JOBS)
    kept = ok(cli("db", "prune", "--older-than", "30d", "--keep-failed", db=old_db))
    assert kept.startswith("deleted 1 ended jobs")
    ok(cli("db", "prune", "--older-than", "1m", db=old_db))
    # Only the running job is left, however old it is.
    assert query_any(old_db, "select id, status from jobs") == [("dddd00000005", "running")]
    assert query_any(old_db, "select count(*) from output_chunks") == [(1,)]
    assert "->" in ok(cli("db", "vacuum", db=old_db))
    if isinstance(old_db, Path):
        assert_search_in_sync(old_db)
        assert query(old_db, "pragma freelist_count") == [(0,)]
        assert_search_in_sync(old_db)  # VACUUM keeps the rowids the index points at


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--older-than", "soon"], "'soon' is not an age"),
        (["--max-output", "lots"], "'lots' is not a size"),
        ([], "needs --older-than AGE and/or --max-output SIZE"),
    ],
)
def test_db_prune_usage_errors(old_db: Path, args: list[str], message: str) -> None:
    proc = cli("db", "prune", *args, db=old_db)
    assert proc.returncode == 2
    assert message in proc.stderr.decode() and b"Traceback" not in proc.stderr


def test_a_database_from_a_newer_version_is_refused_untouched(old_db: Path) -> None:
    ok(cli("db", "upgrade", db=old_db))
    con = sqlite3.connect(old_db)
    with con:
        con.execute("update alembic_version set version_num = 'ffff_from_the_future'")
    con.execute("pragma wal_checkpoint(TRUNCATE)")
    con.close()
    digest = hashlib.sha256(old_db.read_bytes()).hexdigest()
    for args in (["serve"], ["list"], ["db", "upgrade"], ["run", "--", "true"]):
        proc = cli(*args, db=old_db)
        assert proc.returncode == 1, (args, proc.stderr)
        err = proc.stderr.decode()
        assert "written by a newer version" in err and "Traceback" not in err, err
    assert hashlib.sha256(old_db.read_bytes()).hexdigest() == digest


def test_help_does_not_import_fastmcp() -> None:
    code = (
        "import sys\nfrom mcp_background_job import cli\n"
        "try:\n    cli.main(['list', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'fastmcp' not in sys.modules and 'sqlalchemy' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_logs_follow_says_when_the_jobs_server_is_gone(old_db: Path) -> None:
    # The fixture's running job belongs to a server registered on this host whose process is
    # gone: nothing will ever store more output or record the end, so following must stop.
    gone = subprocess.Popen(["true"])
    gone.wait()
    con = sqlite3.connect(old_db)
    with con:
        con.execute(
            "update servers set hostname = ?, pid = ?, pid_start = NULL",
            (socket.gethostname(), gone.pid),
        )
    con.close()
    proc = cli("logs", "dddd", "--follow", db=old_db)
    assert proc.returncode == 1
    assert proc.stdout == b"still going\n"
    assert b"the server that ran it has exited" in proc.stderr


def test_logs_into_a_closed_pipe_stops_quietly(db: Path) -> None:
    ok(cli("run", "-q", "--", "seq 1 200000", db=db))
    shell = (
        f"{shlex.quote(str(EXE))} logs $("
        + f"{shlex.quote(str(EXE))} list --json"
        + (" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0][\"id\"])') | head -n 2")
    )
    proc = subprocess.run(
        ["bash", "-o", "pipefail", "-c", shell],
        env=_env(MCP_BACKGROUND_JOB_DB=str(db)),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.stdout == b"1\n2\n"
    assert b"Traceback" not in proc.stderr and b"Broken pipe" not in proc.stderr, proc.stderr


def test_policy_check_does_not_load_the_job_stack() -> None:
    """``policy check`` needs the policy only: importing ``app`` for a helper would load the
    runner, the capture and the store (the job stack) for every check."""
    code = (
        "import sys\n"
        "from mcp_background_job.cli import main\n"
        "try:\n"
        "    main(['policy', 'check', '--', 'ls', '-l'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('mcp_background_job.'))\n"
        "print(' '.join(loaded), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60
    )
    loaded = done.stderr.strip().splitlines()[-1].split()
    assert "mcp_background_job.policy" in loaded, done.stderr
    for stack in ("app", "runner", "capture", "store", "interaction", "reading"):
        assert f"mcp_background_job.{stack}" not in loaded, loaded
