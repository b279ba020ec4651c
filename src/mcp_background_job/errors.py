"""The package's exceptions, all under one root.

    BackgroundJobError
    ├── InvalidRequest        bad input: empty command, missing cwd, bad cursor, ...
    ├── JobNotFound           no job has that id
    ├── JobStateError         the job's state does not allow it: stdin of a finished job, ...
    ├── TransitionConflict    a guarded status change lost a race (the status was not expected)
    └── StorageError          the database cannot be used: newer schema, failed migration, ...

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
        super().__init__(
            f"No job with id {job_id!r}. Call `list` to see the ids of recent jobs "
            "(ids are 12 hex characters; a unique prefix also works)."
        )
        self.job_id = job_id


class JobStateError(BackgroundJobError):
    """The job exists but its state does not allow the request."""


class TransitionConflict(BackgroundJobError):
    """A compare-and-set on a job's status matched no row: someone else changed it first."""


class StorageError(BackgroundJobError):
    """The database cannot be opened, migrated or used."""
