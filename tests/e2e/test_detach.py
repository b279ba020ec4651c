"""Detached jobs outlive their server (issue 15): left running at shutdown, kept through a
SIGKILL, adopted by exactly one later server, their true ends and all their output recorded."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .helpers import (
    Server,
    is_running,
    job_processes,
    query,
    start_server,
    stored_bytes,
    wait_for,
)


def _spool(db: Path) -> Path:
    return db.with_name(db.name + ".spool")


def _reasons(job: dict[str, Any]) -> list[str | None]:
    return [t["reason"] for t in job["transitions"]]


def _owner(db: Path, job_id: str) -> str:
    return str(query(db, "select owner_id from jobs where id = ?", job_id)[0][0])


async def _adopted_by(db: Path, job_id: str, server: Server) -> None:
    await wait_for(lambda: _owner(db, job_id) == server.server_id, message="the adoption")


async def test_a_detached_job_survives_a_sigkilled_server_byte_exact(
    db: Path, tmp_path: Path
) -> None:
    side, go = tmp_path / "side", tmp_path / "go"
    script = (
        f"i=0; while [ $i -lt 300 ]; do i=$((i+1)); printf 'line %05d\\n' $i | tee -a {side}; "
        f"if [ $i = 150 ]; then while [ ! -e {go} ]; do sleep 0.05; done; fi; done"
    )
    async with start_server(db) as first:
        job = await first.execute(script, detach=True)
        assert job["detached"] is True
        # Some of it stored by the first server, the rest still to come.
        await wait_for(
            lambda: query(db, "select stdout_bytes from jobs where id = ?", job["id"])[0][0] > 0,
            message="some output stored",
        )
        os.kill(first.pid, signal.SIGKILL)
        await wait_for(lambda: not is_running(first.pid), message="the server to die")
        assert job_processes(job["id"]), "the detached job died with its server"
    async with start_server(db) as second:
        await _adopted_by(db, job["id"], second)
        go.touch()  # the second half is printed while the second server stores it
        done = await second.wait_done(job["id"])
        assert done["status"] == "completed" and done["exit_code"] == 0, done
        assert f"adopted from server {first.server_id}" in _reasons(done)
        assert stored_bytes(db, job["id"]) == side.read_bytes()
        assert side.read_bytes().count(b"\n") == 300


async def test_graceful_stop_leaves_it_running_and_the_next_server_records_exit_3(
    db: Path, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    async with start_server(db) as first:
        job = await first.execute(
            f"echo before; while [ ! -e {go} ]; do sleep 0.05; done; echo after; exit 3",
            detach=True,
        )
    assert job_processes(job["id"]), "a graceful stop killed the detached job"
    async with start_server(db) as second:
        await _adopted_by(db, job["id"], second)
        touched = datetime.now(UTC)
        go.touch()
        done = await second.wait_done(job["id"])
    assert done["status"] == "failed" and done["exit_code"] == 3, done
    ended = datetime.fromisoformat(done["ended_at"])
    assert ended >= touched.replace(microsecond=0), (ended, touched)
    reasons = _reasons(done)
    assert "left running: detached" in reasons, reasons
    assert f"adopted from server {first.server_id}" in reasons, reasons
    assert stored_bytes(db, job["id"]) == b"before\nafter\n"
    assert not job_processes(job["id"])


async def test_a_job_that_ended_while_no_server_ran_keeps_its_exit_7_and_output(
    db: Path, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    async with start_server(db) as first:
        job = await first.execute(
            f"seq 1 1000; while [ ! -e {go} ]; do sleep 0.05; done; echo last >&2; exit 7",
            detach=True,
        )
    go.touch()
    # Its keeper leaves the true end in the spool directory; no server runs.
    ends = await wait_for(lambda: list(_spool(db).glob(f"{job['id']}.end.7.*")), message="end")
    assert not job_processes(job["id"])
    async with start_server(db) as second:
        done = await second.wait_done(job["id"])
        row = query(db, "select started_at from servers where id = ?", second.server_id)[0]
    started = datetime.fromisoformat(row[0]).replace(tzinfo=UTC)
    assert done["exit_code"] == 7 and done["status"] == "failed", done
    assert "lost" not in (done["reason"] or ""), done
    micros = int(ends[0].name.split(".")[-1])
    assert datetime.fromisoformat(done["ended_at"]).timestamp() == micros / 1e6
    assert datetime.fromisoformat(done["ended_at"]) < started  # the true end, not the adoption
    expected = "".join(f"{i}\n" for i in range(1, 1001)).encode()
    assert stored_bytes(db, job["id"]) == expected
    assert stored_bytes(db, job["id"], "stderr") == b"last\n"


async def test_two_servers_starting_at_once_adopt_each_job_once(db: Path, tmp_path: Path) -> None:
    go = tmp_path / "go"
    async with start_server(db) as first:
        jobs = [
            await first.execute(f"while [ ! -e {go} ]; do sleep 0.05; done; echo {n}", detach=True)
            for n in range(6)
        ]
    async with contextlib.AsyncExitStack() as stack:
        a, b = await asyncio.gather(
            stack.enter_async_context(start_server(db)),
            stack.enter_async_context(start_server(db)),
        )
        ours = {a.server_id, b.server_id}
        await wait_for(
            lambda: all(_owner(db, j["id"]) in ours for j in jobs), message="every adoption"
        )
        go.touch()
        for j in jobs:
            done = await a.wait_done(j["id"])
            assert done["status"] == "completed", done
            adopted = [r for r in _reasons(done) if (r or "").startswith("adopted")]
            assert len(adopted) == 1, done
    for n, j in enumerate(jobs):
        assert stored_bytes(db, j["id"]) == f"{n}\n".encode()


async def test_interact_and_kill_after_adoption(db: Path, tmp_path: Path) -> None:
    async with start_server(db) as first:
        reader = await first.execute(
            "read line; echo got:$line; if read more; then echo more; else echo eof; fi",
            detach=True,
        )
        tree = await first.execute(
            "setsid sh -c 'sleep 300' & (trap '' TERM; sleep 300) & echo up; wait", detach=True
        )
        await wait_for(lambda: len(job_processes(tree["id"])) >= 4, message="the tree")
    async with start_server(db) as second:
        await _adopted_by(db, reader["id"], second)
        await _adopted_by(db, tree["id"], second)
        await second.call("interact", job_id=reader["id"], input="hello\n", eof=True)
        done = await second.wait_done(reader["id"])
        assert done["status"] == "completed", done
        assert stored_bytes(db, reader["id"]) == b"got:hello\neof\n"
        killed = await second.call("kill", job_id=tree["id"], grace_s=0.5)
        assert killed["status"] == "killed", killed
        assert stored_bytes(db, tree["id"]) == b"up\n"
        await wait_for(lambda: not job_processes(tree["id"]), message="nothing left")


async def test_a_changed_boot_id_reconciles_a_detached_job_as_lost(
    db: Path, tmp_path: Path
) -> None:
    async with start_server(db) as first:
        job = await first.execute("sleep 300", detach=True)
    # A reboot: the keeper and its job are gone, and the row names another boot.
    os.killpg(job["pid"], signal.SIGKILL)
    await wait_for(lambda: not job_processes(job["id"]), message="the job gone")
    with contextlib.closing(__import__("sqlite3").connect(db)) as con, con:
        con.execute("update jobs set boot_id = 'an-earlier-boot' where id = ?", (job["id"],))
    async with start_server(db) as second:
        done = await second.wait_done(job["id"])
    assert done["status"] == "failed" and done["reason"] == "lost: host rebooted", done


def _cli(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcp_background_job.cli", args[0], "--db", str(db), *args[1:]],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


async def test_the_cli_starts_finds_and_kills_detached_jobs_with_no_server(
    db: Path, tmp_path: Path
) -> None:
    ids = []
    for _ in range(2):
        started = _cli(db, "start", "--label", "nightly", "--", "sleep 300")
        assert started.returncode == 0, started.stderr
        ids.append(started.stdout.strip())
    for job_id in ids:
        assert job_processes(job_id), "the detached job died with the CLI"
    listed = _cli(db, "list", "--status", "running")
    assert listed.returncode == 0, listed.stderr
    for job_id in ids:
        assert job_id[:8] in listed.stdout, listed.stdout
    killed = _cli(db, "kill", "--label", "nightly", "--grace", "1")
    assert killed.returncode == 0, (killed.stdout, killed.stderr)
    for job_id in ids:
        assert f"job {job_id} killed" in killed.stdout, killed.stdout
    await wait_for(lambda: not any(job_processes(j) for j in ids), message="nothing left")
    rows = query(db, "select status from jobs where id in (?, ?)", *ids)
    assert [r[0] for r in rows] == ["killed", "killed"]


async def test_pty_with_detach_is_refused_with_a_reason(db: Path) -> None:
    from fastmcp.exceptions import ToolError

    async with start_server(db) as srv:
        try:
            await srv.execute("cat", pty=True, detach=True)
        except ToolError as exc:
            assert "pty=true with detach=true is not supported" in str(exc)
        else:
            raise AssertionError("pty with detach was accepted")
        assert query(db, "select count(*) from jobs") == [(0,)]
