"""The watchdog process on its own, with this test process as its server: the jobs it was told
about are stopped when the server's end of the pipe closes, forgotten ones are left alone, and a
watchdog killed by hand is replaced by one that knows every job."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from functools import partial

import pytest

from mcp_background_job import proctree

#: A job as the runner starts one: a new session, the marker, and a setsid grandchild that
#: ignores SIGTERM.
SCRIPT = "setsid sh -c 'trap \"\" TERM; exec sleep 300' & exec sleep 301"


def _alive(pid: int) -> bool:
    info = proctree.read_stat(pid)
    return info is not None and info.state not in ("Z", "X")


def _wait(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def jobs() -> Iterator[list[tuple[str, subprocess.Popen[bytes]]]]:
    started: list[tuple[str, subprocess.Popen[bytes]]] = []
    yield started
    for job_id, proc in started:
        proctree.kill_tree(partial(proctree.job_tree, job_id, None, None), 10.0)
        proc.wait()


def _start(jobs: list[tuple[str, subprocess.Popen[bytes]]], job_id: str) -> set[int]:
    proc = subprocess.Popen(
        ["sh", "-c", SCRIPT],
        env={"PATH": os.environ["PATH"], proctree.MARKER: job_id},
        start_new_session=True,
    )
    jobs.append((job_id, proc))
    _wait(lambda: len(proctree.job_tree(job_id, proc.pid, None)) >= 2)
    return proctree.job_tree(job_id, proc.pid, None)


def test_eof_stops_the_trees_of_the_jobs_it_still_knows(
    jobs: list[tuple[str, subprocess.Popen[bytes]]],
) -> None:
    watchdog = proctree.Watchdog()
    assert watchdog.start()
    doomed = _start(jobs, "aaaaaaaaaaa1")
    kept = _start(jobs, "aaaaaaaaaaa2")
    for job_id, proc in jobs:
        watchdog.watch(job_id, proc.pid, proctree.start_time(proc.pid))
    watchdog.forget("aaaaaaaaaaa2")  # as the runner does once a job's processes are gone
    watchdog.close()  # as if this process had died: its end of the pipe closes
    _wait(lambda: not any(_alive(p) for p in doomed))
    assert all(_alive(p) for p in kept)


def test_a_lost_watchdog_is_replaced_and_told_every_job(
    jobs: list[tuple[str, subprocess.Popen[bytes]]],
) -> None:
    watchdog = proctree.Watchdog()
    assert watchdog.start()
    first = _start(jobs, "bbbbbbbbbbb1")
    watchdog.watch("bbbbbbbbbbb1", jobs[0][1].pid, None)
    lost = watchdog.pid
    assert lost is not None
    os.kill(lost, signal.SIGKILL)
    _wait(lambda: not _alive(lost))
    second = _start(jobs, "bbbbbbbbbbb2")
    watchdog.watch("bbbbbbbbbbb2", jobs[1][1].pid, None)  # finds it gone, starts another
    assert watchdog.pid not in (None, lost)
    watchdog.close()
    _wait(lambda: not any(_alive(p) for p in first | second))
