"""The domain vocabulary: job statuses, the allowed transitions, and frozen records.

Pure: no I/O, and nothing else from the package is imported here but ``errors``.
"""

from __future__ import annotations

import enum
import signal as _signal
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, get_args

from .errors import InvalidRequest


class JobStatus(enum.StrEnum):
    """Where a job is in its life. Why it ended is kept apart (exit_code, signal, reason).

    - ``queued``: accepted, waiting for a free slot (``max_concurrent``).
    - ``running``: its main process has been started.
    - ``completed``: the main process exited with code 0.
    - ``failed``: it exited with a non-zero code, was terminated by a signal nobody here sent
      (the signal is recorded), could not be started, was lost when its server died, or never
      started because a job it had to run after did not complete (the reason names it).
    - ``killed``: it ended after a ``kill`` request or a server shutdown, however it then exited;
      or it died of the SIGINT/SIGQUIT that a Ctrl-C/Ctrl-\\ sent through ``interact`` caused.
    - ``timed_out``: it ran past its ``timeout_s``, or printed nothing for ``idle_timeout_s``,
      and was killed for it.
    """

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    KILLED = "killed"
    TIMED_OUT = "timed_out"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


ACTIVE: frozenset[JobStatus] = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.KILLED, JobStatus.TIMED_OUT}
)

#: The only status changes the store will perform; anything else is a bug or a lost race.
TRANSITIONS: dict[JobStatus | None, frozenset[JobStatus]] = {
    None: frozenset({JobStatus.QUEUED}),
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.KILLED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.KILLED, JobStatus.TIMED_OUT}
    ),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.KILLED: frozenset(),
    JobStatus.TIMED_OUT: frozenset(),
}


def sources_of(target: JobStatus) -> frozenset[JobStatus]:
    """The statuses from which ``target`` may be reached."""
    return frozenset(s for s, dests in TRANSITIONS.items() if s is not None and target in dests)


class Stream(enum.StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"


class EndCause(enum.StrEnum):
    """Why the server stopped a job itself (recorded until the job's process has exited).

    ``INTERRUPT`` is weaker than the others: it only notes that Ctrl-C/Ctrl-\\ was sent, which
    a program may handle and go on; any later stop request replaces it.
    """

    KILL = "kill"
    TIMEOUT = "timeout"
    IDLE_TIMEOUT = "idle_timeout"
    SHUTDOWN = "shutdown"
    INTERRUPT = "interrupt"


#: Reasons recorded with transitions; stable strings, since people grep for them.
REASON_SHUTDOWN = "server shutdown"
REASON_LOST = "lost: server exited"
#: A job whose server died as it started it, with no process of it left and no exit status.
REASON_NO_EXIT = "lost: no exit status recorded (it may have run)"
#: A detached job recorded on another boot, with no end file: it died with the machine.
REASON_REBOOTED = "lost: host rebooted"


def reason_host_lost(host: str) -> str:
    """A running job of a host declared dead (none of its servers heart-beat in time)."""
    return f"lost: host {host} stopped answering"


#: Added to the reason of a job that did not complete while its output's disk was full.
DISK_FULL = "disk full: no space was left for its output when it ended"


def dependency_failure(dep_id: str, status: JobStatus, exit_code: int | None,
                       signal: str | None, reason: str | None) -> str:  # fmt: skip
    """Why a job waiting for ``dep_id`` will never start: ``dependency abc123def456 failed
    (exit code 2)``."""
    if status is JobStatus.KILLED:
        return f"dependency {dep_id} was killed"
    if status is JobStatus.TIMED_OUT:
        return f"dependency {dep_id} timed out"
    if exit_code is not None:
        detail = f"exit code {exit_code}"
    elif signal is not None:
        detail = f"signal {signal}"
    else:
        detail = reason or "no reason recorded"
    return f"dependency {dep_id} failed ({detail})"


def signal_name(signum: int) -> str:
    try:
        return _signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a job's main process ended, translated into a final status."""

    status: JobStatus
    exit_code: int | None
    signal: str | None
    reason: str | None


#: Signals that the interrupt keys cause (Ctrl-C, Ctrl-\\).
INTERRUPT_SIGNALS = frozenset({"SIGINT", "SIGQUIT"})


def decide_outcome(
    returncode: int,
    cause: EndCause | None,
    idle_timeout_s: float | None = None,
    *,
    disk_full: bool = False,
) -> Outcome:
    """Map a ``waitpid`` return code (negative: a signal) and the server's own cause to an outcome.

    A job the server was stopping counts as killed/timed out however it exited: a program that
    catches SIGTERM and exits 0 was still stopped on request. An interrupt counts only if the
    job died of it (a REPL that handles Ctrl-C and later exits normally just exited). A cause
    applies only if it was requested before the job exited: the runner records one only while
    the job's main process is alive, so a job that exited by itself as a shutdown or a kill
    began keeps its own outcome.

    ``disk_full``: the file system holding its output had no space left when it ended; a job
    that did not complete says so in its reason (its writes most likely failed for it).
    """
    out = _outcome(returncode, cause, idle_timeout_s)
    if disk_full and out.status is not JobStatus.COMPLETED:
        reason = DISK_FULL if out.reason is None else f"{out.reason}; {DISK_FULL}"
        return Outcome(out.status, out.exit_code, out.signal, reason)
    return out


def _outcome(returncode: int, cause: EndCause | None, idle_timeout_s: float | None) -> Outcome:
    exit_code = returncode if returncode >= 0 else None
    sig = signal_name(-returncode) if returncode < 0 else None
    how = f"exit code {exit_code}" if sig is None else f"signal {sig}"
    if cause is EndCause.TIMEOUT:
        return Outcome(JobStatus.TIMED_OUT, exit_code, sig, f"timeout reached; ended by {how}")
    if cause is EndCause.IDLE_TIMEOUT:
        idle = f"{idle_timeout_s:g} s" if idle_timeout_s is not None else "too long"
        why = f"idle timeout: no output for {idle}; ended by {how}"
        return Outcome(JobStatus.TIMED_OUT, exit_code, sig, why)
    if cause is EndCause.INTERRUPT and sig in INTERRUPT_SIGNALS:
        key = "Ctrl-C" if sig == "SIGINT" else "Ctrl-\\"
        return Outcome(
            JobStatus.KILLED, None, sig, f"interrupted by {key} sent with interact; ended by {how}"
        )
    if cause is EndCause.SHUTDOWN:
        return Outcome(JobStatus.KILLED, exit_code, sig, REASON_SHUTDOWN)
    if cause is EndCause.KILL:
        return Outcome(JobStatus.KILLED, exit_code, sig, f"killed on request; ended by {how}")
    if sig is not None:
        return Outcome(JobStatus.FAILED, None, sig, f"terminated by {sig}, not sent by this server")
    if returncode == 0:
        return Outcome(JobStatus.COMPLETED, 0, None, None)
    return Outcome(JobStatus.FAILED, returncode, None, None)


@dataclass(frozen=True, slots=True)
class JobOptions:
    """How a job runs and when it may start, beyond its command line (all optional)."""

    pty: bool = False
    rows: int | None = None  # terminal size of a PTY job
    cols: int | None = None
    priority: int = 0
    idle_timeout_s: float | None = None
    after: tuple[str, ...] = ()  # jobs that must end first
    run_anyway: bool = False  # start even if one of ``after`` did not complete
    rerun_of: str | None = None
    detached: bool = False  # outlives its server (see runner/keeper.py)
    #: Run on another machine: its server (``host`` setting) claims and runs it (None: here).
    host: str | None = None


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One status transition, as recorded."""

    at: datetime
    from_status: JobStatus | None
    to_status: JobStatus
    reason: str | None
    server_id: str | None


@dataclass(frozen=True, slots=True)
class Job:
    """A job as stored. Byte counters are per stream: ``*_bytes`` ingested so far (the stream's
    length as far as the database knows), ``*_stored`` kept in the database, ``*_dropped`` dropped
    by the output limit."""

    id: str
    command: str
    cwd: str
    shell: str
    env: dict[str, str]
    labels: tuple[str, ...]
    status: JobStatus
    created_at: datetime
    owner_id: str | None
    timeout_s: float | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    exit_code: int | None = None
    signal: str | None = None
    reason: str | None = None
    pid: int | None = None
    pid_start: int | None = None
    boot_id: str | None = None
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    stdout_stored: int = 0
    stderr_stored: int = 0
    stdout_dropped: int = 0
    stderr_dropped: int = 0
    end_cause: EndCause | None = None
    pty: bool = False
    rows: int | None = None
    cols: int | None = None
    priority: int = 0
    idle_timeout_s: float | None = None
    after: tuple[str, ...] = ()
    run_anyway: bool = False
    rerun_of: str | None = None
    #: When a server set out to spawn it (committed before the spawn): a queued job with it set
    #: may have run, and is never started again.
    start_attempted_at: datetime | None = None
    detached: bool = False  # runs under a keeper, outlives its server (see runner/keeper.py)
    #: The machine the job runs on, or is queued for (None: recorded before hosts were).
    host: str | None = None
    waiting_on: tuple[str, ...] = ()  # dependencies not ended yet (only loaded for queued jobs)
    events: tuple[JobEvent, ...] = field(default=())

    def ingested(self, stream: Stream) -> int:
        return self.stdout_bytes if stream is Stream.STDOUT else self.stderr_bytes


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of one stream's output: ``data`` starts at byte ``offset`` of that stream."""

    stream: Stream
    offset: int
    data: bytes

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


@dataclass(frozen=True, slots=True)
class ServerInstance:
    """A server process that has opened the database; owner of the jobs it started."""

    id: str
    pid: int
    pid_start: int | None
    boot_id: str | None
    hostname: str
    started_at: datetime
    stopped_at: datetime | None


#: What an audit event is about; a CHECK constraint keeps the column to these.
#: ``auth_failed``: an HTTP request without a valid token (401, or 429 once an address failed too
#: often); ``auth_refused``: a valid ``read`` token asked for a tool that changes things.
AuditKind = Literal[
    "execute", "kill", "interact", "rate_limited", "policy_loaded", "auth_failed", "auth_refused"
]
AUDIT_KINDS: tuple[AuditKind, ...] = get_args(AuditKind)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """A security-relevant event as recorded (``id`` and ``at`` are set by the store).

    The one definition of the audit record: the table (``db.AuditEventRow``), the store's
    mapping and the tool's view (``models.AuditView``) follow its fields, which
    ``tests/test_store.py`` checks. ``decision``/``rule``/``matched``: the policy's answer for
    an execute. ``client_*``/``session_id``: what the MCP client said about itself
    (self-reported). ``token``: the name of the bearer token of an HTTP request (verified;
    never the token itself). ``detail``: small JSON-able facts, never secrets.
    """

    kind: AuditKind
    server_id: str
    decision: str | None = None
    rule: str | None = None
    matched: str | None = None
    job_id: str | None = None
    command: str | None = None
    cwd: str | None = None
    client_name: str | None = None
    client_version: str | None = None
    session_id: str | None = None
    token: str | None = None
    detail: dict[str, object] = field(default_factory=dict)
    id: int | None = None
    at: datetime | None = None


#: Signals a caller may send to a job by name (any signal may be given by number).
SIGNAL_NAMES = ("TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2", "STOP", "CONT")


def parse_signal(name: str) -> _signal.Signals:
    """``TERM``, ``sigterm``, ``SIGTERM`` or ``15`` -> the signal; anything else is refused."""
    key = name.strip().upper().removeprefix("SIG")
    if key.isdigit():
        try:
            return _signal.Signals(int(key))
        except ValueError:
            pass
    elif key in SIGNAL_NAMES:
        return _signal.Signals[f"SIG{key}"]
    raise InvalidRequest(
        f"Unknown signal {name!r}: use one of {', '.join(SIGNAL_NAMES)} (or its number)."
    )
