"""The domain rules: transitions and how an exit becomes a status."""

from __future__ import annotations

import pytest

from mcp_background_job.jobs import (
    ACTIVE,
    TERMINAL,
    TRANSITIONS,
    EndCause,
    JobStatus,
    decide_outcome,
    sources_of,
)


def test_every_status_has_a_transition_entry_and_terminal_ones_are_final() -> None:
    assert set(TRANSITIONS) == {None, *JobStatus}
    assert set(JobStatus) == ACTIVE | TERMINAL
    for status in TERMINAL:
        assert TRANSITIONS[status] == frozenset()


def test_sources_of() -> None:
    assert sources_of(JobStatus.RUNNING) == {JobStatus.QUEUED}
    assert sources_of(JobStatus.TIMED_OUT) == {JobStatus.RUNNING}
    assert sources_of(JobStatus.KILLED) == {JobStatus.QUEUED, JobStatus.RUNNING}


@pytest.mark.parametrize(
    ("returncode", "cause", "status", "exit_code", "signal"),
    [
        (0, None, JobStatus.COMPLETED, 0, None),
        (3, None, JobStatus.FAILED, 3, None),
        (143, None, JobStatus.FAILED, 143, None),  # a shell reporting a child's SIGTERM
        (-15, None, JobStatus.FAILED, None, "SIGTERM"),  # a signal nobody here sent
        (-15, EndCause.KILL, JobStatus.KILLED, None, "SIGTERM"),
        (0, EndCause.KILL, JobStatus.KILLED, 0, None),  # caught TERM and exited cleanly
        (-9, EndCause.TIMEOUT, JobStatus.TIMED_OUT, None, "SIGKILL"),
        (-15, EndCause.SHUTDOWN, JobStatus.KILLED, None, "SIGTERM"),
    ],
)
def test_decide_outcome(
    returncode: int,
    cause: EndCause | None,
    status: JobStatus,
    exit_code: int | None,
    signal: str | None,
) -> None:
    out = decide_outcome(returncode, cause)
    assert (out.status, out.exit_code, out.signal) == (status, exit_code, signal)
    if status is JobStatus.COMPLETED or (status is JobStatus.FAILED and signal is None):
        assert out.reason is None
    else:
        assert out.reason


def test_shutdown_reason_is_stable() -> None:
    assert decide_outcome(-15, EndCause.SHUTDOWN).reason == "server shutdown"
