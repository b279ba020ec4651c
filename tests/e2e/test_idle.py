"""An idle server sleeps: with no job running and nobody listening it wakes a few times a second
at most (it woke ~45 times a second: the ingester and its disk bound polled every 50 ms, the
status watcher queried the database twice a second for nobody, and a WAL already copied was
checkpointed on every pass after the first big job)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from .helpers import start_server

#: Wakeups of every thread of the server per second, at most, over the window. Counted as
#: voluntary context switches: a count of sleeps ended, which load on the machine does not
#: inflate the way it inflates CPU time. Measured: ~6/s idle; before the fix ~45/s.
_MAX_WAKEUPS_PER_S = 15
_WINDOW_S = 5.0


def _wakeups(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:  # a thread that ended meanwhile
            continue
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


async def _idle_rate(pid: int) -> float:
    before = _wakeups(pid)
    await asyncio.sleep(_WINDOW_S)  # the measurement window itself, not a synchronisation
    return (_wakeups(pid) - before) / _WINDOW_S


async def test_an_idle_server_sleeps_before_and_after_a_big_job(db: Path) -> None:
    async with start_server(db) as s:
        await s.call("list", limit=1)
        rate = await _idle_rate(s.pid)
        assert rate <= _MAX_WAKEUPS_PER_S, f"idle server woke {rate:.0f} times a second"

        # 12 MB of output leaves a WAL past the checkpoint threshold: checkpointed once, then
        # never again while nothing is written.
        job = await s.execute("head -c 12000000 /dev/zero | tr '\\0' a | fold -w 100")
        done = await s.wait_done(job["id"])
        assert done["status"] == "completed"
        await asyncio.sleep(2.0)  # past the quiet time after which the WAL is checkpointed
        rate = await _idle_rate(s.pid)
        assert rate <= _MAX_WAKEUPS_PER_S, f"server woke {rate:.0f} times a second after a job"

        # Idle is not asleep for good: a new job is captured and stored as before.
        job = await s.execute("echo still here")
        assert (await s.wait_done(job["id"]))["status"] == "completed"
        out = await s.call("output", job_id=job["id"])
        assert out["text"] == "still here\n"
