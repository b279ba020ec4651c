"""The domain rules: transitions and how an exit becomes a status."""

from __future__ import annotations

import signal

import pytest

from mcp_background_job.errors import InvalidRequest
from mcp_background_job.jobs import (
    ACTIVE,
    TERMINAL,
    TRANSITIONS,
    EndCause,
    JobStatus,
    decide_outcome,
    dependency_failure,
    parse_signal,
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
        (-15, EndCause.IDLE_TIMEOUT, JobStatus.TIMED_OUT, None, "SIGTERM"),
        # Ctrl-C through interact: it counts only if the job died of it
        (-2, EndCause.INTERRUPT, JobStatus.KILLED, None, "SIGINT"),
        (-3, EndCause.INTERRUPT, JobStatus.KILLED, None, "SIGQUIT"),
        (0, EndCause.INTERRUPT, JobStatus.COMPLETED, 0, None),  # a REPL that handled it
        (130, EndCause.INTERRUPT, JobStatus.FAILED, 130, None),
        (-15, EndCause.INTERRUPT, JobStatus.FAILED, None, "SIGTERM"),
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


def test_reasons_for_idle_timeout_and_interrupt() -> None:
    idle = decide_outcome(-15, EndCause.IDLE_TIMEOUT, 2.5)
    assert idle.reason == "idle timeout: no output for 2.5 s; ended by signal SIGTERM"
    ctrl_c = decide_outcome(-2, EndCause.INTERRUPT)
    assert ctrl_c.reason == "interrupted by Ctrl-C sent with interact; ended by signal SIGINT"


@pytest.mark.parametrize(
    ("status", "exit_code", "signal", "reason", "text"),
    [
        (JobStatus.FAILED, 2, None, None, "dependency abc123def456 failed (exit code 2)"),
        (JobStatus.FAILED, None, "SIGSEGV", "x", "dependency abc123def456 failed (signal SIGSEGV)"),
        (
            JobStatus.FAILED,
            None,
            None,
            "lost: server exited",
            "dependency abc123def456 failed (lost: server exited)",
        ),
        (JobStatus.KILLED, None, "SIGTERM", "r", "dependency abc123def456 was killed"),
        (JobStatus.TIMED_OUT, None, "SIGTERM", "r", "dependency abc123def456 timed out"),
    ],
)
def test_dependency_failure_names_the_dependency(
    status: JobStatus, exit_code: int | None, signal: str | None, reason: str | None, text: str
) -> None:
    assert dependency_failure("abc123def456", status, exit_code, signal, reason) == text


def test_parse_signal_takes_names_in_any_spelling_and_numbers() -> None:
    assert parse_signal("sigkill") is signal.SIGKILL
    assert parse_signal("15") is signal.SIGTERM
    assert parse_signal(" SIGusr1 ") is signal.SIGUSR1
    for bad in ("BOGUS", "SIGSEGV", "0", "999", ""):
        with pytest.raises(InvalidRequest, match="Unknown signal"):
            parse_signal(bad)
