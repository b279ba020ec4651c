"""Fault injection: real servers SIGKILLed at random moments while jobs start, then a new server.

Each round starts a server on one database, sends it ``--executes`` concurrent ``execute`` calls
over stdio (raw JSON-RPC, so the timing is ours, not a client library's), SIGKILLs it 0 to
``--max-delay-ms`` after the round's first job process started (it appends to a side file: a
fixed delay from sending missed the starts, which took 350-660 ms to begin here), and starts the
next round's server on the same database: that server reconciles what the killed one left
behind. A last server then waits until no job is queued or running and stops gracefully.

Every job appends its id to a side file when it starts and prints two lines carrying its shell's
pid, 3 s apart. Reported (as JSON with ``--json``):

- ``ran_twice``: jobs whose id is in the side file more than once (a job must run at most once);
- ``mixed``: jobs whose stored output holds lines of more than one process (two runs' output
  mixed in one spool file);
- ``statuses``: jobs per final status, and ``active`` jobs left queued or running.

    scripts/crashloop [--rounds 30] [--executes 8] [--max-delay-ms 150] [--seed N] [--src DIR]

``--src DIR`` runs the servers from another checkout's ``src`` (PYTHONPATH), to measure before
and after a change with the same script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

PROTOCOL = "2025-11-25"


def _job_command(side: Path) -> str:
    return f'echo "$MCP_BACKGROUND_JOB_ID" >> {side}; echo "run $$ a"; sleep 3; echo "run $$ b"'


class _Server:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.next_id = 0

    async def send(self, method: str, params: dict[str, Any], *, notify: bool = False) -> int:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
        if not notify:
            self.next_id += 1
            msg["id"] = self.next_id
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        await self.proc.stdin.drain()
        return self.next_id

    async def answer(self, request_id: int, timeout: float = 60.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), deadline - loop.time())
            if not line:
                raise RuntimeError("the server closed stdout")
            msg: dict[str, Any] = json.loads(line)
            if msg.get("id") == request_id:
                return msg


async def _start(db: Path, log: Path, env: dict[str, str]) -> _Server:
    with log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mcp_background_job.cli",
            "--db",
            str(db),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            env=env,
            start_new_session=True,
            limit=1 << 24,
        )
    server = _Server(proc)
    rid = await server.send(
        "initialize",
        {
            "protocolVersion": PROTOCOL,
            "capabilities": {},
            "clientInfo": {"name": "crashloop", "version": "1"},
        },
    )
    await server.answer(rid)
    await server.send("notifications/initialized", {}, notify=True)
    return server


async def _first_start(side: Path, before: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        if side.exists() and side.stat().st_size > before:
            return
        await asyncio.sleep(0.001)


def _active(db: Path) -> int:
    con = sqlite3.connect(db, timeout=30)
    try:
        active: int = con.execute(
            "select count(*) from jobs where status in ('queued', 'running')"
        ).fetchone()[0]
        return active
    finally:
        con.close()


async def crashloop(
    workdir: Path,
    *,
    rounds: int,
    executes: int,
    max_delay_ms: float,
    seed: int,
    src: Path | None,
) -> dict[str, Any]:
    rng = random.Random(seed)
    db = workdir / "jobs.db"
    side = workdir / "ran.txt"
    log = workdir / "servers.log"
    env = {**os.environ, "MCP_BACKGROUND_JOB_KILL_GRACE_S": "1"}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    command = _job_command(side)
    began = time.monotonic()
    for _ in range(rounds):
        server = await _start(db, log, env)
        before = side.stat().st_size if side.exists() else 0
        ids = [
            await server.send(
                "tools/call", {"name": "execute", "arguments": {"command": command, "cwd": "/"}}
            )
            for _ in range(executes)
        ]
        del ids  # not waited for: the kill comes while they are being served
        # The clock starts when the first job process runs (it appends to the side file): the
        # starts are under way, and the window between a spawn and its recorded start is short.
        await _first_start(side, before, deadline=time.monotonic() + 10)
        await asyncio.sleep(rng.uniform(0, max_delay_ms / 1000))
        server.proc.send_signal(signal.SIGKILL)
        await server.proc.wait()
    # The last server reconciles the last crash and runs what is left, then stops gracefully.
    last = await _start(db, log, env)
    deadline = time.monotonic() + 120
    while _active(db) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert last.proc.stdin is not None
    last.proc.stdin.close()
    try:
        await asyncio.wait_for(last.proc.wait(), 30)
    except TimeoutError:
        last.proc.kill()
        await last.proc.wait()
    return _report(db, side, time.monotonic() - began)


def _report(db: Path, side: Path, seconds: float) -> dict[str, Any]:
    runs = Counter(side.read_text().split()) if side.exists() else Counter()
    con = sqlite3.connect(db)
    try:
        statuses = Counter(s for (s,) in con.execute("select status from jobs"))
        failed = "select coalesce(reason, '') from jobs where status = 'failed'"
        reasons = Counter(r for (r,) in con.execute(failed))
        outputs = con.execute(
            "select job_id, cast(stdout as text) from job_output where stdout is not null"
        ).fetchall()
    finally:
        con.close()
    mixed = []
    for job_id, text in outputs:
        pids = set(re.findall(r"^run (\d+) [ab]$", text or "", re.M))
        if len(pids) > 1:
            mixed.append(job_id)
    twice = sorted(j for j, n in runs.items() if n > 1)
    return {
        "jobs": sum(statuses.values()),
        "ran": len(runs),
        "ran_twice": len(twice),
        "ran_twice_ids": twice[:20],
        "mixed": len(mixed),
        "mixed_ids": mixed[:20],
        "outputs": len(outputs),
        "statuses": dict(statuses),
        "failed_reasons": dict(reasons),
        "active": statuses.get("queued", 0) + statuses.get("running", 0),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--executes", type=int, default=8)
    parser.add_argument("--max-delay-ms", type=float, default=150.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--src", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here")
    parser.add_argument("--json", action="store_true", help="print only the JSON report")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    with tempfile.TemporaryDirectory(prefix="crashloop-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        report = asyncio.run(
            crashloop(
                workdir,
                rounds=args.rounds,
                executes=args.executes,
                max_delay_ms=args.max_delay_ms,
                seed=seed,
                src=args.src,
            )
        )
    report["seed"] = seed
    if args.json:
        print(json.dumps(report))
        return
    for key, value in report.items():
        print(f"{key:>16}: {value}")


if __name__ == "__main__":
    main()
