"""The package's exceptions, all under one root.

Import rule: nothing from the package (the lowest layer, ``leaves``, in ``tests/test_layers.py``).

    BackgroundJobError
    ├── InvalidRequest        bad input: empty command, missing cwd, bad cursor, ...
    ├── JobNotFound           no job has that id
    ├── JobStateError         the job's state does not allow it: stdin of a finished job, ...
    │   └── NoAnswer          another host's server did not take or answer a request in time
    ├── TransitionConflict    a guarded status change lost a race (the status was not expected)
    ├── StorageError          the database cannot be used: locked, disk full, read-only, not a
    │                         database, newer schema, ... (``kind`` says which; db.storage_error)
    ├── PolicyRefused         the command policy refused a command (names the rule and match)
    ├── RateLimited           too many jobs created too fast (says when to retry)
    └── IsolationError        the configured isolation cannot work on this machine (start-up)

Every message says what was wrong and what to do instead: the MCP layer passes it on as is.
"""

from __future__ import annotations


class BackgroundJobError(Exception):
    """Root of every error this package raises on purpose."""


class InvalidRequest(BackgroundJobError):
    """The caller's input cannot be used; the message says which part and how to fix it."""


class JobNotFound(BackgroundJobError):
    """No job with the given id exists in the database."""

    def __init__(self, job_id: str) -> None:
        shown = (
            repr(job_id) if len(job_id) <= 64 else f"{job_id[:64]!r}... ({len(job_id)} characters)"
        )
        super().__init__(
            f"No job with id {shown}. Call `list` to see the ids of recent jobs "
            "(ids are 12 hex characters; a unique prefix also works)."
        )
        self.job_id = job_id


class JobStateError(BackgroundJobError):
    """The job exists but its state does not allow the request."""


class NoAnswer(JobStateError):
    """A kill or interact on another host's job was not taken, or not answered, in time."""


class TransitionConflict(BackgroundJobError):
    """A compare-and-set on a job's status matched no row: someone else changed it first."""


class StorageError(BackgroundJobError):
    """The database cannot be opened, migrated or used.

    ``kind`` names the cause for code that reacts to it (``"locked"``, ``"disk_full"``,
    ``"read_only"``, ``"not_a_database"``, ``"damaged"``, ``"cannot_open"``, ``"closed"``;
    ``"other"`` otherwise). ``db.storage_error`` turns SQLite and OS errors into these.
    """

    def __init__(self, message: str, *, kind: str = "other") -> None:
        super().__init__(message)
        self.kind = kind


class PolicyRefused(BackgroundJobError):
    """The command policy refused the command; nothing was spawned."""

    def __init__(self, message: str, *, rule: str, matched: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.matched = matched


class RateLimited(BackgroundJobError):
    """Job creation is over the configured rate; ``retry_after_s`` says when a token is back."""

    def __init__(self, retry_after_s: float, burst: int, per_s: float) -> None:
        super().__init__(
            f"Rate limit: at most {burst} jobs at once and {per_s:g} per second after that. "
            f"Retry in {retry_after_s:.1f} s, or combine commands into one job."
        )
        self.retry_after_s = retry_after_s


class IsolationError(BackgroundJobError):
    """The configured isolation mode is not available here; the message says how to fix it."""
